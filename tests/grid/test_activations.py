"""Flexibility activations in the validator: bus injections applied before the trades, as one
set; their verdicts; the evidence hash (schema v2 with activations, v1 unchanged without);
``tegrid grid validate/verify --activations``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli.grid import app
from bench.naive import PandapowerChecker, injections_of
from grid import Activation, GridValidator, Reason, Trade, TradeInputError, parse_activations

# cigre_lv: 100 kW from the industrial feeder (bus 22) to the residential root (bus 2) takes the
# residential transformer (trafo 0, 500 kVA) to 104.5 %.
BIG = Trade("big", 22, 2, 100.0)
# The same hash `main` computed before activations existed (schema v1, unchanged).
BIG_EVIDENCE_V1 = "0x8148ee3ad0b6b0c4edbb7a2c2ef2b7f0862972574bc7c50b04dddf5b3f3c8d2a"


def test_validate_without_activations_keeps_the_v1_evidence(cigre: GridValidator) -> None:
    result = cigre.validate([BIG])
    assert result.evidence_hash == BIG_EVIDENCE_V1
    assert result.activation_verdicts == []
    assert "activation_verdicts" not in result.to_dict()


def test_activation_at_relieving_bus_lets_the_trade_pass(cigre: GridValidator) -> None:
    # 25 kW more injection at R15, behind trafo 0: the transformer carries ~22 kW less.
    act = Activation("0xa1", 16, 25.0)
    result = cigre.validate([BIG], activations=[act])
    assert [(v.id, v.approved, v.reason) for v in result.activation_verdicts] == [
        ("0xa1", True, Reason.APPROVED)
    ]
    assert [(v.id, v.approved) for v in result.verdicts] == [("big", True)]
    assert result.max_trafo_loading_percent == pytest.approx(98.958, abs=1e-3)
    assert result.evidence_hash != BIG_EVIDENCE_V1
    # pandapower's own runpp of base + trade + activation: inside every limit.
    checker = PandapowerChecker(cigre.base_net(), cigre.limit_set())
    injections = injections_of([BIG])
    injections[16] = injections.get(16, 0.0) + 25.0
    assert checker.check(injections, strict=False) is None


def test_activation_at_non_relieving_bus_changes_nothing(cigre: GridValidator) -> None:
    # Bus 22 sits behind the industrial transformer: trafo 0 stays at 104.5 %.
    result = cigre.validate([BIG], activations=[Activation("0xa2", 22, 20.0)])
    assert result.activation_verdicts[0].approved
    (verdict,) = result.verdicts
    assert (verdict.approved, verdict.reason, verdict.element) == (
        False,
        Reason.TRAFO_OVERLOAD,
        "trafo 0",
    )
    assert verdict.value == pytest.approx(104.548, abs=1e-3)


def test_activation_set_that_breaks_a_limit_is_refused_and_left_out(
    cigre: GridValidator,
) -> None:
    # 20 kW more consumption at the feeder's end pulls its voltage below the base state's.
    refused = cigre.validate(
        [Trade("ok", 24, 35, 1.0)], activations=[Activation("0xa3", 16, -20.0)]
    )
    (act,) = refused.activation_verdicts
    assert (act.approved, act.reason, act.element) == (False, Reason.VOLTAGE_LOW, "bus 16")
    assert act.value is not None and act.limit is not None and act.value < act.limit
    plain = cigre.validate([Trade("ok", 24, 35, 1.0)])
    # The trades were validated on the base state alone (same AC figures), the evidence differs.
    assert [v.approved for v in refused.verdicts] == [True]
    assert refused.vm_min_pu == plain.vm_min_pu
    assert refused.evidence_hash != plain.evidence_hash


def test_activation_input_problems_get_verdicts(cigre: GridValidator) -> None:
    acts = [
        Activation("ok", 16, 5.0),
        Activation("ghost", 999, 5.0),
        Activation("zero", 16, 0.0),
        Activation("ok", 18, 5.0),
    ]
    result = cigre.validate([BIG], activations=acts)
    assert [(v.id, v.approved, v.reason, v.element) for v in result.activation_verdicts] == [
        ("ok", True, Reason.APPROVED, ""),
        ("ghost", False, Reason.UNKNOWN_BUS, "bus 999"),
        ("zero", False, Reason.INVALID_TRADE, "p_kw"),
        ("ok", False, Reason.INVALID_TRADE, "id"),
    ]


def test_prefix_reuse_with_activations_equals_a_fresh_run(cigre: GridValidator) -> None:
    trades = [Trade(f"t{i}", 24, 2, 8.0) for i in range(12)] + [BIG]
    acts = [Activation("0xa1", 16, 25.0)]
    fresh = GridValidator("cigre_lv", reuse=False)
    warm = cigre.validate(trades[:6], activations=acts)
    again = cigre.validate(trades, activations=acts)
    expected = fresh.validate(trades, activations=acts)
    assert again.stats.reused_trades == 6 and warm.activation_verdicts[0].approved
    assert [v.approved for v in again.verdicts] == [v.approved for v in expected.verdicts]
    assert again.evidence_hash == expected.evidence_hash
    # Without the activations the same list resumes from nothing it saw with them.
    plain = cigre.validate(trades)
    assert plain.evidence_hash == fresh.validate(trades).evidence_hash


def test_parse_activations_refuses_malformed_input() -> None:
    with pytest.raises(TradeInputError, match="activation 'a': p_kw must be a number"):
        parse_activations([{"id": "a", "bus": 2, "p_kw": "x"}])
    with pytest.raises(TradeInputError, match="activation #0: missing bus"):
        parse_activations([{"id": "a", "p_kw": 1}])
    assert parse_activations([{"id": "a", "bus": 2, "p_kw": -3}]) == [Activation("a", 2, -3.0)]


def test_cli_validate_and_verify_with_activations(tmp_path: Path) -> None:
    runner = CliRunner()
    trades = tmp_path / "trades.json"
    trades.write_text(json.dumps([{"id": "big", "seller_bus": 22, "buyer_bus": 2, "p_kw": 100}]))
    acts = tmp_path / "acts.json"
    acts.write_text(json.dumps([{"id": "0xa1", "bus": 16, "p_kw": 25}]))
    out = runner.invoke(app, ["validate", "-t", str(trades), "--activations", str(acts), "--json"])
    data = json.loads(out.stdout)
    assert out.exit_code == 0
    assert [(v["id"], v["approved"]) for v in data["activation_verdicts"]] == [("0xa1", True)]
    assert [(v["id"], v["approved"]) for v in data["verdicts"]] == [("big", True)]
    claimed = tmp_path / "claimed.json"
    claimed.write_text(out.stdout)
    ok = runner.invoke(
        app, ["verify", "-t", str(trades), "-a", str(acts), "--verdicts", str(claimed), "--json"]
    )
    assert (ok.exit_code, json.loads(ok.stdout)["match"]) == (0, True)
    # The same claim without the activations no longer matches (the hash covers them).
    bad = runner.invoke(app, ["verify", "-t", str(trades), "--verdicts", str(claimed), "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["mismatches"][0].startswith(
        f"evidence hash {data['evidence_hash']} != recomputed "
    )
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a", "bus": 2}]')
    err = runner.invoke(app, ["validate", "-t", str(trades), "-a", str(broken)])
    assert err.exit_code == 2
    assert err.stderr.strip().endswith("activation #0: missing p_kw")


def test_activation_placed_before_its_trade(cigre: GridValidator) -> None:
    small = Trade("small", 24, 35, 1.0)
    placed = Activation("0xa1", 16, 25.0, before="big")
    result = cigre.validate([small, BIG], activations=[placed])
    assert [(v.id, v.approved) for v in result.verdicts] == [("small", True), ("big", True)]
    assert [(v.id, v.approved) for v in result.activation_verdicts] == [("0xa1", True)]
    # The same numbers as applied first (one trade before it changes nothing here), but the
    # placement is an input the evidence covers.
    first = cigre.validate([small, BIG], activations=[Activation("0xa1", 16, 25.0)])
    assert result.max_trafo_loading_percent == pytest.approx(first.max_trafo_loading_percent)
    assert result.evidence_hash != first.evidence_hash
    # A placed activation naming no trade of the list is refused by itself.
    lost = cigre.validate([small], activations=[Activation("0xa9", 16, 5.0, before="nope")])
    [verdict] = lost.activation_verdicts
    assert (verdict.approved, verdict.reason, verdict.element) == (
        False,
        Reason.INVALID_TRADE,
        "before",
    )


def test_placed_activation_that_breaks_a_limit_is_vetoed_and_its_trade_judged_without_it(
    cigre: GridValidator,
) -> None:
    # 60 kW more consumption at R15 pulls its voltage below the band: vetoed like a trade.
    result = cigre.validate([BIG], activations=[Activation("0xa4", 16, -60.0, before="big")])
    [act] = result.activation_verdicts
    assert (act.approved, act.reason) == (False, Reason.VOLTAGE_LOW)
    [verdict] = result.verdicts
    assert (verdict.approved, verdict.reason, verdict.element) == (
        False,
        Reason.TRAFO_OVERLOAD,
        "trafo 0",
    )
