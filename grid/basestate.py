"""Interval base states: the network under one interval's loads and PV, solved once with
pandapower and kept (``BaseStates``) with the AC model, its measures and the limit set that trade
validation and hosting capacity start from."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandapower as pp

from grid.acmodel import ACModel, Measures
from grid.evidence import hash_array
from grid.limits import LimitSet
from grid.networks import quiet
from grid.profiles import apply_interval, hour_of_day
from grid.results import BaseStateSummary
from grid.verdicts import Limits

# Base states kept per validator (the oldest is dropped first).
BASE_CACHE = 32


@dataclass
class BaseState:
    """Internals of one interval's base state (``model``, ``measures`` and ``limitset`` are None
    when its power flow does not converge)."""

    summary: BaseStateSummary
    model: ACModel | None
    measures: Measures | None
    limitset: LimitSet | None
    doc: dict[str, object]


class BaseStates:
    """The base states of one network, solved on first use and cached by (interval, length)."""

    def __init__(
        self,
        net: pp.pandapowerNet,
        nominal: dict[str, np.ndarray],
        limits: Limits,
        network_name: str,
    ) -> None:
        self.net = net
        self.nominal = nominal
        self.limits = limits
        self.network_name = network_name
        self._cache: dict[tuple[int | None, int], BaseState] = {}

    def get(self, interval: int | None, interval_seconds: int) -> BaseState:
        if interval is not None:
            interval = int(interval)
        key = (interval, int(interval_seconds))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        base = self._solve(interval, int(interval_seconds))
        if len(self._cache) >= BASE_CACHE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = base
        return base

    def _solve(self, interval: int | None, interval_seconds: int) -> BaseState:
        net = copy.deepcopy(self.net)
        apply_interval(net, self.nominal, interval, interval_seconds)
        hour = None if interval is None else hour_of_day(interval, interval_seconds)
        load_kw = float(net.load.p_mw[net.load.in_service].sum() * 1000)
        pv_kw = float(net.sgen.p_mw[net.sgen.in_service].sum() * 1000) if len(net.sgen) else 0.0
        doc: dict[str, object] = {"interval": interval, "interval_seconds": int(interval_seconds)}
        try:
            with quiet():
                pp.runpp(net)
        except Exception:
            summary = BaseStateSummary(
                self.network_name,
                interval,
                int(interval_seconds),
                hour,
                False,
                int(self.net.bus.in_service.sum()),  # the in-service buses
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                load_kw,
                pv_kw,
            )
            return BaseState(summary, None, None, None, doc)
        model = ACModel(net)
        measures = model.measure(model.V0)
        mon = model.monitored
        limitset = LimitSet(self.limits, mon, measures.vm_pu, measures.loading_percent)
        n_lines = len(mon.lines)
        vm = measures.vm_pu
        losses_kw = sum(
            float(net[f"res_{table}"].pl_mw.sum() * 1000)
            for table in ("line", "trafo", "trafo3w", "impedance")
            if len(net[table])
        )
        summary = BaseStateSummary(
            network=self.network_name,
            interval=interval,
            interval_seconds=int(interval_seconds),
            hour_of_day=hour,
            converged=True,
            buses=len(mon.buses),
            vm_min_pu=float(vm.min()),
            vm_min_bus=int(mon.buses[int(np.argmin(vm))]),
            vm_max_pu=float(vm.max()),
            vm_max_bus=int(mon.buses[int(np.argmax(vm))]),
            losses_kw=losses_kw,
            max_line_loading_percent=max_or_none(measures.loading_percent[:n_lines]),
            max_trafo_loading_percent=max_or_none(measures.loading_percent[n_lines:]),
            load_kw=load_kw,
            pv_kw=pv_kw,
        )
        S = model.Sbus0
        doc["injections"] = hash_array(np.r_[S.real, S.imag])
        return BaseState(summary, model, measures, limitset, doc)


def max_or_none(values: np.ndarray) -> float | None:
    return float(values.max()) if len(values) else None
