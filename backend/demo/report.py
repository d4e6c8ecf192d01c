"""Demo report: ``summary.json``, PNG plots and ``report.html`` in one folder.

The input is the summary dict the demo builds (see :func:`write_report` for the keys it reads); the
plots are what an operator would rather look at than read: prices and volumes, verdicts by reason,
grid limits with and without the vetoed trades, delivery and payments per participant, gas.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PLOTS = (
    ("prices_volumes.png", "Clearing price and traded volume per interval"),
    ("verdicts.png", "Approved and vetoed trades by reason"),
    (
        "grid_limits.png",
        "Grid state per interval against the limits, with and without the vetoed trades",
    ),
    ("participants.png", "Contracted vs delivered energy and payments per participant"),
    ("gas.png", "Gas per interval"),
)


def _labels(intervals: list[dict[str, Any]]) -> list[str]:
    return [str(i["label"]) for i in intervals]


def _plot_prices(intervals: list[dict[str, Any]], path: Path) -> None:
    fig, ax1 = plt.subplots(figsize=(9, 4))
    x = range(len(intervals))
    ax1.bar(x, [i["traded_wh"] / 1000 for i in intervals], color="#9ecae1", label="traded (kWh)")
    ax1.set_ylabel("approved volume (kWh)")
    ax2 = ax1.twinx()
    prices = [
        i["clearing_price"] if i["clearing_price"] is not None else float("nan") for i in intervals
    ]
    ax2.plot(list(x), prices, "o-", color="#d94801", label="clearing price")
    ax2.set_ylabel("clearing price (token units / kWh)")
    ax1.set_xticks(list(x), _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax1.set_title("Clearing price and traded volume")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_verdicts(intervals: list[dict[str, Any]], path: Path) -> None:
    reasons = sorted({r for i in intervals for r in i["vetoes_by_reason"]})
    fig, ax = plt.subplots(figsize=(9, 4))
    x = list(range(len(intervals)))
    bottom = [float(i["approved"]) for i in intervals]
    ax.bar(x, bottom, color="#41ab5d", label="approved")
    palette = ["#cb181d", "#fd8d3c", "#6a51a3", "#2171b5", "#737373", "#e7298a", "#8c6d31"]
    for k, reason in enumerate(reasons):
        heights = [float(i["vetoes_by_reason"].get(reason, 0)) for i in intervals]
        ax.bar(
            x, heights, bottom=bottom, color=palette[k % len(palette)], label=f"vetoed: {reason}"
        )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("trades")
    ax.set_title("Verdicts of the Neural Grid")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_grid(intervals: list[dict[str, Any]], limits: dict[str, float], path: Path) -> None:
    fig, (ax_v, ax_l) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = list(range(len(intervals)))

    def series(key: str, state: str) -> list[float]:
        return [float(i[state][key]) for i in intervals]

    ax_v.plot(
        x, series("vm_min_pu", "grid_approved"), "-", color="#2171b5", label="min V, approved set"
    )
    ax_v.plot(
        x, series("vm_max_pu", "grid_approved"), "-", color="#cb181d", label="max V, approved set"
    )
    ax_v.plot(x, series("vm_min_pu", "grid_all"), ":", color="#2171b5", label="min V, incl. vetoed")
    ax_v.plot(x, series("vm_max_pu", "grid_all"), ":", color="#cb181d", label="max V, incl. vetoed")
    ax_v.axhline(limits["vm_min_pu"], color="k", lw=0.8, ls="--")
    ax_v.axhline(limits["vm_max_pu"], color="k", lw=0.8, ls="--")
    ax_v.set_ylabel("voltage (pu)")
    ax_v.legend(fontsize=7, ncol=2)
    ax_l.plot(
        x,
        series("max_line_loading_percent", "grid_approved"),
        "-",
        color="#238b45",
        label="max line, approved",
    )
    ax_l.plot(
        x,
        series("max_trafo_loading_percent", "grid_approved"),
        "-",
        color="#6a51a3",
        label="max trafo, approved",
    )
    ax_l.plot(
        x,
        series("max_line_loading_percent", "grid_all"),
        ":",
        color="#238b45",
        label="max line, incl. vetoed",
    )
    ax_l.plot(
        x,
        series("max_trafo_loading_percent", "grid_all"),
        ":",
        color="#6a51a3",
        label="max trafo, incl. vetoed",
    )
    ax_l.axhline(limits["max_loading_percent"], color="k", lw=0.8, ls="--")
    ax_l.set_ylabel("loading (%)")
    ax_l.legend(fontsize=7, ncol=2)
    ax_l.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    fig.suptitle("Grid limits per interval (dashed: limits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_participants(participants: list[dict[str, Any]], path: Path) -> None:
    fig, (ax_e, ax_p) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = list(range(len(participants)))
    w = 0.4
    ax_e.bar(
        [i - w / 2 for i in x],
        [p["contracted_wh"] / 1000 for p in participants],
        w,
        label="contracted",
    )
    ax_e.bar(
        [i + w / 2 for i in x],
        [p["delivered_wh"] / 1000 for p in participants],
        w,
        label="delivered",
    )
    ax_e.set_ylabel("energy traded (kWh)")
    ax_e.legend(fontsize=8)
    ax_p.bar(
        [i - w / 2 for i in x],
        [p["received"] for p in participants],
        w,
        color="#41ab5d",
        label="received",
    )
    ax_p.bar(
        [i + w / 2 for i in x], [-p["paid"] for p in participants], w, color="#cb181d", label="paid"
    )
    ax_p.set_ylabel("tokens (base units)")
    ax_p.legend(fontsize=8)
    ax_p.set_xticks(x, [p["name"] for p in participants], rotation=60, ha="right", fontsize=7)
    fig.suptitle("Per participant")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gas(intervals: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = list(range(len(intervals)))
    ax.bar(x, [i["gas"]["record"] for i in intervals], label="recordTrades")
    ax.bar(
        x,
        [i["gas"]["readings"] for i in intervals],
        bottom=[i["gas"]["record"] for i in intervals],
        label="submitReadings",
    )
    ax.bar(
        x,
        [i["gas"]["settle"] for i in intervals],
        bottom=[i["gas"]["record"] + i["gas"]["readings"] for i in intervals],
        label="settle",
    )
    ax.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("gas")
    ax.legend(fontsize=8)
    ax.set_title("Gas per interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict[str, Any], folder: Path) -> list[Path]:
    """Write ``summary.json``, the PNG plots and ``report.html`` into ``folder``; return them."""
    folder.mkdir(parents=True, exist_ok=True)
    intervals = summary["intervals"]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    _plot_prices(intervals, folder / PLOTS[0][0])
    _plot_verdicts(intervals, folder / PLOTS[1][0])
    _plot_grid(intervals, summary["limits"], folder / PLOTS[2][0])
    _plot_participants(summary["participants"], folder / PLOTS[3][0])
    _plot_gas(intervals, folder / PLOTS[4][0])
    (folder / "report.html").write_text(_html(summary))
    return [folder / "summary.json", folder / "report.html", *(folder / name for name, _ in PLOTS)]


def _html(summary: dict[str, Any]) -> str:
    checks = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        f"<td class={'ok' if ok else 'bad'}>{'pass' if ok else 'FAIL'}</td></tr>"
        for name, ok in summary["checks"].items()
    )
    totals = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary["totals"].items()
    )
    vetoes = "".join(
        f"<tr><td>{html.escape(v['label'])}</td><td>{html.escape(v['trade'])}</td><td>{html.escape(v['reason'])}</td>"
        f"<td>{html.escape(str(v['element']))}</td><td>{v['value']}</td><td>{v['limit']}</td></tr>"
        for v in summary.get("vetoes", [])[:50]
    )
    figures = "".join(
        f"<figure><img src='{name}' alt='{html.escape(title)}'>"
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for name, title in PLOTS
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tegrid demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
.ok {{ color: #1a7f37; font-weight: bold; }} .bad {{ color: #cf222e; font-weight: bold; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; }}
</style></head><body>
<h1>tegrid community day</h1>
<p>Network <b>{html.escape(str(summary["network"]))}</b>, {summary["prosumers"]} prosumers,
{len(summary["intervals"])} intervals of {summary["interval_minutes"]} min, seed {summary["seed"]}.
Meter transport: {html.escape(str(summary.get("transport", "")))}.</p>
<h2>Checks</h2><table>{checks}</table>
<h2>Totals</h2><table>{totals}</table>
{figures}
<h2>Vetoed trades (first 50)</h2>
<table><tr><th>interval</th><th>trade</th><th>reason</th><th>element</th><th>value</th><th>limit</th></tr>{vetoes}</table>
</body></html>
"""
