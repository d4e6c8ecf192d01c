"""Grid status: bus voltages, line and transformer loadings with an interval's approved trades."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend.api.deps import MarketDep
from backend.api.schemas import MAX_SAFE_INTEGER
from backend.market.errors import ConflictError

router = APIRouter(prefix="/grid", tags=["grid"])


@router.get("/status")
async def grid_status(
    market: MarketDep, interval: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INTEGER)] = None
) -> dict[str, Any]:
    if market.grid is None:
        raise ConflictError("no grid validator is configured", reason="NO_GRID")
    interval_id = market.current_interval() if interval is None else interval
    approved = market.approved_candidates(interval_id)
    grid = market.grid
    status = await asyncio.to_thread(grid.status, interval_id, approved)
    return {"interval": interval_id, "approvedTrades": len(approved), **status}
