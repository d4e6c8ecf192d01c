from __future__ import annotations

import pytest
from eth_account import Account

from backend.market.errors import (
    BadSignatureError,
    InsufficientDepositError,
    IntervalClosedError,
    NonceUsedError,
    OrderExpiredError,
    OverConnectionLimitError,
    UnknownTraderError,
    WrongDomainError,
)
from backend.market.memory import MemoryLedger
from backend.market.models import IntervalStatus, OrderStatus
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import ANVIL_KEYS
from tests.backend.market.conftest import VALIDATOR_KEY, Signer

K = ANVIL_KEYS


def test_submit_order_accepts_and_persists(market: Market, signer: Signer) -> None:
    o = signer.order(K[1], 0, 1000, 100)
    row = market.submit_order(o["message"], o["signature"])
    assert row.status == OrderStatus.OPEN
    assert market.get_order(row.hash).trader == Account.from_key(K[1]).address
    assert row.hash == "0x" + market.domain.digest("Order", o["message"]).hex()


def test_submit_order_refusals(market: Market, signer: Signer, ledger: MemoryLedger) -> None:
    o = signer.order(K[1], 0, 1000, 100)
    tampered = {**o["message"], "energyWh": 999}
    with pytest.raises(BadSignatureError):
        market.submit_order(tampered, o["signature"])
    with pytest.raises(WrongDomainError):
        market.submit_order(
            o["message"], o["signature"], {**market.template()["domain"], "chainId": 1}
        )
    market.submit_order(o["message"], o["signature"])
    with pytest.raises(NonceUsedError):
        market.submit_order(o["message"], o["signature"])
    expired = signer.order(K[1], 0, 1000, 100, expiry=ledger.now() - 1)
    with pytest.raises(OrderExpiredError):
        market.submit_order(expired["message"], expired["signature"])
    stranger = signer.order(K[8], 0, 1000, 100)
    with pytest.raises(UnknownTraderError):
        market.submit_order(stranger["message"], stranger["signature"])
    past = signer.order(K[1], 0, 1000, 100, interval=market.current_interval())
    with pytest.raises(IntervalClosedError):
        market.submit_order(past["message"], past["signature"])
    # 20 kW x 0.25 h = 5000 Wh export limit; 1000 already offered
    big = signer.order(K[1], 0, 4001, 100)
    with pytest.raises(OverConnectionLimitError):
        market.submit_order(big["message"], big["signature"])
    ledger.available[Account.from_key(K[2]).address] = 1000
    buy = signer.order(K[2], 1, 1000, 1000)  # costs exactly 1000
    market.submit_order(buy["message"], buy["signature"])
    more = signer.order(K[2], 1, 1, 1)
    with pytest.raises(InsufficientDepositError):
        market.submit_order(more["message"], more["signature"])


def test_close_interval_records_batch_once_and_survives_restart(
    market: Market, signer: Signer, ledger: MemoryLedger, store_url: str
) -> None:
    interval = market.current_interval() + 2
    for key, side, wh, price in [
        (K[1], 0, 1000, 50),
        (K[2], 0, 1000, 70),
        (K[3], 1, 1500, 90),
        (K[4], 1, 500, 60),
    ]:
        o = signer.order(key, side, wh, price, interval=interval)
        market.submit_order(o["message"], o["signature"])
    ledger.fail_sends = 1
    assert market.close_interval(interval, force=True).status == IntervalStatus.CLEARED
    [batch] = market.batches(interval)
    assert batch.state == "failed" and batch.attempts == 1
    assert batch.last_error == "simulated send failure"
    # "restart": a new market over the same store finishes the batch, exactly once
    again = Market(Store(store_url), ledger, None, VALIDATOR_KEY, MarketConfig())
    assert again.recover() == [interval]
    assert again.recover() == []
    # each send estimated first (the clearing measured the batch once)
    assert ledger.calls == ["estimate_record_gas"] + ["estimate_record_gas", "record_trades"] * 2
    assert len(ledger.batches) == 1
    row = again.interval(interval)
    assert row.status == IntervalStatus.RECORDED
    # merit order: 50->90 1000, 70->90 500, 70->60 no. marginal 70/90 -> 80
    assert row.clearing_price == "80" and row.traded_wh == 1500 and row.approved_count == 2
    ids = [t.trade_id for t in ledger.batches[0][1]]
    assert ids == sorted(ids, key=lambda t: int(t, 16))
    statuses = sorted(o.status for o in again.store.list_orders(interval_id=interval))
    assert statuses == ["filled", "filled", "partial", "unfilled"]


