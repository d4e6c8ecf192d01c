"""Request and response schemas of the HTTP API (separate from the storage models in
backend.market).

**Numbers in JSON (one rule for every schema).** Token amounts in base units (prices per kWh,
balances, reservations, payments) and nonces are *decimal strings*: they are ``uint128`` /
``uint64`` on chain and may pass 2^53, beyond which a JavaScript number (and many JSON parsers)
silently rounds. Everything else that is an integer - energy in Wh, power in W, interval, bus and
chain ids, counts, positions, verdicts, block numbers, unix times - is a *JSON number*, and the API
refuses any such value above 2^53 - 1 (``Number.MAX_SAFE_INTEGER``), so every client holds it
exactly. Requests take either spelling for any integer field, a JSON integer or a string of
decimal digits (viem's bigints travel as strings, eth-account and MetaMask take numbers; the
signature binds the value, not its spelling); answers always use the rule's type. Fractions,
exponents, signs, spaces, hex and booleans are refused (422 ``INVALID_REQUEST``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
DECIMAL_PATTERN = r"^[0-9]{1,78}$"  # a uint256 has at most 78 decimal digits
_DIGITS = re.compile(DECIMAL_PATTERN)


@dataclass(frozen=True)
class JsonInt:
    """An integer field of the API: validated from a JSON integer or a decimal string within
    ``low..high``, answered as a decimal string when ``string`` else as a JSON number; its
    OpenAPI schema says both (request: either spelling, answer: the one type)."""

    low: int
    high: int
    string: bool = False

    def __post_init__(self) -> None:
        assert self.string or self.high <= MAX_SAFE_INTEGER, "numbers stay exact in JavaScript"

    def validate(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value):
            number = int(value)
        else:
            raise PydanticCustomError(
                "integer_spelling",
                "must be an integer: a JSON integer or a string of decimal digits",
            )
        if number < self.low:
            raise PydanticCustomError("integer_range", "must be at least {low}", {"low": self.low})
        if number > self.high:
            raise PydanticCustomError(
                "integer_range", "must be at most {high}", {"high": self.high}
            )
        return number

    def __get_pydantic_core_schema__(
        self, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        serialization = (
            core_schema.plain_serializer_function_ser_schema(str, when_used="json")
            if self.string
            else None
        )
        return core_schema.no_info_plain_validator_function(
            self.validate, serialization=serialization
        )

    def __get_pydantic_json_schema__(
        self, _schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        # A bound past 2^53 is left to the description (OpenAPI tools hold bounds as floats,
        # which would round it).
        integer: dict[str, Any] = {"type": "integer", "minimum": self.low}
        if self.high <= MAX_SAFE_INTEGER:
            integer["maximum"] = self.high
        if handler.mode == "validation":
            return {"anyOf": [integer, {"type": "string", "pattern": DECIMAL_PATTERN}]}
        if self.string:
            return {"type": "string", "pattern": DECIMAL_PATTERN}
        return integer


Number = Annotated[int, JsonInt(0, MAX_SAFE_INTEGER)]
Seconds = Annotated[int, JsonInt(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)]  # may precede 1970
Uint8 = Annotated[int, JsonInt(0, 2**8 - 1)]
Uint32 = Annotated[int, JsonInt(0, 2**32 - 1)]
Price = Annotated[int, JsonInt(0, 2**128 - 1, string=True)]  # uint128 on chain
Nonce = Annotated[int, JsonInt(0, 2**64 - 1, string=True)]  # uint64 on chain
Amount = Annotated[int, JsonInt(0, 2**256 - 1, string=True)]  # token base units
SignedWh = Annotated[int, JsonInt(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)]  # a net position
NUM = "JSON number; a decimal string is accepted in requests"
STR = "decimal string; a JSON integer is accepted in requests"
OUT_NUM = "JSON number"
OUT_STR = "decimal string"

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
    """The EIP-712 domain of a typed-data template."""

    name: str
    version: str
    chainId: Number = Field(description=f"EIP-155 chain id; {OUT_NUM}")
    verifyingContract: Address


class DomainIn(BaseModel):
    """The EIP-712 domain a client signed in (optional in ``OrderIn``; checked against ours)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    chainId: Number = Field(description=f"EIP-155 chain id; {NUM}")
    verifyingContract: Address


