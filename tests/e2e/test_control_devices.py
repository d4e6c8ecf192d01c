"""Simulated devices taking control actions through the real Mosquitto broker, checking them against
a real Anvil chain's ParticipantRegistry (device records, GRID_OPERATOR_ROLE): every refusal
with its reason and nothing applied; a valid action applied, acked and metered."""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.chain.eip712 import Domain
from backend.chain.registry import DeviceRegistry
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.participants import register_devices, register_participants
from backend.iot.control import (
    ACK_WILDCARD,
    AckStatus,
    ControlAction,
    SignedAck,
    SignedAction,
    control_topic,
    parse_ack,
    registry_domain,
)
from backend.iot.devices import DeviceFleet, DeviceSpec, dev_device_key
from backend.iot.meters import dev_meters
from backend.iot.schema import parse_reading, readings_topic
from backend.iot.signing import ReadingDomain, recover_signer
from backend.iot.transport import Message, MqttTransport
from backend.settings import ANVIL_KEYS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

INTERVAL_S = 900
IDS = itertools.count(1)
OPERATOR = ANVIL_KEYS[0]  # deployer: holds GRID_OPERATOR_ROLE
# device 0: battery 5 kW / 10 kWh at 5 kWh; 1: empty battery; 2: ignores every action;
# 3: heat pump -3000..0 W with a -1500 W baseline
SPECS = [
    DeviceSpec(dev_device_key(0)),
    DeviceSpec(dev_device_key(1), soc_wh=0),
    DeviceSpec(dev_device_key(2), ignore=True),
    DeviceSpec(dev_device_key(3), kind=3, min_w=-3000, max_w=0, capacity_wh=0, soc_wh=0,
               baseline_w=-1500),
]  # fmt: skip


