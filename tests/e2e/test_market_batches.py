"""Intervals larger than one block: the market splits an interval's trades into batches by the gas
it measures on the chain, records every approved trade exactly once, reports a batch that cannot
be recorded (reason, attempts, back-off) without blocking anything else, and recovers after a
crash with every batch's transaction. Real Anvil, real contracts, real SQLite store."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from backend.api.app import create_app
from backend.chain import eip712, protocol
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.devtools.anvil import AnvilProcess
from backend.devtools.devstack import start_dev_stack
from backend.devtools.server import start_in_thread
from backend.market import typed
from backend.market.errors import TooManyOrdersError
from backend.market.factory import build_market
from backend.market.service import Market, MarketConfig
from backend.settings import Settings

pytestmark = pytest.mark.e2e
TRADERS = 100


def trader_keys(count: int, seed: str = "tegrid batch trader") -> list[str]:
    return ["0x" + keccak(text=f"{seed} {i}").hex() for i in range(count)]


def provision_many(settings: Settings, deployment: Any, keys: list[str]) -> None:
    """Register ``keys`` as participants (meters of their own) with funded deposits."""
    admin = ChainClient(settings.rpc_url, settings.admin_key)
    w3 = admin.w3
    registry = contract_at(w3, "ParticipantRegistry", deployment.address("ParticipantRegistry"))
    market = contract_at(w3, "EnergyMarket", deployment.address("EnergyMarket"))
    token = contract_at(w3, "EnergyToken", deployment.address("EnergyToken"))
    deposit = 10**12
    for i, key in enumerate(keys):
        wallet = Account.from_key(key).address
        meter = Account.from_key("0x" + keccak(text=f"batch meter {i}").hex()).address
        w3.provider.make_request("anvil_setBalance", [wallet, hex(10**21)])  # type: ignore[arg-type]
        admin.transact(registry.functions.connect(wallet, meter, 1 + i % 40, 400_000, 400_000))
        admin.transact(token.functions.mint(wallet, deposit))
        trader = ChainClient(settings.rpc_url, key)
        trader.transact(token.functions.approve(market.address, deposit))
        trader.transact(market.functions.deposit(deposit))


def bilateral_pairs(
    domain: typed.Domain,
    keys: list[str],
    interval_id: int,
    pairs: int,
    first_nonce: int = 1,
    energy_wh: int = 10,
    price_per_kwh: int = 100_000,
) -> list[dict[str, Any]]:
    """``2 x pairs`` signed orders: pair ``i`` is a sell by one trader and a buy by the next, each
    naming the other, so each pair clears into exactly one trade."""
    bodies: list[dict[str, Any]] = []
    n = len(keys)
    for i in range(pairs):
        seller, buyer = keys[i % n], keys[(i + 1 + (i // n) % (n - 1)) % n]
        if seller == buyer:
            buyer = keys[(i + 1) % n]
        s_addr, b_addr = Account.from_key(seller).address, Account.from_key(buyer).address
        nonce = first_nonce + i
        for key, side, me, other in ((seller, 0, s_addr, b_addr), (buyer, 1, b_addr, s_addr)):
            msg = {
                "trader": me, "side": side, "intervalId": interval_id, "energyWh": energy_wh,
                "pricePerKWh": price_per_kwh, "nonce": nonce, "expiry": interval_id * 900 + 86_400,
                "counterparty": other,
            }  # fmt: skip
            sig = eip712.sign_digest(domain.digest("Order", msg), key)
            bodies.append({"message": msg, "signature": sig})
    return bodies


def chain_trades(w3: Any, market_address: str, from_block: int, ids: set[str]) -> list[str]:
    """Trade ids of every TradeRecorded log of the market among ``ids`` (with repeats)."""
    market = contract_at(w3, "EnergyMarket", market_address)
    logs = market.events.TradeRecorded.get_logs(from_block=from_block)
    found = ["0x" + bytes(lg["args"]["tradeId"]).hex() for lg in logs]
    return [t for t in found if t in ids]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("batches")
    with AnvilProcess() as anvil:
        settings = dev_settings(tmp, anvil.url)
        dev = start_dev_stack(settings, participants=2)
        keys = trader_keys(TRADERS)
        provision_many(settings, dev.deployment, keys)
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        now = int(w3.eth.get_block("latest")["timestamp"]) // 900
        # the settlement test (the module's last: it moves the chain's clock past its interval) gets
        # the lowest interval, so that nothing else is due when the keeper runs; 4 ahead keeps its
        # gate closure >= 44 minutes away; every other test takes a later one (open_interval)
        yield {
            "settings": settings, "deployment": dev.deployment, "keys": keys, "w3": w3,
            "settle_interval": now + 4, "next": now + 5,
        }  # fmt: skip


def open_interval(chain: dict[str, Any], market: Market, ahead: int = 2, span: int = 1) -> int:
    """An interval ``ahead`` of now that no earlier test of the module used (their store is shared:
    on a slow machine the clock passes interval boundaries during the module, and ``current + 2``
    of a later test could be ``current + 3`` of an earlier one, already closed); ``span`` reserves
    the intervals after it the test uses too."""
    iv = max(market.current_interval() + ahead, chain["next"])
    chain["next"] = iv + span
    return iv


def new_market(settings: Settings, **config: Any) -> Market:
    cfg = MarketConfig(interval_seconds=900, **config)
    return build_market(settings, with_grid=False, config=cfg)


def submit(market: Market, bodies: list[dict[str, Any]]) -> None:
    for b in bodies:
        market.submit_order(b["message"], b["signature"])


def interval_state(chain: dict[str, Any], interval_id: int) -> tuple[int, int]:
    market = contract_at(chain["w3"], "EnergyMarket", chain["deployment"].address("EnergyMarket"))
    _last, batches, approved, *_rest = market.functions.intervalOf(interval_id).call()
    return int(batches), int(approved)


def batch_logs(chain: dict[str, Any], interval_id: int) -> list[Any]:
    market = contract_at(chain["w3"], "EnergyMarket", chain["deployment"].address("EnergyMarket"))
    return list(
        market.events.BatchRecorded.get_logs(
            from_block=0, argument_filters={"intervalId": interval_id}
        )
    )


def test_interval_of_3000_trades_records_every_trade_once_in_measured_batches(
    chain: dict[str, Any],
) -> None:
    market = new_market(chain["settings"])
    iv = open_interval(chain, market, 3)
    bodies = bilateral_pairs(market.domain, chain["keys"], iv, 3000)
    t0 = time.monotonic()
    submit(market, bodies)
    t_orders = time.monotonic() - t0
    row = market.close_interval(iv, force=True)
    t_close = time.monotonic() - t0 - t_orders
    assert (row.status, row.approved_count, row.vetoed_count) == ("recorded", 3000, 0)
    batches = market.batches(iv)
    limit = chain["w3"].eth.get_block("latest")["gasLimit"]
    sizes = [len(json.loads(b.trade_ids)) for b in batches]
    print(
        f"\n3000 trades: orders {t_orders:.1f} s, close+record {t_close:.1f} s, "
        f"{len(batches)} batches {sizes}, gas {[b.gas_used for b in batches]}, limit {limit}"
    )
    assert len(batches) >= 2 and sum(sizes) == 3000
    assert {b.state for b in batches} == {"recorded"}
    assert all(b.gas_used is not None and b.gas_used <= limit // 2 for b in batches)
    assert [b.batch_count for b in batches] == [len(batches)] * len(batches)
    # on chain: the batches in order, every approved trade exactly once
    assert interval_state(chain, iv) == (len(batches), 3000)
    logs = batch_logs(chain, iv)
    assert [int(lg["args"]["batchIndex"]) for lg in logs] == list(range(len(batches)))
    assert ["0x" + bytes(lg["transactionHash"]).hex() for lg in logs] == [
        b.tx_hash for b in batches
    ]
    trades = market.trades(iv)
    assert len(trades) == 3000 and {t.status for t in trades} == {"recorded"}
    ids = {t.id for t in trades}
    on_chain = chain_trades(chain["w3"], market.ledger.market_address, 0, ids)  # type: ignore[attr-defined]
    assert len(on_chain) == 3000 and set(on_chain) == ids
    by_tx = Counter(t.tx_hash for t in trades)
    assert by_tx == {b.tx_hash: n for b, n in zip(batches, sizes, strict=True)}
    statuses = Counter(o.status for o in market.store.list_orders(interval_id=iv, limit=10_000))
    assert statuses == {"filled": 6000}


def operator_nonce(chain: dict[str, Any]) -> int:
    address = Account.from_key(chain["settings"].market_operator_key).address
    return int(chain["w3"].eth.get_transaction_count(address))


def test_reverting_batch_is_reported_backed_off_and_blocks_nothing(chain: dict[str, Any]) -> None:
    # max_reclears=0: the batch is only reported and retried (the clearing again without the
    # cancelled order is the next test)
    # back-off 5 s: longer than clearing and recording the next interval below takes on a loaded
    # machine (with 1 s the first retry was already due at the first tick)
    market = new_market(chain["settings"], retry_base_s=5.0, max_reclears=0)
    keys = chain["keys"]
    iv = open_interval(chain, market, 5, span=2)
    bodies = bilateral_pairs(market.domain, keys, iv, 10, first_nonce=900_001)
    submit(market, bodies)
    # the seller of the first pair cancels its nonce on chain between the clearing and the send
    with market._record_lock:
        row = market.close_interval(iv, force=True, wait=False)
        assert (row.status, row.approved_count) == ("cleared", 10)
        seller = ChainClient(chain["settings"].rpc_url, keys[0])
        escrow = contract_at(seller.w3, "EnergyMarket", market.ledger.market_address)
        seller.transact(escrow.functions.cancelNonce(900_001))
        sent_before = operator_nonce(chain)
    deadline = time.monotonic() + 30
    while market.batches(iv)[0].state != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [batch] = market.batches(iv)
    wallet = Account.from_key(keys[0]).address
    assert batch.attempts == 1 and batch.tx_hash is None
    assert batch.last_error == (
        f"recordTrades would revert: MarketOrderCancelled({wallet.lower()}, 900001)"
    )
    assert batch.next_attempt_at == pytest.approx(batch.updated_at + 5.0, abs=0.2)
    assert operator_nonce(chain) == sent_before  # found by the estimate: nothing mined
    failed = [e.data for e in market.events.recent() if e.kind == "batch"]
    assert failed[-1]["state"] == "failed" and failed[-1]["intervalId"] == iv
    assert failed[-1]["reason"] == batch.last_error and failed[-1]["attempts"] == 1
    # the API shows it
    server = start_in_thread(create_app(market, dev=True, scheduler=False, recover=False))
    try:
        body = httpx.get(f"{server.url}/intervals/{iv}", timeout=30).json()
    finally:
        server.stop()
    assert body["status"] == "cleared" and body["batch"]["state"] == "failed"
    assert body["batches"] == [
        {
            "index": 0, "count": 1, "state": "failed", "trades": 10, "orders": 20,
            "reason": batch.last_error, "txHash": None, "blockNumber": None, "gasUsed": None,
            "attempts": 1, "nextAttemptAt": batch.next_attempt_at,
        }
    ]  # fmt: skip
    # the next interval is cleared and recorded meanwhile
    nxt = iv + 1
    submit(market, bilateral_pairs(market.domain, keys, nxt, 5, first_nonce=910_001))
    assert market.close_interval(nxt, force=True).status == "recorded"
    assert interval_state(chain, nxt) == (1, 5)
    # the scheduler retries only when due, estimating first: back-off 5 s, then 10 s
    market.tick()
    assert market.batches(iv)[0].attempts == 1
    due = market.batches(iv)[0].next_attempt_at
    assert due is not None
    time.sleep(max(0.0, due - time.time()) + 0.05)
    market.tick()
    again = market.batches(iv)[0]
    assert (again.state, again.attempts) == ("failed", 2)
    assert again.next_attempt_at == pytest.approx(again.updated_at + 10.0, abs=0.2)
    assert operator_nonce(chain) == sent_before + 1  # the next interval's batch only
    assert interval_state(chain, iv) == (0, 0)
    # a restart recovers without raising, also with the chain away
    assert new_market(chain["settings"]).recover() == []
    assert market.batches(iv)[0].attempts == 3
    away = dataclasses.replace(chain["settings"], rpc_url="http://127.0.0.1:9")
    assert new_market(away).recover() == []
    down = market.batches(iv)[0]
    assert down.state == "failed" and down.attempts == 4
    assert down.last_error is not None
    assert down.last_error.startswith("reading an interval failed: ")


def test_nonce_cancelled_after_clearing_is_cleared_again_without_it(
    chain: dict[str, Any],
) -> None:
    """One participant cannot sink an interval: its nonce cancelled on chain between the clearing
    and the send, the batch would revert, so the scheduler clears the interval again (the chain's
    eligibility reads leave that order out; new signed batch) and the other nine trades land."""
    market = new_market(chain["settings"])
    keys = chain["keys"]
    iv = open_interval(chain, market, 11)
    submit(market, bilateral_pairs(market.domain, keys, iv, 10, first_nonce=950_001))
    with market._record_lock:
        assert market.close_interval(iv, force=True, wait=False).approved_count == 10
        seller = ChainClient(chain["settings"].rpc_url, keys[0])
        escrow = contract_at(seller.w3, "EnergyMarket", market.ledger.market_address)
        seller.transact(escrow.functions.cancelNonce(950_001))
        sent_before = operator_nonce(chain)
    market.record_batch(iv)
    [failed] = market.batches(iv)
    assert failed.state == "failed" and "MarketOrderCancelled" in str(failed.last_error)
    market.tick()
    assert market.interval(iv).status == "recorded"
    assert interval_state(chain, iv) == (1, 9)
    assert operator_nonce(chain) == sent_before + 1  # only the new batch was mined
    trades = market.trades(iv)
    wallet = Account.from_key(keys[0]).address
    assert len(trades) == 9 and wallet not in {t.seller for t in trades}


def test_orders_per_trader_and_interval_are_capped(chain: dict[str, Any]) -> None:
    market = new_market(chain["settings"], max_orders_per_trader_interval=4)
    iv = open_interval(chain, market, 7, span=2)
    key = chain["keys"][3]
    trader = Account.from_key(key).address
    domain = market.domain

    def order(nonce: int) -> dict[str, Any]:
        nonce = nonce if nonce > 100 else 920_000 + nonce
        msg = {
            "trader": trader, "side": 0, "intervalId": iv, "energyWh": 5,
            "pricePerKWh": 1000, "nonce": nonce, "expiry": iv * 900 + 86_400,
            "counterparty": protocol.ZERO_ADDRESS,
        }  # fmt: skip
        return {"message": msg, "signature": eip712.sign_digest(domain.digest("Order", msg), key)}

    rows = [market.submit_order(**order(920_000 + n)) for n in range(4)]
    with pytest.raises(TooManyOrdersError) as refused:
        market.submit_order(**order(920_004))
    assert str(refused.value) == (
        f"{trader} already has 4 live orders for interval {iv}, the limit per trader and "
        "interval (TEGRID_MAX_ORDERS_PER_TRADER_INTERVAL); cancel one or trade in another interval"
    )
    # another interval is not affected; through the API the refusal is a 422 naming the limit
    other = dict(order(920_005))
    other["message"] = {**other["message"], "intervalId": iv + 1}
    msg = other["message"]
    other["signature"] = eip712.sign_digest(domain.digest("Order", msg), key)
    market.submit_order(**other)
    server = start_in_thread(create_app(market, dev=True, scheduler=False, recover=False))
    try:
        r = httpx.post(f"{server.url}/orders", json=order(920_006), timeout=30)
        assert r.status_code == 422
        assert r.json()["detail"]["code"] == "TOO_MANY_ORDERS"
        assert "4 live orders" in r.json()["detail"]["message"]
        # a cancelled order frees its place
        cancel = {"trader": trader, "orderHash": rows[0].hash}
        sig = eip712.sign_digest(domain.digest("Cancel", cancel), key)
        r = httpx.post(
            f"{server.url}/orders/{rows[0].hash}/cancel", json={"signature": sig}, timeout=30
        )
        assert r.status_code == 200, r.text
        post = [httpx.post(f"{server.url}/orders", json=order(n), timeout=30) for n in (7, 8)]
        assert [r.status_code for r in post] == [201, 422]
    finally:
        server.stop()
    # the cap holds after a restart (counted from the store)
    with pytest.raises(TooManyOrdersError):
        new_market(chain["settings"], max_orders_per_trader_interval=4).submit_order(
            **order(920_009)
        )


def test_batch_found_on_chain_by_recover_carries_its_transaction(chain: dict[str, Any]) -> None:
    market = new_market(chain["settings"])
    iv = open_interval(chain, market, 9)
    submit(market, bilateral_pairs(market.domain, chain["keys"], iv, 8, first_nonce=930_001))
    with market._record_lock:  # the recorder thread waits: the batch is sent from outside
        assert market.close_interval(iv, force=True, wait=False).status == "cleared"
        [b] = market.batches(iv)
        tx = market.ledger.record_trades(
            iv,
            b.batch_index,
            b.batch_count,
            market._batch_input(b),
            b.evidence_hash,
            b.attestation_signature,
        )
        # a process that sent it and crashed before storing the receipt; the next one recovers
        restarted = new_market(chain["settings"])
        assert restarted.recover() == [iv]
    [found] = restarted.batches(iv)
    receipt = chain["w3"].eth.get_transaction_receipt(tx)
    assert (found.state, found.tx_hash, found.block_number) == (
        "recorded",
        tx,
        receipt["blockNumber"],
    )
    assert found.gas_used == receipt["gasUsed"]
    assert {t.tx_hash for t in restarted.trades(iv)} == {tx}
    assert restarted.interval(iv).status == "recorded"
    assert interval_state(chain, iv) == (1, 8)


def test_interval_of_3000_trades_settles_in_pages_exactly_once(chain: dict[str, Any]) -> None:
    """The last test of the module (it moves the chain's clock): 3,000 trades recorded in measured
    batches, every meter's reading on chain, the keeper settles in pages sized by the gas it
    estimates; every trade is paid exactly once, in full (delivery = contract)."""
    from backend.chain import batches as encoder
    from backend.devtools.clock import rpc
    from backend.keeper import SettlementKeeper

    settings, w3 = chain["settings"], chain["w3"]
    market = new_market(settings)
    iv = chain["settle_interval"]
    submit(market, bilateral_pairs(market.domain, chain["keys"], iv, 3000, first_nonce=500_001))
    assert market.close_interval(iv, force=True).status == "recorded"
    recorded = market.batches(iv)
    trades = market.trades(iv)
    sold: Counter[str] = Counter()
    bought: Counter[str] = Counter()
    for t in trades:
        sold[t.seller] += t.energy_wh
        bought[t.buyer] += t.energy_wh
    # the interval ends; every trader's meter reports exactly its contracted energy
    rpc(w3, "evm_setNextBlockTimestamp", [(iv + 1) * 900 + 1])
    rpc(w3, "evm_mine", [])
    dep = chain["deployment"]
    readings = contract_at(w3, "MeterReadings", dep.address("MeterReadings"))
    signed = []
    for i, key in enumerate(chain["keys"]):
        wallet = Account.from_key(key).address
        meter_key = "0x" + keccak(text=f"batch meter {i}").hex()
        meter = Account.from_key(meter_key).address
        signed.append(
            encoder.signed_reading(
                meter_key, dep.chain_id, readings.address, meter, iv, bought[wallet], sold[wallet]
            )
        )
    oracle = ChainClient(settings.rpc_url, settings.oracle_key)  # holds ORACLE_ROLE
    oracle.transact(readings.functions.submitReadings(iv, encoder.readings_arg(signed)))
    admin = ChainClient(settings.rpc_url, settings.admin_key)

    keeper = SettlementKeeper(admin, dep)
    # the whole interval fits one 30M block (100 parties' balances, 3,000 events); 40 % of the
    # block per page makes the keeper split it by its estimates (each page also re-reads all
    # 3,000 records for the parties' totals: ~5.6M gas)
    keeper.page_gas_share = 0.4
    assert keeper.run_once() == [iv]
    market_contract = contract_at(w3, "EnergyMarket", dep.address("EnergyMarket"))
    pages = market_contract.events.BatchesSettled.get_logs(
        argument_filters={"intervalId": iv}, from_block=0
    )
    spans = [(int(p["args"]["fromBatch"]), int(p["args"]["toBatch"])) for p in pages]
    gas = [w3.eth.get_transaction_receipt(p["transactionHash"])["gasUsed"] for p in pages]
    print(f"\n3000 trades in {len(recorded)} batches settled in pages {spans}, gas {gas}")
    assert all(g <= 30_000_000 * 0.4 for g in gas)
    assert len(spans) >= 2  # more than one block's worth of settlement
    assert spans[0][0] == 0 and spans[-1][1] == len(recorded)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    settled = []
    for p in pages:
        receipt = w3.eth.get_transaction_receipt(p["transactionHash"])
        for ev in market_contract.events.TradeSettled().process_receipt(receipt):
            settled.append(("0x" + bytes(ev["args"]["tradeId"]).hex(), ev["args"]))
    assert len(settled) == 3000 and {tid for tid, _a in settled} == {t.id for t in trades}
    # 10 Wh at 100,000 per kWh: escrow 1,000, delivered in full, paid 1,000, nothing back
    assert {(a["deliveredWh"], a["paid"], a["refunded"]) for _t, a in settled} == {(10, 1000, 0)}
    state = market_contract.functions.intervalOf(iv).call()
    assert tuple(state[4:7]) == (len(recorded), True, False)  # all settled, not reclaimed
    market.follow_settlements()
    assert market.interval(iv).status == "settled"
