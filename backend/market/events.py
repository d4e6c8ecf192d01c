"""In-process publish/subscribe of market events (orders, clearings, verdicts, readings,
settlements).

Publishers may run on any thread; subscribers are asyncio consumers (the SSE endpoint). A slow
subscriber loses its oldest events rather than slowing the market down (bounded queues).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

EVENT_KINDS = (
    "order",
    "cancel",
    "clearing",
    "verdict",
    "recorded",
    "batch",
    "activation_batch",
    "reading",
    "settlement",
    "participant",
    "interval",
    "device",
    "flex",
    "control",
)


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)


class _Subscriber:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, kinds: frozenset[str] | None, maxsize: int
    ) -> None:
        self.loop = loop
        self.kinds = kinds
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        """Runs on the subscriber's loop."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


class EventBus:
    """Fan-out of events to subscribers; keeps the last ``history`` events for late joiners."""

    def __init__(self, history: int = 256, queue_size: int = 1024) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._subs: list[_Subscriber] = []
        self._history: deque[Event] = deque(maxlen=history)
        self._queue_size = queue_size

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        with self._lock:
            event = Event(next(self._ids), kind, data)
            self._history.append(event)
            subs = list(self._subs)
        for sub in subs:
            if sub.kinds is not None and kind not in sub.kinds:
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is sub.loop:
                sub.offer(event)
            elif not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(sub.offer, event)
        return event

    def recent(self, after_id: int = 0) -> list[Event]:
        with self._lock:
            return [e for e in self._history if e.id > after_id]

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @contextmanager
    def subscription(
        self, kinds: frozenset[str] | None = None, after_id: int | None = None
    ) -> Iterator[tuple[list[Event], asyncio.Queue[Event]]]:
        """(backlog after ``after_id``, queue of new events) for the running loop; unsubscribes on
        exit.
        Waiting on the queue with a timeout is safe (unlike cancelling an async generator)."""
        sub = _Subscriber(asyncio.get_running_loop(), kinds, self._queue_size)
        with self._lock:
            self._subs.append(sub)
            backlog = [
                e
                for e in self._history
                if after_id is not None and e.id > after_id and (kinds is None or e.kind in kinds)
            ]
        try:
            yield backlog, sub.queue
        finally:
            with self._lock:
                self._subs.remove(sub)

    async def subscribe(
        self, kinds: frozenset[str] | None = None, after_id: int | None = None
    ) -> AsyncIterator[Event]:
        """Yield events as they are published (first the history after ``after_id``, if given)."""
        sub = _Subscriber(asyncio.get_running_loop(), kinds, self._queue_size)
        with self._lock:
            self._subs.append(sub)
            backlog = [e for e in self._history if after_id is not None and e.id > after_id]
        try:
            for e in backlog:
                if kinds is None or e.kind in kinds:
                    yield e
            while True:
                yield await sub.queue.get()
        finally:
            with self._lock:
                self._subs.remove(sub)
