"""The Neural Grid validator: interval base states, trade verdicts under "do no harm", hosting
capacity.

How ``validate`` stays both fast and AC-exact:

1. Screen: each trade's effect is predicted with sensitivities taken at the current AC operating
   point (voltage magnitudes and complex branch currents per injected kW, from the power-flow
   Jacobian) on top of the trades already tentatively accepted in the current batch.
2. A trade the screen puts clearly inside every limit (outside a margin band that grows with the
   size of the predicted change) joins the batch. Every ``batch_size`` trades, and before any AC
   decision, the batch is confirmed with one AC power flow. If AC finds what the screen missed, the
   batch is re-decided trade by trade with AC, so the lowest-priority offending trades are vetoed.
3. A trade the screen puts near a limit gets the AC answer directly. A trade it puts clearly past a
   limit (by more than the band, with one clearly worst element, within the linear range) is vetoed
   by the screen: its value is then the linear estimate (``Verdict.source == "screen"``). The
   linearization is refreshed when the operating point has drifted - lazily, when the next trade
   needs it (none is built after a list's last AC confirmation, and one overtaken by a further
   drift before any trade used it is never built).

A trade whose seller and buyer sit on the same bus changes no bus injection: it is approved without
a power flow (``source == "input"``) and leaves the state unchanged - unless the base state itself
does not converge, when every trade gets NOT_CONVERGED (the rule needs a converged flow).

Prefix reuse: the market validates the same interval again and again, each round the approved
trades so far plus fresh candidates. ``validate`` keeps (LRU, ``PREFIX_CACHE``) a snapshot of its
session state - before the final batch confirmation - at the end of every list and before every
trade it vetoed (the next round drops that one), keyed by the trades themselves (ids, buses,
powers and their types) and the base state. A list that starts with such a prefix resumes from the
longest one. The session is deterministic and a snapshot is exactly the state a from-scratch run
has at that point, so verdicts, evidence hash and AC figures are identical to a from-scratch run
(``reuse=False`` turns it off; ``ValidationStats.reused_trades`` says how many trades were
skipped).

AC solves on grids from ``acmodel.KEPT_GRID_MIN_BUSES`` buses go through a kept lightsim2grid grid
model (``acmodel._KeptGrid``), whose answers depend on their inputs alone, as this needs. Every AC
solve starts with the slack and generator (PV) buses at their voltage setpoints, and an answer is
believed only when it is plausible (``acmodel.ACModel.solve_checked``: every bus within
``VM_PLAUSIBLE_PU``, and no jump beyond ``JUMP_PU`` from the accepted state when it started from a
prediction); otherwise it is solved again from the accepted state and from a flat start, and a
trade with no plausible answer is vetoed (``NOT_CONVERGED``, naming the bus). What is watched:
every in-service bus, line, two- and three-winding transformer (``limits.Monitored``); a network
with elements the AC model does not reproduce (``acmodel.UNMODELED_ELEMENTS``) is refused when the
validator is built.

The approved set therefore always passes a full AC power flow; verdicts equal those of a validator
that runs a full power flow per trade, except where the linear screen errs by more than its band.

This module is the facade (input checks, the prefix cache, assembling results); the parts live in
``grid.results`` (what it answers), ``grid.basestate`` (interval base states), ``grid.session``
(the screening session), ``grid.hosting`` (hosting capacity) and ``grid.operating`` (operating
points for the optimal clearing). Their public names are re-exported here. One module on purpose
(~510 lines): every public entry point checks its inputs and reads the same cached base states."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import pandapower as pp

from grid.acmodel import ACModel, Measures, refuse_unmodeled
from grid.basestate import BaseState, BaseStates, max_or_none
from grid.errors import BaseStateError, TradeInputError
from grid.evidence import evidence_hash
from grid.hosting import HOSTING_MAX_KW, HOSTING_RESOLUTION_KW, hosting_limit
from grid.island import Island, IslandError, IslandState, islanded_net, named_island
from grid.limits import LimitSet, Violation
from grid.networks import (
    bus_geodata,
    load_network,
    network_fingerprint,
    placeholder_line_ratings,
    placeholder_warning,
    quiet,
)
from grid.operating import OperatingPoint, operating_point
from grid.profiles import (
    DEFAULT_INTERVAL_SECONDS,
    add_pv_where_missing,
    apply_interval,
    nominal_values,
)
from grid.results import (
    BaseStateSummary,
    EnergyBalance,
    GridStatus,
    HostingCapacity,
    HostingLimit,
    NetworkFacts,
    ValidationResult,
    ValidationStats,
)
from grid.session import RELINEARIZE_PU, Session, veto
from grid.verdicts import Activation, Limits, Reason, Trade, Verdict

__all__ = [
    "BATCH_SIZE",
    "HOSTING_MAX_KW",
    "HOSTING_RESOLUTION_KW",
    "PREFIX_CACHE",
    "RELINEARIZE_PU",
    "BaseStateSummary",
    "EnergyBalance",
    "GridStatus",
    "GridValidator",
    "HostingCapacity",
    "HostingLimit",
    "NetworkFacts",
    "ValidationResult",
    "ValidationStats",
]

BATCH_SIZE = 32
# Session snapshots kept for prefix reuse (see ``GridValidator.validate``).
PREFIX_CACHE = 64
SNAPSHOT_EVERY_TRADE_MAX = 512  # longer lists are snapshotted every SNAPSHOT_STRIDE trades
SNAPSHOT_STRIDE = 64
ISLANDS_KEPT = 64  # intervals' own grid-forming units (and islanded base states) remembered


class GridValidator:
    """Validates trade sets on one network. Cheap to query repeatedly: base states are cached."""

    def __init__(
        self,
        network: str | pp.pandapowerNet = "cigre_lv",
        limits: Limits | None = None,
        add_pv: bool = True,
        batch_size: int = BATCH_SIZE,
        reuse: bool = True,
        island: Island | None = None,
    ) -> None:
        """``island``: the grid-forming units for islanded validation (``islanded=True``);
        default: the named network's own (``grid.island.named_island``), if it has any."""
        if isinstance(network, pp.pandapowerNet):
            net = copy.deepcopy(network)
            self.network_name = str(net.name) if getattr(net, "name", "") else "custom"
        else:
            net = load_network(network)
            self.network_name = str(network)
        refuse_unmodeled(net, self.network_name)
        self.fingerprint = network_fingerprint(net)
        placeholders = placeholder_line_ratings(net)
        warning = placeholder_warning(self.network_name, net, placeholders)
        self.facts = NetworkFacts(
            network=self.network_name,
            lines=int(net.line.in_service.sum()),
            trafos=int(net.trafo.in_service.sum()),
            placeholder_lines=placeholders,
            warnings=[warning] if warning else [],
        )
        self.limits = limits if limits is not None else Limits()
        self.batch_size = max(1, int(batch_size))
        for column in ("const_z_percent", "const_i_percent"):
            if column in net.load.columns:
                net.load[column] = 0.0  # trades and states use constant-power loads
        if add_pv:
            add_pv_where_missing(net)
        self.net = net
        self._nominal = nominal_values(net)
        self._bases = BaseStates(net, self._nominal, self.limits, self.network_name)
        self.island = island if island is not None else named_island(self.network_name)
        self._island_bases: dict[Island, BaseStates] = {}
        # per interval: the grid-forming units it runs with (``set_island``; else ``island``)
        self._interval_islands: OrderedDict[int, Island] = OrderedDict()
        # the slack bus per island (None: grid-connected): a pandas look-up, once each
        self._slacks: dict[Island | None, int] = {}
        self.reuse = bool(reuse)
        self._prefixes: OrderedDict[
            int, tuple[BaseState, tuple[Activation, ...], tuple[Trade, ...], Session]
        ] = OrderedDict()
        self._prefix_seq = 0

    # ----------------------------------------------------------------- network facts
    def buses(self) -> list[int]:
        return [int(b) for b in self.net.bus.index[self.net.bus.in_service]]

    def load_buses(self) -> list[int]:
        """Buses carrying in-service loads (where participants sit)."""
        loads = self.net.load[self.net.load.in_service]
        return sorted({int(b) for b in loads["bus"]})

    def bus_geodata(self) -> dict[int, tuple[float, float]]:
        return bus_geodata(self.net)

    # ----------------------------------------------------------------- base state
    def base_state(
        self,
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        islanded: bool = False,
    ) -> BaseStateSummary:
        return self._base(interval, interval_seconds, islanded).summary

    def base_net(
        self,
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        islanded: bool = False,
    ) -> pp.pandapowerNet:
        """A solved copy of the network in the interval's base state (for independent checks);
        ``islanded``: disconnected, the master unit as the slack (an ``ext_grid`` at its bus),
        the other units at the interval's dispatch (static generators)."""
        if islanded:
            bases = self._islanded(interval)
            net = copy.deepcopy(bases.net)
            soc = bases.soc_at(interval, interval_seconds)
            _, converged = bases.dispatch(net, interval, interval_seconds, soc)
            if not converged:
                raise BaseStateError(
                    f"the islanded base state of interval {interval} does not converge"
                )
            return net
        net = copy.deepcopy(self.net)
        apply_interval(net, self._nominal, interval, interval_seconds)
        with quiet():
            pp.runpp(net)
        return net

    def island_state(
        self, interval: int | None = None, interval_seconds: int = DEFAULT_INTERVAL_SECONDS
    ) -> IslandState:
        """The islanded base state's operation: state of charge, the master's power and limits,
        the other units' dispatch (see ``grid.island``)."""
        state = self._base(interval, interval_seconds, True).island
        assert state is not None
        return state

    def set_island(self, interval: int, island: Island | None) -> None:
        """The grid-forming units ``interval`` runs islanded with (e.g. the registry's active
        batteries and gensets with their reported state of charge); None: the network's own
        (``island``). They are part of the islanded base state's evidence."""
        self._interval_islands.pop(int(interval), None)
        if island is not None:
            self._interval_islands[int(interval)] = island
            if len(self._interval_islands) > ISLANDS_KEPT:
                self._interval_islands.popitem(last=False)

    def island_of(self, interval: int | None) -> Island | None:
        """The grid-forming units ``interval`` is validated islanded with."""
        if interval is not None and int(interval) in self._interval_islands:
            return self._interval_islands[int(interval)]
        return self.island

    def _islanded(self, interval: int | None = None) -> BaseStates:
        island = self.island_of(interval)
        if island is None:
            raise IslandError(
                f"network {self.network_name!r} has no grid-forming units: it cannot run islanded"
            )
        bases = self._island_bases.get(island)
        if bases is None:
            net = islanded_net(self.net, island)
            bases = BaseStates(net, nominal_values(net), self.limits, self.network_name, island)
            if len(self._island_bases) >= ISLANDS_KEPT:
                self._island_bases.pop(next(iter(self._island_bases)))
            self._island_bases[island] = bases
        return bases

    def limit_set(
        self,
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        islanded: bool = False,
    ) -> LimitSet:
        base = self._base(interval, interval_seconds, islanded)
        if base.limitset is None:
            raise BaseStateError(f"the base state of interval {interval} does not converge")
        return base.limitset

    def _base(
        self, interval: int | None, interval_seconds: int, islanded: bool = False
    ) -> BaseState:
        bases = self._islanded(interval) if islanded else self._bases
        return bases.get(interval, interval_seconds)

    # ----------------------------------------------------------------- validation
    def validate(
        self,
        trades: Sequence[Trade],
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        activations: Sequence[Activation] = (),
        islanded: bool = False,
    ) -> ValidationResult:
        """Verdicts for ``trades`` in priority order (first = highest) under the "do no harm"
        rule.

        ``activations`` (flexibility bought for the interval): one with ``before`` is applied
        right before that trade and judged like a trade (``_place``). The others are decided
        first, as one set: approved together iff the base state plus all of them passes the
        rule, and then the trades are validated on that state, "do no harm" measured against it
        (its limit set: never looser than the base state's, since it passed that). Refused, they
        all carry the set's violation and the trades are validated on the base state alone. A
        malformed one (zero or non-finite power, unknown bus, repeated id, ``before`` naming no
        trade of the list) is refused by itself.

        ``islanded``: with no external grid, the island's units balancing it (``grid.island``).
        An islanded base state its units cannot balance vetoes every trade ``ISLAND_BALANCE``
        (naming the master unit, the power it would need and its limit) - unless the unplaced
        activations, as a set, bring the master back within its limits (they are real injections
        in the island: what they add, the master gives less): then the trades are judged on that
        state, the master's limits still checked."""
        base = self._base(interval, interval_seconds, islanded)
        real_trades = list(trades)
        all_acts = list(activations)
        trades, placed, placed_verdicts = self._place(base, real_trades, all_acts, islanded)
        activations = [a for a in all_acts if not a.before]
        verdicts: list[Verdict | None] = [None] * len(trades)
        seen: set[str] = set()
        valid: list[tuple[int, Trade]] = []
        known = base.model.ppci_of_bus if base.model is not None else set(self.buses())
        act_verdicts, start_state = self._apply_activations(base, activations, known)
        short = base.island.violation if base.island is not None else None
        if start_state is not None:
            short = None  # the activations' set balanced the island (``_apply_activations``)
        converged = base.model is not None and short is None
        for pos, trade in enumerate(trades):
            bad = _input_verdict(trade, known, seen)
            if bad is not None:
                verdicts[pos] = bad
            elif _same_bus(trade) and converged:
                # Neighbours behind one bus: no power flow needed, the state stays as it is.
                verdicts[pos] = Verdict(trade.id, True, Reason.APPROVED, source="input")
            else:
                valid.append((pos, trade))
        if not converged or base.model is None or base.measures is None or base.limitset is None:
            for pos, trade in valid:
                verdicts[pos] = (
                    Verdict(trade.id, False, Reason.NOT_CONVERGED, "base state")
                    if short is None
                    else veto(trade, short)
                )
            final, act_verdicts = _split(
                verdicts, placed, placed_verdicts, all_acts, act_verdicts, len(trades)
            )
            digest = evidence_hash(
                network=self.fingerprint,
                base_state=base.doc,
                limits=self.limits,
                trades=real_trades,
                verdicts=final,
                vm_pu=np.zeros(0),
                loading_percent=np.zeros(0),
                activations=all_acts,
                activation_verdicts=act_verdicts,
            )
            return ValidationResult(
                self.network_name,
                self.fingerprint,
                interval,
                final,
                digest,
                False,
                None,
                None,
                None,
                None,
                activation_verdicts=act_verdicts,
            )
        applied = tuple(activations) if start_state is not None else ()
        start, resumed = self._resume(base, applied, trades)
        if resumed is None:
            if start_state is None:
                session = Session(base.model, base.measures, base.limitset, self.batch_size)
            else:
                S_act, me_act, limits_act = start_state
                session = Session(base.model, me_act, limits_act, self.batch_size, S_act)
        else:
            session = resumed.resume()
        todo = valid if start == 0 else [(pos, trade) for pos, trade in valid if pos >= start]
        session.plan([b for _, t in todo for b in (int(t.seller_bus), int(t.buyer_bus))])
        every = 1 if len(todo) <= SNAPSHOT_EVERY_TRADE_MAX else SNAPSHOT_STRIDE
        points: list[tuple[int, Session]] = []
        with np.errstate(all="ignore"):
            for k, (pos, trade) in enumerate(todo):
                snap = session.snapshot() if self.reuse and k % every == 0 else None
                before = len(session.log)
                session.offer(pos, trade)
                if snap is not None and any(not v.approved for _, v in session.log[before:]):
                    points.append((pos, snap))  # the next round may drop this vetoed trade
            if self.reuse:
                points.append((len(trades), session.snapshot()))
                self._remember(base, applied, trades, points)
            session.flush(final=True)
        for pos, verdict in session.log:  # each position is logged once
            verdicts[pos] = verdict
        final, act_verdicts = _split(
            verdicts, placed, placed_verdicts, all_acts, act_verdicts, len(trades)
        )
        state = session.measures
        n_lines = len(base.model.monitored.lines)
        digest = evidence_hash(
            network=self.fingerprint,
            base_state=base.doc,
            limits=self.limits,
            trades=real_trades,
            verdicts=final,
            vm_pu=state.vm_pu,
            loading_percent=state.loading_percent,
            activations=all_acts,
            activation_verdicts=act_verdicts,
        )
        return ValidationResult(
            network=self.network_name,
            fingerprint=self.fingerprint,
            interval=interval,
            verdicts=final,
            evidence_hash=digest,
            converged=True,
            vm_min_pu=float(state.vm_pu.min()),
            vm_max_pu=float(state.vm_pu.max()),
            max_line_loading_percent=max_or_none(state.loading_percent[:n_lines]),
            max_trafo_loading_percent=max_or_none(state.loading_percent[n_lines:]),
            stats=session.stats(len(trades), start),
            activation_verdicts=act_verdicts,
        )

    def _place(
        self,
        base: BaseState,
        trades: list[Trade],
        activations: list[Activation],
        islanded: bool = False,
    ) -> tuple[list[Trade], dict[int, int], dict[int, Verdict]]:
        """``trades`` with each placed activation (``before`` set) right before its trade, as a
        pseudo-trade between its bus and the slack bus (the slack's injection is its output:
        only the activation's bus moves); (that list, its pseudo-trades' positions -> the
        activation's index, verdicts of placed activations refused before any power flow)."""
        if not any(a.before for a in activations):
            return trades, {}, {}
        known = base.model.ppci_of_bus if base.model is not None else set(self.buses())
        island = self.island_of(base.summary.interval) if islanded else None
        slack = self._slacks.get(island)
        if slack is None:  # a pandas look-up: once per island, not per validation
            slack = self._slacks[island] = self._slack_bus(
                self._islanded(base.summary.interval).net if islanded else self.net
            )
        seen = {str(a.id) for a in activations if not a.before}
        by_trade: dict[str, list[int]] = {}
        refused: dict[int, Verdict] = {}
        trade_ids = {t.id for t in trades}
        for k, act in enumerate(activations):
            if not act.before:
                continue
            bad = _activation_input_verdict(act, known, seen)
            if bad is None and act.before not in trade_ids:
                bad = Verdict(act.id, False, Reason.INVALID_TRADE, "before", source="input")
            if bad is not None:
                refused[k] = bad
            else:
                by_trade.setdefault(act.before, []).append(k)
        out: list[Trade] = []
        placed: dict[int, int] = {}
        for trade in trades:
            for k in by_trade.pop(trade.id, []):
                act = activations[k]
                p = float(act.p_kw)
                placed[len(out)] = k
                out.append(
                    Trade(act.id, int(act.bus), slack, p)
                    if p > 0
                    else Trade(act.id, slack, int(act.bus), -p)
                )
            out.append(trade)
        return out, placed, refused

    @staticmethod
    def _slack_bus(net: pp.pandapowerNet) -> int:
        """The pandapower bus of the (first) in-service external grid of ``net`` (islanded: the
        master unit's bus, ``grid.island.islanded_net``)."""
        grids = net.ext_grid[net.ext_grid.in_service]
        return int(grids.bus.iloc[0]) if len(grids) else int(net.bus.index[0])

    def _apply_activations(
        self, base: BaseState, activations: list[Activation], known: object
    ) -> tuple[list[Verdict], tuple[np.ndarray, Measures, LimitSet] | None]:
        """The activations' verdicts and, when they are applied, the state trades start from:
        (injections, AC measures, limit set). See ``validate``."""
        if not activations:
            return [], None
        verdicts: list[Verdict | None] = [None] * len(activations)
        seen: set[str] = set()
        good: list[int] = []
        for k, act in enumerate(activations):
            bad = _activation_input_verdict(act, known, seen)
            if bad is None:
                good.append(k)
            else:
                verdicts[k] = bad
        model, measures, limitset = base.model, base.measures, base.limitset
        start: tuple[np.ndarray, Measures, LimitSet] | None = None
        refusal: Violation | None = None
        if model is None or measures is None or limitset is None:
            refusal = Violation(Reason.NOT_CONVERGED, "base state", None, None)
        elif good:
            delta: dict[int, float] = {}
            for k in good:
                bus = int(activations[k].bus)
                delta[bus] = delta.get(bus, 0.0) + float(activations[k].p_kw)
            S = model.Sbus0 + model.injection(delta)
            with np.errstate(all="ignore"):
                V = model.solve_checked(S, measures.V, measures.V)
            if isinstance(V, Violation):
                refusal = V
            else:
                me = model.measure(V)
                balance = limitset.balance
                # Islanded: the set moves the master's power by what it injects (and the
                # losses); an island short in its base state is balanced again by a set that
                # takes the master back within its limits.
                refusal = (
                    balance.check(balance.power_kw(model.Ybus, S, V, model.base_mva))
                    if balance is not None
                    else None
                ) or limitset.check(me.vm_pu, me.loading_percent)
                if refusal is None:
                    repaired = LimitSet(self.limits, model.monitored, me.vm_pu, me.loading_percent)
                    repaired.balance = balance
                    start = (S, me, repaired)
        for k in good:
            act = activations[k]
            verdicts[k] = (
                Verdict(act.id, True, Reason.APPROVED)
                if refusal is None
                else Verdict(
                    act.id, False, refusal.reason, refusal.element, refusal.value, refusal.limit
                )
            )
        return [v for v in verdicts if v is not None], start

    def _resume(
        self, base: BaseState, applied: tuple[Activation, ...], trades: list[Trade]
    ) -> tuple[int, Session | None]:
        """The longest prefix of ``trades`` an earlier ``validate`` on this base state (with the
        same applied activations) left a session snapshot after: (its length, the snapshot), or
        (0, None)."""
        if not self.reuse:
            return 0, None
        n_trades = len(trades)
        candidates = [
            (len(prefix), key, prefix, snap)
            for key, (owner, acts, prefix, snap) in self._prefixes.items()
            if owner is base and acts == applied and len(prefix) <= n_trades
        ]
        # Longest first (the oldest of equal length first, as stored): the first match wins.
        candidates.sort(key=lambda c: -c[0])
        for n, key, prefix, snap in candidates:
            if _same_trades(trades, prefix):
                self._prefixes.move_to_end(key)
                return n, snap
        return 0, None

    def _remember(
        self,
        base: BaseState,
        applied: tuple[Activation, ...],
        trades: list[Trade],
        points: list[tuple[int, Session]],
    ) -> None:
        for n, snap in points:
            if n == 0:
                continue
            self._prefix_seq += 1
            self._prefixes[self._prefix_seq] = (base, applied, tuple(trades[:n]), snap)
        while len(self._prefixes) > PREFIX_CACHE:
            self._prefixes.popitem(last=False)

    def clear_reuse_cache(self) -> None:
        """Forget the session snapshots ``validate`` keeps for prefixes it has seen."""
        self._prefixes.clear()

    def operating_point(
        self,
        injections_kw: Mapping[int, float],
        buses: Sequence[int],
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        islanded: bool = False,
    ) -> OperatingPoint | None:
        """The interval's limits linearized at its AC state under extra ``injections_kw``
        (``grid.operating``; ``islanded``: the island's, with the master's power); None when
        that flow (or the base state) has no solution."""
        base = self._base(interval, interval_seconds, islanded)
        if base.model is None or base.measures is None or base.limitset is None:
            return None
        return operating_point(base.model, base.measures, base.limitset, injections_kw, buses)

    # ----------------------------------------------------------------- hosting capacity
    def hosting_capacity(
        self,
        bus: int,
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    ) -> HostingCapacity:
        """Largest export and import at ``bus`` on top of the base state before a limit binds.

        Doubling from 1 kW, then bisection with AC to ``HOSTING_RESOLUTION_KW``; the binding
        constraint is the violation just beyond the reported power."""
        base = self._base(interval, interval_seconds)
        model = base.model
        if model is None or base.limitset is None:
            raise BaseStateError(f"the base state of interval {interval} does not converge")
        if int(bus) not in model.ppci_of_bus:
            raise TradeInputError(f"bus {bus} is not an energized bus of {self.network_name}")
        export = hosting_limit(model, base.limitset, int(bus), +1.0)
        import_ = hosting_limit(model, base.limitset, int(bus), -1.0)
        return HostingCapacity(self.network_name, int(bus), interval, export, import_)

    # ----------------------------------------------------------------- dashboard
    def grid_status(
        self,
        trades: Sequence[Trade] = (),
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        activations: Sequence[Activation] = (),
        islanded: bool = False,
    ) -> GridStatus:
        """AC state of the base state plus ``trades`` (normally the approved ones) and
        ``activations``, all applied."""
        base = self._base(interval, interval_seconds, islanded)
        model = base.model
        if model is None:
            return GridStatus(self.network_name, interval, False, self.buses(), [], [], [], [], [])
        mon = model.monitored
        solved = self._solve_trades(model, trades, activations)
        if solved is None:
            return GridStatus(
                self.network_name, interval, False, mon.buses.tolist(), [], [], [], [], []
            )
        me = model.measure(solved[1])
        n, n2 = len(mon.lines), len(mon.lines) + len(mon.trafos)
        return GridStatus(
            self.network_name,
            interval,
            True,
            mon.buses.tolist(),
            [round(float(x), 6) for x in me.vm_pu],
            mon.lines.tolist(),
            [round(float(x), 4) for x in me.loading_percent[:n]],
            mon.trafos.tolist(),
            [round(float(x), 4) for x in me.loading_percent[n:n2]],
            mon.trafo3ws.tolist(),
            [round(float(x), 4) for x in me.loading_percent[n2:]],
        )

    # ----------------------------------------------------------------- energy balance
    def energy_balance(
        self,
        trades: Sequence[Trade] = (),
        interval: int | None = None,
        interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
        activations: Sequence[Activation] = (),
        islanded: bool = False,
    ) -> EnergyBalance:
        """Power balance of the base state plus ``trades``, all applied, from the same AC power
        flow as ``grid_status``: the external grid's share (the slack buses' injection beyond
        what is connected there), local generation (PV, the sellers' side of the trades) and
        consumption (loads, the buyers' side), and the losses, the active power the network
        itself takes (``sum Re(V conj(Ybus V))`` over every bus: lines and transformers).
        ``islanded``: the external grid's share is the master unit's (``grid.island``)."""
        base = self._base(interval, interval_seconds, islanded)
        trades = list(trades)
        traded_kw = sum(float(t.p_kw) for t in trades)
        up_kw = sum(max(float(a.p_kw), 0.0) for a in activations)
        down_kw = sum(max(-float(a.p_kw), 0.0) for a in activations)
        generation_kw = base.summary.pv_kw + traded_kw + up_kw
        consumption_kw = base.summary.load_kw + traded_kw + down_kw
        model = base.model
        solved = None if model is None else self._solve_trades(model, trades, activations)
        if model is None or solved is None:
            nan = float("nan")
            return EnergyBalance(
                self.network_name, interval, False, nan, generation_kw, consumption_kw, nan
            )
        S, V = solved
        computed = V * np.conj(model.Ybus @ V)
        kw = model.base_mva * 1000.0
        # What is connected at the slack buses themselves: every local injection minus the
        # others' (``S`` holds the solved slack output there, not its loads and generators).
        others = np.ones(len(S), dtype=bool)
        others[model.ref] = False
        at_slack_kw = generation_kw - consumption_kw - float(S[others].real.sum() * kw)
        return EnergyBalance(
            network=self.network_name,
            interval=interval,
            converged=True,
            grid_kw=float(computed[model.ref].real.sum() * kw) - at_slack_kw,
            generation_kw=generation_kw,
            consumption_kw=consumption_kw,
            losses_kw=float(computed.real.sum() * kw),
        )

    def _solve_trades(
        self, model: ACModel, trades: Sequence[Trade], activations: Sequence[Activation] = ()
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The base state's injections plus ``trades`` and ``activations`` (all applied) and the
        AC voltages there, or None when the flow has no plausible solution
        (``ACModel.solve_checked``)."""
        delta: dict[int, float] = {}
        for act in activations:
            if act.bus not in model.ppci_of_bus:
                raise TradeInputError(f"activation {act.id!r}: bus {act.bus} is not in the network")
            delta[act.bus] = delta.get(act.bus, 0.0) + float(act.p_kw)
        for trade in trades:
            for bus, sign in ((trade.seller_bus, 1.0), (trade.buyer_bus, -1.0)):
                if bus not in model.ppci_of_bus:
                    raise TradeInputError(f"trade {trade.id!r}: bus {bus} is not in the network")
                delta[bus] = delta.get(bus, 0.0) + sign * float(trade.p_kw)
        S = model.Sbus0 + model.injection(delta)
        with np.errstate(all="ignore"):
            V = model.solve_checked(S, model.V0, model.V0)
        return None if isinstance(V, Violation) else (S, V)


def _split(
    verdicts: list[Verdict | None],
    placed: dict[int, int],
    placed_verdicts: dict[int, Verdict],
    activations: list[Activation],
    first_verdicts: list[Verdict],
    n: int,
) -> tuple[list[Verdict], list[Verdict]]:
    """The trades' verdicts (the placed activations' pseudo-trades taken out) and every
    activation's verdict in input order (the first set's, then each placed one's)."""
    by_index = dict(placed_verdicts)
    for pos, k in placed.items():
        v = verdicts[pos]
        assert v is not None
        by_index[k] = v
    first = iter(first_verdicts)
    acts = [next(first) if not a.before else by_index[k] for k, a in enumerate(activations)]
    trades = [v for pos, v in enumerate(verdicts[:n]) if pos not in placed and v is not None]
    return trades, acts


