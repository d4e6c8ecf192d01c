"""EnergyMarket imbalance settlement: each party's metered net position against its contracted one,
settled with the balancing account at the interval's short and long prices; debt when a short
party cannot pay, refused orders and withdrawals until it is paid; the grid operator's prices."""

from typing import Any

import brownie
import pytest
from conftest import (
    BALANCING_DEPOSIT,
    DEPOSIT,
    GATE_LEAD_S,
    LONG_BPS,
    PRICE,
    SHORT_BPS,
    DeployedLedger,
    err,
    ev,
    norm,
)

from backend.chain.batches import CandidateTrade
from backend.chain.protocol import BUY, SELL

HALF = DEPOSIT // 2


@pytest.fixture
def iv(ledger: DeployedLedger) -> int:
    return ledger.current_interval() + 2


def _pair(
    ledger: DeployedLedger, seller: Any, buyer: Any, iv: int, energy: int = 1000, nonce: int = 1
) -> CandidateTrade:
    sell = ledger.order(seller, SELL, iv, energy, 100_000, nonce)
    buy = ledger.order(buyer, BUY, iv, energy, 200_000, nonce)
    return ledger.trade(sell, buy, energy, PRICE)


def _read(ledger: DeployedLedger, iv: int, values: dict[Any, tuple[int, int]]) -> None:
    ledger.end_interval(iv)
    ledger.submit(iv, [ledger.reading(w, iv, imp, exp) for w, (imp, exp) in values.items()])


def _imbalance(tx: Any) -> dict[str, list[int]]:
    """account -> [contractedWh, meteredWh, payment, shortfall] of the ImbalanceSettled events."""
    out = {}
    for e in tx.events["ImbalanceSettled"]:
        assert e["account"] not in out, "one imbalance settlement per party"
        out[str(e["account"])] = norm(list(e.values())[2:])
    return out


def _conserved(ledger: DeployedLedger) -> None:
    """The market's tokens are exactly the internal balances, the balancing account's included."""
    a = ledger.a
    held = sum(sum(ledger.balance(a[i])) for i in (1, 5, 6, 7, 8, 9))
    assert held == ledger.token.balanceOf(ledger.market)


def test_settle_balanced_interval_moves_nothing(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])
    _read(ledger, iv, {parts.S1: (0, 1000), parts.B1: (1000, 0)})
    tx = ledger.settle(iv)
    assert _imbalance(tx) == {
        parts.S1.address: [1000, 1000, 0, 0],
        parts.B1.address: [-1000, -1000, 0, 0],
    }
    assert ev(tx, "IntervalImbalanceSettled") == [iv, PRICE, SHORT_BPS, LONG_BPS, 0, 0]
    assert ledger.balance(ledger.balancing) == (BALANCING_DEPOSIT, 0)
    _conserved(ledger)


def test_imbalance_of_a_prosumer_nets_import_and_export(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    """Net positions: S1 sold 1000 Wh and bought 400 (C = +600); it exported 900 and imported 500
    (M = +400): short 200 Wh. B1 bought 1000 and metered 1000 in, B2 sold 400 and exported 400."""
    t1 = _pair(ledger, parts.S1, parts.B1, iv)
    t2 = _pair(ledger, parts.B2, parts.S1, iv, 400, nonce=2)
    ledger.record(iv, [t1, t2])
    _read(
        ledger, iv, {parts.S1: (500, 900), parts.B1: (1000, 0), parts.B2: (0, 400)}
    )  # fmt: skip
    tx = ledger.settle(iv)
    # clearing price: every trade at PRICE; ceil(200 x 123457 x 1.5 / 1000) = ceil(37037.1)
    assert _imbalance(tx)[parts.S1.address] == [600, 400, -37_038, 0]
    assert ev(tx, "IntervalImbalanceSettled")[1:] == [PRICE, SHORT_BPS, LONG_BPS, 37_038, 0]
    _conserved(ledger)


def test_clearing_price_is_the_energy_weighted_average(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    """P = floor(sum(q x p) / sum(q)) over the interval's approved trades: (1000 x 100,000 +
    500 x 130,001) / 1500 = 110,000.33 -> 110,000. B2 imports 500 more than it bought: short,
    ceil(500 x 110,000 x 1.5 / 1000) = 82,500."""
    t1 = ledger.trade(
        ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1),
        ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1),
        1000,
        100_000,
    )
    t2 = ledger.trade(
        ledger.order(parts.S2, SELL, iv, 500, 100_000, 1),
        ledger.order(parts.B2, BUY, iv, 500, 200_000, 1),
        500,
        130_001,
    )
    ledger.record(iv, [t1, t2])
    _read(
        ledger,
        iv,
        {parts.S1: (0, 1000), parts.B1: (1000, 0), parts.S2: (0, 500), parts.B2: (1000, 0)},
    )
    tx = ledger.settle(iv)
    assert ev(tx, "IntervalImbalanceSettled")[1:] == [110_000, SHORT_BPS, LONG_BPS, 82_500, 0]
    assert _imbalance(tx)[parts.B2.address] == [-500, -1000, -82_500, 0]
    _conserved(ledger)


