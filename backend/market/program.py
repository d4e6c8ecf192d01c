"""The linear program of one clearing stage (``backend.market.optimal``): fills of orders or pairs
with their bounds, order rows (caps of bilateral orders over their pairs; for an auction, balance
and Hall's condition through running sums) and the grid's rows per operating point, solved with
HiGHS's dual simplex (``highspy``) by row generation."""

from __future__ import annotations

import bisect
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np
from scipy import sparse

from backend.market.auction import BookOrder

# Row generation: rounds per operating point, and the most broken rows added per round.
ROW_ROUNDS = 30
ROWS_PER_ROUND = 32


def _without_banner() -> None:
    """HiGHS writes its banner to the C stdout the first time a solver is made in a process,
    before any option can silence it (it would break `--json` output): make that first one with
    file descriptor 1 pointed at /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_without_banner()

# One thread, dual simplex, fixed seed: the same program gives the same answer bit for bit.
SOLVER_OPTIONS: dict[str, bool | int | str] = {
    "output_flag": False,
    "threads": 1,
    "solver": "simplex",
    "simplex_strategy": 1,
    "random_seed": 0,
}


class OptimizationError(RuntimeError):
    """The program could not be solved (the caller falls back to the greedy clearing)."""


@dataclass(frozen=True)
class Var:
    """One decision variable: a fill in Wh of ``sell`` and/or ``buy`` (a bilateral pair has
    both), worth ``value`` per Wh (bid for a buy, minus the ask for a sell)."""

    sell: BookOrder | None
    buy: BookOrder | None
    upper: int
    value: float


def order_rows(
    variables: Sequence[Var],
    caps: Sequence[tuple[list[int], int]],
    hall: tuple[int, int] | None,
) -> tuple[sparse.csr_matrix | None, np.ndarray, sparse.csr_matrix | None, np.ndarray, int]:
    """Rows over [fills | running sums]: caps (<=), and for an auction the running sums of
    Hall's condition (equalities), whose bounds ``Program`` carries."""
    n_var = len(variables)
    ub = None
    ub_rhs = np.zeros(0)
    if caps:
        cap_r, cap_c = zip(*[(i, j) for i, (idx, _) in enumerate(caps) for j in idx], strict=True)
        ub = sparse.csr_matrix((np.ones(len(cap_r)), (cap_r, cap_c)), shape=(len(caps), n_var))
        ub_rhs = np.array([cap for _, cap in caps], dtype=float)
    if hall is None:
        return ub, ub_rhs, None, np.zeros(0), 0
    n_ask, _ = hall
    asks = variables[:n_ask]
    levels = sorted({-v.value for v in asks}, reverse=True)  # ask prices, highest first
    rising = [-p for p in levels]  # the same, negated: ascending for bisect
    # Running sum C_k = sum over asks >= level k minus buys bidding >= level k, C_k <= 0, and
    # the last one (every ask and every bid) = 0: balance.
    n_lvl = len(levels)
    r: list[int] = []
    c: list[int] = []
    val: list[float] = []
    for j, v in enumerate(variables):
        # An ask counts at its own level, a buy from the highest level its bid reaches.
        k = bisect.bisect_left(rising, v.value if v.sell is not None else -v.value)
        r.append(k)
        c.append(j)
        val.append(1.0 if v.sell is not None else -1.0)
    for k in range(n_lvl):
        r.append(k)
        c.append(n_var + k)
        val.append(-1.0)  # ... - C_k
        if k > 0:
            r.append(k)
            c.append(n_var + k - 1)
            val.append(1.0)  # + C_{k-1}
    eq = sparse.csr_matrix((val, (r, c)), shape=(n_lvl, n_var + n_lvl))
    return ub, ub_rhs, eq, np.zeros(n_lvl), n_lvl


