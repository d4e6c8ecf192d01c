"""``tegrid bench clearing``'s parts end to end on cigre_lv: the congested midday book, one
interval's optimal, greedy and unconstrained clearings on real validators, the independent
``runpp`` check of their approved sets and the AC-verified reference optimum."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from backend.chain.protocol import BUY, SELL, TOKEN_UNIT
from backend.market.auction import BookOrder, clear
from backend.market.optimal import welfare
from bench.clearing import (
    CASES,
    MID_ASK,
    Clearer,
    Network,
    interval_of,
    reference_optimum,
    run_interval,
    split_book,
)

CIGRE = next(c for c in CASES if c.network == "cigre_lv")


@pytest.fixture(scope="module")
def cigre() -> Network:
    return Network.build(CIGRE)


def test_midday_book_crowds_pv_on_weak_buses_and_buyers_on_strong(cigre: Network) -> None:
    members = cigre.members
    # cigre_lv's 15 load buses, weakest first by the export they host at 13:00.
    assert members.weak_buses == [16, 41, 35, 36]
    assert len(members.strong_buses) == 4
    book = cigre.book(interval_of(13.0))
    weak, strong, mid = set(members.weak_buses), set(members.strong_buses), set(members.mid_buses)
    pv_sells = [o for o in book if o.side == SELL and o.bus in weak]
    mid_sells = [o for o in book if o.side == SELL and o.bus in mid]
    buys = [o for o in book if o.side == BUY]
    assert len(pv_sells) == CIGRE.pv_sellers
    assert len(mid_sells) == CIGRE.mid_sellers
    assert len(pv_sells) + len(mid_sells) + len(buys) == len(book)
    assert all(o.bus in strong for o in buys)
    # The weak-bus PV is the cheapest, the mid-grid sellers ask MID_ASK.
    assert max(o.price_per_kwh for o in pv_sells) <= 0.14 * TOKEN_UNIT
    assert all(
        MID_ASK[0] * TOKEN_UNIT <= o.price_per_kwh <= MID_ASK[1] * TOKEN_UNIT for o in mid_sells
    )
    # Seeded: the same book again.
    assert cigre.book(interval_of(13.0)) == book


def test_one_interval_end_to_end(cigre: Network) -> None:
    interval = interval_of(13.0)
    checker, limitset = cigre.checker(interval)
    row = run_interval(
        Clearer("cigre_lv", cigre.template), checker, limitset, interval, cigre.book(interval)
    )
    w = row["welfare"]
    assert isinstance(w, dict)
    assert row["method"] == "optimal"
    # The grid binds: greedy below the unconstrained auction, the optimal clearing above greedy.
    assert w["greedy"] < 0.95 * w["unconstrained"]
    assert w["optimal"] >= w["greedy"]
    # Both final sets inside every limit under an independent runpp.
    assert row["runpp_violations"] == {"optimal": None, "greedy": None}
    # The reference: converged, confirmed by runpp, not below the clearing.
    reference = row["reference"]
    assert isinstance(reference, dict)
    assert reference["feasible"] is True
    assert reference["converged"] is True
    assert w["reference"] >= w["optimal"] - 1e-6
    assert w["reference"] <= w["unconstrained"] + 1e-6
    # Voltage rise at the far feeder ends is what binds.
    assert "bus 41 high" in reference["binding"]
    assert row["deterministic"] is True


def test_reference_without_congestion_is_the_unconstrained_optimum(cigre: Network) -> None:
    """With every order's volume cut to a hundredth no limit binds: the reference must find the
    unconstrained auction's welfare (the same program without the grid)."""
    interval = interval_of(13.0)
    book = [replace(o, energy_wh=max(1, o.energy_wh // 100)) for o in cigre.book(interval)]
    checker, limitset = cigre.checker(interval)
    ref = reference_optimum(book, checker, limitset)
    assert ref.feasible and ref.converged
    assert ref.binding == []
    assert ref.welfare_tokens == pytest.approx(welfare(clear(book, None).approved) / TOKEN_UNIT)


def test_split_book_keeps_every_volume() -> None:
    book = [
        BookOrder(f"0x{i:064x}", f"0x{i + 1:040x}", i % 2, 1000 + 7 * i, 10 + i, "0x" + "00" * 20,
                  i, 2 + i % 3)
        for i in range(30)
    ]  # fmt: skip
    parts = split_book(book, 2000)
    assert len(parts) == 2000
    assert len({o.hash for o in parts}) == 2000
    assert len({o.trader for o in parts}) == 2000

    def totals(orders: list[BookOrder]) -> Counter[tuple[int, int, int]]:
        out: Counter[tuple[int, int, int]] = Counter()
        for o in orders:
            out[(o.side, o.bus, o.price_per_kwh)] += o.energy_wh
        return out

    assert totals(parts) == totals(book)
