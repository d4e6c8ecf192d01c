"""The linear program of one clearing stage (``backend.market.optimal``): fills of orders or pairs
with their bounds, order rows (caps of bilateral orders over their pairs; for an auction, balance
and Hall's condition through running sums) and the grid's rows per operating point, solved with
HiGHS's dual simplex (``scipy.optimize.linprog``) by row generation."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from backend.market.auction import BookOrder

# Row generation: rounds per operating point, and the most broken rows added per round.
ROW_ROUNDS = 30
ROWS_PER_ROUND = 16


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
    """The linear program of one stage: fills (and running sums) with their bounds and the
    order rows fixed, the grid's rows given per operating point. Of those only the rows an
    answer breaks are put in (row generation: a few of hundreds bind), and the labels that were
    needed at one point are put in from the start at the next."""

    def __init__(
        self,
        cost: np.ndarray,
        upper: np.ndarray,
        cap_rows: sparse.csr_matrix | None,
        cap_rhs: np.ndarray,
        eq_rows: sparse.csr_matrix | None,
        eq_rhs: np.ndarray,
        n_aux: int,
    ) -> None:
        self.n_var = len(cost)
        self.n_aux = n_aux
        self.c = np.r_[cost, np.zeros(n_aux)]
        self.bounds = np.array([(0.0, float(u)) for u in upper] + [(-np.inf, 0.0)] * n_aux)
        if n_aux:
            self.bounds[-1] = (0.0, 0.0)  # the last running sum: sells = buys
        self.caps = (
            sparse.hstack([cap_rows, sparse.csr_matrix((cap_rows.shape[0], n_aux))]).tocsr()
            if cap_rows is not None
            else None
        )
        self.cap_rhs = cap_rhs
        self.eq = eq_rows.tocsc() if eq_rows is not None else None
        self.eq_rhs = eq_rhs
        self.needed: set[str] = set()

    def solve(self, grid: np.ndarray, rhs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Fills maximizing the value with ``grid @ fills <= rhs`` (and the fixed rows)."""
        active = np.array([k for k, label in enumerate(labels) if label in self.needed], int)
        tol = 1e-9 + 1e-9 * np.abs(rhs)
        for _ in range(ROW_ROUNDS):
            w = self._linprog(grid[active], rhs[active])
            excess = grid @ w - rhs
            broken = np.flatnonzero(excess > tol)
            if not len(broken):
                break
            worst = broken[np.argsort(-excess[broken], kind="stable")[:ROWS_PER_ROUND]]
            active = np.union1d(active, worst)
        else:
            raise OptimizationError(f"row generation did not close in {ROW_ROUNDS} rounds")
        self.needed.update(labels[k] for k in active)
        return w

    def _linprog(self, grid: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        parts: list[sparse.spmatrix] = []
        b: list[np.ndarray] = []
        if len(rhs):
            parts.append(
                sparse.hstack([sparse.csr_matrix(grid), sparse.csr_matrix((len(rhs), self.n_aux))])
            )
            b.append(rhs)
        if self.caps is not None:
            parts.append(self.caps)
            b.append(self.cap_rhs)
        res = linprog(
            self.c,
            A_ub=sparse.vstack(parts).tocsc() if parts else None,
            b_ub=np.concatenate(b) if b else None,
            A_eq=self.eq,
            b_eq=self.eq_rhs if self.eq is not None else None,
            bounds=self.bounds,
            method="highs-ds",
        )
        if res.status != 0 or res.x is None:
            raise OptimizationError(f"the clearing program failed: {res.message}")
        return np.clip(np.asarray(res.x[: self.n_var]), 0.0, self.bounds[: self.n_var, 1])


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
