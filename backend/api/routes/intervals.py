"""Delivery intervals: status and clearing outcome; closing one at once in dev mode."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError

from backend.api.convert import interval_out
from backend.api.deps import MarketDep, OptionsDep
from backend.api.schemas import MAX_SAFE_INTEGER, ErrorResponse, IntervalOut
from backend.market.errors import ConflictError
from backend.market.service import Market

router = APIRouter(prefix="/intervals", tags=["intervals"])
IntervalPath = Annotated[
    int,
    Path(
        ge=0,
        le=MAX_SAFE_INTEGER,
        description="interval id; its start (id x interval seconds) must be at most 2^53 - 1",
    ),
]
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
    _check_start(market, interval_id)
    return interval_out(market, market.interval(interval_id))


def _check_start(market: Market, interval_id: int) -> None:
    """An interval whose start time (unix seconds, a JSON number in the answer) would pass
    2^53 - 1 is refused as an out-of-range path parameter."""
    last = MAX_SAFE_INTEGER // market.config.interval_seconds
    if interval_id > last:
        raise RequestValidationError(
            [{"type": "integer_range", "loc": ("path", "interval_id"),
              "msg": f"must be at most {last} (its start would pass 2^53 - 1 seconds)",
              "input": interval_id}]
        )  # fmt: skip


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
    _check_start(market, interval_id)
    if not options.dev and market.ledger.now() < market.gate_closure(interval_id):
        raise ConflictError(
            "closing an interval before its gate closure is only allowed in dev mode",
            reason="DEV_ONLY",
        )
    row = await asyncio.to_thread(market.close_interval, interval_id, True, wait)
    return interval_out(market, row)
