"""Trades: each with its verdict and reason, the recording transaction and its settlement."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from backend.api.convert import trade_out
from backend.api.deps import MarketDep
from backend.api.schemas import MAX_SAFE_INTEGER, ErrorResponse, TradeOut

router = APIRouter(prefix="/trades", tags=["trades"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (404, 422)}
TradeIdPath = Annotated[
    str,
    Path(
        pattern=r"^0x[0-9a-fA-F]{64}$",
        description="the trade id: keccak256(abi.encode(sellOrderHash, buyOrderHash))",
    ),
]


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


@router.get("/{trade_id}", response_model=TradeOut, responses=ERRORS)
def get_trade(trade_id: TradeIdPath, market: MarketDep) -> TradeOut:
    """One trade: verdict, parties, amount, price, its recording and settlement. The id hashes
    the two signed orders; ``sellOrder`` and ``buyOrder`` are their hashes (``GET
    /orders/{hash}``). Unknown id: 404 ``NOT_FOUND``; not 0x + 64 hex digits: 422."""
    return trade_out(market.get_trade(trade_id))
