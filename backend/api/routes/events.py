"""Live event stream (Server-Sent Events): orders, clearings, verdicts, readings, settlements."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from backend.api.deps import EventsDep
from backend.market.events import EVENT_KINDS, Event

router = APIRouter(tags=["events"])
KEEPALIVE_S = 15.0


@router.get("/events", response_class=StreamingResponse)
async def events(
    request: Request,
    bus: EventsDep,
    kinds: Annotated[
        str | None, Query(max_length=200, description=f"comma list of {EVENT_KINDS}")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    wanted = frozenset(k.strip() for k in kinds.split(",") if k.strip()) if kinds else None
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else None

    async def stream() -> AsyncIterator[str]:
        with bus.subscription(wanted, after) as (backlog, queue):
            yield ": tegrid events\n\n"
            for event in backlog:
                yield _frame(event)
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield _frame(event)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _frame(event: Event) -> str:
    payload = json.dumps({"id": event.id, "at": event.at, **event.data})
    return f"id: {event.id}\nevent: {event.kind}\ndata: {payload}\n\n"