def test_owing_participant_refused_until_it_tops_up(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    """S1 sells 1000 Wh and delivers nothing: short 1000 Wh, 185,186 (ceil(185,185.5)). It holds
    only the trade's payment (123,457, credited by the same settle): that goes to the balancing
    account, the other 61,729 become S1's debt. Its orders and withdrawals are refused until a
    deposit pays the debt."""
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])
    ledger.market.withdraw(HALF, {"from": parts.S1})
    _read(ledger, iv, {parts.B1: (1000, 0)})
    ledger.end_interval(iv, 3600)  # S1's reading never comes: it counts as zero
    tx = ledger.settle(iv)
    assert _imbalance(tx)[parts.S1.address] == [1000, 0, -123_457, 61_729]
    assert ev(tx, "IntervalImbalanceSettled")[4:] == [123_457, 0]
    assert ledger.balance(parts.S1) == (0, 0)  # never negative
    assert ledger.market.debtOf(parts.S1) == 61_729
    assert ledger.balance(ledger.balancing) == (BALANCING_DEPOSIT + 123_457, 0)
    _conserved(ledger)

    with brownie.reverts(err("MarketAccountOwing", parts.S1.address, 61_729)):
        ledger.market.withdraw(1, {"from": parts.S1})
    with brownie.reverts(err("MarketNothingToRepay", parts.S1.address)):
        ledger.market.repayDebt({"from": parts.S1})
    nxt = ledger.current_interval() + 2
    # refused as a seller and as a buyer: the whole batch reverts with the exact error
    with brownie.reverts(err("MarketAccountOwing", parts.S1.address, 61_729)):
        ledger.record(nxt, [_pair(ledger, parts.S1, parts.B2, nxt)])
    with brownie.reverts(err("MarketAccountOwing", parts.S1.address, 61_729)):
        ledger.record(nxt, [_pair(ledger, parts.S2, parts.S1, nxt)])

    tx = ledger.market.deposit(50_000, {"from": parts.S1})  # part of the debt
    assert ev(tx, "DebtRepaid") == [parts.S1.address, 50_000, 11_729]
    assert ev(tx, "Deposited") == [parts.S1.address, 50_000]
    assert ledger.market.debtOf(parts.S1) == 11_729
    assert ledger.balance(parts.S1) == (0, 0)
    with brownie.reverts(err("MarketAccountOwing", parts.S1.address, 11_729)):
        ledger.record(nxt, [_pair(ledger, parts.S1, parts.B2, nxt)])
    tx = ledger.market.deposit(20_000, {"from": parts.S1})  # the rest, and 8,271 more
    assert ev(tx, "DebtRepaid") == [parts.S1.address, 11_729, 0]
    assert ledger.market.debtOf(parts.S1) == 0
    assert ledger.balance(parts.S1) == (8_271, 0)
    assert ledger.balance(ledger.balancing) == (BALANCING_DEPOSIT + 185_186, 0)
    ledger.record(nxt, [_pair(ledger, parts.S1, parts.B2, nxt, nonce=3)])  # trades again
    ledger.market.withdraw(8_271, {"from": parts.S1})
    _conserved(ledger)


def test_repay_debt_from_a_later_payment(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """S1 sold in two intervals, both recorded before the first settles. The first leaves it
    owing 61,729; the second pays it 123,457 (a payment to an owing account is credited as any
    other); repayDebt then pays the debt from that."""
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])
    later = iv + 1
    ledger.record(later, [_pair(ledger, parts.S1, parts.B2, later, nonce=2)])
    ledger.market.withdraw(HALF, {"from": parts.S1})
    _read(ledger, iv, {parts.S1: (0, 0), parts.B1: (1000, 0)})
    ledger.settle(iv)
    assert ledger.market.debtOf(parts.S1) == 61_729
    _read(ledger, later, {parts.S1: (0, 1000), parts.B2: (1000, 0)})
    ledger.settle(later)
    assert ledger.balance(parts.S1) == (123_457, 0)
    tx = ledger.market.repayDebt({"from": parts.S1})
    assert ev(tx, "DebtRepaid") == [parts.S1.address, 61_729, 0]
    assert ledger.balance(parts.S1) == (123_457 - 61_729, 0)
    assert ledger.market.debtOf(parts.S1) == 0
    with brownie.reverts(err("MarketNothingToRepay", parts.S1.address)):
        ledger.market.repayDebt({"from": parts.S1})
    _conserved(ledger)


