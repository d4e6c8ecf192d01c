"""Remedies: flexibility activations that let a vetoed trade through, and the DSO service.

After the clearing has decided (``optimal`` or ``auction``), each vetoed candidate - and each pair
the optimal clearing's top-up was refused (``Clearing.refused``: not in its list, and left out
again unless rescued) - with a positive gain ``(bid - ask) x kWh`` is looked at in priority order
(the batch order, the refused pairs after it). Its remedy is the cheapest set of activations of the
interval's open flexibility offers that makes the approved set plus this trade feasible: a linear
program in the clearing's machinery (``program.Program``, HiGHS): one column per offer with what is
left of its power (W, bounds ``[0, remaining powerW]``), cost ``price x energy``, the trade's fill
fixed at its candidate's energy, and the grid's rows at the AC operating point of the set so far
(``OperatingPoint.constraints``), relinearized where the answer lands (``MAX_POINTS``) until its AC
state passes the validator's limit set (rows the approved set without this trade already presses
stay bounded at its level). Only offers whose bus the binding rows see carry weight: the
sensitivities say which buses relieve. A linear screen (``_Search._reachable``) skips a candidate
whose binding element no offer can reach.

The trade is approved with its activations only when

* it needs at least one activation of its own (a candidate that would pass on the remedies
  bought for others is left as it is: remedies never approve a trade that pays for none),
* what is left of both its orders after the approved (and rescued) trades still holds it (the
  clearing pairs an order again after a veto: such a candidate is no lost trade),
* its gain exceeds the remedy's cost (each activation ``floor(floor(W x s / 3600) x price /
  1000)`` base units: the trades' escrow formula),
* the payers can pay: the two parties split the cost equally (seller ``floor(cost / 2)``, buyer the
  rest), each within its **remedy cap** (``cap per kWh x trade energy Wh / 1000``; cap 0: never
  pays, so never rescued); when one side's cap binds, the other pays the rest within its own cap;
  each share within the party's available balance after the interval's escrow,
* and the validator, given the whole list and every activation, approves every trade approved so
  far, the trades rescued before and this one (its AC confirmation; the activations go first, as
  one set, ``GridValidator.validate``).

**DSO service:** when the state of the approved trades breaks a limit the base state already
breaks ("do no harm" let it stand), the grid operator buys the cheapest activations that bring
it inside the nominal limits, within ``dso_budget`` base units and the balancing account's
available balance, trade id bytes32(0), before any rescue. Islanded (``island_service``), it runs
before the clearing: an island short of its grid-forming master's power would veto every trade,
so the activations that bring the master ``ISLAND_HEADROOM_KW`` inside its limits (the points'
``forming_kw`` rows) are bought first and the clearing judges the trades with them
(``remedy(..., bought=...)`` keeps them).

**Speed:** the state without the candidate is linearized once per rescue state (columns for the
offer buses and every candidate's); a candidate's first point is predicted from it
(``OperatingPoint.predict``), so a candidate no offer can help costs one LP and no AC solve. One
``Program`` serves the whole search (warm started; a candidate moves its fixed injections and
the offers' bounds). An answer no cheaper than the confirmed one ends the search without an AC
point; the last point is only checked; a rescue asking for more than ``GIVE_UP_COST`` times its
gain before any confirmed answer is refused for cost.

The final list is the approved trades (in their order), the rescued ones (in rescue order), then
the remaining vetoed ones - less any that the activations would let through without paying for
them (left out of the list, ``RemedyStats.left_out``); its validation with every activation is
the evidence. Deterministic:
fixed column order (offer sequence), single-threaded HiGHS, whole W (rounded up, within the
offer), a fixed number of points: the same book and offers give the same activations bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from backend.chain import protocol
from backend.market.activations import (
    FlexInput,
    FlexOption,
    PayerFunds,
    PlannedActivation,
    activation_cost,
    split_cost,
)
from backend.market.auction import Candidate, Clearing, Decision
from backend.market.optimal import MARGIN_PERCENT, MARGIN_PU, PointOf
from backend.market.program import OptimizationError, Program
from grid.operating import BALANCE_MARGIN_KW, OperatingPoint
from grid.verdicts import Activation, Limits

# AC operating points per remedy program (the first is the set's own state).
MAX_POINTS = 4
# A payer's balance where only its cap counts (the per-activation split of ``_rescue``).
UNLIMITED = 1 << 255
# A column below this (W) is no activation.
MIN_W = 0.5
# A vetoed candidate is searched only when the offers left could move its binding element by at
# least this share of its excess (``_Search._reachable``; linear, at the state without it).
SCREEN_SHARE = 0.5
SCREENED = ("VOLTAGE_HIGH", "VOLTAGE_LOW", "LINE_OVERLOAD", "TRAFO_OVERLOAD")
# A rescue whose program, before any answer AC confirms, asks for activations costing more than
# this many times the trade's gain is refused for cost without further points: relinearizing
# lowered a program's cheapest cost by at most 22 % in the bench's books (cigre_lv).
GIVE_UP_COST = 1.5
# Islanded, the DSO service brings the master unit this far inside its power limits (kW): room
# for the losses the interval's trades add (as the base state's PV curtailment leaves
# ``grid.basestate.CURTAIL_HEADROOM_KW`` above the charging limit).
ISLAND_HEADROOM_KW = 1.0


class _OverBudget(Exception):
    """A remedy program's cheapest answer costs more than the trade could pay (``GIVE_UP_COST``)."""