class OrderMessage(BaseModel):
    """The EIP-712 ``Order`` message, as signed. Integers: prices and nonces are decimal strings,
    the others JSON numbers; either spelling is accepted for any of them."""

    model_config = ConfigDict(extra="forbid")

    trader: Address
    side: Annotated[int, JsonInt(0, 1)] = Field(description=f"0 sell, 1 buy; {NUM}")
    intervalId: Number = Field(
        description=f"delivery interval, floor(start unix seconds / interval seconds); {NUM}"
    )
    energyWh: Annotated[int, JsonInt(1, MAX_SAFE_INTEGER)] = Field(
        description=f"energy in Wh (uint64 on chain, at most 2^53 - 1 here); {NUM}"
    )
    pricePerKWh: Price = Field(
        description=f"limit price in token base units per kWh (uint128); {STR}",
        examples=["100000"],
    )
    nonce: Nonce = Field(
        description=f"the trader's order nonce (uint64), used once; {STR}", examples=["1"]
    )
    expiry: Number = Field(
        description=f"unix seconds after which the order is void (uint64 on chain); {NUM}"
    )
    counterparty: Address = Field(
        ZERO, description="the only counterparty (bilateral order), or the zero address"
    )


class OrderIn(BaseModel):
    message: OrderMessage
    signature: Signature
    domain: DomainIn | None = Field(None, description="optional; checked against ours when given")


class OrderOut(BaseModel):
    hash: Hash32 = Field(description="orderHash: the EIP-712 digest of the order")
    status: str
    trader: Address
    side: Uint8 = Field(description=f"0 sell, 1 buy; {OUT_NUM}")
    intervalId: Number = Field(description=f"delivery interval; {OUT_NUM}")
    energyWh: Number = Field(description=f"energy in Wh; {OUT_NUM}")
    pricePerKWh: Price = Field(description=f"limit price in token base units per kWh; {OUT_STR}")
    nonce: Nonce = Field(description=f"the trader's order nonce; {OUT_STR}")
    expiry: Number = Field(description=f"unix seconds; {OUT_NUM}")
    counterparty: Address
    filledWh: Number = Field(description=f"energy in Wh traded so far; {OUT_NUM}")
    createdAt: float = Field(description="unix seconds (with fraction) the API accepted it")


class CancelIn(BaseModel):
    signature: Signature = Field(description="signature of Cancel(trader, orderHash) typed data")


class TypedDataTemplate(BaseModel):
    domain: Domain
    types: dict[str, list[dict[str, str]]]
    primaryType: str


class BatchOut(BaseModel):
    """One ``recordTrades`` batch of an interval and how its recording goes."""

    index: Number = Field(description=f"position of the batch in the interval; {OUT_NUM}")
    count: Number = Field(description=f"batches of the interval; {OUT_NUM}")
    state: Literal["pending", "sent", "recorded", "failed", "empty", "expired"]
    trades: Number = Field(description=f"trades in the batch; {OUT_NUM}")
    orders: Number = Field(description=f"orders in the batch; {OUT_NUM}")
    reason: str | None = Field(description="why the last attempt failed (decoded revert, ...)")
    txHash: str | None
    blockNumber: Number | None = Field(description=OUT_NUM)
    gasUsed: Number | None = Field(description=OUT_NUM)
    attempts: Number = Field(description=OUT_NUM)
    nextAttemptAt: float | None = Field(description="unix seconds of the next retry")


class ActivationBatchOut(BaseModel):
    """One ``recordActivations`` batch of an interval (FlexibilityMarket) and how its recording
    and settlement go."""

    index: Number = Field(description=f"position of the batch in the interval; {OUT_NUM}")
    count: Number = Field(description=f"activation batches of the interval; {OUT_NUM}")
    state: Literal["pending", "sent", "recorded", "failed", "expired", "settled", "reclaimed"]
    activationIds: list[Hash32] = Field(description="the batch's activations, in chain order")
    evidenceHash: Hash32 = Field(description="the clearing's evidence (as the trades' batches)")
    reason: str | None = Field(description="why the last attempt failed (decoded revert, ...)")
    txHash: str | None
    blockNumber: Number | None = Field(description=OUT_NUM)
    gasUsed: Number | None = Field(description=OUT_NUM)
    attempts: Number = Field(description=OUT_NUM)
    nextAttemptAt: float | None = Field(description="unix seconds of the next retry")
    settleTxHash: str | None = Field(description="the settling (or reclaiming) transaction")


