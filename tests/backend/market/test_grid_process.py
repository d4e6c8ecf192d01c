"""The Neural Grid in a worker process gives the clearing the in-process validator gives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.chain.protocol import BUY, SELL
from backend.market.auction import BookOrder, clear
from backend.market.grid_port import GridPortAdapter
from backend.market.grid_process import GridProcess

Z = "0x" + "00" * 20
INTERVAL = (86400 * 1000 + 13 * 3600) // 900  # a midday interval: PV pushes the voltages up


@pytest.fixture(scope="module")
def worker() -> Iterator[GridProcess]:
    grid = GridProcess("cigre_lv", 900)
    yield grid
    grid.close()


def _book(buses: list[int]) -> list[BookOrder]:
    """Sellers at the feeder end, buyers near the transformer: big enough for vetoes."""
    far, near = buses[-6:], buses[:6]
    book = [
        BookOrder(f"0x{i:064x}", f"0x{i:040x}", SELL, 30_000, 10 + i, Z, i, bus)
        for i, bus in enumerate(far, start=1)
    ]
    book += [
        BookOrder(f"0x{i + 100:064x}", f"0x{i + 100:040x}", BUY, 20_000, 60 - i, Z, 100 + i, bus)
        for i, bus in enumerate(near, start=1)
    ]
    return book


def test_clear_in_worker_matches_in_process(worker: GridProcess) -> None:
    local = GridPortAdapter("cigre_lv", 900)
    assert worker.load_buses() == local.load_buses()
    book = _book(local.load_buses())
    worker.prepare(INTERVAL)
    there = worker.clear(INTERVAL, book)
    here = local.clear(INTERVAL, book)
    assert there.method == here.method == "optimal"
    assert there.trades == here.trades and there.evidence_hash == here.evidence_hash
    # The grid binds: some volume is traded, less than the book could (its whole 120 kWh).
    assert 0 < there.traded_wh < min(there.offered_wh, there.bid_wh)
    greedy = clear(book, lambda batch: local.validate(INTERVAL, batch))
    assert there.welfare >= greedy.welfare
    assert worker.validate(INTERVAL, there.approved) == local.validate(INTERVAL, here.approved)


def test_hosting_capacity_in_worker(worker: GridProcess) -> None:
    local = GridPortAdapter("cigre_lv", 900)
    bus = local.load_buses()[-1]
    assert worker.hosting_capacity_w(bus) == local.hosting_capacity_w(bus)


def test_worker_ends_when_the_api_process_is_killed() -> None:
    """A killed API process runs no exit handlers: its grid worker must still go away."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    code = (
        "import os, sys, time\n"
        "from backend.market.grid_process import GridProcess\n"
        "g = GridProcess('cigre_lv', 900)\n"
        "g.load_buses()\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        workers = [
            c
            for c in psutil.Process(pid).children(recursive=True)
            if "spawn_main" in " ".join(c.cmdline())
        ]
        assert len(workers) == 1
        os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while workers[0].is_running() and workers[0].status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the grid worker outlived the killed API process"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_worker_is_started_again() -> None:
    """A worker that dies (OOM killer, a crash) costs one restart, not the clearing: the call is
    repeated in a fresh worker with the same answer."""
    import os
    import signal

    grid = GridProcess("cigre_lv", 900)
    try:
        local = GridPortAdapter("cigre_lv", 900)
        bus = local.load_buses()[-1]
        first = grid.hosting_capacity_w(bus)
        (pid,) = list(grid._pool._processes)  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        book = _book(local.load_buses())
        there = grid.clear(INTERVAL, book)
        here = local.clear(INTERVAL, book)
        assert there.trades == here.trades and there.evidence_hash == here.evidence_hash
        assert list(grid._pool._processes) != [pid]  # type: ignore[attr-defined]
        assert grid.hosting_capacity_w(bus) == first
    finally:
        grid.close()
