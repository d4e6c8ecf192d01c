"""The grid mode switch reaching the grid-forming devices: ``setGridMode`` on a real Anvil
registry, the dispatcher finding the ``GridModeChanged`` event and sending every active battery
and genset a signed ``ModeAction`` through the real Mosquitto broker, the simulated devices
checking it (grid operator role on chain, addressed to them, not replayed, not expired) and
answering with signed acks; resent until acknowledged, never signed twice after a restart. And
the batteries' signed state of charge reports kept by the dispatcher's store."""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.chain.eip712 import Domain
from backend.chain.registry import GridModeLog
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.participants import register_devices, register_participants
from backend.iot.control import (
    ACK_WILDCARD,
    AckStatus,
    ModeAction,
    SignedAck,
    SignedAction,
    StateOfCharge,
    control_topic,
    mode_action_id,
    parse_ack,
    registry_domain,
    soc_topic,
)
from backend.iot.control_store import ACKNOWLEDGED, MODE, SENT, ControlStore
from backend.iot.devices import DeviceFleet, DeviceSpec, dev_device_key
from backend.iot.dispatcher import Dispatcher, StoreActivations
from backend.iot.meters import dev_meters
from backend.iot.modes import MODE_ACTION_TTL_S, RegistryModes, battery_reports
from backend.iot.signing import ReadingDomain
from backend.iot.transport import MqttTransport
from backend.settings import ANVIL_KEYS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

