"""Trades, limits and verdicts: the value types the validator takes and returns.

``Reason`` codes are stable small integers: the market backend writes them on chain, so never
renumber.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import IntEnum


class Reason(IntEnum):
    """Why a trade was vetoed (``APPROVED`` when it was not). Stable integers for the chain."""

    APPROVED = 0
    VOLTAGE_HIGH = 1
    VOLTAGE_LOW = 2
    LINE_OVERLOAD = 3
    TRAFO_OVERLOAD = 4
    NOT_CONVERGED = 5
    UNKNOWN_BUS = 6
    INVALID_TRADE = 7
    # islanded mode: the grid-forming unit would have to give more (or take more) than its power
    # and state of charge allow; ``element`` names the unit, ``value``/``limit`` are kW
    ISLAND_BALANCE = 8


@dataclass(frozen=True)
class Trade:
    """``p_kw`` moves from ``seller_bus`` (injects ``+p_kw`` extra) to ``buyer_bus`` (withdraws
    ``+p_kw`` extra).

    Buses are pandapower bus indices. Trades are at unity power factor (no reactive power moves).
    """

    id: str
    seller_bus: int
    buyer_bus: int
    p_kw: float


@dataclass(frozen=True)
class Activation:
    """A flexibility activation as the grid sees it: ``p_kw`` extra injection at ``bus`` for the
    interval (positive injects, negative consumes: an up activation of a device is ``+p_kw``, a
    down one ``-p_kw``). ``id`` is the market's activation id (0x hex); the network's slack
    balances it, as it balances a trade's losses."""

    id: str
    bus: int
    p_kw: float
    # The id of the trade it is bought for: applied right before that trade, judged like a trade
    # on the state so far (its verdict: approved iff that state stays feasible). "" - the DSO
    # service's: applied first, with the other such activations, as one set.
    before: str = ""


@dataclass(frozen=True)
class Limits:
    """Operating limits. Where the base state is already outside a limit, "no worse than base"
    applies
    (within ``tolerance``)."""

    vm_min_pu: float = 0.90
    vm_max_pu: float = 1.10
    max_line_loading_percent: float = 100.0
    max_trafo_loading_percent: float = 100.0
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        values = (
            self.vm_min_pu,
            self.vm_max_pu,
            self.max_line_loading_percent,
            self.max_trafo_loading_percent,
            self.tolerance,
        )
        if not all(math.isfinite(v) for v in values):
            raise ValueError("limits must be finite numbers")
        if not 0 < self.vm_min_pu < self.vm_max_pu:
            raise ValueError(
                f"need 0 < vm_min_pu < vm_max_pu, got {self.vm_min_pu}, {self.vm_max_pu}"
            )
        if self.max_line_loading_percent <= 0 or self.max_trafo_loading_percent <= 0:
            raise ValueError("loading limits must be positive")
        if self.tolerance < 0:
            raise ValueError("tolerance must not be negative")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The answer for one trade. ``element`` ("bus 17", "line 3", "trafo 0"), ``value`` (pu or %)
    and
    ``limit`` name the binding constraint of a veto; they are empty/None when approved.

    ``source`` says who decided: ``"ac"`` (an AC power flow), ``"screen"`` (a clear veto
    by the screen; ``value`` is then its estimate) or ``"input"`` (the trade alone decides: it is
    bad, or seller and buyer share a bus, which is approved without a power flow)."""

    id: str
    approved: bool
    reason: Reason
    element: str = ""
    value: float | None = None
    limit: float | None = None
    source: str = "ac"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; the reason is its name (``reason_code`` carries the chain integer)."""
        return {
            "id": self.id,
            "approved": self.approved,
            "reason": self.reason.name,
            "reason_code": int(self.reason),
            "element": self.element,
            "value": None if self.value is None else round(self.value, 6),
            "limit": None if self.limit is None else round(self.limit, 6),
        }
