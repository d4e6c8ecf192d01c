"""Benchmark: our validator against the naive one (a full pandapower ``runpp`` per trade), same run.

Per network: 2,000 random trades between load buses (fixed seed), sized so that a good share is
vetoed. Figures: microseconds per trade for both, speedup, false accepts (approved by ours but
rejected by an independent pandapower ``runpp`` of base + the trades approved up to and including
it, under the plain rule), verdict agreement (share of verdicts with the same approval, reason and
element as the naive validator's), decision agreement (same approval alone) and the counts.
``resolves`` counts AC solves repeated from the accepted state or a flat start (a start that did
not converge, or an implausible solution: ``grid.acmodel.ACModel.solve_checked``);
``evidence_hash`` is the hash of the whole list's result, so a change of the validator that changes
no verdict and no figure shows the same hash.

Cases: cigre_lv, case33bw and kerber_vorstadt with the networks' own loads (the targets:
``targets_met``, at least 100x faster, no false accept, 99 % verdict agreement); case_ieee30 (five
generators) at 13:00 and example_multivoltage (a three-winding transformer, an impedance, extended
wards) at 15:00, with their interval's loads and PV.

Timing: both validators are timed the same way - one untimed warm-up pass over the first trades,
then the whole list ``REPEATS`` times, reporting the fastest pass of each (the machines are shared,
so the minimum is the figure least disturbed by other load). Our validator runs with prefix reuse
off, so a repeat cannot resume from the pass before it.

``incremental``: the market's clearing pattern on kerber_vorstadt - each round validates the trades
approved so far plus ``CLEARING_CHUNK`` fresh candidates - timed with prefix reuse (the default)
and without, on the same sequence; every round's verdicts and evidence hash must be identical."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.naive import PandapowerChecker, injections_of, naive_validate
from grid.validator import GridValidator, ValidationResult
from grid.verdicts import Trade

SEED = 20240611
N_TRADES = 2000
REPEATS = 2
WARMUP_TRADES = 50
CLEARING_NETWORK = "kerber_vorstadt"
CLEARING_POOL = 400
CLEARING_CHUNK = 20


@dataclass(frozen=True)
class BenchCase:
    network: str
    max_p_kw: float
    interval: int | None = None  # None: the network's own loads and generation
    islanded: bool = False  # no external grid: the network's grid-forming units balance it


CASES: tuple[BenchCase, ...] = (
    BenchCase("cigre_lv", 40.0),
    BenchCase("case33bw", 2000.0),  # only voltage binds on its heavy lines: MW-sized trades
    BenchCase("kerber_vorstadt", 40.0),
    # Generators (PV buses), 132/33/11 kV: MW-sized trades at 13:00, PV at its peak.
    BenchCase("case_ieee30", 15000.0, interval=52),
    # A three-winding transformer, an impedance and extended wards, 110/20/0.4 kV, at 15:00.
    BenchCase("example_multivoltage", 1000.0, interval=60),
    # Islanded: the remote village at 04:30, its battery nearly empty and 1.4 kW below its
    # limit (the genset off), so the island's balance binds as trades add losses.
    BenchCase("village_island", 30.0, interval=18, islanded=True),
)
# The cases the speed and false-accept targets were set on (``targets_met``); every case reports
# its false accepts.
TARGET_NETWORKS = ("cigre_lv", "case33bw", "kerber_vorstadt")


def random_trades(buses: Sequence[int], n: int, max_p_kw: float, seed: int = SEED) -> list[Trade]:
    """``n`` trades between distinct random buses, p uniform in [1, max_p_kw] kW (0.001 kW
    steps)."""
    rng = np.random.default_rng(seed)
    pool = np.array(sorted(buses))
    trades = []
    for i in range(n):
        seller, buyer = rng.choice(pool, size=2, replace=False)
        p_kw = round(float(rng.uniform(1.0, max_p_kw)), 3)
        trades.append(Trade(f"t{i:05d}", int(seller), int(buyer), p_kw))
    return trades


def _fastest(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(seconds of the fastest of ``repeats`` runs, the last run's answer)."""
    best, answer = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        answer = run()
        best = min(best, time.perf_counter() - start)
    return best, answer


