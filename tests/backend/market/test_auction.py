from __future__ import annotations

from collections.abc import Sequence

from backend.market.auction import BUY, SELL, BookOrder, Candidate, Decision, clear, uniform_price

Z = "0x" + "00" * 20


def o(name: str, side: int, wh: int, price: int, seq: int, bus: int = 1, cp: str = Z) -> BookOrder:
    return BookOrder("0x" + name * 64, "0x" + name * 40, side, wh, price, cp, seq, bus)


def test_uniform_price_is_midpoint_of_marginal_pair() -> None:
    book = [
        o("a", SELL, 1000, 10, 1),
        o("b", SELL, 1000, 20, 2),
        o("c", SELL, 1000, 40, 3),
        o("d", BUY, 1500, 35, 4),
        o("e", BUY, 1000, 25, 5),
    ]
    # merit order: a(10)->d(35) 1000, b(20)->d 500, b->e(25) 500; c(40) > 25 stops. marginal b/e.
    assert uniform_price(book) == (20 + 25) // 2
    result = clear(book)
    assert [
        (c.sell.hash[2], c.buy.hash[2], c.energy_wh, c.price_per_kwh) for c, _ in result.trades
    ] == [("a", "d", 1000, 22), ("b", "d", 500, 22), ("b", "e", 500, 22)]
    assert result.traded_wh == 2000 and result.offered_wh == 3000 and result.bid_wh == 2500


def test_bilateral_pairs_first_at_midpoint() -> None:
    a, d = "0x" + "a" * 40, "0x" + "d" * 40
    book = [
        o("a", SELL, 800, 30, 1, cp=d),
        o("b", SELL, 1000, 5, 2),
        o("d", BUY, 500, 50, 3, cp=a),
        o("e", BUY, 1000, 60, 4),
    ]
    result = clear(book)
    kinds = [
        (c.kind, c.sell.hash[2], c.buy.hash[2], c.energy_wh, c.price_per_kwh)
        for c, _ in result.trades
    ]
    assert kinds[0] == ("bilateral", "a", "d", 500, 40)
    # the bilateral sell's remaining 300 Wh never trades anonymously
    assert kinds[1:] == [("auction", "b", "e", 1000, 32)]


def test_vetoed_volume_goes_to_next_pair() -> None:
    book = [
        o("a", SELL, 1000, 10, 1, bus=1),
        o("b", SELL, 1000, 12, 2, bus=2),
        o("d", BUY, 1000, 30, 3, bus=5),
        o("e", BUY, 1000, 28, 4, bus=6),
    ]

    def validate(batch: Sequence[Candidate]) -> tuple[list[Decision], str]:
        # bus 1 -> bus 5 overloads a line; everything else is fine
        return [
            Decision(3, "LINE_OVERLOAD", "line 0")
            if (c.sell.bus, c.buy.bus) == (1, 5)
            else Decision(0)
            for c in batch
        ], "0x" + "ee" * 32

    result = clear(book, validate)
    got = [(c.sell.hash[2], c.buy.hash[2], c.energy_wh, d.reason_code) for c, d in result.trades]
    assert got[0] == ("a", "d", 1000, 3)
    assert ("b", "d", 1000, 0) in got and ("a", "e", 1000, 0) in got
    assert result.traded_wh == 2000 and result.vetoed_wh == 1000
    assert all(d.approved for _, d in result.trades[1:])
