"""``tegrid bench api``: signed orders accepted per second through HTTP by one uvicorn worker.

A dev stack (Anvil, contracts, ten funded participants) in a temporary folder; the real server
(``tegrid serve``, its own process, one worker) on a free port; orders signed before timing; a lean
keep-alive HTTP/1.1 client (asyncio streams, ``concurrency`` connections) so the client costs little
of the two cores. Baselines from the same run: the same server driven one request at a time (httpx),
and the per-order signature check with eth-account's generic EIP-712 recovery vs the coincurve path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data

from backend.chain import eip712, protocol
from backend.demo.clients import signed_body
from backend.devtools.anvil import AnvilProcess
from backend.devtools.devstack import start_dev_stack
from backend.market import typed
from backend.net import free_port
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS, Settings


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sign_orders(domain: typed.Domain, first_interval: int, count: int) -> list[bytes]:
    """``count`` JSON bodies of valid orders (1 Wh, alternating sides) over the ten dev accounts."""
    bodies = []
    for i in range(count):
        key = ANVIL_KEYS[i % len(ANVIL_KEYS)]
        interval = first_interval + (i // len(ANVIL_KEYS)) % 200
        msg = {
            "trader": Account.from_key(key).address, "side": i % 2, "intervalId": interval,
            "energyWh": 1, "pricePerKWh": 1000 + i % 97, "nonce": 10_000_000 + i,
            "expiry": interval * 900 + 86_400, "counterparty": protocol.ZERO_ADDRESS,
        }  # fmt: skip
        bodies.append(json.dumps(signed_body(domain, "Order", msg, key)).encode())
    return bodies


async def _drive(
    host: str, port: int, bodies: list[bytes], concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    queue = list(reversed(bodies))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                body = queue.pop()
                head = (
                    f"POST /orders HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                code = int(status_line.split()[1])
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies, statuses


def _sequential(url: str, bodies: list[bytes]) -> tuple[float, list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=url) as c:
        t0 = time.perf_counter()
        for body in bodies:
            t1 = time.perf_counter()
            r = c.post("/orders", content=body, headers={"Content-Type": "application/json"})
            latencies.append(time.perf_counter() - t1)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        return time.perf_counter() - t0, latencies, statuses


def _verify_costs(domain: typed.Domain, n: int = 300) -> dict[str, float]:
    """Microseconds per order check: eth-account generic EIP-712 vs hand hashing + coincurve."""
    key = ANVIL_KEYS[1]
    msg = {
        "trader": Account.from_key(key).address,
        "side": 0,
        "intervalId": 1,
        "energyWh": 1,
        "pricePerKWh": 1,
        "nonce": 1,
        "expiry": 2,
        "counterparty": protocol.ZERO_ADDRESS,
    }
    sig = eip712.sign_digest(domain.digest("Order", msg), key)
    doc = {**domain.template("Order"), "message": msg}
    t0 = time.perf_counter()
    for _ in range(n):
        Account.recover_message(encode_typed_data(full_message=doc), signature=sig)
    naive = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        typed.recover(domain.digest("Order", msg), sig)
    fast = (time.perf_counter() - t0) / n * 1e6
    return {"eth_account_generic_us": round(naive, 1), "hand_hashing_coincurve_us": round(fast, 1)}


def uvicorn_stack() -> str:
    """The HTTP parser and event loop uvicorn's ``auto`` settings pick in this environment (the
    server runs in this interpreter): httptools/uvloop when installed, else h11/asyncio."""
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}, {loop}"


def run(orders: int = 6000, concurrency: int = 32, baseline_orders: int = 600) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tegrid-bench-api-"))
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(
            Settings.from_env(), rpc_url=anvil.url, deployment_file=tmp / "deployment.json",
            chain_state_file=tmp / "anvil.json", database_url=f"sqlite:///{tmp / 'book.db'}",
        )  # fmt: skip
        stack = start_dev_stack(settings)
        domain = typed.market_domain(
            stack.deployment.chain_id, stack.deployment.address("EnergyMarket")
        )
        port = free_port()
        env = {
            **os.environ,
            "TEGRID_RPC_URL": anvil.url,
            "TEGRID_DEPLOYMENT_FILE": str(settings.deployment_file),
            "TEGRID_DATABASE_URL": settings.database_url,
        }
        cmd = [
            sys.executable,
            "-m",
            "backend.cli.main",
            "serve",
            "--port",
            str(port),
            "--no-scheduler",
            "--no-keeper",
        ]
        server = subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the API server did not start")
                time.sleep(0.3)
            current = int(httpx.get(url + "/intervals/current").json()["id"])
            bodies = sign_orders(domain, current + 2, orders + baseline_orders + 200)
            warm, rest = bodies[:200], bodies[200:]
            asyncio.run(_drive("127.0.0.1", port, warm, 8))
            elapsed, lat, statuses = asyncio.run(
                _drive("127.0.0.1", port, rest[:orders], concurrency)
            )
            b_elapsed, b_lat, b_statuses = _sequential(url, rest[orders:])
        finally:
            server.terminate()
            server.wait(15)
        stack.stop()
    accepted = statuses.get(201, 0)
    return {
        "benchmark": "api_orders",
        "server": f"tegrid serve, one uvicorn worker ({uvicorn_stack()}), SQLite WAL store, "
        "Anvil chain",
        "orders": orders,
        "concurrency": concurrency,
        "accepted": accepted,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "orders_per_s": round(accepted / elapsed, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 3),
        "p99_ms": round(_percentile(lat, 0.99) * 1000, 3),
        "baseline_sequential": {
            "orders": len(b_lat),
            "statuses": {str(k): v for k, v in sorted(b_statuses.items())},
            "orders_per_s": round(b_statuses.get(201, 0) / b_elapsed, 1),
            "p50_ms": round(statistics.median(b_lat) * 1000, 3),
            "p99_ms": round(_percentile(b_lat, 0.99) * 1000, 3),
        },
        "signature_check_per_order": _verify_costs(domain),
        "target_orders_per_s": 2000,
    }
