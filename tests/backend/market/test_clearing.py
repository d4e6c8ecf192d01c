"""The clearing's typed trades (``ClearedTrade``) and the intake's group-commit insert, below the
``Market`` facade."""

from __future__ import annotations

import asyncio

from backend.chain import protocol
from backend.market.auction import BookOrder, Candidate, Decision
from backend.market.batching import TradeSpec
from backend.market.clearing import ClearedTrade
from backend.market.errors import NonceUsedError
from backend.market.service import Market
from backend.settings import ANVIL_KEYS
from tests.backend.market.conftest import Signer

K = ANVIL_KEYS
SELL_HASH = "0x" + "11" * 32
BUY_HASH = "0x" + "22" * 32
SELLER = "0x" + "aa" * 20
BUYER = "0x" + "bb" * 20


def _candidate() -> Candidate:
    sell = BookOrder(SELL_HASH, SELLER, 0, 1500, 60, "0x" + "00" * 20, 1, 11)
    buy = BookOrder(BUY_HASH, BUYER, 1, 1500, 90, "0x" + "00" * 20, 2, 12)
    return Candidate(sell, buy, 1200, 75, "auction")


def test_cleared_trade_decided_row_spec_and_event() -> None:
    tid = protocol.trade_id_hex(SELL_HASH, BUY_HASH)
    t = ClearedTrade.decided(
        7, 3, tid, _candidate(), Decision(2, "LINE_OVERLOAD", "line" * 20, 104.25, 100.0)
    )
    assert t.element == ("line" * 20)[:40]
    assert t.row() == {
        "id": tid,
        "interval_id": 7,
        "position": 3,
        "kind": "auction",
        "sell_hash": SELL_HASH,
        "buy_hash": BUY_HASH,
        "seller": SELLER,
        "buyer": BUYER,
        "seller_bus": 11,
        "buyer_bus": 12,
        "energy_wh": 1200,
        "price_per_kwh": "75",
        "verdict": 2,
        "reason": "LINE_OVERLOAD",
        "element": ("line" * 20)[:40],
        "veto_value": 104.25,
        "veto_limit": 100.0,
        "status": "pending",
    }
    assert t.spec() == TradeSpec(tid, SELL_HASH, BUY_HASH, 1200, 75, 2)
    assert t.verdict_event() == {
        "tradeId": tid,
        "intervalId": 7,
        "verdict": 2,
        "reason": "LINE_OVERLOAD",
        "element": ("line" * 20)[:40],
        "vetoValue": 104.25,
        "vetoLimit": 100.0,
        "energyWh": 1200,
        "pricePerKWh": "75",
        "seller": SELLER,
        "buyer": BUYER,
    }


def test_clear_stores_trades_in_trade_id_order_with_positions(
    market: Market, signer: Signer
) -> None:
    interval = market.current_interval() + 2
    for key, side, wh, price in [
        (K[1], 0, 1000, 50),
        (K[2], 0, 1000, 70),
        (K[3], 1, 1500, 90),
        (K[4], 1, 500, 80),
    ]:
        o = signer.order(key, side, wh, price, interval=interval)
        market.submit_order(o["message"], o["signature"])
    market.close_interval(interval, force=True)
    rows = market.trades(interval)
    assert len(rows) == 3
    assert [t.position for t in rows] == list(range(len(rows)))
    assert [t.id for t in rows] == sorted((t.id for t in rows), key=lambda i: int(i, 16))
    assert all(t.id == protocol.trade_id_hex(t.sell_hash, t.buy_hash) for t in rows)
    verdicts = [e.data for e in market.events.recent() if e.kind == "verdict"]
    assert [v["tradeId"] for v in verdicts] == [t.id for t in rows]


def test_insert_held_undoes_the_counts_of_a_refused_order(market: Market, signer: Signer) -> None:
    first = signer.order(K[1], 0, 1000, 100, nonce=77)
    market.submit_order(first["message"], first["signature"])
    replay = signer.order(K[1], 0, 2000, 100, nonce=77)
    intake = market.intake

    async def run() -> list[object]:
        submit = intake.submit_order_async(replay["message"], replay["signature"])
        return await asyncio.gather(submit, return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[0], NonceUsedError)
    interval = first["message"]["intervalId"]
    assert intake.side_wh[(first["message"]["trader"], interval, 0)] == 1000
    assert intake.reserved(first["message"]["trader"]) == 0
    assert not intake.inflight and not intake.inflight_nonces
    assert intake.committer is not None and intake.committer.rows == 1
