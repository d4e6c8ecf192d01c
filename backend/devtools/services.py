"""The demo's services as operating-system processes, each a ``tegrid`` subcommand.

The API server, the oracle daemon and the settlement keeper are separate programs in production;
the demo runs them the same way so that they do not share one Python interpreter lock with each
other or with the clients (order posting, meters) the demo itself plays. Each process gets the
demo's settings through ``TEGRID_*`` variables and writes its log to the run folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backend.errors import TegridError
from backend.paths import REPO_ROOT
from backend.settings import Settings


class ServiceError(TegridError, RuntimeError):
    """A service process did not start or exited early (its log's tail says why)."""


class ServiceProcess:
    """``python -m backend.cli.main <args>`` with the given settings; ``stop`` ends it (SIGTERM,
    then SIGKILL after ``grace_s``)."""

    def __init__(self, name: str, args: list[str], settings: Settings, log_dir: Path) -> None:
        self.name = name
        self.args = args
        # unbuffered and wide: the log file is read back whole lines at a time
        self.env = {
            **os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"
        }  # fmt: skip
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend.cli.main", *self.args],
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        return self

    def log_tail(self, chars: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
        """Poll ``ready`` until it holds; fail with the log's tail if the process exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ready():
                    return
            except Exception:  # not up yet (connection refused, table missing, ...)
                pass
            if not self.alive():
                raise ServiceError(f"{self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} not ready after {timeout_s:.0f} s")
            time.sleep(0.05)

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
