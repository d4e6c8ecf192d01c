"""Settlement after full, partial and missing delivery, through the real pieces: trades recorded
with signed orders and a validator attestation, readings relayed by the oracle over Mosquitto,
intervals settled by the keeper; balances compared with hand-computed integers: trades paid firm,
every party's deviation from its contracted net position settled with the balancing account at
1.5x / 0.5x the interval's clearing price, tokens conserved with the balancing account included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from backend.chain import batches
from backend.chain import imbalance as imbalances
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
BALANCING_DEPOSIT = 10**8  # the grid operator's funds in its balancing account
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
) -> tuple[dict[int, int], dict[int, tuple[int, int, int]]]:
    """Net change of available balances - sellers +paid, buyers -paid (escrow - refund), every
    party +/- its imbalance payment (all trades at PRICE, so the clearing price is PRICE) - and
    per party (contracted Wh, metered Wh, payment). The balancing account is funded, so every
    long party is paid in full; every deposit covers its short."""
    change: dict[int, int] = {}
    net: dict[int, int] = {}
    for s, b, q in trades:
        paid = q * PRICE // 1000
        change[s] = change.get(s, 0) + paid
        change[b] = change.get(b, 0) - paid
        net[s] = net.get(s, 0) + q
        net[b] = net.get(b, 0) - q
    parties = {}
    for who, contracted in net.items():
        imp, exp = readings.get(who, (0, 0))
        deviation = exp - imp - contracted
        if deviation < 0:  # short: ceil(|D| x P x 1.5 / 1000)
            payment = deviation * PRICE * 15_000 // 10**7  # floor of a negative
        elif who in readings:  # long: floor(D x P x 0.5 / 1000); a missing reading earns nothing
            payment = deviation * PRICE * 5_000 // 10**7
        else:
            payment = 0
        change[who] += payment
        parties[who] = (contracted, exp - imp, payment)
    return change, parties


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
    balancing = market.functions.balancingAccount().call()
    assert balancing == admin.address  # deploy_all's default: the grid operator's account
    admin.reset_nonce()
    admin.transact(token.functions.mint(balancing, BALANCING_DEPOSIT))
    admin.transact(token.functions.approve(market_addr, BALANCING_DEPOSIT))
    admin.transact(market.functions.deposit(BALANCING_DEPOSIT))

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
    balancing_change = 0
    for interval_id, trades in plan.items():
        change, parties = _expected(trades, readings[interval_id])
        for who, delta in change.items():
            total_change[who] += delta
        # one imbalance settlement per party, read back from the chain
        found = imbalances.find(w3, market, interval_id, dep.block)
        assert found is not None
        assert (found.clearing_price_per_kwh, found.short_price_bps, found.long_price_bps) == (
            PRICE, 15_000, 5_000,
        )  # fmt: skip
        got = {wallets.index(p.account): (p.contracted_wh, p.metered_wh, p.payment)
               for p in found.parties}  # fmt: skip
        assert got == parties
        assert all(p.shortfall == 0 for p in found.parties)
        assert found.collected - found.paid_out == -sum(v[2] for v in parties.values())
        balancing_change += found.collected - found.paid_out
    for i, w in enumerate(wallets):
        available, locked = market.functions.balanceOf(w).call()
        assert locked == 0
        assert available - balances_before[i] == total_change[i] + (
            sum(_escrow(q, PRICE) for trades in plan.values() for _s, b, q in trades if b == i)
        )
    # hand-computed integers for the record. Trades are paid firm: 1000 Wh -> 123457, 500 ->
    # 61728, 333 -> 41111, 800 -> 98765. Imbalance at 1.5x / 0.5x of 123457 per kWh: full: S1
    # long 500 Wh +30864, B1 short 200 Wh -37038; partial: S1 short 400 Wh -74075, B1 long 300
    # Wh +18518, B2 long 233 Wh +14382; missing: S3 (no reading) short 800 Wh -148149.
    assert total_change[S1] == 123_457 + 30_864 + 123_457 - 74_075
    assert total_change[S2] == 61_728
    assert total_change[S3] == 41_111 + 98_765 - 148_149
    assert total_change[B1] == -123_457 - 37_038 - 123_457 - 61_728 + 18_518
    assert total_change[B2] == -41_111 + 14_382 - 98_765
    assert balancing_change == 37_038 + 74_075 + 148_149 - 30_864 - 18_518 - 14_382
    assert market.functions.balanceOf(balancing).call() == [
        BALANCING_DEPOSIT + balancing_change, 0,
    ]  # fmt: skip
    total_tokens = sum(sum(market.functions.balanceOf(w).call()) for w in [*wallets, balancing])
    assert total_tokens == 5 * DEPOSIT + BALANCING_DEPOSIT  # conserved exactly
    assert total_tokens == token.functions.balanceOf(market_addr).call()
