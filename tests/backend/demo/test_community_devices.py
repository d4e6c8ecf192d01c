"""The demo community's devices and flexibility offers: who gets which device (seeded), what it
registers, what it offers at which hour, and the config's consent share."""

from __future__ import annotations

import random

import pytest

from backend.chain.protocol import DEVICE_BATTERY, FLEX_DOWN, FLEX_UP, TOKEN_UNIT
from backend.demo.community import (
    CONSUMER,
    EV_CHARGER,
    HEAT_PUMP,
    PV,
    build_community,
    offer_for,
)
from backend.demo.config import DemoConfig, DemoError

BUSES = list(range(1, 17))


def test_every_pv_household_gets_a_battery_and_two_others_a_flexible_load() -> None:
    members = build_community(BUSES, 16, 7)
    batteries = [m for m in members if m.device_kind == DEVICE_BATTERY]
    loads = [m for m in members if m.device_kind in (EV_CHARGER, HEAT_PUMP)]
    assert {m.kind for m in batteries} == {PV}
    assert len(batteries) == sum(1 for m in members if m.kind == PV) == 8
    assert {m.kind for m in loads} == {CONSUMER} and len(loads) == 2
    assert sorted(m.device_kind for m in loads) == [EV_CHARGER, HEAT_PUMP]
    assert all(20.0 <= m.device_kw <= 40.0 for m in batteries)
    assert all(11.0 <= m.device_kw <= 22.0 for m in loads)
    # own keys: the device is neither the wallet nor the meter, nor another member's device
    keys = [k for m in members for k in (m.wallet_key, m.meter_key, m.device_key) if k]
    assert len(keys) == len(set(keys)) == 16 * 2 + 10
    # devices on their own random stream: the members are those the seed always made
    again = build_community(BUSES, 16, 7)
    assert again == members
    without = [(m.name, m.bus, m.pv_peak_kw, m.load_peak_kw) for m in members]
    assert without == [(m.name, m.bus, m.pv_peak_kw, m.load_peak_kw) for m in again]


def test_registry_limits_and_baselines() -> None:
    members = build_community(BUSES, 16, 7)
    battery = next(m for m in members if m.device_kind == DEVICE_BATTERY)
    power = int(1000 * battery.device_kw)
    assert battery.device_limits == (-power, power, 3 * power)
    assert battery.device_baseline_w == 0
    load = next(m for m in members if m.device_kind == EV_CHARGER)
    power = int(1000 * load.device_kw)
    assert load.device_limits == (-power, 0, 0)
    assert load.device_baseline_w == -int(750 * load.device_kw)
    # the connection the member asks for carries its device
    assert battery.max_import_w >= int(1000 * battery.device_kw * 1.2)


def test_offers_by_hour() -> None:
    members = build_community(BUSES, 16, 7)
    battery = next(m for m in members if m.device_kind == DEVICE_BATTERY)
    load = next(m for m in members if m.device_kind == HEAT_PUMP)
    plain = next(m for m in members if not m.device_kind)
    rng = random.Random(1)
    midday = offer_for(battery, 13.0, rng)
    assert midday is not None
    assert (midday.direction, midday.power_w, midday.baseline_w) == (
        FLEX_DOWN, int(1000 * battery.device_kw), 0
    )  # fmt: skip
    assert TOKEN_UNIT * 0.005 <= midday.price_per_kwh <= TOKEN_UNIT * 0.03
    evening = offer_for(battery, 18.0, rng)
    assert evening is not None and evening.direction == FLEX_UP
    assert offer_for(battery, 16.0, rng) is None  # neither the PV surplus nor the peak
    up = offer_for(load, 13.0, rng)
    assert up is not None
    # gives up its baseline consumption: setpoint baseline + power = 0
    assert (up.direction, up.baseline_w + up.power_w) == (FLEX_UP, 0)
    assert offer_for(plain, 13.0, rng) is None


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_consent_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(DemoError, match="--remedy-consent must be between 0 and 1"):
        DemoConfig(remedy_consent_share=share).validate()
