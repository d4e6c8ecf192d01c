"""Islanded mode: verdicts against an independent pandapower ``runpp`` of the same island (the
master unit as the only slack, the other units at their dispatch), and ``ISLAND_BALANCE``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandapower as pp
import pytest
from typer.testing import CliRunner

from backend.cli.grid import app
from grid import Activation, GridValidator, Reason, Trade
from grid.island import GridFormingUnit, Island, IslandError, units_from_docs
from grid.networks import quiet

DAY = 20_000 * 96  # an interval at 00:00 UTC
INTERVAL_H = 0.25


@pytest.fixture(scope="module")
def village() -> GridValidator:
    return GridValidator("village_island")


def independent_island(validator: GridValidator, interval: int) -> pp.pandapowerNet:
    """The island rebuilt from the grid-connected base state by hand: transformer and external
    grid out, an ext_grid at the master's bus, the dispatched units and the PV curtailment of the
    validator's island state."""
    island = validator.island
    assert island is not None
    state = validator.island_state(interval)
    net = validator.base_net(interval)  # grid-connected, solved
    net.ext_grid["in_service"] = False
    net.trafo["in_service"] = False
    live = net.bus.index[net.bus.vn_kv < 1.0]
    net.bus.loc[~net.bus.index.isin(live), "in_service"] = False
    if state.curtailed_kw:
        pv_kw = float(net.sgen.p_mw.sum() * 1000)
        net.sgen["p_mw"] *= 1.0 - state.curtailed_kw / pv_kw
    pp.create_ext_grid(net, island.forming.bus, vm_pu=1.0)
    for unit, p_kw in zip(island.dispatched, state.dispatch_kw, strict=True):
        pp.create_sgen(net, unit.bus, p_mw=p_kw / 1000.0)
    return net


def runpp_verdicts(
    net: pp.pandapowerNet, trades: list[Trade], low_kw: float, high_kw: float
) -> list[tuple[bool, float]]:
    """Greedy "do no harm" with one ``runpp`` per trade: approved when the master's power stays
    within [low_kw, high_kw] and every voltage within 0.9-1.1 pu and loading within 100 %
    (the base state is inside all of them here). Returns (approved, master kW) per trade."""
    work = copy.deepcopy(net)
    out = []
    for trade in trades:
        trial = copy.deepcopy(work)
        pp.create_sgen(trial, trade.seller_bus, p_mw=trade.p_kw / 1000.0)
        pp.create_load(trial, trade.buyer_bus, p_mw=trade.p_kw / 1000.0)
        with quiet():
            pp.runpp(trial)
        master_kw = float(trial.res_ext_grid.p_mw[trial.ext_grid.in_service].sum() * 1000)
        vm = trial.res_bus.vm_pu[trial.bus.in_service].dropna()
        ok = (
            low_kw - 1e-6 <= master_kw <= high_kw + 1e-6
            and float(vm.min()) >= 0.9
            and float(vm.max()) <= 1.1
            and float(trial.res_line.loading_percent.fillna(0).max()) <= 100.0
        )
        out.append((ok, master_kw))
        if ok:
            work = trial
    return out


def test_island_base_state_matches_independent_runpp(village: GridValidator) -> None:
    for k in (0, 20, 52, 76):  # night, genset at dawn, PV curtailed at midday, genset evening
        interval = DAY + k
        net = independent_island(village, interval)
        with quiet():
            pp.runpp(net)
        state = village.island_state(interval)
        master_kw = float(net.res_ext_grid.p_mw[net.ext_grid.in_service].sum() * 1000)
        assert state.forming_kw == pytest.approx(master_kw, abs=1e-6)
        ours = village.base_net(interval, islanded=True)
        vm = net.res_bus.vm_pu[net.bus.in_service]
        assert np.allclose(ours.res_bus.vm_pu[vm.index], vm, atol=1e-9)


def test_village_day_dispatch_and_state_of_charge(village: GridValidator) -> None:
    """The named village's day: the battery drains overnight, the genset runs from 03:45, the
    island is short at dawn (06:45-07:15); PV is curtailed once the battery is full; the genset
    again at the evening peak and late at night."""
    states = [village.island_state(DAY + k) for k in range(96)]
    assert states[0].soc_kwh == 400.0 and states[0].dispatch_kw == (0.0,)
    assert [k for k, s in enumerate(states) if s.dispatch_kw[0]][:3] == [15, 17, 19]
    assert states[15].dispatch_kw == (160.0,)  # cycle charging: full power
    assert [k for k, s in enumerate(states) if s.violation is not None] == [27, 28, 29]
    assert states[28].soc_kwh == 0.0
    assert states[52].curtailed_kw == pytest.approx(342.0, abs=0.1)  # 13:00, full
    assert states[52].soc_kwh == pytest.approx(799.8, abs=0.05)
    assert states[76].dispatch_kw == (160.0,)  # 19:00, the evening peak beyond 250 kW


