"""Start a local Anvil chain from node_modules (for `tegrid chain start` and the benchmark)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from web3 import Web3

from backend.chain.errors import ChainUnavailableError
from backend.errors import ToolchainError
from backend.net import free_port
from backend.paths import NODE_BIN

HARDFORK = "shanghai"  # Ganache 7 stops at Shanghai; the same bytecode runs on both chains
BLOCK_GAS_LIMIT = 30_000_000


def anvil_binary() -> Path:
    """The native Anvil from npm (@foundry-rs/anvil-<platform>), else the node launcher in .bin.

    The native binary is preferred so the process we start (and stop) is Anvil itself: the node
    launcher does not pass SIGKILL on, which would orphan the chain."""
    native = sorted((NODE_BIN.parent / "@foundry-rs").glob("anvil-*/bin/anvil"))
    if native:
        return native[0]
    path = NODE_BIN / "anvil"
    if not path.exists():
        raise ToolchainError(f"{path} not found: run `npm ci` (package @foundry-rs/anvil)")
    return path


def is_up(rpc_url: str, timeout_s: float = 1.0) -> bool:
    """Whether a JSON-RPC node answers at ``rpc_url``."""
    try:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        return bool(w3.is_connected())
    except Exception:
        return False


@dataclass
class AnvilProcess:
    """A running Anvil started by us; :meth:`stop` ends exactly this process."""

    url: str
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Anvil dumps --state on exit
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_anvil(
    port: int | None = None,
    *,
    state_file: Path | None = None,
    state_interval_s: int = 1,
    chain_id: int = 31337,
    timeout_s: float = 20.0,
    log_file: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> AnvilProcess:
    """Start Anvil (--hardfork shanghai, 30M gas blocks) on ``port`` (a free one when None).

    With ``state_file`` the chain loads it at start and dumps it every ``state_interval_s`` seconds.
    """
    port = port or free_port()
    cmd = [
        str(anvil_binary()),
        "--port",
        str(port),
        "--hardfork",
        HARDFORK,
        "--gas-limit",
        str(BLOCK_GAS_LIMIT),
        "--chain-id",
        str(chain_id),
        "--accounts",
        "10",
    ]
    cmd += list(extra_args)
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--state", str(state_file), "--state-interval", str(state_interval_s)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChainUnavailableError(
                f"anvil exited with code {proc.returncode}: {' '.join(cmd)}"
            )
        if is_up(url, 0.5):
            return AnvilProcess(url=url, port=port, process=proc)
        time.sleep(0.1)
    proc.kill()
    raise ChainUnavailableError(f"anvil did not answer on {url} within {timeout_s:.0f} s")
