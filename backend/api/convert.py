"""Storage rows -> response schemas."""

from __future__ import annotations

import json
from typing import Any

from backend.api.schemas import (
    ActivationBatchOut,
    ActivationOut,
    BatchOut,
    ControlActionOut,
    ImbalanceOut,
    IntervalOut,
    OrderOut,
    PartyImbalanceOut,
    PayerShareOut,
    TradeOut,
)
from backend.market.models import (
    ActivationBatchRow,
    ActivationRow,
    BatchRow,
    BatchState,
    ImbalanceRow,
    IntervalImbalanceRow,
    IntervalRow,
    OrderRow,
    TradeRow,
)
from backend.market.service import Market

# OrderOut field <- order row column (rows as OrderRow objects or the accept path's dicts)
ORDER_OUT_FIELDS = (
    ("hash", "hash"),
    ("status", "status"),
    ("trader", "trader"),
    ("side", "side"),
    ("intervalId", "interval_id"),
    ("energyWh", "energy_wh"),
    ("pricePerKWh", "price_per_kwh"),
    ("nonce", "nonce"),
    ("expiry", "expiry"),
    ("counterparty", "counterparty"),
    ("filledWh", "filled_wh"),
    ("createdAt", "created_at"),
)


def order_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The ``OrderOut`` fields (same names, order and JSON types) of an order row given as a
    dict: the store keeps price, nonce and expiry as decimal strings; the expiry, a unix time,
    is answered as a number (the rule in :mod:`backend.api.schemas`)."""
    out = {name: row[column] for name, column in ORDER_OUT_FIELDS}
    out["expiry"] = int(out["expiry"])
    out["filledWh"] = out["filledWh"] or 0
    return out


def order_out(o: OrderRow) -> OrderOut:
    return OrderOut(**order_fields({column: getattr(o, column) for _, column in ORDER_OUT_FIELDS}))


def batch_out(b: BatchRow) -> BatchOut:
    return BatchOut(
        index=b.batch_index,
        count=b.batch_count,
        state=b.state,  # type: ignore[arg-type]
        trades=len(json.loads(b.trade_ids)),
        orders=b.order_count,
        reason=b.last_error,
        txHash=b.tx_hash,
        blockNumber=b.block_number,
        gasUsed=b.gas_used,
        attempts=b.attempts or 0,
        nextAttemptAt=b.next_attempt_at,
    )


def _batch_summary(batches: list[BatchRow]) -> dict[str, Any] | None:
    """The interval's batches as one (``batch``, from when there was one per interval): the
    least advanced state, the last transaction, every trade id in recording order."""
    if not batches:
        return None
    states = {b.state for b in batches}
    state = next(
        (
            s
            for s in (BatchState.EXPIRED, BatchState.FAILED, BatchState.PENDING, BatchState.SENT)
            if s in states
        ),
        BatchState.RECORDED,
    )
    last = next((b for b in reversed(batches) if b.tx_hash), None)
    return {
        "state": state,
        "count": len(batches),
        "txHash": last.tx_hash if last else None,
        "blockNumber": last.block_number if last else None,
        "evidenceHash": batches[0].evidence_hash,
        "tradeIds": [t for b in batches for t in json.loads(b.trade_ids)],
        "attempts": sum(b.attempts or 0 for b in batches),
        "lastError": next((b.last_error for b in batches if b.last_error), None),
    }


def interval_out(market: Market, row: IntervalRow) -> IntervalOut:
    batches = market.batches(row.id)
    seconds = market.config.interval_seconds
    return IntervalOut(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        startsAt=row.id * seconds,
        gateClosureAt=market.gate_closure(row.id),
        clearingPrice=None if row.clearing_price is None else int(row.clearing_price),
        offeredWh=row.offered_wh or 0,
        bidWh=row.bid_wh or 0,
        tradedWh=row.traded_wh or 0,
        vetoedWh=row.vetoed_wh or 0,
        approvedCount=row.approved_count or 0,
        vetoedCount=row.vetoed_count or 0,
        clearingMethod=row.clearing_method,
        welfare=None if row.welfare is None else int(row.welfare),
        batch=_batch_summary(batches),
        batches=[batch_out(b) for b in batches],
        error=market.interval_error(row.id),
        imbalance=imbalance_out(market.imbalance(row.id)),
        activations=[activation_out(a) for a in market.store.activations(row.id)],
        gridMode=row.grid_mode,
        activationBatches=[
            activation_batch_out(b) for b in market.store.activation_batches(row.id)
        ],
    )


def activation_batch_out(b: ActivationBatchRow) -> ActivationBatchOut:
    return ActivationBatchOut(
        index=b.batch_index,
        count=b.batch_count,
        state=b.state,  # type: ignore[arg-type]
        activationIds=json.loads(b.activation_ids),
        evidenceHash=b.evidence_hash,
        reason=b.last_error,
        txHash=b.tx_hash,
        blockNumber=b.block_number,
        gasUsed=b.gas_used,
        attempts=b.attempts or 0,
        nextAttemptAt=b.next_attempt_at,
        settleTxHash=b.settle_tx_hash,
    )


def activation_out(row: ActivationRow, control: dict[str, Any] | None = None) -> ActivationOut:
    """``control``: the dispatcher's row of its control action (``as_dict``), if any."""
    return ActivationOut(
        id=row.id,
        intervalId=row.interval_id,
        position=row.position,
        offerHash=row.offer_hash,
        provider=row.provider,
        device=row.device,
        busId=row.bus_id,
        direction=row.direction,
        activatedW=row.activated_w,
        baselineW=row.baseline_w,
        setpointW=row.setpoint_w,
        pricePerKWh=int(row.price_per_kwh),
        tradeId=row.trade_id,
        energyWh=row.energy_wh,
        cost=int(row.cost),
        payers=[PayerShareOut(account=w, share=int(v)) for w, v in json.loads(row.payers)],
        meteredW=row.metered_w,
        deliveredW=row.delivered_w,
        paid=None if row.paid is None else int(row.paid),
        refunded=None if row.refunded is None else int(row.refunded),
        control=None if control is None else ControlActionOut.model_validate(control),
    )