def test_underfunded_balancing_account_pays_long_parties_pro_rata(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    """The balancing account holds nothing of its own: it pays the long parties only what the
    short ones paid it this interval (18,519 for S2's 100 Wh short), each the same share of what
    it is due - S1 (500 Wh long) floor(30,864 x 18,519 / 49,382) = 11,574, B2 (300 Wh long)
    floor(18,518 x 18,519 / 49,382) = 6,944; the 1 unit of rounding stays with it."""
    ledger.record(
        iv, [_pair(ledger, parts.S1, parts.B1, iv), _pair(ledger, parts.S2, parts.B2, iv)]
    )
    ledger.market.withdraw(BALANCING_DEPOSIT, {"from": ledger.balancing})
    _read(
        ledger,
        iv,
        {parts.S1: (0, 1500), parts.B1: (1000, 0), parts.S2: (0, 900), parts.B2: (700, 0)},
    )
    tx = ledger.settle(iv)
    assert _imbalance(tx) == {
        parts.S1.address: [1000, 1500, 11_574, 30_864 - 11_574],
        parts.B1.address: [-1000, -1000, 0, 0],
        parts.S2.address: [1000, 900, -18_519, 0],
        parts.B2.address: [-1000, -700, 6_944, 18_518 - 6_944],
    }
    assert ev(tx, "IntervalImbalanceSettled")[4:] == [18_519, 11_574 + 6_944]
    assert ledger.balance(ledger.balancing) == (1, 0)
    _conserved(ledger)


def test_missing_reading_earns_no_long_payment(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """B1 bought 1000 Wh and its reading never came: zero metered is +1000 against its position,
    but a missing reading is paid nothing (the seller's short is charged as usual)."""
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])
    _read(ledger, iv, {parts.S1: (0, 1000)})
    ledger.end_interval(iv, 3600)
    tx = ledger.settle(iv)
    assert _imbalance(tx)[parts.B1.address] == [-1000, 0, 0, 0]
    assert ev(tx, "IntervalImbalanceSettled")[4:] == [0, 0]
    _conserved(ledger)


def test_imbalance_settles_once_per_interval(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])
    _read(ledger, iv, {parts.S1: (0, 400), parts.B1: (1000, 0)})
    tx = ledger.settle(iv)
    assert len(tx.events["ImbalanceSettled"]) == 2
    before = ledger.balance(parts.S1), ledger.balance(ledger.balancing)
    with brownie.reverts(err("MarketIntervalSettled", iv)):
        ledger.settle(iv)
    assert (ledger.balance(parts.S1), ledger.balance(ledger.balancing)) == before


def test_only_the_grid_operator_sets_prices(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """The prices are the registry's grid operator's to change, within bounds; an interval keeps
    the prices of its first batch."""
    market = ledger.market
    assert tuple(market.imbalancePrices()) == (SHORT_BPS, LONG_BPS)
    assert market.balancingAccount() == ledger.balancing.address
    for who in (parts.X, parts.S1, ledger.admin, ledger.operator):
        with brownie.reverts(err("MarketNotGridOperator", who.address)):
            market.setImbalancePrices(20_000, 2_000, {"from": who})
    for short, long_ in ((9_999, 0), (100_001, 0), (20_000, 10_001)):
        with brownie.reverts(err("MarketInvalidImbalancePrices", short, long_)):
            market.setImbalancePrices(short, long_, {"from": ledger.dso})
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])
    tx = market.setImbalancePrices(20_000, 2_000, {"from": ledger.dso})
    assert ev(tx, "ImbalancePricesChanged") == [20_000, 2_000]
    assert tuple(market.imbalancePrices()) == (20_000, 2_000)
    later = iv + 1
    ledger.record(later, [_pair(ledger, parts.S2, parts.B2, later)])
    assert norm(market.intervalOf(iv))[7:] == [SHORT_BPS, LONG_BPS]  # traded before the change
    assert norm(market.intervalOf(later))[7:] == [20_000, 2_000]
    _read(ledger, iv, {parts.S1: (0, 0), parts.B1: (1000, 0)})
    tx = ledger.settle(iv)
    assert ev(tx, "IntervalImbalanceSettled")[2:4] == [SHORT_BPS, LONG_BPS]
    _read(ledger, later, {parts.S2: (0, 0), parts.B2: (1000, 0)})
    tx = ledger.settle(later)
    # 1000 Wh short at 2x: 1000 x 123457 x 2 / 1000 = 246,914
    assert ev(tx, "IntervalImbalanceSettled")[1:5] == [PRICE, 20_000, 2_000, 246_914]
    _conserved(ledger)


def test_deploy_refuses_bad_imbalance_config(ledger: DeployedLedger, EnergyMarket: Any) -> None:
    args = (ledger.token, ledger.registry, ledger.readings, 3600, GATE_LEAD_S)
    zero = "0x0000000000000000000000000000000000000000"
    with brownie.reverts(err("MarketInvalidConfig")):
        EnergyMarket.deploy(*args, zero, SHORT_BPS, LONG_BPS, {"from": ledger.admin})
    with brownie.reverts(err("MarketInvalidImbalancePrices", 5_000, 15_000)):
        EnergyMarket.deploy(*args, ledger.dso, 5_000, 15_000, {"from": ledger.admin})
