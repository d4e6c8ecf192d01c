"""#17's parts as one flow on a real Anvil, a real Mosquitto and the real Neural Grid (cigre_lv,
greedy clearing): a trade the grid vetoes is rescued by a battery's signed flexibility offer; both
parties set their remedy caps on chain with their own transactions; at gate closure the market
records the trade on EnergyMarket and then the activation on FlexibilityMarket (the validator's
FlexAttestation with the clearing's evidence hash), and the payers' shares are locked in
EnergyMarket. Then the dispatcher sends the signed control action, the simulated battery applies it
and meters it, the oracle relays the meters' and the battery's own readings, the keeper settles:
the provider is paid for what the battery's reading shows (nothing when it ignores its action, the
payers refunded), tokens conserved with the balancing account."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from eth_utils import keccak

from backend.chain import flex, protocol
from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import contract_at
from backend.chain.registry import DeviceRegistry
from backend.cli.activations import MarketActivations
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.clock import end_interval, set_time
from backend.devtools.devstack import ensure_deployment
from backend.devtools.participants import provision
from backend.iot.control import registry_domain
from backend.iot.control_store import ControlStore
from backend.iot.devices import DeviceFleet, DeviceSpec
from backend.iot.dispatcher import Dispatcher
from backend.iot.meters import MeterSimulator, MeterSpec, dev_meter_key
from backend.iot.signing import ReadingDomain
from backend.iot.transport import MqttTransport
from backend.keeper import SettlementKeeper
from backend.market.factory import build_market
from backend.market.models import BatchState, IntervalStatus
from backend.market.service import Market
from backend.oracle.daemon import OracleConfig, OracleDaemon
from backend.oracle.store import OracleStore
from backend.oracle.web3_ledger import Web3Ledger

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

SELLER_KEY, BUYER_KEY, PROVIDER_KEY = ("0x" + keccak(text=f"flexflow {n}").hex() for n in "sbp")
SELLER, BUYER, PROVIDER = (
    Account.from_key(k).address for k in (SELLER_KEY, BUYER_KEY, PROVIDER_KEY)
)
DEVICE_KEY = "0x" + keccak(text="flexflow battery").hex()
DEVICE = Account.from_key(DEVICE_KEY).address
CAP_PER_KWH = 20
TEGRID = Path(sys.executable).with_name("tegrid")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("flexflow")
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(
            dev_settings(tmp, anvil.url), clearing="greedy", grid_process=False
        )
        deployment = ensure_deployment(settings)
        admin = ChainClient(anvil.url, settings.admin_key)
        w3 = admin.w3
        for wallet in (SELLER, BUYER, PROVIDER):
            w3.provider.make_request("anvil_setBalance", [wallet, hex(10**21)])  # type: ignore[arg-type]
        provision(settings, deployment, (SELLER_KEY, BUYER_KEY, PROVIDER_KEY), buses=[24, 2, 16])
        flexibility = contract_at(w3, "FlexibilityMarket", deployment.address("FlexibilityMarket"))
        # each party sets its own remedy cap, with its own transaction
        for key in (SELLER_KEY, BUYER_KEY):
            ChainClient(anvil.url, key).transact(flexibility.functions.setRemedyCap(CAP_PER_KWH))
        market = build_market(settings)
        market.ledger.register_device(DEVICE, PROVIDER, 16, 1, -60_000, 60_000, 120_000)
        energy = contract_at(w3, "EnergyMarket", deployment.address("EnergyMarket"))
        token = contract_at(w3, "EnergyToken", deployment.address("EnergyToken"))
        yield {
            "settings": settings, "market": market, "w3": w3, "flex": flexibility,
            "energy": energy, "token": token, "url": anvil.url, "deployment": deployment,
            "tmp": tmp,
        }  # fmt: skip
        market.store.close()


def _sign(market: Market, primary: str, key: str, msg: dict[str, Any]) -> str:
    doc = {**market.template(primary), "message": msg}
    return "0x" + Account.sign_typed_data(key, full_message=doc).signature.hex().removeprefix("0x")


def _evening(market: Market) -> int:
    """The first interval at 20:00 at least three ahead (the residential evening peak; the
    remedy caps set at the module's start apply from two or three ahead)."""
    iv = market.current_interval() + 3
    return iv + (80 - iv) % 96


def _rescue(market: Market, iv: int, nonce: int) -> tuple[str, str]:
    """A 40 kWh trade the grid vetoes and the battery's offer that rescues it; (trade id, offer
    hash)."""
    hashes = []
    for key, side, price in ((SELLER_KEY, protocol.SELL, 100), (BUYER_KEY, protocol.BUY, 300)):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": nonce,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        hashes.append(market.submit_order(msg, _sign(market, "Order", key, msg)).hash)
    offer = {"provider": PROVIDER, "device": DEVICE, "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": nonce,
             "expiry": iv * 900 + 3600}  # fmt: skip
    row = market.submit_flex(offer, _sign(market, "FlexOffer", PROVIDER_KEY, offer))
    return protocol.trade_id_hex(*hashes), row.hash


def test_rescue_is_recorded_on_both_contracts(chain: dict[str, Any]) -> None:
    m: Market = chain["market"]
    energy, flexibility = chain["energy"], chain["flex"]
    iv = _evening(m)
    locked_before = {w: energy.functions.balanceOf(w).call()[1] for w in (SELLER, BUYER)}
    trade_id, offer_hash = _rescue(m, iv, 1)
    assert m.close_interval(iv, force=True).status == IntervalStatus.RECORDED
    [trade] = m.store.trades(iv)
    assert (trade.id, trade.verdict) == (trade_id, 0)
    [act] = m.store.activations(iv)
    activation_id = protocol.activation_id_hex(offer_hash, trade_id)
    assert (act.id, act.activated_w, act.cost) == (activation_id, 35_212, "440")
    [tb] = m.store.batches(iv)
    [fb] = m.store.activation_batches(iv)
    assert (tb.state, fb.state, fb.evidence_hash, fb.last_error) == (
        BatchState.RECORDED, BatchState.RECORDED, tb.evidence_hash, None
    )  # fmt: skip
    packed = bytes.fromhex(fb.packed[2:])
    commitment, state = flexibility.functions.batchOf(iv, 0).call()
    assert (state, bytes(commitment)) == (1, flex.commitment(packed))
    [log] = flexibility.events.ActivationBatchRecorded.get_logs(from_block=fb.block_number)
    assert (bytes(log["args"]["commitment"]), log["args"]["count"]) == (flex.commitment(packed), 1)
    [recorded] = flex.unpack(packed)
    dom = flex.domain(int(flexibility.w3.eth.chain_id), flexibility.address)
    assert ("0x" + recorded.activation_id(dom).hex(), recorded.activated_w) == (
        activation_id, 35_212
    )  # fmt: skip
    # the trade's escrow (buyer) and each party's share of the rescue (220 each) are locked
    escrow = protocol.escrow_of(40_000, int(trade.price_per_kwh))
    assert escrow == 8_000  # 40 kWh at the auction price 200
    locked = {w: energy.functions.balanceOf(w).call()[1] for w in (SELLER, BUYER)}
    assert locked[SELLER] - locked_before[SELLER] == 220
    assert locked[BUYER] - locked_before[BUYER] == 220 + escrow
    [chain_act] = flex.unpack(bytes.fromhex(fb.packed[2:]))
    assert (chain_act.payer0, chain_act.share0, chain_act.payer1, chain_act.share1) == (
        SELLER, 220, BUYER, 220
    )  # fmt: skip


def test_payer_backing_out_after_the_clearing_cannot_unremedy_the_trade(
    chain: dict[str, Any],
) -> None:
    """After the clearing the buyer lowers its cap to 0 and withdraws its whole balance: the
    interval keeps the cap it was cleared with (a change applies only from an interval whose gate
    is more than one interval away), and the buyer's share is advanced by the balancing account
    and owed. While the balancing account cannot advance it either, the activation batch is
    failed with the contract's decoded error and retried; nothing of it is locked or dispatched,
    and the next attempt records it."""
    m: Market = chain["market"]
    energy, flexibility, token = chain["energy"], chain["flex"], chain["token"]
    settings = chain["settings"]
    iv = _evening(m) + 96
    # ten minutes before the interval, as the market clears it (its book closed near the gate)
    set_time(chain["w3"], iv * 900 - 600)
    _rescue(m, iv, 2)
    with m.clearing.lock:
        assert m.intake.close_for_orders(iv)
        m.clearing.clear(iv)
    buyer = ChainClient(chain["url"], BUYER_KEY)
    operator = ChainClient(chain["url"], settings.grid_operator_key)
    balancing = energy.functions.balancingAccount().call()
    assert balancing == operator.address
    freed: dict[str, int] = {}
    record_activations = m.recorder.record_activation_batches

    def backing_out(interval_id: int, due_only: bool = False) -> bool:
        """The payer's transactions, mined between the trade batch and the activation batch."""
        buyer.transact(flexibility.functions.setRemedyCap(0))
        freed["buyer"] = energy.functions.balanceOf(BUYER).call()[0]
        buyer.transact(energy.functions.withdraw(freed["buyer"]))
        freed["operator"] = energy.functions.balanceOf(balancing).call()[0]
        if freed["operator"]:
            operator.transact(energy.functions.withdraw(freed["operator"]))
        return record_activations(interval_id, due_only)

    seller_locked = energy.functions.balanceOf(SELLER).call()[1]
    m.recorder.record_activation_batches = backing_out  # type: ignore[method-assign]
    try:
        assert not m.recorder.record_batch(iv)
        assert flexibility.functions.remedyCapAt(BUYER, iv).call() == CAP_PER_KWH
        assert flexibility.functions.remedyCapOf(BUYER).call() == 0
        [tb] = m.store.batches(iv)
        [fb] = m.store.activation_batches(iv)
        assert tb.state == BatchState.RECORDED
        assert (fb.state, fb.attempts, fb.tx_hash) == (BatchState.FAILED, 1, None)
        assert fb.last_error == (
            "recordActivations would revert: "
            f"MarketInsufficientBalance({balancing.lower()}, 0, 220)"
        )
        assert fb.next_attempt_at is not None
        assert flexibility.functions.batchOf(iv, 0).call()[1] == 0
        assert energy.functions.balanceOf(SELLER).call()[1] == seller_locked
        # not sent to the device while nobody would pay it
        assert MarketActivations(m.store, 900).pending_activations(iv) == []
        with m.clearing.lock:
            assert m.interval(iv).status == IntervalStatus.RECORDED
    finally:
        del m.recorder.record_activation_batches
        refill = freed.get("operator") or 1_000
        if not freed.get("operator"):
            admin = ChainClient(chain["url"], settings.admin_key)
            admin.transact(token.functions.mint(balancing, refill))
        operator.transact(token.functions.approve(energy.address, refill))
        operator.transact(energy.functions.deposit(refill))
        buyer.transact(flexibility.functions.setRemedyCap(CAP_PER_KWH))
    # the balancing account can advance again: recorded with the clearing's 220 / 220 split
    assert m.recorder.record_activation_batches(iv)
    [fb] = m.store.activation_batches(iv)
    assert fb.state == BatchState.RECORDED
    [log] = energy.events.FlexShareAdvanced.get_logs(from_block=fb.block_number)
    assert (log["args"]["payer"], log["args"]["amount"]) == (BUYER, 220)
    assert energy.functions.debtOf(BUYER).call() == 220
    assert energy.functions.balanceOf(SELLER).call()[1] == seller_locked + 220
    assert len(MarketActivations(m.store, 900).pending_activations(iv)) == 1
    # the buyer's deposit pays its debt first (its later orders are refused until then)
    buyer.transact(token.functions.approve(energy.address, freed["buyer"]))
    buyer.transact(energy.functions.deposit(freed["buyer"]))
    assert energy.functions.debtOf(BUYER).call() == 0
    assert energy.functions.balanceOf(BUYER).call()[0] == freed["buyer"] - 220


def _wait(pred: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _holdings(energy: Any, wallets: list[str]) -> dict[str, int]:
    """available + locked in EnergyMarket per wallet."""
    return {w: sum(energy.functions.balanceOf(w).call()) for w in wallets}


def test_dispatched_metered_relayed_and_settled(chain: dict[str, Any]) -> None:
    """Two rescues on two evenings: the battery delivers the first (paid for what its reading
    shows) and ignores the second (paid nothing, the payers refunded)."""
    m: Market = chain["market"]
    w3, energy, token, dep = chain["w3"], chain["energy"], chain["token"], chain["deployment"]
    settings = chain["settings"]
    url = chain["url"]
    balancing = energy.functions.balancingAccount().call()
    wallets = [SELLER, BUYER, PROVIDER, balancing]
    keeper = SettlementKeeper(ChainClient(url, settings.keeper_key), dep)
    # the earlier tests' intervals, closed first so that this test's figures are its own: the
    # second at its settlement deadline (no reading: nothing delivered), the first - a day
    # older, past its reclaimAfter by then - reclaimed; by `tegrid keeper --once --json`, which
    # lists the activation batches it closed
    first = _evening(m)
    set_time(w3, int(energy.functions.settlementDeadline(first + 96).call()))
    out = subprocess.run(
        [str(TEGRID), "keeper", "--once", "--json"], capture_output=True, text=True,
        env={**os.environ, **settings.to_env()}, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["activationBatches"] == {
        "settled": [[first + 96, 0]], "reclaimed": [[first, 0]]
    }  # fmt: skip
    keeper.run_once()  # nothing of them left to close
    assert (keeper.activations.reclaimed, keeper.activations.settled) == ([], [])
    m.follow_settlements()
    assert [b.state for b in m.store.activation_batches(first)] == ["reclaimed"]
    assert [(a.paid, a.refunded) for a in m.store.activations(first)] == [("0", "440")]
    delivered_iv, ignored_iv = first + 192, first + 288

    with MosquittoBroker() as broker:
        reading_domain = ReadingDomain(dep.chain_id, dep.address("MeterReadings"))
        registry = DeviceRegistry(w3, dep.address("ParticipantRegistry"))
        domain = registry_domain(dep.chain_id, dep.address("ParticipantRegistry"))
        control = ControlStore(f"sqlite:///{chain['tmp'] / 'control.db'}")
        dispatch_transport = MqttTransport(broker.url)
        dispatch_transport.connect()
        dispatcher = Dispatcher(
            control, MarketActivations(m.store, 900), dispatch_transport, domain,
            settings.grid_operator_key, 900, lambda: chain_time(w3),
        )  # fmt: skip
        dispatcher.start()
        oracle_store = OracleStore(f"sqlite:///{chain['tmp'] / 'oracle.db'}")
        oracle_sub = MqttTransport(
            broker.url, "flexflow-oracle", clean_session=False, manual_ack=True
        )
        oracle_sub.connect()
        oracle = OracleDaemon(
            oracle_store, Web3Ledger(url, settings.oracle_key, dep), oracle_sub, OracleConfig()
        )
        oracle.start()
        pub = MqttTransport(broker.url)
        pub.connect()
        meters = [
            MeterSpec(dev_meter_key(i), bus, wallet=w)
            for i, (bus, w) in enumerate(((24, SELLER), (2, BUYER), (16, PROVIDER)))
        ]
        relayed = 0
        try:
            for iv, ignore, nonce in ((delivered_iv, False, 3), (ignored_iv, True, 4)):
                spec = DeviceSpec(
                    DEVICE_KEY, min_w=-60_000, max_w=60_000, capacity_wh=120_000,
                    soc_wh=60_000, ignore=ignore,
                )  # fmt: skip
                fleet_transport = MqttTransport(broker.url)
                fleet = DeviceFleet(
                    [spec], domain, reading_domain, fleet_transport, 900,
                    registry.is_grid_operator, registry.devices, lambda: chain_time(w3),
                )  # fmt: skip
                assert fleet.sync_registry() == 1
                fleet.start()
                fleet_transport.connect()
                time.sleep(0.3)  # subscriptions on the wire
                before = _holdings(energy, wallets)
                market_tokens = token.functions.balanceOf(energy.address).call()
                trade_id, offer_hash = _rescue(m, iv, nonce)
                assert m.close_interval(iv, force=True).status == IntervalStatus.RECORDED
                [act] = m.store.activations(iv)
                assert act.id == protocol.activation_id_hex(offer_hash, trade_id)
                assert m.store.activation_batches(iv)[0].state == BatchState.RECORDED
                # the dispatcher sends the signed action; the battery applies it (or not). Its
                # source looks at the 8 intervals up to the current + ahead: the evening's
                dispatcher.ahead = iv - chain_time(w3) // 900
                assert dispatcher.step().sent == 1
                if not ignore:
                    _wait(lambda iv=iv: control.actions(iv)[0].state == "acknowledged")
                    row = control.actions(iv)[0]
                    assert (row.ack_status, row.applied_w) == (0, 35_212)
                else:
                    time.sleep(1.0)
                    assert control.actions(iv)[0].state == "sent"
                end_interval(w3, iv, 900)
                # the battery meters what it ran: 35,212 W x 900 s = 8,803 Wh out (floor);
                # ignoring, its baseline 0 W
                assert fleet.publish_readings(iv) == 1
                exported = 0 if ignore else 8_803
                overrides = {
                    (meters[0].address, iv): (0, 40_000),
                    (meters[1].address, iv): (40_000, 0),
                    (meters[2].address, iv): (0, exported),  # the owner's meter sees it too
                }
                sim = MeterSimulator(meters, reading_domain, pub, 900, overrides=overrides)
                for meter, _iv in overrides:
                    mspec = next(x for x in meters if x.address == meter)
                    sim.publish_signed(sim.sign(mspec, sim.reading_for(mspec, iv)))
                assert pub.flush(10)
                relayed += 4
                _wait(lambda n=relayed: oracle_store.status().submitted == n)
                assert chain["flex"].functions.batchOf(iv, 0).call()[1] == 1
                assert keeper.run_once() == [iv]
                assert keeper.activations.settled[-1] == (iv, 0)
                m.follow_settlements()
                fleet_transport.close()

                metered_w = flex.metered_w(0, exported, 900)
                paid = flex.payments(220, 220, 35_212, flex.delivered_w(0, 0, 35_212, metered_w))
                assert (metered_w, paid) == ((35_212, (220, 220)) if not ignore else (0, (0, 0)))
                [act] = m.store.activations(iv)
                assert (act.metered_w, act.delivered_w, act.paid, act.refunded) == (
                    metered_w, metered_w, str(sum(paid)), str(440 - sum(paid))
                )  # fmt: skip
                assert m.store.activation_batches(iv)[0].state == "settled"
                after = _holdings(energy, wallets)
                change = {w: after[w] - before[w] for w in wallets}
                # trade paid firm (8,000), the rescue's shares as the battery delivered,
                # no imbalance (the meters show the contracted 40 kWh)
                assert change == {
                    SELLER: 8_000 - paid[0], BUYER: -8_000 - paid[1], PROVIDER: sum(paid),
                    balancing: 0,
                }  # fmt: skip
                assert token.functions.balanceOf(energy.address).call() == market_tokens
                assert sum(energy.functions.balanceOf(SELLER).call()[1:]) == 0
        finally:
            oracle.stop()
            dispatcher.stop()
            for t in (oracle_sub, pub, dispatch_transport):
                t.close()
