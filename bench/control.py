"""``tegrid bench control``: the M2M control loop - control actions signed by the grid operator
key, published through Mosquitto to simulated devices that check them against the registry and
answer with signed acks, recorded durably by the dispatcher - in actions/s and p50/p99 latency,
beside a baseline measured in the same run: unsigned QoS-1 publish -> echo round trips through
the same broker between the same two processes.

Everything is real: an Anvil with the contracts, N participants and N devices registered, a
Mosquitto configured for bursts, ``tegrid devices simulate`` as a subprocess (its own
interpreter, as devices are their own machines), and the dispatcher (store on SQLite, WAL) in
this process. The clock runs from the dispatch step that signs, stores and publishes the actions
to the commit of the last ack; an action's latency is from that step's start to the commit of
its ack (signing, storing, publishing, the device's checks and ack, the dispatcher's
verification and group commit all inside).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import save_deployment
from backend.chain.deploy import RoleHolders, deploy_all
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker
from backend.devtools.participants import register_devices, register_participants
from backend.errors import TegridError
from backend.iot.control import registry_domain
from backend.iot.control_store import ControlStore, ControlTarget
from backend.iot.devices import dev_devices
from backend.iot.dispatcher import Dispatcher, StoreActivations
from backend.iot.meters import dev_meters
from backend.iot.transport import Message, MqttTransport
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900
ECHO_TOPIC = "bench/echo"


def _percentiles(latencies_s: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies_s)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return round(statistics.median(ordered) * 1000, 2), round(p99 * 1000, 2)


def _wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TegridError(f"bench control: timed out waiting for {what}")
        time.sleep(0.01)


def echo(broker_url: str) -> None:
    """The baseline's responder (``python -m bench.control echo URL``): every message on
    ``bench/echo/<n>/control`` goes back unchanged on ``bench/echo/<n>/ack``, QoS 1."""
    transport = MqttTransport(broker_url)

    def answer(message: Message) -> None:
        transport.publish(message.topic[: -len("control")] + "ack", message.payload, qos=1)

    transport.subscribe(f"{ECHO_TOPIC}/+/control", answer)
    transport.connect()
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    transport.close()


def _baseline(broker_url: str, n: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.control", "echo", broker_url],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise TegridError("bench control: the echo responder did not start")
        sent: dict[int, float] = {}
        latencies: list[float] = []
        done = threading.Event()
        lock = threading.Lock()

        def received(message: Message) -> None:
            at = time.perf_counter()
            with lock:
                latencies.append(at - sent[int(message.topic.split("/")[2])])
                if len(latencies) == n:
                    done.set()

        client = MqttTransport(broker_url)
        client.subscribe(f"{ECHO_TOPIC}/+/ack", received)
        client.connect()
        time.sleep(0.3)
        start = time.perf_counter()
        for i in range(n):
            sent[i] = time.perf_counter()
            client.publish(f"{ECHO_TOPIC}/{i}/control", b"x" * 300, qos=1)
        if not done.wait(60):
            raise TegridError(f"bench control: {len(latencies)} of {n} echoes came back")
        elapsed = time.perf_counter() - start
        client.close()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)
    p50, p99 = _percentiles(latencies)
    return {"round_trips_per_s": round(n / elapsed), "p50_ms": p50, "p99_ms": p99}


def run(
    devices: int = 1000, on_phase: Callable[[str], None] = lambda _s: None, rounds: int = 1
) -> dict[str, Any]:
    """``rounds`` dispatches of one action per device (new activation ids each round) against the
    same devices, each beside a baseline run; the round with the median actions/s is the result,
    every round is listed (one burst of 1,000 varies by tens of percent from run to run)."""
    with tempfile.TemporaryDirectory(prefix="tegrid-bench-control-") as tmp_name:
        tmp = Path(tmp_name)
        with MosquittoBroker() as broker, AnvilProcess() as anvil:
            on_phase(f"deploying and registering {devices} participants and devices")
            client = ChainClient(anvil.url, ANVIL_KEYS[0])
            a = client.address
            dep = deploy_all(client, RoleHolders(a, a, a, a), interval_seconds=INTERVAL_S)
            dep_file = tmp / "deployment.json"
            save_deployment(dep, dep_file)
            registry_address = dep.address("ParticipantRegistry")
            owners = dev_meters(devices)
            specs = dev_devices(devices)
            register_participants(client.w3, registry_address, ANVIL_KEYS[0],
                                  [(m.wallet, m.address, int(m.bus)) for m in owners])  # fmt: skip
            register_devices(client.w3, registry_address, ANVIL_KEYS[0], [
                (s.address, m.wallet, int(m.bus), s.kind, s.min_w, s.max_w, s.capacity_wh)
                for s, m in zip(specs, owners, strict=True)
            ])  # fmt: skip
            on_phase(f"starting {devices} simulated devices")
            env = {
                **os.environ,
                "TEGRID_RPC_URL": anvil.url,
                "TEGRID_BROKER_URL": broker.url,
                "TEGRID_DEPLOYMENT_FILE": str(dep_file),
            }
            log_path = tmp / "devices.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "backend.cli.main", "devices", "simulate",
                     "--count", str(devices), "--no-readings", "--json"],
                    env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
            try:
                _wait(lambda: b"listening" in log_path.read_bytes(), 120, "the devices")
                time.sleep(0.5)  # subscriptions on the wire
                measured = []
                for r in range(rounds):
                    on_phase(f"round {r + 1}/{rounds}: baseline, unsigned QoS-1 round trips")
                    baseline = _baseline(broker.url, devices)
                    on_phase(f"round {r + 1}/{rounds}: dispatching {devices} signed actions")
                    devices_cpu = psutil.Process(proc.pid).cpu_times()
                    result = _dispatch(
                        tmp / f"control-{r}.db", broker.url, dep, client.w3, specs, r * devices
                    )
                    after = psutil.Process(proc.pid).cpu_times()
                    # CPU seconds of the devices' process over the round (user + system)
                    result["devices_cpu_s"] = round(
                        after.user + after.system - devices_cpu.user - devices_cpu.system, 3
                    )
                    measured.append({**result, "baseline_unsigned_qos1_round_trip": baseline})
            finally:
                proc.terminate()
                proc.wait(30)
    median = sorted(measured, key=lambda m: m["actions_per_s"])[(len(measured) - 1) // 2]
    return {
        "devices": devices,
        **median,
        "rounds": measured if rounds > 1 else None,
        "targets": {"actions_per_s": 2000, "p99_ms": 1000},
    }


def _dispatch(
    db_path: Path, broker_url: str, dep: Any, w3: Any, specs: list[Any], first_id: int
) -> dict[str, Any]:
    store = ControlStore(f"sqlite:///{db_path}")
    transport = MqttTransport(broker_url, "bench-dispatcher", clean_session=False, manual_ack=True)
    domain = registry_domain(dep.chain_id, dep.address("ParticipantRegistry"))
    dispatcher = Dispatcher(
        store, StoreActivations(store), transport, domain, ANVIL_KEYS[0], INTERVAL_S,
        lambda: chain_time(w3), retry_s=30.0,
    )  # fmt: skip
    dispatcher.start()
    transport.connect()
    time.sleep(0.3)
    now = chain_time(w3)
    interval = now // INTERVAL_S + 1
    store.add(
        ControlTarget((first_id + i).to_bytes(32, "big"), s.address, interval,
                      -2000 if i % 2 else 3000, now + 600)
        for i, s in enumerate(specs)
    )  # fmt: skip
    cpu_before = time.process_time()  # the activations are stored: from here the loop's own CPU
    start = time.time()
    report = dispatcher.step()
    step_s = time.time() - start
    # the dispatcher's own counters (committed acks), not a store query every 10 ms: the wait must
    # not take the CPU it measures
    _wait(lambda: dispatcher.acks_recorded + dispatcher.acks_dropped >= len(specs), 120,
          "the acks")  # fmt: skip
    cpu_s = time.process_time() - cpu_before  # this process: signing, publishing, the acks
    rows = store.actions(interval)
    dispatcher.stop()
    transport.close()
    store.close()
    refused = [r for r in rows if r.state != "acknowledged"]
    elapsed = max(r.acked_at or 0.0 for r in rows) - start
    p50, p99 = _percentiles([(r.acked_at or 0.0) - start for r in rows])
    return {
        "actions": len(rows),
        "acknowledged": len(rows) - len(refused),
        "refused": len(refused),
        "published_in_step": report.sent,
        "step_ms": round(step_s * 1000, 1),
        "first_ack_ms": round((min(r.acked_at or 0.0 for r in rows) - start) * 1000, 1),
        "actions_per_s": round(len(rows) / elapsed),
        "p50_ms": p50,
        "p99_ms": p99,
        "seconds": round(elapsed, 3),
        "dispatcher_cpu_s": round(cpu_s, 3),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "echo":
        echo(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.control echo mqtt://host:port")
