"""Fast AC re-solves and linear sensitivities on pandapower's own internal model (net._ppc).

After a pandapower ``runpp`` of the base state, ``ACModel`` keeps pandapower's internal admittance
matrices, injections and voltages and re-solves Newton-Raphson with lightsim2grid's KLU solver from
a warm start (tens of microseconds instead of a ~15 ms ``runpp``). Branch loadings use pandapower's
own formulas (lines: current over ``max_i_ka * df * parallel``; transformers:
``trafo_loading="current"``), so the numbers are pandapower's. ``Linearization`` gives, per
injection bus, voltage-magnitude and complex branch-current sensitivities from the power-flow
Jacobian at an operating point; its LU factorization is KLU's where lightsim2grid's library
exports it (``grid.klu``), SciPy's SuperLU otherwise.

One module on purpose (~520 lines): the model, the kept lightsim2grid grid it solves through and the
linearization all work on the same pandapower-internal (ppci) indexing and matrices."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandapower as pp
from lightsim2grid.network import init_from_pandapower
from pandapower.pypower.dSbus_dV import dSbus_dV
from pandapower.pypower.idx_brch import F_BUS, T_BUS
from pandapower.pypower.idx_bus import BASE_KV, SL_FAC
from scipy import sparse

from grid.errors import UnmodeledElementError
from grid.klu import factorize
from grid.limits import NOT_CONVERGED, Monitored, Violation
from grid.networks import quiet
from grid.verdicts import Reason

try:
    from lightsim2grid.algorithm import NRSing_KLU as _Solver
except ImportError:  # pragma: no cover - KLU is part of the lightsim2grid wheels
    from lightsim2grid.algorithm import NRSing_SparseLU as _Solver

MAX_ITERATIONS = 20
# From this many buses on, solves go through a kept lightsim2grid grid model (see _KeptGrid;
# ~half the cost per solve on kerber_vorstadt's 294 buses; on cigre_lv and case33bw the plain
# solver's per-call reset costs less than the model's bookkeeping). None: never.
KEPT_GRID_MIN_BUSES: int | None = 150
# Size of one multi-column solve (rows x right-hand sides). OpenBLAS runs a level-3 call on its
# thread pool once m*n*k passes ~2.6e5; with more columns per solve SuperLU's supernode updates
# on kerber_vorstadt crossed that, and the pool's spinning threads then slowed every later solve
# several-fold on a busy 2-core machine.
RHS_BUDGET = 8192
TOLERANCE_PU = 1e-9
# Relative difference (to the largest entry) up to which the solver's Jacobian counts as
# ``jacobian_at``'s at the solution: it is taken one Newton step earlier (case_ieee30: 5e-8).
JACOBIAN_ORDER_TOL = 1e-4
# lightsim2grid keeps an injection's old setpoint when the new one differs by no more than its
# _tol_equal_float (1e-7 MW here; rounding noise of ``Sbus - Sbus0`` is ~1e-18): such a change is
# written through a distant value, else the kept model's answer would depend on earlier solves.
_IGNORED_CHANGE_MW = 1e-6
# A converged solution with a bus voltage outside this range (pu) is not believed: no
# distribution or transmission grid operates there, while the spurious low-voltage solutions
# Newton can reach from a poor start sit there (one bus at 0.019 pu on example_multivoltage).
VM_PLAUSIBLE_PU = (0.5, 1.5)
# A solution reached from a prediction that moves some bus voltage by more than this (pu,
# complex) from the last accepted state is re-solved from that state (whose answer is then taken
# if plausible). The width of the default voltage band (0.9-1.1 pu): a magnitude moving further
# than that from an accepted state ends outside the band, so the verdict is a veto in any case,
# and angles move that far (11 degrees) only under transfers far beyond a feeder's. A real
# change that large costs one more solve; a spurious solution is not believed.
JUMP_PU = 0.2


# Element tables whose in-service rows the AC model does not reproduce: pandapower solves these
# FACTS devices and DC grids with extensions of its own Newton-Raphson (extra state variables,
# controlled setpoints) that are not in the admittance matrix and injections the model re-solves.
# Measured against ``runpp`` with a 700 kW trade on a 20 kV feeder: an svc changed the answer by
# 1.2e-3 pu and 5 % line loading, an ssc by 7.5e-3 pu and 21 %. Everything else pandapower's
# ``runpp`` takes in (gen, sgen, load, motor, storage, asymmetric loads and sgens counted
# balanced, shunt, ward, xward, impedance, dcline as its two generators, switches, trafo,
# trafo3w) is in that matrix and those injections: the same answer within 5e-7 pu.
UNMODELED_ELEMENTS: dict[str, str] = {
    "svc": "static var compensator",
    "ssc": "static synchronous compensator",
    "tcsc": "thyristor-controlled series capacitor",
    "vsc": "voltage source converter",
    "bus_dc": "DC bus",
    "line_dc": "DC line",
}


def unmodeled_elements(net: pp.pandapowerNet) -> dict[str, int]:
    """In-service rows per element table the AC model does not reproduce (none: empty)."""
    found: dict[str, int] = {}
    for table in UNMODELED_ELEMENTS:
        frame = net.get(table)
        if frame is None or len(frame) == 0:
            continue
        count = int(frame["in_service"].astype(bool).sum()) if "in_service" in frame else len(frame)
        if count:
            found[table] = count
    return found


def refuse_unmodeled(net: pp.pandapowerNet, name: str) -> None:
    """Raise ``UnmodeledElementError`` naming each such element table and its count: a verdict
    that ignored them would be about another network."""
    found = unmodeled_elements(net)
    if found:
        listed = ", ".join(
            f"{count} {table} ({UNMODELED_ELEMENTS[table]})" for table, count in found.items()
        )
        raise UnmodeledElementError(
            f"network {name!r} has in-service elements the Neural Grid validator does not "
            f"model: {listed}; take them out of service or use another network"
        )


@dataclass
class Measures:
    """Monitored quantities of one AC solution (order of ``Monitored``)."""

    V: np.ndarray
    vm_pu: np.ndarray
    loading_percent: np.ndarray
    i: np.ndarray  # branch currents [from ends | to ends]


class ACModel:
    """pandapower's internal model of a solved net, for warm-started AC re-solves."""

    def __init__(self, net: pp.pandapowerNet) -> None:
        ppc = net._ppc
        internal = ppc["internal"]
        self.base_mva = float(internal["baseMVA"])
        self.Ybus = sparse.csc_matrix(internal["Ybus"])
        self.Ybus.sum_duplicates()
        self.Sbus0 = np.asarray(internal["Sbus"], dtype=complex).copy()
        self.V0 = np.asarray(internal["V"], dtype=complex).copy()
        self.ref = np.asarray(internal["ref"], dtype=np.int32)
        self.pv = np.asarray(internal["pv"], dtype=np.int32)
        self.pq = np.asarray(internal["pq"], dtype=np.int32)
        # The angle unknowns of every Jacobian here, in lightsim2grid's order: by bus, PV and PQ
        # buses mixed (not PV buses first as pandapower's own Newton has them). The solver's
        # Jacobian is reused for linearizations (``last_jacobian``), so both must agree: read
        # as PV-first, it gave permuted sensitivities on case_ieee30 (screen errors up to 99
        # times their bands, three false accepts of ``tegrid bench grid``). Without PV buses the
        # two orders are the same.
        self.pvpq = np.sort(np.r_[self.pv, self.pq])
        bus_ppci = internal["bus"]
        self.slack_weights = np.asarray(bus_ppci[:, SL_FAC], dtype=float).copy()
        if not np.any(self.slack_weights > 0):
            self.slack_weights[self.ref] = 1.0 / len(self.ref)
        n_ppci = bus_ppci.shape[0]
        self.n_ppci = n_ppci

        lookup = np.asarray(net._pd2ppc_lookups["bus"])
        self.ppci_of_bus: dict[int, int] = {}
        for bus, in_service in zip(net.bus.index, net.bus["in_service"], strict=True):
            pos = int(lookup[int(bus)]) if int(bus) < len(lookup) else -1
            if in_service and 0 <= pos < n_ppci:
                self.ppci_of_bus[int(bus)] = pos
        mon_buses = np.array(sorted(self.ppci_of_bus), dtype=np.int64)
        self.mon_bus_ppci = np.array([self.ppci_of_bus[int(b)] for b in mon_buses], dtype=np.int64)
        self.mon_index = _as_slice(self.mon_bus_ppci)  # a plain slice where buses are not fused

        branch_is = np.asarray(internal["branch_is"], dtype=bool)
        ppci_row = np.cumsum(branch_is) - 1
        ranges = net._pd2ppc_lookups["branch"]
        branch = internal["branch"]
        rows: list[int] = []
        c_from: list[float] = []
        c_to: list[float] = []
        lines: list[int] = []
        trafos: list[int] = []
        sqrt3 = np.sqrt(3.0)
        if "line" in ranges:
            start, _ = ranges["line"]
            for j, (idx, row) in enumerate(net.line.iterrows()):
                r = start + j
                if not (row["in_service"] and branch_is[r]):
                    continue
                k = int(ppci_row[r])
                i_max_ka = row["max_i_ka"] * row["df"] * row["parallel"]
                kv_f = bus_ppci[int(branch[k, F_BUS].real), BASE_KV]
                kv_t = bus_ppci[int(branch[k, T_BUS].real), BASE_KV]
                rows.append(k)
                lines.append(int(idx))
                c_from.append(self.base_mva / (sqrt3 * kv_f) / i_max_ka * 100.0)
                c_to.append(self.base_mva / (sqrt3 * kv_t) / i_max_ka * 100.0)
        loading_by_current = net._options.get("trafo_loading", "current") == "current"
        if "trafo" in ranges:
            start, _ = ranges["trafo"]
            for j, (idx, row) in enumerate(net.trafo.iterrows()):
                r = start + j
                if not (row["in_service"] and branch_is[r]):
                    continue
                k = int(ppci_row[r])
                kv_f = bus_ppci[int(branch[k, F_BUS].real), BASE_KV]
                kv_t = bus_ppci[int(branch[k, T_BUS].real), BASE_KV]
                scale = self.base_mva / (row["sn_mva"] * row["parallel"] * row["df"]) * 100.0
                vn_hv = row["vn_hv_kv"] if loading_by_current else kv_f
                vn_lv = row["vn_lv_kv"] if loading_by_current else kv_t
                rows.append(k)
                trafos.append(int(idx))
                c_from.append(scale * vn_hv / kv_f)
                c_to.append(scale * vn_lv / kv_t)
        # A three-winding transformer is three branches through its star point (hv: hv bus ->
        # star, then star -> mv and star -> lv; pandapower keeps all hv rows, then the mv rows,
        # then the lv rows). Its loading is pandapower's: the largest of the three windings'
        # loadings, each the current at the winding's outer terminal over its rating. Each
        # winding is a row here with a zero coefficient at its star end; ``loading`` takes the
        # maximum over a transformer's rows.
        trafo3ws: list[int] = []
        trafo3w_first: list[int] = []
        if "trafo3w" in ranges:
            start, end = ranges["trafo3w"]
            n3 = (end - start) // 3
            for j, (idx, row) in enumerate(net.trafo3w.iterrows()):
                if not row["in_service"]:
                    continue
                first = len(rows)
                for w, side in enumerate(("hv", "mv", "lv")):
                    r = start + w * n3 + j
                    if not branch_is[r]:
                        continue  # a winding switched off carries nothing (pandapower: 0 %)
                    k = int(ppci_row[r])
                    outer = F_BUS if side == "hv" else T_BUS
                    kv = bus_ppci[int(branch[k, outer].real), BASE_KV]
                    vn = row[f"vn_{side}_kv"] if loading_by_current else kv
                    c = self.base_mva / row[f"sn_{side}_mva"] * vn / kv * 100.0
                    rows.append(k)
                    c_from.append(c if side == "hv" else 0.0)
                    c_to.append(0.0 if side == "hv" else c)
                if len(rows) > first:
                    trafo3ws.append(int(idx))
                    trafo3w_first.append(first)
        self.monitored = Monitored(
            mon_buses,
            np.array(lines, np.int64),
            np.array(trafos, np.int64),
            np.array(trafo3ws, np.int64),
        )
        row_idx = np.array(rows, dtype=np.int64)
        Yf = sparse.csr_matrix(internal["Yf"])[row_idx]
        Yt = sparse.csr_matrix(internal["Yt"])[row_idx]
        self.c_from = np.array(c_from, dtype=float)
        self.c_to = np.array(c_to, dtype=float)
        self.c_i = np.r_[self.c_from, self.c_to]
        self.Yi = sparse.vstack([Yf, Yt]).tocsr()
        self.n_branch = len(rows)  # branch rows (three per three-winding transformer)
        # Rows from here on belong to three-winding transformers, each starting at its entry.
        self._n_two_end = trafo3w_first[0] if trafo3w_first else self.n_branch
        self._trafo3w_starts = np.array(trafo3w_first, np.int64) - self._n_two_end
        # The watched element (order of ``Monitored``) of every branch row.
        self.element_of_row = self._per_element_index()
        # Percent of each element's rating per pu current (the largest of its rows' ends).
        self.c_element = self._per_element(np.maximum(self.c_from, self.c_to))
        # Voltage setpoints of the slack and generator (PV) buses: every solve starts there.
        self.fixed = np.r_[self.ref, self.pv].astype(np.int64)
        self.vm_fixed = np.abs(self.V0[self.fixed])
        # A flat start: 1 pu (setpoints at slack and PV buses), the base state's angles.
        self.V_flat = self.V0 / np.abs(self.V0)
        self.V_flat[self.fixed] *= self.vm_fixed
        self.layout = Layout(len(self.mon_bus_ppci), n_ppci, self.n_branch)
        self._solver = _Solver()
        self._kept: _KeptGrid | None = None
        self._lin_constants: _LinConstants | None = None
        self._jacobian_pattern: JacobianPattern | None = None
        self._bus_of_ppci: dict[int, int] | None = None
        self._last_kept = False
        self._plain_jacobian_ok: bool | None = None
        self.resolves = 0  # solves from a fallback start (``solve_checked``), for benchmarks
        if KEPT_GRID_MIN_BUSES is not None and n_ppci >= KEPT_GRID_MIN_BUSES:
            self._kept = _KeptGrid.build(net, self)

    def solve(self, Sbus: np.ndarray, V_start: np.ndarray) -> np.ndarray | None:
        """Newton-Raphson from ``V_start``; None when it does not converge.

        The magnitudes at the slack and PV buses are set to their setpoints first: Newton keeps
        a PV bus's start magnitude, and a predicted start is off there by a second-order amount
        (a rotation ``V (1 + j dVa)`` lengthens ``V``), which would solve with shifted setpoints."""
        V_start = self.with_setpoints(V_start)
        if self._kept is not None:
            V = self._kept.solve(Sbus, V_start)
            if V is not None or self._kept.answered:
                self._last_kept = True
                return V
        self._last_kept = False
        return self._solve_plain(Sbus, V_start)

    def with_setpoints(self, V: np.ndarray) -> np.ndarray:
        """``V`` with the slack and PV buses at their voltage setpoints (angles kept); ``V``
        itself where it is there already."""
        fixed = self.fixed
        vm = np.abs(V[fixed])
        if np.array_equal(vm, self.vm_fixed):
            return V
        out = V.copy()
        out[fixed] *= self.vm_fixed / vm
        return out

    def solve_checked(
        self, Sbus: np.ndarray, V_start: np.ndarray, V_accepted: np.ndarray
    ) -> np.ndarray | Violation:
        """A converged and plausible AC solution, or the ``Violation`` that vetoes instead.

        Newton from ``V_start`` (normally a prediction); when that does not converge, lands
        outside ``VM_PLAUSIBLE_PU`` at some bus or moves a voltage by more than ``JUMP_PU``
        from ``V_accepted`` (the last accepted state), it is solved again from ``V_accepted``,
        then from a flat start (the start of a fresh ``runpp``), and the first plausible answer
        is taken. A Newton iteration started far from the operating point can converge to
        another, low-voltage solution of the same equations; believing it would veto (or
        approve) on a state the grid cannot reach. No plausible answer: ``NOT_CONVERGED``,
        naming the bus furthest outside the plausible range when a solution was found."""
        implausible: Violation | None = None
        starts = (V_start, V_accepted, self.V_flat)
        for n, start in enumerate(starts):
            if n > 0:
                if start is starts[n - 1]:
                    continue
                self.resolves += 1
            V = self.solve(Sbus, start)
            if V is None:
                continue
            bad = self.implausible(V)
            if bad is not None:
                implausible = implausible or bad
                continue
            if n == 0 and start is not V_accepted and self.jump_pu(V, V_accepted) > JUMP_PU:
                continue
            return V
        return implausible or NOT_CONVERGED

    def implausible(self, V: np.ndarray) -> Violation | None:
        """``NOT_CONVERGED`` at the bus furthest outside ``VM_PLAUSIBLE_PU``, or None."""
        vm = np.abs(V)
        low, high = VM_PLAUSIBLE_PU
        excess = np.maximum(low - vm, vm - high)
        k = int(np.argmax(excess))
        if excess[k] <= 0:
            return None
        return Violation(
            Reason.NOT_CONVERGED, self.bus_label(k), float(vm[k]), low if vm[k] < low else high
        )

    def bus_label(self, ppci: int) -> str:
        """``bus <pandapower index>``, or the internal bus's position where it is none (the
        star point of a three-winding transformer, the inner bus of an extended ward)."""
        if self._bus_of_ppci is None:
            self._bus_of_ppci = {p: b for b, p in sorted(self.ppci_of_bus.items(), reverse=True)}
        bus = self._bus_of_ppci.get(ppci)
        return f"bus {bus}" if bus is not None else f"internal bus {ppci}"

    @staticmethod
    def jump_pu(V: np.ndarray, V_from: np.ndarray) -> float:
        """Largest change of a complex bus voltage (pu)."""
        return float(np.max(np.abs(V - V_from), initial=0.0))

    def _solve_plain(self, Sbus: np.ndarray, V_start: np.ndarray) -> np.ndarray | None:
        try:
            self._solver.solve(
                self.Ybus,
                V_start,
                Sbus,
                self.ref,
                self.slack_weights,
                self.pv,
                self.pq,
                MAX_ITERATIONS,
                TOLERANCE_PU,
            )
        except RuntimeError:
            return None
        if not self._solver.converged():
            return None
        V = self._solver.get_Vm() * np.exp(1j * self._solver.get_Va())
        if not np.all(np.isfinite(V)):
            return None
        return np.asarray(V)

    def jacobian_pattern(self) -> JacobianPattern:
        """The Jacobian's entries' places (``JacobianPattern``, built once)."""
        if self._jacobian_pattern is None:
            self._jacobian_pattern = JacobianPattern(self)
        return self._jacobian_pattern

    def linearization_constants(self) -> _LinConstants:
        """Index sets every ``Linearization`` of this model uses (built once)."""
        if self._lin_constants is None:
            pvpq = self.pvpq
            row_of_ppci = np.full(self.n_ppci, -1, dtype=np.int64)
            row_of_ppci[pvpq] = np.arange(len(pvpq))
            self._lin_constants = _LinConstants(
                pvpq,
                # Plain slices where the index sets are ranges (radial feeders: slack at bus 0).
                _as_slice(pvpq),
                _as_slice(self.pq),
                row_of_ppci,
                Column(np.zeros(self.layout.size, complex)),
            )
        return self._lin_constants

    def _plain_jacobian(self) -> sparse.csc_matrix | None:
        try:
            J = self._solver.get_J()
        except (RuntimeError, ValueError):
            return None
        return J if isinstance(J, sparse.csc_matrix) else sparse.csc_matrix(J)

    def last_jacobian(self) -> sparse.csc_matrix | None:
        """The solver's Jacobian from its last Newton step (close to the solution of the last
        solve); None when the solver's unknowns are not in ``jacobian_at``'s order (checked
        once, on the first Jacobian: a Linearization then builds its own)."""
        if self._last_kept:
            return self._kept.jacobian() if self._kept is not None else None
        J = self._plain_jacobian()
        if J is None or self._plain_jacobian_ok is False:
            return None
        if self._plain_jacobian_ok is None:
            V = self._solver.get_Vm() * np.exp(1j * self._solver.get_Va())
            ref = jacobian_at(self, np.asarray(V))
            # J is taken one Newton step before the solution: equal up to that step's size. A
            # permuted order differs by the order of the entries themselves.
            self._plain_jacobian_ok = J.shape == ref.shape and float(
                abs(J - ref).max()
            ) <= JACOBIAN_ORDER_TOL * max(1.0, float(abs(ref).max()))
            if not self._plain_jacobian_ok:
                return None
        return J

    def measure(self, V: np.ndarray) -> Measures:
        i = self.Yi @ V
        return Measures(V, np.abs(V[self.mon_index]), self.loading(i), i)

    def loading(self, i: np.ndarray) -> np.ndarray:
        """Loading (percent) of every watched branch element (order of ``Monitored``) from
        packed branch-row currents ``[i_from | i_to]``."""
        scaled = np.abs(i) * self.c_i
        return self._per_element(np.maximum(scaled[: self.n_branch], scaled[self.n_branch :]))

    def _per_element(self, per_row: np.ndarray) -> np.ndarray:
        """Per-row values to per-element ones: the largest over a three-winding transformer's
        rows."""
        n = self._n_two_end
        if n == len(per_row):
            return per_row
        return np.r_[per_row[:n], np.maximum.reduceat(per_row[n:], self._trafo3w_starts)]

    def _per_element_index(self) -> np.ndarray:
        rows = np.arange(self.n_branch)
        two = self._n_two_end
        out = rows.copy()
        if two < self.n_branch:
            out[two:] = two + np.searchsorted(self._trafo3w_starts, rows[two:] - two, "right") - 1
        return out

    def injection(self, bus_p_kw: dict[int, float]) -> np.ndarray:
        """Extra bus injections (pandapower bus -> kW, + injects) as a ppci Sbus vector in pu."""
        delta = np.zeros(self.n_ppci, dtype=complex)
        for bus, p_kw in bus_p_kw.items():
            delta[self.ppci_of_bus[bus]] += p_kw / 1000.0 / self.base_mva
        return delta


