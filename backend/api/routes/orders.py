"""Orders: the EIP-712 template, signed submission, listing, signed cancellation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from backend.api.convert import order_out
from backend.api.deps import MarketDep
from backend.api.schemas import (
    Address,
    CancelIn,
    ErrorResponse,
    OrderIn,
    OrderOut,
    TypedDataTemplate,
)

router = APIRouter(prefix="/orders", tags=["orders"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 402, 403, 404, 409, 422, 503)
}
HashPath = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$")]


@router.get("/eip712", response_model=TypedDataTemplate)
def typed_data_template(
    market: MarketDep,
    primary_type: Annotated[Literal["Order", "Cancel"], Query(alias="primaryType")] = "Order",
) -> dict[str, Any]:
    """The typed-data template {domain, types (with EIP712Domain), primaryType}: add ``message`` and
    sign it with any EIP-712 wallet. ``primaryType=Cancel`` gives the cancellation template."""
    return market.template(primary_type)


@router.post("", status_code=201, response_model=OrderOut, responses=ERRORS)
async def submit_order(body: OrderIn, market: MarketDep) -> OrderOut:
    """Accept a signed order (EIP-712 ``Order``); refusals carry a code (BAD_SIGNATURE,
    WRONG_DOMAIN, UNKNOWN_TRADER, TRADER_INACTIVE, ORDER_EXPIRED, INTERVAL_CLOSED, NONCE_USED,
    OVER_CONNECTION_LIMIT, INSUFFICIENT_DEPOSIT, INVALID_ORDER)."""
    row = market.submit_order(
        body.message.model_dump(),
        body.signature,
        None if body.domain is None else body.domain.model_dump(),
    )
    return order_out(row)


@router.get("", response_model=list[OrderOut])
def list_orders(
    market: MarketDep,
    trader: Address | None = None,
    interval: Annotated[int | None, Query(ge=0, lt=2**63)] = None,
    status: Literal["open", "matched", "filled", "partial", "unfilled", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> list[OrderOut]:
    from eth_utils import to_checksum_address

    rows = market.store.list_orders(
        to_checksum_address(trader) if trader else None, interval, status, limit, offset
    )
    return [order_out(o) for o in rows]


@router.get("/{order_hash}", response_model=OrderOut, responses=ERRORS)
def get_order(order_hash: HashPath, market: MarketDep) -> OrderOut:
    return order_out(market.get_order(order_hash))


@router.post("/{order_hash}/cancel", response_model=OrderOut, responses=ERRORS)
def cancel_order(order_hash: HashPath, body: CancelIn, market: MarketDep) -> OrderOut:
    """Cancel an open order: ``signature`` over ``Cancel(address trader, bytes32 orderHash)`` in the
    market's domain (template: ``GET /orders/eip712?primaryType=Cancel``)."""
    return order_out(market.cancel_order(order_hash, body.signature))