# Validate a list of candidates with activations: (trade decisions, activation decisions,
# evidence hash) - ``GridPortAdapter.validate_activations`` for one interval.
ValidateWith = Callable[
    [Sequence[Candidate], Sequence[Activation]], tuple[list[Decision], list[Decision], str]
]


@dataclass
class RemedyStats:
    """What the search did (for the bench and the log)."""

    candidates: int = 0  # vetoed candidates with a positive gain looked at
    programs: int = 0  # remedy programs solved
    points: int = 0  # AC operating points computed
    rescued: int = 0
    refused_cost: int = 0  # gain <= cost
    refused_cap: int = 0  # the caps cannot cover the cost
    refused_funds: int = 0  # a payer's balance is short
    refused_grid: int = 0  # no program answer, or the validator did not confirm it
    screened_out: int = 0  # of those: no offer reaches the binding element (``_reachable``)
    unconfirmed: int = 0  # of those: the program's answer, not confirmed by the validator
    dso_activations: int = 0
    # Vetoed candidates that would pass on activations bought for others, paying none: left out
    left_out: int = 0
    # (sell hash, buy hash) of the screened-out candidates: no offer of the interval sits where
    # it could relieve their veto (the bench's "where offers exist at relieving buses")
    unreachable: set[tuple[str, str]] = field(default_factory=set)


def gain_exceeds(c: Candidate, cost: int) -> bool:
    """Whether the trade's gain ``(bid - ask) x kWh`` exceeds ``cost`` (exact integers)."""
    return (c.buy.price_per_kwh - c.sell.price_per_kwh) * c.energy_wh > cost * 1000


