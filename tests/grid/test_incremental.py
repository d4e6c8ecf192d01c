"""Prefix reuse: ``validate`` resumes from the session state of a trade-list prefix it has seen;
the answer must be exactly that of a from-scratch run of the same list."""

from __future__ import annotations

from dataclasses import astuple, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grid import GridValidator, Trade, ValidationResult

CIGRE_LOAD_BUSES = [2, 12, 16, 17, 18, 19, 22, 24, 35, 36, 37, 40, 41, 42, 43]

trade_lists = st.lists(
    st.tuples(
        st.sampled_from([*CIGRE_LOAD_BUSES, 999]),
        st.sampled_from(CIGRE_LOAD_BUSES),
        st.floats(min_value=0.5, max_value=80.0),
    ),
    min_size=1,
    max_size=40,
).map(lambda rows: [Trade(f"t{i}", s, b, round(p, 3)) for i, (s, b, p) in enumerate(rows)])


@pytest.fixture(scope="module")
def scratch() -> GridValidator:
    return GridValidator("cigre_lv", reuse=False)


@pytest.fixture(scope="module")
def reusing() -> GridValidator:
    return GridValidator("cigre_lv")


def _answer(result: ValidationResult) -> tuple[object, ...]:
    return (
        [astuple(v) for v in result.verdicts],
        result.evidence_hash,
        result.vm_min_pu,
        result.vm_max_pu,
        result.max_line_loading_percent,
        result.max_trafo_loading_percent,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(trades=trade_lists, cuts=st.lists(st.integers(0, 40), max_size=6), midday=st.booleans())
def test_validate_in_growing_chunks_equals_from_scratch(
    scratch: GridValidator,
    reusing: GridValidator,
    trades: list[Trade],
    cuts: list[int],
    midday: bool,
) -> None:
    interval = 52 if midday else None
    for cut in [*sorted(c for c in cuts if c <= len(trades)), len(trades)]:
        got = reusing.validate(trades[:cut], interval)
        assert _answer(got) == _answer(scratch.validate(trades[:cut], interval))
    assert got.stats.reused_trades <= len(trades)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(pool=trade_lists, chunk=st.integers(1, 8))
def test_clearing_rounds_equal_from_scratch(
    scratch: GridValidator, reusing: GridValidator, pool: list[Trade], chunk: int
) -> None:
    # The market's pattern: each round sends the approved trades so far plus fresh candidates.
    batch: list[Trade] = []
    while pool:
        fresh, pool = pool[:chunk], pool[chunk:]
        got = reusing.validate(batch + fresh)
        assert _answer(got) == _answer(scratch.validate(batch + fresh))
        batch = [t for t, v in zip(batch + fresh, got.verdicts, strict=True) if v.approved]


def test_reuse_reported_and_changed_trade_not_reused(reusing: GridValidator) -> None:
    reusing.clear_reuse_cache()
    trades = [Trade(f"r{i}", 24, 35, 2.0 + i) for i in range(6)]
    assert reusing.validate(trades[:4]).stats.reused_trades == 0
    assert reusing.validate(trades).stats.reused_trades == 4
    changed = [*trades[:2], replace(trades[2], p_kw=9.5), *trades[3:]]
    # Snapshots sit at list ends and before vetoed trades: at most the unchanged part is reused.
    assert reusing.validate(changed).stats.reused_trades <= 2
    # Same content, another type (bool is an int in Python, but not a bus): no reuse.
    odd = [replace(trades[0], seller_bus=True), *trades[1:]]
    assert reusing.validate(odd).verdicts[0].reason.name == "INVALID_TRADE"
    assert reusing.validate(trades, interval=52).stats.reused_trades == 0


def test_reuse_off_is_from_scratch(scratch: GridValidator) -> None:
    trades = [Trade(f"s{i}", 24, 35, 2.0) for i in range(3)]
    scratch.validate(trades)
    assert scratch.validate(trades).stats.reused_trades == 0


def test_kerber_clearing_rounds_equal_from_scratch() -> None:
    # The grid of the market benchmark, where AC-decided vetoes carry AC values: bit for bit.
    from bench.grid import random_trades

    reusing, scratch = (
        GridValidator("kerber_vorstadt"),
        GridValidator("kerber_vorstadt", reuse=False),
    )
    pool = random_trades(reusing.load_buses(), 180, 40.0, seed=11)
    batch: list[Trade] = []
    reused = 0
    for first in range(0, len(pool), 20):
        trades = batch + pool[first : first + 20]
        got = reusing.validate(trades)
        assert _answer(got) == _answer(scratch.validate(trades))
        reused += got.stats.reused_trades
        batch = [t for t, v in zip(trades, got.verdicts, strict=True) if v.approved]
    assert reused > 0


@pytest.mark.parametrize(
    ("network", "max_p_kw"), [("cigre_lv", 40.0), ("case33bw", 2000.0), ("kerber_vorstadt", 40.0)]
)
def test_bench_clearing_rounds_identical(network: str, max_p_kw: float) -> None:
    # The bench's clearing pattern (its seeds) on each bench network: every round's verdicts and
    # evidence hash with reuse equal to a from-scratch validator's (on kerber_vorstadt through
    # the kept lightsim2grid model).
    from bench.grid import run_clearing

    result = run_clearing(network, pool_size=200, max_p_kw=max_p_kw)
    assert result["identical"] is True
