"""The optimal clearing against the real Neural Grid (cigre_lv, pandapower) and an independent
``runpp`` of what it approves: partial fills where the greedy clearing vetoes whole pairs, sellers
chosen by where they sit, bilateral priority, "do no harm", determinism, the greedy fallback."""

from __future__ import annotations

import random
from collections import Counter

import pandapower as pp
import pytest

from backend.chain.protocol import BUY, SELL
from backend.demo.community import build_community, intent_for
from backend.market.auction import BookOrder, Clearing, clear
from backend.market.grid_port import GridPortAdapter
from bench.naive import PandapowerChecker
from grid import GridValidator, Limits

Z = "0x" + "00" * 20
SECONDS = 900
INTERVAL = (86400 * 1000 + 13 * 3600) // SECONDS  # 13:00: the sunniest, highest voltages
KW_PER_WH = 3600 / SECONDS / 1000


def order(n: int, side: int, wh: int, price: int, bus: int, counterparty: str = Z) -> BookOrder:
    return BookOrder(f"0x{n:064x}", f"0x{n:040x}", side, wh, price, counterparty, n, bus)


def port(clearing: str = "optimal", **limits: float) -> GridPortAdapter:
    """A fresh adapter on a fresh validator (no state shared between the clearings compared)."""
    validator = GridValidator("cigre_lv", limits=Limits(**limits))
    return GridPortAdapter("cigre_lv", SECONDS, validator=validator, clearing=clearing)


def greedy(book: list[BookOrder], **limits: float) -> Clearing:
    return port("greedy", **limits).clear(INTERVAL, book)


def injections(result: Clearing) -> dict[int, float]:
    out: Counter[int] = Counter()
    for c in result.approved:
        out[c.sell.bus] += c.energy_wh * KW_PER_WH
        out[c.buy.bus] -= c.energy_wh * KW_PER_WH
    return dict(out)


def runpp_check(result: Clearing, scale: float = 1.0, **limits: float) -> object:
    """pandapower's own verdict on the approved set (scaled), with the validator's rule."""
    validator = GridValidator("cigre_lv", limits=Limits(**limits))
    checker = PandapowerChecker(
        validator.base_net(INTERVAL, SECONDS), validator.limit_set(INTERVAL, SECONDS)
    )
    return checker.check({b: p * scale for b, p in injections(result).items()})


def assert_well_formed(book: list[BookOrder], result: Clearing) -> None:
    """Fills within volumes, prices within both limits, no self-trade, each pair once."""
    by_hash = {o.hash: o for o in book}
    fills = result.fills()
    assert all(0 < fills[h] <= by_hash[h].energy_wh for h in fills)
    pairs = [(c.sell.hash, c.buy.hash) for c, _ in result.trades]
    assert len(pairs) == len(set(pairs))
    for c, _ in result.trades:
        assert c.sell.side == SELL and c.buy.side == BUY and c.energy_wh > 0
        assert c.sell.price_per_kwh <= c.price_per_kwh <= c.buy.price_per_kwh
        assert c.sell.trader != c.buy.trader


def test_a_pair_too_big_for_the_feeder_is_filled_in_part() -> None:
    """160 kW from bus 16 (hosting capacity ~68 kW at 13:00): greedy vetoes the whole pair, the
    optimal clearing sells what the feeder takes - and runpp confirms it is about all of it."""
    book = [order(1, SELL, 40_000, 10, 16), order(2, BUY, 40_000, 50, 2)]
    g = greedy(book)
    assert [d.reason for _, d in g.trades] == ["VOLTAGE_HIGH"] and g.welfare == 0
    o = port().clear(INTERVAL, book)
    assert o.method == "optimal" and len(o.trades) == 1 and o.trades[0][1].approved
    (trade,) = o.approved
    assert 10_000 < trade.energy_wh < 40_000
    assert o.welfare == (50 - 10) * trade.energy_wh // 1000
    assert runpp_check(o) is None
    # 1 % more would break the voltage limit: the clearing used the feeder's whole capacity.
    broken = runpp_check(o, scale=1.01)
    assert broken is not None and broken.reason.name == "VOLTAGE_HIGH"
    assert_well_formed(book, o)


def test_dearer_sellers_where_the_grid_takes_them() -> None:
    """Cheap sellers on the weakest buses, dearer ones near the transformer, buyers near it: merit
    order uses up the voltage headroom with the cheap ones and vetoes the rest; the optimal
    clearing buys from where the grid can take it and gains welfare."""
    book = [
        order(1, SELL, 30_000, 10, 16),
        order(2, SELL, 30_000, 11, 41),
        order(3, SELL, 30_000, 25, 17),
        order(4, SELL, 30_000, 26, 18),
        order(5, BUY, 40_000, 60, 24),
        order(6, BUY, 40_000, 58, 19),
    ]
    g = greedy(book)
    o = port().clear(INTERVAL, book)
    assert o.method == "optimal" and all(d.approved for _, d in o.trades)
    assert o.welfare > g.welfare
    assert o.traded_wh > g.traded_wh
    assert runpp_check(o) is None and runpp_check(g) is None
    assert_well_formed(book, o)


