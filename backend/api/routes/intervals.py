"""Delivery intervals: status and clearing outcome; closing one at once in dev mode."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from backend.api.convert import interval_out
from backend.api.deps import MarketDep, OptionsDep
from backend.api.schemas import ErrorResponse, IntervalOut
from backend.market.errors import ConflictError

router = APIRouter(prefix="/intervals", tags=["intervals"])
IntervalPath = Annotated[int, Path(ge=0, lt=2**63)]
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (403, 409, 503)}


@router.get("/current", response_model=IntervalOut)
def current_interval(market: MarketDep) -> IntervalOut:
    """The interval being delivered now (chain time); its orders closed before it started. To
    place an order, use ``/intervals/next-open``."""
    return interval_out(market, market.interval(market.current_interval()))


@router.get("/next-open", response_model=IntervalOut)
def next_open_interval(market: MarketDep) -> IntervalOut:
    """The first interval that still takes orders (its gate closure is ahead, chain time)."""
    now = market.ledger.now()
    interval_id = market.current_interval()
    while market.gate_closure(interval_id) <= now:
        interval_id += 1
    return interval_out(market, market.interval(interval_id))


@router.get("/{interval_id}", response_model=IntervalOut)
def get_interval(interval_id: IntervalPath, market: MarketDep) -> IntervalOut:
    """Status (open, closed, cleared, recorded, settled), clearing price, volumes, verdict
    counts."""
    return interval_out(market, market.interval(interval_id))


@router.post("/{interval_id}/close", response_model=IntervalOut, responses=ERRORS)
async def close_interval(
    interval_id: IntervalPath,
    market: MarketDep,
    options: OptionsDep,
    wait: Annotated[
        bool,
        Query(
            description="wait for the batch's recordTrades receipt (status recorded); false "
            "answers once the clearing is stored (status cleared) and records the batch in "
            "the background, in interval order"
        ),
    ] = True,
) -> IntervalOut:
    """Dev mode: close the gate now, clear, validate and record the batch. Otherwise only once the
    gate closure time has passed (the scheduler does it anyway)."""
    if not options.dev and market.ledger.now() < market.gate_closure(interval_id):
        raise ConflictError(
            "closing an interval before its gate closure is only allowed in dev mode",
            reason="DEV_ONLY",
        )
    row = await asyncio.to_thread(market.close_interval, interval_id, True, wait)
    return interval_out(market, row)
