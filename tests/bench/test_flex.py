"""``tegrid bench flex``'s parts on cigre_lv, one midday interval: offers at the weakest and the
strongest buses, the remedy search on the greedy clearing's vetoes, the naive runpp search,
and pandapower's runpp of the final set with its activations (no false accept)."""

from __future__ import annotations

from backend.chain import protocol
from bench.clearing import CASES, interval_of
from bench.flex import OFFER_BUSES, offers_for, run_network


def test_offers_are_seeded_and_split_between_relieving_and_other_buses() -> None:
    ranked = list(range(100, 140))
    first = offers_for(ranked, 144)
    assert first == offers_for(ranked, 144)
    assert [o.bus for o in first] == ranked[:OFFER_BUSES] + ranked[-OFFER_BUSES:]
    assert {o.direction for o in first[:OFFER_BUSES]} == {protocol.FLEX_DOWN}
    assert {o.direction for o in first[OFFER_BUSES:]} == {protocol.FLEX_UP}


def test_one_interval_recovers_gains_without_a_false_accept() -> None:
    case = next(c for c in CASES if c.network == "cigre_lv")
    result = run_network(case, [interval_of(12.0)])
    [row] = result["intervals"]
    assert row["false_accept"] is False
    assert row["vetoed_with_gain"] > 0 and row["rescued"] > 0
    assert 0 < row["recovered_gain"] <= row["vetoed_gain"]
    # On cigre_lv the vetoes bind on the PV feeders: most activations are the weak buses' offers
    # (charging where the PV crowds), though the cheaper ones beside the buyers are offered too.
    assert row["activations_at_weak_buses"] > row["activations"] - row["activations_at_weak_buses"]
    assert row["remedy_cost"] < row["recovered_gain"]
    assert result["total"]["false_accepts"] == 0