def _same_trades(trades: list[Trade], prefix: tuple[Trade, ...]) -> bool:
    """Whether ``trades`` starts with ``prefix`` (same ids, buses and powers, same types)."""
    for a, b in zip(trades, prefix, strict=False):
        if a is b:
            continue
        if type(a) is not type(b) or a != b:
            return False
        if any(type(x) is not type(y) for x, y in zip(_fields(a), _fields(b), strict=True)):
            return False
    return True


def _fields(trade: Trade) -> tuple[object, ...]:
    return (trade.id, trade.seller_bus, trade.buyer_bus, trade.p_kw)


def _input_verdict(trade: Trade, known: object, seen: set[str]) -> Verdict | None:
    """INVALID_TRADE / UNKNOWN_BUS for trades that need no power flow to refuse.

    A trade whose seller and buyer sit on the same bus is valid (see ``_same_bus``)."""
    tid = str(trade.id)
    if tid in seen:
        return Verdict(tid, False, Reason.INVALID_TRADE, "id", source="input")
    seen.add(tid)
    p = trade.p_kw
    seller, buyer = trade.seller_bus, trade.buyer_bus
    if type(p) is float and type(seller) is int and type(buyer) is int:  # the common case
        if not (0.0 < p < math.inf):
            return Verdict(tid, False, Reason.INVALID_TRADE, "p_kw", source="input")
    else:
        if isinstance(p, bool) or not isinstance(p, int | float) or not np.isfinite(p) or p <= 0:
            return Verdict(tid, False, Reason.INVALID_TRADE, "p_kw", source="input")
        for bus in (seller, buyer):
            if isinstance(bus, bool) or not isinstance(bus, int | np.integer):
                return Verdict(tid, False, Reason.INVALID_TRADE, "bus", source="input")
    for bus in (seller, buyer):
        if int(bus) not in known:  # type: ignore[operator]
            return Verdict(tid, False, Reason.UNKNOWN_BUS, f"bus {int(bus)}", source="input")
    return None


def _activation_input_verdict(act: Activation, known: object, seen: set[str]) -> Verdict | None:
    """INVALID_TRADE (repeated id, zero or non-finite power, a bus that is no integer) or
    UNKNOWN_BUS for an activation, as ``_input_verdict`` for trades."""
    aid = str(act.id)
    if aid in seen:
        return Verdict(aid, False, Reason.INVALID_TRADE, "id", source="input")
    seen.add(aid)
    p = act.p_kw
    if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p == 0:
        return Verdict(aid, False, Reason.INVALID_TRADE, "p_kw", source="input")
    bus = act.bus
    if isinstance(bus, bool) or not isinstance(bus, int | np.integer):
        return Verdict(aid, False, Reason.INVALID_TRADE, "bus", source="input")
    if int(bus) not in known:  # type: ignore[operator]
        return Verdict(aid, False, Reason.UNKNOWN_BUS, f"bus {int(bus)}", source="input")
    return None


def _same_bus(trade: Trade) -> bool:
    """Seller and buyer behind one connection point: the trade changes no bus injection, so it
    moves no power through the network and cannot change any voltage or loading."""
    return int(trade.seller_bus) == int(trade.buyer_bus)
