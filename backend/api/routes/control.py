"""Control actions to devices (the dispatcher's store): action and ack state per interval."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from backend.api.deps import ControlDep
from backend.api.schemas import MAX_SAFE_INTEGER, ControlActionOut, ErrorResponse

router = APIRouter(prefix="/control", tags=["control"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (422, 503)}
State = Literal["pending", "sent", "acknowledged", "refused", "expired"]


@router.get("/actions", response_model=list[ControlActionOut], responses=ERRORS)
def list_actions(
    store: ControlDep,
    interval: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER, description="the interval")],
    state: Annotated[State | None, Query(description="only actions in this state")] = None,
) -> list[dict[str, Any]]:
    """The interval's control actions (one per activation) with their signed action, attempts
    and the device's signed ack; ``state`` filters. A missing or bad ``interval``: 422."""
    rows = store.actions(interval)
    return [r.as_dict() for r in rows if state is None or r.state == state]
