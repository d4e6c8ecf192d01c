"""Remedies in the clearing with the real Neural Grid (cigre_lv, pandapower's own power flow as
the independent check): a vetoed trade rescued by a named activation of exact W, refused for
cost, caps, funds and a non-relieving offer; the DSO service within its budget; evidence that
the validator reproduces; determinism."""

from __future__ import annotations

import copy
import functools

import pandapower as pp
import pytest

from backend.chain import protocol
from backend.market.activations import (
    FlexInput,
    FlexOption,
    PayerFunds,
    PlannedActivation,
    activation_cost,
    device_setpoints,
    split_cost,
)
from backend.market.auction import BookOrder, Clearing
from backend.market.grid_port import GridPortAdapter
from backend.market.grid_process import GridProcess
from backend.market.remedy import RemedyStats, remedy
from grid import Activation, GridValidator
from grid.networks import quiet

Z = protocol.ZERO_ADDRESS
SELLER, BUYER = "0x" + "aa" * 20, "0x" + "bb" * 20
OPERATOR = "0x" + "99" * 20
# 20:00 (interval 80 of 900 s): the residential evening peak. 160 kW (40 kWh) from the commercial
# LV root (bus 24) to the residential one (bus 2) takes trafo 0 to ~110 %.
INTERVAL = 80
BOOK = [
    BookOrder("0x" + "01" * 32, SELLER, protocol.SELL, 40_000, 100, Z, 1, 24),
    BookOrder("0x" + "02" * 32, BUYER, protocol.BUY, 40_000, 300, Z, 2, 2),
]
TRADE_ID = protocol.trade_id_hex("0x" + "01" * 32, "0x" + "02" * 32)
GAIN = (300 - 100) * 40_000 // 1000  # 8,000 base units
ESCROW = protocol.escrow_of(40_000, 200)  # the greedy clearing's midpoint price: 8,000


def offer(tag: str, bus: int, power_w: int, price: int, seq: int, direction: int = 0) -> FlexOption:
    return FlexOption("0x" + tag * 32, "0x" + "c" + tag * 19 + "c", "0x" + "d" + tag * 19 + "d",
                      bus, direction, power_w, 0, price, seq)  # fmt: skip


RELIEVING = offer("f1", 16, 60_000, 50, 1)  # residential feeder end, behind trafo 0
ELSEWHERE = offer("f2", 22, 60_000, 10, 2)  # industrial feeder: cheaper, relieves nothing
FUNDS = {SELLER: PayerFunds(20, 10_000), BUYER: PayerFunds(20, 20_000)}


@pytest.fixture(scope="module")
def port() -> GridPortAdapter:
    return GridPortAdapter("cigre_lv", 900, clearing="greedy")


def run(port: GridPortAdapter, flex: FlexInput) -> tuple[Clearing, RemedyStats]:
    clearing = port.clear(INTERVAL, BOOK)
    return remedy(
        clearing,
        flex,
        functools.partial(port.operating_point, INTERVAL),
        functools.partial(port.validate_activations, INTERVAL),
        900,
        port.validator.limits,
    )


def test_without_flex_the_trade_is_vetoed_by_trafo_0(port: GridPortAdapter) -> None:
    result = port.clear(INTERVAL, BOOK)
    [(c, d)] = result.trades
    assert (c.energy_wh, c.price_per_kwh, d.reason, d.element) == (
        40_000, 200, "TRAFO_OVERLOAD", "trafo 0"
    )  # fmt: skip
    assert result.activations == []


def test_vetoed_trade_rescued_by_relieving_offer(port: GridPortAdapter) -> None:
    result, stats = run(port, FlexInput((RELIEVING, ELSEWHERE), FUNDS))
    [(c, d)] = result.trades
    assert (c.energy_wh, d.approved) == (40_000, True)
    [act] = result.activations
    assert (act.offer_hash, act.bus, act.direction, act.activated_w) == (
        RELIEVING.hash,
        16,
        0,
        35_212,  # the program's first point predicted from the state without the trade
    )
    assert (act.energy_wh, act.cost) == (8_803, 440)  # floor(35,212 x 900 / 3600), x 50 / 1000
    assert act.trade_id == TRADE_ID
    assert act.activation_id == protocol.activation_id_hex(RELIEVING.hash, TRADE_ID)
    assert act.payers == ((SELLER, 220), (BUYER, 220))
    assert act.setpoint_w == 35_212
    assert (stats.rescued, stats.candidates, stats.refused_grid) == (1, 1, 0)
    # The evidence is the validator's over the final list with the activation, reproducible by
    # a fresh validator (no shared caches), as `tegrid grid verify --activations` does.
    fresh = GridValidator("cigre_lv", reuse=False)
    trade = port._trades([c])
    placed = [Activation(act.activation_id, 16, 35.212, TRADE_ID)]  # applied right before it
    again = fresh.validate(trade, INTERVAL, 900, placed)
    assert again.evidence_hash == result.evidence_hash
    assert [v.approved for v in again.verdicts] == [True]
    # pandapower's own runpp of the base state + trade + activation: every limit held.
    net = fresh.base_net(INTERVAL, 900)
    net = copy.deepcopy(net)
    pp.create_sgen(net, 24, p_mw=0.160)
    pp.create_load(net, 2, p_mw=0.160)
    pp.create_sgen(net, 16, p_mw=0.035212)
    with quiet():
        pp.runpp(net)
    assert float(net.res_trafo.loading_percent[0]) < 100.0
    assert float(net.res_bus.vm_pu.min()) >= 0.9
    assert float(net.res_line.loading_percent.max()) <= 100.0