def imbalance_out(
    found: tuple[IntervalImbalanceRow, list[ImbalanceRow]] | None,
) -> ImbalanceOut | None:
    if found is None:
        return None
    head, parties = found
    return ImbalanceOut(
        clearingPricePerKWh=int(head.clearing_price),
        shortPriceBps=head.short_price_bps,
        longPriceBps=head.long_price_bps,
        collected=int(head.collected),
        paidOut=int(head.paid_out),
        settleTxHash=head.settle_tx_hash,
        participants=[
            PartyImbalanceOut(
                account=p.account,
                contractedWh=p.contracted_wh,
                meteredWh=p.metered_wh,
                deviationWh=p.metered_wh - p.contracted_wh,
                paid=max(0, -int(p.payment)),
                received=max(0, int(p.payment)),
                owed=int(p.shortfall),
            )
            for p in parties
        ],
    )


def trade_out(t: TradeRow) -> TradeOut:
    return TradeOut(
        id=t.id,
        intervalId=t.interval_id,
        position=t.position,
        kind=t.kind,
        sellOrder=t.sell_hash,
        buyOrder=t.buy_hash,
        seller=t.seller,
        buyer=t.buyer,
        sellerBus=t.seller_bus,
        buyerBus=t.buyer_bus,
        energyWh=t.energy_wh,
        pricePerKWh=int(t.price_per_kwh),
        verdict=t.verdict,
        reason=t.reason,
        element=t.element,
        vetoValue=t.veto_value,
        vetoLimit=t.veto_limit,
        approved=t.verdict == 0,
        status=t.status,
        txHash=t.tx_hash,
        deliveredWh=t.delivered_wh,
        paid=None if t.paid is None else int(t.paid),
        settleTxHash=t.settle_tx_hash,
    )
