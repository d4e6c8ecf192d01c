"""Interval base states: the network under one interval's loads and PV, solved once with
pandapower and kept (``BaseStates``) with the AC model, its measures and the limit set that trade
validation and hosting capacity start from."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandapower as pp

from grid.acmodel import ACModel, Measures
from grid.errors import BaseStateError
from grid.evidence import hash_array
from grid.island import (
    Island,
    IslandBalance,
    IslandState,
    cycle_charging,
    forming_limits_kw,
    genset_rows,
    hours,
    island_doc,
)
from grid.limits import LimitSet
from grid.networks import quiet
from grid.profiles import apply_interval, hour_of_day
from grid.results import BaseStateSummary
from grid.verdicts import Limits

# Base states kept per validator (the oldest is dropped first).
BASE_CACHE = 32
# States of charge kept from the day walks (``BaseStates.soc_at``): a few weeks of 15-min intervals.
SOC_CACHE = 4096
# Islanded, a PV surplus the master cannot absorb is curtailed (the inverters' over-frequency
# power reduction) until the master sits this far above its charging limit.
CURTAIL_HEADROOM_KW = 1.0


@dataclass
class BaseState:
    """Internals of one interval's base state (``model``, ``measures`` and ``limitset`` are None
    when its power flow does not converge)."""

    summary: BaseStateSummary
    model: ACModel | None
    measures: Measures | None
    limitset: LimitSet | None
    doc: dict[str, object]
    island: IslandState | None = None  # islanded mode only


class BaseStates:
    """The base states of one network, solved on first use and cached by (interval, length).

    With an ``island`` (``net`` then from ``grid.island.islanded_net``) each base state is the
    islanded one: units dispatched by ``grid.island.cycle_charging`` from the master's state of
    charge, which follows the day's earlier base states (``soc_at``)."""

    def __init__(
        self,
        net: pp.pandapowerNet,
        nominal: dict[str, np.ndarray],
        limits: Limits,
        network_name: str,
        island: Island | None = None,
    ) -> None:
        self.net = net
        self.nominal = nominal
        self.limits = limits
        self.network_name = network_name
        self.island = island
        self._cache: dict[tuple[int | None, int], BaseState] = {}
        self._soc: dict[tuple[int, int], float] = {}  # (interval, length) -> kWh at its start
        self._work: pp.pandapowerNet | None = None  # a copy the state-of-charge walk solves

    def soc_at(self, interval: int | None, interval_seconds: int) -> float:
        """The master battery's state of charge (kWh) at the start of ``interval``: the unit's
        ``soc_kwh`` at the start of the UTC day (of ``soc_interval``, a device's report), then
        each earlier interval of the day's base state takes ``forming_kw x h`` out (kept within
        0..capacity: beyond, the island sheds load). Not a battery: 0."""
        assert self.island is not None
        unit = self.island.forming
        if unit.kind != "battery":
            return 0.0
        if interval is None:
            return float(unit.soc_kwh)
        first = interval * interval_seconds // 86400 * 86400 // interval_seconds
        if unit.soc_interval is not None:  # a device's report: the walk starts there
            first = min(int(unit.soc_interval), interval)
        k, soc = first, float(unit.soc_kwh)
        for j in range(interval, first, -1):  # the latest interval of the day already walked
            hit = self._soc.get((j, interval_seconds))
            if hit is not None:
                k, soc = j, hit
                break
        h = hours(interval_seconds)
        while k < interval:
            if self._work is None:
                self._work = copy.deepcopy(self.net)
            state, _ = self.dispatch(self._work, k, interval_seconds, soc)
            soc = min(max(soc - state.forming_kw * h, 0.0), float(unit.capacity_kwh))
            k += 1
            if len(self._soc) >= SOC_CACHE:
                self._soc.clear()  # a walk restarts from its day's start at worst
            self._soc[(k, interval_seconds)] = soc
        return soc

    def dispatch(
        self, net: pp.pandapowerNet, interval: int | None, interval_seconds: int, soc_kwh: float
    ) -> tuple[IslandState, bool]:
        """``net`` set to the interval's loads and PV and the units' dispatch, solved: the
        island's state, and whether the power flow converged (else the state is the master's
        limits with zero power and no dispatch)."""
        assert self.island is not None
        apply_interval(net, self.nominal, interval, interval_seconds)
        rows = genset_rows(net, self.island)
        low, high = forming_limits_kw(self.island.forming, soc_kwh, hours(interval_seconds))
        zero = tuple(0.0 for _ in rows)
        try:
            with quiet():
                pp.runpp(net)
            forming_kw = _forming_kw(net)
            dispatch = cycle_charging(self.island, forming_kw, low, high)
            if any(dispatch):
                net.sgen.loc[rows, "p_mw"] = np.array(dispatch) / 1000.0
                with quiet():
                    pp.runpp(net)
                forming_kw = _forming_kw(net)
            curtailed_kw = 0.0
            if forming_kw < low:
                curtailed_kw, forming_kw = _curtail(
                    net, rows, forming_kw, low + CURTAIL_HEADROOM_KW
                )
        except Exception:
            return IslandState(soc_kwh, 0.0, low, high, zero, None), False
        balance = IslandBalance(self.island.forming, -1, low, high)
        state = IslandState(
            soc_kwh,
            forming_kw,
            low,
            high,
            tuple(dispatch),
            balance.check(forming_kw),
            curtailed_kw,
        )
        return state, True

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
        island: IslandState | None = None
        try:
            if self.island is not None:
                soc = self.soc_at(interval, interval_seconds)
                island, converged = self.dispatch(net, interval, interval_seconds, soc)
                doc["mode"] = "islanded"
                doc["island"] = {"units": island_doc(self.island), **island.doc()}
                if not converged:
                    raise BaseStateError("the islanded base state does not converge")
            else:
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
            return BaseState(summary, None, None, None, doc, island)
        model = ACModel(net)
        measures = model.measure(model.V0)
        mon = model.monitored
        limitset = LimitSet(self.limits, mon, measures.vm_pu, measures.loading_percent)
        if island is not None and self.island is not None:
            unit = self.island.forming
            limitset.balance = IslandBalance(
                unit, model.ppci_of_bus[int(unit.bus)], island.low_kw, island.high_kw
            ).with_base(model.Ybus, model.Sbus0, model.V0, model.base_mva, island.forming_kw)
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
        return BaseState(summary, model, measures, limitset, doc, island)


