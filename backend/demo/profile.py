"""Where the demo's time goes: wall seconds per named stage of the run (``Stages``) and the CPU
seconds each process of the stack has used (``cpu_seconds``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psutil


class Stages:
    """Wall seconds per stage; stages of different intervals overlap, so they add up to more than
    the wall. ``with stages("name"): ...`` adds the block's time to ``seconds["name"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """User + system CPU seconds each process of the stack has used so far; a service's live
    child processes count as its own (the API's Neural Grid worker), the driver's do not (they
    are the services)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        try:
            process = psutil.Process(pid)
            family = [process]
            if name != "driver":
                family += process.children(recursive=True)
        except psutil.Error:
            continue
        total = 0.0
        for p in family:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        out[name] = total
    return out
