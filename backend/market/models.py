"""Storage models of the order book (SQLAlchemy 2, declarative). Separate from the API schemas.

Integers that may exceed a signed 64-bit column (``pricePerKWh`` is uint128, nonces and expiries are
uint64) are stored as decimal strings; ``energy_wh`` and ``interval_id`` are bounded by validation.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class OrderStatus:
    OPEN = "open"  # in the book, waiting for gate closure
    MATCHED = "matched"  # part of a cleared batch not yet on chain
    FILLED = "filled"  # fully traded, recorded on chain
    PARTIAL = "partial"  # partly traded, recorded on chain; the rest lapsed
    UNFILLED = "unfilled"  # interval cleared without trading this order
    CANCELLED = "cancelled"
    ALL = ("open", "matched", "filled", "partial", "unfilled", "cancelled")
    LIVE = ("open", "matched")  # still reserve connection capacity and deposit


class IntervalStatus:
    OPEN = "open"
    CLOSED = "closed"  # gate closed, no more orders; clearing pending
    CLEARED = "cleared"  # trades computed and persisted with their batch
    RECORDED = "recorded"  # batch on chain
    SETTLED = "settled"
    ALL = ("open", "closed", "cleared", "recorded", "settled")


class BatchState:
    PENDING = "pending"  # signed and persisted, not sent yet
    SENT = "sent"  # transaction being sent, receipt not seen
    RECORDED = "recorded"
    FAILED = "failed"  # the last attempt failed (``last_error``); retried at ``next_attempt_at``
    EMPTY = "empty"  # nothing to record
    # the chain's gate closure passed before it landed: it can never be recorded (final; nothing
    # of it was locked on chain)
    EXPIRED = "expired"
    UNFINISHED = ("pending", "sent", "failed")


class OrderRow(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("trader", "nonce", name="uq_orders_trader_nonce"),
        Index("ix_orders_interval_status", "interval_id", "status"),
        Index("ix_orders_trader_status", "trader", "status"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hash: Mapped[str] = mapped_column(String(66), unique=True, nullable=False)
    trader: Mapped[str] = mapped_column(String(42), nullable=False)
    side: Mapped[int] = mapped_column(Integer, nullable=False)
    interval_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    energy_wh: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price_per_kwh: Mapped[str] = mapped_column(String(40), nullable=False)
    nonce: Mapped[str] = mapped_column(String(21), nullable=False)
    expiry: Mapped[str] = mapped_column(String(21), nullable=False)
    counterparty: Mapped[str] = mapped_column(String(42), nullable=False)
    signature: Mapped[str] = mapped_column(String(132), nullable=False)
    status: Mapped[str] = mapped_column(String(12), nullable=False)
    filled_wh: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    reserved: Mapped[str] = mapped_column(
        String(50), nullable=False
    )  # worst-case cost of a buy order
    created_at: Mapped[float] = mapped_column(Float, nullable=False)


class IntervalRow(Base):
    __tablename__ = "intervals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False)
    closed_at: Mapped[float | None] = mapped_column(Float)
    clearing_price: Mapped[str | None] = mapped_column(String(40))
    offered_wh: Mapped[int] = mapped_column(BigInteger, default=0)
    bid_wh: Mapped[int] = mapped_column(BigInteger, default=0)
    traded_wh: Mapped[int] = mapped_column(BigInteger, default=0)
    vetoed_wh: Mapped[int] = mapped_column(BigInteger, default=0)
    approved_count: Mapped[int] = mapped_column(Integer, default=0)
    vetoed_count: Mapped[int] = mapped_column(Integer, default=0)
    # How it was cleared (``Clearing.method``) and the welfare of its approved trades: sum of
    # (bid - ask) x kWh in token base units (a decimal string, like prices).
    clearing_method: Mapped[str | None] = mapped_column(String(200))
    welfare: Mapped[str | None] = mapped_column(String(60))
    # The grid mode it was cleared in (the registry's at its first clearing): 0 grid-connected,
    # 1 islanded; None before clearing (and for rows of a store older than the column).
    grid_mode: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class BatchRow(Base):
    """One ``recordTrades`` batch of an interval: a slice of the interval's trades (ascending trade
    ids, so batch ``i`` holds smaller ids than batch ``i + 1``) with its own validator attestation.
    Every batch of an interval is signed and persisted with the clearing, before any is sent, so a
    restart never records a trade twice nor splits the interval differently."""

    __tablename__ = "trade_batches"

    interval_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("intervals.id"), primary_key=True, autoincrement=False
    )
    batch_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    batch_count: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(10), nullable=False)
    evidence_hash: Mapped[str] = mapped_column(String(66), nullable=False)
    attestation_signature: Mapped[str] = mapped_column(String(132), nullable=False)
    trade_ids: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list, batch order
    order_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    gas_planned: Mapped[int | None] = mapped_column(BigInteger)  # the model's figure at planning
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)  # unix s; None: at once
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class TradeRow(Base):
    __tablename__ = "trades"
    __table_args__ = (Index("ix_trades_interval", "interval_id", "position"),)

    id: Mapped[str] = mapped_column(String(66), primary_key=True)
    interval_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(10), nullable=False)  # bilateral | auction
    sell_hash: Mapped[str] = mapped_column(String(66), nullable=False)
    buy_hash: Mapped[str] = mapped_column(String(66), nullable=False)
    seller: Mapped[str] = mapped_column(String(42), nullable=False)
    buyer: Mapped[str] = mapped_column(String(42), nullable=False)
    seller_bus: Mapped[int] = mapped_column(Integer, nullable=False)
    buyer_bus: Mapped[int] = mapped_column(Integer, nullable=False)
    energy_wh: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price_per_kwh: Mapped[str] = mapped_column(String(40), nullable=False)
    verdict: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str] = mapped_column(String(24), nullable=False)
    element: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    # A veto's binding constraint in numbers (pu for voltages, percent for loadings): what the
    # element would reach and its limit; None when approved or when there is no number.
    veto_value: Mapped[float | None] = mapped_column(Float)
    veto_limit: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10), nullable=False)  # pending|recorded|settled
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    delivered_wh: Mapped[int | None] = mapped_column(BigInteger)
    paid: Mapped[str | None] = mapped_column(String(50))
    settle_tx_hash: Mapped[str | None] = mapped_column(String(66))


class IntervalImbalanceRow(Base):
    """An interval's imbalance settlement as the chain reported it (``IntervalImbalanceSettled``):
    token amounts as decimal strings."""

    __tablename__ = "interval_imbalances"

    interval_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    clearing_price: Mapped[str] = mapped_column(String(40), nullable=False)  # per kWh, on chain
    short_price_bps: Mapped[int] = mapped_column(Integer, nullable=False)
    long_price_bps: Mapped[int] = mapped_column(Integer, nullable=False)
    collected: Mapped[str] = mapped_column(String(80), nullable=False)
    paid_out: Mapped[str] = mapped_column(String(80), nullable=False)
    settle_tx_hash: Mapped[str | None] = mapped_column(String(66))


class ImbalanceRow(Base):
    """One party's imbalance of a settled interval (``ImbalanceSettled``): net positions in Wh
    (sold or exported positive), ``payment`` signed (positive: paid to the party by the balancing
    account) and ``shortfall`` as decimal strings."""

    __tablename__ = "imbalances"

    interval_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account: Mapped[str] = mapped_column(String(42), primary_key=True)
    contracted_wh: Mapped[int] = mapped_column(BigInteger, nullable=False)
    metered_wh: Mapped[int] = mapped_column(BigInteger, nullable=False)
    payment: Mapped[str] = mapped_column(String(81), nullable=False)
    shortfall: Mapped[str] = mapped_column(String(80), nullable=False)


class ConnectionRow(Base):
    """A plug-and-play connection request and what became of it."""

    __tablename__ = "connections"

    wallet: Mapped[str] = mapped_column(String(42), primary_key=True)
    meter: Mapped[str] = mapped_column(String(42), nullable=False)
    bus_id: Mapped[int] = mapped_column(Integer, nullable=False)
    max_export_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    max_import_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False)  # registered | refused
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    hosting_capacity_w: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class DeviceRow(Base):
    """A controllable device registered through the plug-and-play path (the registry holds the
    record; this row lists a participant's devices and keeps the registration's transaction)."""

    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_owner", "owner"),)

    device: Mapped[str] = mapped_column(String(42), primary_key=True)
    owner: Mapped[str] = mapped_column(String(42), nullable=False)
    bus_id: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[int] = mapped_column(Integer, nullable=False)
    min_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    max_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    capacity_wh: Mapped[int] = mapped_column(BigInteger, nullable=False)
    hosting_export_w: Mapped[int | None] = mapped_column(BigInteger)
    hosting_import_w: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66), nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)


class FlexStatus:
    OPEN = "open"  # offered for its interval
    CANCELLED = "cancelled"
    ACTIVATED = "activated"  # the clearing activated (part of) it: ``remaining_w`` is left
    ALL = ("open", "cancelled", "activated")


class FlexOfferRow(Base):
    """A wallet-signed flexibility offer (EIP-712 ``FlexOffer``) as accepted. Its nonce is the
    provider's flex nonce (uint256, a namespace of its own, apart from order nonces)."""

    __tablename__ = "flex_offers"
    __table_args__ = (
        UniqueConstraint("provider", "nonce", name="uq_flex_provider_nonce"),
        Index("ix_flex_interval_status", "interval_id", "status"),
        Index("ix_flex_provider", "provider"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hash: Mapped[str] = mapped_column(String(66), unique=True, nullable=False)
    provider: Mapped[str] = mapped_column(String(42), nullable=False)
    device: Mapped[str] = mapped_column(String(42), nullable=False)
    interval_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    direction: Mapped[int] = mapped_column(Integer, nullable=False)
    power_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    baseline_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price_per_kwh: Mapped[str] = mapped_column(String(40), nullable=False)
    nonce: Mapped[str] = mapped_column(String(78), nullable=False)
    expiry: Mapped[str] = mapped_column(String(21), nullable=False)
    signature: Mapped[str] = mapped_column(String(132), nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    # Power not activated by the clearing (W); None until the interval is cleared.
    remaining_w: Mapped[int | None] = mapped_column(BigInteger)


class ActivationRow(Base):
    """One flexibility activation the clearing bought (``backend.market.remedy``): an offer
    activated for a rescued trade (``trade_id``) or for the DSO service (``trade_id`` bytes32(0)),
    with who pays what. ``id`` is the activationId, keccak256(abi.encode(offerHash, tradeId)).
    Token amounts as decimal strings; ``payers`` a JSON list of [wallet, share]."""

    __tablename__ = "activations"
    __table_args__ = (
        Index("ix_activations_interval", "interval_id", "position"),
        Index("ix_activations_trade", "trade_id"),
    )

    id: Mapped[str] = mapped_column(String(66), primary_key=True)
    interval_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # the evidence's order
    offer_hash: Mapped[str] = mapped_column(String(66), nullable=False)
    provider: Mapped[str] = mapped_column(String(42), nullable=False)
    device: Mapped[str] = mapped_column(String(42), nullable=False)
    bus_id: Mapped[int] = mapped_column(Integer, nullable=False)
    direction: Mapped[int] = mapped_column(Integer, nullable=False)
    activated_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    baseline_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    setpoint_w: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price_per_kwh: Mapped[str] = mapped_column(String(40), nullable=False)
    trade_id: Mapped[str] = mapped_column(String(66), nullable=False)
    energy_wh: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost: Mapped[str] = mapped_column(String(50), nullable=False)
    payers: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    # The chain's settlement (``ActivationBatchClosed``), None until then:
    # the device's metered and delivered W, paid to the provider, refunded to the payers.
    metered_w: Mapped[int | None] = mapped_column(BigInteger)
    delivered_w: Mapped[int | None] = mapped_column(BigInteger)
    paid: Mapped[str | None] = mapped_column(String(50))
    refunded: Mapped[str | None] = mapped_column(String(50))


class ActivationBatchRow(Base):
    """One ``recordActivations`` batch of an interval: a slice of its activations in the
    contract's order (ascending (offerHash, tradeId) across the interval's batches), packed
    (``backend.chain.flex``) and attested by the validator (``FlexAttestation``) with the same
    evidence hash as the trades' batches. Planned, signed and stored with the clearing, sent once
    every trade batch of the interval is on EnergyMarket; states as ``BatchState`` plus
    ``settled`` / ``reclaimed`` (``FlexBatchState``) once the keeper closed it on chain."""

    __tablename__ = "activation_batches"

    interval_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    batch_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    batch_count: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(10), nullable=False)
    evidence_hash: Mapped[str] = mapped_column(String(66), nullable=False)
    attestation_signature: Mapped[str] = mapped_column(String(132), nullable=False)
    activation_ids: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list, batch order
    packed: Mapped[str] = mapped_column(Text, nullable=False)  # 0x-hex, the calldata bytes
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    settle_tx_hash: Mapped[str | None] = mapped_column(String(66))
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class FlexBatchState:
    """An activation batch's states past ``BatchState.RECORDED`` (the chain closed it)."""

    SETTLED = "settled"
    RECLAIMED = "reclaimed"