class PartyImbalanceOut(BaseModel):
    """One party's imbalance: net positions (sold or exported positive), deviation = metered -
    contracted (negative: short, the grid supplied it; positive: long, the grid absorbed it)."""

    account: Address
    contractedWh: SignedWh = Field(
        description=f"sold minus bought in approved trades, Wh; {OUT_NUM}"
    )
    meteredWh: SignedWh = Field(
        description=f"exported minus imported, Wh (0 when the reading was missing); {OUT_NUM}"
    )
    deviationWh: SignedWh = Field(description=f"metered minus contracted, Wh; {OUT_NUM}")
    paid: Amount = Field(description=f"paid to the balancing account (short); {OUT_STR}")
    received: Amount = Field(description=f"paid by the balancing account (long); {OUT_STR}")
    owed: Amount = Field(
        description="what it could not pay: added to its debt (short), or left unpaid by an "
        f"underfunded balancing account (long); {OUT_STR}"
    )


class ImbalanceOut(BaseModel):
    """An interval's imbalance settlement, as the chain settled it with its last page."""

    clearingPricePerKWh: Price = Field(
        description="energy-weighted average price of the interval's approved trades, computed "
        f"on chain; token base units per kWh; {OUT_STR}"
    )
    shortPriceBps: Number = Field(description=f"short price, basis points of it; {OUT_NUM}")
    longPriceBps: Number = Field(description=f"long price, basis points of it; {OUT_NUM}")
    collected: Amount = Field(description=f"paid to the balancing account; {OUT_STR}")
    paidOut: Amount = Field(description=f"paid by the balancing account; {OUT_STR}")
    settleTxHash: Hash32 | None
    participants: list[PartyImbalanceOut]


class IntervalOut(BaseModel):
    id: Number = Field(description=f"interval id; {OUT_NUM}")
    status: Literal["open", "closed", "cleared", "recorded", "settled"]
    startsAt: Number = Field(description=f"unix seconds; {OUT_NUM}")
    gateClosureAt: Seconds = Field(
        description=f"unix seconds the order book closes (interval 0: negative); {OUT_NUM}"
    )
    clearingPrice: Price | None = Field(
        description=f"uniform auction price in token base units per kWh; {OUT_STR}"
    )
    offeredWh: Number = Field(description=f"energy offered by sell orders, Wh; {OUT_NUM}")
    bidWh: Number = Field(description=f"energy bid by buy orders, Wh; {OUT_NUM}")
    tradedWh: Number = Field(description=f"energy in approved trades, Wh; {OUT_NUM}")
    vetoedWh: Number = Field(description=f"energy in vetoed trades, Wh; {OUT_NUM}")
    approvedCount: Number = Field(description=OUT_NUM)
    vetoedCount: Number = Field(description=OUT_NUM)
    clearingMethod: str | None = Field(
        None,
        description='"optimal" (welfare-maximizing within the grid\'s limits), "greedy" (merit '
        'order) or "greedy (fallback: why)"; null before clearing',
    )
    welfare: Price | None = Field(
        None,
        description="sum over approved trades of (bid - ask) x kWh, token base units; "
        f"null before clearing; {OUT_STR}",
    )
    batch: dict[str, Any] | None = Field(description="summary of the batches (all trade ids)")
    batches: list[BatchOut] = Field(default_factory=list)
    error: str | None = Field(None, description="why the interval could not be cleared yet")
    imbalance: ImbalanceOut | None = Field(
        None,
        description="every party's imbalance, once the interval is settled (none when reclaimed)",
    )
    activations: list[ActivationOut] = Field(
        default_factory=list, description="flexibility activations bought with the clearing"
    )
    gridMode: Number | None = Field(
        None,
        description="the grid mode the interval was cleared in: 0 grid-connected, 1 islanded "
        f"(the registry's at its first clearing, stored with it); null before clearing; {OUT_NUM}",
    )
    activationBatches: list[ActivationBatchOut] = Field(
        default_factory=list,
        description="the activations' recordActivations batches on FlexibilityMarket",
    )


class TradeOut(BaseModel):
    id: Hash32
    intervalId: Number = Field(description=OUT_NUM)
    position: Number = Field(description=f"place in the interval's batches; {OUT_NUM}")
    kind: str
    sellOrder: Hash32
    buyOrder: Hash32
    seller: Address
    buyer: Address
    sellerBus: Number = Field(description=OUT_NUM)
    buyerBus: Number = Field(description=OUT_NUM)
    energyWh: Number = Field(description=f"energy in Wh; {OUT_NUM}")
    pricePerKWh: Price = Field(description=f"token base units per kWh; {OUT_STR}")
    verdict: Uint8 = Field(description=f"0 approved, else the veto reason code; {OUT_NUM}")
    reason: str
    element: str
    vetoValue: float | None = Field(
        description="a veto's binding element: the value it would reach (pu for voltages, "
        "percent for loadings, kW of the grid-forming unit for ISLAND_BALANCE); null when "
        "approved or without a number"
    )
    vetoLimit: float | None = Field(description="... and the limit it would break (same unit)")
    approved: bool
    status: str
    txHash: str | None
    deliveredWh: Number | None = Field(description=f"settled delivery, Wh; {OUT_NUM}")
    paid: Amount | None = Field(description=f"token base units paid to the seller; {OUT_STR}")
    settleTxHash: str | None


