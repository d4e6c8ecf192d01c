"""Start a Mosquitto broker (the Debian package) on a given port, configured for bursts.

``max_queued_messages 0`` and ``max_inflight_messages 0`` lift Mosquitto's per-client limits
(defaults of 1000 queued / 20 in flight lost and throttled a 5,000-message burst; see TOOLCHAIN.md).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from backend.iot.errors import TransportError
from backend.net import free_port, port_open

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


def broker_config(port: int, persistence_dir: Path | None = None, host: str = "127.0.0.1") -> str:
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "max_queued_messages 0",
        "max_inflight_messages 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if persistence_dir is not None:
        lines += [
            "persistence true",
            f"persistence_location {persistence_dir}/",
            "autosave_interval 1",
        ]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"


class MosquittoBroker:
    """A mosquitto process of our own; use as a context manager. ``url`` is
    ``mqtt://127.0.0.1:<port>``.
    """

    def __init__(self, port: int | None = None, persistence_dir: Path | None = None) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise TransportError("mosquitto not found: apt-get install mosquitto")
        self.exe = exe
        self.port = port or free_port()
        self.persistence_dir = persistence_dir
        self._dir = tempfile.TemporaryDirectory(prefix="tegrid-mosquitto-")
        self.config_path = Path(self._dir.name) / "mosquitto.conf"
        self.log_path = Path(self._dir.name) / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        self.config_path.write_text(broker_config(self.port, self.persistence_dir))
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [self.exe, "-c", str(self.config_path)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TransportError(
                    f"mosquitto exited: {self.log_path.read_text(errors='replace').strip()}"
                )
            if port_open("127.0.0.1", self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise TransportError(f"mosquitto did not open port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
