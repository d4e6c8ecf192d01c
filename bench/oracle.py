"""``tegrid bench oracle``: readings relayed on-chain per second (broker publish -> receipt) and gas
per reading, batched ``submitReadings`` vs one transaction per reading, in one run.

Everything is real and our own: an Anvil (free port, shanghai), a Mosquitto, the contracts deployed
with backend/chain/deploy.py, meters registered, and ``tegrid oracle`` as a subprocess (so the
publisher and the daemon do not share one Python interpreter lock). Meters sign before the clock
starts (a meter signs on its own device); the clock runs from the first publish to the last receipt.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from backend.chain.client import ChainClient
from backend.chain.contracts import save_deployment
from backend.chain.deploy import RoleHolders, deploy_all
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker
from backend.devtools.clock import current_interval, end_interval
from backend.devtools.participants import register_participants
from backend.iot.meters import dev_meters
from backend.iot.schema import SignedReading, readings_topic
from backend.iot.signing import Reading, ReadingDomain, sign_reading
from backend.iot.transport import MqttTransport
from backend.oracle.errors import OracleError
from backend.oracle.store import SUBMITTED, BatchRow, OracleStore, ReadingRow
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900


def _phase(
    env: dict[str, str],
    work: Path,
    broker_url: str,
    signed: list[SignedReading],
    batch_size: int,
    timeout_s: float,
) -> dict[str, float]:
    db_url = f"sqlite:///{work / f'oracle-{batch_size}.db'}"
    store = OracleStore(db_url)
    log_path = work / f"oracle-{batch_size}.log"  # a file: an undrained pipe would block the daemon
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli.main", "oracle", "--batch-size", str(batch_size),
             "--client-id", f"bench-{batch_size}", "--database-url", db_url,
             "--log-level", "WARNING"],
            env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while store.meta("started_at") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise OracleError(f"oracle did not start: {log_path.read_text()[-500:]}")
            time.sleep(0.05)
        time.sleep(0.3)
        pub = MqttTransport(broker_url)
        pub.connect()
        t0 = time.time()
        for s in signed:
            pub.publish(
                readings_topic(s.reading.meter),
                SignedReading(s.reading, s.signature, time.time()).to_json(),
            )
        pub.flush(timeout_s)
        publish_s = time.time() - t0
        deadline = time.monotonic() + timeout_s
        while store.status().submitted < len(signed):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise OracleError(
                    f"only {store.status().submitted} of {len(signed)} readings relayed"
                )
            time.sleep(0.02)
        pub.close()
        with store.engine.connect() as conn:
            last = conn.execute(
                select(func.max(ReadingRow.submitted_at)).where(ReadingRow.status == SUBMITTED)
            ).scalar_one()
            gas = conn.execute(select(func.sum(BatchRow.gas_used))).scalar_one()
            txs = conn.execute(
                select(func.count()).select_from(BatchRow).where(BatchRow.status == SUBMITTED)
            ).scalar_one()
        latencies = sorted(store.latencies_s())
        elapsed = float(last or t0) - t0 or 1e-9
        return {
            "readings": len(signed),
            "readings_per_s": round(len(signed) / elapsed, 1),
            "gas_per_reading": round(int(gas or 0) / len(signed), 1),
            "transactions": int(txs),
            "publish_s": round(publish_s, 3),
            "elapsed_s": round(elapsed, 3),
            "latency_p50_s": round(latencies[len(latencies) // 2], 3),
            "latency_max_s": round(latencies[-1], 3),
        }
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        store.close()


def run_oracle_bench(
    readings: int = 4000,
    meters: int = 500,
    single_readings: int = 300,
    batch_size: int = 400,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """One run, both modes, on fresh intervals each; returns the JSON-ready figures."""
    with (
        tempfile.TemporaryDirectory(prefix="tegrid-bench-oracle-") as tmp,
        AnvilProcess() as anvil,
        MosquittoBroker() as broker,
    ):
        work = Path(tmp)
        admin = ChainClient(anvil.url, ANVIL_KEYS[0])
        a = admin.address
        dep = deploy_all(admin, RoleHolders(a, a, a, a), interval_seconds=INTERVAL_S)
        dep_file = work / "deployment.json"
        save_deployment(dep, dep_file)
        specs = dev_meters(meters)
        register_participants(
            admin.w3, dep.address("ParticipantRegistry"), ANVIL_KEYS[0],
            [(m.wallet, m.address, int(m.bus)) for m in specs],
        )  # fmt: skip
        batch_intervals = -(-readings // meters)
        single_intervals = -(-single_readings // meters)
        first = current_interval(admin.w3, INTERVAL_S)
        end_interval(admin.w3, first + batch_intervals + single_intervals, INTERVAL_S)
        sep = ReadingDomain(dep.chain_id, dep.address("MeterReadings")).separator()

        def sign_all(start: int, count: int) -> list[SignedReading]:
            out = []
            for k in range(count):
                spec = specs[k % meters]
                r = Reading(spec.address, start + k // meters, 200 + k % 97, k % 13)
                out.append(SignedReading(r, sign_reading(spec.key, sep, r)))
            return out

        batch_set = sign_all(first, readings)
        single_set = sign_all(first + batch_intervals, single_readings)
        env = {
            **os.environ,
            "TEGRID_RPC_URL": anvil.url,
            "TEGRID_BROKER_URL": broker.url,
            "TEGRID_DEPLOYMENT_FILE": str(dep_file),
            "TEGRID_ORACLE_KEY": ANVIL_KEYS[0],
        }
        batch = _phase(env, work, broker.url, batch_set, batch_size, timeout_s)
        single = _phase(env, work, broker.url, single_set, 1, timeout_s)
    return {
        "readings": readings,
        "single_readings": single_readings,
        "meters": meters,
        "batch_size": batch_size,
        "batch_readings_per_s": batch["readings_per_s"],
        "batch_gas_per_reading": batch["gas_per_reading"],
        "single_readings_per_s": single["readings_per_s"],
        "single_gas_per_reading": single["gas_per_reading"],
        "speedup": round(batch["readings_per_s"] / single["readings_per_s"], 1),
        "gas_saving": round(1 - batch["gas_per_reading"] / single["gas_per_reading"], 3),
        "batch": batch,
        "single": single,
    }
