"""Market suite fixtures: a store on SQLite, and on PostgreSQL with TEGRID_TEST_DATABASE_URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from backend.market.memory import MemoryLedger
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import ANVIL_KEYS

PG_URL = os.environ.get("TEGRID_TEST_DATABASE_URL")
STORE_PARAMS = ["sqlite"] + (["postgresql"] if PG_URL else [])
VALIDATOR_KEY = ANVIL_KEYS[9]


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'book.db'}"
        return
    assert PG_URL
    s = Store(PG_URL)
    s.drop_all()
    s.close()
    yield PG_URL


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def ledger() -> MemoryLedger:
    led = MemoryLedger()
    for i, key in enumerate(ANVIL_KEYS[:6]):
        led.add_participant(
            Account.from_key(key).address,
            bus_id=10 + i,
            max_export_w=20_000,
            max_import_w=20_000,
            deposit=10**12,
        )
    return led


@pytest.fixture
def market(store: Store, ledger: MemoryLedger) -> Market:
    return Market(store, ledger, None, VALIDATOR_KEY, MarketConfig(interval_seconds=900))


class Signer:
    """Signs orders for the market's domain with eth-account (the generic EIP-712 path)."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.nonce = 0

    def order(
        self,
        key: str,
        side: int,
        energy_wh: int,
        price: int,
        interval: int | None = None,
        counterparty: str = "0x" + "00" * 20,
        expiry: int | None = None,
        nonce: int | None = None,
    ) -> dict[str, Any]:
        if interval is None:
            interval = self.market.current_interval() + 2
        self.nonce += 1
        msg = {
            "trader": Account.from_key(key).address,
            "side": side,
            "intervalId": interval,
            "energyWh": energy_wh,
            "pricePerKWh": price,
            "nonce": self.nonce if nonce is None else nonce,
            "expiry": expiry if expiry is not None else interval * 900 + 3600,
            "counterparty": counterparty,
        }
        doc = {**self.market.template("Order"), "message": msg}
        sig = Account.sign_typed_data(key, full_message=doc).signature.hex()
        return {"message": msg, "signature": "0x" + sig.removeprefix("0x")}


@pytest.fixture
def signer(market: Market) -> Signer:
    return Signer(market)
