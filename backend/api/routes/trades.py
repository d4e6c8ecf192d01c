"""Trades: each with its verdict and reason, the recording transaction and its settlement."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.api.convert import trade_out
from backend.api.deps import MarketDep
from backend.api.schemas import TradeOut

router = APIRouter(prefix="/trades", tags=["trades"])


@router.get("", response_model=list[TradeOut])
def list_trades(
    market: MarketDep, interval: Annotated[int | None, Query(ge=0, lt=2**63)] = None
) -> list[TradeOut]:
    return [trade_out(t) for t in market.trades(interval)]