class _KeptGrid:
    """lightsim2grid's own grid model of the base state, kept between solves.

    The plain solver object is reset (KLU analysed again) on every call, which is most of its
    cost on a few hundred buses; the grid model keeps its solver and only refactorizes. Trades
    change bus injections through one zero static generator per bus. Used only where it
    reproduces pandapower's model: same buses one to one, the base state's voltages and a test
    solve equal to the plain solver's (checked when built), real-power-only changes.

    Its answers are a function of (Sbus, V_start) alone, bit for bit, as prefix reuse needs:
    every injection is set exactly (``_inject``), and KLU's pivot order is always the one of
    ``prime`` (refactorizations keep it; a failed solve would have the next one choose anew)."""

    def __init__(
        self, grid: object, model: ACModel, ls_of_ppci: np.ndarray, sgens: np.ndarray, n_ls: int
    ) -> None:
        self.grid = grid
        self.model = model
        self.ls_of_ppci = _as_slice(ls_of_ppci)  # a plain slice where the bus orders agree
        self.sgens = sgens
        self.n_ls = n_ls
        self.p_mw = np.zeros(model.n_ppci)
        self.answered = False
        self.jacobian_ok = False
        self.iterations = 0
        self.failed = False

    @classmethod
    def build(cls, net: pp.pandapowerNet, model: ACModel) -> _KeptGrid | None:
        try:
            ppci = np.array(list(model.ppci_of_bus.values()), dtype=np.int64)
            if len(set(ppci.tolist())) != model.n_ppci or len(ppci) != model.n_ppci:
                return None  # buses fused or dropped by pandapower: no one-to-one map
            work = copy.deepcopy(net)
            position = {int(b): i for i, b in enumerate(work.bus.index)}
            ls_of_ppci = np.empty(model.n_ppci, dtype=np.int64)
            sgens = np.empty(model.n_ppci, dtype=np.int64)
            first = len(work.sgen)
            items = list(model.ppci_of_bus.items())
            for k, (bus, row) in enumerate(items):
                ls_of_ppci[row] = position[bus]
                sgens[row] = first + k
            with quiet():
                # one vectorized call: a create_sgen per bus cost ~0.5 s per base state on
                # kerber_vorstadt (pandas row inserts), and the market builds one per interval
                pp.create_sgens(
                    work, [bus for bus, _ in items], p_mw=0.0, name="tegrid kept-grid injection"
                )
                grid = init_from_pandapower(work)
            kept = cls(grid, model, ls_of_ppci, sgens, len(work.bus))
            base = kept.solve(model.Sbus0, model.V0)
            if base is None or float(np.max(np.abs(base - model.V0))) > 1e-8:
                return None
            test = model.Sbus0.copy()
            pq = model.pq[len(model.pq) // 2] if len(model.pq) else 0
            test[pq] -= 0.01 / model.base_mva  # 10 kW more load mid-feeder
            got, want = kept.solve(test, model.V0), model._solve_plain(test, model.V0)
            if got is None or want is None or float(np.max(np.abs(got - want))) > 1e-8:
                return None
            J = kept.jacobian()
            J_ref = model._plain_jacobian()
            kept.jacobian_ok = (
                J is not None
                and J_ref is not None
                and J.shape == J_ref.shape
                and float(abs(J - J_ref).max()) <= 1e-6 * max(1.0, float(abs(J_ref).max()))
            )
            return kept if kept.prime() else None
        except Exception:  # any trouble converting: the plain solver does the work
            return None

    def solve(self, Sbus: np.ndarray, V_start: np.ndarray) -> np.ndarray | None:
        """Converged voltages, or None; ``answered`` says whether this model gave the answer
        (False: the plain solver must)."""
        model = self.model
        self.answered = False
        delta = Sbus - model.Sbus0
        if delta.imag.any():
            return None  # reactive changes: not what the injections carry
        self.answered = True
        if self.failed:
            self.prime()
        self._inject(delta.real * model.base_mva)
        V_init = np.ones(self.n_ls, dtype=complex)
        V_init[self.ls_of_ppci] = V_start
        out = self._ac_pf(V_init)
        self.failed = out is None
        return out

    def _inject(self, p_mw: np.ndarray) -> None:
        """Set the extra injection of every bus (MW) to exactly ``p_mw``."""
        grid = self.grid
        for row in np.flatnonzero(p_mw != self.p_mw):
            sgen, p = int(self.sgens[row]), float(p_mw[row])
            if abs(p - self.p_mw[row]) <= _IGNORED_CHANGE_MW:
                grid.change_p_sgen(sgen, p + 1.0)  # type: ignore[attr-defined]
            grid.change_p_sgen(sgen, p)  # type: ignore[attr-defined]
        self.p_mw = p_mw

    def _ac_pf(self, V_init: np.ndarray) -> np.ndarray | None:
        try:
            V = self.grid.ac_pf(V_init, MAX_ITERATIONS, TOLERANCE_PU)  # type: ignore[attr-defined]
        except RuntimeError:
            return None
        self.iterations = int(self.grid.get_solver().get_nb_iter())  # type: ignore[attr-defined]
        if len(V) == 0:
            return None
        out = np.asarray(V)[self.ls_of_ppci]
        return out if bool(np.all(np.isfinite(out))) else None

    def prime(self) -> bool:
        """Put the solver in its canonical state: KLU analysed afresh, its pivot order taken
        from the first Jacobian of the base state solved from flat magnitudes. Later solves only
        refactorize with that order, so each answer depends on its own injections and start
        alone. Done when built and after every failed solve (lightsim2grid then analyses again
        at the next solve, which would take the order from that solve's Jacobian). True when
        the base state converged."""
        self.grid.tell_solver_need_reset()  # type: ignore[attr-defined]
        self._inject(np.zeros(self.model.n_ppci))
        V_init = np.ones(self.n_ls, dtype=complex)
        V0 = self.model.V0
        V_init[self.ls_of_ppci] = V0 / np.abs(V0)  # flat magnitudes, the transformers' shifts
        V = self._ac_pf(V_init)
        self.failed = False
        return V is not None and self.iterations > 0

    def jacobian(self) -> sparse.csc_matrix | None:
        """The Jacobian of the last solve's last Newton step; None when it took no step (the
        model would still hold the one of an earlier solve: answers would depend on history)."""
        if self.iterations == 0 or (not self.jacobian_ok and self.model._kept is self):
            return None
        try:
            J = sparse.csc_matrix(self.grid.get_J_solver())  # type: ignore[attr-defined]
        except (RuntimeError, ValueError):
            return None
        size = len(self.model.pv) + 2 * len(self.model.pq)
        if J.shape == (size + 1, size + 1):
            # The grid model solves for the slack's share too: one more row and column, the
            # column zero but in that row, so the leading block is the classic Jacobian.
            J = J[:size, :size].tocsc()
        return J


def _as_slice(index: np.ndarray) -> np.ndarray | slice:
    """``index`` as a slice when it is a contiguous ascending range (same elements, cheaper)."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


def jacobian_at(model: ACModel, V: np.ndarray) -> sparse.csc_matrix:
    """The Newton-Raphson Jacobian [[dP/dVa, dP/dVm], [dQ/dVa, dQ/dVm]] over (pv+pq, pq) at
    ``V`` (``dSbus_dV``'s formulas entry by entry on the model's fixed pattern:
    ``JacobianPattern``)."""
    return model.jacobian_pattern().at(model.Ybus, V)


def jacobian_by_slicing(model: ACModel, V: np.ndarray) -> sparse.csc_matrix:
    """``jacobian_at`` as pandapower's sparse products and slices build it (~30x slower: the
    reference its tests compare with)."""
    pvpq = model.pvpq
    pq = model.pq
    dS_dVm, dS_dVa = dSbus_dV(model.Ybus, V)
    dS_dVm = sparse.csr_matrix(dS_dVm)
    dS_dVa = sparse.csr_matrix(dS_dVa)
    j11 = dS_dVa[pvpq][:, pvpq].real
    j12 = dS_dVm[pvpq][:, pq].real
    j21 = dS_dVa[pq][:, pvpq].imag
    j22 = dS_dVm[pq][:, pq].imag
    return sparse.vstack([sparse.hstack([j11, j12]), sparse.hstack([j21, j22])]).tocsc()


class JacobianPattern:
    """Which entry of Ybus each Jacobian entry comes from, built once per model.

    With ``I = Ybus V`` and ``Vn = V / |V|``, pandapower's ``dSbus_dV`` is, entry by entry,
    ``dS/dVm[i, j] = V_i conj(Y_ij Vn_j) (+ conj(I_i) Vn_i on the diagonal)`` and
    ``dS/dVa[i, j] = j V_i conj(-Y_ij V_j) (I_i - Y_ii V_i on the diagonal)``: the Jacobian's
    blocks are the real and imaginary parts of those over the Ybus pattern, so one vector
    operation over Ybus's entries and a fixed permutation into CSC order build it (measured
    2.5 ms -> 0.07 ms on cigre_lv, the same for kerber_vorstadt's 3,508 entries: the sparse
    products and fancy slicing were most of an operating point's time). The values agree with
    the sliced products to the last bits of the floating-point operation order (<= 1e-12
    relative, ``tests/grid/test_operating.py``); every bus keeps its diagonal entry."""

    def __init__(self, model: ACModel) -> None:
        coo = model.Ybus.tocoo()
        n = model.Ybus.shape[0]
        r, c, y = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(complex)
        present = np.zeros(n, dtype=bool)
        present[r[r == c]] = True
        missing = np.flatnonzero(~present)
        self.r = np.r_[r, missing]
        self.c = np.r_[c, missing]
        self.y = np.r_[y, np.zeros(len(missing), dtype=complex)]
        self.diag = np.flatnonzero(self.r == self.c)
        self.diag_bus = self.r[self.diag]
        n_pvpq, n_pq = len(model.pvpq), len(model.pq)
        at_pvpq = np.full(n, -1, dtype=np.int64)
        at_pvpq[model.pvpq] = np.arange(n_pvpq)
        at_pq = np.full(n, -1, dtype=np.int64)
        at_pq[model.pq] = np.arange(n_pq)
        rows, cols, entry, part = [], [], [], []
        # part: 0 dS/dVa real, 1 dS/dVm real, 2 dS/dVa imag, 3 dS/dVm imag
        for k, (at_r, at_c, r0, c0) in enumerate(
            ((at_pvpq, at_pvpq, 0, 0), (at_pvpq, at_pq, 0, n_pvpq),
             (at_pq, at_pvpq, n_pvpq, 0), (at_pq, at_pq, n_pvpq, n_pvpq))
        ):  # fmt: skip
            e = np.flatnonzero((at_r[self.r] >= 0) & (at_c[self.c] >= 0))
            rows.append(at_r[self.r[e]] + r0)
            cols.append(at_c[self.c[e]] + c0)
            entry.append(e)
            part.append(np.full(len(e), k))
        size = n_pvpq + n_pq
        order = np.arange(1, sum(len(e) for e in entry) + 1, dtype=float)
        shape = (size, size)
        J0 = sparse.csc_matrix((order, (np.concatenate(rows), np.concatenate(cols))), shape=shape)
        J0.sort_indices()
        perm = J0.data.astype(np.int64) - 1
        self.entry = np.concatenate(entry)[perm]
        part_of = np.concatenate(part)[perm]
        self.parts = [np.flatnonzero(part_of == k) for k in range(4)]
        self.indices, self.indptr, self.shape = J0.indices, J0.indptr, shape

    def at(self, Ybus: sparse.csc_matrix, V: np.ndarray) -> sparse.csc_matrix:
        r, c, y, d, db = self.r, self.c, self.y, self.diag, self.diag_bus
        Ibus = Ybus @ V
        Vn = V / np.abs(V)
        dVm = V[r] * np.conj(y * Vn[c])
        dVm[d] = dVm[d] + np.conj(Ibus[db]) * Vn[db]
        inner = -(y * V[c])
        inner[d] = Ibus[db] - y[d] * V[db]
        dVa = (1j * V[r]) * np.conj(inner)
        data = np.empty(len(self.entry))
        e = self.entry
        va_re, vm_re, va_im, vm_im = self.parts
        data[va_re] = dVa[e[va_re]].real
        data[vm_re] = dVm[e[vm_re]].real
        data[va_im] = dVa[e[va_im]].imag
        data[vm_im] = dVm[e[vm_im]].imag
        return sparse.csc_matrix(
            (data, self.indices.copy(), self.indptr.copy()), shape=self.shape
        )


@dataclass(frozen=True)
class _LinConstants:
    pvpq: np.ndarray
    pvpq_index: np.ndarray | slice
    pq_index: np.ndarray | slice
    row_of_ppci: np.ndarray
    zero: Column


class Column:
    """Sensitivities to +1 kW injected at one bus (absorbed by the slack).

    ``packed`` holds them all in one complex vector ``[dvm | dV | di_from | di_to]`` (the parts
    are the slices of ``Layout``), so a screen combines two columns in one vector operation."""

    __slots__ = ("packed",)

    def __init__(self, packed: np.ndarray) -> None:
        self.packed = packed


class Layout:
    """Slices of the packed vector (see ``Column``) for one model."""

    def __init__(self, n_mon: int, n_ppci: int, n_branch: int) -> None:
        self.vm = slice(0, n_mon)
        self.V = slice(n_mon, n_mon + n_ppci)
        self.i = slice(n_mon + n_ppci, n_mon + n_ppci + 2 * n_branch)
        self.size = n_mon + n_ppci + 2 * n_branch


class Linearization:
    """Jacobian-based sensitivities at an operating point ``V``, computed per bus on demand."""

    def __init__(
        self, model: ACModel, V: np.ndarray, jacobian: sparse.csc_matrix | None = None
    ) -> None:
        """``jacobian`` may be the solver's own (at the last Newton step), else it is built at
        ``V``."""
        self.model = model
        self.V = V
        shared = model.linearization_constants()
        pvpq = shared.pvpq
        size = len(pvpq) + len(model.pq)
        if jacobian is None or jacobian.shape != (size, size) or jacobian.nnz == 0:
            jacobian = jacobian_at(model, V)
        self._lu = factorize(jacobian)
        self._n_pvpq = len(pvpq)
        self._pvpq_index = shared.pvpq_index
        self._pq_index = shared.pq_index
        self._row_of_ppci = shared.row_of_ppci
        self._vm = np.abs(V)
        self._cache: dict[int, Column] = {}
        self._zero = shared.zero

    def refine(self, Sbus: np.ndarray, V: np.ndarray) -> np.ndarray:
        """One chord Newton step from ``V`` towards the AC solution for ``Sbus``, with this
        linearization's factored Jacobian.

        From a linear prediction the step removes the second-order (loss, voltage-dependence)
        error: what is left is the step times the chord contraction (small while the Jacobian
        is close to the one at the solution)."""
        model = self.model
        mismatch = V * np.conj(model.Ybus @ V) - Sbus
        pvpq, pq = self._pvpq_index, self._pq_index
        dx = self._lu.solve(np.concatenate((mismatch[pvpq].real, mismatch[pq].imag)))
        va = np.arctan2(V.imag, V.real)
        vm = np.abs(V)
        va[pvpq] -= dx[: self._n_pvpq]
        vm[pq] -= dx[self._n_pvpq :]
        # PV magnitudes back at their setpoints: the linear prediction lengthened them.
        return model.with_setpoints(np.asarray(vm * np.exp(1j * va)))

    @property
    def _chunk(self) -> int:
        return max(4, RHS_BUDGET // self._lu.shape[0])

    def has(self, bus: int) -> bool:
        """Whether the sensitivities of ``bus`` are computed already."""
        return bus in self._cache

    def prepare(self, buses: Iterable[int]) -> None:
        """Sensitivity columns of all ``buses`` at once (one multi-right-hand-side solve: several
        times cheaper per bus than one solve each)."""
        model = self.model
        todo = sorted({int(b) for b in buses if int(b) not in self._cache})
        rows = [int(self._row_of_ppci[model.ppci_of_bus[b]]) for b in todo]
        for bus, row in zip(todo, rows, strict=True):
            if row < 0:
                self._cache[bus] = self._zero
        live = [(b, r) for b, r in zip(todo, rows, strict=True) if r >= 0]
        if not live:
            return
        # A few right-hand sides per solve (see RHS_BUDGET).
        chunk = self._chunk
        for first in range(0, len(live), chunk):
            part = live[first : first + chunk]
            rhs = np.zeros((self._lu.shape[0], len(part)), order="F")
            rhs[[r for _, r in part], np.arange(len(part))] = 1.0 / 1000.0 / model.base_mva
            packed = self._columns(self._lu.solve(rhs))
            for k, (bus, _) in enumerate(part):
                self._cache[bus] = Column(packed[:, k])

    def _columns(self, x: np.ndarray) -> np.ndarray:
        """Packed columns (Fortran order) from solutions ``x`` of the Jacobian system."""
        model = self.model
        lay = model.layout
        k = x.shape[1]
        dva = np.zeros((model.n_ppci, k))
        dvm = np.zeros((model.n_ppci, k))
        dva[self._pvpq_index] = x[: self._n_pvpq]
        dvm[self._pq_index] = x[self._n_pvpq :]
        dV = self.V[:, None] * (dvm / self._vm[:, None] + 1j * dva)
        packed = np.empty((lay.size, k), dtype=complex, order="F")
        packed[lay.vm] = dvm[model.mon_index]
        packed[lay.V] = dV
        packed[lay.i] = model.Yi @ dV
        return packed

    def column(self, bus: int) -> Column:
        """Sensitivities of injecting +1 kW at pandapower ``bus``."""
        hit = self._cache.get(bus)
        if hit is None:
            self.prepare((bus,))  # a bus not prepared ahead: a one-column solve
            hit = self._cache[bus]
        return hit
