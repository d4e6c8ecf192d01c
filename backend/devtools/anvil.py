"""A local Anvil chain from node_modules, started (and stopped) by us: ``tegrid chain start``, the
dev stack, the demo, the benchmarks and the e2e tests all use this one class."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from web3 import Web3

from backend.chain.errors import ChainUnavailableError
from backend.errors import ToolchainError
from backend.net import free_port
from backend.paths import NODE_BIN

HARDFORK = "shanghai"  # Ganache 7 stops at Shanghai; the same bytecode runs on both chains
BLOCK_GAS_LIMIT = 30_000_000
# What tests and the dev stack add: no base fee (gas prices stay at zero) and no per-call log lines.
DEV_ARGS = ("--base-fee", "0", "--silent")


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


class AnvilProcess:
    """Anvil (--hardfork shanghai, 30M gas blocks) on one port (a free one when None).

    :meth:`stop` and :meth:`kill` end exactly this process and :meth:`start` starts it again on the
    same port, so with ``state_file`` (loaded at start, dumped every ``state_interval_s`` seconds
    and on a graceful stop) the chain survives a restart, as the outage tests need. Its output goes
    to ``log_file``; with ``temp_log`` to a temporary file removed on ``__exit__``; else nowhere.
    """

    def __init__(
        self,
        port: int | None = None,
        state_file: Path | None = None,
        state_interval_s: int = 1,
        *,
        chain_id: int = 31337,
        log_file: Path | None = None,
        temp_log: bool = True,
        extra_args: tuple[str, ...] = DEV_ARGS,
    ) -> None:
        self.port = port or free_port()
        self.state_file = state_file
        self.state_interval_s = state_interval_s
        self.chain_id = chain_id
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._temp_log: Path | None = None
        if log_file is None and temp_log:
            fd, log_name = tempfile.mkstemp(prefix="tegrid-anvil-", suffix=".log")
            os.close(fd)
            self._temp_log = log_file = Path(log_name)
        self.log_file = log_file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            str(anvil_binary()),
            "--port",
            str(self.port),
            "--hardfork",
            HARDFORK,
            "--gas-limit",
            str(BLOCK_GAS_LIMIT),
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            "10",
            *self.extra_args,
        ]
        if self.state_file is not None:
            cmd += ["--state", str(self.state_file), "--state-interval", str(self.state_interval_s)]
        return cmd

    def start(self, timeout_s: float = 20.0) -> AnvilProcess:
        """Start Anvil and return once it answers JSON-RPC."""
        cmd = self.command()
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ChainUnavailableError(
                    f"anvil exited with code {proc.returncode}: {' '.join(cmd)}"
                )
            if is_up(self.url, 0.5):
                self.process = proc
                return self
            time.sleep(0.1)
        proc.kill()
        raise ChainUnavailableError(f"anvil did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): anvil dumps its state file on the way out."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: no state dump on the way out, the state file keeps its last periodic dump (a
        restart comes back behind, as after a crash)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._temp_log is not None:
            self._temp_log.unlink(missing_ok=True)


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
    """Start a plain Anvil (Anvil's own base fee and logging unless ``extra_args`` say otherwise),
    its output in ``log_file`` or nowhere: ``tegrid chain start`` and the gas benchmarks."""
    anvil = AnvilProcess(
        port,
        state_file,
        state_interval_s,
        chain_id=chain_id,
        log_file=log_file,
        temp_log=False,
        extra_args=extra_args,
    )
    return anvil.start(timeout_s)
