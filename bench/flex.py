"""Benchmark: remedies in the clearing - how much of the vetoed trades' gains flexibility recovers,
what the remedy search costs next to a naive AC search, and whether any final set breaks a limit.

**Books** are ``bench.clearing``'s congested midday books (its community generator, seeds and
cases for ``cigre_lv`` and ``kerber_vorstadt``), cleared with the greedy merit order (the
market's fallback, whose vetoes are many: the optimal clearing fills orders partially instead of
vetoing them, and only its top-up's vetoes reach the remedy search).

**Offers** (seeded, ``SEED``): at the weakest ``OFFER_BUSES`` load buses, where the cheap PV
sellers crowd, batteries offer to charge (direction down: more consumption) 10-40 kW at 0.01-0.05
tokens/kWh; at the strongest ``OFFER_BUSES``, beside the buyers, they offer to discharge (direction
up) the same amounts, cheaper (0.005-0.03 tokens/kWh). Which group relieves depends on where a
veto binds (the PV feeders' cables and voltages, or the buyers' side); a bus whose offer relieves
nothing is never activated (the program follows the sensitivities, not the price). Every trader
has a remedy cap of ``CAP`` tokens/kWh and funds for it.

**Figures, per network.** ``vetoed_gain``: what the vetoes lost - the rescued trades' gains
``(bid - ask) x kWh`` (``recovered_gain``) plus those of the candidates still vetoed after the
remedies whose orders still have the volume (``lost_trades``: each taking its volume in priority
order, so an order's volume counts once), in tokens; the recovered share of all of it, and -
the issue's target, ``TARGET_RECOVERED`` >= 50 %, is stated "where offers exist at relieving
buses" - of what was lost where one does (``recovered_share_reachable``: the candidates the
remedy's linear screen finds no offer able to relieve are left out of the denominator); the
remedies' cost; the remedy search's time per
vetoed candidate (``remedy.remedy``: programs, AC points, the validator's confirmations) and a
naive search's in the same run (``naive_search``: offers cheapest first added one by one at full
power, each set checked by a pandapower ``runpp`` of base + approved trades + candidate + the set,
until one is inside the limits; on the first ``NAIVE_CANDIDATES`` vetoed candidates of each
interval), their ratio (target ``TARGET_SPEEDUP`` >= 50x); false accepts: final sets (approved
trades with every activation) that an independent ``runpp`` finds outside a limit (target 0).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from backend.chain import protocol
from backend.chain.protocol import TOKEN_UNIT
from backend.market.activations import FlexInput, FlexOption, PayerFunds
from backend.market.auction import Candidate, Clearing
from backend.market.grid_port import GridPortAdapter
from backend.market.remedy import remedy
from bench.clearing import (
    CASES,
    INTERVAL_SECONDS,
    SEED,
    ClearingCase,
    approved_injections,
    community,
    interval_of,
    midday_book,
    ranked_buses,
)
from bench.naive import PandapowerChecker
from grid.validator import GridValidator

NETWORKS = ("kerber_vorstadt", "cigre_lv")  # backend.cli.bench.FLEX_NETWORKS
FIRST_HOUR = 12.0
N_INTERVALS = 4
OFFER_BUSES = 8  # relieving (weakest) and non-relieving (strongest) buses with an offer each
CAP = 0.5  # tokens per kWh of a rescued trade every trader accepts to pay for remedies
NAIVE_CANDIDATES = 3  # vetoed candidates per interval the naive search is timed on
NAIVE_MAX_SETS = 16  # the naive search gives up after this many runpp sets
TARGET_RECOVERED = 0.5
TARGET_SPEEDUP = 50.0


def offers_for(ranked: Sequence[int], interval: int, seed: int = SEED) -> list[FlexOption]:
    """Offers to charge (down) at the weakest buses and to discharge (up, cheaper) at the
    strongest; deterministic per interval."""
    rng = random.Random(seed * 7_919 + interval)
    out: list[FlexOption] = []
    groups = (
        (list(ranked[:OFFER_BUSES]), protocol.FLEX_DOWN, (0.01, 0.05)),
        (list(ranked[-OFFER_BUSES:]), protocol.FLEX_UP, (0.005, 0.03)),
    )
    for buses, direction, prices in groups:
        for bus in buses:
            seq = len(out)
            digest = hashlib.sha256(f"tegrid bench flex {interval} {seq}".encode()).hexdigest()
            out.append(
                FlexOption(
                    "0x" + digest,
                    f"0x{0xF1E0000 + seq:040x}",
                    f"0x{0xDE00000 + seq:040x}",
                    bus,
                    direction,
                    rng.randrange(10_000, 40_001, 1000),
                    0,
                    int(TOKEN_UNIT * rng.uniform(*prices)),
                    seq,
                )
            )
    return out


def gain(c: Candidate) -> int:
    """(bid - ask) x kWh in base units (rounded down)."""
    return (c.buy.price_per_kwh - c.sell.price_per_kwh) * c.energy_wh // 1000


def lost_trades(clearing: Clearing) -> list[Candidate]:
    """The vetoed candidates with a gain that the volume left of their orders could still hold,
    in priority order, each taking its volume (the remedy search's candidates): their gains are
    what the vetoes lost, counted once per order volume."""
    room: dict[str, int] = {}
    for c in clearing.approved:
        for o in (c.sell, c.buy):
            room[o.hash] = room.get(o.hash, o.energy_wh) - c.energy_wh
    out = []
    for c, d in clearing.trades:
        if d.approved or gain(c) <= 0:
            continue
        if all(room.get(o.hash, o.energy_wh) >= c.energy_wh for o in (c.sell, c.buy)):
            out.append(c)
            for o in (c.sell, c.buy):
                room[o.hash] = room.get(o.hash, o.energy_wh) - c.energy_wh
    return out


def naive_search(
    checker: PandapowerChecker,
    approved: dict[int, float],
    candidate: Candidate,
    offers: Sequence[FlexOption],
) -> tuple[int, bool]:
    """Cheapest offers first, each added at full power, a ``runpp`` per set until one is inside
    the limits: (runpp calls, found)."""
    kw = candidate.energy_wh / (INTERVAL_SECONDS / 3600) / 1000
    inj = dict(approved)
    inj[candidate.sell.bus] = inj.get(candidate.sell.bus, 0.0) + kw
    inj[candidate.buy.bus] = inj.get(candidate.buy.bus, 0.0) - kw
    calls = 0
    for o in sorted(offers, key=lambda o: (o.price_per_kwh, o.seq))[:NAIVE_MAX_SETS]:
        sign = 1.0 if o.direction == protocol.FLEX_UP else -1.0
        inj[o.bus] = inj.get(o.bus, 0.0) + sign * o.power_w / 1000.0
        calls += 1
        if checker.check(inj, strict=False) is None:
            return calls, True
    return calls, False


def final_injections(result: Clearing) -> dict[int, float]:
    inj = approved_injections(result, INTERVAL_SECONDS)
    for a in result.activations:
        g = a.grid()
        inj[g.bus] = inj.get(g.bus, 0.0) + g.p_kw
    return inj


def run_network(
    case: ClearingCase, intervals: Sequence[int], on_interval: Callable[[], None] | None = None
) -> dict[str, Any]:
    template = GridValidator(case.network)  # untouched: copied for each interval's port
    solved = GridValidator(case.network)  # ranks buses, gives base nets and limit sets
    ranked = ranked_buses(solved)
    members = community(case, ranked)
    rows: list[dict[str, Any]] = []
    for interval in intervals:
        book = midday_book(members, interval, case.network)
        port = GridPortAdapter(
            case.network, INTERVAL_SECONDS, validator=copy.deepcopy(template), clearing="greedy"
        )
        port.prepare(interval)
        clearing = port.clear(interval, book)
        offers = offers_for(ranked, interval)
        payers = {o.trader.lower(): PayerFunds(int(CAP * TOKEN_UNIT), 10**15) for o in book}
        flex = FlexInput(tuple(offers), payers)
        vetoed = lost_trades(clearing)
        start = time.perf_counter()
        result, stats = remedy(
            clearing,
            flex,
            functools.partial(port.operating_point, interval),
            functools.partial(port.validate_activations, interval),
            INTERVAL_SECONDS,
            port.validator.limits,
        )
        remedy_s = time.perf_counter() - start
        rescued_ids = {
            a.trade_id for a in result.activations if a.trade_id != protocol.ZERO_BYTES32
        }
        approved_before = {id(c) for c in clearing.approved}
        rescued = [c for c in result.approved if id(c) not in approved_before]
        checker = PandapowerChecker(
            solved.base_net(interval, INTERVAL_SECONDS),
            solved.limit_set(interval, INTERVAL_SECONDS),
        )
        before = approved_injections(clearing, INTERVAL_SECONDS)
        naive_s = 0.0
        naive_runpp = 0
        naive_found = 0
        timed = vetoed[:NAIVE_CANDIDATES]
        for c in timed:
            t0 = time.perf_counter()
            calls, found = naive_search(checker, before, c, offers)
            naive_s += time.perf_counter() - t0
            naive_runpp += calls
            naive_found += found
        violation = checker.check(final_injections(result), strict=False)
        # What the vetoes lost: the rescued trades' gains and those of the candidates still
        # vetoed after the remedies whose orders have the volume (each counted once).
        still_lost = lost_trades(result)
        reachable_lost = [
            c for c in still_lost if (c.sell.hash, c.buy.hash) not in stats.unreachable
        ]
        rows.append(
            {
                "interval": interval,
                "orders": len(book),
                "approved": len(clearing.approved),
                "vetoed_with_gain": len(rescued) + len(still_lost),
                "rescued": len(rescued),
                "activations": len(result.activations),
                "activated_kw": round(sum(a.activated_w for a in result.activations) / 1000, 3),
                "activations_at_weak_buses": sum(
                    1 for a in result.activations if a.direction == protocol.FLEX_DOWN
                ),
                "trades_with_activations": len(rescued_ids),
                "vetoed_gain": _tokens(sum(gain(c) for c in (*rescued, *still_lost))),
                "recovered_gain": _tokens(sum(gain(c) for c in rescued)),
                # what was lost where an offer sits that could relieve the veto (the issue's
                # target is stated for those): rescued + still lost but not screened out
                "vetoed_gain_reachable": _tokens(
                    sum(gain(c) for c in (*rescued, *reachable_lost))
                ),
                "remedy_cost": _tokens(sum(a.cost for a in result.activations)),
                "remedy_us_per_candidate": _per(remedy_s, stats.candidates),
                "naive_us_per_candidate": _per(naive_s, len(timed)),
                "naive_runpp": naive_runpp,
                "naive_found": naive_found,
                "left_out": stats.left_out,
                "remedy_programs": stats.programs,
                "remedy_ac_points": stats.points,
                "refused": {
                    "cost": stats.refused_cost,
                    "cap": stats.refused_cap,
                    "funds": stats.refused_funds,
                    "grid": stats.refused_grid,
                    "grid_screened_out": stats.screened_out,
                    "grid_unconfirmed": stats.unconfirmed,
                },
                "false_accept": violation is not None,
            }
        )
        if on_interval is not None:
            on_interval()
    return {"network": case.network, "intervals": rows, "total": _total(rows)}


def _tokens(units: int) -> float:
    return round(units / TOKEN_UNIT, 6)


def _per(seconds: float, count: int) -> float | None:
    return round(seconds * 1e6 / count, 1) if count else None


def _total(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    vetoed = sum(r["vetoed_gain"] for r in rows)
    recovered = sum(r["recovered_gain"] for r in rows)
    reachable = sum(r["vetoed_gain_reachable"] for r in rows)
    cands = [(r["remedy_us_per_candidate"], r["vetoed_with_gain"]) for r in rows]
    n = sum(k for us, k in cands if us is not None)
    remedy_us = sum(us * k for us, k in cands if us is not None) / n if n else None
    naive = [r["naive_us_per_candidate"] for r in rows if r["naive_us_per_candidate"] is not None]
    naive_us = sum(naive) / len(naive) if naive else None
    return {
        "vetoed_with_gain": sum(r["vetoed_with_gain"] for r in rows),
        "rescued": sum(r["rescued"] for r in rows),
        "activations": sum(r["activations"] for r in rows),
        "vetoed_gain": round(vetoed, 6),
        "recovered_gain": round(recovered, 6),
        "recovered_share": round(recovered / vetoed, 4) if vetoed > 0 else None,
        "vetoed_gain_reachable": round(reachable, 6),
        "recovered_share_reachable": round(recovered / reachable, 4) if reachable > 0 else None,
        "remedy_cost": round(sum(r["remedy_cost"] for r in rows), 6),
        "remedy_us_per_candidate": None if remedy_us is None else round(remedy_us, 1),
        "naive_us_per_candidate": None if naive_us is None else round(naive_us, 1),
        "speedup": round(naive_us / remedy_us, 1) if naive_us and remedy_us else None,
        "false_accepts": sum(r["false_accept"] for r in rows),
    }


def run_benchmark(
    networks: Sequence[str] = NETWORKS,
    intervals: int = N_INTERVALS,
    on_interval: Callable[[], None] | None = None,
) -> dict[str, Any]:
    known = {case.network: case for case in CASES}
    first = interval_of(FIRST_HOUR)
    ids = list(range(first, first + intervals))
    results = [run_network(known[n], ids, on_interval) for n in networks]
    totals = [r["total"] for r in results]
    return {
        "benchmark": "flex",
        "seed": SEED,
        "interval_seconds": INTERVAL_SECONDS,
        "clearing": "greedy merit order (its vetoes), then remedy.remedy",
        "naive": "offers cheapest first at full power, a pandapower runpp per set",
        "welfare_unit": "tokens",
        "networks": results,
        "targets": {
            "recovered_share_reachable": TARGET_RECOVERED,
            "speedup": TARGET_SPEEDUP,
            "false_accepts": 0,
        },
        "targets_met": all(
            (t["recovered_share_reachable"] or 0) >= TARGET_RECOVERED
            and (t["speedup"] or 0) >= TARGET_SPEEDUP
            and t["false_accepts"] == 0
            for t in totals
        ),
    }
