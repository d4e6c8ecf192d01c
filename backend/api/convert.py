"""Storage rows -> response schemas."""

from __future__ import annotations

import json
from typing import Any

from backend.api.schemas import IntervalOut, OrderOut, TradeOut
from backend.market.models import IntervalRow, OrderRow, TradeRow
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
    """The ``OrderOut`` fields (same names and order) of an order row given as a dict."""
    out = {name: row[column] for name, column in ORDER_OUT_FIELDS}
    out["filledWh"] = out["filledWh"] or 0
    return out


def order_out(o: OrderRow) -> OrderOut:
    return OrderOut(**order_fields({column: getattr(o, column) for _, column in ORDER_OUT_FIELDS}))


def interval_out(market: Market, row: IntervalRow) -> IntervalOut:
    batch = market.store.get_batch(row.id)
    batch_info: dict[str, Any] | None = None
    if batch is not None:
        batch_info = {
            "state": batch.state,
            "txHash": batch.tx_hash,
            "blockNumber": batch.block_number,
            "evidenceHash": batch.evidence_hash,
            "tradeIds": json.loads(batch.trade_ids),
            "attempts": batch.attempts,
            "lastError": batch.last_error,
        }
    seconds = market.config.interval_seconds
    return IntervalOut(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        startsAt=row.id * seconds,
        gateClosureAt=market.gate_closure(row.id),
        clearingPrice=row.clearing_price,
        offeredWh=row.offered_wh or 0,
        bidWh=row.bid_wh or 0,
        tradedWh=row.traded_wh or 0,
        vetoedWh=row.vetoed_wh or 0,
        approvedCount=row.approved_count or 0,
        vetoedCount=row.vetoed_count or 0,
        batch=batch_info,
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
        pricePerKWh=t.price_per_kwh,
        verdict=t.verdict,
        reason=t.reason,
        element=t.element,
        approved=t.verdict == 0,
        status=t.status,
        txHash=t.tx_hash,
        deliveredWh=t.delivered_wh,
        paid=t.paid,
        settleTxHash=t.settle_tx_hash,
    )
