"""Remedies after the optimal clearing (cigre_lv, 20:00, the real Neural Grid): the program fills
the evening's trades up to trafo 0's limit; with flexibility offers the top-up also offers the
volume it left, and the pair the grid refuses there (``Clearing.refused``, never in the batch) is
the remedy's candidate. A rescue that takes two activations splits each one's cost by
FlexibilityMarket's own rule (``_checkShares``), which the chain checks activation by activation."""

from __future__ import annotations

import pytest

from backend.chain import protocol
from backend.market.activations import FlexInput, FlexOption, PayerFunds
from backend.market.auction import BookOrder
from backend.market.grid_port import GridPortAdapter

Z = protocol.ZERO_ADDRESS
S1, S2, B1, B2 = ("0x" + tag * 20 for tag in ("a1", "a2", "b1", "b2"))
INTERVAL = 80  # 20:00, the residential evening peak
# 40 kWh from the commercial LV root (bus 24) to the residential one (bus 2): more than trafo 0
# carries on top of the evening's load.
BOOK = [
    BookOrder("0x" + "01" * 32, S1, protocol.SELL, 20_000, 100, Z, 1, 24),
    BookOrder("0x" + "02" * 32, S2, protocol.SELL, 20_000, 110, Z, 2, 24),
    BookOrder("0x" + "03" * 32, B1, protocol.BUY, 20_000, 300, Z, 3, 2),
    BookOrder("0x" + "04" * 32, B2, protocol.BUY, 20_000, 290, Z, 4, 2),
]
FUNDS = {w: PayerFunds(100, 100_000) for w in (S1, S2, B1, B2)}
LEFT_PAIR = protocol.trade_id_hex("0x" + "02" * 32, "0x" + "04" * 32)  # S2 -> B2


def offer(tag: str, power_w: int, price: int, seq: int) -> FlexOption:
    """A battery at bus 16 (the residential feeder's end, behind trafo 0) offering to discharge."""
    return FlexOption("0x" + tag * 32, "0x" + "c" + tag * 19 + "c", "0x" + "d" + tag * 19 + "d",
                      16, protocol.FLEX_UP, power_w, 0, price, seq)  # fmt: skip


@pytest.fixture(scope="module")
def port() -> GridPortAdapter:
    return GridPortAdapter("cigre_lv", 900)


def _trades(result: object) -> list[tuple[str, str, int, bool]]:
    return [
        (c.sell.trader, c.buy.trader, c.energy_wh, d.approved)
        for c, d in result.trades  # type: ignore[attr-defined]
    ]


def test_without_offers_the_left_volume_is_not_offered_again(port: GridPortAdapter) -> None:
    result = port.clear(INTERVAL, BOOK)
    assert result.method == "optimal"
    assert _trades(result) == [
        (S1, B1, 9_601, True), (S1, B2, 10_399, True), (S2, B1, 10_399, True)
    ]  # fmt: skip
    assert (result.refused, result.activations) == ([], [])


def test_the_top_ups_refused_pair_is_rescued(port: GridPortAdapter) -> None:
    result = port.clear(INTERVAL, BOOK, FlexInput((offer("f1", 60_000, 50, 1),), FUNDS))
    # the optimal trades stand; S2's and B2's 9,601 Wh left, refused by trafo 0, rescued
    assert _trades(result) == [
        (S1, B1, 9_601, True), (S1, B2, 10_399, True), (S2, B1, 10_399, True),
        (S2, B2, 9_601, True),
    ]  # fmt: skip
    [(refused, decision)] = result.refused
    assert (refused.energy_wh, decision.reason, decision.element) == (
        9_601, "TRAFO_OVERLOAD", "trafo 0"
    )  # fmt: skip
    [act] = result.activations
    assert (act.trade_id, act.activated_w, act.cost) == (LEFT_PAIR, 35_214, 440)
    assert act.payers == ((S2, 220), (B2, 220))


def test_no_rescue_leaves_the_refused_pair_out_of_the_batch(port: GridPortAdapter) -> None:
    """Caps too small for the cost: the refused pair is not rescued and not recorded as a veto."""
    poor = {w: PayerFunds(1, 100_000) for w in FUNDS}
    result = port.clear(INTERVAL, BOOK, FlexInput((offer("f1", 60_000, 50, 1),), poor))
    assert len(result.refused) == 1
    assert _trades(result) == [
        (S1, B1, 9_601, True), (S1, B2, 10_399, True), (S2, B1, 10_399, True)
    ]  # fmt: skip
    assert result.activations == []


def test_each_activation_of_a_rescue_is_split_by_the_chains_rule(port: GridPortAdapter) -> None:
    """Two 20 kW offers: the rescue takes all of the cheaper and 15,214 W of the other. Each
    activation's seller share is floor(its cost / 2) - what FlexibilityMarket checks - not a
    pro-rata spread of the total's split (which gave the first 128 / 127 and was refused,
    FlexSharesMismatch)."""
    offers = (offer("f3", 20_000, 51, 1), offer("f4", 20_000, 53, 2))
    result = port.clear(INTERVAL, BOOK, FlexInput(offers, FUNDS))
    assert [(a.offer_hash, a.activated_w, a.cost, a.payers) for a in result.activations] == [
        (offers[0].hash, 20_000, 255, ((S2, 127), (B2, 128))),
        (offers[1].hash, 15_214, 201, ((S2, 100), (B2, 101))),
    ]
