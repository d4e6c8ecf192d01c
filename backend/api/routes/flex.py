"""Flexibility offers: the EIP-712 template, signed submission, listing, signed cancellation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from backend.api.convert import activation_out
from backend.api.deps import MarketDep
from backend.api.schemas import (
    MAX_SAFE_INTEGER,
    ActivationOut,
    Address,
    CancelIn,
    ErrorResponse,
    FlexIn,
    FlexOut,
    TypedDataTemplate,
)
from backend.chain.address import checksum
from backend.iot.control_store import ControlStore
from backend.market.models import FlexOfferRow

router = APIRouter(prefix="/flex", tags=["flex"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 422, 503)
}
HashPath = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$")]


@router.get("/eip712", response_model=TypedDataTemplate)
def flex_template(
    market: MarketDep,
    primary_type: Annotated[Literal["FlexOffer", "Cancel"], Query(alias="primaryType")] = (
        "FlexOffer"
    ),
    wallet: Annotated[
        Literal["eth_signTypedData_v4", "ethers", "viem"],
        Query(
            alias="for",
            description="eth_signTypedData_v4: types with EIP712Domain; ethers and viem: without",
        ),
    ] = "eth_signTypedData_v4",
) -> dict[str, Any]:
    """The typed-data template of a ``FlexOffer`` in FlexibilityMarket's domain (the contract
    that verifies it when an activation is recorded); ``primaryType=Cancel`` the cancellation in
    the same domain (``trader`` = the provider, ``orderHash`` = the offer's hash)."""
    template = market.flex_template(primary_type)
    if wallet != "eth_signTypedData_v4":
        types = {k: v for k, v in template["types"].items() if k != "EIP712Domain"}
        template = {**template, "types": types}
    return template


def flex_out(row: FlexOfferRow) -> FlexOut:
    return FlexOut(
        hash=row.hash,
        status=row.status,
        provider=row.provider,
        device=row.device,
        intervalId=row.interval_id,
        direction=row.direction,
        powerW=row.power_w,
        baselineW=row.baseline_w,
        pricePerKWh=int(row.price_per_kwh),
        nonce=int(row.nonce),
        expiry=int(row.expiry),
        createdAt=row.created_at,
        remainingW=row.remaining_w,
    )


@router.post("", status_code=201, response_model=FlexOut, responses=ERRORS)
def submit_flex(body: FlexIn, market: MarketDep) -> FlexOut:
    """Accept a signed flexibility offer; refusals carry a code (BAD_SIGNATURE, WRONG_DOMAIN,
    UNKNOWN_TRADER, TRADER_INACTIVE, UNKNOWN_DEVICE, NOT_DEVICE_OWNER, DEVICE_INACTIVE,
    OUT_OF_DEVICE_LIMITS, ORDER_EXPIRED, INTERVAL_CLOSED, NONCE_USED, INVALID_ORDER). No funds
    are checked: an offer is paid when activated, it costs its provider nothing."""
    row = market.submit_flex(
        body.message.model_dump(),
        body.signature,
        None if body.domain is None else body.domain.model_dump(),
    )
    return flex_out(row)


@router.get("", response_model=list[FlexOut])
def list_flex(
    market: MarketDep,
    interval: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INTEGER)] = None,
    provider: Address | None = None,
    status: Literal["open", "cancelled", "activated"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> list[FlexOut]:
    rows = market.store.list_flex_offers(
        interval, checksum(provider) if provider else None, status, limit, offset
    )
    return [flex_out(r) for r in rows]


@router.get("/activations", response_model=list[ActivationOut], responses=ERRORS)
def list_activations(
    market: MarketDep,
    request: Request,
    interval: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER)],
) -> list[ActivationOut]:
    """The interval's flexibility activations (rescued trades' and the DSO service's), in the
    evidence's order, each with its control action and the device's ack once dispatched; an
    empty list before its clearing. ``interval`` is required."""
    controls: ControlStore | None = getattr(request.app.state, "control", None)
    actions = {r.activation_id: r.as_dict() for r in controls.actions(interval)} if controls else {}
    return [activation_out(a, actions.get(a.id)) for a in market.store.activations(interval)]


@router.get("/{offer_hash}", response_model=FlexOut, responses=ERRORS)
def get_flex(offer_hash: HashPath, market: MarketDep) -> FlexOut:
    return flex_out(market.flex.get(offer_hash))


@router.post("/{offer_hash}/cancel", response_model=FlexOut, responses=ERRORS)
def cancel_flex(offer_hash: HashPath, body: CancelIn, market: MarketDep) -> FlexOut:
    """Cancel an open offer: ``signature`` over ``Cancel(address trader, bytes32 orderHash)`` in
    the market's domain with the provider as ``trader`` and the offer's hash as ``orderHash``
    (template: ``GET /flex/eip712?primaryType=Cancel``)."""
    return flex_out(market.cancel_flex(offer_hash, body.signature))