class _Search:
    def __init__(
        self,
        clearing: Clearing,
        flex: FlexInput,
        point: PointOf,
        validate: ValidateWith,
        interval_seconds: int,
        limits: Limits,
    ) -> None:
        self.flex = flex
        self.point = point
        self.validate = validate
        self.interval_seconds = interval_seconds
        self.limits = limits
        self.kw_per_wh = 3600.0 / interval_seconds / 1000.0
        self.approved = [c for c, d in clearing.trades if d.approved]
        # the vetoed trades, then the pairs the optimal clearing's top-up was refused (not in
        # the list: one that is not rescued stays out of it)
        self.vetoed = [c for c, d in clearing.trades if not d.approved]
        self.vetoed += [c for c, _ in clearing.refused]
        self.veto_of = {id(c): d for c, d in clearing.trades if not d.approved}
        self.veto_of.update((id(c), d) for c, d in clearing.refused)
        self.outside = {id(c) for c, _ in clearing.refused}
        self.rescued: list[Candidate] = []
        self.activations: list[PlannedActivation] = []
        self.left = {o.hash: o.power_w for o in flex.offers}
        # What each wallet's balance already carries for this interval: its trades' escrow and
        # its shares of remedies so far.
        self.spent: dict[str, int] = defaultdict(int)
        for c in self.approved:
            self.spent[c.buy.trader.lower()] += protocol.escrow_of(c.energy_wh, c.price_per_kwh)
        self.stats = RemedyStats()
        self.room: dict[str, int] = {}
        self._reference: tuple[tuple[int, int], OperatingPoint | None] | None = None
        self._kept: tuple[Program, sparse.csr_matrix, np.ndarray, float] | None = None

    # ------------------------------------------------------------------ injections
    def _trade_injections(self, trades: Sequence[Candidate]) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for c in trades:
            out[c.sell.bus] += c.energy_wh * self.kw_per_wh
            out[c.buy.bus] -= c.energy_wh * self.kw_per_wh
        return out

    def _fixed(self, extra: Sequence[Candidate] = ()) -> dict[int, float]:
        out = self._trade_injections([*self.approved, *self.rescued, *extra])
        for a in self.activations:
            g = a.grid()
            out[g.bus] = out.get(g.bus, 0.0) + g.p_kw
        return dict(out)

    # ------------------------------------------------------------------ the program
    def _program(
        self,
        fixed: Mapping[int, float],
        nominal: bool,
        reference: tuple[Mapping[int, float], OperatingPoint] | None = None,
        trade: Mapping[int, float] | None = None,
        gain: int | None = None,
    ) -> dict[str, int] | None:
        """Whole W per offer hash of the cheapest activations that bring the state with ``fixed``
        injections inside the limits (``nominal``: the nominal limits, else the validator's);
        None when there is none.

        ``reference``: the set without the trade (its injections and AC point, with columns for
        the offer buses and the trade's): rows that state already presses stay bounded where it
        has them, and the first point is predicted from it with ``trade``'s injections
        (``OperatingPoint.predict``: no AC solve; a trade the offers cannot help is refused on
        that guess alone). Only the offer buses and the trade's are columns: every other bus
        keeps its injection, so its terms cancel out of every row.

        ``gain`` (base units): before any answer is confirmed, one whose cost passes
        ``GIVE_UP_COST`` times it ends the search (``_OverBudget``)."""
        offers = self.flex.offers
        if not any(self.left[o.hash] > 0 for o in offers):
            return None
        # Columns: the offer buses (the program's), then the trade's other buses (fixed: folded
        # into the rows' right-hand sides).
        offer_buses = sorted({o.bus for o in offers})
        buses = offer_buses + sorted(set(trade or ()) - set(offer_buses))
        n_off = len(offer_buses)
        p_fixed = np.array([float(fixed.get(b, 0.0)) for b in buses])
        program, incidence, cost, scale, reach_kw = self._program_for(
            offers, offer_buses, p_fixed[:n_off]
        )
        reach = np.r_[reach_kw, np.zeros(len(buses) - n_off)]

        def solved(p: np.ndarray, columns: Sequence[int]) -> OperatingPoint | None:
            self.stats.points += 1
            return self.point({**fixed, **dict(zip(buses, p.tolist(), strict=True))}, columns)

        # AC points by their injections: an answer that lands on a point already solved (the
        # same answer again) reuses it - the same injections give the same point.
        seen: dict[bytes, OperatingPoint | None] = {}
        if reference is not None and trade is not None:
            op: OperatingPoint | None = reference[1].predict(trade, buses)
            bound_at = np.array([float(reference[0].get(x, 0.0)) for x in buses])
        else:
            op = seen[p_fixed.tobytes()] = solved(p_fixed, buses)
            bound_at = None
        if op is None:
            return None
        best: tuple[float, np.ndarray] | None = None
        cuts: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        self.stats.programs += 1
        for point_no in range(MAX_POINTS):
            lim = _nominal(op, self.limits) if nominal else op
            A, b, labels, is_cut = lim.constraints(
                reach + np.abs(p_fixed - op.injections_kw),
                MARGIN_PU,
                MARGIN_PERCENT,
                ISLAND_HEADROOM_KW if nominal else BALANCE_MARGIN_KW,
            )
            here = (
                A[is_cut],
                b[is_cut],
                [f"{labels[k]} @{point_no}" for k in np.flatnonzero(is_cut)],
            )
            A = np.vstack([A, *(c[0] for c in cuts)])
            b = np.concatenate([b, *(c[1] for c in cuts)])
            labels = [*labels, *(label for c in cuts for label in c[2])]
            if not op.predicted:  # a guess's tangents are no cuts of the AC circle
                cuts.append(here)
            if bound_at is not None:
                # "Do no harm" against the set without this trade: a row it already presses
                # stays bounded where it is.
                b = np.maximum(b, A @ bound_at)
            try:
                w = program.solve(A[:, :n_off], b - A[:, n_off:] @ p_fixed[n_off:], labels)
            except OptimizationError:
                return _whole(offers, best[1], self.left) if best is not None else None
            value = float(cost @ w)
            if best is None and gain is not None and value * scale > GIVE_UP_COST * gain:
                raise _OverBudget
            if best is not None and value >= best[0] - 1e-12:
                break  # no cheaper answer than the one AC has confirmed: no point to solve
            p = np.r_[p_fixed[:n_off] + incidence @ w, p_fixed[n_off:]]
            key = p.tobytes()
            again = key in seen
            if not again:
                # The last point is only checked: no sensitivities there.
                seen[key] = solved(p, [] if point_no == MAX_POINTS - 1 else buses)
            op_new = seen[key]
            if op_new is None:
                break
            if self._inside(op_new, nominal):
                best = (value, w)
            if again and op_new is op:
                # The answer is the point the program stands at: the next round would solve the
                # same rows there (and the same cuts) to the same value.
                break
            op = op_new
        return _whole(offers, best[1], self.left) if best is not None else None

    def _program_for(
        self, offers: Sequence[FlexOption], buses: Sequence[int], p_fixed: np.ndarray
    ) -> tuple[Program, sparse.csr_matrix, np.ndarray, float, np.ndarray]:
        """The remedy program over every offer (bounded by what is left of it) with bus columns
        ``buses`` fixed at ``p_fixed``; its incidence, cost per W (scaled), scale and the kW the
        offers left could move per bus. One program for the whole search: the next call only
        moves the fixed injections and the bounds, and HiGHS starts from the last basis."""
        upper = np.array([float(self.left[o.hash]) for o in offers])
        if self._kept is not None:
            program, incidence = self._kept[0], self._kept[1]
            program.fix(p_fixed)
            program.bound(upper)
            return (*self._kept[:4], np.abs(incidence) @ upper)
        col = {b: k for k, b in enumerate(buses)}
        n_var = len(offers)
        signs = [1.0 if o.direction == protocol.FLEX_UP else -1.0 for o in offers]
        incidence = sparse.csr_matrix(
            ([s / 1000.0 for s in signs], ([col[o.bus] for o in offers], list(range(n_var)))),
            shape=(len(buses), n_var),
        )
        hours = self.interval_seconds / 3600.0
        scale = float(max(o.price_per_kwh for o in offers) or 1)
        # Cost per W (scaled), time priority (offer sequence) breaking exact ties.
        cost = np.array(
            [
                o.price_per_kwh * hours / 1000.0 / scale + 1e-9 * (j + 1) / n_var
                for j, o in enumerate(offers)
            ]
        )
        program = Program(cost, upper, incidence, p_fixed, None, np.zeros(0), None, np.zeros(0), 0)
        self._kept = (program, incidence, cost, scale)
        return (program, incidence, cost, scale, np.abs(incidence) @ upper)

    def _reachable(self, op: OperatingPoint, veto: Decision) -> bool:
        """Whether the offers left, all at full power, could move the veto's binding element by
        ``SCREEN_SHARE`` of its excess, by the sensitivities at ``op`` (the state without the
        candidate; columns for every offer bus). A necessary condition only: a candidate that
        fails it is refused without a program; one that passes is decided by the program and
        the validator. True when the veto names no element with numbers."""
        if veto.value is None or veto.limit is None or veto.reason not in SCREENED:
            return True
        excess = abs(veto.value - veto.limit)
        offers = [o for o in self.flex.offers if self.left[o.hash] > 0]
        cols = [op.buses.index(o.bus) for o in offers]
        kw = np.array(
            [
                (1.0 if o.direction == protocol.FLEX_UP else -1.0) * self.left[o.hash] / 1000.0
                for o in offers
            ]
        )
        if veto.reason in ("VOLTAGE_HIGH", "VOLTAGE_LOW"):
            if veto.element not in op.bus_labels:
                return True
            k = op.bus_labels.index(veto.element)
            moves = op.dvm[k, cols] * kw * (-1.0 if veto.reason == "VOLTAGE_HIGH" else 1.0)
            return float(np.clip(moves, 0.0, None).sum()) >= SCREEN_SHARE * excess
        ends = [e for e, label in enumerate(op.end_labels) if label == veto.element]
        if not ends:
            return True
        best = 0.0
        for e in ends:
            z = op.current[e]
            u = np.conj(z / abs(z)) if abs(z) > 0 else 1.0
            moves = -(u * op.dcurrent[e, cols]).real * kw  # loading percent relieved
            best = max(best, float(np.clip(moves, 0.0, None).sum()))
        return best >= SCREEN_SHARE * excess

    def _inside(self, op: OperatingPoint, nominal: bool) -> bool:
        if nominal:
            return _inside_nominal(op, self.limits)
        # The validator's own test (its limit set, strict accept margins): an answer the
        # program put at a limit the set without the trade already presses (its rows are
        # bounded there) passes when AC keeps it inside, as the validator will decide.
        return op.violation is None

    # ------------------------------------------------------------------ plans
    def _plan(self, fills: Mapping[str, int]) -> list[tuple[FlexOption, int, int, int]]:
        """(offer, W, energy Wh, cost) of each activation of ``fills``, in offer order."""
        out = []
        for o in self.flex.offers:
            w = fills.get(o.hash, 0)
            if w > 0:
                energy, cost = activation_cost(w, o.price_per_kwh, self.interval_seconds)
                out.append((o, w, energy, cost))
        return out

    def _activations(
        self,
        plan: Sequence[tuple[FlexOption, int, int, int]],
        trade_id: str,
        payer_shares: Callable[[int], tuple[tuple[str, int], ...]],
    ) -> list[PlannedActivation]:
        return [
            PlannedActivation(
                protocol.activation_id_hex(o.hash, trade_id),
                o.hash,
                o.provider,
                o.device,
                o.bus,
                o.direction,
                w,
                o.baseline_w,
                o.price_per_kwh,
                trade_id,
                energy,
                cost,
                payer_shares(cost),
            )
            for o, w, energy, cost in plan
        ]

    def _confirm(self, trades: list[Candidate], acts: list[PlannedActivation]) -> bool:
        """The validator's AC confirmation: every trade of ``trades`` and every activation
        approved (the list has only trades meant to be approved)."""
        got, act_got, _ = self.validate(trades, [a.grid() for a in acts])
        return all(d.approved for d in got) and all(d.approved for d in act_got)

    def _take(self, acts: Sequence[PlannedActivation]) -> None:
        for a in acts:
            self.left[a.offer_hash] -= a.activated_w
            for wallet, share in a.payers:
                self.spent[wallet.lower()] += share
        self.activations.extend(acts)

    # ------------------------------------------------------------------ DSO service
    def dso(self) -> None:
        flex = self.flex
        if flex.dso_budget <= 0 or not flex.balancing_account or not flex.offers:
            return
        fixed = self._fixed()
        op = self.point(fixed, sorted(fixed) or [o.bus for o in flex.offers[:1]])
        self.stats.points += 1
        if op is None or _inside_nominal(op, self.limits, 0.0, 0.0):
            return
        fills = self._program(fixed, nominal=True)
        if not fills:
            return
        plan = self._plan(fills)
        cost = sum(p[3] for p in plan)
        account = flex.balancing_account
        funds = flex.payers.get(account.lower(), PayerFunds(0, 0))
        if cost > flex.dso_budget or cost > funds.available - self.spent[account.lower()]:
            return
        acts = self._activations(
            plan, protocol.ZERO_BYTES32, lambda c: ((account, c),) if c else ()
        )
        if not self._confirm(self.approved, acts):
            return
        self._take(acts)
        self.stats.dso_activations += len(acts)

    # ------------------------------------------------------------------ rescues
    def rescue_all(self) -> None:
        # What is left of each order after the approved trades: a vetoed candidate whose orders
        # another trade has filled since (the clearing pairs an order again after a veto) is
        # no lost trade.
        for c in self.approved:
            for o in (c.sell, c.buy):
                self.room[o.hash] = self.room.get(o.hash, o.energy_wh) - c.energy_wh
        for c in self.vetoed:
            if c.buy.price_per_kwh <= c.sell.price_per_kwh or not self._fits(c):
                continue
            self.stats.candidates += 1
            self._rescue(c)
            if self.rescued and self.rescued[-1] is c:
                for o in (c.sell, c.buy):
                    self.room[o.hash] = self.room.get(o.hash, o.energy_wh) - c.energy_wh

    def _fits(self, c: Candidate) -> bool:
        return all(self.room.get(o.hash, o.energy_wh) >= c.energy_wh for o in (c.sell, c.buy))

    def _state_point(self, fixed: Mapping[int, float]) -> OperatingPoint | None:
        """The AC point of the trades and activations so far (``fixed``, their injections), with
        columns for the offer buses and every candidate's: one linearization serves the screen,
        each candidate's first point and ``finish``'s guesses until the state changes."""
        key = (len(self.rescued), len(self.activations))
        if self._reference is None or self._reference[0] != key:
            buses = sorted(
                {o.bus for o in self.flex.offers}
                | {b for v in self.vetoed for b in (v.sell.bus, v.buy.bus)}
            )
            self._reference = (key, self.point(fixed, buses))
            self.stats.points += 1
        return self._reference[1]

    def _trade_kw(self, c: Candidate) -> dict[int, float]:
        """The candidate's injections (kW per bus)."""
        kw = c.energy_wh * self.kw_per_wh
        return {c.sell.bus: kw, c.buy.bus: -kw} if c.sell.bus != c.buy.bus else {c.sell.bus: 0.0}

    def _rescue(self, c: Candidate) -> None:
        flex = self.flex
        seller, buyer = c.sell.trader.lower(), c.buy.trader.lower()
        s_funds = flex.payers.get(seller, PayerFunds(0, 0))
        b_funds = flex.payers.get(buyer, PayerFunds(0, 0))
        if s_funds.cap_per_kwh == 0 and b_funds.cap_per_kwh == 0:
            self.stats.refused_cap += 1
            return
        before = [*self.approved, *self.rescued]
        base_fixed = self._fixed()
        reference = self._state_point(base_fixed)
        if reference is None:
            self.stats.refused_grid += 1
            return
        if not self._reachable(reference, self.veto_of[id(c)]):
            self.stats.screened_out += 1
            self.stats.unreachable.add((c.sell.hash, c.buy.hash))
            self.stats.refused_grid += 1
            return
        gain = (c.buy.price_per_kwh - c.sell.price_per_kwh) * c.energy_wh // 1000
        try:
            fills = self._program(
                self._fixed([c]), False, (base_fixed, reference), self._trade_kw(c), gain
            )
        except _OverBudget:
            self.stats.refused_cost += 1
            return
        if fills is None:
            self.stats.refused_grid += 1
            return
        if not fills:
            # It fits without an activation of its own: on the remedies bought for others (or
            # on the clearing's order). Remedies never approve a trade that pays for none.
            self.stats.left_out += 1
            return
        tid = protocol.trade_id_hex(c.sell.hash, c.buy.hash)
        plan = self._plan(fills)
        cost = sum(p[3] for p in plan)
        if not gain_exceeds(c, cost):
            self.stats.refused_cost += 1
            return
        escrow = protocol.escrow_of(c.energy_wh, c.price_per_kwh)
        # Shares activation by activation, each by FlexibilityMarket's rule for its own cost
        # (``_checkShares``: seller floor(cost_i / 2), a share over its party's cap moved to the
        # other), so that the chain records them; their sums within both caps and balances.
        parts = [
            split_cost(p[3], c.energy_wh, PayerFunds(s_funds.cap_per_kwh, UNLIMITED),
                       PayerFunds(b_funds.cap_per_kwh, UNLIMITED))
            for p in plan
        ]  # fmt: skip
        s_total = sum(x[0] for x in parts if not isinstance(x, str))
        b_total = sum(x[1] for x in parts if not isinstance(x, str))
        if (
            any(isinstance(x, str) for x in parts)
            or s_total > s_funds.cap_per_kwh * c.energy_wh // 1000
            or b_total > b_funds.cap_per_kwh * c.energy_wh // 1000
        ):
            self.stats.refused_cap += 1
            return
        if (
            s_total > s_funds.available - self.spent[seller]
            or b_total > b_funds.available - self.spent[buyer] - escrow
        ):
            self.stats.refused_funds += 1
            return
        shares = iter(
            ((c.sell.trader, x[0]), (c.buy.trader, x[1])) for x in parts if not isinstance(x, str)
        )
        acts = self._activations(plan, tid, lambda _cost: next(shares))
        if not self._confirm([*before, c], [*self.activations, *acts]):
            self.stats.refused_grid += 1
            self.stats.unconfirmed += 1
            return
        self._take(acts)
        self.spent[buyer] += escrow
        self.rescued.append(c)
        self.stats.rescued += 1

    # ------------------------------------------------------------------ the answer
    def finish(self, clearing: Clearing) -> Clearing:
        if not self.activations and not self.rescued:
            return clearing
        rescued = {id(c) for c in self.rescued}
        priority = [c for c in self.vetoed if id(c) not in rescued and id(c) not in self.outside]
        # Those the state's linearization says would now fit go last: each one the validator
        # approves is left out and the list validated again from before it (its prefix is
        # cached), so the ones likely to be left out cost the least at the list's end. Once
        # none is approved the rest is put back in priority order (each vetoed one judged at
        # the same state: the same verdicts, validated once more).
        point = self._state_point(self._fixed())
        likely = (
            set()
            if point is None
            else {id(c) for c in priority if _inside_linear(point.predict(self._trade_kw(c), ()))}
        )
        rest = [c for c in priority if id(c) not in likely] + [
            c for c in priority if id(c) in likely
        ]
        grid = [a.grid() for a in self.activations]
        n = len(self.approved) + len(self.rescued)
        while True:
            final = [*self.approved, *self.rescued, *rest]
            got, act_got, digest = self.validate(final, grid)
            if any(not d.approved for d in got[:n]) or any(not d.approved for d in act_got):
                # The last confirmation covered this prefix with the same activations and the
                # vetoed ones behind it cannot change it: never reached unless the validator is
                # not deterministic - the clearing's own answer stands then.
                return clearing
            # A vetoed candidate the activations bought for others would now let through is
            # left out: it would ride on remedies it does not pay for (and its orders may have
            # been filled since). Dropping one at the list's end changes no verdict before it.
            freed = {id(c) for c, d in zip(rest, got[n:], strict=True) if d.approved}
            if freed:
                self.stats.left_out += len(freed)
                rest = [c for c in rest if id(c) not in freed]
                continue
            kept = {id(c) for c in rest}
            ordered = [c for c in priority if id(c) in kept]
            if [id(c) for c in ordered] == [id(c) for c in rest]:
                break
            rest = ordered
        out = dataclasses.replace(clearing)
        out.trades = list(zip(final, got, strict=True))
        out.evidence_hash = digest
        out.activations = list(self.activations)
        return out