def community_book(interval: int, prosumers: int = 60, seed: int = 7) -> list[BookOrder]:
    """The demo community's orders for one interval (PV sellers on the weak buses)."""
    validator = GridValidator("cigre_lv")
    weak = sorted(
        validator.load_buses(),
        key=lambda b: (
            validator.hosting_capacity(
                b, interval=interval, interval_seconds=SECONDS
            ).max_export.p_kw
        ),
    )
    members = build_community(weak, prosumers, seed)
    rng = random.Random(interval)
    hour = (interval * SECONDS % 86400) / 3600
    book = []
    for k, m in enumerate(members):
        intent = intent_for(m, hour, SECONDS / 3600, rng)
        if intent is not None:
            book.append(
                BookOrder(
                    f"0x{interval:032x}{k:032x}",
                    f"0x{k + 1:040x}",
                    intent.side,
                    intent.energy_wh,
                    intent.price_per_kwh,
                    Z,
                    k,
                    m.bus,
                )
            )
    return book


@pytest.mark.parametrize("quarter", [0, 2])
def test_community_books_welfare_at_least_greedy_and_deterministic(quarter: int) -> None:
    interval = INTERVAL - 4 + quarter  # 12:00 and 12:30
    book = community_book(interval)
    g = port("greedy").clear(interval, book)
    first = port().clear(interval, book)
    second = port().clear(interval, book)
    assert first.method == "optimal"
    assert first.trades == second.trades and first.evidence_hash == second.evidence_hash
    assert first.welfare >= g.welfare
    assert first.welfare <= clear(book, None).welfare  # no better than with no grid at all
    assert_well_formed(book, first)
    validator = GridValidator("cigre_lv")
    checker = PandapowerChecker(
        validator.base_net(interval, SECONDS), validator.limit_set(interval, SECONDS)
    )
    assert checker.check(injections(first)) is None


def test_bilateral_pairs_come_first() -> None:
    """A bilateral pair and a cheaper anonymous seller on the same weak bus compete for its
    headroom: the bilateral pair is decided first and filled in full."""
    seller, buyer = f"0x{1:040x}", f"0x{2:040x}"
    book = [
        order(1, SELL, 12_000, 40, 16, counterparty=buyer),
        order(2, BUY, 12_000, 45, 2, counterparty=seller),
        order(3, SELL, 40_000, 5, 16),
        order(4, BUY, 40_000, 60, 12),
    ]
    o = port().clear(INTERVAL, book)
    first, verdict = o.trades[0]
    assert (first.kind, first.energy_wh, first.price_per_kwh) == ("bilateral", 12_000, 42)
    assert verdict.approved
    assert any(c.kind == "auction" for c in o.approved)  # the rest of the headroom is sold
    assert runpp_check(o) is None
    assert_well_formed(book, o)


def test_do_no_harm_where_the_base_state_breaks_a_limit() -> None:
    """At 1.04 pu the 13:00 base state is already too high at the far buses: a sale from there
    is filled only as far as the buyer's consumption leaves those buses no higher than they
    were (runpp: no voltage above the limit or, where the base state was above, above the base
    state); the rest of the buyer's volume comes from the dearer seller near the transformer."""
    limits = {"vm_max_pu": 1.04}
    assert (
        GridValidator("cigre_lv", limits=Limits(**limits)).base_state(INTERVAL, SECONDS).vm_max_pu
        > 1.04
    )
    book = [order(1, SELL, 20_000, 10, 16), order(2, SELL, 20_000, 30, 24),
            order(3, BUY, 20_000, 60, 2)]  # fmt: skip
    o = port(**limits).clear(INTERVAL, book)
    assert o.method == "optimal"
    sold = Counter[int]()
    for c in o.approved:
        sold[c.sell.bus] += c.energy_wh
    assert 0 < sold[16] < 20_000
    assert o.welfare >= greedy(book, **limits).welfare
    assert runpp_check(o, **limits) is None
    assert o.traded_wh == 20_000  # the buyer is filled: the rest comes from the dearer bus 24


def test_a_grid_without_a_solution_falls_back_to_greedy() -> None:
    """A base state with no power-flow solution: the program cannot start, the greedy clearing
    decides (every trade NOT_CONVERGED) and the clearing says why."""
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, 0.4)
    b1 = pp.create_bus(net, 0.4)
    pp.create_ext_grid(net, b0)
    pp.create_line(net, b0, b1, 1.0, "NAYY 4x50 SE")
    pp.create_load(net, b1, p_mw=5.0)  # 5 MW over a kilometre of LV cable
    adapter = GridPortAdapter(
        "custom", SECONDS, validator=GridValidator(net, add_pv=False), clearing="optimal"
    )
    book = [order(1, SELL, 1_000, 10, b1), order(2, BUY, 1_000, 20, b0)]
    result = adapter.clear(INTERVAL, book)
    assert result.method.startswith("greedy (fallback: ")
    assert [d.reason for _, d in result.trades] == ["NOT_CONVERGED"]


def test_pairs_without_a_spread_still_trade() -> None:
    """Bid = ask moves no welfare, yet the pair trades (as in the merit order): bilateral and
    anonymous, in full where the grid allows."""
    seller, buyer = f"0x{1:040x}", f"0x{2:040x}"
    book = [
        order(1, SELL, 2_000, 100, 24, counterparty=buyer),
        order(2, BUY, 2_000, 100, 2, counterparty=seller),
        order(3, SELL, 3_000, 80, 17),
        order(4, BUY, 3_000, 80, 12),
    ]
    o = port().clear(INTERVAL, book)
    assert o.method == "optimal" and o.welfare == 0
    assert sorted((c.kind, c.energy_wh) for c in o.approved) == [
        ("auction", 3_000), ("bilateral", 2_000)
    ]  # fmt: skip
