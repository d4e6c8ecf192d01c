"""Benchmark: the optimal network-constrained clearing against the greedy merit order, the
unconstrained auction and an AC-verified reference optimum, on congested midday order books.

**Books: a congested midday.** Per network, the load buses are ranked weakest first by the
export they can host at 13:00 (``GridValidator.hosting_capacity``: the far ends of long feeders
come first). The members come from the demo's community generator (``backend.demo.community``:
``build_community`` for sizes and keys, ``intent_for`` for each interval's order) in three groups:

- ``pv_sellers`` PV households crowded on the weakest ``weak_share`` of the buses (the generator
  places PV on its list's weak end), each selling its forecast surplus at 0.06-0.14 tokens/kWh;
- ``buyers`` households without PV (EV or heat-pump charging, 0.10-0.30 tokens/kWh) and with
  batteries (charging at midday, 0.16) on the strongest ``strong_share`` of the buses;
- ``mid_sellers`` PV households on the buses between them, asking more (``MID_ASK``: 0.15-0.22
  tokens/kWh): the sellers a network-aware clearing should take when the cheap weak-bus PV would
  push its feeder's voltage or cables over their limits.

Sizes are the demo generator's (PV 40-80 kWp per member, EV 22-88 kW, batteries 15-30 kW): one
member stands for a few households' worth of roofs or chargers. Counts per network are chosen so
the grid binds: the greedy clearing ends well below the unconstrained auction. Intervals
11:00-14:45 (16 of 15 minutes) of the second simulated day; every random draw is seeded
(``SEED``, the interval), so a run sees the same books.

**Figures, per interval and in total.** Welfare (sum of (bid - ask) x kWh over approved trades,
in tokens) and kWh of the optimal clearing (``GridPortAdapter(clearing="optimal")``, its
``Clearing.method``), the greedy one (``clearing="greedy"``) and the unconstrained auction
(``auction.clear(book, None)``); vetoes; the time of the whole ``GridPortAdapter.clear`` call at
gate closure (each clearing on a fresh validator whose interval base state was prepared before,
untimed, as the market does with ``prepare``); violations of each final approved set under an
independent pandapower ``runpp`` (``bench.naive.PandapowerChecker``, the plain rule); whether the
optimal clearing, run again on another fresh validator, gives the same trades and evidence hash.

**The reference optimum** (``reference_optimum``) is computed here, independently of the
market's and the validator's code: an order-level linear program (fills of every sell and buy
order; balance; Hall's condition that sells asking at least ``p`` are no more than buys bidding
at least ``p``, for every ask ``p``, so the fills split into pairs whose bid covers the ask) with
the grid's limits linearized from pandapower's own solution (``pp.runpp`` of the base net with
the fills' injections; the Jacobian from pandapower's ``dSbus_dV`` at that solution's voltages,
voltage magnitudes and branch-end current magnitudes per injected kW) and the validator's
effective limits (``LimitSet``: the same bands and "do no harm" rule). It is sequential linear
programming with a trust region and an exact penalty: every iterate is solved by a full
``runpp`` and the program relinearized there, until a step gains nothing (no time budget, no
order of trades, no per-trade verdicts). Its final set is confirmed by ``runpp`` under the strict
rule. The optimal clearing must reach ``TARGET_SHARE`` of it. The reference is an upper bound
of sorts - fills are continuous and it needs no order in which the validator approves its trades
one by one - but a local optimum of a non-convex program, so a clearing may exceed it slightly.

**Scale.** The 13:00 book of ``SCALE_NETWORK`` with every order split into equal parts
(distinct traders, same bus and price) until it holds ``SCALE_ORDERS`` orders, cleared by both
methods on fresh prepared validators. Splitting changes neither the unconstrained optimum nor the
reference (fills are per order, continuous), so the unsplit interval's reference applies.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pandapower.pypower.dSbus_dV import dSbus_dV
from scipy import sparse
from scipy.optimize import linprog
from scipy.sparse.linalg import splu

from backend.chain.protocol import BUY, SELL, TOKEN_UNIT, ZERO_ADDRESS
from backend.demo.community import PV, Member, build_community, intent_for
from backend.market.auction import BookOrder, Clearing, clear
from backend.market.grid_port import GridPortAdapter
from backend.market.optimal import welfare
from bench.naive import PandapowerChecker
from grid.limits import LimitSet, Violation
from grid.validator import GridValidator

SEED = 20241204
INTERVAL_SECONDS = 900
INTERVALS_PER_DAY = 86_400 // INTERVAL_SECONDS
DAY = 1  # the second simulated day (interval ids > 96: not the epoch's first)
FIRST_HOUR = 11.0
N_INTERVALS = 16  # 11:00-14:45
RANK_HOUR = 13.0  # buses are ranked by the export they can host then
MID_ASK = (0.15, 0.22)  # tokens/kWh asked by the mid-grid sellers
TARGET_SHARE = 0.98
SCALE_NETWORK = "kerber_vorstadt"
SCALE_HOUR = 13.0
SCALE_ORDERS = 2000

# The reference's sequential linear programming.
REF_MARGIN_PU = 1e-6  # inside every limit (the strict rule needs 1e-7 pu, 1e-5 %)
REF_MARGIN_PERCENT = 1e-4
REF_MAX_ITERATIONS = 200
REF_PENALTY = 1e3  # tokens per milli-pu or per percent of violation (exact penalty, >> duals)
REF_STEP_KW = 1e-3  # converged: a step moves no bus by more than this, and runpp finds it inside
REF_UNDAMPED = 25  # full steps before the trust region starts shrinking them
REF_DAMPING = 0.7
REF_MAX_CUT_ROUNDS = 200  # tangent-cut rounds per linearized program


@dataclass(frozen=True)
class ClearingCase:
    """One network's book generator: member counts and how the ranked buses are split."""

    network: str
    pv_sellers: int
    buyers: int
    mid_sellers: int
    weak_share: float = 0.3
    strong_share: float = 0.3


