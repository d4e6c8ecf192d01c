"""The demo's flexibility (#17) in the summary: offers, activations, control actions, delivered
against activated flexibility, payments and refunds per interval, and the three checks on them -
no activation paid beyond its delivery, every recorded activation closed exactly once with its
cost paid or refunded whole, and no approved interval state outside a limit with the activations
applied (an independent pandapower ``runpp`` of the final approved trades plus the activations).

Sources: the chain for what was locked, paid and refunded - each ``ActivationBatchRecorded``'s
recording calldata (checked against the batch's commitment) for the activations and their shares,
each ``ActivationBatchClosed`` for the metered and delivered W per activation (reclaimed: all back),
the payments by the contract's rule from them; the market API
(``GET /flex/activations``, ``GET /control/actions``, ``GET /flex``) for the offers, the trades
each activation rescued and the dispatcher's actions and the devices' acks."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pandapower as pp

from backend.chain import flex
from backend.chain.protocol import TOKEN_UNIT
from backend.demo.clients import check_list
from backend.demo.config import REMEDY_CAP_PER_KWH
from backend.demo.day import DemoDay
from grid.networks import quiet

ZERO_TRADE = "0x" + "00" * 32
FLEX_SGEN = "tegrid demo check"


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def _events(day: DemoDay, contract: Any, name: str) -> list[Any]:
    return list(getattr(contract.events, name).get_logs(from_block=day.deployment.block))


def _chain_activations(
    day: DemoDay, flexibility: Any
) -> tuple[
    dict[str, dict[str, int]], dict[str, dict[str, int]], dict[str, dict[str, int]], Counter[str]
]:
    """Per activation id, from the chain alone: recorded (cost, activatedW), settled (meteredW,
    deliveredW, paid, refunded), reclaimed (refunded), and how often its batch closed."""
    dom = flex.domain(day.settings.chain_id, flexibility.address)
    batches: dict[tuple[int, int], list[flex.Activation]] = {}
    recorded: dict[str, dict[str, int]] = {}
    for e in _events(day, flexibility, "ActivationBatchRecorded"):
        tx = day.w3.eth.get_transaction(e["transactionHash"])
        _fn, params = flexibility.decode_function_input(tx["input"])
        packed = bytes(params["activations"])
        if flex.commitment(packed) != bytes(e["args"]["commitment"]):
            continue  # not the batch the event committed to: its activations count as unrecorded
        acts = flex.unpack(packed)
        batches[(int(e["args"]["intervalId"]), int(e["args"]["batchIndex"]))] = acts
        for a in acts:
            recorded[_hex(a.activation_id(dom))] = {
                "cost": a.share0 + a.share1,
                "activatedW": a.activated_w,
            }
    settled: dict[str, dict[str, int]] = {}
    reclaimed: dict[str, dict[str, int]] = {}
    closed: Counter[str] = Counter()
    for e in _events(day, flexibility, "ActivationBatchClosed"):
        acts = batches.get((int(e["args"]["intervalId"]), int(e["args"]["batchIndex"])), [])
        was_reclaimed = bool(e["args"]["reclaimed"])
        closing = None if was_reclaimed else bytes(e["args"]["deliveries"])
        for key, (metered, delivered, paid, refunded) in flex.outcomes(dom, acts, closing).items():
            closed[key] += 1
            if was_reclaimed:
                reclaimed[key] = {"refunded": refunded}
            else:
                settled[key] = {
                    "meteredW": metered, "deliveredW": delivered, "paid": paid,
                    "refunded": refunded,
                }  # fmt: skip
    return recorded, settled, reclaimed, closed


def payment_bound(cost: int, delivered_w: int, activated_w: int) -> int:
    """What an activation may be paid at most: ``floor(cost x delivered / activated)``."""
    return cost * delivered_w // activated_w if activated_w else 0


def summarize_flex(
    day: DemoDay, records: list[dict[str, Any]], limits_within: Any
) -> dict[str, Any]:
    """The ``flexibility`` section of summary.json (per interval and totals) and its checks
    (``checks``: name -> bool). ``limits_within(approved_state, base_state, limits)`` is the
    demo's rule for an approved state (``checks.within``)."""
    s = day.cfg.interval_seconds
    flexibility = day._contract("FlexibilityMarket")
    token = day._contract("EnergyToken")
    recorded, settled, reclaimed, closed_count = _chain_activations(day, flexibility)

    intervals: list[dict[str, Any]] = []
    activations_out: list[dict[str, Any]] = []
    action_states: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    ac_ok = True
    by_wallet = day.by_wallet
    for rec in records:
        t = rec["t"]
        acts = check_list(
            day.http.get("/flex/activations", params={"interval": t}), "GET /flex/activations"
        )
        offers = check_list(
            day.http.get("/flex", params={"interval": t, "limit": 1000}), "GET /flex"
        )
        actions = (
            check_list(
                day.http.get("/control/actions", params={"interval": t}), "GET /control/actions"
            )
            if acts
            else []
        )
        states = Counter(a["state"] for a in actions)
        action_states.update(states)
        refusals.update(a["reason"] or "?" for a in actions if a["state"] == "refused")
        trades = {tr["id"]: tr for tr in rec["trades"]}
        row = {
            "interval": t, "label": rec["label"],
            "offers": len(offers),
            "offers_activated": sum(1 for o in offers if o["status"] == "activated"),
            "activations": len(acts), "activated_kw": 0.0, "activated_kwh": 0.0,
            "delivered_kwh": 0.0, "cost_tokens": 0.0, "paid_tokens": 0.0,
            "refunded_tokens": 0.0, "rescued_trades": 0, "welfare_recovered_tokens": 0.0,
            "actions_sent": sum(1 for a in actions if int(a["attempts"]) > 0),
            "actions_acknowledged": states.get("acknowledged", 0),
            "actions_refused": states.get("refused", 0),
            "actions_unanswered": states.get("sent", 0) + states.get("expired", 0),
        }  # fmt: skip
        rescued: set[str] = set()
        for a in acts:
            on_chain = recorded.get(a["id"])
            closed = settled.get(a["id"])
            activated_w = int(a["activatedW"])
            delivered_w = int(closed["deliveredW"]) if closed else 0
            cost = int(on_chain["cost"]) if on_chain else 0
            paid = int(closed["paid"]) if closed else 0
            refunded = (
                int(closed["refunded"]) if closed
                else int(reclaimed[a["id"]]["refunded"]) if a["id"] in reclaimed else 0
            )  # fmt: skip
            row["activated_kw"] += activated_w / 1000
            row["activated_kwh"] += int(a["energyWh"]) / 1000
            row["delivered_kwh"] += delivered_w * s // 3600 / 1000
            row["cost_tokens"] += cost / TOKEN_UNIT
            row["paid_tokens"] += paid / TOKEN_UNIT
            row["refunded_tokens"] += refunded / TOKEN_UNIT
            if a["tradeId"] != ZERO_TRADE:
                rescued.add(a["tradeId"])
            action = next((x for x in actions if x["activationId"] == a["id"]), None)
            activations_out.append(
                {
                    "id": a["id"], "interval": t, "label": rec["label"],
                    "provider": by_wallet[a["provider"]].name, "device": a["device"],
                    "bus": int(a["busId"]),
                    "direction": "up" if int(a["direction"]) == 0 else "down",
                    "activated_w": activated_w, "delivered_w": delivered_w,
                    "metered_w": int(closed["meteredW"]) if closed else None,
                    "price_per_kwh": int(a["pricePerKWh"]), "cost": cost, "paid": paid,
                    "refunded": refunded, "bound": payment_bound(cost, delivered_w, activated_w),
                    "paid_by_market": None if a["paid"] is None else int(a["paid"]),
                    "payers": [
                        {"name": by_wallet[p["account"]].name, "share": int(p["share"])}
                        for p in a["payers"]
                    ],
                    "trade": a["tradeId"],
                    "recorded": on_chain is not None,
                    "closed": (
                        "settled" if closed else "reclaimed" if a["id"] in reclaimed else None
                    ),
                    "action": action["state"] if action else None,
                    "refusal": action["reason"] if action else None,
                    "ignoring_device": a["device"] == day.ignoring_device,
                }
            )  # fmt: skip
        for trade_id in rescued:
            tr = trades.get(trade_id)
            if tr is None or not tr["approved"]:
                continue
            row["rescued_trades"] += 1
            bid = day.order_prices.get((tr["buyer"], t), 0)
            ask = day.order_prices.get((tr["seller"], t), 0)
            row["welfare_recovered_tokens"] += (bid - ask) * int(tr["energyWh"]) / 1000 / TOKEN_UNIT
        if acts:
            ok = ac_check(
                day, t, [tr for tr in rec["trades"] if tr["approved"]], acts, limits_within
            )
            row["ac_with_activations_within_limits"] = ok
            ac_ok &= ok
        for k in ("activated_kw", "activated_kwh", "delivered_kwh", "cost_tokens", "paid_tokens",
                  "refunded_tokens", "welfare_recovered_tokens"):  # fmt: skip
            row[k] = round(row[k], 6)
        intervals.append(row)

    recorded_ids = set(recorded)
    paid_total = sum(a["paid"] for a in activations_out)
    totals = {
        "devices": sum(1 for m in day.members if m.device_kind),
        "members consenting to pay remedies": f"{len(day.consenting)} of {len(day.members)}",
        "offers": sum(r["offers"] for r in intervals),
        "offers activated": sum(r["offers_activated"] for r in intervals),
        "activations": len(activations_out),
        "activated (kWh)": round(sum(r["activated_kwh"] for r in intervals), 3),
        "delivered (kWh)": round(sum(r["delivered_kwh"] for r in intervals), 3),
        "trades rescued": sum(r["rescued_trades"] for r in intervals),
        "welfare recovered (tokens)": round(
            sum(r["welfare_recovered_tokens"] for r in intervals), 6
        ),
        "members paying for remedies": len(
            {p["name"] for a in activations_out for p in a["payers"] if p["share"] > 0}
        ),
        "flexibility cost (tokens)": round(sum(a["cost"] for a in activations_out) / TOKEN_UNIT, 6),
        "paid to providers (tokens)": paid_total / TOKEN_UNIT,
        "refunded to payers (tokens)": sum(a["refunded"] for a in activations_out) / TOKEN_UNIT,
        "control actions sent / acknowledged / refused / unanswered": (
            f"{sum(r['actions_sent'] for r in intervals)} / "
            f"{action_states.get('acknowledged', 0)} / {action_states.get('refused', 0)} / "
            f"{sum(r['actions_unanswered'] for r in intervals)}"
        ),
    }
    checks = {
        "flexibility: no activation paid beyond its delivery (paid <= floor(cost x delivered / "
        "activated), the ignoring device paid 0)": all(
            a["paid"] <= a["bound"] for a in activations_out
        )
        and all(a["paid"] == 0 for a in activations_out if a["ignoring_device"])
        and all(
            args["paid"]
            <= payment_bound(recorded[i]["cost"], args["deliveredW"], recorded[i]["activatedW"])
            for i, args in settled.items()
        )
        # the market's view of each payment (GET /flex/activations), where it has one, is the
        # chain's
        and all(a["paid_by_market"] in (None, a["paid"]) for a in activations_out),
        "flexibility: every recorded activation closed exactly once, its locked cost paid or "
        "refunded whole, nothing left in FlexibilityMarket": (
            set(closed_count) == recorded_ids
            and all(n == 1 for n in closed_count.values())
            and all(
                int(args["paid"]) + int(args["refunded"]) == int(recorded[i]["cost"])
                for i, args in settled.items()
            )
            and all(
                int(args["refunded"]) == int(recorded[i]["cost"]) for i, args in reclaimed.items()
            )
            and int(token.functions.balanceOf(flexibility.address).call()) == 0
        ),
        "flexibility: no approved interval state violates a grid limit with the activations "
        "applied (independent pandapower runpp)": ac_ok,
    }
    return {
        "remedy_cap_per_kwh_tokens": REMEDY_CAP_PER_KWH / TOKEN_UNIT,
        "consenting": [by_wallet[w].name for w in day.consenting],
        "ignoring_device": day.ignoring_device,
        "devices": [
            {
                "name": m.name,
                "device": m.device,
                "kind": m.device_kind,
                "bus": m.bus,
                "kw": m.device_kw,
            }
            for m in day.members
            if m.device_kind
        ],
        "intervals": intervals,
        "activations": activations_out,
        "action_states": dict(action_states),
        "refusals": dict(refusals),
        "totals": totals,
        "checks": checks,
    }