def test_island_short_base_state_vetoes_every_trade(village: GridValidator) -> None:
    interval = DAY + 28  # 07:00: battery empty, genset at 160 kW, the village needs more
    net = independent_island(village, interval)
    with quiet():
        pp.runpp(net)
    master_kw = float(net.res_ext_grid.p_mw[net.ext_grid.in_service].sum() * 1000)
    trades = [Trade("a", 40, 60, 2.0), Trade("b", 60, 60, 1.0)]
    result = village.validate(trades, interval, islanded=True)
    assert [v.reason for v in result.verdicts] == [Reason.ISLAND_BALANCE] * 2
    first = result.verdicts[0]
    assert first.element == "battery village-battery (bus 1)"
    assert first.limit == 0.0  # an empty battery gives nothing
    assert first.value == pytest.approx(master_kw, abs=1e-6)
    assert round(first.value, 2) == 26.93
    assert first.to_dict()["reason_code"] == 8


def test_island_verdicts_match_runpp_with_the_same_slack(village: GridValidator) -> None:
    interval = DAY + 18  # 04:30: the battery nearly empty, 1.4 kW below what its charge allows
    state = village.island_state(interval)
    rng = np.random.default_rng(18)
    buses = village.load_buses()
    trades = [
        Trade(f"t{i}", int(s), int(b), float(p))
        for i, (s, b, p) in enumerate(
            zip(rng.choice(buses, 24), rng.choice(buses, 24), rng.uniform(1, 30, 24), strict=True)
        )
    ]
    result = village.validate(trades, interval, islanded=True)
    net = independent_island(village, interval)
    expected = runpp_verdicts(net, trades, state.low_kw, state.high_kw)
    assert [v.approved for v in result.verdicts] == [ok for ok, _ in expected]
    vetoed = [v for v in result.verdicts if not v.approved]
    assert {v.reason for v in vetoed} == {Reason.ISLAND_BALANCE}
    for verdict, (ok, master_kw) in zip(result.verdicts, expected, strict=True):
        if not ok and verdict.reason is Reason.ISLAND_BALANCE:
            assert verdict.value == pytest.approx(master_kw, abs=1e-4)
            assert verdict.limit == pytest.approx(state.high_kw, abs=1e-9)


def test_island_trade_past_master_limit_vetoed_with_exact_numbers() -> None:
    """cigre_lv's residential feeder as an island: a battery whose limit is 0.5 kW above the
    base state's need; a long transfer adds more losses than that and is vetoed."""
    wide = GridValidator(
        "cigre_lv",
        island=Island((GridFormingUnit("b", "battery", 2, -500.0, 500.0, 1e6, 5e5),)),
    )
    interval = DAY + 76  # 19:00, no PV: the battery supplies the feeder
    need_kw = wide.island_state(interval).forming_kw
    tight = GridValidator(
        "cigre_lv",
        island=Island((GridFormingUnit("b", "battery", 2, -500.0, need_kw + 0.5, 1e6, 5e5),)),
    )
    trades = [Trade("near", 3, 4, 1.0), Trade("far", 3, 18, 20.0)]
    result = tight.validate(trades, interval, islanded=True)
    net = tight.base_net(interval, islanded=True)
    expected = runpp_verdicts(net, trades, -500.0, need_kw + 0.5)
    assert [v.approved for v in result.verdicts] == [True, False]
    assert [ok for ok, _ in expected] == [True, False]
    far = result.verdicts[1]
    assert (far.reason, far.element) == (Reason.ISLAND_BALANCE, "battery b (bus 2)")
    assert far.value == pytest.approx(expected[1][1], abs=1e-4)
    assert far.limit == pytest.approx(need_kw + 0.5, abs=1e-12)