CASES: tuple[ClearingCase, ...] = (
    ClearingCase("cigre_lv", pv_sellers=8, buyers=30, mid_sellers=6),
    ClearingCase("kerber_vorstadt", pv_sellers=50, buyers=80, mid_sellers=12, weak_share=0.2),
    ClearingCase("1-LV-rural2--0-sw", pv_sellers=12, buyers=50, mid_sellers=8),
)


def interval_of(hour: float, day: int = DAY) -> int:
    """The interval id starting at ``hour`` of simulated day ``day``."""
    return day * INTERVALS_PER_DAY + round(hour * 3600) // INTERVAL_SECONDS


def hour_of(interval: int) -> float:
    return (interval % INTERVALS_PER_DAY) * INTERVAL_SECONDS / 3600


# --------------------------------------------------------------------------- the books
def ranked_buses(validator: GridValidator, hour: float = RANK_HOUR) -> list[int]:
    """Load buses weakest first: least export hostable at ``hour`` (ties: bus index)."""
    interval = interval_of(hour)
    cap = {
        b: validator.hosting_capacity(b, interval, INTERVAL_SECONDS).max_export.p_kw
        for b in validator.load_buses()
    }
    return sorted(cap, key=lambda b: (cap[b], b))


def _members(buses: list[int], count: int, seed: int, with_pv: bool) -> list[Member]:
    """The first ``count`` members of the demo community on ``buses`` (weakest first) that have
    PV (``with_pv``) or have none: PV members sit from the list's weak end, the others from its
    strong end."""
    size = 2 * count + 8
    while True:
        picked = [m for m in build_community(buses, size, seed) if (m.kind == PV) == with_pv][
            :count
        ]
        if len(picked) == count:
            return picked
        size *= 2


@dataclass(frozen=True)
class Community:
    """The members of a case and the bus groups they sit on (weakest first)."""

    pv: list[Member]
    buyers: list[Member]
    mid: list[Member]
    weak_buses: list[int]
    mid_buses: list[int]
    strong_buses: list[int]


def community(case: ClearingCase, ranked: Sequence[int], seed: int = SEED) -> Community:
    n = len(ranked)
    n_weak = max(1, round(case.weak_share * n))
    n_strong = max(1, round(case.strong_share * n))
    weak = list(ranked[:n_weak])
    strong = list(ranked[n - n_strong :])
    mid = list(ranked[n_weak : n - n_strong]) or weak
    return Community(
        pv=_members(weak, case.pv_sellers, seed, with_pv=True),
        buyers=_members(strong, case.buyers, seed + 1, with_pv=False),
        mid=_members(mid, case.mid_sellers, seed + 2, with_pv=True),
        weak_buses=weak,
        mid_buses=mid,
        strong_buses=strong,
    )