class Program:
    """The linear program of one stage, kept in one HiGHS instance (``highspy``): columns are the
    fills, the running sums of Hall's condition and the net injection per bus (kW, free, tied to
    the fills by equality rows); the grid's rows are over the bus columns only, so they stay a
    few hundred non-zeros whatever the book's size. Of the grid's rows only those an answer breaks
    are put in (row generation: a few of hundreds bind), each round re-solved from the last basis
    (dual simplex warm start); at a new operating point its rows replace the old ones and the
    labels that were needed before are put in from the start."""

    def __init__(
        self,
        cost: np.ndarray,
        upper: np.ndarray,
        incidence: sparse.csr_matrix,
        p_fixed: np.ndarray,
        cap_rows: sparse.csr_matrix | None,
        cap_rhs: np.ndarray,
        eq_rows: sparse.csr_matrix | None,
        eq_rhs: np.ndarray,
        n_aux: int,
    ) -> None:
        n_var, n_bus = len(cost), incidence.shape[0]
        self.n_var, self.n_aux, self.n_bus = n_var, n_aux, n_bus
        self.incidence = incidence
        self.p_fixed = p_fixed
        self.bus0 = n_var + n_aux  # first bus column
        inf = highspy.kHighsInf
        lower = np.r_[np.zeros(n_var), np.full(n_aux, -inf), np.full(n_bus, -inf)]
        upper_all = np.r_[upper, np.zeros(n_aux), np.full(n_bus, inf)]
        if n_aux:
            lower[n_var + n_aux - 1] = 0.0  # the last running sum: sells = buys
        # bus injection = p_fixed + incidence @ fills: rows  P - incidence @ fills = p_fixed
        n_cols = n_var + n_aux + n_bus
        blocks = [sparse.hstack([-incidence, sparse.csr_matrix((n_bus, n_aux)),
                                 sparse.identity(n_bus, format="csr")])]  # fmt: skip
        row_lo = [p_fixed]
        row_hi = [p_fixed]
        if eq_rows is not None:
            blocks.append(sparse.hstack([eq_rows, sparse.csr_matrix((eq_rows.shape[0], n_bus))]))
            row_lo.append(eq_rhs)
            row_hi.append(eq_rhs)
        if cap_rows is not None:
            blocks.append(
                sparse.hstack([cap_rows, sparse.csr_matrix((cap_rows.shape[0], n_aux + n_bus))])
            )
            row_lo.append(np.full(cap_rows.shape[0], -inf))
            row_hi.append(cap_rhs)
        matrix = sparse.vstack(blocks).tocsc()
        matrix.sort_indices()
        lp = highspy.HighsLp()
        lp.num_col_ = n_cols
        lp.num_row_ = matrix.shape[0]
        lp.col_cost_ = np.r_[cost, np.zeros(n_aux + n_bus)]
        lp.col_lower_ = lower
        lp.col_upper_ = upper_all
        lp.row_lower_ = np.concatenate(row_lo)
        lp.row_upper_ = np.concatenate(row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = matrix.indptr
        lp.a_matrix_.index_ = matrix.indices
        lp.a_matrix_.value_ = matrix.data
        h = highspy.Highs()
        h.silent()
        for option, value in SOLVER_OPTIONS.items():
            h.setOptionValue(option, value)
        h.passModel(lp)
        self.highs = h
        self.base_rows = matrix.shape[0]
        self.grid_rows = 0
        self.needed: set[str] = set()

    def fix(self, p_fixed: np.ndarray) -> None:
        """Move the fixed injections (``p_fixed``, one per bus column) the fills add to."""
        self.p_fixed = p_fixed
        rows = np.arange(self.n_bus, dtype=np.int32)
        # (in highspy 1.16 but missing from its type stubs)
        self.highs.changeRowsBounds(self.n_bus, rows, p_fixed, p_fixed)  # type: ignore[attr-defined]

    def bound(self, upper: np.ndarray) -> None:
        """New upper bounds of the fills (lower 0)."""
        cols = np.arange(self.n_var, dtype=np.int32)
        self.highs.changeColsBounds(self.n_var, cols, np.zeros(self.n_var), upper)

    def box(self, center: np.ndarray, radius: float) -> None:
        """Bus injections within ``radius`` kW of ``center`` (``inf``: free)."""
        inf = highspy.kHighsInf
        lo = center - radius if math.isfinite(radius) else np.full(self.n_bus, -inf)
        hi = center + radius if math.isfinite(radius) else np.full(self.n_bus, inf)
        cols = np.arange(self.bus0, self.bus0 + self.n_bus, dtype=np.int32)
        self.highs.changeColsBounds(self.n_bus, cols, lo, hi)

    def solve(self, A: np.ndarray, rhs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Fills maximizing the value with ``A @ p <= rhs`` for the bus injections ``p`` (and
        the fixed rows); the rows of an earlier call are dropped."""
        h = self.highs
        if self.grid_rows:
            h.deleteRows(self.grid_rows, np.arange(self.base_rows, self.base_rows + self.grid_rows))
            self.grid_rows = 0
        active = np.array([k for k, label in enumerate(labels) if label in self.needed], int)
        self._add(A[active], rhs[active])
        tol = 1e-9 + 1e-9 * np.abs(rhs)
        for _ in range(ROW_ROUNDS):
            w, p = self._run()
            excess = A @ p - rhs
            broken = np.flatnonzero(excess > tol)
            if not len(broken):
                break
            worst = broken[np.argsort(-excess[broken], kind="stable")[:ROWS_PER_ROUND]]
            self._add(A[worst], rhs[worst])
            active = np.r_[active, worst]
        else:
            raise OptimizationError(f"row generation did not close in {ROW_ROUNDS} rounds")
        self.needed.update(labels[k] for k in active)
        return w

    def _add(self, A: np.ndarray, rhs: np.ndarray) -> None:
        if not len(rhs):
            return
        # Row-wise non-zeros of the dense rows (CSR without scipy's checks: called per round).
        r, c = np.nonzero(A)
        starts = np.searchsorted(r, np.arange(len(rhs))).astype(np.int32)
        self.highs.addRows(
            len(rhs),
            np.full(len(rhs), -highspy.kHighsInf),
            rhs,
            len(r),
            starts,
            (c + self.bus0).astype(np.int32),
            np.ascontiguousarray(A[r, c], dtype=float),
        )
        self.grid_rows += len(rhs)

    def _run(self) -> tuple[np.ndarray, np.ndarray]:
        h = self.highs
        h.run()
        status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            raise OptimizationError(f"the clearing program failed: {h.modelStatusToString(status)}")
        x = np.asarray(h.getSolution().col_value)
        w = np.clip(x[: self.n_var], 0.0, None)
        # The injections as the fills make them (not the solver's columns: same to 1e-9).
        return w, self.p_fixed + self.incidence @ w


def whole_wh(fills: np.ndarray, variables: Sequence[Var]) -> list[int]:
    """Whole Wh: each fill rounded down, then (largest remainders first) up again until each
    side's total is its exact total rounded, so rounding loses no whole Wh of the balance."""
    out = [math.floor(q + 1e-6) for q in fills]
    for side in ("sell", "buy"):
        idx = [j for j, v in enumerate(variables) if getattr(v, side) is not None]
        short = round(float(sum(fills[j] for j in idx))) - sum(out[j] for j in idx)
        ranked = sorted(idx, key=lambda j: (-(fills[j] - out[j]), j))
        for j in ranked[: max(short, 0)]:
            if out[j] < variables[j].upper:
                out[j] += 1
    return out
