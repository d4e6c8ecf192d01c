"""The ``tegrid grid`` commands: JSON output, verify, and bad input (exit code 2, one line on
stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli.grid import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _trades(tmp_path: Path, content: object) -> str:
    path = tmp_path / "trades.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


CASE33BW_PLACEHOLDERS = (
    "case33bw: 32 of 32 lines have placeholder thermal ratings (max_i_ka 99999 kA, at or above "
    "10 kA on a distribution network): their loading can never bind, so no line overload can be "
    "found there"
)


def test_check_case33bw_json() -> None:
    code, out, err = _run("check", "--network", "case33bw", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["network"], data["buses"], data["vm_min_bus"]) == ("case33bw", 33, 17)
    assert round(data["vm_min_pu"], 4) == 0.9131
    assert round(data["losses_kw"], 1) == 202.7
    assert data["placeholder_lines"] == list(range(32))
    assert data["warnings"] == [CASE33BW_PLACEHOLDERS]
    assert err.splitlines() == [f"warning: {CASE33BW_PLACEHOLDERS}"]


def test_check_warns_in_one_line_that_placeholder_ratings_cannot_bind() -> None:
    code, out, err = _run("check", "--network", "case33bw")
    assert code == 0 and "base state of case33bw" in out
    assert err.splitlines() == [f"warning: {CASE33BW_PLACEHOLDERS}"]


def test_check_real_ratings_no_warning() -> None:
    code, out, err = _run("check", "--network", "cigre_lv", "--json")
    data = json.loads(out)
    assert (code, err, data["placeholder_lines"], data["warnings"]) == (0, "", [], [])


def test_validate_json_and_verify_roundtrip(tmp_path: Path) -> None:
    trades = _trades(
        tmp_path,
        [
            {"id": "a", "seller_bus": 22, "buyer_bus": 2, "p_kw": 100.0},
            {"id": "b", "seller_bus": 24, "buyer_bus": 35, "p_kw": 2},
            {"id": "c", "seller_bus": 24, "buyer_bus": 9999, "p_kw": 1.5},
        ],
    )
    code, out, _ = _run("validate", "--network", "cigre_lv", "--trades", trades, "--json")
    data = json.loads(out)
    assert code == 0
    assert [(v["id"], v["approved"], v["reason"], v["element"]) for v in data["verdicts"]] == [
        ("a", False, "TRAFO_OVERLOAD", "trafo 0"),
        ("b", True, "APPROVED", ""),
        ("c", False, "UNKNOWN_BUS", "bus 9999"),
    ]
    claimed = tmp_path / "claimed.json"
    claimed.write_text(out)
    code, out, _ = _run("verify", "--trades", trades, "--verdicts", str(claimed), "--json")
    assert (code, json.loads(out)["match"]) == (0, True)
    data["verdicts"][1]["approved"] = False
    data["verdicts"][1]["reason"] = "VOLTAGE_LOW"
    claimed.write_text(json.dumps(data))
    code, out, _ = _run("verify", "--trades", trades, "--verdicts", str(claimed), "--json")
    assert (code, json.loads(out)["match"]) == (1, False)
    code, _, _ = _run("verify", "--trades", trades, "--evidence", "0x" + "00" * 32)
    assert code == 1


def test_hosting_capacity_json() -> None:
    code, out, _ = _run("hosting-capacity", "--network", "case33bw", "--bus", "17", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["export_kw"], data["export"]["binding"]) == (3051.8, "VOLTAGE_HIGH")
    assert (data["import_kw"], data["import"]["binding"]) == (160.7, "VOLTAGE_LOW")


BAD_TRADES = [
    ("not json", "[{"),
    ("not a list", {"id": "a"}),
    ("negative", [{"id": "a", "seller_bus": 1, "buyer_bus": 2, "p_kw": -5}]),
    ("text power", [{"id": "a", "seller_bus": 1, "buyer_bus": 2, "p_kw": "five"}]),
    ("missing", [{"id": "a", "seller_bus": 1, "p_kw": 5}]),
    ("float bus", [{"id": "a", "seller_bus": 1.5, "buyer_bus": 2, "p_kw": 5}]),
]


@pytest.mark.parametrize("command", ["validate", "verify"])
@pytest.mark.parametrize(("label", "content"), BAD_TRADES, ids=[b[0] for b in BAD_TRADES])
def test_trades_commands_bad_file_exit_2_one_line(
    tmp_path: Path, command: str, label: str, content: object
) -> None:
    extra = ["--evidence", "0x00"] if command == "verify" else []
    code, out, err = _run(command, "--trades", _trades(tmp_path, content), *extra)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: trades file")


def test_validate_missing_file_exit_2(tmp_path: Path) -> None:
    code, _, err = _run("validate", "--trades", str(tmp_path / "nope.json"))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: cannot read trades file '{tmp_path / 'nope.json'}': FileNotFoundError"
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["check"],
        ["hosting-capacity", "--bus", "1"],
        ["validate", "--trades", "TRADES"],
        ["verify", "--trades", "TRADES", "--evidence", "0x00"],
    ],
)
def test_commands_unknown_network_exit_2(tmp_path: Path, command: list[str]) -> None:
    trades = _trades(tmp_path, [])
    args = [trades if a == "TRADES" else a for a in command]
    code, out, err = _run(*args, "--network", "atlantis")
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: unknown network 'atlantis'; accepted:")


def test_hosting_capacity_unknown_bus_exit_2() -> None:
    code, _, err = _run("hosting-capacity", "--network", "case33bw", "--bus", "500")
    assert code == 2
    assert err.strip() == "error: bus 500 is not an energized bus of case33bw"


def test_validate_bad_limits_exit_2(tmp_path: Path) -> None:
    code, _, err = _run("validate", "--trades", _trades(tmp_path, []), "--vm-min", "1.2")
    assert code == 2
    assert err.strip() == "error: bad limits: need 0 < vm_min_pu < vm_max_pu, got 1.2, 1.1"


def test_verify_without_claim_exit_2(tmp_path: Path) -> None:
    code, _, err = _run("verify", "--trades", _trades(tmp_path, []))
    assert code == 2
    assert err.strip() == "error: give --evidence 0x... and/or --verdicts FILE"


def test_hosting_capacity_table_names_units() -> None:
    result = runner.invoke(app, ["hosting-capacity", "--bus", "40"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells
        for line in result.stdout.splitlines()
        if "kW" in line
        for cells in ([c.strip() for c in line.strip("│ ").split("│")],)
    }
    assert rows["export"] == [
        "export", "190.41 kW", "VOLTAGE_HIGH", "bus 40", "1.100000 pu", "1.100000 pu"
    ]  # fmt: skip
    assert rows["import"] == [
        "import", "13.87 kW", "VOLTAGE_LOW", "bus 40", "0.899994 pu", "0.900000 pu"
    ]  # fmt: skip
    assert "value just beyond" in result.stdout


ISLAND_SHORT_INTERVAL = 20_000 * 96 + 28  # 07:00 UTC: the village's battery is empty


def test_validate_islanded_village_vetoes_and_verify_reproduces(tmp_path: Path) -> None:
    trades = _trades(tmp_path, [{"id": "t1", "seller_bus": 40, "buyer_bus": 60, "p_kw": 2.0}])
    args = ["--network", "village_island", "--interval", str(ISLAND_SHORT_INTERVAL), "--trades"]
    code, out, _ = _run("validate", *args, trades, "--islanded", "--json")
    assert code == 0
    claimed = json.loads(out)
    verdict = claimed["verdicts"][0]
    assert (verdict["reason"], verdict["reason_code"]) == ("ISLAND_BALANCE", 8)
    assert verdict["element"] == "battery village-battery (bus 1)"
    assert (round(verdict["value"], 2), verdict["limit"]) == (26.93, 0.0)
    path = tmp_path / "claimed.json"
    path.write_text(out)
    code, out, _ = _run("verify", *args, trades, "--islanded", "--verdicts", str(path), "--json")
    assert (code, json.loads(out)["match"]) == (0, True)
    # the same trades grid-connected: another verdict and another evidence hash
    code, out, _ = _run("verify", *args, trades, "--verdicts", str(path), "--json")
    assert code == 1
    assert json.loads(out)["mismatches"][0].startswith("evidence hash")


def test_validate_islanded_without_units_exit_2(tmp_path: Path) -> None:
    code, _, err = _run("validate", "--trades", _trades(tmp_path, []), "--islanded")
    assert code == 2
    assert err.strip() == (
        "error: network 'cigre_lv' has no grid-forming units: it cannot run islanded"
    )


def test_check_islanded_village_reports_the_island() -> None:
    code, out, _ = _run(
        "check", "--network", "village_island", "--interval", str(ISLAND_SHORT_INTERVAL),
        "--islanded", "--json",
    )  # fmt: skip
    data = json.loads(out)
    assert code == 0
    assert (data["island_soc_kwh"], data["island_dispatch_kw"]) == (0.0, [160.0])
    assert (data["island_high_kw"], data["island_balanced"]) == (0.0, False)
    assert round(data["island_forming_kw"], 2) == 26.93


def test_validate_islanded_with_registered_units_and_verify_reproduces(tmp_path: Path) -> None:
    """``--units``: the market's registered units (a battery reported at 600 kWh from 06:45 and
    a genset) instead of the village's own: the 07:00 trade the empty village battery vetoes is
    approved, and verify with the same units file reproduces it; without them it does not."""
    trades = _trades(tmp_path, [{"id": "t1", "seller_bus": 40, "buyer_bus": 60, "p_kw": 2.0}])
    units = tmp_path / "units.json"
    units.write_text(json.dumps([
        {"name": "0xB", "kind": "battery", "bus": 1, "min_kw": -300.0, "max_kw": 250.0,
         "capacity_kwh": 800.0, "soc_kwh": 600.0, "device": "0xB",
         "soc_interval": ISLAND_SHORT_INTERVAL - 1},
        {"name": "0xG", "kind": "genset", "bus": 1, "min_kw": 48.0, "max_kw": 160.0,
         "device": "0xG"},
    ]))  # fmt: skip
    args = ["--network", "village_island", "--interval", str(ISLAND_SHORT_INTERVAL), "--trades"]
    code, out, _ = _run("validate", *args, trades, "--islanded", "--units", str(units), "--json")
    assert code == 0
    assert json.loads(out)["verdicts"][0]["reason"] == "APPROVED"
    path = tmp_path / "claimed.json"
    path.write_text(out)
    code, out, _ = _run(
        "verify", *args, trades, "--islanded", "--units", str(units), "--verdicts", str(path),
        "--json",
    )  # fmt: skip
    assert (code, json.loads(out)["match"]) == (0, True)
    code, out, _ = _run("verify", *args, trades, "--islanded", "--verdicts", str(path), "--json")
    assert code == 1  # the village's own units: another verdict and evidence
    units.write_text(json.dumps([{"name": "x", "kind": "diesel", "bus": 1, "min_kw": 0,
                                  "max_kw": 1}]))  # fmt: skip
    code, _, err = _run("validate", *args, trades, "--islanded", "--units", str(units))
    assert code == 2
    assert err.strip() == (
        f"error: units {str(units)!r}: unit 'x': kind must be one of ('battery', 'genset')"
    )
