"""Demo report: ``summary.json``, PNG plots, ``figures.json`` and ``report.html`` in one folder.

The input is the summary dict the demo builds (``backend.demo.checks.summarize``); the plots are
what an operator would rather look at than read: prices and volumes, verdicts by reason, grid
limits with and without the vetoed trades, contracted energy and imbalance per interval, trades
and payments per participant, imbalance per interval and per participant, gas. Amounts of money
are in tokens (the token has ``protocol.TOKEN_DECIMALS`` decimals), prices in tokens per kWh;
energy and money axes start at 0.
``figures.json`` records, for every plot, each axis' label and limits as drawn, so what a figure
shows can be checked without reading pixels.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from backend.chain.protocol import TOKEN_DECIMALS
from backend.demo.analysis import ENERGY_KEYS, LOADINGS, NOT_AVAILABLE, fmt, shown

PLOTS = (
    ("prices_volumes.png", "Clearing price (tokens/kWh) and traded volume (kWh) per interval"),
    ("verdicts.png", "Approved and vetoed trades by reason"),
    (
        "grid_limits.png",
        "Grid state per interval against the limits, with and without the vetoed trades",
    ),
    (
        "delivery.png",
        "Contracted energy (settled firm) and imbalance per interval: short (the grid supplied "
        "it) and long (the grid absorbed it), summed over the parties",
    ),
    ("participants.png", "Contracted vs delivered energy and payments (tokens) per participant"),
    ("gas.png", "Gas per interval"),
    (
        "imbalance.png",
        "Imbalance payments per interval (to and from the balancing account) and imbalance per "
        "participant (kWh short and long, tokens paid and received)",
    ),
    ("welfare.png", "Welfare per interval: the optimal clearing against the greedy merit order"),
)
# Only in an islanded run (``tegrid demo --islanded``).
ISLAND_PLOT = (
    "island.png",
    "Islanded operation: the battery's state of charge, the genset's dispatch, the master "
    "unit's power within its limits, PV curtailed, ISLAND_BALANCE vetoes and the mode switch",
)


# Only where the control loop ran (over Mosquitto: ``summary["flexibility"]``).
FLEX_PLOT = (
    "flexibility.png",
    "Flexibility per interval: activated vs delivered energy (kWh, the devices' own readings) and "
    "the activations' cost vs what the providers were paid (tokens)",
)


def plots_of(summary: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The report's plots: the flexibility's where the control loop ran, the island's when the
    run went islanded."""
    out: tuple[tuple[str, str], ...] = PLOTS
    if summary.get("flexibility"):
        out = (*out, FLEX_PLOT)
    if "mode_switch" in summary:
        out = (*out, ISLAND_PLOT)
    return out


