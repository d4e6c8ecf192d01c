"""The asyncio accept path (``Market.submit_order_async``, used by POST /orders): group commit,
answers only after the commit, the same refusals as ``submit_order``, exact limits while orders
wait for their commit, and gate closure with orders in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend.market.errors import IntervalClosedError, NonceUsedError, OverConnectionLimitError
from backend.market.models import OrderStatus
from backend.market.service import Market
from backend.settings import ANVIL_KEYS
from tests.backend.market.conftest import Signer

K = ANVIL_KEYS


async def _submit(market: Market, o: dict[str, Any]) -> dict[str, Any]:
    row = await market.submit_order_async(o["message"], o["signature"])
    # durable acceptance: the row is in the store when the caller gets its answer (a clearing in
    # another thread may already have moved it on from OPEN by the time we look)
    stored = market.get_order(row["hash"])
    assert stored.trader == row["trader"] and stored.hash == row["hash"]
    return row


def _gather(market: Market, orders: list[dict[str, Any]]) -> list[Any]:
    async def run() -> list[Any]:
        return await asyncio.gather(*(_submit(market, o) for o in orders), return_exceptions=True)

    return asyncio.run(run())


def test_concurrent_orders_share_one_transaction(market: Market, signer: Signer) -> None:
    orders = [signer.order(K[i % 4], i % 2, 10, 100) for i in range(40)]
    results = _gather(market, orders)
    assert all(isinstance(r, dict) for r in results), results
    committer = market._committer
    assert committer is not None and committer.rows == 40 and committer.batches < 40
    assert len(market.store.list_orders(limit=1000)) == 40
    assert not market._inflight and not market._inflight_nonces


def test_same_order_twice_in_one_batch_is_refused_once(market: Market, signer: Signer) -> None:
    o = signer.order(K[1], 0, 1000, 100)
    results = _gather(market, [o, o])
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, NonceUsedError) for r in results) == 1
    interval = o["message"]["intervalId"]
    assert market._side_wh[(o["message"]["trader"], interval, 0)] == 1000
    assert len(market.store.list_orders(limit=10)) == 1


def test_used_nonce_in_a_batch_costs_the_others_nothing(market: Market, signer: Signer) -> None:
    first = signer.order(K[1], 0, 1000, 100, nonce=1007)
    market.submit_order(first["message"], first["signature"])
    replay = signer.order(K[1], 0, 2000, 100, nonce=1007)  # another order on a used nonce
    others = [signer.order(K[2], 0, 10, 100) for _ in range(5)]
    results = _gather(market, [replay, *others])
    assert isinstance(results[0], NonceUsedError)
    assert all(isinstance(r, dict) for r in results[1:])
    interval = first["message"]["intervalId"]
    # the refused order's reservation is undone
    assert market._side_wh[(first["message"]["trader"], interval, 0)] == 1000


def test_limit_is_exact_while_an_order_waits_for_its_commit(market: Market, signer: Signer) -> None:
    # limit 20 kW x 900 s = 5000 Wh. The replay (3000 Wh, used nonce) is admitted first and waits
    # for the commit that refuses it; the second order (2000 Wh) only fits without it and must be
    # accepted, as it would be had the replay been refused first.
    used = signer.order(K[1], 0, 1000, 100, nonce=1003)
    market.submit_order(used["message"], used["signature"])
    replay = signer.order(K[1], 0, 3000, 100, nonce=1003)
    fits = signer.order(K[1], 0, 2000, 100)
    results = _gather(market, [replay, fits])
    assert isinstance(results[0], NonceUsedError)
    assert isinstance(results[1], dict)
    too_much = signer.order(K[1], 0, 2001, 100)
    with pytest.raises(OverConnectionLimitError):
        market.submit_order(too_much["message"], too_much["signature"])


def test_gate_closure_waits_for_orders_in_flight(market: Market, signer: Signer) -> None:
    interval = market.current_interval() + 2
    orders = [signer.order(K[i % 4], i % 2, 10, 100 + i, interval=interval) for i in range(24)]
    late = signer.order(K[1], 0, 10, 100, interval=interval)

    async def run() -> tuple[list[Any], Any, Any]:
        committer = market._group_commit()
        committer._scheduled = True  # hold the flush: the orders stay admitted but uncommitted
        tasks = [asyncio.ensure_future(_submit(market, o)) for o in orders]
        for _ in range(500):  # the registry/balance caches warm up in worker threads first
            if len(market._inflight) == len(orders):
                break
            await asyncio.sleep(0.01)
        assert len(market._inflight) == len(orders)
        closing = asyncio.ensure_future(asyncio.to_thread(market.close_interval, interval, True))
        await asyncio.sleep(0.2)  # close_interval now waits for the orders in flight
        assert not closing.done()
        refused = await asyncio.gather(_submit(market, late), return_exceptions=True)
        committer.flush()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, await closing, refused[0]

    results, closed, refused = asyncio.run(run())
    assert all(isinstance(r, dict) for r in results), results
    assert isinstance(refused, IntervalClosedError)
    assert closed.traded_wh > 0
    # every order answered 201 was in the store before the clearing read the book
    rows = market.store.list_orders(interval_id=interval, limit=100)
    assert {o.hash for o in rows} == {r["hash"] for r in results}
    assert all(o.status != OrderStatus.OPEN for o in rows)
