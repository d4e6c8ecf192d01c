"""The Neural Grid in a worker process of its own (``Settings.grid_process``).

A clearing's rounds (pair, validate, block the vetoed pairs, pair again) run where the validator
lives: ``clear`` sends the interval's book to the worker once and gets the finished ``Clearing``
back, so the API process's interpreter lock stays with the order intake while the power flows
run on another core. ``prepare`` queues the next interval's base state behind the clearing in the
worker. The answers are those of ``GridPortAdapter`` in-process: the worker runs one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from backend.market.activations import FlexInput
from backend.market.auction import BookOrder, Candidate, Clearing, Decision
from backend.market.errors import GridUnavailableError
from backend.market.grid_port import GridPortAdapter
from grid.validator import GridValidator
from grid.verdicts import Activation, Limits

_WORKER: Any = None  # the worker process's GridPortAdapter
PARENT_POLL_S = 0.5


def _start(
    network: str,
    interval_seconds: int,
    limits: dict[str, float] | None,
    clearing: str,
    parent_pid: int,
) -> None:
    global _WORKER
    threading.Thread(target=_exit_with, args=(parent_pid,), daemon=True).start()
    _WORKER = GridPortAdapter(network, interval_seconds, limits=limits, clearing=clearing)


def _exit_with(parent_pid: int) -> None:
    """End the worker once the API process is gone: a server stopped by a signal (uvicorn
    re-raises SIGTERM after its graceful exit) runs no exit handlers that would stop it."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def _call(name: str, *args: Any) -> Any:
    return getattr(_WORKER, name)(*args)


class GridProcess:
    """``GridPort`` over a ``GridPortAdapter`` in one worker process (spawned, so it shares no
    threads or locks with the API process); calls are served in the order they are made."""

    def __init__(
        self,
        network: str,
        interval_seconds: int,
        limits: dict[str, float] | None = None,
        clearing: str = "optimal",
    ) -> None:
        self.network = network
        self.interval_seconds = interval_seconds
        self.limits = limits
        self.clearing = clearing
        self._pool_lock = threading.Lock()
        self._pool = self._start_pool()
        self._load_buses: list[int] | None = None
        self._local: Any = None

    def _start_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(self.network, self.interval_seconds, self.limits, self.clearing, os.getpid()),
        )

    def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the worker. A worker that died (killed, out of memory) is started
        again once and the call repeated - the validator is deterministic, so the answer is the
        same; a second death is ``GridUnavailableError`` (503)."""
        for attempt in (1, 2):
            pool = self._pool
            try:
                return pool.submit(fn, *args).result()
            except BrokenProcessPool as exc:
                with self._pool_lock:
                    if self._pool is pool:  # not restarted by another caller meanwhile
                        pool.shutdown(wait=False, cancel_futures=True)
                        self._pool = self._start_pool()
                if attempt == 2:
                    raise GridUnavailableError(
                        f"the Neural Grid worker process died: {exc}"
                    ) from None
        raise AssertionError("unreachable")

    def clear(
        self, interval_id: int, book: Sequence[BookOrder], flex: FlexInput | None = None
    ) -> Clearing:
        """The whole clearing of ``book`` (``GridPortAdapter.clear``, remedies included) in
        the worker."""
        result: Clearing = self._run(_call, "clear", interval_id, list(book), flex)
        return result

    def validate(
        self,
        interval_id: int,
        batch: Sequence[Candidate],
        activations: Sequence[Activation] = (),
    ) -> tuple[list[Decision], str]:
        out: tuple[list[Decision], str] = self._run(
            _call, "validate", interval_id, list(batch), list(activations)
        )
        return out

    def validate_activations(
        self,
        interval_id: int,
        batch: Sequence[Candidate],
        activations: Sequence[Activation],
    ) -> tuple[list[Decision], list[Decision], str]:
        out: tuple[list[Decision], list[Decision], str] = self._run(
            _call, "validate_activations", interval_id, list(batch), list(activations)
        )
        return out

    def set_mode(
        self, interval_id: int, islanded: bool, units: Sequence[dict[str, Any]] | None = None
    ) -> None:
        self._run(_call, "set_mode", interval_id, islanded, None if units is None else list(units))

    def prepare(self, interval_id: int) -> None:
        """Queued behind whatever the worker is doing; returns at once."""
        # A dead worker: the next call that needs an answer starts it again.
        with contextlib.suppress(BrokenProcessPool):
            self._pool.submit(_call, "prepare", interval_id)

    def hosting_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int:
        return int(self._run(_call, "hosting_capacity_w", bus_id, interval_id))

    def import_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int:
        return int(self._run(_call, "import_capacity_w", bus_id, interval_id))

    def status(
        self,
        interval_id: int,
        approved: Sequence[Candidate],
        activations: Sequence[Activation] = (),
    ) -> dict[str, Any]:
        out: dict[str, Any] = self._run(
            _call, "status", interval_id, list(approved), list(activations)
        )
        return out

    def load_buses(self) -> list[int]:
        if self._load_buses is None:
            self._load_buses = list(self._run(_call, "load_buses"))
        return list(self._load_buses)

    @property
    def validator(self) -> Any:
        """A validator in this process, built on first use, for what needs the network itself
        (the dashboard draws its topology)."""
        if self._local is None:
            self._local = GridValidator(self.network, limits=Limits(**(self.limits or {})))
        return self._local

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
