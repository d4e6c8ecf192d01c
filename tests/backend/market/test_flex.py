"""Devices and flexibility offers in the market over the in-memory ledger, on SQLite and (with
TEGRID_TEST_DATABASE_URL) PostgreSQL: the store's rules (nonce per provider, open offers per
provider and interval, cancel), the interval gate shared with orders."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account

from backend.market.errors import (
    ConflictError,
    IntervalClosedError,
    InvalidOrderError,
    NonceUsedError,
    TooManyOrdersError,
    WrongBusError,
)
from backend.market.memory import MemoryLedger
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import ANVIL_KEYS

from .conftest import VALIDATOR_KEY

K = ANVIL_KEYS


@pytest.fixture
def flex_market(store: Store, ledger: MemoryLedger) -> Market:
    cfg = MarketConfig(interval_seconds=900, max_orders_per_trader_interval=2)
    return Market(store, ledger, None, VALIDATOR_KEY, cfg)


def _sign(market: Market, primary: str, key: str, msg: dict[str, Any]) -> str:
    doc = {**market.template(primary), "message": msg}
    return "0x" + Account.sign_typed_data(key, full_message=doc).signature.hex().removeprefix("0x")


def _register(market: Market, owner_key: str, bus: int) -> str:
    device = Account.create()
    msg = {"owner": Account.from_key(owner_key).address, "device": device.address, "busId": bus,
           "kind": 1, "minW": -4000, "maxW": 4000, "capacityWh": 8000,
           "expiry": market.ledger.now() + 600}  # fmt: skip
    market.register_device(
        msg,
        _sign(market, "DeviceRegistration", owner_key, msg),
        _sign(market, "DeviceRegistration", device.key, msg),
    )
    return str(device.address)


def _offer(market: Market, key: str, device: str, interval: int, nonce: int) -> dict[str, Any]:
    msg = {"provider": Account.from_key(key).address, "device": device, "intervalId": interval,
           "direction": 0, "powerW": 2000, "baselineW": 0, "pricePerKWh": 90_000,
           "nonce": nonce, "expiry": interval * 900 + 3600}  # fmt: skip
    return {"message": msg, "signature": _sign(market, "FlexOffer", key, msg)}


def test_device_registration_is_stored_and_read_from_the_registry(flex_market: Market) -> None:
    device = _register(flex_market, K[1], 11)
    record, row = flex_market.devices.get(device.lower())
    assert (record.owner, record.bus_id, record.min_w, record.max_w, record.capacity_wh) == (
        Account.from_key(K[1]).address, 11, -4000, 4000, 8000
    )  # fmt: skip
    assert row is not None and row.hosting_export_w is None  # no grid: no capacity to check
    assert [r.device for r in flex_market.store.list_devices(record.owner, 10, 0)] == [device]
    with pytest.raises(WrongBusError, match="bus 11, not bus 12"):
        _register(flex_market, K[1], 12)


def test_offer_nonce_cap_cancel_and_closed_interval(flex_market: Market) -> None:
    m = flex_market
    device, second, third = (_register(m, K[2], 12) for _ in range(3))
    iv = m.current_interval() + 2
    first = m.submit_flex(**_offer(m, K[2], device, iv, 1))
    m.submit_flex(**_offer(m, K[2], second, iv, 2))
    with pytest.raises(TooManyOrdersError, match="2 open offers for interval"):
        m.submit_flex(**_offer(m, K[2], third, iv, 3))
    cancel = {"trader": first.provider, "orderHash": first.hash}
    doc = {**m.flex_template("Cancel"), "message": cancel}
    assert doc["domain"]["name"] == "tegrid FlexibilityMarket"
    signed = Account.sign_typed_data(K[2], full_message=doc).signature.hex().removeprefix("0x")
    assert m.cancel_flex(first.hash, "0x" + signed).status == "cancelled"
    m.submit_flex(**_offer(m, K[2], third, iv, 3))  # a cancelled offer frees its place ...
    with pytest.raises(NonceUsedError):  # ... not its nonce
        m.submit_flex(**_offer(m, K[2], device, iv + 1, 1))
    assert m.store.count_open_flex(first.provider, iv) == 2
    later = iv + 1
    m.intake.close_for_orders(later)  # the clearing closed it: offers are refused as orders are
    with pytest.raises(IntervalClosedError):
        m.submit_flex(**_offer(m, K[2], device, later, 9))
    assert [o.nonce for o in m.store.list_flex_offers(None, first.provider, None, 10, 0)] == [
        "1", "2", "3"
    ]  # fmt: skip


def test_one_offer_per_device_and_interval(flex_market: Market) -> None:
    """A device has one baseline per interval and its activations must stay within its limits
    together: a second offer of the same device for the same interval is refused (409) until
    the first is cancelled; another interval is free."""
    m = flex_market
    device = _register(m, K[3], 13)
    iv = m.current_interval() + 2
    first = m.submit_flex(**_offer(m, K[3], device, iv, 1))
    with pytest.raises(
        ConflictError, match=f"already has the offer {first.hash} for interval"
    ) as e:
        m.submit_flex(**_offer(m, K[3], device, iv, 2))
    assert (e.value.reason, e.value.field) == ("DEVICE_ALREADY_OFFERED", "device")
    assert m.store.count_open_flex(first.provider, iv) == 1
    m.submit_flex(**_offer(m, K[3], device, iv + 1, 3))
    cancel = {"trader": first.provider, "orderHash": first.hash}
    doc = {**m.flex_template("Cancel"), "message": cancel}
    signed = Account.sign_typed_data(K[3], full_message=doc).signature.hex().removeprefix("0x")
    m.cancel_flex(first.hash, "0x" + signed)
    assert m.submit_flex(**_offer(m, K[3], device, iv, 4)).status == "open"


def test_genset_registers_with_a_minimum_load_and_never_consumes(flex_market: Market) -> None:
    """Kind 5 (genset): ``minW`` is its minimum stable load (>= 0) and it has no capacity; a
    negative ``minW`` is refused before any transaction, naming the field."""
    owner_key = K[3]
    owner = Account.from_key(owner_key).address

    def register(min_w: int) -> str:
        device = Account.create()
        msg = {"owner": owner, "device": device.address, "busId": 13, "kind": 5, "minW": min_w,
               "maxW": 16_000, "capacityWh": 0,
               "expiry": flex_market.ledger.now() + 600}  # fmt: skip
        flex_market.register_device(
            msg,
            _sign(flex_market, "DeviceRegistration", owner_key, msg),
            _sign(flex_market, "DeviceRegistration", device.key, msg),
        )
        return str(device.address)

    with pytest.raises(InvalidOrderError, match="a genset cannot consume: minW -1 W") as err:
        register(-1)
    assert err.value.field == "minW"
    genset = register(4_800)
    record, _row = flex_market.devices.get(genset)
    assert (record.kind, record.min_w, record.max_w, record.capacity_wh) == (5, 4_800, 16_000, 0)
    assert [d.device for d in flex_market.ledger.grid_forming_devices()] == [genset]
