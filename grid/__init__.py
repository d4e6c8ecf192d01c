"""Neural Grid: pandapower networks, interval base states, trade validation, hosting capacity.

A library of physics: it imports nothing from ``backend`` (the market asks it, never the reverse).

Public API::

    load_network(name_or_path: str) -> pandapowerNet
        "cigre_lv" (default), "case33bw", "kerber_dorfnetz", "kerber_vorstadt", "case_ieee30",
        "example_multivoltage", "village_island", a SimBench code ("1-LV-rural1--0-sw") or a
        pandapower JSON path.
        UnknownNetworkError / NetworkFileError (both GridError and ValueError) list what is
        accepted.

    refuse_unmodeled(net: pandapowerNet, name: str) -> None
        UnmodeledElementError (GridError, ValueError) naming each in-service element table the
        validator's AC model does not reproduce (svc, ssc, tcsc, vsc, bus_dc, line_dc) and its
        count; GridValidator calls it on every network it is given.

    GridValidator(network: str | pandapowerNet = "cigre_lv", limits: Limits | None = None,
                  add_pv: bool = True, batch_size: int = 32, reuse: bool = True,
                  island: grid.island.Island | None = None)
        .base_state(interval: int | None = None, interval_seconds: int = 900) -> BaseStateSummary
        .validate(trades: Sequence[Trade], interval=None, interval_seconds=900,
                  activations: Sequence[Activation] = (), islanded=False) -> ValidationResult
            activations before their trade, or first as one set (``result.activation_verdicts``)
            resumes from the longest prefix of ``trades`` it has seen (reuse=True): the answer is
            identical to a from-scratch run; ``result.stats.reused_trades`` counts the skipped
            islanded: no external grid, the network's grid-forming units balance it
            (``grid.island``; IslandError where it has none)
        .island_state(interval=None, interval_seconds=900) -> IslandState
            state of charge, the master unit's power and limits, dispatch, PV curtailed
        .clear_reuse_cache()
        .hosting_capacity(bus: int, interval=None, interval_seconds=900) -> HostingCapacity
        .grid_status(trades: Sequence[Trade] = (), interval=None, interval_seconds=900) ->
        GridStatus
        .energy_balance(trades=(), interval=None, interval_seconds=900) -> EnergyBalance
            external grid, local generation and consumption, losses of base + trades (kW)
        .facts: NetworkFacts                lines, transformers, placeholder line ratings, warnings
        .load_buses() -> list[int]          buses carrying loads (where participants sit)
        .buses() -> list[int]
        .bus_geodata() -> dict[int, tuple[float, float]]
        .fingerprint: str                   sha256 of the canonical element tables

    Trade(id: str, seller_bus: int, buyer_bus: int, p_kw: float)
        the seller bus injects +p_kw extra, the buyer bus withdraws +p_kw extra (unity power
        factor).
    Activation(id: str, bus: int, p_kw: float, before: str = "")
        a flexibility activation: +p_kw extra injection at the bus (negative: consumption),
        applied right before trade ``before`` (judged like a trade), or first with the others.
    Limits(vm_min_pu=0.90, vm_max_pu=1.10, max_line_loading_percent=100.0,
           max_trafo_loading_percent=100.0, tolerance=1e-6)
    Verdict(id, approved, reason: Reason, element: str, value: float | None, limit: float | None,
    source)
    Reason(IntEnum): APPROVED=0, VOLTAGE_HIGH=1, VOLTAGE_LOW=2, LINE_OVERLOAD=3, TRAFO_OVERLOAD=4,
                     NOT_CONVERGED=5, UNKNOWN_BUS=6, INVALID_TRADE=7, ISLAND_BALANCE=8
                     (stable: written on chain)
    parse_trades(data) / load_trades(path) -> list[Trade]   (TradeInputError on malformed input)
    parse_activations(data) / load_activations(path) -> list[Activation]   (the same for
        activations: ``[{"id", "bus", "p_kw"}, ...]``)
    interval_of(unix_time, interval_seconds=900) -> int     floor(unix_time / interval_seconds)

Rule ("do no harm"): trades are taken in priority order; one is approved only if the base state
plus every approved trade so far and this one converges under an AC power flow to a plausible
solution (every bus within 0.5-1.5 pu) with every bus voltage, line loading and transformer
loading (two- and three-winding; a three-winding transformer's loading is its most loaded
winding's, as pandapower's) inside its limit - or, where the base state is already outside, no
worse than base. A converged but implausible solution is solved again from the last accepted
state and from a flat start; if none is plausible, the trade gets NOT_CONVERGED naming the bus.
A trade between two participants on the same bus moves no power through the network: it is
approved without a power flow (``Verdict.source == "input"``) and changes nothing.
Activations (flexibility bought for the interval) bought for a trade are applied right before it
and judged like a trade; the others are applied before any trade, as one set: approved together
iff the base state plus all of them passes the same rule, and then the trades' "do no harm" is
measured against that state; refused, they are left out and the trades are validated on the base
state alone.
The approved set always passes a full AC power flow. ``ValidationResult.evidence_hash`` (sha256,
0x-hex) covers the network fingerprint, base state, limits, trades, verdicts and the rounded AC
result; recompute it with ``tegrid grid verify``. Interval base states come from the daily shapes
in ``grid.profiles``.
"""

from grid.acmodel import refuse_unmodeled
from grid.errors import (
    BaseStateError,
    GridError,
    NetworkFileError,
    TradeInputError,
    UnknownNetworkError,
    UnmodeledElementError,
)
from grid.networks import DEFAULT_NETWORK, NETWORK_NAMES, load_network, network_fingerprint
from grid.profiles import DEFAULT_INTERVAL_SECONDS, interval_of
from grid.tradeio import load_activations, load_trades, parse_activations, parse_trades
from grid.validator import (
    BaseStateSummary,
    EnergyBalance,
    GridStatus,
    GridValidator,
    HostingCapacity,
    HostingLimit,
    NetworkFacts,
    ValidationResult,
    ValidationStats,
)
from grid.verdicts import Activation, Limits, Reason, Trade, Verdict

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_NETWORK",
    "NETWORK_NAMES",
    "Activation",
    "BaseStateError",
    "BaseStateSummary",
    "EnergyBalance",
    "GridError",
    "GridStatus",
    "GridValidator",
    "HostingCapacity",
    "HostingLimit",
    "Limits",
    "NetworkFacts",
    "NetworkFileError",
    "Reason",
    "Trade",
    "TradeInputError",
    "UnknownNetworkError",
    "UnmodeledElementError",
    "ValidationResult",
    "ValidationStats",
    "Verdict",
    "interval_of",
    "load_activations",
    "load_network",
    "load_trades",
    "network_fingerprint",
    "parse_activations",
    "parse_trades",
    "refuse_unmodeled",
]
