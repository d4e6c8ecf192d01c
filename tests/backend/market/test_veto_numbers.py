"""A veto's binding value and limit travel from the Neural Grid through the clearing into the store
and the API's trade, unchanged; stores written before these columns existed get them."""

from __future__ import annotations

from collections.abc import Sequence

from eth_account import Account
from sqlalchemy import text

from backend.api.convert import trade_out
from backend.chain import protocol
from backend.market.auction import BookOrder, Clearing
from backend.market.grid_port import GridPortAdapter
from backend.market.memory import MemoryLedger
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import ANVIL_KEYS
from grid import GridValidator, Limits, Reason, Trade
from tests.backend.market.conftest import VALIDATOR_KEY, Signer

K = ANVIL_KEYS
DAY = 86400 * 20_000
VM_MAX_PU = 1.06


class ObservedPort(GridPortAdapter):
    """The real grid port; keeps the last clearing it answered (candidates in priority order)."""

    last: Clearing

    def clear(self, interval_id: int, book: Sequence[BookOrder]) -> Clearing:
        self.last = super().clear(interval_id, book)
        return self.last


def test_each_veto_keeps_the_validators_value_and_limit(store: Store) -> None:
    # 12:30 UTC now: the interval two ahead starts at 13:00, the sunniest (highest voltages)
    ledger = MemoryLedger(start_time=DAY + 12 * 3600 + 1800)
    buses = {K[1]: 43, K[2]: 42, K[3]: 16, K[4]: 2, K[5]: 12}  # sellers far out, buyers near
    for key, bus in buses.items():
        ledger.add_participant(Account.from_key(key).address, bus, 100_000, 100_000, deposit=10**12)
    # The greedy clearing: whole pairs in merit order, so pairs past the voltage limit are
    # vetoed (the optimal clearing fills within the limit and leaves no such veto).
    port = ObservedPort("cigre_lv", 900, limits={"vm_max_pu": VM_MAX_PU}, clearing="greedy")
    market = Market(store, ledger, port, VALIDATOR_KEY, MarketConfig(interval_seconds=900))
    signer = Signer(market)
    interval = market.current_interval() + 2
    for key, side, wh, price in [
        (K[1], 0, 15_000, 50),  # 60 kW from the far end: too high a voltage at 1.06 pu
        (K[2], 0, 15_000, 60),
        (K[3], 0, 10_000, 70),
        (K[4], 1, 20_000, 90),
        (K[5], 1, 20_000, 95),
    ]:
        o = signer.order(key, side, wh, price, interval=interval)
        market.submit_order(o["message"], o["signature"])
    market.close_interval(interval, force=True)

    decided = port.last.trades
    vetoes = [(c, d) for c, d in decided if not d.approved]
    assert vetoes and all(d.reason == "VOLTAGE_HIGH" for _, d in vetoes)
    rows = {t.id: t for t in market.trades(interval)}
    assert len(rows) == len(decided)
    # the same list from scratch, on a validator of our own with the same band
    fresh = GridValidator("cigre_lv", limits=Limits(vm_max_pu=VM_MAX_PU)).validate(
        [
            Trade(
                protocol.trade_id_hex(c.sell.hash, c.buy.hash),
                c.sell.bus,
                c.buy.bus,
                c.energy_wh / 0.25 / 1000,
            )
            for c, _ in decided
        ],
        interval=interval,
    )
    for (c, _), verdict in zip(decided, fresh.verdicts, strict=True):
        row = rows[protocol.trade_id_hex(c.sell.hash, c.buy.hash)]
        out = trade_out(row)
        assert (row.reason, row.element) == (verdict.reason.name, verdict.element)
        assert (row.veto_value, row.veto_limit) == (verdict.value, verdict.limit)
        assert (out.vetoValue, out.vetoLimit) == (verdict.value, verdict.limit)
        if verdict.reason is Reason.VOLTAGE_HIGH:
            assert verdict.limit == VM_MAX_PU and verdict.value is not None
            assert verdict.value > VM_MAX_PU
        else:
            assert (out.vetoValue, out.vetoLimit, out.approved) == (None, None, True)


def test_store_adds_the_veto_columns_to_an_older_store(store_url: str) -> None:
    Store(store_url).close()
    old = Store(store_url)
    with old.engine.begin() as conn:  # the trades table as it was before the veto columns
        conn.execute(text("ALTER TABLE trades DROP COLUMN veto_value"))
        conn.execute(text("ALTER TABLE trades DROP COLUMN veto_limit"))
        conn.execute(
            text(
                "INSERT INTO trades (id, interval_id, position, kind, sell_hash, buy_hash,"
                " seller, buyer, seller_bus, buyer_bus, energy_wh, price_per_kwh, verdict,"
                " reason, element, status) VALUES ('0x01', 7, 0, 'auction', '0xa', '0xb',"
                " '0xs', '0xb', 1, 2, 1000, '5', 1, 'VOLTAGE_HIGH', 'bus 3', 'pending')"
            )
        )
    old.close()
    store = Store(store_url)
    try:
        [row] = store.trades(7)
        assert (row.reason, row.veto_value, row.veto_limit) == ("VOLTAGE_HIGH", None, None)
        Store(store_url).close()  # opening again finds the columns there
    finally:
        store.close()