class ConnectionMessage(BaseModel):
    """The EIP-712 ``ConnectionRequest`` message: the nonce is a decimal string, the others
    JSON numbers; either spelling is accepted."""

    model_config = ConfigDict(extra="forbid")

    wallet: Address
    meter: Address
    busId: Uint32 = Field(description=f"network bus to connect at; {NUM}")
    maxExportW: Uint32 = Field(description=f"export limit in W; {NUM}")
    maxImportW: Uint32 = Field(description=f"import limit in W; {NUM}")
    nonce: Nonce = Field(description=f"request nonce (uint64); {STR}")
    expiry: Number = Field(description=f"unix seconds; {NUM}")


class ConnectionIn(BaseModel):
    message: ConnectionMessage
    signature: Signature


class ParticipantOut(BaseModel):
    wallet: Address
    registered: bool
    active: bool
    meter: Address | None
    busId: Number | None = Field(description=OUT_NUM)
    maxExportW: Number | None = Field(description=f"W; {OUT_NUM}")
    maxImportW: Number | None = Field(description=f"W; {OUT_NUM}")
    index: Number | None = Field(description=OUT_NUM)
    request: dict[str, Any] | None
    availableBalance: Amount | None = Field(
        description=f"deposit in EnergyMarket not locked in escrow, token base units; {OUT_STR}"
    )
    reservedByOrders: Amount | None = Field(
        description=f"worst-case cost of the open buy orders, token base units; {OUT_STR}"
    )


class HealthOut(BaseModel):
    ok: bool
    chain: dict[str, Any]
    contracts: dict[str, str]
    database: dict[str, Any]
    broker: dict[str, Any]
    market: dict[str, Any]


class TokenOut(BaseModel):
    address: Address
    symbol: str
    decimals: Uint8 = Field(description=f"the token's decimals (6 for tegrid's); {OUT_NUM}")


class FundsOut(BaseModel):
    """A wallet's money, in token base units (decimal strings): its own tokens, the allowance it
    gave the market, and its escrow in the market (available, locked by recorded trades)."""

    wallet: Address
    token: TokenOut
    walletBalance: Amount = Field(description=f"tokens in the wallet, base units; {OUT_STR}")
    allowance: Amount = Field(description=f"approved to the market, base units; {OUT_STR}")
    available: Amount = Field(description=f"escrow free to back orders, base units; {OUT_STR}")
    locked: Amount = Field(description=f"escrow locked by recorded trades, base units; {OUT_STR}")


class WalletTransaction(BaseModel):
    """An unsigned transaction for the wallet's ``eth_sendTransaction``."""

    action: Literal["approve", "deposit"]
    from_: Address = Field(alias="from")
    to: Address
    data: str = Field(pattern=r"^0x([0-9a-fA-F]{2})*$")
    value: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class DepositOut(BaseModel):
    """What a deposit of ``amount`` tokens takes: send ``transactions`` in order, each after the
    previous one is mined."""

    wallet: Address
    token: TokenOut
    amount: str = Field(description="the amount in tokens, as given")
    amountUnits: Amount = Field(description=f"the same amount in token base units; {OUT_STR}")
    transactions: list[WalletTransaction]


Int32 = Annotated[int, JsonInt(-(2**31), 2**31 - 1)]
Nonce256 = Annotated[int, JsonInt(0, 2**256 - 1, string=True)]  # a flex nonce is uint256


