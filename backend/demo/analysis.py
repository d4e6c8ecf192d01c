"""What the demo's report says beyond the raw records: which grid limit binds in an interval, the
community's energy balance and why less was delivered than contracted - with the definitions the
report prints beside the numbers.

Everything here is arithmetic on the summary's own figures (AC states and energy balances from the
Neural Grid, settlements from the chain), so the report can state how each number was made.
"""

from __future__ import annotations

import math
from typing import Any

# The grid quantity each physical veto reason is about: (metric label, state key, unit, side).
# ``side`` says which limit applies: the upper one (``max``) or the lower one (``min``).
METRICS: dict[str, tuple[str, str, str, str]] = {
    "VOLTAGE_HIGH": ("max V", "vm_max_pu", "pu", "max"),
    "VOLTAGE_LOW": ("min V", "vm_min_pu", "pu", "min"),
    "LINE_OVERLOAD": ("line loading", "max_line_loading_percent", "%", "max"),
    "TRAFO_OVERLOAD": ("trafo loading", "max_trafo_loading_percent", "%", "max"),
}
# The validator names the first broken limit in this order (grid.limits): ties go the same way.
REASON_ORDER = ("TRAFO_OVERLOAD", "LINE_OVERLOAD", "VOLTAGE_HIGH", "VOLTAGE_LOW")
LIMIT_KEYS = {
    "vm_max_pu": "vm_max_pu",
    "vm_min_pu": "vm_min_pu",
    "max_line_loading_percent": "max_loading_percent",
    "max_trafo_loading_percent": "max_trafo_loading_percent",
}
NOT_AVAILABLE = "N/A"

ENERGY_DEFINITIONS: tuple[tuple[str, str], ...] = (
    (
        "scope",
        "the whole network as the Neural Grid sees each interval: every load and PV unit on its "
        "daily profile, plus the approved trades (the seller's bus injects, the buyer's bus "
        "withdraws the traded power); one AC power flow per interval, held for the interval "
        "(kWh = kW x interval hours)",
    ),
    (
        "grid import",
        "energy the external grid (upstream of the slack bus) delivers into the network",
    ),
    ("grid export", "energy the network feeds back to the external grid"),
    ("local generation", "PV output plus the sellers' traded injections"),
    ("consumption", "load plus the buyers' traded withdrawals"),
    (
        "losses",
        "active power the lines and transformers dissipate in the AC power flow "
        "(sum of Re(V conj(I)) over all buses)",
    ),
    (
        "self-consumption",
        "local generation used inside the network (by its loads or its losses): generation "
        "minus grid export; rate = self-consumption / generation, self-sufficiency = "
        "self-consumption / (consumption + losses)",
    ),
    (
        "balance residual",
        "grid import - grid export + generation - consumption - losses: zero up to the power "
        "flow's tolerance",
    ),
    (
        "peer to peer",
        "contracted: energy of the approved trades; delivered: what settlement paid for "
        "(TradeSettled.deliveredWh: all of it, trades settle firm); metered export / import: the "
        "members' readings on chain",
    ),
)

DELIVERY_EXPLANATION = (
    "Trades settle firm: the seller is paid for the contracted energy (docs/architecture.md). "
    "What the meters show beside it is imbalance: per interval and party, the metered net "
    "position (export - import) minus the contracted one (sold - bought). Short (the grid "
    "supplied the difference) pays the balancing account 1.5 x the interval's clearing price "
    "(energy-weighted average of its trades), long (the grid absorbed it) is paid 0.5 x; a "
    "reading missing at the settlement deadline counts as zero and earns no long payment. The "
    "households' own load and PV count too: a member that trades in an interval answers for its "
    "whole metered position in it."
)


