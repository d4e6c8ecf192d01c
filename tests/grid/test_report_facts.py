"""What the demo's report takes from the Neural Grid: network facts (transformers, placeholder line
ratings), the power balance of an interval against pandapower's own power flow, and a veto's
binding value and limit under a tightened voltage band."""

from __future__ import annotations

import copy

import pandapower as pp
import pytest

from grid import GridValidator, Limits, Reason, Trade, load_network
from grid.networks import PLACEHOLDER_MAX_I_KA, placeholder_line_ratings
from grid.profiles import apply_interval

NOON = 52  # 13:00 UTC with 900 s intervals: PV surplus, the feeder exports


def test_case33bw_facts_name_its_placeholder_ratings_and_no_transformer(
    case33: GridValidator,
) -> None:
    facts = case33.facts
    assert (facts.network, facts.lines, facts.trafos) == ("case33bw", 32, 0)
    assert facts.placeholder_lines == list(range(32))  # the 5 open tie lines are out of service
    assert facts.warnings == [
        "case33bw: 32 of 32 lines have placeholder thermal ratings (max_i_ka 99999 kA, at or "
        "above 10 kA on a distribution network): their loading can never bind, so no line "
        "overload can be found there"
    ]


def test_cigre_lv_facts_have_real_ratings_and_three_transformers(cigre: GridValidator) -> None:
    facts = cigre.facts
    assert (facts.lines, facts.trafos, facts.placeholder_lines, facts.warnings) == (37, 3, [], [])


def test_placeholder_rule_is_a_rating_of_10_ka_or_more_on_a_distribution_network() -> None:
    net = load_network("cigre_lv")  # every line rated 1 kA, buses at 0.4 and 20 kV
    net.line.loc[3, "max_i_ka"] = PLACEHOLDER_MAX_I_KA
    net.line.loc[4, "max_i_ka"] = PLACEHOLDER_MAX_I_KA - 0.001
    net.line.loc[5, "max_i_ka"] = 50.0
    net.line.loc[5, "in_service"] = False  # out of service: not watched, not reported
    assert placeholder_line_ratings(net) == [3]
    net.bus.loc[0, "vn_kv"] = 110.0  # a transmission bus: the rule does not judge it
    assert placeholder_line_ratings(net) == []


@pytest.mark.parametrize("network", ["cigre_lv", "case33bw"])
def test_energy_balance_equals_pandapowers_own_power_flow(network: str) -> None:
    validator = GridValidator(network)
    buses = validator.load_buses()
    trades = [Trade("a", buses[0], buses[-1], 20.0), Trade("b", buses[1], buses[-2], 5.0)]
    balance = validator.energy_balance(trades, interval=NOON, interval_seconds=900)

    # independent: pandapower's runpp on the interval's network with the trades as elements
    net = copy.deepcopy(validator.net)
    apply_interval(net, validator._nominal, NOON, 900)
    for t in trades:
        pp.create_sgen(net, t.seller_bus, p_mw=t.p_kw / 1000)
        pp.create_load(net, t.buyer_bus, p_mw=t.p_kw / 1000)
    pp.runpp(net, numba=False)
    losses_kw = net.res_line.pl_mw.sum() * 1000
    if len(net.trafo):
        losses_kw += net.res_trafo.pl_mw.sum() * 1000

    assert balance.converged
    assert balance.grid_kw == pytest.approx(net.res_ext_grid.p_mw.sum() * 1000, abs=1e-3)
    assert balance.losses_kw == pytest.approx(losses_kw, abs=1e-3)
    assert balance.generation_kw == pytest.approx(net.sgen.p_mw.sum() * 1000, abs=1e-9)
    assert balance.consumption_kw == pytest.approx(net.load.p_mw.sum() * 1000, abs=1e-9)
    residual = balance.grid_kw + balance.generation_kw - balance.consumption_kw - balance.losses_kw
    assert abs(residual) < 1e-3


def test_cigre_noon_exports_and_loses_power(cigre: GridValidator) -> None:
    balance = cigre.energy_balance([], interval=NOON, interval_seconds=900)
    assert balance.grid_kw < 0 < balance.losses_kw  # PV surplus flows back upstream
    assert balance.generation_kw == cigre.base_state(NOON).pv_kw
    assert balance.consumption_kw == cigre.base_state(NOON).load_kw


def test_veto_names_the_tightened_voltage_limit_and_the_value_reached(
    cigre: GridValidator,
) -> None:
    tight = GridValidator("cigre_lv", limits=Limits(vm_max_pu=1.06))
    buses = tight.load_buses()
    trade = Trade("far", buses[-1], buses[0], 60.0)  # 60 kW from the feeder's far end
    assert cigre.validate([trade], interval=NOON).verdicts[0].approved  # fine at 1.10 pu
    (verdict,) = tight.validate([trade], interval=NOON).verdicts
    assert (verdict.approved, verdict.reason, verdict.element, verdict.limit, verdict.source) == (
        False, Reason.VOLTAGE_HIGH, "bus 43", 1.06, "ac"
    )  # fmt: skip
    # an AC verdict's value is the AC state with the trade: the highest voltage, at that bus
    status = tight.grid_status([trade], interval=NOON)
    assert verdict.value == pytest.approx(status.vm_pu[status.buses.index(43)], abs=1e-6)
    assert verdict.value == pytest.approx(max(status.vm_pu), abs=1e-6)
    assert round(verdict.value, 4) == 1.0674
