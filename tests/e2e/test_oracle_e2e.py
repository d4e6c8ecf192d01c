"""The oracle end to end: real Anvil, real Mosquitto, ``tegrid oracle`` as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_abi import decode as abi_decode
from web3 import Web3

from backend.chain import batches
from backend.chain.client import ChainClient
from backend.chain.contracts import Deployment, save_deployment
from backend.chain.deploy import RoleHolders, deploy_all
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.clock import current_interval, end_interval, set_time
from backend.devtools.participants import register_participants
from backend.iot.meters import MeterSimulator, MeterSpec, dev_meters
from backend.iot.schema import SignedReading, readings_topic
from backend.iot.signing import Reading, address_of, sign_reading
from backend.iot.transport import MqttTransport
from backend.oracle.store import OracleStore
from backend.oracle.web3_ledger import READINGS_SUBMITTED_TOPIC, Web3Ledger
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

INTERVAL_S = 900
N_METERS = 20
TEGRID = [sys.executable, "-m", "backend.cli.main"]


def wait_for(
    pred: Callable[[], bool],
    timeout_s: float = 60.0,
    what: str = "condition",
    state: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; now {state()}" if state else ""))


@dataclass
class Env:
    anvil: AnvilProcess
    broker: MosquittoBroker
    deployment: Deployment
    deployment_file: Path
    db_url: str
    meters: list[MeterSpec]
    ledger: Web3Ledger
    w3: Web3
    client_id: str

    def store(self) -> OracleStore:
        return OracleStore(self.db_url)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TEGRID_RPC_URL": self.anvil.url,
            "TEGRID_BROKER_URL": self.broker.url,
            "TEGRID_ORACLE_DATABASE_URL": self.db_url,
            "TEGRID_DEPLOYMENT_FILE": str(self.deployment_file),
            "TEGRID_ORACLE_KEY": ANVIL_KEYS[0],
        }

    def start_oracle(self, batch_size: int = 400) -> subprocess.Popen[bytes]:
        store = self.store()
        before = store.meta("started_at")
        # the log goes to a file: an undrained stderr pipe blocks the daemon once 64 KiB are written
        log_path = Path(self.deployment_file).with_name(f"oracle-{time.monotonic_ns()}.log")
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*TEGRID, "oracle", "--client-id", self.client_id, "--batch-size", str(batch_size)],
                env=self.env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
            )  # fmt: skip
        try:
            wait_for(lambda: store.meta("started_at") not in (None, before), 60, "oracle start")
        except AssertionError:
            proc.kill()
            proc.wait()
            raise AssertionError(log_path.read_text()[-2000:]) from None
        time.sleep(0.3)  # subscription on the wire
        return proc

    def publisher(self) -> MeterSimulator:
        transport = MqttTransport(self.broker.url)
        transport.connect()
        return MeterSimulator(
            self.meters, self.ledger.domain(), transport, INTERVAL_S, clock=time.time
        )

    def on_chain_events(self) -> list[tuple[str, int]]:
        logs = self.w3.eth.get_logs(
            {
                "address": self.ledger.readings_address,
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [READINGS_SUBMITTED_TOPIC],  # type: ignore[list-item]
            }
        )
        # ReadingsSubmitted(uint64 indexed intervalId, bytes accepted): one per batch
        return [
            (reading.meter, int.from_bytes(bytes(e["topics"][1]), "big"))
            for e in logs
            for reading in batches.unpack_accepted(abi_decode(["bytes"], bytes(e["data"]))[0])
        ]


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def env(broker: MosquittoBroker, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    anvil = AnvilProcess(state_file=tmp_path / "anvil-state.json").start()
    try:
        client = ChainClient(anvil.url, ANVIL_KEYS[0])
        a = client.address
        dep = deploy_all(client, RoleHolders(a, a, a, a), interval_seconds=INTERVAL_S)
        dep_file = tmp_path / "deployment.json"
        save_deployment(dep, dep_file)
        meters = dev_meters(N_METERS)
        register_participants(
            client.w3, dep.address("ParticipantRegistry"), ANVIL_KEYS[0],
            [(m.wallet, m.address, int(m.bus)) for m in meters],
        )  # fmt: skip
        ledger = Web3Ledger(anvil.url, ANVIL_KEYS[0], dep)
        yield Env(
            anvil, broker, dep, dep_file, f"sqlite:///{tmp_path / 'oracle.db'}", meters, ledger,
            client.w3, f"oracle-{request.node.name}"[:60],
        )  # fmt: skip
    finally:
        anvil.stop()


@pytest.fixture
def oracle_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        _stop(proc)


def _publish(sim: MeterSimulator, intervals: range) -> dict[tuple[str, int], tuple[int, int]]:
    expected = {}
    for interval_id in intervals:
        sim.publish_interval(interval_id)
        for spec in sim.meters:
            r = sim.reading_for(spec, interval_id)
            expected[(spec.address, interval_id)] = (r.import_wh, r.export_wh)
    assert sim.transport.flush(30)
    return expected


def _assert_exactly_once(env: Env, expected: dict[tuple[str, int], tuple[int, int]]) -> None:
    for (meter, interval_id), values in expected.items():
        assert env.ledger.reading_of(meter, interval_id) == (*values, True)
    events = env.on_chain_events()
    assert sorted(events) == sorted(expected)  # each reading accepted exactly once


def test_oracle_relays_20_meters_4_intervals_exactly_once(env: Env, oracle_procs: list) -> None:
    first = current_interval(env.w3, INTERVAL_S)
    end_interval(env.w3, first + 3, INTERVAL_S)
    oracle_procs.append(env.start_oracle())
    expected = _publish(env.publisher(), range(first, first + 4))
    store = env.store()
    wait_for(lambda: store.status().submitted == 80, 60, "80 submitted")
    _assert_exactly_once(env, expected)
    out = subprocess.run(
        [*TEGRID, "oracle", "status", "--json"], env=env.env(), cwd=REPO_ROOT,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    status = json.loads(out.stdout)
    assert status["submitted"] == 80 and status["queue_depth"] == 0 and status["rejected"] == 0
    assert status["last_block"] == env.w3.eth.block_number or status["last_block"] > 0


def test_oracle_kill9_mid_batch_then_restart_exactly_once(env: Env, oracle_procs: list) -> None:
    first = current_interval(env.w3, INTERVAL_S)
    end_interval(env.w3, first + 3, INTERVAL_S)
    proc = env.start_oracle(batch_size=3)
    oracle_procs.append(proc)
    sim = env.publisher()
    expected = _publish(sim, range(first, first + 4))
    store = env.store()
    wait_for(lambda: store.status().submitted >= 12, 60, "first batches")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = store.status()
    assert killed_at.submitted < 80
    oracle_procs.append(env.start_oracle(batch_size=3))
    wait_for(
        lambda: store.status().submitted == 80,
        90,
        f"all submitted after restart (killed at {killed_at.as_dict()})",
        lambda: str(store.status().as_dict()),
    )
    _assert_exactly_once(env, expected)
    assert store.status().queue_depth == 0


def test_oracle_queue_grows_while_chain_is_down_then_drains(env: Env, oracle_procs: list) -> None:
    first = current_interval(env.w3, INTERVAL_S)
    end_interval(env.w3, first + 3, INTERVAL_S)
    oracle_procs.append(env.start_oracle())
    sim = env.publisher()
    expected = _publish(sim, range(first, first + 1))
    store = env.store()
    wait_for(lambda: store.status().submitted == 20, 60, "first interval")
    env.anvil.stop()  # SIGTERM: anvil dumps its state file
    expected |= _publish(sim, range(first + 1, first + 4))
    wait_for(lambda: store.status().pending == 60, 30, "queue to grow")
    time.sleep(1.0)
    assert store.status().submitted == 20 and store.status().pending == 60
    env.anvil.start()  # same port, state reloaded
    # a reloaded Anvil forgets its time offset: move its clock back past the last block
    set_time(env.w3, int(env.w3.eth.get_block("latest")["timestamp"]) + 1)
    wait_for(lambda: store.status().submitted == 80, 90, "queue to drain")
    _assert_exactly_once(env, expected)


def test_oracle_rejects_bad_messages_and_keeps_running(env: Env, oracle_procs: list) -> None:
    first = current_interval(env.w3, INTERVAL_S)
    end_interval(env.w3, first, INTERVAL_S)
    oracle_procs.append(env.start_oracle())
    t = MqttTransport(env.broker.url)
    t.connect()
    sep = env.ledger.domain().separator()
    good = env.meters[0]

    def signed(key: str, reading: Reading) -> bytes:
        return SignedReading(reading, sign_reading(key, sep, reading)).to_json()

    stranger_key = "0x" + "42" * 32
    stranger = address_of(stranger_key)
    t.publish(readings_topic(stranger), signed(stranger_key, Reading(stranger, first, 1, 0)))
    t.publish(readings_topic(good.address), b'{"v": 1, "meter": ')
    t.publish(
        readings_topic(good.address), signed(good.key, Reading(good.address, first + 5, 1, 0))
    )
    ok = signed(good.key, Reading(good.address, first, 11, 0))
    t.publish(readings_topic(good.address), ok)
    assert t.flush(10)
    store = env.store()
    wait_for(lambda: store.status().submitted == 1, 30, "the good reading")
    t.publish(readings_topic(good.address), ok)  # replayed
    t.publish(readings_topic(good.address), signed(good.key, Reading(good.address, first, 12, 0)))
    forged = Reading(env.meters[1].address, first, 5, 0)
    t.publish(readings_topic(forged.meter), signed(good.key, forged))
    assert t.flush(10)
    wait_for(lambda: sum(store.status().rejected_by_reason.values()) == 6, 30, "6 rejections")
    assert store.status().rejected_by_reason == {
        "unregistered": 1, "malformed": 1, "future_interval": 1, "replayed": 1,
        "conflicting": 1, "bad_signature": 1,
    }  # fmt: skip
    assert oracle_procs[0].poll() is None  # still running
    second = env.meters[1]
    t.publish(
        readings_topic(second.address), signed(second.key, Reading(second.address, first, 7, 3))
    )
    assert t.flush(10)
    wait_for(lambda: store.status().submitted == 2, 30, "a good reading after the bad ones")
    assert env.ledger.reading_of(good.address, first) == (11, 0, True)
    assert env.ledger.reading_of(second.address, first) == (7, 3, True)
    t.close()
