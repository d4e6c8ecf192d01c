"""Short `tegrid demo` runs through every real component, and the report built from them: the
congested midday on cigre_lv (vetoes with their numbers, a tightened voltage band, figures from 0,
tokens), and case33bw (no transformer, placeholder line ratings) on ports of our choosing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.chain.protocol import TOKEN_UNIT
from backend.demo.analysis import fmt
from backend.devtools.broker import find_mosquitto
from backend.net import free_port

TEGRID = Path(sys.executable).with_name("tegrid")
PHYSICAL = {"VOLTAGE_HIGH", "VOLTAGE_LOW", "LINE_OVERLOAD", "TRAFO_OVERLOAD"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "prices_volumes", "verdicts", "grid_limits", "delivery", "participants", "gas", "imbalance",
    "welfare",
)  # fmt: skip
VM_MAX_PU = 1.08


def _run_demo(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    result = subprocess.run(
        [str(TEGRID), "demo", *args, "--prosumers", "16", "--seed", "7",
         "--reports", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    return result, folders[0]


@pytest.mark.e2e
def test_demo_short_congested_day_summary(tmp_path: Path) -> None:
    api_port, chain_port = free_port(), free_port()
    result, folder = _run_demo(
        ["--hours", "0.5", "--start-hour", "13", "--vm-max", str(VM_MAX_PU),
         "--api-port", str(api_port), "--chain-port", str(chain_port)],
        tmp_path,
    )  # fmt: skip
    summary = json.loads((folder / "summary.json").read_text())

    assert all(summary["checks"].values()), summary["checks"]
    assert len(summary["intervals"]) == 2
    assert summary["prosumers"] == 16
    approved = sum(i["approved"] for i in summary["intervals"])
    vetoed = sum(i["vetoed"] for i in summary["intervals"])
    assert summary["totals"]["trades approved"] == approved > 0
    assert summary["totals"]["trades vetoed"] == vetoed
    assert summary["totals"]["trades reclaimed unsettled"] == 0  # every trade was settled in time
    # The congested midday binds: the greedy merit order on the same books vetoes whole pairs for
    # the grid's limits; the optimal clearing fills up to the limit instead, gaining welfare.
    reasons = {r for i in summary["intervals"] for r in i["greedy_vetoes_by_reason"]}
    assert reasons & PHYSICAL, reasons
    for i in summary["intervals"]:
        assert i["clearing_method"] == "optimal"
        assert i["welfare"] >= i["greedy_welfare"] > 0
    assert max(i["grid_approved"]["vm_max_pu"] for i in summary["intervals"]) > VM_MAX_PU - 1e-3
    gained = summary["totals"]["welfare gained over greedy (%)"]
    welfare = summary["totals"]["welfare (tokens)"]
    greedy = summary["totals"]["welfare of the greedy clearing (tokens)"]
    assert gained == round(100 * (welfare / greedy - 1), 2) and gained >= 0
    # every member reports once per interval unless its reading went missing
    assert 0 < summary["totals"]["readings on chain"] <= 2 * 16
    # conservation, per participant: what sellers received is what buyers paid
    received = sum(p["received"] for p in summary["participants"])
    paid = sum(p["paid"] for p in summary["participants"])
    assert received == paid > 0
    for interval in summary["intervals"]:
        assert interval["approved_state_within_limits"]
        assert interval["gas"]["record"] > 0 and interval["gas"]["settle"] > 0

    # the API and the keeper (and the oracle, over Mosquitto) ran as processes of their own, the
    # API and the chain on the ports asked for
    layout = summary["processes"]
    assert "backend.cli.main serve --dev --no-dev-stack --no-scheduler" in layout["api"]
    assert f"--port {api_port}" in layout["api"]
    assert summary["chain"]["rpc_url"] == f"http://127.0.0.1:{chain_port}"
    assert "backend.cli.main keeper" in layout["keeper"]
    if layout.get("broker") == "mosquitto":
        assert "backend.cli.main oracle" in layout["oracle"]

    _check_vetoes(summary)
    if find_mosquitto() is not None:
        _check_flexibility(summary, result.stdout)
    _check_intervals(summary)
    _check_energy_balance(summary)
    _check_figures(folder, summary)
    _check_html(folder, summary)
    assert "PASS" in result.stdout and "FAIL" not in result.stdout
    assert "warning:" not in result.stdout  # cigre_lv's ratings are real
    assert f"voltage limits 0.9-{VM_MAX_PU} pu" in result.stdout
    for i in summary["intervals"]:  # the console's binding column, e.g. "max V 1.0795/1.08 pu"
        b = i["binding"]
        if b["metric"] == "max V":
            assert f"max V {b['value']:.4f}/{VM_MAX_PU} pu" in result.stdout
    assert "simulated day " + summary["day"]["span"] + " (chain time)" in result.stdout


FLEX_CHECKS = (
    "flexibility: no activation paid beyond its delivery (paid <= floor(cost x delivered / "
    "activated), the ignoring device paid 0)",
    "flexibility: every recorded activation closed exactly once, its locked cost paid or "
    "refunded whole, nothing left in FlexibilityMarket",
    "flexibility: no approved interval state violates a grid limit with the activations "
    "applied (independent pandapower runpp)",
)


def _check_flexibility(summary: dict[str, Any], stdout: str) -> None:
    """#17 in the demo: the midday's refused pairs rescued by the members' batteries, recorded on
    FlexibilityMarket, dispatched, applied (or ignored) and metered by `tegrid devices simulate`,
    settled by the keeper: each provider paid for what its device's own reading shows, the device
    that ignores its actions paid nothing and its payers refunded whole."""
    flex = summary["flexibility"]
    assert [summary["checks"][name] for name in FLEX_CHECKS] == [True] * 3
    assert len(summary["checks"]) == 10
    devices = flex["devices"]
    assert [d["kind"] for d in devices].count(1) == 8  # a battery at every PV household
    assert {d["kind"] for d in devices} == {1, 2, 3}
    assert len(flex["consenting"]) == 12  # 75 % of 16
    acts = flex["activations"]
    # 13:00 and 13:15 at --vm-max 1.08: 11 activations rescue 6 refused pairs
    assert (len(acts), flex["totals"]["trades rescued"]) == (11, 6)
    assert flex["totals"]["offers"] == 20  # 8 batteries charging, 2 flexible loads, twice
    approved = {t["id"] for t in summary["trades"] if t["approved"]}
    consenting = {p["wallet"] for p in summary["participants"] if p["name"] in flex["consenting"]}
    names = {p["wallet"]: p["name"] for p in summary["participants"]}
    ignoring = [a for a in acts if a["ignoring_device"]]
    assert len(ignoring) == 3 and {a["device"] for a in ignoring} == {flex["ignoring_device"]}
    for a in acts:
        assert a["trade"] in approved  # every rescued trade is in the batch, approved
        assert a["direction"] == "down"  # batteries charging at the exporting feeder's end
        assert (a["recorded"], a["closed"]) == (True, "settled")
        assert a["cost"] == sum(p["share"] for p in a["payers"]) > 0
        # only members who set a remedy cap pay
        assert all(p["share"] == 0 or p["name"] in {names[w] for w in consenting}
                   for p in a["payers"])  # fmt: skip
        assert a["bound"] == a["cost"] * a["delivered_w"] // a["activated_w"]
        assert a["paid"] <= a["bound"] and a["paid"] + a["refunded"] == a["cost"]
        if a["ignoring_device"]:
            # no ack, nothing applied: its reading shows its baseline, nothing delivered
            assert a["action"] in ("sent", "expired")
            assert (a["delivered_w"], a["paid"], a["refunded"]) == (0, 0, a["cost"])
        else:
            assert a["action"] == "acknowledged"
            # the device ran the setpoint; its reading is whole Wh (floor): at most 4 W short
            assert a["activated_w"] - 4 <= a["delivered_w"] <= a["activated_w"]
            assert a["paid"] == a["bound"] > 0
    totals = flex["totals"]
    assert totals["activations"] == len(acts)
    payers = {p["name"] for a in acts for p in a["payers"] if p["share"] > 0}
    assert totals["members paying for remedies"] == len(payers) > 0
    assert payers <= set(flex["consenting"])
    assert totals["paid to providers (tokens)"] == sum(a["paid"] for a in acts) / TOKEN_UNIT
    assert totals["refunded to payers (tokens)"] == sum(a["refunded"] for a in acts) / TOKEN_UNIT
    assert totals["control actions sent / acknowledged / refused / unanswered"] == "11 / 8 / 0 / 3"
    assert totals["welfare recovered (tokens)"] > 0
    assert totals["welfare recovered (tokens)"] > totals["flexibility cost (tokens)"]
    rows = flex["intervals"]
    assert [r["activations"] for r in rows] == [6, 5]
    assert sum(r["delivered_kwh"] for r in rows) < sum(r["activated_kwh"] for r in rows)
    assert all(r["ac_with_activations_within_limits"] for r in rows)
    assert "flexibility" in stdout and "`tegrid devices simulate` runs them" in stdout


def _check_vetoes(summary: dict[str, Any]) -> None:
    """Every veto carries the binding value and limit the Neural Grid computed (as stored with the
    trade and served by the API), in the band the demo was given."""
    assert summary["limits"]["vm_max_pu"] == VM_MAX_PU
    trades = {t["id"][:10]: t for t in summary["trades"] if not t["approved"]}
    assert len(summary["vetoes"]) == len(trades) == summary["totals"]["trades vetoed"]
    for veto in summary["vetoes"]:
        trade = trades[veto["trade"]]
        assert isinstance(veto["value"], float) and isinstance(veto["limit"], float), veto
        assert (veto["value"], veto["limit"]) == (trade["vetoValue"], trade["vetoLimit"])
        assert (veto["reason"], veto["element"]) == (trade["reason"], trade["element"])
        if veto["reason"] == "VOLTAGE_HIGH":
            assert veto["limit"] == VM_MAX_PU and veto["value"] > VM_MAX_PU
            assert veto["unit"] == "pu" and veto["element"].startswith("bus ")
        elif veto["reason"] == "TRAFO_OVERLOAD":
            assert veto["limit"] >= 100.0 and veto["value"] > veto["limit"]
            assert veto["unit"] == "%" and veto["element"].startswith("trafo ")


def _check_intervals(summary: dict[str, Any]) -> None:
    day, intervals = summary["day"], summary["intervals"]
    start = datetime.fromtimestamp(day["first_interval"] * 900, UTC)
    assert (day["start"], day["interval_seconds"]) == (start.strftime("%Y-%m-%dT13:00:00Z"), 900)
    assert day["span"] == f"{start:%Y-%m-%d} 13:00-13:30 UTC"
    assert [i["span"] for i in intervals] == ["13:00-13:15", "13:15-13:30"]
    assert [i["interval"] for i in intervals] == [day["first_interval"], day["last_interval"]]
    for i in intervals:
        assert 0 < i["delivered_wh"] == i["traded_wh"]  # trades settle firm
        assert i["average_price"] == pytest.approx(i["paid_tokens"] / (i["delivered_wh"] / 1000))
        # the binding metric of a voltage-vetoed interval: the approved state's highest voltage
        reasons = i["vetoes_by_reason"]
        if reasons and max(reasons, key=reasons.get) == "VOLTAGE_HIGH":
            assert i["binding"] == {
                "metric": "max V", "reason": "VOLTAGE_HIGH", "unit": "pu",
                "value": i["grid_approved"]["vm_max_pu"], "limit": VM_MAX_PU,
            }  # fmt: skip
        assert i["grid_approved"]["max_trafo_loading_percent"] > 0  # cigre_lv has transformers
    paid_tokens = sum(i["paid_tokens"] for i in intervals)
    assert paid_tokens == pytest.approx(summary["totals"]["tokens paid to sellers"], abs=1e-9)
    assert paid_tokens * TOKEN_UNIT == pytest.approx(
        sum(p["received"] for p in summary["participants"]), abs=1e-3
    )
    for p in summary["participants"]:
        assert (p["received_tokens"], p["paid_tokens"]) == (
            p["received"] / TOKEN_UNIT, p["paid"] / TOKEN_UNIT
        )  # fmt: skip
    delivery = summary["delivery"]
    assert delivery["delivered_kwh"] == sum(i["delivered_wh"] for i in intervals) / 1000
    assert delivery["contracted_kwh"] == sum(i["traded_wh"] for i in intervals) / 1000
    assert "Trades settle firm" in delivery["explanation"]
    _check_imbalance(summary)
    assert delivery["under_delivering_sellers"] == sum(
        i["under_delivering_sellers"] for i in intervals
    )


def _check_imbalance(summary: dict[str, Any]) -> None:
    """Every interval settled its parties' imbalance once (the check), at the deployment's 1.5x /
    0.5x of its clearing price; the per-participant sums add up to the per-interval ones and to
    what the balancing account collected and paid."""
    intervals, participants = summary["intervals"], summary["participants"]
    for i in intervals:
        im = i["imbalance"]
        assert im is not None and im["parties"] == i["parties"] > 0
        assert (im["short_price_bps"], im["long_price_bps"]) == (15_000, 5_000)
        assert im["clearing_price"] > 0
    short_wh = sum(i["imbalance"]["short_wh"] for i in intervals)
    long_wh = sum(i["imbalance"]["long_wh"] for i in intervals)
    assert short_wh == sum(p["short_wh"] for p in participants) > 0  # households' own load
    assert long_wh == sum(p["long_wh"] for p in participants)
    net_to_balancing = sum(
        i["imbalance"]["collected_tokens"] - i["imbalance"]["paid_out_tokens"] for i in intervals
    )
    assert net_to_balancing == pytest.approx(
        -sum(p["imbalance_payment"] for p in participants) / TOKEN_UNIT, abs=1e-9
    )
    assert summary["totals"]["imbalance settlements (party x interval)"] == sum(
        i["parties"] for i in intervals
    )


def _check_energy_balance(summary: dict[str, Any]) -> None:
    e = summary["energy_balance"]
    for i in summary["intervals"]:
        ei = i["energy"]
        assert ei["grid_import_kwh"] * ei["grid_export_kwh"] == 0  # one direction per interval
        assert ei["self_consumption_kwh"] == pytest.approx(
            ei["generation_kwh"] - ei["grid_export_kwh"]
        )
        assert ei["losses_kwh"] > 0
    assert abs(e["balance_residual_kwh"]) < 1e-3
    assert e["grid_export_kwh"] > 0  # a sunny 13:00: the feeder exports
    assert e["self_consumption_rate"] == pytest.approx(
        e["self_consumption_kwh"] / e["generation_kwh"]
    )
    assert e["p2p_delivered_kwh"] == summary["delivery"]["delivered_kwh"]
    assert set(summary["energy_definitions"]) >= {
        "grid import", "grid export", "losses", "self-consumption", "balance residual",
    }  # fmt: skip


def _check_figures(folder: Path, summary: dict[str, Any]) -> None:
    """Energy and money axes start at 0 (as drawn, from figures.json); prices in tokens/kWh and
    payments in tokens."""
    figures = json.loads((folder / "figures.json").read_text())
    plots = (*PLOTS, "flexibility") if summary["flexibility"] else PLOTS
    assert set(figures) == {f"{p}.png" for p in plots}
    axes = {(name, ax["ylabel"]): ax["ylim"] for name, doc in figures.items() for ax in doc}
    for key in [
        ("prices_volumes.png", "approved volume (kWh)"),
        ("prices_volumes.png", "clearing price (tokens / kWh)"),
        ("delivery.png", "energy (kWh)"),
        ("participants.png", "energy traded (kWh)"),
        ("participants.png", "payments (tokens)"),
        ("grid_limits.png", "loading (%)"),
        ("verdicts.png", "trades"),
        ("gas.png", "gas"),
        ("imbalance.png", "balancing account (tokens)"),
        ("imbalance.png", "imbalance (kWh)"),
        ("imbalance.png", "imbalance payments (tokens)"),
        ("welfare.png", "welfare: sum of (bid - ask) x kWh (tokens)"),
        *(
            (("flexibility.png", "energy (kWh)"), ("flexibility.png", "tokens"))
            if summary["flexibility"]
            else ()
        ),
    ]:
        assert axes[key][0] == 0.0, key
    # the axes reach the largest value drawn: prices and payments in tokens, not base units
    top_price = max(i["clearing_price"] for i in summary["intervals"])
    assert top_price < axes[("prices_volumes.png", "clearing price (tokens / kWh)")][1] < 1.0
    top_paid = max(max(p["paid_tokens"], p["received_tokens"]) for p in summary["participants"])
    assert top_paid < axes[("participants.png", "payments (tokens)")][1] < 2 * top_paid
    for png in plots:
        data = (folder / f"{png}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png


def _check_html(folder: Path, summary: dict[str, Any]) -> None:
    page = (folder / "report.html").read_text()
    assert page.count("<img") == len(PLOTS) + (1 if summary["flexibility"] else 0)
    if summary["flexibility"]:
        assert ">Flexibility</h2>" in page and "(ignores actions)" in page
    assert summary["day"]["span"] in page
    for heading in ("Per interval", "Delivered vs contracted", "Binding grid limit per interval",
                    "Energy balance", "Vetoed trades"):  # fmt: skip
        assert f">{heading}" in page, heading
    first = summary["intervals"][0]
    assert f"<td>{first['interval']}</td><td>{first['span']}</td>" in page
    # the welfare columns: as cleared, and the greedy merit order's on the same book
    assert f"<td>{fmt(first['welfare'], 4)}</td><td>{fmt(first['greedy_welfare'], 4)}</td>" in page
    for veto in summary["vetoes"][:1]:  # the optimal clearing may leave none
        digits = 6 if veto["unit"] == "pu" else 3
        assert (
            f"<td>{veto['element']}</td><td>{veto['value']:.{digits}f} {veto['unit']}</td>"
            f"<td>{veto['limit']:.{digits}f} {veto['unit']}</td>"
        ) in page


@pytest.mark.e2e
def test_demo_case33bw_has_no_transformer_and_warns_of_placeholder_ratings(
    tmp_path: Path,
) -> None:
    ports = ["--api-port", str(free_port())]
    if find_mosquitto() is not None:
        broker_port = free_port()
        ports += ["--broker-port", str(broker_port)]
    result, folder = _run_demo(
        ["--network", "case33bw", "--hours", "0.25", "--start-hour", "13", *ports], tmp_path
    )
    summary = json.loads((folder / "summary.json").read_text())
    assert all(summary["checks"].values()), summary["checks"]
    warning = (
        "case33bw: 32 of 32 lines have placeholder thermal ratings (max_i_ka 99999 kA, at or "
        "above 10 kA on a distribution network): their loading can never bind, so no line "
        "overload can be found there"
    )
    assert summary["warnings"] == [warning]
    assert result.stdout.count("warning: " + warning) == 1  # once on the console
    assert "warning: " + warning in (folder / "report.html").read_text()
    assert summary["network_facts"]["trafos"] == 0
    if find_mosquitto() is not None:
        assert f"mqtt://127.0.0.1:{broker_port}" in summary["transport"]

    # no transformer: N/A, not 0.0, in the summary, the console and the report; placeholder line
    # ratings: the computed loading stays in summary.json, the tables show N/A
    [interval] = summary["intervals"]
    for state in ("grid_base", "grid_approved", "grid_all"):
        assert interval[state]["max_trafo_loading_percent"] is None
        assert 0 <= interval[state]["max_line_loading_percent"] < 0.01  # of 99999 kA
    assert summary["can_bind"] == ["vm_max_pu", "vm_min_pu"]
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("13:00"))
    assert row.split()[-2:] == ["N/A", "N/A"], row  # line %, trafo %
    figures = json.loads((folder / "figures.json").read_text())
    assert figures["grid_limits.png"][1]["title"] == "no transformer in this network"
    page = (folder / "report.html").read_text()
    assert re.search(r"<td>13:00-13:15</td>(<td>[^<]*</td>){6}<td>N/A</td><td>N/A</td></tr>", page)
    assert "(32 lines, 0 transformers)" in page


@pytest.mark.e2e
def test_demo_islanded_village_dawn(tmp_path: Path) -> None:
    """`--islanded` on the village at dawn: 06:00 grid-connected, the grid operator switches the
    registry before 06:15, the battery runs empty and from 06:45 the island cannot balance its
    base state (the genset at its 160 kW): every trade there vetoed ISLAND_BALANCE; the checks of
    both modes pass, and the report gains the island plot."""
    result, folder = _run_demo(
        ["--network", "village_island", "--islanded", "--start-hour", "6", "--hours", "1.5"],
        tmp_path,
    )
    summary = json.loads((folder / "summary.json").read_text())
    assert all(summary["checks"].values()), summary["checks"]
    assert len(summary["checks"]) == 9 + (3 if summary["flexibility"] else 0)
    intervals = summary["intervals"]
    assert [i["grid_mode"] for i in intervals] == ["grid-connected"] + ["islanded"] * 5
    switch = summary["mode_switch"]
    assert (switch["label"], switch["mode"]) == ("06:15", "islanded")
    assert switch["since"] <= intervals[1]["interval"] * 900
    assert [i["island"]["balanced"] for i in intervals] == [True] * 3 + [False] * 3
    assert [i["island"]["dispatch_kw"] for i in intervals] == [[160.0]] * 6
    soc = [i["island"]["soc_kwh"] for i in intervals]
    assert soc == sorted(soc, reverse=True) and soc[-1] == 0.0
    for i in intervals[3:]:
        assert i["approved"] == 0 and set(i["vetoes_by_reason"]) == {"ISLAND_BALANCE"}
    vetoes = [v for v in summary["vetoes"] if v["reason"] == "ISLAND_BALANCE"]
    # the master is the registered powerhouse battery (named by its device address)
    battery = next(d["device"] for d in switch["devices"] if d["kind"] == "battery")
    label = f"battery {battery[:8]}..{battery[-4:]} (bus 1)"
    assert vetoes and {v["element"] for v in vetoes} == {label}
    assert {v["limit"] for v in vetoes if v["interval"] >= intervals[4]["interval"]} == {0.0}
    assert summary["totals"]["trades approved"] == sum(i["approved"] for i in intervals) > 0
    assert (folder / "island.png").read_bytes()[:8] == PNG_MAGIC
    figures = json.loads((folder / "figures.json").read_text())
    flex = ("flexibility",) if summary["flexibility"] else ()
    assert set(figures) == {f"{p}.png" for p in (*PLOTS, *flex, "island")}
    assert "islanded from interval 06:15" in result.stdout
