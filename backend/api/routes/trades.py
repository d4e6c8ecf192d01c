"""Trades: each with its verdict and reason, the recording transaction and its settlement."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.api.convert import trade_out
from backend.api.deps import MarketDep
from backend.api.schemas import MAX_SAFE_INTEGER, TradeOut

router = APIRouter(prefix="/trades", tags=["trades"])


@router.get("", response_model=list[TradeOut])
def list_trades(
    market: MarketDep,
    interval: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INTEGER)] = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=100_000,
            description="at most this many (by interval and position); default: every trade "
            "of the interval, or 1,000 without one",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER)] = 0,
) -> list[TradeOut]:
    if limit is None and interval is None:
        limit = 1000
    return [trade_out(t) for t in market.trades(interval, limit, offset)]