def remedy(
    clearing: Clearing,
    flex: FlexInput,
    point: PointOf,
    validate: ValidateWith,
    interval_seconds: int,
    limits: Limits,
    bought: Sequence[PlannedActivation] = (),
) -> tuple[Clearing, RemedyStats]:
    """``clearing`` with the DSO service's activations and the rescued trades (see the module
    doc), and what the search did. ``bought``: the DSO service's activations bought before the
    clearing (``island_service``; the clearing judged its trades with them): kept, and no DSO
    service after the clearing."""
    search = _Search(clearing, flex, point, validate, interval_seconds, limits)
    if not flex.offers:
        return clearing, search.stats
    if bought:
        search._take(bought)
    else:
        search.dso()
    search.rescue_all()
    return search.finish(clearing), search.stats


def island_service(
    flex: FlexInput,
    point: PointOf,
    validate: ValidateWith,
    interval_seconds: int,
    limits: Limits,
) -> tuple[list[PlannedActivation], RemedyStats]:
    """The DSO service of an islanded interval, before its clearing: when the island's base state
    breaks a limit - above all the master unit's power (``ISLAND_BALANCE``: short, every trade
    of the interval would be vetoed) - the cheapest activations that bring it back within the
    limits, within the budget and the balancing account's funds, confirmed by the validator
    (``point`` and ``validate`` islanded). An activation is a real injection in the island: what
    it adds (or the consumption it sheds), the master gives less. The clearing then judges the
    trades with them applied first (``remedy(..., bought=...)`` keeps them)."""
    search = _Search(Clearing(None), flex, point, validate, interval_seconds, limits)
    search.dso()
    return search.activations, search.stats


