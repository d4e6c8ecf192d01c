"""Base states, hand-built verdicts, hosting capacity and the Reason codes."""

from __future__ import annotations

import json
from pathlib import Path

import pandapower.networks as pn
import pytest

from bench.naive import PandapowerChecker, injections_of
from grid import (
    GridValidator,
    NetworkFileError,
    Reason,
    Trade,
    UnknownNetworkError,
    interval_of,
    load_network,
    network_fingerprint,
)
from grid.profiles import hour_of_day


def test_reason_codes_are_stable() -> None:
    assert [(r.name, int(r)) for r in Reason] == [
        ("APPROVED", 0),
        ("VOLTAGE_HIGH", 1),
        ("VOLTAGE_LOW", 2),
        ("LINE_OVERLOAD", 3),
        ("TRAFO_OVERLOAD", 4),
        ("NOT_CONVERGED", 5),
        ("UNKNOWN_BUS", 6),
        ("INVALID_TRADE", 7),
        ("ISLAND_BALANCE", 8),
    ]


def test_base_state_case33bw_matches_baran_wu(case33: GridValidator) -> None:
    summary = case33.base_state()
    assert round(summary.vm_min_pu or 0, 4) == 0.9131
    assert summary.vm_min_bus == 17
    assert summary.losses_kw == pytest.approx(202.7, abs=0.5)
    assert summary.buses == 33


def test_base_state_cigre_lv_min_voltage(cigre: GridValidator) -> None:
    summary = cigre.base_state()
    assert round(summary.vm_min_pu or 0, 3) == 0.912
    assert round(summary.max_trafo_loading_percent or 0, 2) == 85.25


def test_base_state_midday_interval_has_pv_surplus(cigre: GridValidator) -> None:
    noon = 52  # 13:00 UTC with 900 s intervals
    summary = cigre.base_state(noon)
    assert summary.hour_of_day == 13.0
    assert summary.pv_kw > 2 * summary.load_kw
    assert round(summary.vm_max_pu or 0, 4) == 1.0512
    assert cigre.base_state(None).pv_kw == 0.0


def test_interval_of_floors_unix_time() -> None:
    assert interval_of(1_700_000_000) == 1_888_888
    assert interval_of(899) == 0
    assert hour_of_day(1_888_888) == 22.0


def test_validate_cigre_large_transfer_vetoed_by_trafo(cigre: GridValidator) -> None:
    result = cigre.validate([Trade("big", 22, 2, 100.0)])
    (verdict,) = result.verdicts
    assert not verdict.approved
    assert verdict.reason is Reason.TRAFO_OVERLOAD
    assert verdict.element == "trafo 0"
    assert verdict.limit == 100.0
    assert round(verdict.value or 0, 1) == 104.5


def test_validate_case33bw_lift_approved_below_limit(case33_strict: GridValidator) -> None:
    assert case33_strict.base_state().vm_min_pu < 0.95  # type: ignore[operator]
    result = case33_strict.validate([Trade("lift", 17, 1, 200.0)])
    assert [(v.id, v.approved, v.reason) for v in result.verdicts] == [
        ("lift", True, Reason.APPROVED)
    ]


def test_validate_case33bw_worsening_far_end_vetoed(case33_strict: GridValidator) -> None:
    result = case33_strict.validate([Trade("sink", 1, 17, 300.0)])
    (verdict,) = result.verdicts
    assert (verdict.reason, verdict.element) == (Reason.VOLTAGE_LOW, "bus 17")
    # A clear veto may come from the screen, whose value is an estimate (AC: 0.8884).
    assert verdict.value == pytest.approx(0.8884, abs=2e-4)
    assert round(verdict.limit or 0, 4) == 0.9131  # do no harm: the base value is the limit


def test_validate_voltage_past_limit_vetoed_with_bus_and_value(case33: GridValidator) -> None:
    result = case33.validate([Trade("deep", 1, 17, 400.0)])
    (verdict,) = result.verdicts
    assert (verdict.approved, verdict.reason, verdict.element) == (
        False,
        Reason.VOLTAGE_LOW,
        "bus 17",
    )
    assert verdict.value == pytest.approx(0.8798, abs=2e-4)  # screen estimate (AC: 0.8798)
    assert verdict.limit == 0.9


def test_validate_input_problems_get_verdicts(cigre: GridValidator) -> None:
    trades = [
        Trade("ok", 24, 35, 1.0),
        Trade("ghost", 24, 999, 1.0),
        Trade("zero", 24, 35, 0.0),
        Trade("self", 24, 24, 1.0),
        Trade("ok", 24, 35, 1.0),
    ]
    verdicts = cigre.validate(trades).verdicts
    assert [(v.id, v.reason, v.element) for v in verdicts] == [
        ("ok", Reason.APPROVED, ""),
        ("ghost", Reason.UNKNOWN_BUS, "bus 999"),
        ("zero", Reason.INVALID_TRADE, "p_kw"),
        ("self", Reason.APPROVED, ""),
        ("ok", Reason.INVALID_TRADE, "id"),
    ]


