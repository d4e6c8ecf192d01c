"""``tegrid dispatcher`` as a real subprocess against the real Mosquitto broker and a real Anvil
registry, killed with SIGKILL: nothing lost, nothing applied twice, never a second signed action
for one activation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import Deployment, contract_at, save_deployment
from backend.chain.deploy import RoleHolders, deploy_all
from backend.chain.registry import DeviceRegistry
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.clock import end_interval, set_time
from backend.devtools.participants import register_devices, register_participants
from backend.iot.control import CONTROL_WILDCARD, parse_action, registry_domain
from backend.iot.control_store import ControlStore, ControlTarget
from backend.iot.devices import DeviceFleet, DeviceSpec, dev_device_key
from backend.iot.meters import dev_meters
from backend.iot.schema import SignedReading, parse_reading
from backend.iot.signing import ReadingDomain
from backend.iot.transport import Message, MqttTransport
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

INTERVAL_S = 900
TEGRID = [sys.executable, "-m", "backend.cli.main"]
N_DEVICES = 45
OPERATOR = Account.from_key(ANVIL_KEYS[0]).address
IGNORING = 5  # the last five ignore every action: resent until expiry, then expired


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Chain:
    w3: Web3
    url: str
    dep: Deployment
    dep_file: Path
    registry: DeviceRegistry
    specs: list[DeviceSpec]


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with AnvilProcess() as anvil:
        client = ChainClient(anvil.url, ANVIL_KEYS[0])
        a = client.address
        dep = deploy_all(client, RoleHolders(a, a, a, a), interval_seconds=INTERVAL_S)
        dep_file = tmp_path / "deployment.json"
        save_deployment(dep, dep_file)
        registry_address = dep.address("ParticipantRegistry")
        owners = dev_meters(N_DEVICES)
        specs = [
            DeviceSpec(dev_device_key(i), ignore=i >= N_DEVICES - IGNORING)
            for i in range(N_DEVICES)
        ]
        register_participants(client.w3, registry_address, ANVIL_KEYS[0],
                              [(m.wallet, m.address, int(m.bus)) for m in owners])  # fmt: skip
        register_devices(client.w3, registry_address, ANVIL_KEYS[0], [
            (s.address, m.wallet, int(m.bus), s.kind, s.min_w, s.max_w, s.capacity_wh)
            for s, m in zip(specs, owners, strict=True)
        ])  # fmt: skip
        registry = DeviceRegistry(client.w3, registry_address)
        yield Chain(client.w3, anvil.url, dep, dep_file, registry, specs)


def test_dispatcher_survives_kill_9_with_nothing_lost_or_signed_twice(
    chain: Chain, tmp_path: Path
) -> None:
    w3, dep, registry, specs = chain.w3, chain.dep, chain.registry, chain.specs
    db_url = f"sqlite:///{tmp_path / 'control.db'}"
    store = ControlStore(db_url)
    env = {
        **os.environ,
        "TEGRID_RPC_URL": chain.url,
        "TEGRID_CONTROL_DATABASE_URL": db_url,
        "TEGRID_DEPLOYMENT_FILE": str(chain.dep_file),
        "TEGRID_GRID_OPERATOR_KEY": ANVIL_KEYS[0],
    }
    domain = registry_domain(dep.chain_id, dep.address("ParticipantRegistry"))
    with MosquittoBroker() as broker:
        env["TEGRID_BROKER_URL"] = broker.url

        def start() -> subprocess.Popen[bytes]:
            before = store.meta("started_at")
            log = (tmp_path / f"dispatcher-{time.monotonic_ns()}.log").open("wb")
            proc = subprocess.Popen(
                [*TEGRID, "dispatcher", "--retry", "1", "--tick", "0.1"],
                env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
            wait_for(lambda: store.meta("started_at") not in (None, before), 60, "start")
            time.sleep(0.3)  # the ack subscription on the wire
            return proc

        # every publication on the control topics, from first to last
        seen: dict[bytes, set[bytes]] = defaultdict(set)
        publications: list[bytes] = []

        def sniff(message: Message) -> None:
            signed = parse_action(message.payload, message.topic)
            seen[signed.action.activation_id].add(
                json.dumps(signed.action.message(), default=bytes.hex).encode() + signed.signature
            )
            publications.append(signed.action.activation_id)

        sniffer = MqttTransport(broker.url)
        sniffer.connect()
        sniffer.subscribe(CONTROL_WILDCARD, sniff)

        # the devices' persistent session: actions published while they are away wait for them
        def device_transport() -> MqttTransport:
            return MqttTransport(broker.url, "test-devices", clean_session=False)

        transport = device_transport()
        fleet = DeviceFleet(
            specs, domain, ReadingDomain(dep.chain_id, dep.address("MeterReadings")), transport,
            INTERVAL_S, registry.is_grid_operator, registry.devices, lambda: chain_time(w3),
        )  # fmt: skip
        assert fleet.sync_registry() == N_DEVICES
        fleet.start()  # handlers before the connection (which subscribes them)
        transport.connect()
        time.sleep(0.3)
        transport.close()  # away: the broker keeps their actions

        now = chain_time(w3)
        interval = now // INTERVAL_S + 1

        def targets(first: int, n: int) -> list[ControlTarget]:
            return [
                ControlTarget(
                    (first + i).to_bytes(32, "big"),
                    specs[i].address,
                    interval,
                    2000,
                    now + (120 if specs[i].ignore else 300),
                )
                for i in range(n)
            ]

        assert store.add(targets(0, N_DEVICES)) == N_DEVICES
        proc = start()
        try:
            wait_for(lambda: store.counts()["sent"] == N_DEVICES, 30, "every action sent")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # while the dispatcher is dead: the devices come back, apply and ack (the acks wait
            # in the dispatcher's persistent session), and new activations arrive
            transport = device_transport()
            fleet.transport = transport
            fleet.start()
            transport.connect()
            wait_for(lambda: fleet.counts["applied"] == N_DEVICES - IGNORING, 30, "devices apply")
            assert store.add(targets(1000, N_DEVICES - IGNORING)) == N_DEVICES - IGNORING
            assert store.counts()["acknowledged"] == 0
            proc = start()
            done = 2 * (N_DEVICES - IGNORING)
            wait_for(lambda: store.counts()["acknowledged"] == done, 60, "every ack recorded")
            ignored = [i.to_bytes(32, "big") for i, s in enumerate(specs) if s.ignore]

            def resent() -> bool:
                rows = [store.get(a) for a in ignored]
                return all(row is not None and row.attempts >= 2 for row in rows)

            # unanswered ones are published again (retry 1 s) until their expiry (chain time: moved
            # past it here, so a slow machine cannot expire them before the first resend)
            wait_for(resent, 60, "the ignored actions resent")
            set_time(w3, now + 121)
            wait_for(lambda: store.counts()["expired"] == IGNORING, 60, "ignored ones expired")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
            transport.close()
            sniffer.close()
    rows = {r.activation_id: r for r in store.actions()}
    assert store.counts() == {"pending": 0, "sent": 0, "acknowledged": done, "refused": 0,
                              "expired": IGNORING}  # fmt: skip
    # one signed action per activation, however often it was published
    assert set(seen) == {bytes.fromhex(k[2:]) for k in rows}
    assert all(len(v) == 1 for v in seen.values())
    # nothing applied twice: the second activation of a device replaced its setpoint once
    for i, s in enumerate(specs):
        device = fleet.devices[s.address]
        expected = set() if s.ignore else {i.to_bytes(32, "big"), (1000 + i).to_bytes(32, "big")}
        assert set(device.applied) == expected
        # the battery moved 500 Wh out once (the second action has the same setpoint)
        assert device.soc_wh == (5000 if s.ignore else 4500)
    for key, row in rows.items():
        if row.state == "acknowledged":
            assert (row.ack_status, row.applied_w, row.reason) == (0, 2000, None)
            assert row.signer == OPERATOR
        else:
            assert row.state == "expired" and row.attempts >= 2, key
    assert len(publications) >= len(rows)
    store.close()


def test_devices_simulate_and_dispatcher_commands_close_the_loop(
    chain: Chain, tmp_path: Path
) -> None:
    """``tegrid devices simulate`` and ``tegrid dispatcher`` as subprocesses: two actions
    dispatched, one applied, one refused out of limits; the applied one metered in the
    device's reading of that interval once chain time passes its end."""
    w3, dep = chain.w3, chain.dep
    db_url = f"sqlite:///{tmp_path / 'control.db'}"
    store = ControlStore(db_url)
    env = {
        **os.environ, "TEGRID_RPC_URL": chain.url, "TEGRID_CONTROL_DATABASE_URL": db_url,
        "TEGRID_DEPLOYMENT_FILE": str(chain.dep_file), "TEGRID_GRID_OPERATOR_KEY": ANVIL_KEYS[0],
    }  # fmt: skip
    with MosquittoBroker() as broker:
        env["TEGRID_BROKER_URL"] = broker.url
        readings: list[SignedReading] = []
        listener = MqttTransport(broker.url)
        listener.subscribe(
            "tegrid/meters/+/readings", lambda m: readings.append(parse_reading(m.payload))
        )
        listener.connect()
        devices_log = tmp_path / "devices.log"
        with devices_log.open("wb") as log:
            devices = subprocess.Popen(
                [*TEGRID, "devices", "simulate", "--count", "2", "--poll", "0.1", "--json"],
                env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        with (tmp_path / "dispatcher.log").open("wb") as log:
            dispatcher = subprocess.Popen(
                [*TEGRID, "dispatcher", "--tick", "0.1"],
                env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        try:
            wait_for(lambda: b"listening" in devices_log.read_bytes(), 60, "the devices")
            wait_for(lambda: store.meta("started_at") is not None, 60, "the dispatcher")
            now = chain_time(w3)
            interval = now // INTERVAL_S
            store.add([
                ControlTarget(b"\x01" * 32, chain.specs[0].address, interval, 3600, now + 300),
                ControlTarget(b"\x02" * 32, chain.specs[1].address, interval, 9000, now + 300),
            ])  # fmt: skip
            wait_for(lambda: store.counts()["refused"] == 1, 30, "the acks")
            wait_for(lambda: store.counts()["acknowledged"] == 1, 30, "the acks")
            end_interval(w3, interval, INTERVAL_S)
            wait_for(lambda: len(readings) >= 2, 30, "the devices' readings")
        finally:
            for proc in (dispatcher, devices):
                proc.send_signal(signal.SIGTERM)
            out, _ = devices.communicate(timeout=30)
            dispatcher.wait(30)
            listener.close()
    refused = store.get(b"\x02" * 32)
    assert refused is not None and (refused.state, refused.reason) == ("refused", "out_of_limits")
    applied = store.get(b"\x01" * 32)
    assert applied is not None and (applied.state, applied.applied_w) == ("acknowledged", 3600)
    by_meter = {r.reading.meter: r.reading for r in readings if r.reading.interval_id == interval}
    # 3.6 kW discharged for 900 s: 900 Wh exported; the other battery stayed idle
    assert (by_meter[chain.specs[0].address].import_wh,
            by_meter[chain.specs[0].address].export_wh) == (0, 900)  # fmt: skip
    assert (by_meter[chain.specs[1].address].import_wh,
            by_meter[chain.specs[1].address].export_wh) == (0, 0)  # fmt: skip
    summary = json.loads(out)
    assert summary["counts"] == {"applied": 1, "out_of_limits": 1}
    assert summary["devices"] == 2 and interval in summary["intervals"]
    assert dep.interval_seconds == INTERVAL_S
    store.close()


def test_mode_switch_survives_kill_9_acked_once_signed_once(chain: Chain, tmp_path: Path) -> None:
    """``setGridMode(1)`` with ``tegrid dispatcher`` running: one signed ModeAction per battery,
    stored before it is published; killed with SIGKILL after sending, restarted after the
    devices (away meanwhile) acked into its persistent session: every ack recorded, the scan of
    the chain after the restart stores nothing new, each action was signed exactly once and the
    ignoring devices' actions were published again."""
    w3, dep, registry, specs = chain.w3, chain.dep, chain.registry, chain.specs
    db_url = f"sqlite:///{tmp_path / 'control.db'}"
    store = ControlStore(db_url)
    env = {
        **os.environ,
        "TEGRID_RPC_URL": chain.url,
        "TEGRID_CONTROL_DATABASE_URL": db_url,
        "TEGRID_DEPLOYMENT_FILE": str(chain.dep_file),
        "TEGRID_GRID_OPERATOR_KEY": ANVIL_KEYS[0],
    }
    domain = registry_domain(dep.chain_id, dep.address("ParticipantRegistry"))
    with MosquittoBroker() as broker:
        env["TEGRID_BROKER_URL"] = broker.url

        def start() -> subprocess.Popen[bytes]:
            before = store.meta("started_at")
            log = (tmp_path / f"dispatcher-{time.monotonic_ns()}.log").open("wb")
            proc = subprocess.Popen(
                [*TEGRID, "dispatcher", "--retry", "1", "--tick", "0.1"],
                env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
            wait_for(lambda: store.meta("started_at") not in (None, before), 60, "start")
            time.sleep(0.3)
            return proc

        seen: dict[bytes, set[bytes]] = defaultdict(set)

        def sniff(message: Message) -> None:
            signed = parse_action(message.payload, message.topic)
            seen[signed.action.key].add(signed.signature)

        sniffer = MqttTransport(broker.url)
        sniffer.connect()
        sniffer.subscribe(CONTROL_WILDCARD, sniff)

        def device_transport() -> MqttTransport:
            return MqttTransport(broker.url, "test-mode-devices", clean_session=False)

        transport = device_transport()
        fleet = DeviceFleet(
            specs, domain, ReadingDomain(dep.chain_id, dep.address("MeterReadings")), transport,
            INTERVAL_S, registry.is_grid_operator, registry.devices, lambda: chain_time(w3),
        )  # fmt: skip
        assert fleet.sync_registry() == N_DEVICES
        fleet.start()
        transport.connect()
        time.sleep(0.3)
        transport.close()  # away: the broker keeps their actions
        contract = contract_at(w3, "ParticipantRegistry", dep.address("ParticipantRegistry"))
        ChainClient(chain.url, ANVIL_KEYS[0]).transact(contract.functions.setGridMode(1))
        proc = start()
        try:
            wait_for(lambda: store.counts()["sent"] == N_DEVICES, 30, "every mode action sent")
            signed_before = {r.activation_id: r.signature for r in store.actions()}
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            transport = device_transport()
            fleet.transport = transport
            fleet.start()
            transport.connect()
            applied = N_DEVICES - IGNORING
            wait_for(lambda: fleet.counts["mode_applied"] == applied, 30, "devices switch")
            proc = start()
            wait_for(lambda: store.counts()["acknowledged"] == applied, 60, "every ack recorded")
            wait_for(
                lambda: all(r.attempts >= 2 for r in store.actions() if r.state == "sent"),
                30, "the ignoring devices' actions published again",
            )  # fmt: skip
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
            transport.close()
            sniffer.close()
    rows = store.actions()
    assert len(rows) == N_DEVICES and all(r.kind == "mode" for r in rows)
    assert {r.activation_id: r.signature for r in rows} == signed_before  # never signed again
    assert store.counts() == {"pending": 0, "sent": IGNORING, "acknowledged": N_DEVICES - IGNORING,
                              "refused": 0, "expired": 0}  # fmt: skip
    assert all(len(v) == 1 for v in seen.values()) and len(seen) == N_DEVICES
    for s in specs:
        assert fleet.devices[s.address].mode == (0 if s.ignore else 1)
    store.close()