def test_rescue_refused_when_gain_does_not_exceed_cost(port: GridPortAdapter) -> None:
    dear = offer("f3", 16, 60_000, 1_000, 1)  # 8,803 Wh x 1,000 / 1000 = 8,803 > 8,000
    result, stats = run(port, FlexInput((dear,), FUNDS))
    assert [d.approved for _, d in result.trades] == [False]
    assert (result.activations, stats.refused_cost) == ([], 1)
    assert activation_cost(35_214, 1_000, 900) == (8_803, 8_803) and GAIN == 8_000


def test_rescue_refused_when_both_caps_are_zero(port: GridPortAdapter) -> None:
    funds = {SELLER: PayerFunds(0, 10_000), BUYER: PayerFunds(0, 20_000)}
    result, stats = run(port, FlexInput((RELIEVING,), funds))
    assert [d.reason for _, d in result.trades] == ["TRAFO_OVERLOAD"]
    assert (result.activations, stats.refused_cap, stats.programs) == ([], 1, 0)


def test_one_zero_cap_the_other_party_pays_all(port: GridPortAdapter) -> None:
    funds = {SELLER: PayerFunds(20, 10_000), BUYER: PayerFunds(0, 20_000)}
    result, _ = run(port, FlexInput((RELIEVING,), funds))
    [act] = result.activations
    assert act.payers == ((SELLER, 440), (BUYER, 0))  # seller cap 20 x 40 kWh = 800 >= 440


def test_rescue_refused_when_caps_cannot_cover(port: GridPortAdapter) -> None:
    funds = {SELLER: PayerFunds(5, 10_000), BUYER: PayerFunds(5, 20_000)}  # 200 + 200 < 440
    result, stats = run(port, FlexInput((RELIEVING,), funds))
    assert (result.activations, stats.refused_cap) == ([], 1)


def test_rescue_refused_when_a_payers_funds_are_short(port: GridPortAdapter) -> None:
    # The buyer's balance covers the trade's escrow (8,000) and 219 more: its share is 220.
    funds = {SELLER: PayerFunds(20, 10_000), BUYER: PayerFunds(20, ESCROW + 219)}
    result, stats = run(port, FlexInput((RELIEVING,), funds))
    assert (result.activations, stats.refused_funds) == ([], 1)
    funds = {SELLER: PayerFunds(20, 10_000), BUYER: PayerFunds(20, ESCROW + 220)}
    result, _ = run(port, FlexInput((RELIEVING,), funds))
    assert [a.payers for a in result.activations] == [((SELLER, 220), (BUYER, 220))]


def test_rescue_refused_when_the_offer_does_not_relieve(port: GridPortAdapter) -> None:
    result, stats = run(port, FlexInput((ELSEWHERE,), FUNDS))
    assert [d.reason for _, d in result.trades] == ["TRAFO_OVERLOAD"]
    assert (result.activations, stats.refused_grid) == ([], 1)


def test_same_book_same_activations_bit_for_bit(port: GridPortAdapter) -> None:
    flex = FlexInput((RELIEVING, ELSEWHERE), FUNDS)
    first, _ = run(port, flex)
    other = GridPortAdapter("cigre_lv", 900, clearing="greedy")
    second, _ = run(other, flex)
    assert first.activations == second.activations
    assert first.evidence_hash == second.evidence_hash


def test_the_port_clears_with_remedies(port: GridPortAdapter) -> None:
    result = port.clear(INTERVAL, BOOK, FlexInput((RELIEVING,), FUNDS))
    assert [d.approved for _, d in result.trades] == [True]
    assert [a.activated_w for a in result.activations] == [35_212]