def midday_book(members: Community, interval: int, tag: str, seed: int = SEED) -> list[BookOrder]:
    """The anonymous orders of ``members`` for ``interval`` (``tag`` keeps order hashes distinct
    between networks); the mid-grid sellers ask ``MID_ASK``."""
    rng = random.Random(seed * 100_003 + interval)
    hour = hour_of(interval)
    hours = INTERVAL_SECONDS / 3600
    book: list[BookOrder] = []
    everyone = [(m, False) for m in members.pv] + [(m, True) for m in members.mid]
    everyone += [(m, False) for m in members.buyers]
    for k, (member, dearer) in enumerate(everyone):
        intent = intent_for(member, hour, hours, rng)
        if intent is None:
            continue
        price = intent.price_per_kwh
        if dearer:
            price = int(TOKEN_UNIT * rng.uniform(*MID_ASK))
        digest = hashlib.sha256(f"tegrid bench clearing {tag} {interval} {k}".encode()).hexdigest()
        book.append(
            BookOrder(
                "0x" + digest,
                f"0x{k + 1:040x}",
                intent.side,
                intent.energy_wh,
                price,
                ZERO_ADDRESS,
                k,
                member.bus,
            )
        )
    return book


def split_book(book: Sequence[BookOrder], orders: int) -> list[BookOrder]:
    """``book`` with its orders split into equal parts (the last part takes the rounding;
    distinct hashes and traders, same side, bus and price) so that it holds ``orders`` orders
    (the first ``orders % len(book)`` orders get one part more)."""
    base, extra = divmod(orders, max(len(book), 1))
    out: list[BookOrder] = []
    for i, o in enumerate(book):
        parts = base + (1 if i < extra else 0)
        share = o.energy_wh // max(parts, 1)
        for j in range(parts):
            energy = share if j < parts - 1 else o.energy_wh - share * (parts - 1)
            seq = len(out)
            digest = hashlib.sha256(f"{o.hash} part {j}".encode()).hexdigest()
            out.append(
                BookOrder(
                    "0x" + digest, f"0x{seq + 1:040x}", o.side, energy, o.price_per_kwh,
                    o.counterparty, seq, o.bus,
                )
            )  # fmt: skip
    return out


# --------------------------------------------------------------------------- the reference
@dataclass
class _Point:
    """An AC solution by ``runpp`` at extra injections ``p_kw`` (kW at the program's buses) and
    the limits linearized there: voltage rows in milli-pu (``value + sens @ (p - p_kw) <=
    bound``), branch ends as complex loadings in percent (``|load + dload @ (p - p_kw)| <= lmax``),
    and the first violation of the strict rule (None: inside every limit)."""

    p_kw: np.ndarray
    value: np.ndarray
    sens: np.ndarray
    bound: np.ndarray
    labels: list[str]
    load: np.ndarray
    dload: np.ndarray
    lmax: np.ndarray
    end_labels: list[str]
    violation: Violation | None

    def excess(self) -> float:
        """Sum of the violations of the (margin-tightened) limits, milli-pu and percent."""
        return float(
            np.maximum(self.value - self.bound, 0.0).sum()
            + np.maximum(np.abs(self.load) - self.lmax, 0.0).sum()
        )


