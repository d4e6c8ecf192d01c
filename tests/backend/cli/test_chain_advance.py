"""``tegrid chain advance`` against a real Anvil, run as the user runs it (the installed script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from web3 import Web3

from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now

TEGRID = Path(sys.executable).with_name("tegrid")


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    with AnvilProcess() as chain:
        yield chain


def _advance(rpc_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        COLUMNS="60",
        TEGRID_RPC_URL=rpc_url,
        TEGRID_DEPLOYMENT_FILE=str(tmp_path / "none" / "deployment.json"),
        TEGRID_INTERVAL_SECONDS="900",
    )
    return subprocess.run(
        [str(TEGRID), "chain", "advance", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_advance_seconds_mines_a_block_that_much_later(anvil: AnvilProcess, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    before, height = chain_now(w3), w3.eth.block_number
    result = _advance(anvil.url, tmp_path, "--seconds", "900")
    assert result.returncode == 0, result.stderr
    assert (chain_now(w3), w3.eth.block_number) == (before + 900, height + 1)
    assert result.stdout.startswith(f"chain time {before + 900} (interval {(before + 900) // 900}")


def test_advance_to_interval_starts_that_interval(anvil: AnvilProcess, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    target = chain_now(w3) // 900 + 3
    result = _advance(anvil.url, tmp_path, "--to-interval", str(target))
    assert result.returncode == 0, result.stderr
    assert chain_now(w3) == target * 900
    assert int(w3.eth.get_block("pending")["timestamp"]) // 900 == target
    again = _advance(anvil.url, tmp_path, "--to-interval", str(target), "--interval-seconds", "900")
    assert again.returncode == 0 and "moved 0 s" in again.stdout
    assert chain_now(w3) == target * 900


def test_advance_refuses_an_interval_in_the_past(anvil: AnvilProcess, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    now, height = chain_now(w3), w3.eth.block_number
    result = _advance(anvil.url, tmp_path, "--to-interval", "3")
    assert result.returncode == 2
    assert _one_error_line(result) == (
        f"error: interval 3 started at 2700, before the chain's time {now} "
        f"(interval {now // 900}): the clock only moves forward"
    )
    assert w3.eth.block_number == height


@pytest.mark.parametrize("args", [[], ["--seconds", "5", "--to-interval", "9"]])
def test_advance_needs_exactly_one_target(args: list[str], tmp_path: Path) -> None:
    result = _advance("http://127.0.0.1:9", tmp_path, *args)
    assert result.returncode == 2
    assert _one_error_line(result) == "error: give exactly one of --to-interval N or --seconds S"


def test_advance_without_a_chain(tmp_path: Path) -> None:
    result = _advance("http://127.0.0.1:9", tmp_path, "--seconds", "5")
    assert result.returncode == 1
    assert "no chain answering at http://127.0.0.1:9" in _one_error_line(result)


class _NoDevMethods(BaseHTTPRequestHandler):
    """A JSON-RPC node like a production client: Anvil behind it, its ``evm_*`` methods refused
    with "method not found" as geth refuses them."""

    upstream = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        if str(request.get("method", "")).startswith("evm_"):
            answer = json.dumps({
                "jsonrpc": "2.0", "id": request.get("id"),
                "error": {"code": -32601, "message": f"the method {request['method']} does "
                          "not exist/is not available"},
            }).encode()  # fmt: skip
        else:
            upstream = urllib.request.Request(
                self.upstream, body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(upstream, timeout=10) as response:
                answer = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_args: object) -> None:
        pass


def test_advance_refuses_a_chain_without_dev_methods(anvil: AnvilProcess, tmp_path: Path) -> None:
    handler = type("Handler", (_NoDevMethods,), {"upstream": anvil.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        height = w3.eth.block_number
        result = _advance(f"http://127.0.0.1:{server.server_port}", tmp_path, "--seconds", "60")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert _one_error_line(result) == (
        "error: this chain cannot move its clock (no evm_setNextBlockTimestamp or "
        "evm_increaseTime): a development chain (Anvil, Ganache) is needed"
    )
    assert w3.eth.block_number == height
