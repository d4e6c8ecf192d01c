"""Settlement after full, partial and missing delivery, through the real pieces: trades recorded
with signed orders and a validator attestation, readings relayed by the oracle over Mosquitto,
intervals settled by the keeper; balances compared with hand-computed integers (min-of-two, pro
rata).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from math import floor
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from backend.chain import batches
from backend.chain.batches import CandidateTrade
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.clock import current_interval, end_interval, set_time
from backend.devtools.participants import register_participants
from backend.iot.meters import MeterSimulator, MeterSpec, dev_meter_key, dev_wallet_key
from backend.iot.transport import MqttTransport
from backend.keeper import SettlementKeeper
from backend.oracle.daemon import OracleConfig, OracleDaemon
from backend.oracle.store import OracleStore
from backend.oracle.web3_ledger import Web3Ledger
from backend.settings import ANVIL_KEYS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

INTERVAL_S = 900
DELAY_S = 1800  # reclaimAfter (end + 2 x delay) of the first interval stays ahead of the clock
PRICE = 123_457  # token base units per kWh
DEPOSIT = 10**9
S1, S2, S3, B1, B2 = range(5)


def _wait(pred: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def stack(tmp_path: Any) -> Iterator[dict[str, Any]]:
    with AnvilProcess() as anvil, MosquittoBroker() as broker:
        admin = ChainClient(anvil.url, ANVIL_KEYS[0])
        a = admin.address
        dep = deploy_all(
            admin,
            RoleHolders(a, a, a, a),
            interval_seconds=INTERVAL_S,
            settlement_delay_seconds=DELAY_S,
        )
        yield {"anvil": anvil, "broker": broker, "admin": admin, "dep": dep, "tmp": tmp_path}


def _escrow(q: int, price: int) -> int:
    return (q * price + 999) // 1000


def _expected(
    trades: list[tuple[int, int, int]], readings: dict[int, tuple[int, int]]
) -> dict[int, int]:
    """Net change of available balances: sellers +paid, buyers -paid (escrow - refund)."""
    sold: dict[int, int] = {}
    bought: dict[int, int] = {}
    for s, b, q in trades:
        sold[s] = sold.get(s, 0) + q
        bought[b] = bought.get(b, 0) + q
    change: dict[int, int] = {}
    for s, b, q in trades:
        imp_b = readings.get(b, (0, 0))[0]
        exp_s = readings.get(s, (0, 0))[1]
        r = min(Fraction(min(exp_s, sold[s]), sold[s]), Fraction(min(imp_b, bought[b]), bought[b]))
        delivered = floor(q * r)
        paid = delivered * PRICE // 1000
        change[s] = change.get(s, 0) + paid
        change[b] = change.get(b, 0) - paid
    return change


def test_keeper_settles_full_partial_and_missing_delivery_to_the_base_unit(
    stack: dict[str, Any],
) -> None:
    admin: ChainClient = stack["admin"]
    dep = stack["dep"]
    w3 = admin.w3
    chain_id = dep.chain_id
    market_addr = dep.address("EnergyMarket")
    token = contract_at(w3, "EnergyToken", dep.address("EnergyToken"))
    market = contract_at(w3, "EnergyMarket", market_addr)
    wallet_keys = [dev_wallet_key(100 + i) for i in range(5)]
    wallets = [Account.from_key(k).address for k in wallet_keys]
    meters = [MeterSpec(dev_meter_key(100 + i), 1 + i, wallet=wallets[i]) for i in range(5)]
    register_participants(
        w3, dep.address("ParticipantRegistry"), ANVIL_KEYS[0],
        [(m.wallet, m.address, int(m.bus)) for m in meters],
    )  # fmt: skip
    for i, key in enumerate(wallet_keys):
        admin.reset_nonce()  # account 0 is also used unmanaged (setup sends, ETH transfers)
        admin.transact(token.functions.mint(wallets[i], DEPOSIT))
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": wallets[i], "value": 10**18})
        admin.reset_nonce()
        c = ChainClient(stack["anvil"].url, key)
        c.transact(token.functions.approve(market_addr, DEPOSIT))
        c.transact(market.functions.deposit(DEPOSIT))

    first = current_interval(w3, INTERVAL_S) + 1
    full, partial, missing = first, first + 1, first + 2
    plan = {
        full: [(S1, B1, 1000)],
        partial: [(S1, B1, 1000), (S2, B1, 500), (S3, B2, 333)],
        missing: [(S3, B2, 800)],
    }
    nonce = 0
    for interval_id, trades in plan.items():
        cands = []
        for s, b, q in trades:
            nonce += 1
            orders = []
            for who, side in ((s, 0), (b, 1)):
                orders.append({
                    "trader": wallets[who], "side": side, "intervalId": interval_id, "energyWh": q,
                    "pricePerKWh": PRICE, "nonce": nonce, "expiry": 2**40, "counterparty": None,
                })  # fmt: skip
            sigs = [batches.sign_order(wallet_keys[w], chain_id, market_addr, o)
                    for w, o in ((s, orders[0]), (b, orders[1]))]  # fmt: skip
            cands.append(CandidateTrade(orders[0], orders[1], sigs[0], sigs[1], q, PRICE))
        cands = batches.sort_by_trade_id(cands, chain_id, market_addr)
        evidence = keccak(b"evidence")
        att = batches.attest(ANVIL_KEYS[0], chain_id, market_addr, interval_id, cands, evidence)
        orders, rows = batches.record_args(cands)
        fn = market.functions.recordTrades(interval_id, 0, 1, orders, rows, evidence, att)
        admin.transact(fn)
    balances_before = [market.functions.balanceOf(w).call()[0] for w in wallets]

    readings = {
        full: {S1: (0, 1500), B1: (1200, 0)},  # both over-deliver: r = 1
        partial: {S1: (0, 600), S2: (0, 500), S3: (0, 333), B1: (1200, 0), B2: (100, 0)},
        missing: {B2: (800, 0)},  # the seller's meter never reports
    }
    end_interval(w3, missing, INTERVAL_S)
    ledger = Web3Ledger(stack["anvil"].url, ANVIL_KEYS[0], dep)
    store = OracleStore(f"sqlite:///{stack['tmp'] / 'oracle.db'}")
    sub = MqttTransport(stack["broker"].url, "oracle-settle", clean_session=False, manual_ack=True)
    sub.connect()
    daemon = OracleDaemon(store, ledger, sub, OracleConfig())
    daemon.start()
    pub = MqttTransport(stack["broker"].url)
    pub.connect()
    overrides = {(meters[p].address, i): v for i, per in readings.items() for p, v in per.items()}
    sim = MeterSimulator(meters, ledger.domain(), pub, INTERVAL_S, overrides=overrides)
    for meter, interval_id in overrides:
        spec = next(m for m in meters if m.address == meter)
        sim.publish_signed(sim.sign(spec, sim.reading_for(spec, interval_id)))
    assert pub.flush(10)
    try:
        _wait(lambda: store.status().submitted == len(overrides))
    finally:
        daemon.stop()
        sub.close()
        pub.close()

    keeper = SettlementKeeper(admin, dep)
    assert keeper.run_once() == [full, partial]  # the missing reading holds the third back
    assert keeper.run_once() == []
    deadline = int(market.functions.settlementDeadline(missing).call())
    set_time(w3, deadline)
    assert keeper.run_once() == [missing]

    total_change = {i: 0 for i in range(5)}
    for interval_id, trades in plan.items():
        for who, delta in _expected(trades, readings[interval_id]).items():
            total_change[who] += delta
    for i, w in enumerate(wallets):
        available, locked = market.functions.balanceOf(w).call()
        assert locked == 0
        assert available - balances_before[i] == total_change[i] + (
            sum(_escrow(q, PRICE) for trades in plan.values() for _s, b, q in trades if b == i)
        )
    # hand-computed integers for the record: full 1000 Wh -> 123457; partial S1 600 Wh (r_s 0.6 <
    # r_b 0.8), S2 400 Wh, S3 100 of 333 Wh (buyer B2 imported 100 of 333); missing: nothing paid.
    assert total_change[S1] == 1000 * PRICE // 1000 + 600 * PRICE // 1000
    assert total_change[S2] == 400 * PRICE // 1000
    assert total_change[S3] == 100 * PRICE // 1000
    assert total_change[B2] == -(100 * PRICE // 1000)
    total_tokens = sum(sum(market.functions.balanceOf(w).call()) for w in wallets)
    assert total_tokens == 5 * DEPOSIT  # conserved exactly
