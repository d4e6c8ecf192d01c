"""Request and response schemas of the HTTP API (separate from the storage models in
backend.market)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Address = Annotated[
    str,
    Field(pattern=r"^0x[0-9a-fA-F]{40}$", examples=["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]),
]
Hash32 = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{64}$")]
Signature = Annotated[
    str,
    Field(
        pattern=r"^(0x)?([0-9a-fA-F]{128}|[0-9a-fA-F]{130})$",
        description="65-byte r||s||v hex, or the 64-byte EIP-2098 compact form r||vs",
    ),
]
Uint8 = Annotated[int, Field(ge=0, lt=2**8)]
Uint32 = Annotated[int, Field(ge=0, lt=2**32)]
Uint64 = Annotated[int, Field(ge=0, lt=2**64)]
Uint128 = Annotated[int, Field(ge=0, lt=2**128)]
ZERO = "0x0000000000000000000000000000000000000000"


class FieldError(BaseModel):
    loc: list[str] = Field(description='where, e.g. ["body", "message", "energyWh"]')
    msg: str


class Problem(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. BAD_SIGNATURE")
    message: str = Field(description="one sentence for a human")
    field: str | None = Field(
        None, description="the request field a conflict is about (e.g. meter, wallet)"
    )
    errors: list[FieldError] | None = Field(
        None, description="every failing field of an INVALID_REQUEST (422)"
    )


class ErrorResponse(BaseModel):
    detail: Problem


class Domain(BaseModel):
    name: str
    version: str
    chainId: int
    verifyingContract: Address


class OrderMessage(BaseModel):
    """The EIP-712 ``Order`` message, as signed (numbers may also be given as decimal strings)."""

    model_config = ConfigDict(extra="forbid")

    trader: Address
    side: Annotated[int, Field(ge=0, le=1, description="0 sell, 1 buy")]
    intervalId: Annotated[int, Field(ge=0, lt=2**63)]
    energyWh: Annotated[int, Field(ge=1, lt=2**63)]
    pricePerKWh: Uint128
    nonce: Uint64
    expiry: Uint64
    counterparty: Address = ZERO


class OrderIn(BaseModel):
    message: OrderMessage
    signature: Signature
    domain: Domain | None = Field(None, description="optional; checked against ours when given")


class OrderOut(BaseModel):
    hash: Hash32
    status: str
    trader: Address
    side: int
    intervalId: int
    energyWh: int
    pricePerKWh: str
    nonce: str
    expiry: str
    counterparty: Address
    filledWh: int
    createdAt: float


class CancelIn(BaseModel):
    signature: Signature = Field(description="signature of Cancel(trader, orderHash) typed data")


class TypedDataTemplate(BaseModel):
    domain: Domain
    types: dict[str, list[dict[str, str]]]
    primaryType: str


class BatchOut(BaseModel):
    """One ``recordTrades`` batch of an interval and how its recording goes."""

    index: int
    count: int
    state: Literal["pending", "sent", "recorded", "failed", "empty", "expired"]
    trades: int
    orders: int
    reason: str | None = Field(description="why the last attempt failed (decoded revert, ...)")
    txHash: str | None
    blockNumber: int | None
    gasUsed: int | None
    attempts: int
    nextAttemptAt: float | None = Field(description="unix seconds of the next retry")


class IntervalOut(BaseModel):
    id: int
    status: Literal["open", "closed", "cleared", "recorded", "settled"]
    startsAt: int
    gateClosureAt: int
    clearingPrice: str | None
    offeredWh: int
    bidWh: int
    tradedWh: int
    vetoedWh: int
    approvedCount: int
    vetoedCount: int
    batch: dict[str, Any] | None = Field(description="summary of the batches (all trade ids)")
    batches: list[BatchOut] = Field(default_factory=list)
    error: str | None = Field(None, description="why the interval could not be cleared yet")


class TradeOut(BaseModel):
    id: Hash32
    intervalId: int
    position: int
    kind: str
    sellOrder: Hash32
    buyOrder: Hash32
    seller: Address
    buyer: Address
    sellerBus: int
    buyerBus: int
    energyWh: int
    pricePerKWh: str
    verdict: int
    reason: str
    element: str
    vetoValue: float | None = Field(
        description="a veto's binding element: the value it would reach (pu for voltages, "
        "percent for loadings); null when approved or without a number"
    )
    vetoLimit: float | None = Field(description="... and the limit it would break (same unit)")
    approved: bool
    status: str
    txHash: str | None
    deliveredWh: int | None
    paid: str | None
    settleTxHash: str | None


class ConnectionMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wallet: Address
    meter: Address
    busId: Uint32
    maxExportW: Uint32
    maxImportW: Uint32
    nonce: Uint64
    expiry: Uint64


class ConnectionIn(BaseModel):
    message: ConnectionMessage
    signature: Signature


class ParticipantOut(BaseModel):
    wallet: Address
    registered: bool
    active: bool
    meter: Address | None
    busId: int | None
    maxExportW: int | None
    maxImportW: int | None
    index: int | None
    request: dict[str, Any] | None
    availableBalance: str | None
    reservedByOrders: str | None


class HealthOut(BaseModel):
    ok: bool
    chain: dict[str, Any]
    contracts: dict[str, str]
    database: dict[str, Any]
    broker: dict[str, Any]
    market: dict[str, Any]
