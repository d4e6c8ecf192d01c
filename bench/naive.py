"""The baseline: a full pandapower ``runpp`` per trade on the accumulated set, same rule, same
limits.

Used by the benchmark (speed and verdict agreement) and by tests as an independent AC check of an
approved set (``pandapower_check``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pandapower as pp

from grid.limits import NOT_CONVERGED, LimitSet, Violation
from grid.networks import quiet
from grid.verdicts import Reason, Trade, Verdict

TRADE_SGEN = "tegrid trade injection"


class PandapowerChecker:
    """A solved base-state net with one extra sgen per bus carrying the net trade injection."""

    def __init__(self, base_net: pp.pandapowerNet, limitset: LimitSet) -> None:
        self.net = copy.deepcopy(base_net)
        self.limitset = limitset
        self.sgen_of_bus: dict[int, int] = {}
        for bus in limitset.monitored.buses:
            self.sgen_of_bus[int(bus)] = int(
                pp.create_sgen(self.net, int(bus), p_mw=0.0, name=TRADE_SGEN)
            )

    def check(self, injection_kw: dict[int, float], strict: bool = True) -> Violation | None:
        """Run ``runpp`` with these net injections (kW by bus, + injects) and apply the rule."""
        net = self.net
        p_mw = np.zeros(len(self.sgen_of_bus))
        index = np.array(list(self.sgen_of_bus.values()))
        position = {bus: i for i, bus in enumerate(self.sgen_of_bus)}
        for bus, p_kw in injection_kw.items():
            p_mw[position[bus]] += p_kw / 1000.0
        net.sgen.loc[index, "p_mw"] = p_mw
        try:
            with quiet():
                pp.runpp(net)
        except Exception:
            return NOT_CONVERGED
        balance = self.limitset.balance
        if balance is not None:  # islanded: the master unit is the net's only live ext_grid
            live = net.ext_grid.index[net.ext_grid.in_service]
            short = balance.check(float(net.res_ext_grid.p_mw.loc[live].sum() * 1000))
            if short is not None:
                return short
        mon = self.limitset.monitored
        vm = net.res_bus.vm_pu.loc[mon.buses].to_numpy(dtype=float)
        loading = np.r_[
            net.res_line.loading_percent.loc[mon.lines].to_numpy(dtype=float),
            net.res_trafo.loading_percent.loc[mon.trafos].to_numpy(dtype=float),
            net.res_trafo3w.loading_percent.loc[mon.trafo3ws].to_numpy(dtype=float),
        ]
        return self.limitset.check(vm, loading, strict=strict)


def naive_validate(
    checker: PandapowerChecker, trades: Sequence[Trade], on_trade: Callable[[], None] | None = None
) -> list[Verdict]:
    """Decide trades one by one, each with a full ``runpp`` of base + approved + this trade.

    Expects trades that already passed input checks (known buses, positive power)."""
    accepted: dict[int, float] = {}
    verdicts: list[Verdict] = []
    for trade in trades:
        trial = dict(accepted)
        trial[trade.seller_bus] = trial.get(trade.seller_bus, 0.0) + trade.p_kw
        trial[trade.buyer_bus] = trial.get(trade.buyer_bus, 0.0) - trade.p_kw
        violation = checker.check(trial)
        if violation is None:
            accepted = trial
            verdicts.append(Verdict(trade.id, True, Reason.APPROVED))
        else:
            verdicts.append(
                Verdict(
                    trade.id,
                    False,
                    violation.reason,
                    violation.element,
                    violation.value,
                    violation.limit,
                )
            )
        if on_trade is not None:
            on_trade()
    return verdicts


def injections_of(trades: Sequence[Trade]) -> dict[int, float]:
    """Net injection per bus (kW) of a trade set."""
    total: dict[int, float] = {}
    for trade in trades:
        total[trade.seller_bus] = total.get(trade.seller_bus, 0.0) + trade.p_kw
        total[trade.buyer_bus] = total.get(trade.buyer_bus, 0.0) - trade.p_kw
    return total