def _plot_flex(flex: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    rows = flex["intervals"]
    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(11, 3.5))
    x = list(range(len(rows)))
    w = 0.4
    ax_e.bar([i - w / 2 for i in x], [r["activated_kwh"] for r in rows], w,
             color="#6baed6", label="activated")  # fmt: skip
    ax_e.bar([i + w / 2 for i in x], [r["delivered_kwh"] for r in rows], w,
             color="#31a354", label="delivered (metered)")  # fmt: skip
    ax_e.set_ylabel("energy (kWh)")
    ax_e.set_title("Activated vs delivered flexibility")
    ax_t.bar([i - w / 2 for i in x], [r["cost_tokens"] for r in rows], w,
             color="#fdae6b", label="cost (locked from the payers)")  # fmt: skip
    ax_t.bar([i + w / 2 for i in x], [r["paid_tokens"] for r in rows], w,
             color="#e6550d", label="paid to the providers")  # fmt: skip
    ax_t.set_ylabel("tokens")
    ax_t.set_title("Cost vs payment (the rest refunded)")
    for ax in (ax_e, ax_t):
        ax.set_xticks(x, _labels(rows), rotation=45, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _labels(intervals: list[dict[str, Any]]) -> list[str]:
    return [str(i["label"]) for i in intervals]


def _axes_doc(fig: Figure) -> list[dict[str, Any]]:
    """Every axis of ``fig`` as drawn: title, labels and limits (``figures.json``)."""
    return [
        {
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "ylim": [float(v) for v in ax.get_ylim()],
        }
        for ax in fig.get_axes()
    ]


def _save(fig: Figure, path: Path) -> list[dict[str, Any]]:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    doc = _axes_doc(fig)
    plt.close(fig)
    return doc


def _plot_prices(intervals: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    fig, ax1 = plt.subplots(figsize=(9, 4))
    x = range(len(intervals))
    ax1.bar(x, [i["traded_wh"] / 1000 for i in intervals], color="#9ecae1", label="traded (kWh)")
    ax1.set_ylabel("approved volume (kWh)")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    prices = [
        i["clearing_price"] if i["clearing_price"] is not None else float("nan") for i in intervals
    ]
    ax2.plot(list(x), prices, "o-", color="#d94801", label="clearing price")
    ax2.set_ylabel("clearing price (tokens / kWh)")
    ax2.set_ylim(bottom=0)
    ax1.set_xticks(list(x), _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax1.set_title("Clearing price and traded volume")
    return _save(fig, path)


def _plot_welfare(intervals: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    fig, ax = plt.subplots(figsize=(9, 4))
    x = list(range(len(intervals)))
    width = 0.4
    ax.bar([k - width / 2 for k in x], [i["welfare"] for i in intervals], width,
           color="#238b45", label="as cleared (optimal)")  # fmt: skip
    ax.bar([k + width / 2 for k in x], [i["greedy_welfare"] for i in intervals], width,
           color="#bdbdbd", label="greedy merit order, same book")  # fmt: skip
    ax.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("welfare: sum of (bid - ask) x kWh (tokens)")
    ax.set_ylim(bottom=0)
    ax.set_title("Welfare of the clearing")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_verdicts(intervals: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
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
    ax.set_ylim(bottom=0)
    ax.set_title("Verdicts of the Neural Grid")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_grid(
    intervals: list[dict[str, Any]], limits: dict[str, float], facts: dict[str, Any], path: Path
) -> list[dict[str, Any]]:
    fig, (ax_v, ax_l) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = list(range(len(intervals)))

    def series(key: str, state: str) -> list[float]:
        values = [i[state][key] for i in intervals]
        return [float("nan") if v is None else float(v) for v in values]

    for key, color, label in (("vm_min_pu", "#2171b5", "min V"), ("vm_max_pu", "#cb181d", "max V")):
        ax_v.plot(x, series(key, "grid_approved"), "-", color=color, label=f"{label}, approved set")
        ax_v.plot(x, series(key, "grid_all"), ":", color=color, label=f"{label}, incl. vetoed")
    ax_v.axhline(limits["vm_min_pu"], color="k", lw=0.8, ls="--")
    ax_v.axhline(limits["vm_max_pu"], color="k", lw=0.8, ls="--")
    ax_v.set_ylabel("voltage (pu)")
    ax_v.legend(fontsize=7, ncol=2)
    kinds = []
    if facts["lines"]:
        placeholder = " (placeholder ratings)" if facts["placeholder_lines"] else ""
        kinds.append(("max_line_loading_percent", "#238b45", f"max line{placeholder}"))
    if facts["trafos"]:
        kinds.append(("max_trafo_loading_percent", "#6a51a3", "max trafo"))
    for key, color, label in kinds:
        ax_l.plot(x, series(key, "grid_approved"), "-", color=color, label=f"{label}, approved")
        ax_l.plot(x, series(key, "grid_all"), ":", color=color, label=f"{label}, incl. vetoed")
    ax_l.axhline(limits["max_loading_percent"], color="k", lw=0.8, ls="--")
    if not facts["trafos"]:
        ax_l.set_title("no transformer in this network", fontsize=8)
    ax_l.set_ylabel("loading (%)")
    ax_l.set_ylim(bottom=0)
    ax_l.legend(fontsize=7, ncol=2)
    ax_l.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    fig.suptitle("Grid limits per interval (dashed: limits)")
    return _save(fig, path)


def _plot_delivery(intervals: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = list(range(len(intervals)))
    w = 0.4
    w = 0.28
    ax.bar([i - w for i in x], [i["traded_wh"] / 1000 for i in intervals], w,
           color="#9ecae1", label="contracted (settled firm)")  # fmt: skip
    ax.bar(x, [_imbalance(i, "short_wh") / 1000 for i in intervals], w,
           color="#cb181d", label="short")  # fmt: skip
    ax.bar([i + w for i in x], [_imbalance(i, "long_wh") / 1000 for i in intervals], w,
           color="#41ab5d", label="long")  # fmt: skip
    ax.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("energy (kWh)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Contracted energy and imbalance")
    return _save(fig, path)


def _imbalance(interval: dict[str, Any], key: str) -> float:
    """A figure of the interval's imbalance, 0 where none was settled (reclaimed or pending)."""
    return float((interval.get("imbalance") or {}).get(key, 0))


def _plot_imbalance(
    intervals: list[dict[str, Any]], participants: list[dict[str, Any]], path: Path
) -> list[dict[str, Any]]:
    fig, (ax_i, ax_e, ax_t) = plt.subplots(3, 1, figsize=(9, 9))
    w = 0.4
    x = list(range(len(intervals)))
    ax_i.bar([i - w / 2 for i in x], [_imbalance(i, "collected_tokens") for i in intervals], w,
             color="#cb181d", label="paid by short parties")  # fmt: skip
    ax_i.bar([i + w / 2 for i in x], [_imbalance(i, "paid_out_tokens") for i in intervals], w,
             color="#41ab5d", label="paid to long parties")  # fmt: skip
    ax_i.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax_i.set_ylabel("balancing account (tokens)")
    ax_i.set_ylim(bottom=0)
    ax_i.legend(fontsize=8)
    ax_i.set_title("Imbalance per interval")
    px = list(range(len(participants)))
    ax_e.bar([i - w / 2 for i in px], [p["short_wh"] / 1000 for p in participants], w,
             color="#cb181d", label="short")  # fmt: skip
    ax_e.bar([i + w / 2 for i in px], [p["long_wh"] / 1000 for p in participants], w,
             color="#41ab5d", label="long")  # fmt: skip
    ax_e.set_ylabel("imbalance (kWh)")
    ax_e.set_ylim(bottom=0)
    ax_e.legend(fontsize=8)
    ax_e.set_title("Imbalance per participant")
    ax_t.bar([i - w / 2 for i in px], [max(0.0, -p["imbalance_tokens"]) for p in participants], w,
             color="#cb181d", label="paid (net)")  # fmt: skip
    ax_t.bar([i + w / 2 for i in px], [max(0.0, p["imbalance_tokens"]) for p in participants], w,
             color="#41ab5d", label="received (net)")  # fmt: skip
    ax_t.set_ylabel("imbalance payments (tokens)")
    ax_t.set_ylim(bottom=0)
    ax_t.legend(fontsize=8)
    ax_t.set_xticks(px, [p["name"] for p in participants], rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_participants(participants: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    fig, (ax_e, ax_p) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = list(range(len(participants)))
    w = 0.4
    left, right = [i - w / 2 for i in x], [i + w / 2 for i in x]
    ax_e.bar(left, [p["contracted_wh"] / 1000 for p in participants], w, label="contracted")
    ax_e.bar(right, [p["delivered_wh"] / 1000 for p in participants], w, label="delivered")
    ax_e.set_ylabel("energy traded (kWh)")
    ax_e.set_ylim(bottom=0)
    ax_e.legend(fontsize=8)
    ax_p.bar(left, [p["received_tokens"] for p in participants], w, color="#41ab5d",
             label="received (seller)")  # fmt: skip
    ax_p.bar(right, [p["paid_tokens"] for p in participants], w, color="#cb181d",
             label="paid (buyer)")  # fmt: skip
    ax_p.set_ylabel("payments (tokens)")
    ax_p.set_ylim(bottom=0)
    ax_p.legend(fontsize=8)
    ax_p.set_xticks(x, [p["name"] for p in participants], rotation=60, ha="right", fontsize=7)
    fig.suptitle("Per participant")
    return _save(fig, path)


def _plot_gas(intervals: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = list(range(len(intervals)))
    record = [i["gas"]["record"] for i in intervals]
    readings = [i["gas"]["readings"] for i in intervals]
    ax.bar(x, record, label="recordTrades")
    ax.bar(x, readings, bottom=record, label="submitReadings")
    ax.bar(
        x,
        [i["gas"]["settle"] for i in intervals],
        bottom=[a + b for a, b in zip(record, readings, strict=True)],
        label="settle",
    )
    ax.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("gas")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Gas per interval")
    return _save(fig, path)


def write_report(summary: dict[str, Any], folder: Path) -> list[Path]:
    """Write ``summary.json``, the PNG plots, ``figures.json`` and ``report.html`` into
    ``folder``; return them."""
    folder.mkdir(parents=True, exist_ok=True)
    intervals = summary["intervals"]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    drawn: list[list[dict[str, Any]]] = [
        _plot_prices(intervals, folder / PLOTS[0][0]),
        _plot_verdicts(intervals, folder / PLOTS[1][0]),
        _plot_grid(intervals, summary["limits"], summary["network_facts"], folder / PLOTS[2][0]),
        _plot_delivery(intervals, folder / PLOTS[3][0]),
        _plot_participants(summary["participants"], folder / PLOTS[4][0]),
        _plot_gas(intervals, folder / PLOTS[5][0]),
        _plot_imbalance(intervals, summary["participants"], folder / PLOTS[6][0]),
        _plot_welfare(intervals, folder / PLOTS[7][0]),
    ]
    if summary.get("flexibility"):
        drawn.append(_plot_flex(summary["flexibility"], folder / FLEX_PLOT[0]))
    if "mode_switch" in summary:
        drawn.append(_plot_island(intervals, summary["mode_switch"], folder / ISLAND_PLOT[0]))
    plots = plots_of(summary)
    figures = {name: axes for (name, _title), axes in zip(plots, drawn, strict=True)}
    (folder / "figures.json").write_text(json.dumps(figures, indent=2))
    (folder / "report.html").write_text(_html(summary))
    return [
        folder / "summary.json",
        folder / "figures.json",
        folder / "report.html",
        *(folder / name for name, _ in plots),
    ]


def _plot_island(
    intervals: list[dict[str, Any]], switch: dict[str, Any] | None, path: Path
) -> list[dict[str, Any]]:
    """State of charge (kWh) above; below, the master's power and its limits, the genset's
    dispatch and the PV curtailed (kW), ISLAND_BALANCE vetoes on a second axis; a dashed line
    where the mode switched."""
    x = list(range(len(intervals)))
    island = [i["island"] for i in intervals]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(x, [s["soc_kwh"] for s in island], color="#2171b5", marker="o", ms=3)
    top.set_ylabel("state of charge (kWh)")
    top.set_ylim(bottom=0)
    top.set_title("Battery (grid-forming master)")
    bottom.plot(x, [s["forming_kw"] for s in island], color="#2171b5", label="battery kW")
    bottom.plot(x, [s["high_kw"] for s in island], color="#2171b5", ls=":", label="its limits")
    bottom.plot(x, [s["low_kw"] for s in island], color="#2171b5", ls=":")
    bottom.bar(
        x, [sum(s["dispatch_kw"]) for s in island], color="#8c6d31", alpha=0.6, label="genset kW"
    )
    bottom.bar(
        x, [-s["curtailed_kw"] for s in island], color="#fd8d3c", alpha=0.6, label="PV curtailed"
    )
    bottom.set_ylabel("power (kW, + injects)")
    bottom.set_title("Dispatch per interval")
    vetoes = bottom.twinx()
    vetoes.plot(
        x,
        # intervals without such a veto are left out (no row of markers on the axis)
        [i["vetoes_by_reason"].get("ISLAND_BALANCE") or float("nan") for i in intervals],
        color="#cb181d",
        marker="x",
        ls="none",
        label="ISLAND_BALANCE vetoes",
    )
    vetoes.set_ylabel("vetoes (trades)")
    vetoes.set_ylim(bottom=0)
    if switch is not None:
        at = next((k for k, i in enumerate(intervals) if i["interval"] == switch["interval"]), None)
        if at is not None:
            for ax in (top, bottom):
                ax.axvline(at - 0.5, color="#737373", ls="--")
            devices = switch.get("devices") or []
            acked = sum(1 for d in devices if d.get("acked"))
            note = f"islanded ({acked}/{len(devices)} units acked)" if devices else "islanded"
            top.annotate(note, (at - 0.4, 0), fontsize=8, color="#737373")
    bottom.set_xticks(x, _labels(intervals), rotation=45, ha="right", fontsize=7)
    handles = bottom.get_legend_handles_labels()
    more = vetoes.get_legend_handles_labels()
    bottom.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
    return _save(fig, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval_rows(intervals: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(i["interval"]),
            i["span"],
            str(i["orders"]),
            str(i["approved"]),
            str(i["vetoed"]),
            fmt(i["traded_wh"] / 1000),
            fmt(i["delivered_wh"] / 1000),
            fmt(i["paid_tokens"], 6),
            fmt(i["average_price"], 4),
            fmt(i["clearing_price"], 4),
            fmt(i["welfare"], 4),
            fmt(i["greedy_welfare"], 4),
            str(i["under_delivering_sellers"]),
            str(i["missing_readings"]),
        ]
        for i in intervals
    ]


def _binding_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for i in summary["intervals"]:
        b, ga = i["binding"], i["grid_approved"]
        digits = 4 if b["unit"] == "pu" else 1
        rows.append(
            [
                i["span"],
                b["metric"],
                b["reason"] or "(closest to its limit)",
                fmt(b["value"], digits, b["unit"]),
                fmt(b["limit"], digits, b["unit"]),
                fmt(ga["vm_min_pu"], 4),
                fmt(ga["vm_max_pu"], 4),
                *(shown(summary, ga, key) for key in LOADINGS),
            ]
        )
    return rows


ENERGY_LABELS = {
    "grid_import_kwh": "grid import (kWh)",
    "grid_export_kwh": "grid export (kWh)",
    "generation_kwh": "local generation (kWh)",
    "consumption_kwh": "consumption (kWh)",
    "losses_kwh": "losses (kWh)",
    "self_consumption_kwh": "self-consumption (kWh)",
}


def _energy_rows(energy: dict[str, Any]) -> list[list[str]]:
    rows = [[ENERGY_LABELS[k], fmt(energy[k])] for k in ENERGY_KEYS]
    rate, sufficiency = energy["self_consumption_rate"], energy["self_sufficiency"]
    rows += [
        ["self-consumption rate", NOT_AVAILABLE if rate is None else f"{100 * rate:.1f} %"],
        [
            "self-sufficiency",
            NOT_AVAILABLE if sufficiency is None else f"{100 * sufficiency:.1f} %",
        ],
        ["balance residual (kWh)", f"{energy['balance_residual_kwh']:.2e}"],
        ["peer to peer: contracted (kWh)", fmt(energy["p2p_contracted_kwh"])],
        ["peer to peer: delivered (kWh)", fmt(energy["p2p_delivered_kwh"])],
        ["members' metered export (kWh)", fmt(energy["metered_export_kwh"])],
        ["members' metered import (kWh)", fmt(energy["metered_import_kwh"])],
    ]
    if energy["intervals_not_converged"]:
        rows.append(["intervals without a converged flow", str(energy["intervals_not_converged"])])
    return rows


def _energy_interval_rows(intervals: list[dict[str, Any]]) -> list[list[str]]:
    return [[i["span"], *(fmt(i["energy"][k]) for k in ENERGY_KEYS)] for i in intervals]


def _veto_rows(vetoes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for v in vetoes:
        digits = 6 if v["unit"] == "pu" else 3
        rows.append(
            [
                v["label"],
                v["trade"],
                v["reason"],
                str(v["element"]),
                fmt(v["value"], digits, v["unit"]),
                fmt(v["limit"], digits, v["unit"]),
            ]
        )
    return rows


def _flex_html(flex: dict[str, Any] | None) -> str:
    """The flexibility section: totals, per interval, and every activation."""
    if not flex:
        return ""
    totals = _table(["figure", "value"], [[str(k), str(v)] for k, v in flex["totals"].items()])
    per_interval = _table(
        ["time (UTC)", "offers", "activations", "activated kWh", "delivered kWh", "cost tokens",
         "paid tokens", "refunded tokens", "trades rescued", "welfare recovered tokens",
         "actions sent", "acknowledged", "refused", "unanswered"],
        [[r["label"], str(r["offers"]), str(r["activations"]), f"{r['activated_kwh']:.3f}",
          f"{r['delivered_kwh']:.3f}", fmt(r["cost_tokens"], 6), fmt(r["paid_tokens"], 6),
          fmt(r["refunded_tokens"], 6), str(r["rescued_trades"]),
          fmt(r["welfare_recovered_tokens"], 6), str(r["actions_sent"]),
          str(r["actions_acknowledged"]), str(r["actions_refused"]),
          str(r["actions_unanswered"])] for r in flex["intervals"]],
    )  # fmt: skip
    activations = _table(
        ["time (UTC)", "provider", "bus", "direction", "activated W", "delivered W", "cost",
         "paid (<= bound)", "refunded", "payers (shares)", "control action"],
        [[a["label"], a["provider"] + (" (ignores actions)" if a["ignoring_device"] else ""),
          str(a["bus"]), a["direction"], str(a["activated_w"]), str(a["delivered_w"]),
          str(a["cost"]), f"{a['paid']} (<= {a['bound']})", str(a["refunded"]),
          ", ".join(f"{p['name']} {p['share']}" for p in a["payers"]),
          (a["action"] or "-") + (f": {a['refusal']}" if a["refusal"] else "")]
         for a in flex["activations"]],
    )  # fmt: skip
    return f"""<h2>Flexibility</h2>
<p>Members' devices (batteries at the PV households, EV chargers and heat pumps at the others, each
metered on its own) offer flexibility each interval; a trade the grid refuses is rescued when an
activation makes it fit and its gain exceeds the cost, which its parties pay within their remedy
caps ({len(flex["consenting"])} members set one, {flex["remedy_cap_per_kwh_tokens"]:g} tokens
per kWh). The dispatcher sends each activation's signed control action, the device acknowledges
(or refuses) it and meters what it ran; the keeper pays the provider for the delivered part
(at most floor(cost x delivered / activated), in base units) and refunds the rest.</p>
{totals}
{per_interval}
<h3>Activations ({len(flex["activations"])}; money in token base units)</h3>
{activations}
"""


def _html(summary: dict[str, Any]) -> str:
    esc = html.escape
    day, intervals, delivery = summary["day"], summary["intervals"], summary["delivery"]
    checks = "".join(
        f"<tr><td>{esc(name)}</td>"
        f"<td class={'ok' if ok else 'bad'}>{'pass' if ok else 'FAIL'}</td></tr>"
        for name, ok in summary["checks"].items()
    )
    totals = _table(["figure", "value"], [[str(k), str(v)] for k, v in summary["totals"].items()])
    warnings = "".join(f"<p class=warn>warning: {esc(w)}</p>" for w in summary["warnings"])
    facts = summary["network_facts"]
    figures = "".join(
        f"<figure><img src='{name}' alt='{esc(title)}'>"
        f"<figcaption>{esc(title)}</figcaption></figure>"
        for name, title in plots_of(summary)
    )
    definitions = "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in summary["energy_definitions"].items()
    )
    vetoes = summary["vetoes"]
    per_interval = _table(
        ["interval", "time (UTC)", "orders", "trades", "vetoes", "traded kWh", "delivered kWh",
         "paid tokens", "avg price tokens/kWh", "clearing price tokens/kWh",
         "welfare tokens", "greedy welfare tokens", "sellers under-metered", "readings missing"],
        _interval_rows(intervals),
    )  # fmt: skip
    binding = _table(
        ["time (UTC)", "binding metric", "veto reason", "value", "limit", "min V (pu)",
         "max V (pu)", "max line loading (%)", "max trafo loading (%)"],
        _binding_rows(summary),
    )  # fmt: skip
    energy_per_interval = _table(
        ["time (UTC)", *(ENERGY_LABELS[k] for k in ENERGY_KEYS)], _energy_interval_rows(intervals)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tegrid demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
td {{ text-align: right; white-space: nowrap; }} td:first-child {{ text-align: left; }}
.ok {{ color: #1a7f37; font-weight: bold; }} .bad {{ color: #cf222e; font-weight: bold; }}
.warn {{ color: #9a6700; font-weight: bold; }} dt {{ font-weight: bold; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; }}
</style></head><body>
<h1>tegrid community day</h1>
<p>Simulated day <b>{esc(day["span"])}</b> (chain time; intervals {day["first_interval"]} to
{day["last_interval"]}, {summary["interval_minutes"]} min each).
Network <b>{esc(str(summary["network"]))}</b>
({facts["lines"]} lines, {facts["trafos"]} transformers),
{summary["prosumers"]} prosumers, seed {summary["seed"]}.
Voltage limits {summary["limits"]["vm_min_pu"]:g}-{summary["limits"]["vm_max_pu"]:g} pu, loading
limits {summary["limits"]["max_loading_percent"]:g} % (lines) and
{summary["limits"]["max_trafo_loading_percent"]:g} % (transformers).
Meter transport: {esc(str(summary.get("transport", "")))}.
Money is in tokens ({TOKEN_DECIMALS} decimals), prices in tokens per kWh.</p>
{warnings}
<h2>Checks</h2><table>{checks}</table>
<h2>Totals</h2>{totals}
<h2>Per interval</h2>
<p>Average price: tokens paid per kWh delivered. Sellers under-metered: sellers whose meter showed
30-70 % of their sale; readings missing: members whose reading never came.</p>
{per_interval}
<h2>Delivered vs contracted: imbalance</h2>
<p>Contracted {delivery["contracted_kwh"]:.3f} kWh, all settled
({delivery["under_delivering_sellers"]} seller position(s) under-metered,
{delivery["missing_readings"]} readings missing); imbalance short
{delivery["short_kwh"]:.3f} kWh, long {delivery["long_kwh"]:.3f} kWh.</p>
<p>{esc(delivery["explanation"])}</p>
<h2>Binding grid limit per interval</h2>
<p>With vetoes: the quantity of the most frequent veto reason in the approved state (max V for
VOLTAGE_HIGH, min V for VOLTAGE_LOW, the largest line or transformer loading for an overload);
without: the quantity closest to its limit. {NOT_AVAILABLE}: the network has no such element, or
only placeholder ratings for it (see the warning above).</p>
{binding}
<h2>Energy balance</h2>
{_table(["quantity", "value"], _energy_rows(summary["energy_balance"]))}
<dl>{definitions}</dl>
<h3>Per interval</h3>
{energy_per_interval}
{_flex_html(summary.get("flexibility"))}
{figures}
<h2>Vetoed trades ({len(vetoes)})</h2>
<p>The binding constraint of each veto as the Neural Grid computed it: what the element would
reach with the trade, and its limit.</p>
{_table(["interval", "trade", "reason", "element", "value", "limit"], _veto_rows(vetoes))}
</body></html>
"""
