"""The validator against plain pandapower ``runpp`` where it used to disagree (issue #16): a
three-winding transformer, generator (PV) buses, a converged but implausible AC solution, and
networks with elements the validator does not model.

Tolerances: an AC figure of the validator (lightsim2grid's Newton to 1e-9 pu mismatch) and
``runpp``'s (to 1e-8 MVA) agree to within 1e-4 % loading and 1e-6 pu voltage; a screen veto's value
is a linear estimate and is only checked to the few percent stated at the assertion."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest
from typer.testing import CliRunner

from backend.cli.grid import app
from bench.grid import random_trades
from bench.naive import PandapowerChecker, injections_of, naive_validate
from grid import (
    GridError,
    GridValidator,
    Limits,
    Reason,
    Trade,
    UnmodeledElementError,
    acmodel,
    load_network,
    refuse_unmodeled,
)
from grid.acmodel import Linearization
from grid.evidence import evidence_hash
from grid.hosting import HOSTING_RESOLUTION_KW

LOADING_TOL_PERCENT = 1e-4
VM_TOL_PU = 1e-6


def _runpp(net: pp.pandapowerNet, injections_kw: dict[int, float]) -> pp.pandapowerNet:
    """A solved copy of ``net`` with extra injections (kW by bus, + injects) as sgens."""
    work = copy.deepcopy(net)
    for bus, p_kw in injections_kw.items():
        pp.create_sgen(work, bus, p_mw=p_kw / 1000.0)
    pp.runpp(work)
    return work


# ---------------------------------------------------------------- three-winding transformer
def _three_winding_net() -> pp.pandapowerNet:
    """The issue's reproduction: 110 kV grid, a 63/25/38 MVA 110/20/10 kV three-winding
    transformer to a 20 kV and a 10 kV bus, 5 MW of load on each."""
    net = pp.create_empty_network()
    hv, mv, lv = (pp.create_bus(net, kv) for kv in (110.0, 20.0, 10.0))
    pp.create_ext_grid(net, hv)
    pp.create_transformer3w(net, hv, mv, lv, std_type="63/25/38 MVA 110/20/10 kV")
    pp.create_load(net, mv, p_mw=5.0)
    pp.create_load(net, lv, p_mw=5.0)
    return net


@pytest.fixture(scope="module")
def three_winding() -> GridValidator:
    return GridValidator(_three_winding_net(), add_pv=False)


def test_trafo3w_base_state_loading_is_pandapowers(three_winding: GridValidator) -> None:
    ref = three_winding.base_net()
    summary = three_winding.base_state()
    assert summary.max_trafo_loading_percent == pytest.approx(
        float(ref.res_trafo3w.loading_percent[0]), abs=LOADING_TOL_PERCENT
    )
    assert summary.max_trafo_loading_percent == pytest.approx(20.0294, abs=1e-4)
    assert summary.losses_kw == pytest.approx(float(ref.res_trafo3w.pl_mw[0]) * 1000, abs=1e-3)


def test_trafo3w_overload_vetoed_with_element_value_and_limit(
    three_winding: GridValidator,
) -> None:
    trades = [Trade("a", 1, 2, 30000.0), Trade("t3w", 1, 2, 40000.0), Trade("c", 1, 2, 20000.0)]
    result = three_winding.validate(trades)
    net = three_winding.base_net()
    at_30 = float(_runpp(net, {1: 30000.0, 2: -30000.0}).res_trafo3w.loading_percent[0])
    at_40 = float(_runpp(net, {1: 40000.0, 2: -40000.0}).res_trafo3w.loading_percent[0])
    assert round(at_30, 3) == 100.630 and round(at_40, 1) == 141.7  # runpp: both overloads
    a, t3w, c = result.verdicts
    assert (a.approved, a.reason, a.element, a.limit, a.source) == (
        False, Reason.TRAFO_OVERLOAD, "trafo3w 0", 100.0, "ac"
    )  # fmt: skip
    assert a.value == pytest.approx(at_30, abs=LOADING_TOL_PERCENT)
    assert (t3w.approved, t3w.reason, t3w.element, t3w.limit) == (
        False, Reason.TRAFO_OVERLOAD, "trafo3w 0", 100.0
    )  # fmt: skip
    # 40 MW is far past the limit: a screen veto, its value the linear estimate (within 4 %).
    assert t3w.value == pytest.approx(at_40, rel=0.04)
    assert (c.approved, c.reason) == (True, Reason.APPROVED)
    at_20 = _runpp(net, {1: 20000.0, 2: -20000.0})
    assert result.max_trafo_loading_percent == pytest.approx(
        float(at_20.res_trafo3w.loading_percent[0]), abs=LOADING_TOL_PERCENT
    )
    status = three_winding.grid_status([trades[2]])
    assert status.trafo3ws == [0]
    assert status.trafo3w_loading_percent[0] == pytest.approx(
        float(at_20.res_trafo3w.loading_percent[0]), abs=1e-3
    )


def test_trafo3w_loading_is_in_the_evidence_hash(three_winding: GridValidator) -> None:
    trades = [Trade("c", 1, 2, 20000.0)]
    result = three_winding.validate(trades)
    ref = _runpp(three_winding.base_net(), {1: 20000.0, 2: -20000.0})
    base = three_winding._base(None, 900)
    kwargs = {
        "network": three_winding.fingerprint,
        "base_state": base.doc,
        "limits": three_winding.limits,
        "trades": trades,
        "verdicts": result.verdicts,
        "vm_pu": ref.res_bus.vm_pu.to_numpy(),
    }
    with_trafo3w = ref.res_trafo3w.loading_percent.to_numpy()
    assert evidence_hash(**kwargs, loading_percent=with_trafo3w) == result.evidence_hash
    assert evidence_hash(**kwargs, loading_percent=np.zeros(0)) != result.evidence_hash


@pytest.mark.parametrize(("bus", "direction"), [(1, "export"), (2, "export"), (1, "import")])
def test_trafo3w_binds_hosting_capacity_like_runpp(
    three_winding: GridValidator, bus: int, direction: str
) -> None:
    capacity = three_winding.hosting_capacity(bus)
    limit = capacity.max_export if direction == "export" else capacity.max_import
    assert (limit.reason, limit.element, limit.limit) == (
        Reason.TRAFO_OVERLOAD, "trafo3w 0", 100.0
    )  # fmt: skip
    sign = 1.0 if direction == "export" else -1.0
    net = three_winding.base_net()
    inside = _runpp(net, {bus: sign * limit.p_kw}).res_trafo3w.loading_percent[0]
    beyond = _runpp(net, {bus: sign * (limit.p_kw + 2 * HOSTING_RESOLUTION_KW)})
    assert inside <= 100.0 < beyond.res_trafo3w.loading_percent[0]


# ---------------------------------------------------------------- generator (PV) buses
@pytest.fixture(scope="module")
def ieee30() -> GridValidator:
    return GridValidator("case_ieee30")


IEEE30_INTERVAL = 52  # 13:00: PV at its peak, loads at 0.55 of nominal


def test_case_ieee30_edge_trade_vetoed_as_runpp_does(ieee30: GridValidator) -> None:
    # Sold from 13/17/18/28/29 at the midday interval; the last trade is sized to the edge of the
    # old validator's verdict: it approved it with every solve started from predicted voltages
    # whose magnitudes at the PV buses had drifted off their setpoints, and runpp finds bus 25
    # below 0.9 pu.
    spec = [
        (18, 28, 14720.425), (13, 25, 14699.199), (17, 25, 8552.919), (17, 29, 8387.63),
        (28, 29, 3922.442), (29, 28, 9896.277), (29, 25, 10831.332),
    ]  # fmt: skip
    trades = [Trade(f"t{i:02d}", s, b, p) for i, (s, b, p) in enumerate(spec)]
    result = ieee30.validate(trades, IEEE30_INTERVAL)
    checker = PandapowerChecker(ieee30.base_net(IEEE30_INTERVAL), ieee30.limit_set(IEEE30_INTERVAL))
    violation = checker.check(injections_of(trades), strict=False)
    assert violation is not None and (violation.reason, violation.element) == (
        Reason.VOLTAGE_LOW, "bus 25"
    )  # fmt: skip
    assert [v.approved for v in result.verdicts] == [True] * 6 + [False]
    last = result.verdicts[-1]
    assert (last.reason, last.element, last.limit, last.source) == (
        Reason.VOLTAGE_LOW, "bus 25", 0.9, "ac"
    )  # fmt: skip
    assert last.value == pytest.approx(violation.value, abs=VM_TOL_PU)
    assert round(last.value or 0, 6) == 0.899988


def test_case_ieee30_verdicts_and_state_equal_runpp(ieee30: GridValidator) -> None:
    # 22 trades sold from buses 13/17/18/28/29, 3.6-15.3 MW (numpy seed 16).
    spec = [
        (18, 16, 8639.707), (28, 2, 7672.531), (13, 18, 3853.364), (17, 25, 13592.38),
        (29, 1, 12988.325), (13, 4, 11738.8), (18, 4, 11691.951), (17, 29, 15124.324),
        (17, 19, 5513.981), (29, 11, 6852.544), (13, 29, 7102.337), (29, 16, 8366.174),
        (28, 3, 8101.476), (17, 22, 8439.112), (29, 18, 10407.69), (28, 2, 12139.653),
        (18, 19, 12982.613), (18, 3, 15001.64), (13, 25, 14165.917), (13, 29, 10867.677),
        (28, 11, 4278.195), (29, 18, 10989.626),
    ]  # fmt: skip
    trades = [Trade(f"t{i:02d}", s, b, p) for i, (s, b, p) in enumerate(spec)]
    result = ieee30.validate(trades, IEEE30_INTERVAL)
    checker = PandapowerChecker(ieee30.base_net(IEEE30_INTERVAL), ieee30.limit_set(IEEE30_INTERVAL))
    naive = naive_validate(checker, trades)
    assert [(v.approved, v.reason, v.element) for v in result.verdicts] == [
        (v.approved, v.reason, v.element) for v in naive
    ]
    assert sum(v.approved for v in naive) == 12
    approved = [t for t, v in zip(trades, result.verdicts, strict=True) if v.approved]
    assert checker.check(injections_of(approved), strict=False) is None
    ref = checker.net
    # The generators hold their setpoints (the old validator reported bus 4 at 1.0100754 pu and
    # the transformers 0.098 % below runpp's figure here).
    assert result.vm_min_pu == pytest.approx(1.01, abs=1e-12)
    assert result.vm_max_pu == pytest.approx(float(ref.res_bus.vm_pu.max()), abs=VM_TOL_PU)
    assert result.max_trafo_loading_percent == pytest.approx(
        float(ref.res_trafo.loading_percent.max()), abs=LOADING_TOL_PERCENT
    )


def test_solve_starts_pv_buses_at_their_setpoints(ieee30: GridValidator) -> None:
    model = ieee30._base(IEEE30_INTERVAL, 900).model
    assert model is not None
    bus4 = model.ppci_of_bus[4]
    assert bus4 in model.pv.tolist()
    start = model.V0.copy()
    start[bus4] *= 1.0101574 / abs(start[bus4])  # the drifted magnitude of the issue
    V = model.solve(model.Sbus0, start)
    assert V is not None
    assert abs(V[bus4]) == pytest.approx(1.01, abs=1e-12)
    assert float(np.max(np.abs(V - model.V0))) < 1e-8


def test_solver_jacobian_gives_the_sensitivities_of_jacobian_at_on_generator_buses(
    ieee30: GridValidator,
) -> None:
    # lightsim2grid orders its Jacobian's angle unknowns by bus (PV and PQ buses mixed); the
    # linearization read it as PV buses first, so every relinearization from the solver's
    # Jacobian on a network with generators permuted the sensitivities (first-order errors of
    # the screen: the bench's three false accepts). Without PV buses both orders are the same.
    model = ieee30._base(IEEE30_INTERVAL, 900).model
    assert model is not None and len(model.pv) == 5
    S = model.Sbus0 + model.injection({6: 5000.0, 16: -5000.0})
    V = model.solve(S, model.V0)
    assert V is not None
    from_solver = Linearization(model, V, model.last_jacobian())
    built = Linearization(model, V)
    for bus in (6, 16, 29):
        want = built.column(bus).packed
        got = from_solver.column(bus).packed
        # equal up to the solver's Jacobian being one Newton step old (1e-9 of the column here;
        # read in the wrong order the difference was the size of the column itself)
        assert float(np.max(np.abs(got - want))) <= 1e-6 * float(np.max(np.abs(want)))


@pytest.mark.parametrize(
    ("seed", "n_trades", "first_checked"),
    [
        # ``tegrid bench grid``'s list: the batch of trades 312-318 passed its AC confirmation,
        # but with trades 313, 314 and 316 approved runpp puts bus 29 at 1.10004-1.10038 pu (the
        # screen, on permuted sensitivities, predicted 1.0928-1.0963).
        (20240611, 319, 300),
        # Right sensitivities, but the voltage error of a prediction moving angles by 0.124 rad
        # was 1.5 times its band: trades 1946 and 1947 left bus 29 at 0.89956 pu, brought back
        # by later trades of the same batch (before ``limits.ANGLE_BAND_PU_PER_RAD2``).
        (7, 1960, 1930),
    ],
)
def test_case_ieee30_bench_lists_have_no_false_accept_after_any_approved_trade(
    ieee30: GridValidator, seed: int, n_trades: int, first_checked: int
) -> None:
    # The bench's case_ieee30 lists (trades up to 15 MW at 13:00): every approved prefix from
    # trade ``first_checked`` on passes runpp under the plain rule.
    trades = random_trades(ieee30.load_buses(), n_trades, 15000.0, seed=seed)
    result = ieee30.validate(trades, IEEE30_INTERVAL)
    checker = PandapowerChecker(ieee30.base_net(IEEE30_INTERVAL), ieee30.limit_set(IEEE30_INTERVAL))
    approved = [t for t, v in zip(trades, result.verdicts, strict=True) if v.approved]
    first = next(k for k, t in enumerate(approved) if int(t.id[1:]) >= first_checked)
    failing = []
    for k in range(first, len(approved)):
        violation = checker.check(injections_of(approved[: k + 1]), strict=False)
        if violation is not None:
            failing.append((approved[k].id, violation.element, round(violation.value or 0.0, 6)))
    assert failing == []
    assert len(approved) - first >= 10  # the window holds approved trades to check


# ---------------------------------------------------------------- implausible AC solutions
def test_example_multivoltage_trade_not_vetoed_on_a_spurious_solution() -> None:
    # The interval-60 trades: the ninth was vetoed for trafo 1 at 108.9 % on a solution
    # with a bus at 0.019 pu, reached from a prediction with |V| up to 1.33 pu.
    validator = GridValidator("example_multivoltage")
    spec = [
        (32, 47, 102.214), (40, 36, 3765.702), (37, 40, 2905.79), (40, 37, 2153.601),
        (32, 40, 3346.206), (49, 32, 121.446), (32, 51, 63.062), (40, 50, 58.71),
        (36, 47, 55.538),
    ]  # fmt: skip
    trades = [Trade(f"m{i}", s, b, p) for i, (s, b, p) in enumerate(spec)]
    result = validator.validate(trades, 60)
    checker = PandapowerChecker(validator.base_net(60), validator.limit_set(60))
    assert checker.check(injections_of(trades), strict=False) is None
    ref = checker.net
    assert [v.approved for v in result.verdicts] == [True] * 9
    assert round(float(ref.res_trafo.loading_percent[1]), 1) == 71.8
    assert result.max_trafo_loading_percent == pytest.approx(
        float(ref.res_trafo.loading_percent[1]), abs=LOADING_TOL_PERCENT
    )
    assert result.vm_min_pu == pytest.approx(float(ref.res_bus.vm_pu.min()), abs=VM_TOL_PU)
    assert result.vm_max_pu == pytest.approx(float(ref.res_bus.vm_pu.max()), abs=VM_TOL_PU)


def _two_bus(load_mw: float) -> GridValidator:
    """20 kV slack, a 10 km line, one load: two power-flow solutions (high and low voltage)."""
    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 20.0), pp.create_bus(net, 20.0)
    pp.create_ext_grid(net, b0)
    pp.create_line_from_parameters(
        net, b0, b1, 10.0, r_ohm_per_km=0.2, x_ohm_per_km=0.4, c_nf_per_km=0.0, max_i_ka=1.0
    )
    pp.create_load(net, b1, p_mw=load_mw)
    return GridValidator(net, add_pv=False, limits=Limits(vm_min_pu=0.5))


def test_low_voltage_solution_outside_plausible_range_is_solved_again() -> None:
    model = _two_bus(20.0)._base(None, 900).model
    assert model is not None
    low_start = model.V0.copy()
    low_start[1] *= 0.3 / abs(low_start[1])
    spurious = model.solve(model.Sbus0, low_start)
    assert spurious is not None and round(abs(spurious[1]), 4) == 0.2614  # Newton lands low
    V = model.solve_checked(model.Sbus0, low_start, model.V0)
    assert isinstance(V, np.ndarray)
    assert abs(V[1]) == pytest.approx(abs(model.V0[1]), abs=1e-9)
    assert round(abs(V[1]), 4) == 0.8554


def test_low_voltage_solution_inside_range_caught_by_the_jump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _two_bus(29.0)._base(None, 900).model
    assert model is not None
    monkeypatch.setattr(acmodel, "VM_PLAUSIBLE_PU", (0.3, 1.5))  # the band alone lets it pass
    low_start = model.V0.copy()
    low_start[1] *= 0.4 / abs(low_start[1])
    spurious = model.solve(model.Sbus0, low_start)
    assert spurious is not None and round(abs(spurious[1]), 4) == 0.4587
    assert model.implausible(spurious) is None
    assert model.jump_pu(spurious, model.V0) > acmodel.JUMP_PU
    V = model.solve_checked(model.Sbus0, low_start, model.V0)
    assert isinstance(V, np.ndarray) and round(abs(V[1]), 4) == 0.7068


def test_no_plausible_solution_vetoes_naming_the_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    validator = _two_bus(20.0)
    # With the plausible range narrowed to start at 0.86 pu, every solution of a further
    # withdrawal at bus 1 is implausible: the trade is vetoed, never approved.
    monkeypatch.setattr(acmodel, "VM_PLAUSIBLE_PU", (0.86, 1.5))
    (verdict,) = validator.validate([Trade("t", 0, 1, 100.0)]).verdicts
    ref = _runpp(validator.base_net(), {0: 100.0, 1: -100.0})
    assert (verdict.approved, verdict.reason, verdict.element, verdict.limit) == (
        False, Reason.NOT_CONVERGED, "bus 1", 0.86
    )  # fmt: skip
    assert verdict.value == pytest.approx(float(ref.res_bus.vm_pu[1]), abs=VM_TOL_PU)


# ---------------------------------------------------------------- elements not modeled
def _with_svc(in_service: bool = True) -> pp.pandapowerNet:
    net = pn.case33bw()
    pp.create_svc(
        net, 17, x_l_ohm=1.0, x_cvar_ohm=-10.0, set_vm_pu=1.0,
        thyristor_firing_angle_degree=130.0, in_service=in_service,
    )  # fmt: skip
    pp.create_ssc(net, 20, r_ohm=0.0, x_ohm=5.0, set_vm_pu=1.0)
    pp.create_ssc(net, 21, r_ohm=0.0, x_ohm=5.0, set_vm_pu=1.0)
    return net


REFUSAL = (
    "network 'svc net' has in-service elements the Neural Grid validator does not model: "
    "1 svc (static var compensator), 2 ssc (static synchronous compensator); "
    "take them out of service or use another network"
)


def test_network_with_facts_devices_refused_with_element_and_count() -> None:
    net = _with_svc()
    net.name = "svc net"
    with pytest.raises(UnmodeledElementError) as info:
        GridValidator(net)
    assert str(info.value) == REFUSAL
    assert isinstance(info.value, GridError) and isinstance(info.value, ValueError)
    net.svc["in_service"] = False
    net.ssc["in_service"] = False
    refuse_unmodeled(net, "svc net")  # out of service: nothing to model
    assert GridValidator(net).base_state().converged


def test_modeled_elements_are_accepted_and_agree_with_runpp() -> None:
    # example_multivoltage holds an impedance, two extended wards, a shunt, a generator and a
    # three-winding transformer: all in pandapower's admittance matrix and injections.
    net = load_network("example_multivoltage")
    assert (len(net.impedance), len(net.xward), len(net.trafo3w), len(net.gen)) == (1, 2, 1, 1)
    validator = GridValidator(net)
    trade = Trade("a", 40, 36, 2000.0)
    status = validator.grid_status([trade])
    ref = _runpp(validator.base_net(), {40: 2000.0, 36: -2000.0})
    vm = np.array(status.vm_pu)
    assert float(np.max(np.abs(vm - ref.res_bus.vm_pu.loc[status.buses].to_numpy()))) < VM_TOL_PU
    assert status.trafo3w_loading_percent[0] == pytest.approx(
        float(ref.res_trafo3w.loading_percent[0]), abs=1e-3
    )


@pytest.mark.parametrize(
    "command", [["check"], ["validate", "--trades", "TRADES"], ["hosting-capacity", "--bus", "1"]]
)
def test_grid_commands_refuse_unmodeled_network_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    net = _with_svc()
    net.name = "svc net"
    path = tmp_path / "svc.json"
    pp.to_json(net, str(path))
    trades = tmp_path / "trades.json"
    trades.write_text("[]")
    args = [str(trades) if a == "TRADES" else a for a in command]
    result = CliRunner().invoke(app, [*args, "--network", str(path)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.strip().splitlines() == [
        "error: " + REFUSAL.replace("'svc net'", repr(str(path)))
    ]
