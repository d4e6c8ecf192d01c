"""Island balance remedies (#18) through the market's grid port: an islanded interval whose base
state is short of the master's power (the village at 07:00, battery empty: 26.93 kW short) has
every trade vetoed ``ISLAND_BALANCE``; with the DSO service on, the grid operator first buys the
cheapest activations that bring the master back within its limit, then the trades are judged on
that state. Checked against an independent pandapower ``runpp`` of the same island (the master
as the only slack), and the evidence against a fresh validator."""

from __future__ import annotations

import copy

import pandapower as pp
import pytest

from backend.chain import protocol
from backend.market.activations import FlexInput, FlexOption, PayerFunds
from backend.market.auction import BookOrder
from backend.market.grid_port import GridPortAdapter
from grid import GridValidator
from grid.networks import quiet

Z = protocol.ZERO_ADDRESS
SHORT = 20_000 * 96 + 28  # 07:00 UTC
SELLER, BUYER = "0x" + "aa" * 20, "0x" + "bb" * 20
OPERATOR = "0x" + "99" * 20
# 2 kWh (8 kW over 900 s) from bus 40 to bus 60.
BOOK = [
    BookOrder("0x" + "01" * 32, SELLER, protocol.SELL, 2_000, 100, Z, 1, 40),
    BookOrder("0x" + "02" * 32, BUYER, protocol.BUY, 2_000, 300, Z, 2, 60),
]


def offer(tag: str, bus: int, power_w: int, price: int, seq: int, direction: int) -> FlexOption:
    return FlexOption("0x" + tag * 32, "0x" + "c" + tag * 19 + "c", "0x" + "d" + tag * 19 + "d",
                      bus, direction, power_w, 0, price, seq)  # fmt: skip


# Two batteries that can discharge 20 kW each (up), and a cheaper one that can only charge
# (down: more consumption, the island shorter still - never bought).
OFFERS = (
    offer("f1", 40, 20_000, 50, 1, protocol.FLEX_UP),
    offer("f2", 60, 20_000, 60, 2, protocol.FLEX_UP),
    offer("f3", 3, 20_000, 10, 3, protocol.FLEX_DOWN),
)


def flex(budget: int) -> FlexInput:
    return FlexInput(OFFERS, {OPERATOR: PayerFunds(0, 10**9)}, OPERATOR, budget)


@pytest.fixture(scope="module")
def port() -> GridPortAdapter:
    port = GridPortAdapter("village_island", 900, clearing="greedy")
    port.set_mode(SHORT, True)
    return port


def island_net(port: GridPortAdapter, injections_kw: dict[int, float]) -> pp.pandapowerNet:
    """pandapower's own island (the validator's islanded base net: master as ext_grid, genset
    at its dispatch) with extra injections, solved."""
    net = copy.deepcopy(port.validator.base_net(SHORT, 900, islanded=True))
    for bus, p_kw in injections_kw.items():
        if p_kw >= 0:
            pp.create_sgen(net, bus, p_mw=p_kw / 1000.0)
        else:
            pp.create_load(net, bus, p_mw=-p_kw / 1000.0)
    with quiet():
        pp.runpp(net)
    return net


def master_kw(net: pp.pandapowerNet) -> float:
    return float(net.res_ext_grid.p_mw[net.ext_grid.in_service].sum() * 1000)


def test_short_island_vetoes_the_trade_without_flexibility(port: GridPortAdapter) -> None:
    for given in (None, flex(0)):
        result = port.clear(SHORT, BOOK, given)
        [(c, d)] = result.trades
        assert (c.energy_wh, d.approved, d.reason, d.limit) == (2_000, False, "ISLAND_BALANCE", 0.0)
        assert d.value is not None and round(d.value, 2) == 26.93
        assert result.activations == []
    # pandapower agrees: the trade on the island alone needs the empty battery's power
    assert master_kw(island_net(port, {40: 8.0, 60: -8.0})) > 26.9


def test_dso_service_balances_the_island_and_the_trade_passes(port: GridPortAdapter) -> None:
    short_kw = port.validator.island_state(SHORT, 900).forming_kw
    result = port.clear(SHORT, BOOK, flex(10_000))
    [(c, d)] = result.trades
    assert (c.energy_wh, d.approved) == (2_000, True)
    # The cheapest first: all of bus 40's 20 kW, the rest at bus 60; the charging offer never.
    bought = [(a.bus, a.direction, a.activated_w, a.energy_wh, a.cost) for a in result.activations]
    assert bought == [
        (40, protocol.FLEX_UP, 20_000, 5_000, 250),
        (60, protocol.FLEX_UP, 7_536, 1_884, 113),
    ]
    assert {a.trade_id for a in result.activations} == {protocol.ZERO_BYTES32}
    assert [a.payers for a in result.activations] == [((OPERATOR, 250),), ((OPERATOR, 113),)]
    # Worth at least the X kW the island was short (the losses they save aside).
    assert sum(a.activated_w for a in result.activations) / 1000 >= short_kw
    # pandapower's own island: the activations and the trade keep the master within its limits
    # (0 kW: the battery is empty; -300 kW charging), voltages and loadings inside.
    acts = {40: 20.0 + 8.0, 60: 7.536 - 8.0}
    net = island_net(port, acts)
    assert -300.0 <= master_kw(net) <= 0.0
    # ~1 kW of room (the service's headroom), less the trade's losses
    assert round(master_kw(net), 2) == -0.75
    assert float(net.res_bus.vm_pu.min()) >= 0.9
    assert float(net.res_bus.vm_pu.max()) <= 1.1
    assert float(net.res_line.loading_percent.fillna(0).max()) <= 100.0
    # ... and without them the master would have to give what the empty battery has not.
    assert master_kw(island_net(port, {40: 8.0, 60: -8.0})) > 0.0
    # The evidence is the islanded validation with the activations applied first, as a fresh
    # validator (and so `tegrid grid verify --islanded --activations`) recomputes it.
    fresh = GridValidator("village_island", reuse=False)
    again = fresh.validate(
        port._trades([c]), SHORT, 900, [a.grid() for a in result.activations], islanded=True
    )
    assert again.evidence_hash == result.evidence_hash
    assert [v.approved for v in again.activation_verdicts] == [True, True]


def test_dso_service_buys_nothing_over_budget(port: GridPortAdapter) -> None:
    result = port.clear(SHORT, BOOK, flex(362))  # the activations cost 363
    [(_, d)] = result.trades
    assert (d.approved, d.reason, result.activations) == (False, "ISLAND_BALANCE", [])


def test_grid_connected_interval_needs_no_island_service() -> None:
    connected = GridPortAdapter("village_island", 900, clearing="greedy")
    result = connected.clear(SHORT, BOOK, flex(10_000))
    [(_, d)] = result.trades
    assert (d.approved, result.activations) == (True, [])