def ac_check(
    day: DemoDay,
    interval_id: int,
    approved: list[dict[str, Any]],
    acts: list[dict[str, Any]],
    limits_within: Any,
) -> bool:
    """pandapower's ``runpp`` of the interval's base net plus its final approved trades and its
    activations (as the devices were told to run: up injects, down consumes), judged by the
    demo's rule against the base state's own ``runpp``."""
    s = day.cfg.interval_seconds
    hours = s / 3600
    validator = day.grid_validator
    islanded = day.island_from is not None and interval_id >= day.island_from
    monitored = validator.limit_set(interval_id, s, islanded).monitored
    net = copy.deepcopy(validator.base_net(interval_id, s, islanded))
    base = _state(net, monitored)
    injections: dict[int, float] = defaultdict(float)
    for tr in approved:
        p_kw = int(tr["energyWh"]) / hours / 1000
        injections[int(tr["sellerBus"])] += p_kw
        injections[int(tr["buyerBus"])] -= p_kw
    for a in acts:  # an up activation injects more, a down one consumes more
        sign = 1 if int(a["direction"]) == 0 else -1
        injections[int(a["busId"])] += sign * int(a["activatedW"]) / 1000
    for bus, p_kw in injections.items():
        pp.create_sgen(net, bus, p_mw=p_kw / 1000, name=FLEX_SGEN)
    try:
        with quiet():
            pp.runpp(net)
    except pp.LoadflowNotConverged:
        return False
    return bool(limits_within(_state(net, monitored), base, validator.limits))


def _state(net: Any, monitored: Any) -> dict[str, Any]:
    """Extremes of a solved net at the validator's monitored buses, lines and transformers, in
    the shape of ``checks.within``'s states."""
    vm = net.res_bus.vm_pu.loc[monitored.buses].to_numpy(dtype=float)
    lines = net.res_line.loading_percent.loc[monitored.lines].to_numpy(dtype=float)
    trafos = net.res_trafo.loading_percent.loc[monitored.trafos].to_numpy(dtype=float)
    return {
        "converged": bool(net.converged),
        "vm_min_pu": float(np.min(vm)),
        "vm_max_pu": float(np.max(vm)),
        "max_line_loading_percent": float(np.max(lines)) if lines.size else None,
        "max_trafo_loading_percent": float(np.max(trafos)) if trafos.size else None,
    }