INTERVAL_S = 900
OPERATOR_KEY = ANVIL_KEYS[0]  # deployer: holds GRID_OPERATOR_ROLE
OPERATOR = Account.from_key(OPERATOR_KEY).address
IDS = itertools.count(1)
# 0 battery 5 kW / 10 kWh at 5 kWh; 1 genset 2..8 kW; 2 heat pump (cannot form the grid);
# 3 a battery that ignores every action (resent until it expires)
SPECS = [
    DeviceSpec(dev_device_key(100)),
    DeviceSpec(dev_device_key(101), kind=5, min_w=2000, max_w=8000, capacity_wh=0, soc_wh=0),
    DeviceSpec(dev_device_key(102), kind=3, min_w=-3000, max_w=0, capacity_wh=0, soc_wh=0),
    DeviceSpec(dev_device_key(103), ignore=True),
]  # fmt: skip
BATTERY, GENSET, HEAT_PUMP, SILENT = (s.address for s in SPECS)


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Env:
    w3: Web3
    fleet: DeviceFleet
    domain: Domain
    store: ControlStore
    dispatcher: Dispatcher
    client: MqttTransport
    acks: queue.Queue[SignedAck]
    registry_address: str
    broker_url: str

    def now(self) -> int:
        return chain_time(self.w3)

    def modes(self) -> RegistryModes:
        return RegistryModes(GridModeLog(self.w3, self.registry_address), INTERVAL_S)

    def set_mode(self, mode: int) -> Any:
        registry = contract_at(self.w3, "ParticipantRegistry", self.registry_address)
        tx = registry.functions.setGridMode(mode).transact({"from": OPERATOR})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        assert receipt["status"] == 1
        return receipt

    def exchange(self, signed: SignedAction, device: str, timeout_s: float = 10.0) -> SignedAck:
        self.client.publish(control_topic(device), signed.to_json(), qos=1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ack = self.acks.get(timeout=0.2)
            except queue.Empty:
                continue
            if ack.ack.activation_id == signed.action.key:
                return ack
        raise AssertionError(f"no ack within {timeout_s:g} s")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("modes")
    with MosquittoBroker() as broker, AnvilProcess() as anvil:
        client = ChainClient(anvil.url, OPERATOR_KEY)
        a = client.address
        dep = deploy_all(client, RoleHolders(a, a, a, a), interval_seconds=INTERVAL_S)
        registry_address = dep.address("ParticipantRegistry")
        owners = dev_meters(len(SPECS))
        register_participants(client.w3, registry_address, OPERATOR_KEY,
                              [(m.wallet, m.address, int(m.bus)) for m in owners])  # fmt: skip
        register_devices(client.w3, registry_address, OPERATOR_KEY, [
            (s.address, m.wallet, int(m.bus), s.kind, s.min_w, s.max_w, s.capacity_wh)
            for s, m in zip(SPECS, owners, strict=True)
        ])  # fmt: skip
        w3 = client.w3
        domain = registry_domain(dep.chain_id, registry_address)
        log = GridModeLog(w3, registry_address)
        device_transport = MqttTransport(broker.url)
        fleet = DeviceFleet(
            SPECS, domain, ReadingDomain(dep.chain_id, dep.address("MeterReadings")),
            device_transport, INTERVAL_S, log.is_grid_operator, log.devices,
            lambda: chain_time(w3),
        )  # fmt: skip
        assert fleet.sync_registry() == len(SPECS)
        fleet.start()
        device_transport.connect()
        store = ControlStore(f"sqlite:///{tmp / 'control.db'}")
        transport = MqttTransport(
            broker.url, "test-mode-dispatcher", clean_session=False, manual_ack=True
        )
        dispatcher = Dispatcher(
            store, StoreActivations(store), transport, domain, OPERATOR_KEY, INTERVAL_S,
            lambda: chain_time(w3), retry_s=0.5,
            modes=RegistryModes(log, INTERVAL_S, from_block=dep.block),
        )  # fmt: skip
        dispatcher.start()
        transport.connect()
        acks: queue.Queue[SignedAck] = queue.Queue()
        test_client = MqttTransport(broker.url)
        test_client.connect()
        test_client.subscribe(ACK_WILDCARD, lambda m: acks.put(parse_ack(m.payload, m.topic)))
        time.sleep(0.3)  # subscriptions on the wire
        try:
            yield Env(w3, fleet, domain, store, dispatcher, test_client, acks, registry_address,
                      broker.url)  # fmt: skip
        finally:
            dispatcher.stop()
            transport.close()
            test_client.close()
            device_transport.close()
            store.close()


def test_switch_on_chain_reaches_every_grid_forming_device_acked(env: Env) -> None:
    receipt = env.set_mode(1)
    since = env.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    effective = since // INTERVAL_S + 1
    report = env.dispatcher.step()
    # the batteries and the genset, not the heat pump
    assert (report.added, report.sent) == (3, 3)
    rows = {r.device: r for r in env.store.actions(effective)}
    assert sorted(rows) == sorted([BATTERY, GENSET, SILENT])
    log_index = int(receipt["logs"][0]["logIndex"])
    for device, row in rows.items():
        assert row.kind == MODE
        assert (
            row.activation_id
            == "0x" + mode_action_id(bytes(receipt["transactionHash"]), log_index, device).hex()
        )
        assert (row.setpoint_w, row.interval_id, row.expiry) == (
            1, effective, since + MODE_ACTION_TTL_S
        )  # fmt: skip
    wait_for(
        lambda: {r.device: r.state for r in env.store.actions(effective)}
        == {BATTERY: ACKNOWLEDGED, GENSET: ACKNOWLEDGED, SILENT: SENT},
        15, "the two acks",
    )  # fmt: skip
    by_device = {r.device: r for r in env.store.actions(effective)}
    battery, genset = by_device[BATTERY], by_device[GENSET]
    # the genset started at its minimum stable load; the battery runs its baseline until the
    # island's residual load is known (no forming_w here)
    assert (genset.ack_status, genset.applied_w) == (0, 2000)
    assert (battery.ack_status, battery.applied_w) == (0, 0)
    assert battery.as_dict()["mode"] == "islanded" and battery.as_dict()["setpointW"] is None
    assert env.fleet.devices[GENSET].power_w(effective) == 2000
    assert env.fleet.devices[GENSET].power_w(effective - 1) == 0  # before the switch: baseline
    assert (env.fleet.devices[BATTERY].mode, env.fleet.devices[BATTERY].mode_from) == (1, effective)
    assert env.fleet.devices[HEAT_PUMP].mode == 0
    # the silent battery: the stored signed action published again after retry_s, byte for byte
    silent = by_device[SILENT]
    time.sleep(0.6)
    assert env.dispatcher.step().resent == 1
    again = env.store.get(bytes.fromhex(silent.activation_id[2:]))
    assert again is not None and again.attempts == 2 and again.signature == silent.signature
    # a dispatcher started afresh scans the chain again: nothing new stored, nothing signed again
    fresh = Dispatcher(
        env.store, StoreActivations(env.store), env.client, env.domain, OPERATOR_KEY, INTERVAL_S,
        env.now, retry_s=3600, modes=env.modes(),
    )  # fmt: skip
    assert (fresh.step().added, fresh.step().sent) == (0, 0)
    assert {r.device: r.signature for r in env.store.actions(effective)} == {
        d: r.signature for d, r in by_device.items()
    }
    # back to grid-connected: a second action per device, the devices leave island mode
    receipt = env.set_mode(0)
    back = env.w3.eth.get_block(receipt["blockNumber"])["timestamp"] // INTERVAL_S + 1
    assert env.dispatcher.step().added == 3

    def switched_back() -> dict[str, str]:
        return {r.device: r.state for r in env.store.actions(back) if r.setpoint_w == 0}

    wait_for(
        lambda: switched_back() == {BATTERY: ACKNOWLEDGED, GENSET: ACKNOWLEDGED, SILENT: SENT},
        15, "the acks of the switch back",
    )  # fmt: skip
    assert env.fleet.devices[GENSET].mode == 0
    assert env.fleet.devices[GENSET].power_w(back) == 0


def _mode(env: Env, device: str, **over: Any) -> ModeAction:
    values = {
        "action_id": next(IDS).to_bytes(32, "big"),
        "device": device,
        "mode": 1,
        "effective_interval": env.now() // INTERVAL_S + 1,
        "expiry": env.now() + 600,
        **over,
    }
    return ModeAction(**values)


def _refused(env: Env, signed: SignedAction, device: str, reason: AckStatus) -> SignedAck:
    d = env.fleet.devices[device]
    before = (d.mode, d.mode_from)
    ack = env.exchange(signed, device)
    assert (ack.ack.status, ack.ack.device) == (int(reason), device), ack.ack.reason
    assert ack.signer(env.domain) == device
    assert (d.mode, d.mode_from) == before  # nothing applied
    return ack


def test_forged_mode_action_is_refused(env: Env) -> None:
    # signed by a key without GRID_OPERATOR_ROLE, and a signed action altered after signing
    _refused(env, _mode(env, GENSET).sign(ANVIL_KEYS[1], env.domain), GENSET,
             AckStatus.UNAUTHORIZED)  # fmt: skip
    signed = _mode(env, GENSET, mode=0).sign(OPERATOR_KEY, env.domain)
    a = signed.action
    altered = ModeAction(a.action_id, a.device, 1, a.effective_interval, a.expiry)
    _refused(env, SignedAction(altered, signed.signature), GENSET, AckStatus.UNAUTHORIZED)


def test_replayed_and_expired_mode_actions_are_refused(env: Env) -> None:
    latest = env.fleet.devices[BATTERY].mode_from
    first = _mode(env, BATTERY, mode=1, effective_interval=latest + 5).sign(
        OPERATOR_KEY, env.domain
    )
    applied = env.exchange(first, BATTERY)
    assert (applied.ack.status, applied.ack.applied_w) == (0, 0)
    assert env.fleet.devices[BATTERY].mode_from == latest + 5
    # the identical action again (QoS 1 redelivery, a resend): the same ack, nothing applied
    assert env.exchange(first, BATTERY) == applied
    # another action under the same id
    a = first.action
    replay = ModeAction(a.action_id, a.device, 0, a.effective_interval, a.expiry)
    _refused(env, replay.sign(OPERATOR_KEY, env.domain), BATTERY, AckStatus.REPLAYED)
    # an older switch than the one applied (a delayed message)
    older = _mode(env, BATTERY, mode=0, effective_interval=latest + 4)
    _refused(env, older.sign(OPERATOR_KEY, env.domain), BATTERY, AckStatus.REPLAYED)
    expired = _mode(env, BATTERY, effective_interval=latest + 6, expiry=env.now() - 1)
    _refused(env, expired.sign(OPERATOR_KEY, env.domain), BATTERY, AckStatus.EXPIRED)


def test_mode_action_to_a_device_that_cannot_form_the_grid_or_unknown_mode_is_refused(
    env: Env,
) -> None:
    _refused(env, _mode(env, HEAT_PUMP).sign(OPERATOR_KEY, env.domain), HEAT_PUMP,
             AckStatus.NOT_GRID_FORMING)  # fmt: skip
    latest = env.fleet.devices[GENSET].mode_from
    odd = _mode(env, GENSET, mode=7, effective_interval=latest + 1)
    _refused(env, odd.sign(OPERATOR_KEY, env.domain), GENSET, AckStatus.UNKNOWN_MODE)
    # addressed to the battery, published on the genset's topic
    signed = _mode(env, BATTERY).sign(OPERATOR_KEY, env.domain)
    _refused(env, signed, GENSET, AckStatus.WRONG_DEVICE)


def test_battery_state_of_charge_is_reported_signed_and_kept(env: Env) -> None:
    interval_id = env.now() // INTERVAL_S - 1
    env.fleet.publish_readings(interval_id)
    wait_for(lambda: env.store.soc(BATTERY) is not None, 10, "the battery's report")
    report = env.store.soc(BATTERY)
    assert report is not None and report.soc_wh == env.fleet.devices[BATTERY].soc_wh == 5000
    assert env.now() - 5 <= report.at <= env.now()
    assert env.store.soc(GENSET) is None  # no battery, no report
    # a report signed by another key is dropped; an older one than the stored is ignored
    dropped = env.dispatcher.socs_dropped
    forged = StateOfCharge(BATTERY, 1, report.at + 10).sign(dev_device_key(7), env.domain)
    env.client.publish(soc_topic(BATTERY), forged.to_json(), qos=1)
    older = StateOfCharge(BATTERY, 2, report.at - 10).sign(SPECS[0].key, env.domain)
    env.client.publish(soc_topic(BATTERY), older.to_json(), qos=1)
    newer = StateOfCharge(BATTERY, 4321, report.at + 20).sign(SPECS[0].key, env.domain)
    env.client.publish(soc_topic(BATTERY), newer.to_json(), qos=1)
    wait_for(lambda: env.store.soc(BATTERY).soc_wh == 4321, 10, "the newer report")  # type: ignore[union-attr]
    assert env.dispatcher.socs_dropped == dropped + 1
    latest = env.store.soc(BATTERY)
    assert latest is not None and (latest.soc_wh, latest.at) == (4321, report.at + 20)
    # with the registry's check (as `tegrid dispatcher` runs it): a genset's report and one above
    # the battery's 10 kWh capacity are dropped, a battery's within it kept
    env.dispatcher.soc_check = battery_reports(GridModeLog(env.w3, env.registry_address))
    dropped = env.dispatcher.socs_dropped
    for key, device, soc_wh in ((SPECS[1].key, GENSET, 1), (SPECS[0].key, BATTERY, 10_001),
                                (SPECS[0].key, BATTERY, 9_999)):  # fmt: skip
        signed = StateOfCharge(device, soc_wh, report.at + 30).sign(key, env.domain)
        env.client.publish(soc_topic(device), signed.to_json(), qos=1)
    wait_for(lambda: env.store.soc(BATTERY).soc_wh == 9_999, 10, "the report within capacity")  # type: ignore[union-attr]
    assert env.dispatcher.socs_dropped == dropped + 2
    assert env.store.soc(GENSET) is None
