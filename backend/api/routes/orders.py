"""Orders: the EIP-712 template, signed submission, listing, signed cancellation."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from backend.api.convert import order_fields, order_out
from backend.api.deps import MarketDep
from backend.api.limits import is_json_content_type
from backend.api.schemas import (
    MAX_SAFE_INTEGER,
    Address,
    CancelIn,
    ErrorResponse,
    OrderIn,
    OrderOut,
    TypedDataTemplate,
)
from backend.chain.address import checksum

router = APIRouter(prefix="/orders", tags=["orders"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 402, 403, 404, 409, 422, 503)
}
HashPath = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$")]


@router.get("/eip712", response_model=TypedDataTemplate)
def typed_data_template(
    market: MarketDep,
    primary_type: Annotated[Literal["Order", "Cancel"], Query(alias="primaryType")] = "Order",
    wallet: Annotated[
        Literal["eth_signTypedData_v4", "ethers", "viem"],
        Query(
            alias="for",
            description="eth_signTypedData_v4 (MetaMask, eth-sig-util, eth-account): types with "
            "EIP712Domain; ethers (signer.signTypedData(domain, types, message)) and viem: "
            "types without it (ethers refuses it as an unused type)",
        ),
    ] = "eth_signTypedData_v4",
) -> dict[str, Any]:
    """The typed-data template {domain, types, primaryType}: add ``message`` and sign it with any
    EIP-712 wallet as it is (``for`` names the library's shape). ``primaryType=Cancel`` gives the
    cancellation template. Post the message in the API's JSON types (``pricePerKWh`` and
    ``nonce`` as decimal strings, the other integers as numbers; either spelling is accepted, the
    signature binds the values)."""
    template = market.template(primary_type)
    if wallet != "eth_signTypedData_v4":
        types = {k: v for k, v in template["types"].items() if k != "EIP712Domain"}
        template = {**template, "types": types}
    return template


def openapi_schemas() -> dict[str, Any]:
    """``OrderIn`` and the models it uses, as OpenAPI components exactly as FastAPI writes them for
    a body parameter (POST /orders reads its body by hand, so FastAPI does not see the model)."""
    probe = FastAPI()

    @probe.post("/")
    def _probe(body: OrderIn) -> None:  # pragma: no cover - never called
        return None

    schemas: dict[str, Any] = probe.openapi()["components"]["schemas"]
    return {k: v for k, v in schemas.items() if k not in ("HTTPValidationError", "ValidationError")}


_ORDER_IN = TypeAdapter(OrderIn)
_ORDER_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrderIn"}}},
}


async def _order_in(request: Request) -> OrderIn:
    """The body as FastAPI would read an ``OrderIn`` parameter: JSON only for a JSON content
    type, the same ``RequestValidationError`` (locations under ``body``) otherwise."""
    raw = await request.body()
    body: Any
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    if is_json_content_type(request.headers.get("content-type")):
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", e.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": e.msg},
                    }
                ],
                body=e.doc,
            ) from e
        except UnicodeDecodeError as e:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error",
                  "input": {}, "ctx": {"error": str(e)}}],
            ) from e  # fmt: skip
    else:
        body = raw
    try:
        return _ORDER_IN.validate_python(body, from_attributes=True)  # as FastAPI validates
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors, body=body) from None


def _created(row: dict[str, Any]) -> Response:
    """201 with the ``OrderOut`` of a freshly accepted order (same fields and order)."""
    out = order_fields(row)
    return Response(
        json.dumps(out, separators=(",", ":")), status_code=201, media_type="application/json"
    )


@router.post(
    "",
    status_code=201,
    response_model=OrderOut,
    responses=ERRORS,
    openapi_extra={"requestBody": _ORDER_BODY},
)
async def submit_order(request: Request, market: MarketDep) -> Response:
    """Accept a signed order (EIP-712 ``Order``, body ``OrderIn``); refusals carry a code
    (BAD_SIGNATURE, WRONG_DOMAIN, UNKNOWN_TRADER, TRADER_INACTIVE, ORDER_EXPIRED,
    INTERVAL_CLOSED, NONCE_USED, OVER_CONNECTION_LIMIT, INSUFFICIENT_DEPOSIT, INVALID_ORDER).
    201 only once the order is committed to the store (group commit with the orders accepted
    at the same time)."""
    body = await _order_in(request)
    row = await market.submit_order_async(
        body.message.model_dump(),
        body.signature,
        None if body.domain is None else body.domain.model_dump(),
    )
    return _created(row)


@router.get("", response_model=list[OrderOut])
def list_orders(
    market: MarketDep,
    trader: Address | None = None,
    interval: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INTEGER)] = None,
    status: Literal["open", "matched", "filled", "partial", "unfilled", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> list[OrderOut]:
    rows = market.store.list_orders(
        checksum(trader) if trader else None, interval, status, limit, offset
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
