"""What the Neural Grid validator answers: base-state summaries, validation results with their
statistics, hosting capacity and the dashboard's AC status (frozen dataclasses with ``to_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from grid.verdicts import Reason, Verdict


@dataclass(frozen=True)
class BaseStateSummary:
    """The base state of one interval (or the network's own values when ``interval`` is None)."""

    network: str
    interval: int | None
    interval_seconds: int
    hour_of_day: float | None
    converged: bool
    buses: int
    vm_min_pu: float | None
    vm_min_bus: int | None
    vm_max_pu: float | None
    vm_max_bus: int | None
    losses_kw: float | None
    max_line_loading_percent: float | None
    max_trafo_loading_percent: float | None
    load_kw: float
    pv_kw: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ValidationStats:
    """How the answer was reached (for benchmarks and curiosity, not part of the evidence)."""

    trades: int = 0
    screened_in: int = 0
    screened_out: int = 0
    ac_solves: int = 0
    batch_fallbacks: int = 0
    linearizations: int = 0
    reused_trades: int = 0  # leading trades whose work was reused from an earlier validate
    resolves: int = 0  # AC solves repeated from the accepted state or a flat start


@dataclass(frozen=True)
class ValidationResult:
    """Verdicts in input order, the evidence hash and the AC state of base + approved trades."""

    network: str
    fingerprint: str
    interval: int | None
    verdicts: list[Verdict]
    evidence_hash: str
    converged: bool
    vm_min_pu: float | None
    vm_max_pu: float | None
    max_line_loading_percent: float | None
    max_trafo_loading_percent: float | None
    stats: ValidationStats = field(default_factory=ValidationStats)
    # The activations' verdicts, in their order: all approved (applied before the trades) or
    # all refused with the violation of their set (left out).
    activation_verdicts: list[Verdict] = field(default_factory=list)

    @property
    def activations_applied(self) -> bool:
        return bool(self.activation_verdicts) and all(v.approved for v in self.activation_verdicts)

    @property
    def approved_ids(self) -> list[str]:
        return [v.id for v in self.verdicts if v.approved]

    def to_dict(self) -> dict[str, object]:
        return {
            "network": self.network,
            "fingerprint": self.fingerprint,
            "interval": self.interval,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "approved": sum(v.approved for v in self.verdicts),
            "vetoed": sum(not v.approved for v in self.verdicts),
            "vm_min_pu": self.vm_min_pu,
            "vm_max_pu": self.vm_max_pu,
            "max_line_loading_percent": self.max_line_loading_percent,
            "max_trafo_loading_percent": self.max_trafo_loading_percent,
            "evidence_hash": self.evidence_hash,
            **(
                {"activation_verdicts": [v.to_dict() for v in self.activation_verdicts]}
                if self.activation_verdicts
                else {}
            ),
        }


@dataclass(frozen=True)
class HostingLimit:
    """Largest power in one direction and the constraint that binds just beyond it.

    ``reason`` is None when no limit bound up to the search ceiling
    (``grid.hosting.HOSTING_MAX_KW``)."""

    p_kw: float
    reason: Reason | None
    element: str
    value: float | None
    limit: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "p_kw": self.p_kw,
            "binding": None if self.reason is None else self.reason.name,
            "element": self.element,
            "value": None if self.value is None else round(self.value, 6),
            "limit": None if self.limit is None else round(self.limit, 6),
        }


@dataclass(frozen=True)
class HostingCapacity:
    """Plug-and-play capacity at a bus: export (injection) and import (withdrawal), AC-bisected."""

    network: str
    bus: int
    interval: int | None
    max_export: HostingLimit
    max_import: HostingLimit

    def to_dict(self) -> dict[str, object]:
        return {
            "network": self.network,
            "bus": self.bus,
            "interval": self.interval,
            "export_kw": self.max_export.p_kw,
            "export": self.max_export.to_dict(),
            "import_kw": self.max_import.p_kw,
            "import": self.max_import.to_dict(),
        }


@dataclass(frozen=True)
class GridStatus:
    """AC state for a dashboard: per-element values in pandapower index order (three-winding
    transformers apart from the two-winding ones)."""

    network: str
    interval: int | None
    converged: bool
    buses: list[int]
    vm_pu: list[float]
    lines: list[int]
    line_loading_percent: list[float]
    trafos: list[int]
    trafo_loading_percent: list[float]
    trafo3ws: list[int] = field(default_factory=list)
    trafo3w_loading_percent: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EnergyBalance:
    """Where the power of one AC state comes from and goes (kW, positive numbers).

    ``grid_kw`` is what the external grid (the slack) delivers into the network, negative when
    the network feeds back; ``generation_kw`` every local injection (PV sgens, the sellers' side
    of the trades), ``consumption_kw`` every local withdrawal (loads, the buyers' side),
    ``losses_kw`` the lines' and transformers' losses of the power flow. Power balance:
    ``grid_kw + generation_kw = consumption_kw + losses_kw`` (up to the solver's tolerance)."""

    network: str
    interval: int | None
    converged: bool
    grid_kw: float
    generation_kw: float
    consumption_kw: float
    losses_kw: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class NetworkFacts:
    """What a network has to watch, and what in its data looks wrong.

    ``placeholder_lines``: in-service lines whose thermal rating is a placeholder (see
    ``grid.networks.placeholder_line_ratings``): their loading can never bind. ``warnings``: one
    readable sentence per such finding."""

    network: str
    lines: int
    trafos: int
    placeholder_lines: list[int]
    warnings: list[str]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