class PandapowerLinearization:
    """The base net solved by ``runpp`` at given bus injections and linearized from pandapower's
    own matrices at that solution (its internal ``Ybus``, ``Yf``, ``Yt``, voltages and
    ``dSbus_dV``): voltage magnitudes and complex branch-end currents per injected kW."""

    def __init__(
        self, checker: PandapowerChecker, limitset: LimitSet, buses: Sequence[int]
    ) -> None:
        self.checker = checker
        self.limitset = limitset
        self.buses = [int(b) for b in buses]
        self.runpp = 0

    def point(self, p_kw: np.ndarray) -> _Point | None:
        """The linearized limits at ``runpp`` of the base state plus ``p_kw``; None when it does
        not converge."""
        injections = {b: float(p) for b, p in zip(self.buses, p_kw, strict=True) if p != 0.0}
        violation = self.checker.check(injections, strict=True)
        self.runpp += 1
        if violation is not None and violation.value is None:  # did not converge
            return None
        net = self.checker.net
        internal = net._ppc["internal"]
        V = internal["V"]
        lookup = net._pd2ppc_lookups["bus"]
        mon = self.limitset.monitored
        vm_idx = lookup[mon.buses]
        if np.abs(np.abs(V[vm_idx]) - net.res_bus.vm_pu.loc[mon.buses].to_numpy()).max() > 1e-9:
            raise RuntimeError("pandapower's internal bus order does not match its results")
        # J [dVa(pv, pq); dVm(pq)] = [dP(pv, pq); dQ(pq)], one column per injected kW.
        pv, pq = internal["pv"], internal["pq"]
        pvpq = np.r_[pv, pq]
        dS_dVm, dS_dVa = dSbus_dV(internal["Ybus"], V)
        J = sparse.vstack(
            [
                sparse.hstack([dS_dVa[pvpq][:, pvpq].real, dS_dVm[pvpq][:, pq].real]),
                sparse.hstack([dS_dVa[pq][:, pvpq].imag, dS_dVm[pq][:, pq].imag]),
            ]
        ).tocsc()
        n_bus, n_col = len(V), len(self.buses)
        row_of = np.full(n_bus, -1)
        row_of[pvpq] = np.arange(len(pvpq))
        rhs = np.zeros((J.shape[0], n_col))
        for k, bus in enumerate(self.buses):
            r = row_of[lookup[bus]]
            if r >= 0:  # an injection at the slack moves nothing
                rhs[r, k] = 1.0 / (1000.0 * internal["baseMVA"])
        x = splu(J).solve(rhs)
        dVa = np.zeros((n_bus, n_col))
        dVm = np.zeros((n_bus, n_col))
        dVa[pvpq] = x[: len(pvpq)]
        dVm[pq] = x[len(pvpq) :]
        dV = V[:, None] * (1j * dVa + dVm / np.abs(V)[:, None])
        vm = np.abs(V[vm_idx])
        # Branch ends: complex loading c * I_end (pandapower's loading is the larger end's).
        is_ = internal["branch_is"]
        ppci_branch = np.cumsum(is_) - 1
        currents = {
            "from": (internal["Yf"] @ V, internal["Yf"] @ dV),
            "to": (internal["Yt"] @ V, internal["Yt"] @ dV),
        }
        load: list[np.ndarray] = []
        dload: list[np.ndarray] = []
        lmax: list[np.ndarray] = []
        end_labels: list[str] = []
        for kind, indices, offset in (
            ("line", mon.lines, 0),
            ("trafo", mon.trafos, len(mon.lines)),
        ):
            if not len(indices):
                continue
            start, _ = net._pd2ppc_lookups["branch"][kind]
            table = net[kind]
            res = net[f"res_{kind}"].loc[indices]
            ppc = start + table.index.get_indexer(indices)
            live = is_[ppc]
            b = ppci_branch[ppc]
            loading = res.loading_percent.to_numpy(dtype=float)
            if kind == "line":
                weights = (res.i_from_ka.to_numpy(float), res.i_to_ka.to_numpy(float))
            else:
                weights = (
                    res.i_hv_ka.to_numpy(float) * table.vn_hv_kv.loc[indices].to_numpy(float),
                    res.i_lv_ka.to_numpy(float) * table.vn_lv_kv.loc[indices].to_numpy(float),
                )
            top = np.maximum(*weights)
            for end, w in zip(("from", "to"), weights, strict=True):
                current, d_current = currents[end]
                i = current[b]
                ok = np.flatnonzero(live & (top > 0) & (np.abs(i) > 1e-12))
                c = loading[ok] * w[ok] / top[ok] / np.abs(i[ok])
                load.append(c * i[ok])
                dload.append(c[:, None] * d_current[b[ok]])
                lmax.append(self.limitset.lmax[offset + ok] - REF_MARGIN_PERCENT)
                end_labels.extend(f"{kind} {int(e)}" for e in np.asarray(indices)[ok])
        return _Point(
            p_kw=np.asarray(p_kw, dtype=float).copy(),
            value=np.r_[1e3 * vm, -1e3 * vm],
            sens=np.vstack([1e3 * dVm[vm_idx], -1e3 * dVm[vm_idx]]),
            bound=np.r_[
                1e3 * (self.limitset.vmax - REF_MARGIN_PU),
                -1e3 * (self.limitset.vmin + REF_MARGIN_PU),
            ],
            labels=[f"bus {b} high" for b in mon.buses] + [f"bus {b} low" for b in mon.buses],
            load=np.concatenate(load) if load else np.zeros(0, complex),
            dload=np.vstack(dload) if dload else np.zeros((0, n_col), complex),
            lmax=np.concatenate(lmax) if lmax else np.zeros(0),
            end_labels=end_labels,
            violation=violation,
        )


@dataclass
class Reference:
    """The reference optimum of one book."""

    welfare_tokens: float
    traded_kwh: float
    feasible: bool
    violation: str | None
    iterations: int
    programs: int
    runpp: int
    converged: bool
    binding: list[str] = field(default_factory=list)
    injections_kw: dict[int, float] = field(default_factory=dict)