def run_case(
    case: BenchCase,
    n_trades: int = N_TRADES,
    on_trade: Callable[[], None] | None = None,
    repeats: int = REPEATS,
) -> dict[str, object]:
    interval, islanded = case.interval, case.islanded
    validator = GridValidator(case.network, reuse=False)
    trades = random_trades(validator.load_buses(), n_trades, case.max_p_kw)
    checker = PandapowerChecker(
        validator.base_net(interval, islanded=islanded),
        validator.limit_set(interval, islanded=islanded),
    )

    validator.validate(trades[:WARMUP_TRADES], interval, islanded=islanded)
    ours_s, answer = _fastest(
        lambda: validator.validate(trades, interval, islanded=islanded), repeats
    )
    assert isinstance(answer, ValidationResult)
    ours = answer

    naive_validate(checker, trades[:WARMUP_TRADES])
    ticks = iter([on_trade] + [None] * repeats)  # progress ticks during the first pass only
    naive_s, naive_answer = _fastest(lambda: naive_validate(checker, trades, next(ticks)), repeats)
    naive = list(naive_answer)  # type: ignore[call-overload]

    approved = [t for t, v in zip(trades, ours.verdicts, strict=True) if v.approved]
    # Every approved trade is checked, not only when the final set fails: a trade approved inside
    # a batch can break a limit that a later trade of the batch relieves (case_ieee30).
    false_accepts = _count_false_accepts(checker, trades, ours.verdicts)
    same = sum(
        (a.approved, a.reason, a.element) == (b.approved, b.reason, b.element)
        for a, b in zip(ours.verdicts, naive, strict=True)
    )
    same_decision = sum(a.approved == b.approved for a, b in zip(ours.verdicts, naive, strict=True))
    n_approved = len(approved)
    return {
        "network": case.network,
        "interval": interval,
        "islanded": islanded,
        "trades": n_trades,
        "us_per_trade": round(ours_s / n_trades * 1e6, 1),
        "naive_us_per_trade": round(naive_s / n_trades * 1e6, 1),
        "speedup": round(naive_s / ours_s, 1),
        "false_accepts": false_accepts,
        "verdict_agreement": round(same / n_trades, 4),
        "decision_agreement": round(same_decision / n_trades, 4),
        "approved": n_approved,
        "vetoed": n_trades - n_approved,
        "naive_approved": sum(v.approved for v in naive),
        "ac_solves": ours.stats.ac_solves,
        "screened_in": ours.stats.screened_in,
        "screened_out": ours.stats.screened_out,
        "batch_fallbacks": ours.stats.batch_fallbacks,
        "linearizations": ours.stats.linearizations,
        "resolves": ours.stats.resolves,
        "evidence_hash": ours.evidence_hash,
    }


def _count_false_accepts(
    checker: PandapowerChecker, trades: Sequence[Trade], verdicts: Sequence[object]
) -> int:
    """Approved trades after which the accumulated approved set fails an independent check."""
    accepted: list[Trade] = []
    bad = 0
    for trade, verdict in zip(trades, verdicts, strict=True):
        if getattr(verdict, "approved", False):
            accepted.append(trade)
            if checker.check(injections_of(accepted), strict=False) is not None:
                bad += 1
    return bad


def run_clearing(
    network: str = CLEARING_NETWORK,
    pool_size: int = CLEARING_POOL,
    chunk: int = CLEARING_CHUNK,
    max_p_kw: float = 40.0,
) -> dict[str, object]:
    """The clearing pattern, with and without prefix reuse, on one trade sequence."""
    reusing = GridValidator(network)
    scratch = GridValidator(network, reuse=False)
    for v in (reusing, scratch):
        v.base_state()
        v.validate(random_trades(v.load_buses(), WARMUP_TRADES, max_p_kw, seed=SEED + 1))
    pool = random_trades(reusing.load_buses(), pool_size, max_p_kw, seed=SEED + 2)
    reusing.clear_reuse_cache()
    times = {"with": 0.0, "without": 0.0}
    identical = True
    batch: list[Trade] = []
    calls = sent = 0
    for first in range(0, pool_size, chunk):
        trades = batch + pool[first : first + chunk]
        start = time.perf_counter()
        got = reusing.validate(trades)
        times["with"] += time.perf_counter() - start
        start = time.perf_counter()
        want = scratch.validate(trades)
        times["without"] += time.perf_counter() - start
        identical &= got.evidence_hash == want.evidence_hash and got.verdicts == want.verdicts
        calls += 1
        sent += len(trades)
        batch = [t for t, v in zip(trades, got.verdicts, strict=True) if v.approved]
    return {
        "network": network,
        "pattern": f"each round: approved so far + {chunk} fresh candidates",
        "rounds": calls,
        "trades_sent": sent,
        "approved": len(batch),
        "ms_with_reuse": round(times["with"] * 1e3, 1),
        "ms_without_reuse": round(times["without"] * 1e3, 1),
        "speedup": round(times["without"] / times["with"], 1),
        "identical": identical,
    }


def run_benchmark(
    cases: Sequence[BenchCase] = CASES,
    n_trades: int = N_TRADES,
    on_trade: Callable[[], None] | None = None,
    repeats: int = REPEATS,
) -> dict[str, object]:
    """All cases, one after the other; ``on_trade`` ticks once per naive trade of the first pass
    (progress bars)."""
    results = [run_case(case, n_trades, on_trade, repeats) for case in cases]
    return {
        "benchmark": "grid-validate",
        "seed": SEED,
        "baseline": "pandapower runpp per trade on the accumulated set",
        "timing": f"fastest of {repeats} passes each, after a {WARMUP_TRADES}-trade warm-up",
        "networks": results,
        "incremental": run_clearing(),
        "targets_met": all(
            float(str(r["speedup"])) >= 100
            and r["false_accepts"] == 0
            and float(str(r["verdict_agreement"])) >= 0.99
            for r in results
            if r["network"] in TARGET_NETWORKS
        ),
        "false_accepts": sum(int(str(r["false_accepts"])) for r in results),
    }