def _curtail(
    net: pp.pandapowerNet, gensets: list[int], forming_kw: float, target_kw: float
) -> tuple[float, float]:
    """Curtail every PV static generator by one factor until the master gives ``target_kw``
    (from ``forming_kw``; two solves, the second correcting for the losses the first cut
    saved; no PV below zero): (kW curtailed, the master's power)."""
    pv = net.sgen.index[net.sgen.in_service & ~net.sgen.index.isin(gensets)]
    full = net.sgen.p_mw.loc[pv].copy()
    full_kw = float(full.sum() * 1000)
    cut_kw = 0.0
    for _ in range(2):
        if full_kw <= 0:
            break
        cut_kw = min(full_kw, cut_kw + target_kw - forming_kw)
        net.sgen.loc[pv, "p_mw"] = full * (1.0 - cut_kw / full_kw)
        with quiet():
            pp.runpp(net)
        forming_kw = _forming_kw(net)
    return cut_kw, forming_kw


def _forming_kw(net: pp.pandapowerNet) -> float:
    """The master unit's power (kW, + injects) in a solved islanded net: its ext_grid's."""
    live = net.ext_grid.index[net.ext_grid.in_service]
    return float(net.res_ext_grid.p_mw.loc[live].sum() * 1000)


def max_or_none(values: np.ndarray) -> float | None:
    return float(values.max()) if len(values) else None