def binding(
    state: dict[str, Any],
    vetoes_by_reason: dict[str, int],
    limits: dict[str, float],
    usable: set[str],
) -> dict[str, Any]:
    """The metric that binds in an interval's approved state.

    With vetoes: the quantity of the most frequent physical veto reason (ties in the validator's
    order) - max V for VOLTAGE_HIGH, min V for VOLTAGE_LOW, the largest line or transformer
    loading for an overload. Without: the metric of ``usable`` (state keys the network has) that
    uses the largest share of its allowed band (voltages: the distance from 1.0 pu towards the
    limit; loadings: percent of the limit)."""
    physical = [r for r in REASON_ORDER if vetoes_by_reason.get(r) and METRICS[r][1] in usable]
    if physical:
        reason: str | None = max(
            physical, key=lambda r: (vetoes_by_reason[r], -REASON_ORDER.index(r))
        )
    else:
        candidates = [
            r
            for r in REASON_ORDER
            if METRICS[r][1] in usable and state.get(METRICS[r][1]) is not None
        ]
        reason = max(candidates, key=lambda r: _utilisation(r, state, limits), default=None)
    if reason is None:
        return {"metric": NOT_AVAILABLE, "reason": None, "value": None, "limit": None, "unit": ""}
    label, key, unit, _side = METRICS[reason]
    return {
        "metric": label,
        "reason": reason if physical else None,
        "value": state.get(key),
        "limit": limits[LIMIT_KEYS[key]],
        "unit": unit,
    }


def _utilisation(reason: str, state: dict[str, Any], limits: dict[str, float]) -> float:
    _label, key, _unit, side = METRICS[reason]
    value = float(state[key])
    limit = float(limits[LIMIT_KEYS[key]])
    if key.startswith("vm_"):
        band = (limit - 1.0) if side == "max" else (1.0 - limit)
        return (value - 1.0) / band if side == "max" else (1.0 - value) / band
    return value / limit


def energy_kwh(balance: dict[str, Any], hours: float) -> dict[str, float | None]:
    """One interval's energy balance (kWh) from its power balance (kW, ``EnergyBalance``)."""
    if not balance["converged"]:
        return {k: None for k in ENERGY_KEYS}
    grid = float(balance["grid_kw"]) * hours
    generation = float(balance["generation_kw"]) * hours
    export = max(-grid, 0.0)
    return {
        "grid_import_kwh": max(grid, 0.0),
        "grid_export_kwh": export,
        "generation_kwh": generation,
        "consumption_kwh": float(balance["consumption_kw"]) * hours,
        "losses_kwh": float(balance["losses_kw"]) * hours,
        "self_consumption_kwh": generation - export,
    }


ENERGY_KEYS = (
    "grid_import_kwh",
    "grid_export_kwh",
    "generation_kwh",
    "consumption_kwh",
    "losses_kwh",
    "self_consumption_kwh",
)


def energy_totals(per_interval: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The day's energy balance: sums over the intervals whose power flow converged, the rates
    and the balance residual."""
    rows = [e for e in per_interval if e["grid_import_kwh"] is not None]
    totals: dict[str, float | None] = {
        k: sum(float(e[k] or 0.0) for e in rows) for k in ENERGY_KEYS
    }
    generation = float(totals["generation_kwh"] or 0.0)
    demand = float(totals["consumption_kwh"] or 0.0) + float(totals["losses_kwh"] or 0.0)
    sc = float(totals["self_consumption_kwh"] or 0.0)
    totals["self_consumption_rate"] = sc / generation if generation > 0 else None
    totals["self_sufficiency"] = sc / demand if demand > 0 else None
    totals["balance_residual_kwh"] = (
        float(totals["grid_import_kwh"] or 0.0)
        - float(totals["grid_export_kwh"] or 0.0)
        + generation
        - demand
    )
    totals["intervals_not_converged"] = len(per_interval) - len(rows)
    return totals


LOADINGS = ("max_line_loading_percent", "max_trafo_loading_percent")


def shown(summary: dict[str, Any], state: dict[str, Any], key: str) -> str:
    """A loading for a table: N/A where the network has no such element, or only placeholder
    ratings (a loading that can never bind; summary.json keeps the computed number)."""
    return fmt(state[key], 1) if key in summary["can_bind"] else NOT_AVAILABLE


def fmt(value: float | None, digits: int = 3, unit: str = "") -> str:
    """A number for a table (``N/A`` for None or NaN), with its unit when given."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_AVAILABLE
    text = f"{value:.{digits}f}"
    return f"{text} {unit}" if unit else text
