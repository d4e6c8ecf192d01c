"""The market validates an interval in the grid mode the chain had at its gate closure: islanded,
the village's battery empty at 07:00, every trade is vetoed ``ISLAND_BALANCE`` with the numbers of
the Neural Grid's own islanded validation; grid-connected, the same orders trade."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from backend.iot.control import StateOfCharge, registry_domain
from backend.iot.control_store import ControlStore
from backend.market.grid_port import GridPortAdapter
from backend.market.memory import MemoryLedger
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import ANVIL_KEYS
from grid.island import units_from_docs
from grid.validator import GridValidator
from grid.verdicts import Trade
from tests.backend.market.conftest import VALIDATOR_KEY, Signer

K = ANVIL_KEYS
DAY = 86400 * 20_000
SHORT_AT = DAY + 7 * 3600  # 07:00 UTC: interval 28 of the day, the island is short


def _market(store: Store, port: GridPortAdapter) -> tuple[Market, MemoryLedger, int]:
    ledger = MemoryLedger(start_time=SHORT_AT - 1800)  # the interval two ahead starts at 07:00
    for key, bus in ((K[1], 40), (K[2], 60)):
        ledger.add_participant(Account.from_key(key).address, bus, 100_000, 100_000, deposit=10**12)
    market = Market(store, ledger, port, VALIDATOR_KEY, MarketConfig(interval_seconds=900))
    interval = market.current_interval() + 2
    assert interval * 900 == SHORT_AT
    signer = Signer(market)
    for key, side, price in ((K[1], 0, 50), (K[2], 1, 90)):
        o = signer.order(key, side, 500, price, interval=interval)
        market.submit_order(o["message"], o["signature"])
    return market, ledger, interval


def test_islanded_interval_vetoed_island_balance(store: Store) -> None:
    port = GridPortAdapter("village_island", 900, clearing="greedy")
    market, ledger, interval = _market(store, port)
    ledger.grid_mode_now = 1  # the grid operator switched to islanded before gate closure
    market.close_interval(interval, force=True)
    ledger.grid_mode_now = 0  # a later switch does not change the interval's mode
    [trade] = market.trades(interval)
    assert (trade.verdict, trade.reason) == (8, "ISLAND_BALANCE")
    assert trade.element == "battery village-battery (bus 1)"
    assert trade.veto_value is not None and round(trade.veto_value, 2) == 26.93
    assert trade.veto_limit == 0.0
    assert market.clearing.mode_of(interval) == 1
    # stored with the clearing: a market started again on the same store (its memory empty)
    # clears the interval again in the mode it was first cleared in, not the chain's current one
    row = market.interval(interval)
    assert row.grid_mode == 1
    again = Market(store, ledger, port, VALIDATOR_KEY, MarketConfig(interval_seconds=900))
    assert again.clearing.mode_of(interval) == 1
    assert again.clearing.mode_of(interval + 1) == 0  # not cleared yet: the chain's mode


def test_grid_connected_interval_same_orders_trade(store: Store) -> None:
    port = GridPortAdapter("village_island", 900, clearing="greedy")
    market, _, interval = _market(store, port)
    market.close_interval(interval, force=True)
    [trade] = market.trades(interval)
    assert (trade.verdict, trade.reason, trade.energy_wh) == (0, "APPROVED", 500)
    assert market.clearing.mode_of(interval) == 0


def test_islanded_interval_runs_with_the_registered_units_and_reported_soc(
    store: Store, tmp_path: Path
) -> None:
    """The registry's battery and genset (a powerhouse participant at the LV busbar, bus 1) form
    the island instead of the network's own units: the battery's latest signed report (600 of
    800 kWh at 06:40) carries the 07:00 interval the village's own empty battery could not, so
    the same trade is approved; the units are in the evidence - a validator given the same
    units (``tegrid grid verify --units``) reproduces the batch's hash."""
    port = GridPortAdapter("village_island", 900, clearing="greedy")
    market, ledger, interval = _market(store, port)
    house, genset, second = (Account.create().address for _ in range(3))
    battery_key = "0x" + "4a" * 32
    battery = Account.from_key(battery_key).address
    ledger.add_participant(house, 1, 400_000, 400_000)
    # a home battery registered first (for flexibility): not the master, the largest one is
    ledger.register_device(second, house, 1, 1, -10_000, 10_000, 20_000)  # left out
    ledger.register_device(battery, house, 1, 1, -300_000, 250_000, 800_000)
    ledger.register_device(genset, house, 1, 5, 48_000, 160_000, 0)
    controls = ControlStore(f"sqlite:///{tmp_path / 'control.db'}")
    domain = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    at = SHORT_AT - 1200  # 06:40
    controls.record_socs([StateOfCharge(battery, 600_000, at).sign(battery_key, domain)])
    market.use_socs(controls)
    ledger.grid_mode_now = 1
    market.close_interval(interval, force=True)
    [trade] = market.trades(interval)
    assert (trade.verdict, trade.reason, trade.energy_wh) == (0, "APPROVED", 500)
    units = market.clearing.island_units(interval)
    assert units is not None
    # the battery with the most energy is the master (its report: 600 kWh from 06:45, interval
    # 27 of the day); the home battery is left out; the genset is dispatched
    assert [(u["device"], u["kind"]) for u in units] == [(battery, "battery"), (genset, "genset")]
    assert (units[0]["soc_kwh"], units[0]["soc_interval"], units[0]["max_kw"]) == (
        600.0, (SHORT_AT - 900) // 900, 250.0
    )  # fmt: skip
    controls.close()
    [batch] = market.store.batches(interval)
    validator = GridValidator("village_island", reuse=False, island=units_from_docs(units))
    again = validator.validate([Trade(trade.id, 40, 60, 2.0)], interval, 900, islanded=True)
    assert again.evidence_hash == batch.evidence_hash
