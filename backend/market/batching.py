"""Splitting an interval's trades into ``recordTrades`` batches by a gas budget the market measures.

The budget is a share of the chain's block gas limit (read from the chain). What a batch costs is
learned from the chain itself: ``eth_estimateGas`` of a batch about to be sent and ``gasUsed`` of
every mined one, per unit of work - a trade, or a distinct signed order (each is verified once per
batch). The model keeps the highest rate among its latest observations, so it errs high; a batch
is estimated again right before it is sent, and the budget's share leaves room for the rate of one
mix of trades and orders to differ from another's.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TradeSpec:
    """What splitting and signing need of one trade (ascending ``trade_id`` within an interval)."""

    trade_id: str
    sell_hash: str
    buy_hash: str
    energy_wh: int
    price_per_kwh: int
    verdict: int


class GasModel:
    """Gas per unit of batch work (trades + distinct orders), learned from the chain's figures."""

    def __init__(self, keep: int = 16) -> None:
        self._seen: deque[tuple[int, int, int]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def learn(self, trades: int, orders: int, gas: int) -> None:
        if trades > 0 and gas > 0:
            with self._lock:
                self._seen.append((trades, orders, gas))

    @property
    def known(self) -> bool:
        return bool(self._seen)

    def rate(self) -> float | None:
        """Gas per trade-or-order: the highest of the latest observations."""
        with self._lock:
            if not self._seen:
                return None
            return max(gas / (t + o) for t, o, gas in self._seen)

    def predict(self, trades: int, orders: int) -> int | None:
        rate = self.rate()
        return None if rate is None else int(rate * (trades + orders)) + 1


def split(trades: Sequence[TradeSpec], fits: Callable[[int, int], bool]) -> list[int]:
    """Sizes of consecutive batches of ``trades`` (kept in order), each as large as ``fits(trades,
    distinct orders)`` allows, and at least one trade."""
    sizes: list[int] = []
    orders: set[str] = set()
    size = 0
    for t in trades:
        new = {t.sell_hash, t.buy_hash} - orders
        if size and not fits(size + 1, len(orders) + len(new)):
            sizes.append(size)
            orders, size = set(), 0
            new = {t.sell_hash, t.buy_hash}
        orders |= new
        size += 1
    if size:
        sizes.append(size)
    return sizes


def order_count(trades: Sequence[TradeSpec]) -> int:
    return len({h for t in trades for h in (t.sell_hash, t.buy_hash)})


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, capped."""
    return float(min(max_s, base_s * 2 ** max(0, min(attempts, 32) - 1)))
