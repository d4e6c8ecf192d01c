"""Welfare-maximizing, network-constrained clearing of one interval (the market's default; the
greedy merit order of ``backend.market.auction`` is its fallback and the benchmark's baseline).

**What it chooses.** How much of each order to fill (partial fills allowed, up to the order's
volume), so that the welfare ``sum over trades of (bid - ask) x kWh`` is largest while the grid
stays within the Neural Grid's limits. Decision variables are the fills of the anonymous sells
and buys and of the bilateral pairs; the grid sees their net injection per bus.

**The grid as constraints.** ``grid.operating.OperatingPoint`` gives the validator's limits (voltage
bands, line and transformer loadings, "do no harm" where the base state already breaks one)
linearized at an AC solution: a row per voltage limit, tangent cuts for a branch current's
magnitude. The linear program (``backend.market.program``, HiGHS) is solved, the AC state of its
answer computed and the limits linearized again there: voltage rows are replaced, current cuts
are kept from every point (successive linear programming with Kelley's cutting planes;
``MAX_POINTS`` AC points at most, a trust region once answers keep missing). Only the rows an
answer breaks enter the program (row generation). The best answer whose AC state is inside every
limit by the margins is kept. A small bonus per Wh lets zero-spread pairs trade; time priority
breaks what ties remain.

**Pairs.** The chain records trades as (sell order, buy order). An anonymous sell and buy can pair
when the bid covers the ask; fills can be split into such pairs exactly when, for every price
level ``p``, the sells asking at least ``p`` are no more than the buys bidding at least ``p``
(Hall's condition for these nested neighbourhoods): those are rows of the program (through
running sums, so they stay sparse). Sells are then paired in descending ask - the most
constrained first, which makes any compatible choice succeed - each with buyers on its own bus
first (a trade that moves no power), then with the highest bids. No self-trades; a pair already
in the batch is never formed again (its trade id is taken).

**Price.** Uniform: the unconstrained auction's clearing price (``auction.uniform_price``), which
every participant sees; a trade whose own limits do not contain it (a dearer seller the network
needed) pays it clipped into ``[ask, bid]``, so nobody trades outside its limit. Locational prices
would be the program's duals per bus; they were not chosen because they depend on the
linearization (a participant could not check them), and on a feeder of a few hundred
households a single price is what participants expect. Welfare is independent of the price.

**Priority and order.** Bilateral pairs first: their own program over the base state, and the
anonymous auction on top of what they take. The validator decides trades in batch order
(approved iff the trades approved before it stay feasible), so a set feasible as a whole can
still see a veto when a relieving trade comes after a stressing one: trades are paired by
electrical closeness (same effect on the binding limits) and ordered so that every prefix stays
inside the limits as the answer's point predicts them (relieving first); a trade that fits
nowhere is held back and its volume cleared again in the next round (``MAX_ROUNDS``; held pairs
are formed otherwise), a vetoed one is tried again behind the others (``REORDERS``). Last, the
orders whose trades were held back or vetoed get a merit-order top-up (``auction.clear``
continuing the batch, ``TOP_UP_ROUNDS``) whose refused pairs are left out of the final list.
Later rounds append, so earlier verdicts stand; the final list's validation is the attestation.

**Deterministic.** The same book gives the same trades bit for bit: fixed variable order (order
sequence), HiGHS's dual simplex single-threaded with a fixed seed, whole-Wh fills (rounded so the
balance loses none), a fixed number of points and rounds (no wall-clock budget inside;
``tegrid bench clearing`` measures the time).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import sparse

from backend.chain.protocol import BUY, SELL
from backend.market.auction import (
    BookOrder,
    Candidate,
    Clearing,
    Decision,
    Validate,
    clear,
    uniform_price,
)
from backend.market.program import OptimizationError, Program, Var, order_rows, whole_wh
from grid.operating import OperatingPoint

# AC operating points per program (the first is the point the program starts from).
MAX_POINTS = 8
# Answers outside the limits in a row before the trust region closes in (see ``_Stage._solve``).
TRUST_AFTER = 2
# Clearing rounds after vetoes (each clears the volume left on top of the approved trades).
MAX_ROUNDS = 3
# The program keeps this far inside every limit, so the AC state of its answer - which the
# linearization predicts to second order - lands inside; the validator itself needs 1e-7 pu.
MARGIN_PU = 2e-4
MARGIN_PERCENT = 0.05
# Objective bonus per Wh filled (relative to the book's highest price): zero-spread pairs trade.
VOLUME_BONUS = 1e-6
# Merit-order rounds of the top-up after the optimal rounds (``_top_up``).
TOP_UP_ROUNDS = 4
# Times a round's vetoed trades are moved behind the others and the list validated again.
REORDERS = 2
# Passes over the trades still waiting when they are put in an order the validator approves.
ORDER_PASSES = 8
# A limit binds at an answer when its slack there is at most this share of the room it moved
# through (see ``_Stage._closeness``).
BINDING_SHARE = 0.1
# Stop relinearizing when a feasible answer's welfare gains less than this share.
CONVERGED = 1e-4

# An AC operating point of the interval: extra injections (bus -> kW), sensitivity columns.
PointOf = Callable[[Mapping[int, float], Sequence[int]], OperatingPoint | None]


def welfare(trades: Sequence[Candidate]) -> float:
    """Sum of (bid - ask) x kWh over ``trades`` in token base units, exact (``Clearing.welfare``
    is the stored figure: whole base units, rounded down)."""
    return sum((c.buy.price_per_kwh - c.sell.price_per_kwh) * c.energy_wh / 1000.0 for c in trades)


def clear_optimal(
    orders: Sequence[BookOrder],
    validate: Validate,
    point: PointOf,
    interval_seconds: int,
    leftover: bool = False,
) -> Clearing:
    """Clear ``orders`` (see the module doc); raises ``OptimizationError`` when a program fails.

    ``leftover`` (the interval has flexibility offers): the top-up also offers the volume the
    program left where a limit binds (every order with volume left after the approved trades),
    so that the pairs the grid refuses there reach the remedy search (``Clearing.refused``)."""
    sells = sorted((o for o in orders if o.side == SELL and o.energy_wh > 0), key=_seq)
    buys = sorted((o for o in orders if o.side == BUY and o.energy_wh > 0), key=_seq)
    price = uniform_price(sells + buys)
    result = Clearing(
        clearing_price=price,
        offered_wh=sum(o.energy_wh for o in sells),
        bid_wh=sum(o.energy_wh for o in buys),
        method="optimal",
    )
    kw_per_wh = 3600.0 / interval_seconds / 1000.0
    batch: list[Candidate] = []
    verdicts: list[Decision] = []
    held_pairs: set[tuple[str, str]] = set()
    evidence = result.evidence_hash
    for _ in range(MAX_ROUNDS):
        left = {o.hash: o.energy_wh for o in (*sells, *buys)}
        fixed: dict[int, float] = defaultdict(float)
        for c, d in zip(batch, verdicts, strict=True):
            if d.approved:
                left[c.sell.hash] -= c.energy_wh
                left[c.buy.hash] -= c.energy_wh
                fixed[c.sell.bus] += c.energy_wh * kw_per_wh
                fixed[c.buy.bus] -= c.energy_wh * kw_per_wh
        # A pair once in the batch keeps its trade id; a pair held back is formed otherwise.
        taken = {(c.sell.hash, c.buy.hash) for c in batch} | held_pairs
        stage = _Stage(point, kw_per_wh, fixed)
        fresh, held = stage.bilateral(sells, buys, left, taken)
        for c in fresh:
            fixed[c.sell.bus] += c.energy_wh * kw_per_wh
            fixed[c.buy.bus] -= c.energy_wh * kw_per_wh
        stage = _Stage(point, kw_per_wh, fixed)
        auction, held_auction = stage.auction(sells, buys, left, taken, price)
        fresh += auction
        held_pairs.update((c.sell.hash, c.buy.hash) for c in (*held, *held_auction))
        if not fresh:
            if held or held_auction:
                continue  # nothing fitted as paired: pair the same fills otherwise
            break
        start = len(batch)
        for _ in range(REORDERS + 1):
            candidates = batch + fresh
            got, digest = validate(candidates)
            if len(got) != len(candidates):
                raise OptimizationError("the validator returned a different number of verdicts")
            # A vetoed trade is tried again after the others (a veto only means it does not fit
            # where it stands; moving it leaves every other verdict as it was).
            vetoed = [k for k in range(len(fresh)) if not got[start + k].approved]
            if not vetoed or vetoed[0] == len(fresh) - len(vetoed):
                break
            fresh = [c for k, c in enumerate(fresh) if k not in vetoed] + [fresh[k] for k in vetoed]
        if any(got[i].approved != verdicts[i].approved for i in range(start)):
            raise OptimizationError("the validator changed a verdict of an unchanged prefix")
        batch, verdicts, evidence = candidates, list(got), digest
        if all(d.approved for d in got[start:]) and not (held or held_auction):
            break
    # The orders of trades the rounds held back or the grid vetoed: the program meant them to
    # trade, the pairs it formed did not fit.
    missed = {h for pair in held_pairs for h in pair}
    missed |= {h for c, d in zip(batch, verdicts, strict=True) if not d.approved
               for h in (c.sell.hash, c.buy.hash)}  # fmt: skip
    if leftover:
        rest = {o.hash: o.energy_wh for o in (*sells, *buys)}
        for c, d in zip(batch, verdicts, strict=True):
            if d.approved:
                rest[c.sell.hash] -= c.energy_wh
                rest[c.buy.hash] -= c.energy_wh
        missed |= {h for h, wh in rest.items() if wh > 0}
    result.trades, result.evidence_hash, result.refused = _top_up(
        [o for o in (*sells, *buys) if o.hash in missed],
        validate,
        list(zip(batch, verdicts, strict=True)),
        evidence,
    )
    return result


def _top_up(
    orders: Sequence[BookOrder],
    validate: Validate,
    decided: list[tuple[Candidate, Decision]],
    evidence: str,
) -> tuple[list[tuple[Candidate, Decision]], str, list[tuple[Candidate, Decision]]]:
    """What ``orders`` have left after the rounds offered once more in merit order after them
    (``auction.clear`` continuing the batch); the pairs it tried and the grid refused are left
    out again, so the batch records no more vetoes than the optimal rounds made (they are
    returned apart, with their decisions: the remedy search's candidates). The final list is
    validated as a whole (its answer is the attestation)."""
    if not orders:
        return decided, evidence, []
    topped = clear(orders, validate, decided, TOP_UP_ROUNDS)
    n = len(decided)
    if len(topped.trades) == n:
        return decided, evidence, []
    final = [c for k, (c, d) in enumerate(topped.trades) if k < n or d.approved]
    if len(final) == len(topped.trades):
        return topped.trades, topped.evidence_hash, []
    got, digest = validate(final)
    want = [d.approved for k, (_, d) in enumerate(topped.trades) if k < n or d.approved]
    if [d.approved for d in got] != want:
        return topped.trades, topped.evidence_hash, []  # as validated, vetoes and all
    refused = [(c, d) for k, (c, d) in enumerate(topped.trades) if k >= n and not d.approved]
    return list(zip(final, got, strict=True)), digest, refused


def _seq(o: BookOrder) -> tuple[int, str]:
    return (o.seq, o.hash)


class _Stage:
    """One program on top of ``fixed`` injections (kW per bus): the bilateral pairs, or the
    anonymous auction."""

    def __init__(self, point: PointOf, kw_per_wh: float, fixed: Mapping[int, float]) -> None:
        self.point = point
        self.kw_per_wh = kw_per_wh
        self.fixed = dict(fixed)
        # The AC operating point of the best answer (where ``_ordered`` linearizes the limits).
        self.final: OperatingPoint | None = None

    # ------------------------------------------------------------------ the two programs
    def bilateral(
        self,
        sells: Sequence[BookOrder],
        buys: Sequence[BookOrder],
        left: dict[str, int],
        taken: set[tuple[str, str]],
    ) -> tuple[list[Candidate], list[Candidate]]:
        """The bilateral trades in validation order, and those held back (see ``_ordered``)."""
        pairs = [
            Var(s, b, min(left[s.hash], left[b.hash]), b.price_per_kwh - s.price_per_kwh)
            for s in sells
            if s.bilateral and left[s.hash] > 0
            for b in buys
            if b.bilateral
            and left[b.hash] > 0
            and (s.hash, b.hash) not in taken
            and s.counterparty.lower() == b.trader.lower()
            and b.counterparty.lower() == s.trader.lower()
            and b.price_per_kwh >= s.price_per_kwh
        ]
        if not pairs:
            return [], []
        # Each order's fills over its pairs within what is left of it.
        caps: dict[str, list[int]] = defaultdict(list)
        for j, v in enumerate(pairs):
            assert v.sell is not None and v.buy is not None
            caps[v.sell.hash].append(j)
            caps[v.buy.hash].append(j)
        rows = [(idx, left[h]) for h, idx in caps.items() if len(idx) > 1]
        fills = self._solve(pairs, rows, hall=None)
        out: list[Candidate] = []
        spare = dict(left)
        for v, q in zip(pairs, fills, strict=True):
            assert v.sell is not None and v.buy is not None
            q = min(q, spare[v.sell.hash], spare[v.buy.hash])
            if q <= 0:
                continue
            spare[v.sell.hash] -= q
            spare[v.buy.hash] -= q
            mid = (v.sell.price_per_kwh + v.buy.price_per_kwh) // 2
            out.append(Candidate(v.sell, v.buy, q, mid, "bilateral"))
        return self._take(out, left)

    def auction(
        self,
        sells: Sequence[BookOrder],
        buys: Sequence[BookOrder],
        left: dict[str, int],
        taken: set[tuple[str, str]],
        price: int | None,
    ) -> tuple[list[Candidate], list[Candidate]]:
        """The auction's trades in validation order, and those held back."""
        asks = [o for o in sells if not o.bilateral and left[o.hash] > 0]
        bids = [o for o in buys if not o.bilateral and left[o.hash] > 0]
        if not asks or not bids:
            return [], []
        top_bid = max(o.price_per_kwh for o in bids)
        low_ask = min(o.price_per_kwh for o in asks)
        asks = [o for o in asks if o.price_per_kwh <= top_bid]
        bids = [o for o in bids if o.price_per_kwh >= low_ask]
        if not asks or not bids:
            return [], []
        variables = [Var(o, None, left[o.hash], -float(o.price_per_kwh)) for o in asks]
        variables += [Var(None, o, left[o.hash], float(o.price_per_kwh)) for o in bids]
        fills = self._solve(variables, [], hall=(len(asks), len(bids)))
        sold = {v.sell.hash: q for v, q in zip(variables, fills, strict=True) if v.sell}
        bought = {v.buy.hash: q for v, q in zip(variables, fills, strict=True) if v.buy}
        trades = _pair(asks, bids, sold, bought, taken, price, self._closeness())
        return self._take(trades, left)

    def _take(
        self, trades: list[Candidate], left: dict[str, int]
    ) -> tuple[list[Candidate], list[Candidate]]:
        """``trades`` in validation order without those held back (their volume stays in
        ``left`` for the next round), and the held-back ones."""
        kept, held = self._ordered(trades)
        for c in kept:
            left[c.sell.hash] -= c.energy_wh
            left[c.buy.hash] -= c.energy_wh
        return kept, held

    # ------------------------------------------------------------------ the program
    def _solve(
        self,
        variables: Sequence[Var],
        caps: Sequence[tuple[list[int], int]],
        hall: tuple[int, int] | None,
    ) -> list[int]:
        """Integer Wh fills of ``variables`` maximizing their value within the grid's limits,
        ``caps`` (sum of the listed variables <= cap) and, for an auction of ``hall`` = (asks,
        bids) - the asks first in ``variables`` - balance and Hall's condition."""
        buses = sorted(
            {o.bus for v in variables for o in (v.sell, v.buy) if o is not None} | set(self.fixed)
        )
        col = {b: k for k, b in enumerate(buses)}
        n_var, n_bus = len(variables), len(buses)
        # Injection incidence (kW per Wh of each variable at each bus).
        inc_r: list[int] = []
        inc_c: list[int] = []
        inc_v: list[float] = []
        for j, v in enumerate(variables):
            if v.sell is not None:
                inc_r.append(col[v.sell.bus])
                inc_c.append(j)
                inc_v.append(self.kw_per_wh)
            if v.buy is not None:
                inc_r.append(col[v.buy.bus])
                inc_c.append(j)
                inc_v.append(-self.kw_per_wh)
        incidence = sparse.csr_matrix((inc_v, (inc_r, inc_c)), shape=(n_bus, n_var))
        upper = np.array([v.upper for v in variables], dtype=float)
        p_fixed = np.array([self.fixed.get(b, 0.0) for b in buses])
        reach = np.abs(incidence) @ upper
        low = p_fixed - reach
        high = p_fixed + reach
        scale = max((abs(v.value) for v in variables), default=1.0) or 1.0
        # Volume between equal welfare: a pair whose bid equals its ask still trades (as in the
        # merit order) - a bonus per Wh far below any real price difference; below that, time
        # priority: earlier orders first. The solver's answer is deterministic either way.
        cost = np.array(
            [
                -(v.value / scale) - VOLUME_BONUS + 1e-9 * j / max(n_var, 1)
                for j, v in enumerate(variables)
            ]
        )
        program = Program(cost, upper, incidence, p_fixed, *order_rows(variables, caps, hall))
        start_op = self.point(self.fixed, buses)
        if start_op is None:
            raise OptimizationError("no power-flow solution at the program's starting point")
        op = start_op
        best: tuple[float, np.ndarray] | None = None
        last_value = -math.inf
        # The limits are linearized again where each answer landed. Should answers keep landing
        # outside them (``TRUST_AFTER`` in a row: the linearization swings), a trust region keeps
        # the bus injections within ``radius`` kW of ``center`` (the last answer inside, at
        # first the start), halved at every further miss.
        center, radius, misses = p_fixed, math.inf, 0
        cuts: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        for point_no in range(MAX_POINTS):
            A, b, labels, is_cut = op.constraints(
                np.maximum(np.abs(low - op.injections_kw), np.abs(high - op.injections_kw)),
                MARGIN_PU,
                MARGIN_PERCENT,
            )
            # A current's tangent cuts stay valid (Kelley's cutting planes close in on the circle
            # from outside): those of the points before are kept; voltage rows are replaced.
            here = (
                A[is_cut],
                b[is_cut],
                [f"{labels[k]} @{point_no}" for k in np.flatnonzero(is_cut)],
            )
            A = np.vstack([A, *(c[0] for c in cuts)])
            b = np.concatenate([b, *(c[1] for c in cuts)])
            labels = [*labels, *(label for c in cuts for label in c[2])]
            cuts.append(here)
            # Never cut off filling nothing: where the start is already inside the margin band
            # (a limit the base state breaks, "do no harm"), the start bounds the row.
            start = A @ p_fixed
            b = np.maximum(b, start)
            program.box(center, radius)
            try:
                w = program.solve(A, b, labels)
            except OptimizationError:
                if not math.isfinite(radius):
                    raise
                program.box(center, math.inf)  # the box left no answer: take the whole space
                w = program.solve(A, b, labels)
            p = p_fixed + incidence @ w
            op_new = self.point(dict(zip(buses, p.tolist(), strict=True)), buses)
            value = float(-cost @ w)
            if op_new is not None and _inside(op_new, start_op, MARGIN_PU / 2, MARGIN_PERCENT / 2):
                if best is None or value > best[0]:
                    best = (value, w)
                    self.final = op_new
                converged = abs(value - last_value) <= CONVERGED * max(abs(value), 1e-12)
                last_value = value
                center, radius, misses = p, math.inf, 0
                op = op_new
                if converged:
                    break
                continue
            misses += 1
            if misses >= TRUST_AFTER:
                radius = 0.5 * float(np.max(np.abs(p - center), initial=0.0))
            if op_new is not None:
                op = op_new
        if best is None:
            raise OptimizationError(
                f"no answer inside every limit after {MAX_POINTS} operating points"
            )
        return whole_wh(best[1], variables)

    # ------------------------------------------------------------------ order
    def _closeness(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Where buses stand on the limits that bind at the best answer: per bus, each binding
        row's sensitivity over the room that row moved through. Two buses with close signatures
        trade without moving those limits much, so such trades can be put in an order the
        validator approves one by one."""
        op = self.final
        if op is None:
            return None
        col = {b: k for k, b in enumerate(op.buses)}
        p_start = np.array([self.fixed.get(b, 0.0) for b in op.buses])
        A, b, _, _ = op.constraints(
            np.abs(p_start - op.injections_kw), MARGIN_PU / 2, MARGIN_PERCENT / 2
        )
        used = A @ p_start
        # "Do no harm": a row the start already breaks is bounded where the start is.
        b = np.maximum(b, used)
        at_answer = A @ op.injections_kw
        room = np.abs(at_answer - used) + (b - at_answer)
        binding = np.flatnonzero((b - at_answer) <= BINDING_SHARE * np.maximum(room, 1e-12))
        if not len(binding):
            return None
        # buses x rows, with a zero row for a bus the program did not see
        table = np.vstack(
            [(A[binding] / np.maximum(room[binding], 1e-12)[:, None]).T, np.zeros(len(binding))]
        )
        missing = len(table) - 1

        def signature(buses: np.ndarray) -> np.ndarray:
            return np.asarray(table[[col.get(int(x), missing) for x in buses]])

        return signature

    def _ordered(self, trades: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
        """``trades`` in an order whose every prefix stays inside the limits as the best
        answer's AC point predicts them (voltages linear, branch currents as complex phasors,
        their magnitudes exact), relieving trades first, each placed when it fits; and those
        that fit nowhere (held back: the next round clears their volume again, paired
        otherwise)."""
        op = self.final
        if op is None or len(trades) < 2:
            return trades, []
        col = {b: k for k, b in enumerate(op.buses)}
        p_start = np.array([self.fixed.get(b, 0.0) for b in op.buses])
        seller = np.array([col[c.sell.bus] for c in trades])
        buyer = np.array([col[c.buy.bus] for c in trades])
        kw = np.array([c.energy_wh * self.kw_per_wh for c in trades])
        # The start as the answer's point predicts it; "do no harm" keeps a limit the start
        # breaks where the start is.
        dp = p_start - op.injections_kw
        vm = op.vm_pu + op.dvm @ dp
        vhigh = np.maximum(op.vmax - MARGIN_PU / 2, vm)
        vlow = np.minimum(op.vmin + MARGIN_PU / 2, vm)
        z = op.current + op.dcurrent @ dp
        zmax = np.maximum(op.lmax - MARGIN_PERCENT / 2, np.abs(z))
        ev = (op.dvm[:, seller] - op.dvm[:, buyer]) * kw  # rows x trades
        ez = (op.dcurrent[:, seller] - op.dcurrent[:, buyer]) * kw
        # Only limits some order of these trades could reach matter.
        v_near = (np.maximum(ev, 0.0).sum(axis=1) > vhigh - vm) | (
            np.maximum(-ev, 0.0).sum(axis=1) > vm - vlow
        )
        z_near = np.abs(z) + np.abs(ez).sum(axis=1) > zmax
        vm, vhigh, vlow, ev = vm[v_near], vhigh[v_near], vlow[v_near], ev[v_near]
        z, zmax, ez = z[z_near], zmax[z_near], ez[z_near]
        # Stress: the largest share of a limit's room a trade uses at the start.
        up = (vhigh - vm)[:, None]
        down = (vm - vlow)[:, None]
        use_v = np.maximum(ev / np.maximum(up, 1e-12), -ev / np.maximum(down, 1e-12))
        grow = np.abs(z[:, None] + ez) - np.abs(z)[:, None]
        use_z = grow / np.maximum((zmax - np.abs(z))[:, None], 1e-12)
        stress = np.maximum(use_v.max(axis=0, initial=-np.inf), use_z.max(axis=0, initial=-np.inf))
        keyed = sorted(
            range(len(trades)),
            key=lambda i: (
                float(stress[i]),
                -(trades[i].buy.price_per_kwh - trades[i].sell.price_per_kwh),
                trades[i].sell.hash,
                trades[i].buy.hash,
            ),
        )
        # The common case: every prefix of that order fits (one vectorized check).
        path_v = vm[:, None] + np.cumsum(ev[:, keyed], axis=1)
        path_z = np.abs(z[:, None] + np.cumsum(ez[:, keyed], axis=1))
        if (
            np.all(path_v <= vhigh[:, None])
            and np.all(path_v >= vlow[:, None])
            and np.all(path_z <= zmax[:, None])
        ):
            return [trades[i] for i in keyed], []
        placed: list[int] = []
        waiting = keyed
        for _ in range(ORDER_PASSES):
            later: list[int] = []
            for i in waiting:
                v_next = vm + ev[:, i]
                z_next = z + ez[:, i]
                if (
                    np.all(v_next <= vhigh)
                    and np.all(v_next >= vlow)
                    and np.all(np.abs(z_next) <= zmax)
                ):
                    vm, z = v_next, z_next
                    placed.append(i)
                else:
                    later.append(i)
            done = len(later) == len(waiting) or not later
            waiting = later
            if done:
                break
        return [trades[i] for i in placed], [trades[i] for i in waiting]


def _inside(op: OperatingPoint, start: OperatingPoint, margin_pu: float, margin_pct: float) -> bool:
    """Whether the AC state is inside every limit by the margins - or, where the start already
    is not ("do no harm"), no worse than the start."""
    vhigh = np.maximum(op.vmax - margin_pu, start.vm_pu)
    vlow = np.minimum(op.vmin + margin_pu, start.vm_pu)
    if np.any(op.vm_pu > vhigh) or np.any(op.vm_pu < vlow):
        return False
    return not np.any(np.abs(op.current) > np.maximum(op.lmax - margin_pct, np.abs(start.current)))


def _pair(
    asks: Sequence[BookOrder],
    bids: Sequence[BookOrder],
    sold: Mapping[str, int],
    bought: Mapping[str, int],
    taken: set[tuple[str, str]],
    price: int | None,
    signature: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Candidate]:
    """Split the fills into (sell, buy) trades whose bid covers the ask (see the module doc):
    each seller, in descending ask, with the compatible buyers on its own bus first, then the
    closest by ``signature`` (when given), then the highest bids."""
    order = sorted((o for o in bids if bought.get(o.hash, 0) > 0),
                   key=lambda o: (-o.price_per_kwh, o.seq, o.hash))  # fmt: skip
    if not order:
        return []
    remaining = np.array([int(bought[o.hash]) for o in order], dtype=np.int64)
    prices = [o.price_per_kwh for o in order]
    bid = np.array(prices, dtype=np.int64 if max(prices) < 2**62 else object)
    bus = np.array([o.bus for o in order], dtype=np.int64)
    trader = np.array([o.trader.lower() for o in order])
    rank = np.arange(len(order))
    where = signature(bus) if signature is not None else None
    out: list[Candidate] = []
    for s in sorted(asks, key=lambda o: (-o.price_per_kwh, o.seq, o.hash)):
        need = int(sold.get(s.hash, 0))
        if need <= 0:
            continue
        ok = (remaining > 0) & (bid >= s.price_per_kwh).astype(bool) & (trader != s.trader.lower())
        idx = np.flatnonzero(ok)
        if not len(idx):
            continue
        far = (bus[idx] != s.bus).astype(float)
        if where is not None and signature is not None:
            near = np.abs(where[idx] - signature(np.array([s.bus]))[0]).sum(axis=1)
        else:
            near = np.zeros(len(idx))
        for k in idx[np.lexsort((rank[idx], near, far))]:
            if need <= 0:
                break
            b = order[int(k)]
            if (s.hash, b.hash) in taken:
                continue
            q = int(min(need, remaining[k]))
            remaining[k] -= q
            need -= q
            p = price if price is not None else (s.price_per_kwh + b.price_per_kwh) // 2
            p = min(max(p, s.price_per_kwh), b.price_per_kwh)
            out.append(Candidate(s, b, q, p, "auction"))
    return out
