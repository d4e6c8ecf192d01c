"""Storage rows -> response schemas."""

from __future__ import annotations

import json
from typing import Any

from backend.api.schemas import IntervalOut, OrderOut, TradeOut
from backend.market.models import IntervalRow, OrderRow, TradeRow
from backend.market.service import Market


def order_out(o: OrderRow) -> OrderOut:
    return OrderOut(
        hash=o.hash,
        status=o.status,
        trader=o.trader,
        side=o.side,
        intervalId=o.interval_id,
        energyWh=o.energy_wh,
        pricePerKWh=o.price_per_kwh,
        nonce=o.nonce,
        expiry=o.expiry,
        counterparty=o.counterparty,
        filledWh=o.filled_wh or 0,
        createdAt=o.created_at,
    )


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
