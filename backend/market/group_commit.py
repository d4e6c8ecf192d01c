"""Group commit of the asyncio accept path (``Intake.submit_order_async``): the orders admitted in
one turn of the event loop are inserted in one transaction (``Intake.insert_held``), and each
caller is answered only once that transaction is committed."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the intake makes its group commit
    from backend.market.intake import CheckedOrder, Intake


class GroupCommit:
    """Group commit on one asyncio loop: the orders admitted during one turn of the loop go into
    the store in one transaction (``call_soon`` runs the flush after the requests that are
    already runnable), and each caller is answered only once that transaction is committed."""

    def __init__(self, intake: Intake, loop: asyncio.AbstractEventLoop) -> None:
        self.intake = intake
        self.loop = loop
        self._thread = threading.get_ident()
        self._batch: list[tuple[CheckedOrder, asyncio.Future[None]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self.batches = 0
        self.rows = 0

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def commit(self, order: CheckedOrder) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self._batch.append((order, fut))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)
        return fut

    def drained(self) -> asyncio.Future[None]:
        """Resolved once the orders waiting now have their outcome."""
        fut: asyncio.Future[None] = self.loop.create_future()
        if self._batch:
            self._waiters.append(fut)
        else:
            fut.set_result(None)
        return fut

    def flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        waiters, self._waiters = self._waiters, []
        if not batch:
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            return
        results = self.intake.insert_held([o for o, _f in batch])
        self.batches += 1
        self.rows += len(batch)
        for (_o, fut), res in zip(batch, results, strict=True):
            if fut.done():  # the caller went away; the outcome stands
                continue
            if res is None:
                fut.set_result(None)
            else:
                fut.set_exception(res)
        for w in waiters:
            if not w.done():
                w.set_result(None)
