"""Benchmark: our validator against the naive one (a full pandapower ``runpp`` per trade), same run.

Per network: 2,000 random trades between load buses (fixed seed), sized so that a good share is
vetoed. Figures: microseconds per trade for both, speedup, false accepts (approved by ours but
rejected by a final independent pandapower ``runpp`` of base + approved set under the plain rule),
verdict agreement (share of verdicts with the same approval, reason and element as the naive
validator's) and the counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from grid.naive import PandapowerChecker, injections_of, naive_validate
from grid.validator import GridValidator
from grid.verdicts import Trade

SEED = 20240611
N_TRADES = 2000


@dataclass(frozen=True)
class BenchCase:
    network: str
    max_p_kw: float


CASES: tuple[BenchCase, ...] = (
    BenchCase("cigre_lv", 40.0),
    BenchCase("case33bw", 2000.0),  # only voltage binds on its heavy lines: MW-sized trades
    BenchCase("kerber_vorstadt", 40.0),
)


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


def run_case(
    case: BenchCase, n_trades: int = N_TRADES, on_trade: Callable[[], None] | None = None
) -> dict[str, object]:
    validator = GridValidator(case.network)
    validator.base_state()
    trades = random_trades(validator.load_buses(), n_trades, case.max_p_kw)

    start = time.perf_counter()
    ours = validator.validate(trades)
    ours_s = time.perf_counter() - start

    checker = PandapowerChecker(validator.base_net(), validator.limit_set())
    start = time.perf_counter()
    naive = naive_validate(checker, trades, on_trade)
    naive_s = time.perf_counter() - start

    approved = [t for t, v in zip(trades, ours.verdicts, strict=True) if v.approved]
    final = checker.check(injections_of(approved), strict=False)
    false_accepts = 0 if final is None else _count_false_accepts(checker, trades, ours.verdicts)
    same = sum(
        (a.approved, a.reason, a.element) == (b.approved, b.reason, b.element)
        for a, b in zip(ours.verdicts, naive, strict=True)
    )
    n_approved = len(approved)
    return {
        "network": case.network,
        "trades": n_trades,
        "us_per_trade": round(ours_s / n_trades * 1e6, 1),
        "naive_us_per_trade": round(naive_s / n_trades * 1e6, 1),
        "speedup": round(naive_s / ours_s, 1),
        "false_accepts": false_accepts,
        "verdict_agreement": round(same / n_trades, 4),
        "approved": n_approved,
        "vetoed": n_trades - n_approved,
        "naive_approved": sum(v.approved for v in naive),
        "ac_solves": ours.stats.ac_solves,
        "screened_in": ours.stats.screened_in,
        "screened_out": ours.stats.screened_out,
        "batch_fallbacks": ours.stats.batch_fallbacks,
        "linearizations": ours.stats.linearizations,
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


def run_benchmark(
    cases: Sequence[BenchCase] = CASES,
    n_trades: int = N_TRADES,
    on_trade: Callable[[], None] | None = None,
) -> dict[str, object]:
    """All cases, one after the other; ``on_trade`` ticks once per naive trade (progress bars)."""
    results = [run_case(case, n_trades, on_trade) for case in cases]
    return {
        "benchmark": "grid-validate",
        "seed": SEED,
        "baseline": "pandapower runpp per trade on the accumulated set",
        "networks": results,
        "targets_met": all(
            float(str(r["speedup"])) >= 100
            and r["false_accepts"] == 0
            and float(str(r["verdict_agreement"])) >= 0.99
            for r in results
        ),
    }