def _whole(offers: Sequence[FlexOption], w: np.ndarray, left: Mapping[str, int]) -> dict[str, int]:
    """Whole W per offer: rounded up (a remedy never falls short by rounding), within what is
    left of the offer; columns below ``MIN_W`` are no activation."""
    out: dict[str, int] = {}
    for o, x in zip(offers, w.tolist(), strict=True):
        if x >= MIN_W:
            out[o.hash] = min(math.ceil(x - 1e-6), left[o.hash])
    return out


def _inside_linear(op: OperatingPoint) -> bool:
    """Whether a (predicted) point is inside its limits: voltages and branch-end currents."""
    if np.any(op.vm_pu > op.vmax) or np.any(op.vm_pu < op.vmin):
        return False
    return not np.any(np.abs(op.current) > op.lmax)


def _nominal_arrays(
    op: OperatingPoint, limits: Limits
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(op.vm_pu)
    lmax = np.array(
        [
            limits.max_line_loading_percent
            if label.startswith("line")
            else limits.max_trafo_loading_percent
            for label in op.end_labels
        ]
    )
    return np.full(n, limits.vm_min_pu), np.full(n, limits.vm_max_pu), lmax


def _nominal(op: OperatingPoint, limits: Limits) -> OperatingPoint:
    """``op`` with the nominal limits instead of "do no harm" ones (the DSO service's goal)."""
    vmin, vmax, lmax = _nominal_arrays(op, limits)
    return dataclasses.replace(op, vmin=vmin, vmax=vmax, lmax=lmax)


def _inside_nominal(
    op: OperatingPoint,
    limits: Limits,
    margin_pu: float = MARGIN_PU / 2,
    margin_pct: float = MARGIN_PERCENT / 2,
) -> bool:
    if op.forming_kw is not None:  # islanded: the master's power within its limits first
        low, high = op.forming_limits_kw
        room = ISLAND_HEADROOM_KW / 2 if margin_pu > 0 else 0.0
        if not low + room <= op.forming_kw <= high - room:
            return False
    vmin, vmax, lmax = _nominal_arrays(op, limits)
    if np.any(op.vm_pu > vmax - margin_pu) or np.any(op.vm_pu < vmin + margin_pu):
        return False
    return not np.any(np.abs(op.current) > lmax - margin_pct)