class _Orders:
    """The order-level part of the reference program over ``[z | p]``: fills ``z`` (kWh, sells
    then buys) and bus injections ``p`` (kW)."""

    def __init__(self, book: Sequence[BookOrder], interval_seconds: int) -> None:
        self.sells = [o for o in book if o.side == SELL and o.energy_wh > 0 and not o.bilateral]
        self.buys = [o for o in book if o.side == BUY and o.energy_wh > 0 and not o.bilateral]
        orders = (*self.sells, *self.buys)
        hours = interval_seconds / 3600
        self.buses = sorted({o.bus for o in orders})
        col = {b: k for k, b in enumerate(self.buses)}
        n_s, n_b, n_p = len(self.sells), len(self.buys), len(self.buses)
        self.n_s, self.n_z, self.n_p = n_s, n_s + n_b, n_p
        ask = np.array([o.price_per_kwh / TOKEN_UNIT for o in self.sells])
        bid = np.array([o.price_per_kwh / TOKEN_UNIT for o in self.buys])
        self.gain = np.r_[-ask, bid]  # tokens per kWh filled
        self.upper = np.array([o.energy_wh / 1000.0 for o in orders])
        # Equalities: balance; p (kW) = (sold - bought at the bus) / hours.
        r = [0] * self.n_z + [1 + col[o.bus] for o in orders] + [1 + k for k in range(n_p)]
        c = list(range(self.n_z)) * 2 + [self.n_z + k for k in range(n_p)]
        v = [1.0] * n_s + [-1.0] * n_b + [1.0 / hours] * n_s + [-1.0 / hours] * n_b
        v += [-1.0] * n_p
        self.eq = sparse.csr_matrix((v, (r, c)), shape=(1 + n_p, self.n_z + n_p))
        # Hall's condition per ask level: sells asking >= level <= buys bidding >= level.
        levels = sorted(set(ask.tolist()), reverse=True)
        hall = np.zeros((len(levels), self.n_z + n_p))
        for i, level in enumerate(levels):
            hall[i, :n_s] = (ask >= level).astype(float)
            hall[i, n_s : self.n_z] = -(bid >= level).astype(float)
        self.hall = sparse.csr_matrix(hall)
        # The most a bus can inject or take.
        self.reach_kw = np.array(
            [sum(o.energy_wh for o in orders if o.bus == b) / 1000 / hours for b in self.buses]
        )


