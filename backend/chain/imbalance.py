"""An interval's imbalance settlement read back from the chain.

``EnergyMarket.settle``'s last page emits ``ImbalanceSettled`` for every party of the interval
(topics intervalId, account) and one ``IntervalImbalanceSettled`` (topic intervalId). The market's
follower, the console and the demo read them here, from a settle receipt or by interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from backend.chain.address import checksum


@dataclass(frozen=True)
class PartyImbalance:
    """One party's imbalance of a settled interval: net positions in Wh (sold or exported
    positive), what moved in token base units (``payment`` positive: paid to the party by the
    balancing account; negative: paid by the party to it) and what could not be paid (a short
    party's new debt, or a long party's unpaid share)."""

    account: str
    contracted_wh: int
    metered_wh: int
    payment: int
    shortfall: int

    @property
    def deviation_wh(self) -> int:
        """Metered minus contracted: negative short (the grid supplied it), positive long."""
        return self.metered_wh - self.contracted_wh


@dataclass(frozen=True)
class IntervalImbalance:
    """An interval's imbalance settlement: its on-chain clearing price (energy-weighted average of
    its approved trades, base units per kWh), the imbalance prices (basis points of it), what the
    balancing account collected and paid out, every party's entry (by address) and the settle
    transaction."""

    interval_id: int
    clearing_price_per_kwh: int
    short_price_bps: int
    long_price_bps: int
    collected: int
    paid_out: int
    parties: tuple[PartyImbalance, ...] = ()
    tx_hash: str | None = None


def from_receipt(market: Contract, receipt: Any, interval_id: int) -> IntervalImbalance | None:
    """The interval's imbalance in a ``settle`` receipt (its last page), else None."""
    totals = [
        ev["args"]
        for ev in market.events.IntervalImbalanceSettled().process_receipt(receipt, errors=DISCARD)
        if int(ev["args"]["intervalId"]) == interval_id
    ]
    if not totals:
        return None
    parties = [
        PartyImbalance(
            account=checksum(a["account"]),
            contracted_wh=int(a["contractedWh"]),
            metered_wh=int(a["meteredWh"]),
            payment=int(a["payment"]),
            shortfall=int(a["shortfall"]),
        )
        for ev in market.events.ImbalanceSettled().process_receipt(receipt, errors=DISCARD)
        for a in (ev["args"],)
        if int(a["intervalId"]) == interval_id
    ]
    t = totals[0]
    return IntervalImbalance(
        interval_id=interval_id,
        clearing_price_per_kwh=int(t["clearingPricePerKWh"]),
        short_price_bps=int(t["shortPriceBps"]),
        long_price_bps=int(t["longPriceBps"]),
        collected=int(t["collected"]),
        paid_out=int(t["paidOut"]),
        parties=tuple(sorted(parties, key=lambda p: p.account.lower())),
        tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
    )


def find(
    w3: Web3, market: Contract, interval_id: int, from_block: int = 0
) -> IntervalImbalance | None:
    """The interval's imbalance settlement on chain (None before its last settle page, and for a
    reclaimed interval)."""
    logs = market.events.IntervalImbalanceSettled.get_logs(
        argument_filters={"intervalId": interval_id}, from_block=from_block
    )
    if not logs:
        return None
    receipt = w3.eth.get_transaction_receipt(logs[-1]["transactionHash"])
    return from_receipt(market, receipt, interval_id)