# ---------------------------------------------------------------------- DSO service
@pytest.fixture(scope="module")
def strict_port() -> GridPortAdapter:
    # With a 0.93 pu floor the evening base state breaks a limit itself (bus 16 at 0.9259).
    return GridPortAdapter("cigre_lv", 900, clearing="greedy", limits={"vm_min_pu": 0.93})


def test_dso_service_buys_the_base_state_back_within_limits(strict_port: GridPortAdapter) -> None:
    assert strict_port.validator.base_state(INTERVAL).vm_min_pu == pytest.approx(0.92587, abs=1e-5)
    flex = FlexInput((RELIEVING, ELSEWHERE), {OPERATOR: PayerFunds(0, 50_000)}, OPERATOR, 100)
    result = strict_port.clear(INTERVAL, [], flex)
    [act] = result.activations
    assert (act.bus, act.activated_w, act.energy_wh, act.cost) == (16, 4_629, 1_157, 57)
    assert act.trade_id == protocol.ZERO_BYTES32
    assert act.payers == ((OPERATOR, 57),)
    net = copy.deepcopy(strict_port.validator.base_net(INTERVAL, 900))
    pp.create_sgen(net, 16, p_mw=0.004629)
    with quiet():
        pp.runpp(net)
    assert float(net.res_bus.vm_pu.min()) >= 0.93


def test_dso_service_buys_nothing_over_budget_or_when_off(strict_port: GridPortAdapter) -> None:
    for budget, funds in ((56, 50_000), (0, 50_000), (100, 56)):
        flex = FlexInput((RELIEVING,), {OPERATOR: PayerFunds(0, funds)}, OPERATOR, budget)
        assert strict_port.clear(INTERVAL, [], flex).activations == []


# ---------------------------------------------------------------------- the integer rules
def test_split_cost_rules() -> None:
    rich = PayerFunds(10, 10**9)
    assert split_cost(441, 40_000, rich, rich) == (220, 221)
    # Caps: 10 x 40 kWh = 400, 1 x 40 kWh = 40; the other party pays the rest within its own.
    assert split_cost(431, 40_000, PayerFunds(1, 10**9), rich) == (40, 391)
    assert split_cost(431, 40_000, rich, PayerFunds(1, 10**9)) == (391, 40)
    assert split_cost(441, 40_000, PayerFunds(1, 10**9), rich) == "cap"
    assert split_cost(801, 40_000, rich, rich) == "cap"
    assert split_cost(441, 40_000, rich, PayerFunds(10, 320), 0, 100) == "funds"  # 221 > 220
    assert split_cost(441, 40_000, rich, PayerFunds(10, 321), 0, 100) == (220, 221)
    assert split_cost(0, 40_000, PayerFunds(0, 0), PayerFunds(0, 0)) == (0, 0)


def test_the_worker_process_clears_with_the_same_remedies() -> None:
    worker = GridProcess("cigre_lv", 900, clearing="greedy")
    try:
        flex = FlexInput((RELIEVING, ELSEWHERE), FUNDS)
        remote = worker.clear(INTERVAL, BOOK, flex)
    finally:
        worker.close()
    local = GridPortAdapter("cigre_lv", 900, clearing="greedy").clear(INTERVAL, BOOK, flex)
    assert [a.activated_w for a in remote.activations] == [35_212]
    assert remote.activations == local.activations
    assert remote.evidence_hash == local.evidence_hash


def test_device_setpoints_add_every_activation_of_a_device() -> None:
    """A control action's setpoint replaces the device's earlier one: each activation of a device
    carries the device's whole target (baseline moved by all its activations of the interval)."""

    def planned(aid: str, device: str, direction: int, w: int, baseline: int) -> PlannedActivation:
        return PlannedActivation(aid, "0x" + "11" * 32, "0x" + "cc" * 20, device, 16, direction, w,
                                 baseline, 50, "0x" + "22" * 32, 0, 0, ())  # fmt: skip

    a, b = "0x" + "aa" * 20, "0x" + "bb" * 20
    acts = [planned("1", a, protocol.FLEX_UP, 3_000, -1_000),
            planned("2", b, protocol.FLEX_DOWN, 2_500, 4_000),
            planned("3", a, protocol.FLEX_UP, 1_500, -1_000)]  # fmt: skip
    assert device_setpoints(acts) == {a: -1_000 + 3_000 + 1_500, b: 4_000 - 2_500}
    assert [x.setpoint_w for x in acts] == [2_000, 1_500, 500]  # one activation alone
    assert device_setpoints([]) == {}
