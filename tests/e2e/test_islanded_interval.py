"""An islanded interval end to end on a real chain: the grid operator switches the registry to
islanded, the market reads the mode at gate closure, the Neural Grid validates the village with no
external grid (its battery empty at 07:00), and the veto ``ISLAND_BALANCE`` (code 8) is what the
validator attests and the chain records. Real Anvil, real contracts, real SQLite store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from web3 import Web3

from backend.chain import eip712
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.devtools.anvil import AnvilProcess
from backend.devtools.devstack import start_dev_stack
from backend.market.factory import build_market
from backend.market.service import MarketConfig
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e
DAY_S = 86_400
SHORT_HOUR = 7  # 07:00 UTC: village_island's battery is empty, the genset alone falls short


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("island")
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(dev_settings(tmp, anvil.url), network="village_island")
        dev = start_dev_stack(settings, participants=3)
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        now = int(w3.eth.get_block("latest")["timestamp"])
        # the chain's clock to 06:30 UTC of the next day: the interval two ahead starts at 07:00
        target = (now // DAY_S + 1) * DAY_S + SHORT_HOUR * 3600 - 1800
        w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        yield {"settings": settings, "deployment": dev.deployment, "w3": w3}


def test_islanded_interval_vetoed_island_balance_on_chain(stack: dict[str, Any]) -> None:
    settings, w3 = stack["settings"], stack["w3"]
    registry = contract_at(
        w3, "ParticipantRegistry", stack["deployment"].address("ParticipantRegistry")
    )
    ChainClient(settings.rpc_url, settings.grid_operator_key).transact(
        registry.functions.setGridMode(1)
    )
    market = build_market(settings, config=MarketConfig(interval_seconds=900))
    assert market.ledger.grid_mode() == 1
    interval = market.current_interval() + 2
    assert interval * 900 % DAY_S == SHORT_HOUR * 3600
    seller, buyer = ANVIL_KEYS[1], ANVIL_KEYS[2]
    s_addr, b_addr = Account.from_key(seller).address, Account.from_key(buyer).address
    for key, side, me, other in ((seller, 0, s_addr, b_addr), (buyer, 1, b_addr, s_addr)):
        msg = {
            "trader": me, "side": side, "intervalId": interval, "energyWh": 500,
            "pricePerKWh": 100_000, "nonce": 1, "expiry": interval * 900 + 86_400,
            "counterparty": other,
        }  # fmt: skip
        market.submit_order(msg, eip712.sign_digest(market.domain.digest("Order", msg), key))
    row = market.close_interval(interval, force=True)
    assert (row.status, row.approved_count, row.vetoed_count) == ("recorded", 0, 1)
    [trade] = market.trades(interval)
    assert (trade.verdict, trade.reason) == (8, "ISLAND_BALANCE")
    assert trade.element == "battery village-battery (bus 1)"
    assert trade.veto_limit == 0.0 and trade.veto_value is not None
    assert round(trade.veto_value, 2) == 26.93
    # on chain: the attested batch carries the veto code
    em = contract_at(w3, "EnergyMarket", stack["deployment"].address("EnergyMarket"))
    [vetoed] = em.events.TradeVetoed.get_logs(from_block=0)
    assert "0x" + bytes(vetoed["args"]["tradeId"]).hex() == trade.id
    assert int(vetoed["args"]["reason"]) == 8
    # switching back: the next interval is validated grid-connected, this one keeps its mode
    ChainClient(settings.rpc_url, settings.grid_operator_key).transact(
        registry.functions.setGridMode(0)
    )
    assert market.clearing.mode_of(interval) == 1
    assert market.clearing.mode_of(interval + 1) == 0