def test_island_evidence_covers_the_mode_and_reproduces(village: GridValidator) -> None:
    trades = [Trade("a", 40, 60, 2.0)]
    interval = DAY + 40
    islanded = village.validate(trades, interval, islanded=True)
    again = GridValidator("village_island", reuse=False).validate(trades, interval, islanded=True)
    connected = village.validate(trades, interval)
    assert islanded.evidence_hash == again.evidence_hash
    assert islanded.evidence_hash != connected.evidence_hash


def test_network_without_units_cannot_run_islanded(cigre: GridValidator) -> None:
    with pytest.raises(IslandError, match="'cigre_lv' has no grid-forming units"):
        cigre.validate([], DAY, islanded=True)


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (dict(kind="fuel cell"), "kind must be one of"),
        (dict(min_kw=10.0, max_kw=5.0), "min_kw 10.0 > max_kw 5.0"),
        (dict(capacity_kwh=0.0), "capacity_kwh > 0"),
        (dict(soc_kwh=200.0), "0 <= soc_kwh <= capacity_kwh"),
        (dict(max_kw=float("nan")), "finite"),
    ],
)
def test_unit_bad_values_refused(unit: dict[str, object], message: str) -> None:
    fields: dict[str, object] = dict(
        name="u", kind="battery", bus=1, min_kw=-10.0, max_kw=10.0, capacity_kwh=100.0, soc_kwh=50.0
    )
    fields.update(unit)
    with pytest.raises(IslandError, match=message):
        GridFormingUnit(**fields)  # type: ignore[arg-type]


def test_registered_units_of_an_interval_replace_the_networks_and_reproduce() -> None:
    """``set_island``: an interval validated with registered devices (the registry's limits, a
    battery's reported state of charge at an interval's start) instead of the network's own units;
    the units are in the evidence, so a fresh validator given the same units reproduces the hash,
    and the reported state of charge is where the day's walk starts."""
    interval = DAY + 40  # 10:00
    registered = Island((
        GridFormingUnit("0xB", "battery", 1, -200.0, 200.0, 600.0, 150.0, device="0xB",
                        soc_interval=DAY + 38),
        GridFormingUnit("0xG", "genset", 1, 30.0, 120.0, device="0xG"),
    ))  # fmt: skip
    trades = [Trade("a", 40, 60, 2.0)]
    first = GridValidator("village_island")
    own = first.validate(trades, interval, islanded=True)
    first.set_island(interval, registered)
    assert first.island_of(interval) == registered and first.island_of(interval + 1) == first.island
    mine = first.validate(trades, interval, islanded=True)
    assert mine.evidence_hash != own.evidence_hash
    # the walk starts at the report: 150 kWh at 09:30, two intervals of the base state's dispatch
    bases = first._islanded(interval)
    walked = bases.soc_at(DAY + 38, 900)
    assert walked == 150.0
    state = first.island_state(interval)
    after_one = bases.soc_at(DAY + 39, 900)
    assert state.soc_kwh == pytest.approx(bases.soc_at(interval, 900), abs=1e-12)
    assert after_one != 150.0 and state.low_kw >= -200.0 and state.high_kw <= 200.0
    fresh = GridValidator("village_island", reuse=False)
    fresh.set_island(interval, registered)
    assert fresh.validate(trades, interval, islanded=True).evidence_hash == mine.evidence_hash
    # the units as JSON (tegrid grid ... --units FILE) give the same island
    assert units_from_docs([u.to_dict() for u in registered.units]) == registered
    first.set_island(interval, None)
    assert first.validate(trades, interval, islanded=True).evidence_hash == own.evidence_hash


# ---------------------------------------------------------------- island balance remedies (#18)
SHORT = DAY + 28  # 07:00: the battery is empty, the genset at 160 kW, the island 26.93 kW short


def master_kw_with(net: pp.pandapowerNet, injections_kw: dict[int, float]) -> float:
    """The master's power (kW) of the independent island with extra injections (sgens)."""
    work = copy.deepcopy(net)
    for bus, p_kw in injections_kw.items():
        pp.create_sgen(work, bus, p_mw=p_kw / 1000.0)
    with quiet():
        pp.runpp(work)
    return float(work.res_ext_grid.p_mw[work.ext_grid.in_service].sum() * 1000)


