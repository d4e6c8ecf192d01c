"""Kill -9 a real ``tegrid serve --dev`` after orders are accepted; the restart loses nothing and
the batch goes on chain exactly once (read from the chain)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from backend.chain.contracts import contract_at, load_deployment
from backend.devtools.anvil import AnvilProcess
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e
ZERO = "0x" + "00" * 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            str(REPO_ROOT / ".venv" / "bin" / "tegrid"),
            "serve",
            "--dev",
            "--port",
            str(self.port),
            "--no-scheduler",
            "--no-keeper",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(self.log.read_text()[-2000:])

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def chain_and_env(tmp_path: Path) -> Iterator[tuple[AnvilProcess, dict[str, str]]]:
    with AnvilProcess(state_file=tmp_path / "anvil.json") as anvil:
        env = {
            **os.environ,
            "TEGRID_RPC_URL": anvil.url,
            "TEGRID_DEPLOYMENT_FILE": str(tmp_path / "deployment.json"),
            "TEGRID_CHAIN_STATE_FILE": str(tmp_path / "anvil.json"),
            "TEGRID_DATABASE_URL": f"sqlite:///{tmp_path / 'book.db'}",
        }
        yield anvil, env


def _sign(template: dict[str, Any], key: str, **fields: Any) -> dict[str, Any]:
    msg = {"trader": Account.from_key(key).address, "counterparty": ZERO, **fields}
    sig = Account.sign_typed_data(key, full_message={**template, "message": msg}).signature.hex()
    return {"message": msg, "signature": "0x" + sig.removeprefix("0x")}


def test_kill9_before_clearing_then_restart_records_once(
    chain_and_env: tuple[AnvilProcess, dict[str, str]], tmp_path: Path
) -> None:
    anvil, env = chain_and_env
    server = Server(env, _free_port(), tmp_path / "serve.log")
    server.start()
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        template = c.get("/orders/eip712").json()
        iv = c.get("/intervals/current").json()["id"] + 3
        orders = [
            _sign(
                template,
                ANVIL_KEYS[1],
                side=0,
                intervalId=iv,
                energyWh=3000,
                pricePerKWh=100_000,
                nonce=1,
                expiry=iv * 900 + 7200,
            ),
            _sign(
                template,
                ANVIL_KEYS[2],
                side=1,
                intervalId=iv,
                energyWh=2000,
                pricePerKWh=200_000,
                nonce=1,
                expiry=iv * 900 + 7200,
            ),
            _sign(
                template,
                ANVIL_KEYS[3],
                side=1,
                intervalId=iv,
                energyWh=2000,
                pricePerKWh=150_000,
                nonce=1,
                expiry=iv * 900 + 7200,
            ),
        ]
        hashes = [c.post("/orders", json=o).json()["hash"] for o in orders]
        server.kill9()

        server.start()
        c = httpx.Client(base_url=server.url, timeout=60)
        book = c.get("/orders", params={"interval": iv}).json()
        assert sorted(o["hash"] for o in book) == sorted(hashes)
        assert {o["status"] for o in book} == {"open"}
        r = c.post(f"/intervals/{iv}/close")
        assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
        server.kill9()

        server.start()  # recovery must not send the batch again
        c = httpx.Client(base_url=server.url, timeout=60)
        assert c.get(f"/intervals/{iv}").json()["status"] == "recorded"
        assert c.post(f"/intervals/{iv}/close").status_code == 409
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        dep = load_deployment(Path(env["TEGRID_DEPLOYMENT_FILE"]))
        market = contract_at(w3, "EnergyMarket", dep.address("EnergyMarket"))
        _last, batches, approved, *_rest = market.functions.intervalOf(iv).call()
        assert (batches, approved) == (1, 2)
        assert (
            len(
                market.events.BatchRecorded.get_logs(
                    from_block=0, argument_filters={"intervalId": iv}
                )
            )
            == 1
        )
    finally:
        server.stop()


def test_kill9_during_multi_batch_recording_then_restart_records_the_rest_once(
    chain_and_env: tuple[AnvilProcess, dict[str, str]], tmp_path: Path
) -> None:
    from eth_utils import keccak

    from backend.chain import eip712
    from backend.chain.client import ChainClient
    from backend.market import typed

    anvil, env = chain_and_env
    server = Server(env, _free_port(), tmp_path / "serve.log")
    server.start()
    try:
        dep = load_deployment(Path(env["TEGRID_DEPLOYMENT_FILE"]))
        admin = ChainClient(anvil.url, ANVIL_KEYS[0])
        w3 = admin.w3
        registry = contract_at(w3, "ParticipantRegistry", dep.address("ParticipantRegistry"))
        market = contract_at(w3, "EnergyMarket", dep.address("EnergyMarket"))
        token = contract_at(w3, "EnergyToken", dep.address("EnergyToken"))
        keys = ["0x" + keccak(text=f"crash trader {i}").hex() for i in range(40)]
        for i, key in enumerate(keys):
            wallet = Account.from_key(key).address
            meter = Account.from_key("0x" + keccak(text=f"crash meter {i}").hex()).address
            w3.provider.make_request("anvil_setBalance", [wallet, hex(10**21)])  # type: ignore[arg-type]
            admin.transact(registry.functions.connect(wallet, meter, 1 + i, 400_000, 400_000))
            admin.transact(token.functions.mint(wallet, 10**12))
            trader = ChainClient(anvil.url, key)
            trader.transact(token.functions.approve(market.address, 10**12))
            trader.transact(market.functions.deposit(10**12))
        domain = typed.market_domain(dep.chain_id, dep.address("EnergyMarket"))
        c = httpx.Client(base_url=server.url, timeout=120)
        iv = c.get("/intervals/current").json()["id"] + 3
        pairs = 800  # 20 per trader and side: under the default cap of 64 orders
        for i in range(pairs):
            s_key, b_key = keys[i % 40], keys[(i + 1 + (i // 40) % 39) % 40]
            s_addr, b_addr = Account.from_key(s_key).address, Account.from_key(b_key).address
            for key, side, me, other in ((s_key, 0, s_addr, b_addr), (b_key, 1, b_addr, s_addr)):
                msg = {
                    "trader": me, "side": side, "intervalId": iv, "energyWh": 10,
                    "pricePerKWh": 100_000, "nonce": 1 + i, "expiry": iv * 900 + 86_400,
                    "counterparty": other,
                }  # fmt: skip
                sig = eip712.sign_digest(domain.digest("Order", msg), key)
                r = c.post("/orders", json={"message": msg, "signature": sig})
                assert r.status_code == 201, r.text
        r = c.post(f"/intervals/{iv}/close", params={"wait": "false"})
        assert r.status_code == 200 and r.json()["status"] == "cleared", r.text
        count = len(r.json()["batches"])
        assert count >= 3
        deadline = time.monotonic() + 120
        while True:  # kill once some but not all batches are on chain
            _last, on_chain, *_rest = market.functions.intervalOf(iv).call()
            if 0 < on_chain < count:
                break
            assert on_chain == 0 and time.monotonic() < deadline
            time.sleep(0.02)
        server.kill9()
        _last, at_kill, *_rest = market.functions.intervalOf(iv).call()
        assert 0 < at_kill < count

        server.start()  # recovery records the rest
        c = httpx.Client(base_url=server.url, timeout=120)
        body = c.get(f"/intervals/{iv}").json()
        assert body["status"] == "recorded", body["batches"]
        _last, batches, approved, *_rest = market.functions.intervalOf(iv).call()
        assert (batches, approved) == (count, pairs)
        logs = market.events.BatchRecorded.get_logs(
            from_block=0, argument_filters={"intervalId": iv}
        )
        assert [int(lg["args"]["batchIndex"]) for lg in logs] == list(range(count))
        assert [b["txHash"] for b in body["batches"]] == [
            "0x" + bytes(lg["transactionHash"]).hex() for lg in logs
        ]
        trades = c.get("/trades", params={"interval": iv}).json()
        ids = {t["id"] for t in trades}
        recorded = [
            "0x" + bytes(lg["args"]["tradeId"]).hex()
            for lg in market.events.TradeRecorded.get_logs(from_block=0)
        ]
        assert len(trades) == pairs and len(recorded) == pairs and set(recorded) == ids
        assert {t["status"] for t in trades} == {"recorded"}
        assert {t["txHash"] for t in trades} == {b["txHash"] for b in body["batches"]}
        print(f"\nkilled with {at_kill}/{count} batches on chain; {pairs} trades recorded once")
    finally:
        server.stop()