@dataclass
class Env:
    w3: Web3
    fleet: DeviceFleet
    domain: Domain
    reading_domain: ReadingDomain
    client: MqttTransport
    acks: queue.Queue[SignedAck]
    readings: queue.Queue[Message]
    registry_address: str

    def now(self) -> int:
        return chain_time(self.w3)

    def action(self, device: int = 0, **over: Any) -> ControlAction:
        now = self.now()
        values = {
            "activation_id": next(IDS).to_bytes(32, "big"),
            "device": SPECS[device].address,
            "interval_id": now // INTERVAL_S,
            "setpoint_w": 4000,
            "expiry": now + 600,
            **over,
        }
        return ControlAction(**values)

    def exchange(
        self, signed: SignedAction, topic_device: int | None = None, timeout_s: float = 10.0
    ) -> SignedAck:
        """Publish ``signed`` on a device's control topic; the ack the device answers with."""
        device = SPECS[topic_device].address if topic_device is not None else signed.action.device
        self.client.publish(control_topic(device), signed.to_json(), qos=1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ack = self.acks.get(timeout=0.2)
            except queue.Empty:
                continue
            if ack.ack.activation_id == signed.action.activation_id:
                return ack
        raise AssertionError(f"no ack within {timeout_s:g} s")

    def state(self, device: int = 0) -> tuple[dict[int, int], int]:
        d = self.fleet.devices[SPECS[device].address]
        return dict(d.setpoints), d.soc_wh


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with MosquittoBroker() as broker, AnvilProcess() as anvil:
        client = ChainClient(anvil.url, OPERATOR)
        a = client.address
        dep = deploy_all(client, RoleHolders(a, a, a, a), interval_seconds=INTERVAL_S)
        registry_address = dep.address("ParticipantRegistry")
        owners = dev_meters(len(SPECS))
        register_participants(client.w3, registry_address, OPERATOR,
                              [(m.wallet, m.address, int(m.bus)) for m in owners])  # fmt: skip
        register_devices(client.w3, registry_address, OPERATOR, [
            (s.address, m.wallet, int(m.bus), s.kind, s.min_w, s.max_w, s.capacity_wh)
            for s, m in zip(SPECS, owners, strict=True)
        ])  # fmt: skip
        w3 = client.w3
        domain = registry_domain(dep.chain_id, registry_address)
        reading_domain = ReadingDomain(dep.chain_id, dep.address("MeterReadings"))
        registry = DeviceRegistry(w3, registry_address)
        device_transport = MqttTransport(broker.url)
        fleet = DeviceFleet(
            SPECS, domain, reading_domain, device_transport, INTERVAL_S,
            registry.is_grid_operator, registry.devices, lambda: chain_time(w3),
        )  # fmt: skip
        assert fleet.sync_registry() == len(SPECS)
        fleet.start()
        device_transport.connect()
        acks: queue.Queue[SignedAck] = queue.Queue()
        readings: queue.Queue[Message] = queue.Queue()
        test_client = MqttTransport(broker.url)
        test_client.connect()
        test_client.subscribe(ACK_WILDCARD, lambda m: acks.put(parse_ack(m.payload, m.topic)))
        test_client.subscribe("tegrid/meters/+/readings", readings.put)
        time.sleep(0.3)  # subscriptions on the wire
        try:
            yield Env(w3, fleet, domain, reading_domain, test_client, acks, readings,
                      registry_address)  # fmt: skip
        finally:
            test_client.close()
            device_transport.close()


def test_valid_action_is_applied_acked_and_metered(env: Env) -> None:
    action = env.action(0, setpoint_w=4000)
    ack = env.exchange(action.sign(OPERATOR, env.domain))
    device = SPECS[0].address
    assert ack.signer(env.domain) == device
    assert (ack.ack.status, ack.ack.applied_w, ack.ack.device) == (0, 4000, device)
    assert env.now() - 5 <= ack.ack.at <= env.now()
    # 4 kW for 900 s = 1000 Wh out of the battery: 5000 -> 4000 Wh
    assert env.state(0) == ({action.interval_id: 4000}, 4000)
    assert env.fleet.publish_readings(action.interval_id) == len(SPECS)
    got = {}
    while len(got) < len(SPECS):
        msg = env.readings.get(timeout=10)
        signed = parse_reading(msg.payload, msg.topic)
        if signed.reading.interval_id == action.interval_id:
            got[signed.reading.meter] = signed
    reading = got[device]
    assert (reading.reading.import_wh, reading.reading.export_wh) == (0, 1000)
    assert recover_signer(env.reading_domain.separator(), reading.reading,
                          reading.signature) == device  # fmt: skip
    assert msg.topic.startswith("tegrid/meters/")
    # the heat pump ran its baseline, -1500 W: 375 Wh imported
    heat_pump = got[SPECS[3].address].reading
    assert (heat_pump.import_wh, heat_pump.export_wh) == (375, 0)
    assert readings_topic(device) == f"tegrid/meters/{device.lower()}/readings"


def _refused(env: Env, signed: SignedAction, reason: AckStatus, device: int = 0,
             topic_device: int | None = None) -> None:  # fmt: skip
    before = env.state(device)
    ack = env.exchange(signed, topic_device)
    assert ack.ack.status == int(reason), ack.ack.reason
    assert ack.signer(env.domain) == SPECS[device].address
    assert env.state(device) == before  # nothing applied


def test_action_signed_by_a_key_without_the_role_is_refused(env: Env) -> None:
    _refused(env, env.action().sign(ANVIL_KEYS[1], env.domain), AckStatus.UNAUTHORIZED)
    assert env.fleet.grid_operator(Account.from_key(ANVIL_KEYS[1]).address) is False


def test_action_signed_in_another_domain_is_refused(env: Env) -> None:
    other = registry_domain(1, env.domain.verifying_contract)
    _refused(env, env.action().sign(OPERATOR, other), AckStatus.UNAUTHORIZED)


def test_tampered_action_is_refused(env: Env) -> None:
    signed = env.action(setpoint_w=1000).sign(OPERATOR, env.domain)
    a = signed.action
    forged = ControlAction(a.activation_id, a.device, a.interval_id, 5000, a.expiry)
    _refused(env, SignedAction(forged, signed.signature), AckStatus.UNAUTHORIZED)


def test_replayed_activation_is_refused_and_a_redelivery_answered_again(env: Env) -> None:
    first = env.action(setpoint_w=-2000).sign(OPERATOR, env.domain)
    applied = env.exchange(first)
    assert applied.ack.status == 0
    state = env.state(0)
    # the identical action again (QoS 1 redelivery, a dispatcher resend): same ack, nothing moves
    again = env.exchange(first)
    assert again == applied and env.state(0) == state
    # another action under the same activation id: a replay
    a = first.action
    replay = ControlAction(a.activation_id, a.device, a.interval_id, 3000, a.expiry)
    _refused(env, replay.sign(OPERATOR, env.domain), AckStatus.REPLAYED)


def test_expired_action_is_refused(env: Env) -> None:
    _refused(env, env.action(expiry=env.now() - 1).sign(OPERATOR, env.domain), AckStatus.EXPIRED)


def test_action_for_an_ended_interval_is_refused(env: Env) -> None:
    past = env.now() // INTERVAL_S - 1
    signed = env.action(interval_id=past).sign(OPERATOR, env.domain)
    _refused(env, signed, AckStatus.INTERVAL_OVER)


@pytest.mark.parametrize("setpoint_w", [5001, -5001])
def test_setpoint_outside_the_device_limits_is_refused(env: Env, setpoint_w: int) -> None:
    signed = env.action(setpoint_w=setpoint_w).sign(OPERATOR, env.domain)
    _refused(env, signed, AckStatus.OUT_OF_LIMITS)


def test_empty_battery_refuses_to_discharge_and_charges(env: Env) -> None:
    _refused(env, env.action(1, setpoint_w=100).sign(OPERATOR, env.domain),
             AckStatus.STATE_OF_CHARGE, device=1)  # fmt: skip
    ack = env.exchange(env.action(1, setpoint_w=-4000).sign(OPERATOR, env.domain))
    assert (ack.ack.status, ack.ack.applied_w) == (0, -4000)
    assert env.state(1)[1] == 1000  # charged 1000 Wh


def test_action_for_another_device_is_refused_by_the_receiving_device(env: Env) -> None:
    signed = env.action(0).sign(OPERATOR, env.domain)
    _refused(env, signed, AckStatus.WRONG_DEVICE, device=3, topic_device=3)


def test_ignoring_device_neither_applies_nor_acks_and_meters_its_baseline(env: Env) -> None:
    signed = env.action(2, setpoint_w=3000).sign(OPERATOR, env.domain)
    with pytest.raises(AssertionError, match="no ack"):
        env.exchange(signed, timeout_s=2)
    assert env.state(2) == ({}, 5000)
    reading = env.fleet.devices[SPECS[2].address].reading(signed.action.interval_id, INTERVAL_S)
    assert (reading.import_wh, reading.export_wh) == (0, 0)


def test_device_deactivated_in_the_registry_refuses_after_its_next_look(env: Env) -> None:
    """Last in the module: it deactivates device 3 for good."""
    registry = contract_at(env.w3, "ParticipantRegistry", env.registry_address)
    tx = registry.functions.deactivateDevice(SPECS[3].address).transact(
        {"from": Account.from_key(OPERATOR).address}
    )
    assert env.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    assert env.fleet.sync_registry() == len(SPECS) - 1
    signed = env.action(3, setpoint_w=-1000).sign(OPERATOR, env.domain)
    _refused(env, signed, AckStatus.DEVICE_INACTIVE, device=3)