def test_activation_set_balances_a_short_island_exactly_at_runpp_threshold(
    village: GridValidator,
) -> None:
    """An island short by X kW: an activation set (a real injection in the island) at bus 40
    balances it from exactly the injection pandapower's own runpp needs (the master at its 0 kW
    limit: X less the losses the local injection saves); a hair below, the set is refused and
    every trade stays vetoed."""
    state = village.island_state(SHORT)
    short_kw = state.forming_kw
    assert (round(short_kw, 2), state.high_kw) == (26.93, 0.0)
    net = independent_island(village, SHORT)
    # The injection at bus 40 that brings runpp's master to exactly 0 kW (bisection).
    lo, hi = 20.0, 30.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if master_kw_with(net, {40: mid}) > 0 else (lo, mid)
    need_kw = hi
    assert round(need_kw, 2) == 26.78  # X less the losses the injection at bus 40 saves
    trades = [Trade("a", 40, 60, 2.0), Trade("b", 60, 60, 1.0)]
    below = village.validate(
        trades, SHORT, activations=[Activation("0xa1", 40, need_kw - 0.005)], islanded=True
    )
    [refused] = below.activation_verdicts
    assert (refused.approved, refused.reason, refused.element) == (
        False, Reason.ISLAND_BALANCE, "battery village-battery (bus 1)"
    )  # fmt: skip
    assert refused.value == pytest.approx(master_kw_with(net, {40: need_kw - 0.005}), abs=1e-6)
    assert refused.limit == 0.0
    assert [v.reason for v in below.verdicts] == [Reason.ISLAND_BALANCE] * 2
    assert below.verdicts[0].value == pytest.approx(short_kw, abs=1e-9)  # the base state's
    enough = [Activation("0xa1", 40, need_kw + 0.005)]
    above = village.validate(trades, SHORT, activations=enough, islanded=True)
    assert [v.approved for v in above.activation_verdicts] == [True]
    # Trade a's losses (a few W) take the master past its limit again; b (one bus) adds none.
    with_set = copy.deepcopy(net)
    pp.create_sgen(with_set, 40, p_mw=(need_kw + 0.005) / 1000.0)
    expected = runpp_verdicts(with_set, trades, state.low_kw, state.high_kw)
    assert [v.approved for v in above.verdicts] == [ok for ok, _ in expected] == [False, True]
    assert above.verdicts[0].reason is Reason.ISLAND_BALANCE
    assert above.verdicts[0].value == pytest.approx(expected[0][1], abs=1e-4)
    # With 1 kW of room (worth X = 26.93 kW here) the trade passes too, as runpp says.
    roomy = [Activation("0xa1", 40, need_kw + 1.0)]
    result = village.validate(trades, SHORT, activations=roomy, islanded=True)
    with_room = copy.deepcopy(net)
    pp.create_sgen(with_room, 40, p_mw=(need_kw + 1.0) / 1000.0)
    assert need_kw + 1.0 >= short_kw
    expected = runpp_verdicts(with_room, trades, state.low_kw, state.high_kw)
    assert [v.approved for v in result.verdicts] == [ok for ok, _ in expected] == [True, True]
    assert [v.approved for v in result.activation_verdicts] == [True]


def test_island_activations_evidence_reproduces_on_the_command_line(tmp_path: Path) -> None:
    """`tegrid grid verify --islanded --activations` reproduces a balanced island's verdicts."""
    trades = tmp_path / "trades.json"
    trades.write_text(json.dumps([{"id": "a", "seller_bus": 40, "buyer_bus": 60, "p_kw": 2.0}]))
    acts = tmp_path / "acts.json"
    acts.write_text(json.dumps([{"id": "0xa1", "bus": 40, "p_kw": 28.0}]))
    args = ["--network", "village_island", "--interval", str(SHORT), "-t", str(trades)]
    runner = CliRunner()
    out = runner.invoke(app, ["validate", *args, "-a", str(acts), "--islanded", "--json"])
    assert out.exit_code == 0
    data = json.loads(out.stdout)
    assert [v["approved"] for v in data["verdicts"]] == [True]
    assert [v["approved"] for v in data["activation_verdicts"]] == [True]
    claimed = tmp_path / "claimed.json"
    claimed.write_text(out.stdout)
    verify = ["verify", *args, "--verdicts", str(claimed), "--json"]
    ok = runner.invoke(app, [*verify, "-a", str(acts), "--islanded"])
    assert (ok.exit_code, json.loads(ok.stdout)["match"]) == (0, True)
    # Without the activations the island is short again: other verdicts, another hash.
    bad = runner.invoke(app, [*verify, "--islanded"])
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["mismatches"][0].startswith("evidence hash")