class DeviceMessage(BaseModel):
    """The EIP-712 ``DeviceRegistration`` message (domain "tegrid ParticipantRegistry" v1), signed
    by the owner wallet and by the device key. Power is signed: positive W inject, negative W
    consume."""

    model_config = ConfigDict(extra="forbid")

    owner: Address = Field(description="the participant's wallet")
    device: Address = Field(description="the device's own key (signs as proof of possession)")
    busId: Uint32 = Field(description=f"grid bus: the owner's connection point; {NUM}")
    kind: Uint8 = Field(
        description=f"1 battery, 2 EV charger, 3 heat pump, 4 PV inverter, 5 genset; {NUM}"
    )
    minW: Int32 = Field(description=f"lowest power in W (negative: consumption); {NUM}")
    maxW: Int32 = Field(description=f"highest power in W (positive: injection); {NUM}")
    capacityWh: Annotated[int, JsonInt(0, MAX_SAFE_INTEGER)] = Field(
        description=f"usable energy of a battery in Wh (> 0); 0 for the other kinds; {NUM}"
    )
    expiry: Number = Field(description=f"unix seconds after which the request is void; {NUM}")


class DeviceIn(BaseModel):
    message: DeviceMessage
    signature: Signature = Field(description="the owner wallet's signature of the message")
    deviceSignature: Signature = Field(description="the device key's signature of the message")


class DeviceOut(BaseModel):
    device: Address
    owner: Address
    busId: Number = Field(description=OUT_NUM)
    kind: Uint8 = Field(
        description=f"1 battery, 2 EV charger, 3 heat pump, 4 PV inverter, 5 genset; {OUT_NUM}"
    )
    kindName: str
    active: bool = Field(description="the registry's flag, read from the chain")
    minW: Int32 = Field(description=f"W (negative: consumption); {OUT_NUM}")
    maxW: Int32 = Field(description=f"W (positive: injection); {OUT_NUM}")
    capacityWh: Number = Field(description=f"Wh (batteries; else 0); {OUT_NUM}")
    hostingExportW: Number | None = Field(
        None, description=f"hosting capacity for export at the bus when registered, W; {OUT_NUM}"
    )
    hostingImportW: Number | None = Field(
        None, description=f"hosting capacity for import at the bus when registered, W; {OUT_NUM}"
    )
    txHash: str | None = None
    stateOfChargeWh: Number | None = Field(
        None,
        description="a battery's latest state of charge as the device reported it (signed by its "
        f"key; GET /devices/{{address}} only; null: no report); {OUT_NUM}",
    )
    stateOfChargeAt: Number | None = Field(
        None, description=f"when the device measured it (its clock, unix seconds); {OUT_NUM}"
    )


class FlexMessage(BaseModel):
    """The EIP-712 ``FlexOffer`` message (the market's domain). Price and nonce are decimal
    strings, the others JSON numbers; either spelling is accepted."""

    model_config = ConfigDict(extra="forbid")

    provider: Address = Field(description="the participant offering (signs)")
    device: Address = Field(description="its registered device that delivers")
    intervalId: Number = Field(description=f"delivery interval; {NUM}")
    direction: Uint8 = Field(
        description=f"0 up (more injection / less consumption), 1 down (the opposite); {NUM}"
    )
    powerW: Uint32 = Field(description=f"power offered in W, > 0; {NUM}")
    baselineW: Int32 = Field(
        description=f"what the device would do without activation, W (signed); {NUM}"
    )
    pricePerKWh: Price = Field(
        description=f"price of activated flexibility, token base units per kWh; {STR}"
    )
    nonce: Nonce256 = Field(description=f"the provider's flex nonce (uint256), used once; {STR}")
    expiry: Number = Field(description=f"unix seconds after which the offer is void; {NUM}")


class FlexIn(BaseModel):
    message: FlexMessage
    signature: Signature
    domain: DomainIn | None = Field(None, description="optional; checked against ours when given")


class FlexOut(BaseModel):
    hash: Hash32 = Field(description="the EIP-712 digest of the offer")
    status: str = Field(description="open | cancelled | activated")
    provider: Address
    device: Address
    intervalId: Number = Field(description=OUT_NUM)
    direction: Uint8 = Field(description=f"0 up, 1 down; {OUT_NUM}")
    powerW: Number = Field(description=f"W; {OUT_NUM}")
    baselineW: Int32 = Field(description=f"W (signed); {OUT_NUM}")
    pricePerKWh: Price = Field(description=f"token base units per kWh; {OUT_STR}")
    nonce: Nonce256 = Field(description=f"the provider's flex nonce; {OUT_STR}")
    expiry: Number = Field(description=f"unix seconds; {OUT_NUM}")
    createdAt: float = Field(description="unix seconds (with fraction) the API accepted it")
    remainingW: Number | None = Field(
        None, description=f"W not activated by the clearing; null before it; {OUT_NUM}"
    )


class PayerShareOut(BaseModel):
    account: Address
    share: Amount = Field(description=f"token base units; {OUT_STR}")


