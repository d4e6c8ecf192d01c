"""Operating points for network-constrained clearing: the AC state of an interval under extra bus
injections, and its limits linearized there.

A clearing that chooses volumes (``backend.market.optimal``) needs the grid as constraints:
every watched quantity ``q`` (a bus voltage against its upper and its lower limit, a branch end's
current against its element's loading limit) as ``value + sens @ (p - p_point) <= upper``, with
``p`` the extra injection per bus in kW. ``OperatingPoint`` gives that at the AC solution for the
injections asked (a full Newton solve on the validator's own model, ``ACModel.solve_checked``),
with sensitivities from the power-flow Jacobian there (``Linearization``: voltage magnitudes and
complex branch currents per injected kW; a current's magnitude is linearized along its phasor).
The limits are the validator's (``LimitSet``: "do no harm" where the base state already breaks
one), so a set of volumes inside every row at its own AC point is a set the validator approves
as a whole. Its verdicts are still per trade, in priority order; the clearing orders its trades
for that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from grid.acmodel import ACModel, Linearization, Measures
from grid.errors import TradeInputError
from grid.limits import LimitSet, Violation

# Directions (radians from the branch current's phasor at the operating point) of the tangent cuts
# that stand for ``|current| <= limit`` around a point: the phasor's own direction, its reverse
# (a flow that turns round) and the two across it. Tangents contain the circle, so a clearing that
# keeps the cuts of every point it visited closes in on the circle from outside (Kelley's
# cutting planes): each AC solve adds the cut at the phasor it finds.
CUT_ANGLES = (0.0, np.pi / 2, np.pi, -np.pi / 2)
# Islanded: the master's power rows are tightened by this by default (kW; its AC check has
# none).
BALANCE_MARGIN_KW = 0.1


@dataclass(frozen=True)
class OperatingPoint:
    """An AC solution of the interval with extra injections ``injections_kw`` at ``buses``, and the
    validator's limits linearized there.

    Voltages: ``vm_pu`` (monitored buses, order of ``Monitored``), sensitivities ``dvm`` (pu per kW
    injected at each of ``buses``) and the effective limits ``vmin``/``vmax``. Branch ends
    (``[from | to]`` rows with a rating): complex currents ``current`` in percent of their
    element's rating, ``dcurrent`` per kW, and the element's limit ``lmax``. ``violation``: the
    validator's first violation at this point (None: feasible as a whole)."""

    buses: tuple[int, ...]
    injections_kw: np.ndarray
    bus_labels: tuple[str, ...]
    vm_pu: np.ndarray
    dvm: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    end_labels: tuple[str, ...]
    current: np.ndarray
    dcurrent: np.ndarray
    lmax: np.ndarray
    violation: Violation | None
    loading_percent: np.ndarray
    V: np.ndarray
    predicted: bool = False  # a first-order guess (``predict``), not an AC solution
    # Islanded: the master unit's power (kW, + injects), its sensitivities (kW per kW injected
    # at each of ``buses``: about -1, the losses aside) and its limits; None when grid-connected.
    forming_kw: float | None = None
    dforming: np.ndarray | None = None
    forming_limits_kw: tuple[float, float] = (-np.inf, np.inf)

    @property
    def feasible(self) -> bool:
        return self.violation is None

    def predict(self, delta_kw: Mapping[int, float], buses: Sequence[int]) -> OperatingPoint:
        """A first-order guess of the point with ``delta_kw`` more at some of this point's
        ``buses`` (a trade on top of a set): voltages and currents moved along this point's
        sensitivities, which it keeps, for ``buses`` (all among this point's). No AC solve:
        ``violation`` None, ``loading_percent`` and ``V`` this point's, ``predicted`` True - a
        start for a linear search, never an answer."""
        col = {b: k for k, b in enumerate(self.buses)}
        moved = [col[int(b)] for b in delta_kw]
        d = np.array([float(v) for v in delta_kw.values()])
        keep = [col[int(b)] for b in buses]
        injections = self.injections_kw.copy()
        injections[moved] += d
        return OperatingPoint(
            buses=tuple(int(b) for b in buses),
            injections_kw=injections[keep],
            bus_labels=self.bus_labels,
            vm_pu=self.vm_pu + self.dvm[:, moved] @ d,
            dvm=self.dvm[:, keep],
            vmin=self.vmin,
            vmax=self.vmax,
            end_labels=self.end_labels,
            current=self.current + self.dcurrent[:, moved] @ d,
            dcurrent=self.dcurrent[:, keep],
            lmax=self.lmax,
            violation=None,
            loading_percent=self.loading_percent,
            V=self.V,
            predicted=True,
            forming_kw=None
            if self.forming_kw is None or self.dforming is None
            else self.forming_kw + float(self.dforming[moved] @ d),
            dforming=None if self.dforming is None else self.dforming[keep],
            forming_limits_kw=self.forming_limits_kw,
        )

    def constraints(
        self,
        reach_kw: np.ndarray,
        margin_pu: float,
        margin_percent: float,
        margin_kw: float = BALANCE_MARGIN_KW,
    ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """``A p <= b`` (``p``: extra injections in kW at ``buses``): the limits, tightened by the
        margins, linearized here - only those some ``p`` within ``reach_kw[k]`` of this point's
        injections could reach. Voltages give one row per limit; a branch end's current gives
        its ``CUT_ANGLES`` tangent cuts. Row labels name the element (``bus 16 high``,
        ``line 3``); the last array marks the cuts (True), which stay valid away from this point
        (tangents of a circle contain it) while voltage rows are only good near it."""
        p0 = self.injections_kw
        rows: list[np.ndarray] = []
        rhs: list[np.ndarray] = []
        labels: list[str] = []
        spread_v = np.abs(self.dvm) @ reach_kw
        for sign, value, limit, tag in (
            (1.0, self.vm_pu, self.vmax - margin_pu, "high"),
            (-1.0, -self.vm_pu, -(self.vmin + margin_pu), "low"),
        ):
            near = np.flatnonzero(value + spread_v >= limit)
            if len(near):
                a = sign * self.dvm[near]
                rows.append(a)
                rhs.append(limit[near] - value[near] + a @ p0)
                labels.extend(f"{self.bus_labels[k]} {tag}" for k in near)
        limit_l = self.lmax - margin_percent
        spread_i = np.abs(self.dcurrent) @ reach_kw
        near = np.flatnonzero(np.abs(self.current) + spread_i >= limit_l)
        if len(near):
            z = self.current[near]
            phase = np.exp(1j * np.angle(z))
            D = self.dcurrent[near]
            for angle in CUT_ANGLES:
                u = np.conj(phase * np.exp(1j * angle))  # project onto this direction
                a = (u[:, None] * D).real
                rows.append(a)
                rhs.append(limit_l[near] - (u * z).real + a @ p0)
                labels.extend(self.end_labels[k] for k in near)
        if not rows and self.forming_kw is None:
            return np.zeros((0, len(self.buses))), np.zeros(0), [], np.zeros(0, bool)
        n_cuts = len(CUT_ANGLES) * len(near) if len(near) else 0
        is_cut = np.r_[np.zeros(len(labels) - n_cuts, bool), np.ones(n_cuts, bool)]
        if self.forming_kw is not None and self.dforming is not None:
            # Islanded: the master's power within its limits, both ways (not cuts).
            low, high = self.forming_limits_kw
            a = self.dforming[None, :]
            rows += [a, -a]
            rhs += [
                np.array([high - margin_kw - self.forming_kw + float(a[0] @ p0)]),
                np.array([-(low + margin_kw) + self.forming_kw - float(a[0] @ p0)]),
            ]
            labels += ["island high", "island low"]
            is_cut = np.r_[is_cut, False, False]
        return np.vstack(rows), np.concatenate(rhs), labels, is_cut


def operating_point(
    model: ACModel,
    base: Measures,
    limitset: LimitSet,
    injections_kw: Mapping[int, float],
    buses: Sequence[int],
    start: np.ndarray | None = None,
) -> OperatingPoint | None:
    """The AC solution of the base state plus ``injections_kw`` (pandapower bus -> kW), linearized
    with sensitivity columns for ``buses`` (none: no Jacobian is built); None when that flow has
    no plausible solution.
    ``start``: voltages to start Newton from (default: the base state's)."""
    for bus in (*injections_kw, *buses):
        if int(bus) not in model.ppci_of_bus:
            raise TradeInputError(f"bus {int(bus)} is not in the network")
    S = model.Sbus0 + model.injection({int(b): float(p) for b, p in injections_kw.items()})
    with np.errstate(all="ignore"):
        V = model.solve_checked(S, base.V if start is None else start, base.V)
    if isinstance(V, Violation):
        return None
    me = model.measure(V)
    cols = [int(b) for b in buses]
    lay = model.layout
    packed = np.empty((lay.size, len(cols)), dtype=complex)
    if cols:  # no buses: the state alone, no Jacobian
        lin = Linearization(model, V)  # the Jacobian at V itself (a solver's last may be stale)
        lin.prepare(cols)
        for k, bus in enumerate(cols):
            packed[:, k] = lin.column(bus).packed
    balance = limitset.balance
    forming_kw: float | None = None
    dforming: np.ndarray | None = None
    short: Violation | None = None  # the master's limits, checked before the voltages
    if balance is not None:
        # The master's power and, from the voltage columns, its change per kW injected:
        # Re(V_ref conj(Y_ref dV)) with the slack's own voltage fixed, less the kW injected at
        # its own bus (the master gives that much less).
        forming_kw = balance.power_kw(model.Ybus, S, V, model.base_mva)
        flows = np.asarray(model.Ybus[balance.ref] @ packed[lay.V]).ravel()
        own = np.array([float(model.ppci_of_bus[b] == balance.ref) for b in cols])
        dforming = (V[balance.ref] * np.conj(flows)).real * model.base_mva * 1000.0 - own
        short = balance.check(forming_kw)
    c_i = model.c_i
    ends = np.flatnonzero(c_i > 0)  # a three-winding transformer's star ends carry no limit
    element = np.r_[model.element_of_row, model.element_of_row][ends]
    branch_labels = limitset.branch_labels
    return OperatingPoint(
        buses=tuple(cols),
        injections_kw=np.array([float(injections_kw.get(b, 0.0)) for b in cols]),
        bus_labels=tuple(limitset.bus_labels),
        vm_pu=me.vm_pu,
        dvm=packed[lay.vm].real,
        vmin=limitset.vmin,
        vmax=limitset.vmax,
        end_labels=tuple(branch_labels[e] for e in element),
        current=c_i[ends] * me.i[ends],
        dcurrent=c_i[ends, None] * packed[lay.i][ends],
        lmax=limitset.lmax[element],
        violation=short or limitset.check(me.vm_pu, me.loading_percent),
        loading_percent=me.loading_percent,
        V=V,
        forming_kw=forming_kw,
        dforming=dforming,
        forming_limits_kw=(
            (balance.low_kw, balance.high_kw) if balance is not None else (-np.inf, np.inf)
        ),
    )
