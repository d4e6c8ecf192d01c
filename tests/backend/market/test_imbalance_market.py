"""The market's side of imbalance settlement over a memory ledger: an owing trader's orders are
refused at the intake with the debt named and left out of the clearing (the contract would revert
the batch), and an interval's imbalance, once settled on chain, is stored and answered by
``GET /intervals/{id}`` in the API's number rule."""

from __future__ import annotations

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.chain.imbalance import IntervalImbalance, PartyImbalance
from backend.market.errors import AccountOwingError
from backend.market.memory import MemoryLedger
from backend.market.models import IntervalStatus
from backend.market.ports import IntervalSettlement
from backend.market.service import Market
from backend.settings import ANVIL_KEYS
from tests.backend.market.conftest import Signer

K = ANVIL_KEYS


def _owe(market: Market, ledger: MemoryLedger, key: str, debt: int) -> str:
    wallet = Account.from_key(key).address
    ledger.debts[wallet] = debt
    market.intake.forget_balance(wallet)  # as a deposit on chain would, after the cache's TTL
    return wallet


def test_owing_trader_is_refused_naming_the_debt(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    wallet = _owe(market, ledger, K[1], 61_729)
    sell = signer.order(K[1], 0, 1000, 100)
    with pytest.raises(AccountOwingError) as info:
        market.submit_order(sell["message"], sell["signature"])
    assert str(info.value) == (
        f"{wallet} owes 61729 token base units of imbalance payments to the balancing account; "
        "its orders are refused until a deposit into EnergyMarket pays the debt"
    )
    assert info.value.debt == 61_729
    assert market.store.list_orders() == []  # nothing stored
    with TestClient(create_app(market, dev=True, scheduler=False)) as client:
        buy = signer.order(K[1], 1, 1000, 100)
        r = client.post("/orders", json={"message": buy["message"], "signature": buy["signature"]})
        assert r.status_code == 402
        assert r.json()["detail"] == {
            "code": "ACCOUNT_OWING",
            "message": f"{wallet} owes 61729 token base units of imbalance payments to the "
            "balancing account; its orders are refused until a deposit into EnergyMarket pays "
            "the debt",
        }
    _owe(market, ledger, K[1], 0)  # the debt paid on chain
    assert market.submit_order(sell["message"], sell["signature"]).status == "open"


def test_clearing_leaves_out_a_trader_that_came_to_owe(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    """K1's order was accepted; by gate closure K1 owes (an earlier interval's imbalance): the
    clearing's fresh reads leave its order out, so the batch records instead of reverting with
    MarketAccountOwing."""
    interval = market.current_interval() + 2
    for key, side, price in ((K[1], 0, 50), (K[2], 0, 60), (K[3], 1, 90)):
        o = signer.order(key, side, 1000, price, interval=interval)
        market.submit_order(o["message"], o["signature"])
    ledger.debts[Account.from_key(K[1]).address] = 5
    row = market.close_interval(interval, force=True)
    assert (row.status, row.approved_count) == (IntervalStatus.RECORDED, 1)
    [(_iv, recorded)] = ledger.batches
    assert [t.sell["trader"] for t in recorded] == [Account.from_key(K[2]).address]


def test_settled_imbalance_is_stored_and_shown_per_participant(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    interval = market.current_interval() + 2
    for key, side, price in ((K[1], 0, 100_000), (K[2], 1, 200_000)):
        o = signer.order(key, side, 1000, price, interval=interval)
        market.submit_order(o["message"], o["signature"])
    assert market.close_interval(interval, force=True).status == IntervalStatus.RECORDED
    [trade] = market.trades(interval)
    seller, buyer = Account.from_key(K[1]).address, Account.from_key(K[2]).address
    tx = "0x" + "ab" * 32
    # what the chain said: the seller exported 400 of 1000 Wh (short 600), the buyer imported 700
    # of 1000 (long 300) and could be paid only part of its due
    ledger.settled[interval] = IntervalSettlement(
        {trade.id: (1000, 150_000, tx)},
        IntervalImbalance(
            interval_id=interval, clearing_price_per_kwh=150_000, short_price_bps=15_000,
            long_price_bps=5_000, collected=135_000, paid_out=22_500, tx_hash=tx,
            parties=(
                PartyImbalance(seller, 1000, 400, -135_000, 0),
                PartyImbalance(buyer, -1000, -700, 22_500, 2**70),
            ),
        ),
    )  # fmt: skip
    assert market.follow_settlements() == [interval]
    assert market.follow_settlements() == []  # once
    with TestClient(create_app(market, dev=True, scheduler=False)) as client:
        body = client.get(f"/intervals/{interval}").json()
    assert body["status"] == "settled"
    assert body["imbalance"] == {
        "clearingPricePerKWh": "150000",
        "shortPriceBps": 15_000,
        "longPriceBps": 5_000,
        "collected": "135000",
        "paidOut": "22500",
        "settleTxHash": tx,
        "participants": sorted(
            [
                {"account": seller, "contractedWh": 1000, "meteredWh": 400, "deviationWh": -600,
                 "paid": "135000", "received": "0", "owed": "0"},
                {"account": buyer, "contractedWh": -1000, "meteredWh": -700, "deviationWh": 300,
                 "paid": "0", "received": "22500", "owed": str(2**70)},
            ],
            key=lambda p: p["account"],
        ),
    }  # fmt: skip


def test_interval_without_imbalance_answers_null(market: Market) -> None:
    interval = market.current_interval() + 2
    with TestClient(create_app(market, dev=True, scheduler=False)) as client:
        assert client.get(f"/intervals/{interval}").json()["imbalance"] is None