def test_validate_same_bus_trade_approved_without_changing_state(cigre: GridValidator) -> None:
    # Neighbours behind one connection point: no bus injection changes, no power flow is needed.
    alone = cigre.validate([Trade("ok", 24, 35, 20.0)])
    both = cigre.validate(
        [Trade("ok", 24, 35, 20.0), Trade("neighbours", 24, 24, 500.0), Trade("big", 22, 22, 1e7)]
    )
    assert [(v.id, v.approved, v.reason, v.source) for v in both.verdicts[1:]] == [
        ("neighbours", True, Reason.APPROVED, "input"),
        ("big", True, Reason.APPROVED, "input"),
    ]
    assert (both.vm_min_pu, both.vm_max_pu) == (alone.vm_min_pu, alone.vm_max_pu)
    assert both.max_line_loading_percent == alone.max_line_loading_percent
    assert both.max_trafo_loading_percent == alone.max_trafo_loading_percent
    only = cigre.validate([Trade("neighbours", 24, 24, 500.0)])
    assert only.stats.ac_solves == 0
    assert only.vm_min_pu == cigre.base_state().vm_min_pu


def test_kerber_vorstadt_is_the_same_network_every_time() -> None:
    # pandapower picks its branch-out cables at random; load_network seeds that choice.
    first = load_network("kerber_vorstadt")
    second = load_network("kerber_vorstadt")
    assert network_fingerprint(first) == network_fingerprint(second)


def test_validate_huge_trade_not_converged(cigre: GridValidator) -> None:
    (verdict,) = cigre.validate([Trade("huge", 2, 16, 1e7)]).verdicts
    assert verdict.reason is Reason.NOT_CONVERGED


def test_validate_priority_order_later_trade_vetoed(cigre: GridValidator) -> None:
    trades = [Trade("first", 22, 2, 50.0), Trade("second", 22, 2, 50.0)]
    verdicts = cigre.validate(trades).verdicts
    assert [(v.approved, v.reason) for v in verdicts] == [
        (True, Reason.APPROVED),
        (False, Reason.TRAFO_OVERLOAD),
    ]


def test_validate_approved_set_passes_pandapower(cigre: GridValidator) -> None:
    trades = [
        Trade(f"t{i}", b, s, 30.0)
        for i, (s, b) in enumerate([(2, 16), (22, 24), (35, 2), (16, 43), (40, 12), (24, 18)] * 3)
    ]
    result = cigre.validate(trades)
    approved = [t for t, v in zip(trades, result.verdicts, strict=True) if v.approved]
    checker = PandapowerChecker(cigre.base_net(), cigre.limit_set())
    assert checker.check(injections_of(approved), strict=False) is None
    assert 0 < len(approved) < len(trades)


def test_hosting_capacity_case33bw_far_end(case33: GridValidator) -> None:
    capacity = case33.hosting_capacity(17)
    assert (capacity.max_export.p_kw, capacity.max_export.reason) == (3051.8, Reason.VOLTAGE_HIGH)
    assert (capacity.max_import.p_kw, capacity.max_import.reason) == (160.7, Reason.VOLTAGE_LOW)
    assert capacity.max_import.element == "bus 17"


def test_hosting_capacity_unknown_bus_raises(case33: GridValidator) -> None:
    with pytest.raises(ValueError, match="bus 500"):
        case33.hosting_capacity(500)


def test_grid_status_lists_every_element(cigre: GridValidator) -> None:
    status = cigre.grid_status([Trade("a", 24, 35, 10.0)])
    assert status.converged
    assert len(status.vm_pu) == len(status.buses) == 44
    assert status.trafos == [0, 1, 2]
    assert len(status.line_loading_percent) == len(status.lines)


def test_load_buses_cigre(cigre: GridValidator) -> None:
    assert cigre.load_buses() == [2, 12, 16, 17, 18, 19, 22, 24, 35, 36, 37, 40, 41, 42, 43]
    assert len(cigre.bus_geodata()) == 44


def test_load_network_unknown_name_lists_accepted() -> None:
    with pytest.raises(UnknownNetworkError, match="accepted: cigre_lv, case33bw") as info:
        load_network("atlantis")
    assert isinstance(info.value, ValueError)


def test_load_network_bad_json_file(tmp_path: Path) -> None:
    bad = tmp_path / "net.json"
    bad.write_text("{not json")
    with pytest.raises(NetworkFileError, match="cannot read"):
        load_network(str(bad))


def test_load_network_json_roundtrip_same_fingerprint(tmp_path: Path) -> None:
    import pandapower as pp

    path = tmp_path / "case33.json"
    pp.to_json(pn.case33bw(), str(path))
    assert network_fingerprint(load_network(str(path))) == network_fingerprint(pn.case33bw())
    assert json.loads(path.read_text())["_module"] == "pandapower.auxiliary"


def test_load_network_simbench_code() -> None:
    net = load_network("1-LV-rural1--0-sw")
    assert len(net.bus) == 15
