"""The demo's results: the summary (per interval, per participant, totals, the process layout and
the profile) and the seven checks it must pass - tokens conserved (the balancing account and
FlexibilityMarket's locks included), every approved trade settled exactly once, every settled
interval's parties settled their imbalance exactly once, no vetoed trade settled, every published
reading on chain exactly once, no approved interval state outside a grid limit (with the interval's
activations), no escrow left locked - and, with flexibility, ``flexibility``'s three;
``print_summary`` shows them."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from backend.chain import batches
from backend.chain.protocol import FLEX_UP, TOKEN_DECIMALS, TOKEN_UNIT
from backend.demo import analysis, baseline
from backend.demo.analysis import LOADINGS, shown
from backend.demo.clients import check_list, check_response
from backend.demo.config import BALANCING_DEPOSIT, DEPOSIT, TRADE_FIELDS
from backend.demo.day import DemoDay
from backend.demo.flexibility import summarize_flex
from grid.verdicts import Activation, Trade


def day_span(start: datetime, end: datetime) -> str:
    """``2026-12-05 13:00-13:30 UTC``; with the end on another date (a whole day ends at the next
    midnight) ``2026-12-05 00:00 - 2026-12-06 00:00 UTC``."""
    if end.date() == start.date():
        return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC"
    return f"{start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC"


def summarize(day: DemoDay, first: int, last: int, wall_s: float) -> dict[str, Any]:
    """summary.json: per interval, per participant, the checks, the totals and the profile."""
    market = day._contract("EnergyMarket")
    readings = day._contract("MeterReadings")
    token = day._contract("EnergyToken")
    settled_events = _events(day, market, "TradeSettled")
    settled_count = Counter(e["args"]["tradeId"].hex() for e in settled_events)
    settled_by_id = {e["args"]["tradeId"].hex(): e for e in settled_events}
    # escrow given back at reclaimAfter because no settlement came: says why a trade went unsettled
    reclaimed = {e["args"]["tradeId"].hex() for e in _events(day, market, "EscrowReclaimed")}
    # every party's imbalance, once per (interval, party), with each interval's last settle page
    imbalance_events = _events(day, market, "ImbalanceSettled")
    imbalance_count = Counter(
        (int(e["args"]["intervalId"]), str(e["args"]["account"])) for e in imbalance_events
    )
    imbalance_by_interval: dict[int, dict[str, Any]] = {}
    for e in _events(day, market, "IntervalImbalanceSettled"):
        a = e["args"]
        imbalance_by_interval[int(a["intervalId"])] = {
            "clearing_price": int(a["clearingPricePerKWh"]) / TOKEN_UNIT,
            "short_price_bps": int(a["shortPriceBps"]),
            "long_price_bps": int(a["longPriceBps"]),
            "collected_tokens": int(a["collected"]) / TOKEN_UNIT,
            "paid_out_tokens": int(a["paidOut"]) / TOKEN_UNIT,
            "short_wh": 0, "long_wh": 0, "parties": 0, "owed_tokens": 0.0,
        }  # fmt: skip
    imbalance_of_party: dict[str, dict[str, int]] = {}
    for e in imbalance_events:
        a = e["args"]
        deviation = int(a["meteredWh"]) - int(a["contractedWh"])
        row = imbalance_by_interval[int(a["intervalId"])]
        row["short_wh"] += max(0, -deviation)
        row["long_wh"] += max(0, deviation)
        row["parties"] += 1
        if int(a["payment"]) < 0:
            row["owed_tokens"] += int(a["shortfall"]) / TOKEN_UNIT
        mine = imbalance_of_party.setdefault(
            str(a["account"]), {"deviation_wh": 0, "short_wh": 0, "long_wh": 0, "payment": 0}
        )
        mine["deviation_wh"] += deviation
        mine["short_wh"] += max(0, -deviation)
        mine["long_wh"] += max(0, deviation)
        mine["payment"] += int(a["payment"])
    settled_intervals = {
        int(e["args"]["intervalId"]) for e in _events(day, market, "IntervalSettled")
    }
    reading_events = _events(day, readings, "ReadingsSubmitted")
    accepted = list(batches.accepted_from_logs(reading_events))
    reading_count = Counter((reading.meter, iv) for iv, reading, _ in accepted)
    metered_wh = {"import": 0, "export": 0}
    for _, reading, _ in accepted:
        metered_wh["import"] += int(reading.import_wh)
        metered_wh["export"] += int(reading.export_wh)
    settle_gas: Counter[int] = Counter()
    for e in _events(day, market, "BatchesSettled"):  # every settlement page
        receipt = day.w3.eth.get_transaction_receipt(e["transactionHash"])
        settle_gas[int(e["args"]["intervalId"])] += int(receipt["gasUsed"])
    reading_gas: Counter[int] = Counter()
    seen_tx: set[bytes] = set()
    for e in reading_events:
        if e["transactionHash"] in seen_tx:
            continue
        seen_tx.add(e["transactionHash"])
        receipt = day.w3.eth.get_transaction_receipt(e["transactionHash"])
        reading_gas[int(e["args"]["intervalId"])] += int(receipt["gasUsed"])

    limits = day.grid_validator.limits
    limits_doc = {
        "vm_min_pu": float(limits.vm_min_pu),
        "vm_max_pu": float(limits.vm_max_pu),
        "max_loading_percent": float(limits.max_line_loading_percent),
        "max_trafo_loading_percent": float(limits.max_trafo_loading_percent),
    }
    facts = day.grid_validator.facts
    # The state keys the network can bind on: no transformer, no transformer loading; lines with
    # placeholder ratings only, no line loading.
    usable = {"vm_max_pu", "vm_min_pu"}
    if facts.lines > len(facts.placeholder_lines):
        usable.add("max_line_loading_percent")
    if facts.trafos:
        usable.add("max_trafo_loading_percent")
    s = day.cfg.interval_seconds
    hours = s / 3600
    members = len(day.members)
    published_per_interval = Counter(i for _, i in day.published)
    bus_of = {m.wallet: m.bus for m in day.members}
    intervals: list[dict[str, Any]] = []
    approved_ids: list[str] = []
    vetoed_ids: list[str] = []
    limit_ok = True
    for rec in day.records:
        t, trades = rec["t"], rec["trades"]
        # as recorded (the close answered before the batch was on chain)
        iv = check_response(day.http.get(f"/intervals/{t}"), f"GET /intervals/{t}")
        grid_states = interval_grid_states(day, t, trades)
        record_gas = 0
        batch = iv.get("batch") or {}
        if batch.get("txHash"):
            record_gas = int(day.w3.eth.get_transaction_receipt(batch["txHash"])["gasUsed"])
        reasons = Counter(tr["reason"] for tr in trades if not tr["approved"])
        delivered_wh = paid = 0
        for tr in trades:
            (approved_ids if tr["approved"] else vetoed_ids).append(tr["id"][2:].lower())
            if tr["approved"]:
                ev = settled_by_id.get(tr["id"][2:].lower())
                if ev is not None:
                    delivered_wh += int(ev["args"]["deliveredWh"])
                    paid += int(ev["args"]["paid"])
                continue
            metric = analysis.METRICS.get(tr["reason"])
            day.vetoes.append(
                {
                    "interval": t, "label": rec["label"], "trade": tr["id"][:10],
                    "reason": tr["reason"], "element": tr["element"],
                    "value": tr["vetoValue"], "limit": tr["vetoLimit"],
                    "unit": metric[2] if metric else "",
                }
            )  # fmt: skip
        ok = within(grid_states["grid_approved"], grid_states["grid_base"], limits)
        limit_ok &= ok
        price = iv.get("clearingPrice")
        islanded = is_islanded(day, t)
        greedy = baseline.greedy_clearing(
            day.http, day.grid_validator, t, s, bus_of, islanded=islanded
        )
        start = datetime.fromtimestamp(t * s, UTC)
        end = datetime.fromtimestamp((t + 1) * s, UTC)
        energy = analysis.energy_kwh(grid_states["energy"], hours)
        intervals.append(
            {
                "interval": t,
                "label": rec["label"],
                "start": start.isoformat().replace("+00:00", "Z"),
                "end": end.isoformat().replace("+00:00", "Z"),
                "span": f"{start:%H:%M}-{end:%H:%M}",
                "orders": rec["posted"],
                "clearing_price": int(price) / TOKEN_UNIT if price is not None else None,
                "clearing_method": iv.get("clearingMethod"),
                # sum of (bid - ask) x kWh of the approved trades, and of the greedy baseline's
                "welfare": int(iv.get("welfare") or 0) / TOKEN_UNIT,
                "greedy_welfare": greedy.welfare / TOKEN_UNIT,
                "greedy_traded_wh": greedy.traded_wh,
                "greedy_vetoes_by_reason": dict(
                    Counter(d.reason for _, d in greedy.trades if not d.approved)
                ),
                "delivered_wh": delivered_wh,
                "paid_tokens": paid / TOKEN_UNIT,
                # what settlement paid per delivered kWh (the delivery-weighted trade price)
                "average_price": (
                    paid / TOKEN_UNIT / (delivered_wh / 1000) if delivered_wh else None
                ),
                "under_delivering_sellers": sum(1 for _, i in day.overrides if i == t),
                "missing_readings": members - published_per_interval.get(t, 0),
                "binding": analysis.binding(
                    grid_states["grid_approved"], dict(reasons), limits_doc, usable
                ),
                "energy": energy,
                "traded_wh": int(iv["tradedWh"]),
                "vetoed_wh": int(iv["vetoedWh"]),
                "approved": int(iv["approvedCount"]),
                "vetoed": int(iv["vetoedCount"]),
                "vetoes_by_reason": dict(reasons),
                "grid_base": grid_states["grid_base"],
                "grid_approved": grid_states["grid_approved"],
                "grid_all": grid_states["grid_all"],
                "approved_state_within_limits": ok,
                # this interval's imbalance (None: not settled, or reclaimed): short / long Wh
                # summed over its parties, the balancing account's collections and payments
                "imbalance": imbalance_by_interval.get(t),
                "parties": len(
                    {tr[k] for tr in trades if tr["approved"] for k in ("seller", "buyer")}
                ),
                "gas": {
                    "record": record_gas,
                    "readings": int(reading_gas.get(t, 0)),
                    "settle": int(settle_gas.get(t, 0)),
                },
            }
        )
        if day.island_from is not None:  # --islanded: the mode and the island's operation
            intervals[-1]["grid_mode"] = "islanded" if islanded else "grid-connected"
            intervals[-1]["island"] = day.grid_validator.island_state(t, s).to_dict()

    participants: list[dict[str, Any]] = []
    balancing = market.functions.balancingAccount().call()
    total_internal = sum(int(v) for v in market.functions.balanceOf(balancing).call())
    for m in day.members:
        available, locked = market.functions.balanceOf(m.wallet).call()
        total_internal += int(available) + int(locked)
        mine = imbalance_of_party.get(m.wallet, {})
        participants.append(
            {
                "name": m.name, "kind": m.kind, "wallet": m.wallet, "bus": m.bus,
                "contracted_wh": 0, "delivered_wh": 0, "paid": 0, "received": 0,
                "available": int(available), "locked": int(locked),
                # metered minus contracted net position, summed over its settled intervals;
                # imbalance_payment: + paid to it by the balancing account, - paid by it
                "imbalance_wh": mine.get("deviation_wh", 0),
                "short_wh": mine.get("short_wh", 0), "long_wh": mine.get("long_wh", 0),
                "imbalance_payment": mine.get("payment", 0),
                "imbalance_tokens": mine.get("payment", 0) / TOKEN_UNIT,
                "debt": int(market.functions.debtOf(m.wallet).call()),
            }
        )  # fmt: skip
    by_wallet = {p["wallet"]: p for p in participants}
    for rec in day.records:
        for tr in rec["trades"]:
            if not tr["approved"]:
                continue
            ev = settled_by_id.get(tr["id"][2:].lower())
            delivered = int(ev["args"]["deliveredWh"]) if ev else 0
            paid = int(ev["args"]["paid"]) if ev else 0
            for who, sign in ((tr["seller"], 1), (tr["buyer"], -1)):
                p = by_wallet[who]
                p["contracted_wh"] += int(tr["energyWh"])
                p["delivered_wh"] += delivered
                if sign > 0:
                    p["received"] += paid
                else:
                    p["paid"] += paid
    for p in participants:
        p["received_tokens"] = p["received"] / TOKEN_UNIT
        p["paid_tokens"] = p["paid"] / TOKEN_UNIT
    deposited = DEPOSIT * len(day.members) + BALANCING_DEPOSIT
    market_tokens = int(token.functions.balanceOf(market.address).call())
    checks = {
        "tokens conserved (market token balance = deposits = internal balances with their locks - "
        "escrow and FlexibilityMarket's remedy shares - the balancing account's included)": (
            market_tokens == deposited == total_internal
        ),
        "every approved trade settled exactly once": all(
            settled_count.get(i, 0) == 1 for i in approved_ids
        )
        and len(settled_count) == len(approved_ids),
        "every settled interval's parties settled their imbalance exactly once": all(
            n == 1 for n in imbalance_count.values()
        )
        and {iv for iv, _ in imbalance_count} <= settled_intervals
        and all(
            i["imbalance"] is not None and i["imbalance"]["parties"] == i["parties"]
            for i in intervals
            if i["interval"] in settled_intervals
        ),
        "no vetoed trade settled": not any(settled_count.get(i, 0) for i in vetoed_ids),
        "every published reading on chain exactly once": all(
            reading_count.get(k, 0) == 1 for k in day.published
        )
        and sum(reading_count.values()) == len(day.published),
        "no approved interval state violates a grid limit": limit_ok,
        "no escrow left locked": all(p["locked"] == 0 for p in participants),
    }
    if day.island_from is not None:
        checks[
            "islanded: no trade approved where the island cannot balance its base state, every "
            "trade there vetoed ISLAND_BALANCE"
        ] = all(
            i["approved"] == 0 and set(i["vetoes_by_reason"]) <= {"ISLAND_BALANCE"}
            for i in intervals
            if i.get("grid_mode") == "islanded" and not i["island"]["balanced"]
        )
        checks["islanded: the chain's mode switch landed before its interval"] = (
            day.mode_switch is not None and day.mode_switch["since"] <= day.island_from * s
        )
    flex: dict[str, Any] | None = None
    if day.flex_enabled:
        flex = summarize_flex(day, day.records, within)
        checks.update(flex["checks"])
    welfare = sum(i["welfare"] for i in intervals)
    greedy_welfare = sum(i["greedy_welfare"] for i in intervals)
    totals = {
        "intervals": len(intervals),
        "orders posted": sum(i["orders"] for i in intervals),
        "trades approved": len(approved_ids),
        "trades vetoed": len(vetoed_ids),
        "trades reclaimed unsettled": len(reclaimed),
        "energy traded (kWh)": round(sum(i["traded_wh"] for i in intervals) / 1000, 3),
        "welfare (tokens)": round(welfare, 6),
        "welfare of the greedy clearing (tokens)": round(greedy_welfare, 6),
        "welfare gained over greedy (%)": (
            round(100 * (welfare / greedy_welfare - 1), 2) if greedy_welfare else None
        ),
        "energy delivered (kWh)": round(sum(p["delivered_wh"] for p in participants) / 2000, 3),
        "tokens paid to sellers": sum(p["received"] for p in participants) / TOKEN_UNIT,
        "imbalance settlements (party x interval)": sum(imbalance_count.values()),
        "imbalance short / long (kWh)": (
            f"{sum(p['short_wh'] for p in participants) / 1000:.3f} / "
            f"{sum(p['long_wh'] for p in participants) / 1000:.3f}"
        ),
        "imbalance tokens to / from the balancing account": (
            f"{sum(i['imbalance']['collected_tokens'] for i in intervals if i['imbalance']):.6f}"
            f" / {sum(i['imbalance']['paid_out_tokens'] for i in intervals if i['imbalance']):.6f}"
        ),
        "participants owing": sum(1 for p in participants if p["debt"]),
        "sellers' deliveries under-metered": len(day.overrides),
        "readings missing": members * len(intervals) - len(day.published),
        "readings on chain": sum(reading_count.values()),
        "gas total": sum(sum(i["gas"].values()) for i in intervals),
        "wall time (s)": round(wall_s, 1),
        "pipeline time (s)": round(day.pipeline_s, 2),
        "trades settled per second (pipeline)": round(len(approved_ids) / day.pipeline_s, 1)
        if day.pipeline_s
        else 0.0,
    }
    contracted_kwh = sum(i["traded_wh"] for i in intervals) / 1000
    delivered_kwh = sum(i["delivered_wh"] for i in intervals) / 1000
    energy = analysis.energy_totals([i["energy"] for i in intervals])
    energy.update(
        p2p_contracted_kwh=contracted_kwh,
        p2p_delivered_kwh=delivered_kwh,
        metered_export_kwh=metered_wh["export"] / 1000,
        metered_import_kwh=metered_wh["import"] / 1000,
    )
    start = datetime.fromtimestamp(first * s, UTC)
    end = datetime.fromtimestamp((last + 1) * s, UTC)
    island: dict[str, Any] = {}
    if day.island_from is not None:
        units = day.grid_validator.island
        island = {
            "mode_switch": day.mode_switch,
            "island_units": [
                {"name": u.name, "kind": u.kind, "bus": u.bus, "min_kw": u.min_kw,
                 "max_kw": u.max_kw, "capacity_kwh": u.capacity_kwh}
                for u in (units.units if units is not None else ())
            ],
        }  # fmt: skip
    return {
        **island,
        "network": day.cfg.network,
        "prosumers": day.cfg.prosumers,
        "interval_minutes": day.cfg.interval_minutes,
        "seed": day.cfg.seed,
        "day": {
            "date": f"{start:%Y-%m-%d}",
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": end.isoformat().replace("+00:00", "Z"),
            "span": day_span(start, end),
            "first_interval": first,
            "last_interval": last,
            "interval_seconds": s,
        },
        "transport": day.transport_note,
        "chain": {"rpc_url": day.settings.rpc_url, "contracts": day.deployment.contracts},
        "limits": limits_doc,
        "network_facts": facts.to_dict(),
        # the state keys whose limit can bind here (the tables show N/A for the others)
        "can_bind": sorted(usable),
        "warnings": list(facts.warnings),
        "units": {
            "energy": "kWh (fields ending in _wh: Wh)",
            "clearing_price, average_price": "tokens per kWh",
            "paid_tokens, received_tokens": "tokens",
            "paid, received, available, locked": f"token base units (10^-{TOKEN_DECIMALS} token)",
            "voltages": "pu",
            "loadings": "percent of the rating",
        },
        "energy_balance": energy,
        "energy_definitions": dict(analysis.ENERGY_DEFINITIONS),
        "delivery": {
            "contracted_kwh": contracted_kwh,
            "delivered_kwh": delivered_kwh,
            "short_kwh": sum(p["short_wh"] for p in participants) / 1000,
            "long_kwh": sum(p["long_wh"] for p in participants) / 1000,
            "under_delivering_sellers": len(day.overrides),
            "missing_readings": members * len(intervals) - len(day.published),
            "explanation": analysis.DELIVERY_EXPLANATION,
        },
        "intervals": intervals,
        # #17: offers, activations, control actions, delivered vs activated, payments (None:
        # no control loop, the in-process transport)
        "flexibility": flex,
        "participants": participants,
        "vetoes": day.vetoes,
        "trades": [{k: tr[k] for k in TRADE_FIELDS} for rec in day.records for tr in rec["trades"]],
        "checks": checks,
        "totals": totals,
        "processes": day._layout(),
        "pipeline_cpu_s": day.cpu_s,
        "profile_s": {
            k: round(v, 3) for k, v in sorted(day.stage.seconds.items(), key=lambda kv: -kv[1])
        },
    }


def _events(day: DemoDay, contract: Any, name: str) -> list[Any]:
    event = getattr(contract.events, name)
    return list(event.get_logs(from_block=day.deployment.block))


def interval_grid_states(
    day: DemoDay, interval_id: int, trades: list[dict[str, Any]]
) -> dict[str, Any]:
    """The AC state of an interval: base, base + approved trades with the interval's flexibility
    activations, base + every trade (a loading is None where the network has no such element or
    the flow did not converge), and the power balance of base + approved trades."""
    hours = day.cfg.interval_seconds / 3600
    validator = day.grid_validator
    islanded = is_islanded(day, interval_id)

    def as_trades(selected: list[dict[str, Any]]) -> list[Trade]:
        return [
            Trade(t["id"], t["sellerBus"], t["buyerBus"], t["energyWh"] / hours / 1000)
            for t in selected
        ]

    # the flexibility bought with the clearing runs with the approved trades (a rescued trade
    # is approved with its activations): up injects more, down consumes more
    activations = [
        Activation(a["id"], int(a["busId"]),
                   (1 if int(a["direction"]) == FLEX_UP else -1) * int(a["activatedW"]) / 1000)
        for a in (
            check_list(day.http.get("/flex/activations", params={"interval": interval_id}),
                       "GET /flex/activations")
            if day.flex_enabled else []
        )
    ]  # fmt: skip

    def state(selected: list[dict[str, Any]], acts: list[Activation]) -> dict[str, Any]:
        st = validator.grid_status(
            as_trades(selected),
            interval=interval_id,
            interval_seconds=day.cfg.interval_seconds,
            activations=acts,
            islanded=islanded,
        )
        return {
            "converged": bool(st.converged),
            "vm_min_pu": min(st.vm_pu) if st.vm_pu else float("nan"),
            "vm_max_pu": max(st.vm_pu) if st.vm_pu else float("nan"),
            "max_line_loading_percent": max(st.line_loading_percent, default=None),
            "max_trafo_loading_percent": max(st.trafo_loading_percent, default=None),
        }

    approved = [t for t in trades if t["approved"]]
    return {
        "grid_base": state([], []),
        "grid_approved": state(approved, activations),
        "grid_all": state(trades, []),
        "energy": validator.energy_balance(
            as_trades(approved),
            interval=interval_id,
            interval_seconds=day.cfg.interval_seconds,
            islanded=islanded,
        ).to_dict(),
    }


def is_islanded(day: DemoDay, interval_id: int) -> bool:
    """Whether the demo switched to islanded before this interval (``--islanded``)."""
    return day.island_from is not None and interval_id >= day.island_from


def within(approved: dict[str, Any], base: dict[str, Any], limits: Any) -> bool:
    """The approved state respects every limit, or is no worse than the base state where the base
    state is already outside it (the validator's "do no harm" rule)."""
    tol = 1e-6
    if not approved["converged"]:
        return False
    checks = [
        (approved["vm_min_pu"] >= min(limits.vm_min_pu, base["vm_min_pu"]) - tol),
        (approved["vm_max_pu"] <= max(limits.vm_max_pu, base["vm_max_pu"]) + tol),
    ]
    for key, limit in (
        ("max_line_loading_percent", limits.max_line_loading_percent),
        ("max_trafo_loading_percent", limits.max_trafo_loading_percent),
    ):
        if approved[key] is not None:  # None: the network has no such element
            checks.append(approved[key] <= max(limit, base[key]) + tol)
    return all(checks)


# Short names of the veto reasons for the console table (the report spells them out).
SHORT_REASONS = {
    "VOLTAGE_HIGH": "V-high", "VOLTAGE_LOW": "V-low", "LINE_OVERLOAD": "line",
    "TRAFO_OVERLOAD": "trafo", "NOT_CONVERGED": "no-flow", "ISLAND_BALANCE": "island",
}  # fmt: skip
WIDE_CONSOLE = 100  # from this width the table also shows the line and transformer loadings


def print_summary(summary: dict[str, Any], report_dir: Path, console: Console) -> None:
    """The per-interval table (fits 80 columns; wider consoles also get the loadings), the
    totals and the checks."""
    table = Table(
        title=f"tegrid demo: per interval, {summary['day']['span']}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    columns = ["time", "orders", "tok/kWh", "kWh", "ok", "vetoes", "binding (value/limit)"]
    wide = console.width >= WIDE_CONSOLE
    if wide:
        columns += ["line %", "trafo %"]
    for col in columns:
        table.add_column(col, justify="right", no_wrap=col != "vetoes")
    for i in summary["intervals"]:
        price = "-" if i["clearing_price"] is None else f"{i['clearing_price']:.4f}"
        vetoes = ", ".join(
            f"{n} {SHORT_REASONS.get(r, r)}" for r, n in i["vetoes_by_reason"].items()
        )
        row = [
            i["label"], str(i["orders"]), price, f"{i['traded_wh'] / 1000:.1f}",
            str(i["approved"]), vetoes or "-", binding_text(i["binding"]),
        ]  # fmt: skip
        if wide:
            row += [shown(summary, i["grid_approved"], key) for key in LOADINGS]
        table.add_row(*row)
    console.print(table)
    totals = Table(title="totals")
    totals.add_column("figure")
    totals.add_column("value", justify="right")
    for k, v in summary["totals"].items():
        totals.add_row(k, str(v))
    console.print(totals)
    flex = summary.get("flexibility")
    if flex:
        table = Table(title="flexibility")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for k, v in flex["totals"].items():
            table.add_row(k, str(v))
        console.print(table)
    for name, ok in summary["checks"].items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'}  {name}")
    console.print(f"report: {report_dir / 'report.html'}")


def binding_text(b: dict[str, Any]) -> str:
    """``max V 1.0991 / 1.1 pu``: the binding metric, its value and its limit."""
    if b["value"] is None:
        return analysis.NOT_AVAILABLE
    digits = 4 if b["unit"] == "pu" else 1
    metric = b["metric"].removesuffix(" loading")  # "trafo 84.8/100 %"
    return f"{metric} {b['value']:.{digits}f}/{b['limit']:g} {b['unit']}"