def _step(orders: _Orders, here: _Point, radius_kw: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The linearized program at ``here`` within ``radius_kw`` of its injections, with an exact
    penalty on violated rows (so it is feasible from any point): (fills, injections, programs
    solved). A branch end's ``|load| <= lmax`` is a disk in ``p``; it enters as tangent
    cuts, added where an answer leaves the disk until none does (Kelley's cutting planes)."""
    n_z, n_p = orders.n_z, orders.n_p
    n_v, n_e = len(here.bound), len(here.lmax)
    c = np.r_[-orders.gain, np.zeros(n_p), np.full(n_v + n_e, REF_PENALTY)]
    p0 = here.p_kw
    # Voltage rows: sens @ p - s_v <= bound - value + sens @ p0.
    v_rows = sparse.hstack(
        [sparse.csr_matrix((n_v, n_z)), here.sens, -sparse.eye(n_v), sparse.csr_matrix((n_v, n_e))]
    )
    v_rhs = here.bound - here.value + here.sens @ p0
    hall = sparse.hstack([orders.hall, sparse.csr_matrix((orders.hall.shape[0], n_v + n_e))])
    eq = sparse.hstack([orders.eq, sparse.csr_matrix((orders.eq.shape[0], n_v + n_e))]).tocsc()
    bounds = (
        [(0.0, float(u)) for u in orders.upper]
        + [
            (float(max(-r, q - radius_kw)), float(min(r, q + radius_kw)))
            for q, r in zip(p0, orders.reach_kw, strict=True)
        ]
        + [(0.0, None)] * (n_v + n_e)
    )
    # Cuts: one per (end, direction) - at first each end's own phasor.
    cut_end = np.arange(n_e)
    cut_dir = np.where(np.abs(here.load) > 0, np.conj(here.load) / np.abs(here.load), 1.0)
    programs = 0
    while True:
        a = (cut_dir[:, None] * here.dload[cut_end]).real
        cut_rows = sparse.hstack(
            [
                sparse.csr_matrix((len(cut_end), n_z)),
                sparse.csr_matrix(a),
                sparse.csr_matrix((len(cut_end), n_v)),
                -sparse.csr_matrix(
                    (np.ones(len(cut_end)), (np.arange(len(cut_end)), cut_end)),
                    shape=(len(cut_end), n_e),
                ),
            ]
        )
        cut_rhs = here.lmax[cut_end] - (cut_dir * here.load[cut_end]).real + a @ p0
        res = linprog(
            c,
            A_ub=sparse.vstack([v_rows, cut_rows, hall]).tocsc(),
            b_ub=np.r_[v_rhs, cut_rhs, np.zeros(orders.hall.shape[0])],
            A_eq=eq,
            b_eq=np.zeros(eq.shape[0]),
            bounds=bounds,
            method="highs",
        )
        programs += 1
        if res.status != 0 or res.x is None:
            raise RuntimeError(f"the reference program failed: {res.message}")
        x = res.x
        p = x[n_z : n_z + n_p]
        predicted = here.load + here.dload @ (p - p0)
        over = np.abs(predicted) - here.lmax - x[n_z + n_p + n_v :]
        out = np.flatnonzero(over > 1e-9 * np.maximum(here.lmax, 1.0))
        if not len(out) or programs >= REF_MAX_CUT_ROUNDS:
            return np.clip(x[:n_z], 0.0, orders.upper), p, programs
        cut_end = np.r_[cut_end, out]
        cut_dir = np.r_[cut_dir, np.conj(predicted[out]) / np.abs(predicted[out])]


def reference_optimum(
    book: Sequence[BookOrder],
    checker: PandapowerChecker,
    limitset: LimitSet,
    interval_seconds: int = INTERVAL_SECONDS,
) -> Reference:
    """The welfare-maximizing fills of ``book``'s anonymous orders inside the grid's limits as
    pandapower computes them (see the module doc): sequential linear programming with a trust
    region, each iterate solved by ``runpp`` and the limits linearized there again."""
    orders = _Orders(book, interval_seconds)
    lin = PandapowerLinearization(checker, limitset, orders.buses)
    here = lin.point(np.zeros(orders.n_p))
    if here is None:
        raise RuntimeError("the base state does not converge under runpp")
    z = np.zeros(orders.n_z)
    best: tuple[float, np.ndarray, _Point] = (0.0, z, here)  # filling nothing is feasible
    radius = max(float(orders.reach_kw.max(initial=0.0)), 1.0)
    converged = False
    iterations = programs = 0
    for iterations in range(1, REF_MAX_ITERATIONS + 1):
        z_new, p_new, solved = _step(orders, here, radius)
        programs += solved
        step = float(np.abs(p_new - here.p_kw).max(initial=0.0))
        there = lin.point(p_new)
        if there is None:  # no AC solution there: a shorter step
            radius = step / 2
            continue
        z, here = z_new, there
        value = float(orders.gain @ z)
        if here.violation is None and value > best[0]:
            best = (value, z, here)
        if step <= REF_STEP_KW and here.violation is None:
            converged = True
            break
        if iterations >= REF_UNDAMPED:  # not settling: shrink the steps
            radius = REF_DAMPING * min(radius, step)
    _, z, here = best
    binding = [
        label for label, v, b in zip(here.labels, here.value, here.bound, strict=True)
        if b - v <= 1e-3  # within a micro-pu
    ] + [
        label for label, x, m in zip(here.end_labels, here.load, here.lmax, strict=True)
        if m - abs(x) <= 1e-3  # within a thousandth of a percent
    ]  # fmt: skip
    return Reference(
        welfare_tokens=float(orders.gain @ z),
        traded_kwh=float(z[: orders.n_s].sum()),
        feasible=here.violation is None,
        violation=None if here.violation is None else _describe(here.violation),
        iterations=iterations,
        programs=programs,
        runpp=lin.runpp,
        converged=converged,
        binding=sorted(set(binding)),
        injections_kw={b: float(q) for b, q in zip(orders.buses, here.p_kw, strict=True) if q},
    )


def _describe(v: Violation) -> str:
    return f"{v.reason.name} {v.element} {v.value} > {v.limit}".strip()


# --------------------------------------------------------------------------- the clearings
def approved_injections(result: Clearing, interval_seconds: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for c in result.approved:
        p_kw = c.energy_wh / (interval_seconds / 3600) / 1000
        out[c.sell.bus] = out.get(c.sell.bus, 0.0) + p_kw
        out[c.buy.bus] = out.get(c.buy.bus, 0.0) - p_kw
    return out


def _signature(result: Clearing) -> tuple[object, ...]:
    return (
        result.evidence_hash,
        tuple(
            (c.sell.hash, c.buy.hash, c.energy_wh, c.price_per_kwh, d.reason_code)
            for c, d in result.trades
        ),
    )


@dataclass
class Timed:
    result: Clearing
    seconds: float


class Clearer:
    """Runs a method's clearing at gate closure on a fresh validator of the network (a copy of
    an untouched template, its interval base state prepared before the timing)."""

    def __init__(self, network: str, template: GridValidator) -> None:
        self.network = network
        self.template = template

    def run(self, method: str, interval: int, book: Sequence[BookOrder]) -> Timed:
        port = GridPortAdapter(
            self.network,
            INTERVAL_SECONDS,
            validator=copy.deepcopy(self.template),
            clearing=method,
        )
        port.prepare(interval)
        start = time.perf_counter()
        result = port.clear(interval, book)
        return Timed(result, time.perf_counter() - start)


def _tokens(x: float) -> float:
    return round(x / TOKEN_UNIT, 6)


def _share(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 else None


def run_interval(
    clearer: Clearer,
    checker: PandapowerChecker,
    limitset: LimitSet,
    interval: int,
    book: Sequence[BookOrder],
) -> dict[str, Any]:
    """All figures of one interval's book."""
    optimal = clearer.run("optimal", interval, book)
    again = clearer.run("optimal", interval, book)
    greedy = clearer.run("greedy", interval, book)
    free = clear(book, None)
    ref = reference_optimum(book, checker, limitset)
    violations = {}
    for name, timed in (("optimal", optimal), ("greedy", greedy)):
        v = checker.check(approved_injections(timed.result, INTERVAL_SECONDS), strict=False)
        violations[name] = None if v is None else _describe(v)
    w_opt = welfare(optimal.result.approved)
    w_greedy = welfare(greedy.result.approved)
    w_ref = ref.welfare_tokens * TOKEN_UNIT
    hour = hour_of(interval)
    return {
        "interval": interval,
        "time": f"{int(hour):02d}:{round(hour % 1 * 60):02d}",
        "orders": len(book),
        "welfare": {
            "optimal": _tokens(w_opt),
            "greedy": _tokens(w_greedy),
            "unconstrained": _tokens(welfare(free.approved)),
            "reference": round(ref.welfare_tokens, 6),
        },
        "kwh": {
            "optimal": round(optimal.result.traded_wh / 1000, 3),
            "greedy": round(greedy.result.traded_wh / 1000, 3),
            "unconstrained": round(free.traded_wh / 1000, 3),
            "reference": round(ref.traded_kwh, 3),
        },
        "optimal_over_reference": _share(w_opt, w_ref),
        "greedy_over_reference": _share(w_greedy, w_ref),
        "optimal_over_greedy": _share(w_opt, w_greedy),
        "trades": {"optimal": len(optimal.result.trades), "greedy": len(greedy.result.trades)},
        "vetoes": {
            "optimal": len(optimal.result.trades) - len(optimal.result.approved),
            "greedy": len(greedy.result.trades) - len(greedy.result.approved),
        },
        "method": optimal.result.method,
        "ms": {
            "optimal": round(optimal.seconds * 1e3, 1),
            "greedy": round(greedy.seconds * 1e3, 1),
        },
        "runpp_violations": violations,
        "deterministic": _signature(optimal.result) == _signature(again.result),
        "evidence_hash": optimal.result.evidence_hash,
        "reference": {
            "feasible": ref.feasible,
            "violation": ref.violation,
            "converged": ref.converged,
            "iterations": ref.iterations,
            "programs": ref.programs,
            "runpp": ref.runpp,
            "binding": ref.binding,
        },
    }


@dataclass
class Network:
    """A case's validator template, ranked buses, members and independent checker."""

    case: ClearingCase
    template: GridValidator
    members: Community

    @classmethod
    def build(cls, case: ClearingCase) -> Network:
        template = GridValidator(case.network)
        ranking = copy.deepcopy(template)
        return cls(case, template, community(case, ranked_buses(ranking)))

    def checker(self, interval: int) -> tuple[PandapowerChecker, LimitSet]:
        probe = copy.deepcopy(self.template)
        limitset = probe.limit_set(interval, INTERVAL_SECONDS)
        return PandapowerChecker(probe.base_net(interval, INTERVAL_SECONDS), limitset), limitset

    def book(self, interval: int) -> list[BookOrder]:
        return midday_book(self.members, interval, self.case.network)


def run_network(
    case: ClearingCase,
    intervals: Sequence[int],
    on_interval: Callable[[], None] | None = None,
) -> dict[str, Any]:
    net = Network.build(case)
    clearer = Clearer(case.network, net.template)
    rows = []
    for interval in intervals:
        checker, limitset = net.checker(interval)
        rows.append(run_interval(clearer, checker, limitset, interval, net.book(interval)))
        if on_interval is not None:
            on_interval()
    return {
        "network": case.network,
        "generator": {
            "pv_sellers": case.pv_sellers,
            "buyers": case.buyers,
            "mid_sellers": case.mid_sellers,
            "weak_buses": net.members.weak_buses,
            "mid_buses": net.members.mid_buses,
            "strong_buses": net.members.strong_buses,
        },
        "total": _total(rows),
        "intervals": rows,
    }


def _total(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    kinds = ("optimal", "greedy", "unconstrained", "reference")
    w = {k: round(sum(float(r["welfare"][k]) for r in rows), 6) for k in kinds}
    opt_ref = [r["optimal_over_reference"] for r in rows if r["optimal_over_reference"] is not None]
    return {
        "intervals": len(rows),
        "orders": sum(int(r["orders"]) for r in rows),
        "welfare": w,
        "kwh": {k: round(sum(float(r["kwh"][k]) for r in rows), 3) for k in kinds},
        "optimal_over_reference": _share(w["optimal"], w["reference"]),
        "greedy_over_reference": _share(w["greedy"], w["reference"]),
        "greedy_over_unconstrained": _share(w["greedy"], w["unconstrained"]),
        "optimal_over_greedy": _share(w["optimal"], w["greedy"]),
        "worst_optimal_over_reference": min(opt_ref, default=None),
        "vetoes": {k: sum(int(r["vetoes"][k]) for r in rows) for k in ("optimal", "greedy")},
        "ms_total": {
            k: round(sum(float(r["ms"][k]) for r in rows), 1) for k in ("optimal", "greedy")
        },
        "ms_max": {k: max(float(r["ms"][k]) for r in rows) for k in ("optimal", "greedy")},
        "methods": sorted({str(r["method"]) for r in rows}),
        "runpp_violations": sum(
            v is not None for r in rows for v in r["runpp_violations"].values()
        ),
        "reference_infeasible": sum(not r["reference"]["feasible"] for r in rows),
        "reference_not_converged": sum(not r["reference"]["converged"] for r in rows),
        "deterministic": all(bool(r["deterministic"]) for r in rows),
        "optimal_below_greedy": sum(
            float(r["welfare"]["optimal"]) < float(r["welfare"]["greedy"]) for r in rows
        ),
    }


def run_scale(network: str = SCALE_NETWORK, orders: int = SCALE_ORDERS) -> dict[str, Any]:
    """The ``SCALE_ORDERS``-order clearing (see the module doc)."""
    case = next(c for c in CASES if c.network == network)
    net = Network.build(case)
    interval = interval_of(SCALE_HOUR)
    base_book = net.book(interval)
    book = split_book(base_book, orders)
    clearer = Clearer(network, net.template)
    greedy = clearer.run("greedy", interval, book)
    optimal = clearer.run("optimal", interval, book)
    again = clearer.run("optimal", interval, book)
    checker, limitset = net.checker(interval)
    ref = reference_optimum(base_book, checker, limitset)
    violations = {}
    for name, timed in (("optimal", optimal), ("greedy", greedy)):
        v = checker.check(approved_injections(timed.result, INTERVAL_SECONDS), strict=False)
        violations[name] = None if v is None else _describe(v)
    w_opt = welfare(optimal.result.approved)
    return {
        "network": network,
        "interval": interval,
        "orders": len(book),
        "split_from": len(base_book),
        "ms": {
            "optimal": round(optimal.seconds * 1e3, 1),
            "greedy": round(greedy.seconds * 1e3, 1),
        },
        "method": optimal.result.method,
        "welfare": {
            "optimal": _tokens(w_opt),
            "greedy": _tokens(welfare(greedy.result.approved)),
            "unconstrained": _tokens(welfare(clear(book, None).approved)),
            "reference": round(ref.welfare_tokens, 6),
        },
        "optimal_over_reference": _share(w_opt, ref.welfare_tokens * TOKEN_UNIT),
        "trades": {"optimal": len(optimal.result.trades), "greedy": len(greedy.result.trades)},
        "runpp_violations": violations,
        "deterministic": _signature(optimal.result) == _signature(again.result),
        "under_1s": optimal.seconds < 1.0,
    }


def midday_intervals(count: int = N_INTERVALS) -> list[int]:
    first = interval_of(FIRST_HOUR)
    return list(range(first, first + count))


def run_benchmark(
    cases: Sequence[ClearingCase] = CASES,
    intervals: int = N_INTERVALS,
    scale_orders: int = SCALE_ORDERS,
    on_interval: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every case over ``intervals`` midday intervals, then the scale case."""
    ids = midday_intervals(intervals)
    networks = [run_network(case, ids, on_interval) for case in cases]
    scale = run_scale(orders=scale_orders) if scale_orders > 0 else None
    totals = [n["total"] for n in networks]
    return {
        "benchmark": "clearing",
        "seed": SEED,
        "interval_seconds": INTERVAL_SECONDS,
        "baseline": "greedy merit order (auction.clear with the validator), same run",
        "reference": "order-level SLP over pandapower's linearized limits, runpp at every iterate",
        "welfare_unit": "tokens",
        "networks": networks,
        "scale": scale,
        "target_share": TARGET_SHARE,
        "targets_met": all(
            float(t["optimal_over_reference"] or 0) >= TARGET_SHARE
            and t["runpp_violations"] == 0
            and t["deterministic"]
            for t in totals
        )
        and (scale is None or bool(scale["under_1s"])),
    }