class ActivationOut(BaseModel):
    """One flexibility activation the clearing bought: for a rescued trade (``tradeId``) or for
    the DSO service (``tradeId`` 0x00..00, paid by the balancing account)."""

    id: Hash32 = Field(description="activationId = keccak256(abi.encode(offerHash, tradeId))")
    intervalId: Number = Field(description=OUT_NUM)
    position: Number = Field(description=f"place in the evidence's activation list; {OUT_NUM}")
    offerHash: Hash32
    provider: Address
    device: Address
    busId: Number = Field(description=OUT_NUM)
    direction: Uint8 = Field(description=f"0 up, 1 down; {OUT_NUM}")
    activatedW: Number = Field(description=f"W; {OUT_NUM}")
    baselineW: Int32 = Field(description=f"W (signed); {OUT_NUM}")
    setpointW: Int32 = Field(
        description=(
            "the device's target for the interval: baselineW moved by all its activations "
            f"in the interval (one offer per device and interval); {OUT_NUM}"
        )
    )
    pricePerKWh: Price = Field(description=f"token base units per kWh; {OUT_STR}")
    tradeId: Hash32 = Field(description="the rescued trade, or 0x00..00 for the DSO service")
    energyWh: Number = Field(description=f"floor(activatedW x interval seconds / 3600); {OUT_NUM}")
    cost: Amount = Field(description=f"floor(energyWh x pricePerKWh / 1000); {OUT_STR}")
    payers: list[PayerShareOut]
    meteredW: SignedWh | None = Field(
        None,
        description="the device's own metered W in the interval, as settled on chain (0 when "
        f"its reading was missing; reclaimed: 0); null until settled; {OUT_NUM}",
    )
    deliveredW: Number | None = Field(
        None, description=f"W delivered of activatedW, as settled; null until then; {OUT_NUM}"
    )
    paid: Amount | None = Field(
        None, description=f"paid to the provider on settlement; null until then; {OUT_STR}"
    )
    refunded: Amount | None = Field(
        None, description=f"returned to the payers on settlement; null until then; {OUT_STR}"
    )
    control: ControlActionOut | None = Field(
        None,
        description="the control action sent to the device for it and the device's signed ack "
        "(the dispatcher's store, as `GET /control/actions`); null before it is dispatched or "
        "while the control store is not open",
    )


Int64 = Annotated[int, JsonInt(-(2**63), 2**63 - 1, string=True)]  # int64 on chain
Uint64 = Annotated[int, JsonInt(0, 2**64 - 1, string=True)]


class ControlAckOut(BaseModel):
    """A device's signed answer to a control action."""

    status: Uint8 = Field(description=f"0 applied; else the refusal reason (`reason`); {OUT_NUM}")
    appliedW: Int64 = Field(description=f"the device's power for the interval, W; {OUT_STR}")
    at: Uint64 = Field(description=f"the device's clock when it answered (s); {OUT_STR}")
    signature: str = Field(description="65-byte signature by the device key (ControlAck)")
    receivedAt: float = Field(description="when the dispatcher stored it (unix time)")


class ControlActionOut(BaseModel):
    """A control action of one activation, or a grid mode switch told to a grid-forming device
    (``kind`` mode), and where it stands."""

    kind: Literal["control", "mode"] = Field(
        description="control: an activation's ControlAction; mode: a ModeAction after the "
        "registry's GridModeChanged (activationId is then the action id)"
    )
    activationId: Hash32
    device: Address
    intervalId: Number = Field(
        description=f"delivery interval; a mode switch's effective interval; {OUT_NUM}"
    )
    setpointW: Int64 | None = Field(
        description=f"absolute power target, W (+ injects); null for a mode switch; {OUT_STR}"
    )
    mode: Literal["grid_connected", "islanded"] | None = Field(
        None, description="the mode a mode switch tells the device to run in"
    )
    expiry: Number = Field(description=f"chain time (s) after which it is void; {OUT_NUM}")
    state: Literal["pending", "sent", "acknowledged", "refused", "expired"]
    reason: str | None = Field(description="the device's refusal reason (state refused)")
    attempts: Number = Field(description=f"how often it was published; {OUT_NUM}")
    signer: Address | None = Field(description="the grid operator key that signed it")
    signature: str | None
    createdAt: float
    firstSentAt: float | None
    lastSentAt: float | None
    ack: ControlAckOut | None


ActivationOut.model_rebuild()  # its `control` is a ControlActionOut, defined after it
