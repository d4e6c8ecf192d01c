"""Properties: the approved set passes an independent pandapower runpp; the evidence hash is stable
and changes when any input changes."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.naive import PandapowerChecker, injections_of
from grid import GridValidator, Limits, Trade

CIGRE_LOAD_BUSES = [2, 12, 16, 17, 18, 19, 22, 24, 35, 36, 37, 40, 41, 42, 43]

trade_lists = st.lists(
    st.tuples(
        st.sampled_from(CIGRE_LOAD_BUSES),
        st.sampled_from(CIGRE_LOAD_BUSES),
        st.floats(min_value=0.5, max_value=80.0),
    ),
    min_size=1,
    max_size=25,
).map(lambda rows: [Trade(f"t{i}", s, b, round(p, 3)) for i, (s, b, p) in enumerate(rows)])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(trades=trade_lists, midday=st.booleans())
def test_validate_approved_set_passes_independent_runpp(
    cigre: GridValidator, trades: list[Trade], midday: bool
) -> None:
    interval = 52 if midday else None
    result = cigre.validate(trades, interval)
    approved = [t for t, v in zip(trades, result.verdicts, strict=True) if v.approved]
    checker = PandapowerChecker(cigre.base_net(interval), cigre.limit_set(interval))
    assert checker.check(injections_of(approved), strict=False) is None


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(trades=trade_lists, which=st.integers(min_value=0, max_value=3))
def test_evidence_hash_stable_and_input_sensitive(
    cigre: GridValidator, trades: list[Trade], which: int
) -> None:
    first = cigre.validate(trades).evidence_hash
    assert first == GridValidator("cigre_lv").validate(trades).evidence_hash
    assert first.startswith("0x") and len(first) == 66
    if which == 0:
        changed = cigre.validate([*trades[:-1], replace(trades[-1], p_kw=trades[-1].p_kw + 0.001)])
    elif which == 1:
        changed = cigre.validate([*trades[:-1], replace(trades[-1], id=trades[-1].id + "x")])
    elif which == 2:
        changed = cigre.validate(trades, interval=52)
    else:
        changed = GridValidator("cigre_lv", limits=Limits(vm_max_pu=1.09)).validate(trades)
    assert changed.evidence_hash != first
