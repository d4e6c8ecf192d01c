"""Hosting capacity: the largest export or import at one bus on top of a base state before a
limit binds, by doubling from 1 kW and AC bisection."""

from __future__ import annotations

import numpy as np

from grid.acmodel import ACModel
from grid.limits import LimitSet, Violation
from grid.results import HostingLimit

HOSTING_RESOLUTION_KW = 0.01
HOSTING_MAX_KW = 1e6


def hosting_limit(model: ACModel, limitset: LimitSet, bus: int, sign: float) -> HostingLimit:
    """The limit at ``bus`` in one direction: ``sign`` +1 export (injection), -1 import."""
    V_ok = model.V0
    index = model.ppci_of_bus[bus]

    def probe(p_kw: float) -> tuple[Violation | None, np.ndarray | None]:
        S = model.Sbus0.copy()
        S[index] += sign * p_kw / 1000.0 / model.base_mva
        with np.errstate(all="ignore"):
            V = model.solve_checked(S, V_ok, V_ok)
        if isinstance(V, Violation):
            return V, None
        me = model.measure(V)
        return limitset.check(me.vm_pu, me.loading_percent), V

    lo, hi = 0.0, 1.0
    bound: Violation | None = None
    while hi <= HOSTING_MAX_KW:
        bound, V = probe(hi)
        if bound is not None:
            break
        lo, V_ok = hi, V if V is not None else V_ok
        hi *= 2.0
    if bound is None:
        return HostingLimit(round(lo, 2), None, "", None, None)
    while hi - lo > HOSTING_RESOLUTION_KW:
        mid = 0.5 * (lo + hi)
        violation, V = probe(mid)
        if violation is None:
            lo = mid
            V_ok = V if V is not None else V_ok
        else:
            hi, bound = mid, violation
    return HostingLimit(
        float(np.floor(lo * 100) / 100), bound.reason, bound.element, bound.value, bound.limit
    )