def test_close_interval_without_wait_counts_escrow_of_batches_still_in_flight(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    """``wait=False`` answers once the clearing is stored and records from the recorder thread;
    the next clearing must not count a deposit that a batch still on its way will lock."""
    import threading
    import time

    buyer = K[6]
    ledger.add_participant(Account.from_key(buyer).address, bus_id=20, deposit=2000)
    first = market.current_interval() + 2
    for interval, seller in ((first, K[1]), (first + 1, K[2])):
        for key, side in ((seller, 0), (buyer, 1)):
            o = signer.order(key, side, 1000, 1000, interval=interval)
            market.submit_order(o["message"], o["signature"])  # 1000 + 1000 fit the 2000
    release = threading.Event()
    record = ledger.record_trades

    def held(*args: object, **kwargs: object) -> str:
        assert release.wait(10)
        return record(*args, **kwargs)  # type: ignore[arg-type]

    ledger.record_trades = held  # type: ignore[method-assign]
    row = market.close_interval(first, force=True, wait=False)
    assert row.status == IntervalStatus.CLEARED and row.approved_count == 1
    # the buyer withdraws 500 while the first batch (escrow 1000) is still on its way
    ledger.available[Account.from_key(buyer).address] = 1500
    second = market.close_interval(first + 1, force=True, wait=False)
    assert second.approved_count == 0  # 1500 - 1000 in flight leaves 500 < 1000
    release.set()
    deadline = time.monotonic() + 10
    while market.interval(first).status != IntervalStatus.RECORDED:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [i for i, _trades in ledger.batches] == [first]
    assert ledger.available[Account.from_key(buyer).address] == 500


def test_gate_closure_agrees_with_the_chain(market: Market, ledger: MemoryLedger) -> None:
    """The order book closes at the market's lead before the start, but never later than the
    chain's gate closure minus the clearing window; a batch the chain's gate overtook is final."""
    iv = market.current_interval() + 5
    start = iv * 900
    assert (market.config.gate_lead_seconds, market.config.clearing_window_s) == (60, 30)
    assert ledger.gate_closure(iv) == start  # chain lead 0
    assert market.gate_closure(iv) == start - 60
    ledger.gate_lead_seconds = 600  # a chain whose gate closes 10 min before the start
    assert ledger.gate_closure(iv) == start - 600
    assert market.gate_closure(iv) == start - 630


def test_batch_overtaken_by_the_chains_gate_is_expired_not_retried(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    interval = market.current_interval() + 2
    for key, side in ((K[1], 0), (K[3], 1)):
        o = signer.order(key, side, 1000, 90, interval=interval)
        market.submit_order(o["message"], o["signature"])
    ledger.fail_sends = 1
    assert market.close_interval(interval, force=True).status == IntervalStatus.CLEARED
    [failed] = market.batches(interval)
    assert failed.state == "failed"
    ledger.advance(interval * 900 + 6 - ledger.now())  # past the chain's gate closure (+5 s)
    calls = len(ledger.calls)
    market.record_batch(interval)
    [expired] = market.batches(interval)
    assert expired.state == "expired" and expired.next_attempt_at is None
    assert expired.last_error is not None and "gate closure" in expired.last_error
    assert len(ledger.calls) == calls  # nothing estimated, nothing sent
    market.tick()
    assert len(ledger.calls) == calls and ledger.batches == []


def test_nonce_cancelled_after_clearing_does_not_sink_the_interval(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    """A seller cancels its nonce on chain between the clearing and the recording: the batch would
    revert, so the interval is cleared again without that order (the chain's eligibility reads
    leave it out) and the other trades are recorded."""
    interval = market.current_interval() + 2
    orders = {}
    for key, side, price in ((K[1], 0, 50), (K[2], 0, 60), (K[3], 1, 90), (K[4], 1, 90)):
        o = signer.order(key, side, 1000, price, interval=interval)
        orders[key] = o["message"]
        market.submit_order(o["message"], o["signature"])
    with market._record_lock:  # the recorder waits until the seller has cancelled
        row = market.close_interval(interval, force=True, wait=False)
        assert (row.status, row.approved_count) == (IntervalStatus.CLEARED, 2)
        first = {t.seller for t in market.trades(interval)}
        assert first == {Account.from_key(K[1]).address, Account.from_key(K[2]).address}
        ledger.cancelled.add((orders[K[1]]["trader"], int(orders[K[1]]["nonce"])))
    market.record_batch(interval)
    [failed] = market.batches(interval)
    assert failed.state == "failed" and "MarketOrderCancelled" in str(failed.last_error)
    market.tick()  # cleared again without K1's order, recorded
    assert market.interval(interval).status == IntervalStatus.RECORDED
    [(_iv, recorded)] = ledger.batches
    assert [(t.sell["trader"], t.energy_wh) for t in recorded] == [
        (Account.from_key(K[2]).address, 1000)
    ]
    assert {t.seller for t in market.trades(interval)} == {Account.from_key(K[2]).address}
    statuses = {o.trader: o.status for o in market.store.list_orders(interval_id=interval)}
    assert statuses[Account.from_key(K[1]).address] == "unfilled"


def test_compact_eip2098_signature_is_accepted_and_stored_canonical(
    market: Market, signer: Signer
) -> None:
    """ethers' compactSerialized / viem's serializeCompactSignature: r || (yParity << 255 | s)."""
    o = signer.order(K[1], 0, 1000, 100)
    full = bytes.fromhex(o["signature"][2:])
    r, s, v = full[:32], int.from_bytes(full[32:64], "big"), full[64]
    compact = "0x" + (r + (((v - 27) << 255) | s).to_bytes(32, "big")).hex()
    row = market.submit_order(o["message"], compact)
    assert market.get_order(row.hash).signature == o["signature"]
    other = signer.order(K[1], 0, 1000, 100)
    full = bytes.fromhex(other["signature"][2:])
    r, s, v = full[:32], int.from_bytes(full[32:64], "big"), full[64]
    flipped = "0x" + (r + ((((v - 27) ^ 1) << 255) | s).to_bytes(32, "big")).hex()
    with pytest.raises(BadSignatureError, match="recovers to"):  # the other parity: another key
        market.submit_order(other["message"], flipped)


def test_expired_batch_shows_in_the_api(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    from fastapi.testclient import TestClient

    from backend.api.app import create_app

    interval = market.current_interval() + 2
    for key, side in ((K[1], 0), (K[3], 1)):
        o = signer.order(key, side, 1000, 90, interval=interval)
        market.submit_order(o["message"], o["signature"])
    ledger.fail_sends = 1
    market.close_interval(interval, force=True)
    ledger.advance(interval * 900 + 6 - ledger.now())
    market.record_batch(interval)
    with TestClient(create_app(market, scheduler=False, recover=False)) as client:
        body = client.get(f"/intervals/{interval}").json()
    assert body["batch"]["state"] == "expired"
    assert [b["state"] for b in body["batches"]] == ["expired"]
    assert "gate closure" in body["batches"][0]["reason"]


def test_template_for_ethers_and_viem_has_no_domain_type(market: Market) -> None:
    from fastapi.testclient import TestClient

    from backend.api.app import create_app

    with TestClient(create_app(market, scheduler=False, recover=False)) as client:
        v4 = client.get("/orders/eip712").json()
        ethers = client.get("/orders/eip712", params={"for": "ethers"}).json()
        viem = client.get("/orders/eip712", params={"for": "viem", "primaryType": "Cancel"}).json()
        bad = client.get("/orders/eip712", params={"for": "web3js"})
    assert set(v4["types"]) == {"EIP712Domain", "Order"}
    assert set(ethers["types"]) == {"Order"} and ethers["types"]["Order"] == v4["types"]["Order"]
    assert ethers["domain"] == v4["domain"] and ethers["primaryType"] == "Order"
    assert set(viem["types"]) == {"Cancel"}
    assert bad.status_code == 422


def test_next_open_interval_still_takes_orders(
    market: Market, signer: Signer, ledger: MemoryLedger
) -> None:
    from fastapi.testclient import TestClient

    from backend.api.app import create_app

    now = ledger.now()
    current = now // 900
    with TestClient(create_app(market, scheduler=False, recover=False)) as client:
        body = client.get("/intervals/next-open").json()
        assert client.get("/intervals/current").json()["id"] == current
    expected = current + 1 if now < (current + 1) * 900 - 60 else current + 2
    assert (body["id"], body["status"]) == (expected, "open")
    o = signer.order(K[1], 0, 1000, 100, interval=body["id"])
    assert market.submit_order(o["message"], o["signature"]).status == "open"
