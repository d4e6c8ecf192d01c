"""The demo's energy community: households with PV, households without, a few with batteries,
some with a controllable device (a battery, an EV charger or a heat pump) offering flexibility.

Every member has its own wallet key and meter key (derived from the seed, so a run is repeatable),
sits on a load bus of the network, and decides each interval what to offer or bid from the same
daily shapes the Neural Grid uses (``grid.profiles``): a PV household sells its forecast surplus, a
household without PV buys its forecast demand, a battery household sells at the evening peak and
buys at midday. Prices are limit prices in token base units per kWh (the token has 6 decimals).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace

from eth_utils import keccak

from backend.chain.protocol import DEVICE_BATTERY, FLEX_DOWN, FLEX_UP, TOKEN_UNIT
from backend.iot.signing import address_of
from grid import profiles

PV = "pv"
CONSUMER = "consumer"
BATTERY = "battery"
KINDS = (PV, CONSUMER, BATTERY)


@dataclass(frozen=True)
class Member:
    """One prosumer: wallet, meter, bus and the size of its load, PV and battery."""

    name: str
    kind: str
    wallet_key: str
    meter_key: str
    bus: int
    load_peak_kw: float
    pv_peak_kw: float
    battery_kw: float
    ev_kw: float = 0.0  # EV / heat-pump charging power on top of the household load
    # A controllable device of its own (#17): 0 none, 1 battery, 2 EV charger, 3 heat pump; a
    # separate metering point with its own key (like a separately metered §14a EnWG device), so
    # the household meter never includes its power.
    device_kind: int = 0
    device_kw: float = 0.0
    device_key: str = ""

    @property
    def wallet(self) -> str:
        return _address_of(self.wallet_key)

    @property
    def meter(self) -> str:
        return _address_of(self.meter_key)

    @property
    def device(self) -> str:
        return _address_of(self.device_key)

    @property
    def max_export_w(self) -> int:
        return int(1000 * max(self.pv_peak_kw, self.battery_kw, self.device_kw, 1.0) * 1.2)

    @property
    def max_import_w(self) -> int:
        return int(1000 * (self.load_peak_kw + self.ev_kw + self.battery_kw + self.device_kw) * 1.2)

    @property
    def device_limits(self) -> tuple[int, int, int]:
        """The device's registry record: (minW, maxW, capacityWh). A battery charges and
        discharges at ``device_kw`` and holds three hours of it; a flexible load (EV charger,
        heat pump) only consumes."""
        power_w = int(1000 * self.device_kw)
        if self.device_kind == DEVICE_BATTERY:
            return -power_w, power_w, 3 * power_w
        return -power_w, 0, 0

    @property
    def device_baseline_w(self) -> int:
        """What the device runs at without activations: a battery idles, a flexible load draws
        three quarters of its power (what it can give up when activated)."""
        if self.device_kind == DEVICE_BATTERY:
            return 0
        return -int(750 * self.device_kw)


# The account address of a key (a secp256k1 multiplication and a keccak): memoized, the pipeline
# asks for members' addresses every interval.
_address_of = functools.lru_cache(maxsize=4096)(address_of)


def _key(seed: int, label: str) -> str:
    return "0x" + keccak(text=f"tegrid demo {seed} {label}").hex()


def build_community(buses: list[int], prosumers: int, seed: int) -> list[Member]:
    """``prosumers`` members on the load buses ``buses``, weakest first (the buses where the least
    export can be hosted, e.g. the far end of a long residential feeder).

    Half PV households, 35 % without PV (but with EV or heat-pump charging) and 15 % with a
    battery. PV households take the weak end of the list and the others the strong end, so a sunny
    midday pushes the weak feeder against its limits, as the demo is meant to show; with more
    members than buses, buses are shared.
    """
    if prosumers < 2:
        raise ValueError("the demo needs at least 2 prosumers")
    if not buses:
        raise ValueError("the network has no load buses to connect prosumers to")
    rng = random.Random(seed)
    n_pv = max(1, round(0.5 * prosumers))
    n_battery = round(0.15 * prosumers)
    kinds = [PV] * n_pv + [BATTERY] * n_battery + [CONSUMER] * (prosumers - n_pv - n_battery)
    rng.shuffle(kinds)
    weak, strong = 0, 0
    members = []
    for i, kind in enumerate(kinds):
        if kind == PV:
            bus = buses[weak % len(buses)]
            weak += 1
        else:
            bus = buses[-1 - strong % len(buses)]
            strong += 1
        members.append(
            Member(
                name=f"{kind}-{i:02d}",
                kind=kind,
                wallet_key=_key(seed, f"wallet {i}"),
                meter_key=_key(seed, f"meter {i}"),
                bus=int(bus),
                load_peak_kw=round(rng.uniform(3.0, 8.0), 1),
                pv_peak_kw=round(rng.uniform(40.0, 80.0), 1) if kind == PV else 0.0,
                battery_kw=round(rng.uniform(15.0, 30.0), 1) if kind == BATTERY else 0.0,
                ev_kw=rng.choice((22.0, 44.0, 88.0)) if kind == CONSUMER else 0.0,
            )
        )
    return with_devices(members, seed)


# Members with a controllable device: batteries at PV households (the weak buses, where charging
# at midday relieves the feeder), EV chargers and heat pumps at households without PV (the loaded
# buses).
BATTERY_SHARE = 0.5
FLEX_LOAD_SHARE = 0.125
EV_CHARGER, HEAT_PUMP = 2, 3


def with_devices(members: list[Member], seed: int) -> list[Member]:
    """``members`` with devices: the first ``BATTERY_SHARE`` of all members among the PV
    households (weakest buses first) get a battery of 20-40 kW, the first ``FLEX_LOAD_SHARE``
    among the households without PV an EV charger or a heat pump of 11-22 kW (a random stream of
    its own: the members themselves stay as they were)."""
    rng = random.Random(f"tegrid demo devices {seed}")
    n_battery = max(1, round(BATTERY_SHARE * len(members)))
    n_load = max(1, round(FLEX_LOAD_SHARE * len(members)))
    out = []
    for i, m in enumerate(members):
        kind, kw = 0, 0.0
        if m.kind == PV and n_battery > 0:
            kind, kw = DEVICE_BATTERY, round(rng.uniform(20.0, 40.0), 1)
            n_battery -= 1
        elif m.kind == CONSUMER and n_load > 0:
            kind = EV_CHARGER if n_load % 2 else HEAT_PUMP
            kw = round(rng.uniform(11.0, 22.0), 1)
            n_load -= 1
        if kind:
            m = replace(m, device_kind=kind, device_kw=kw, device_key=_key(seed, f"device {i}"))
        out.append(m)
    return out


@dataclass(frozen=True)
class Offer:
    """A device's flexibility offer for one interval (FlexOffer's fields less the names)."""

    direction: int
    power_w: int
    baseline_w: int
    price_per_kwh: int


def offer_for(member: Member, hour: float, rng: random.Random) -> Offer | None:
    """The offer ``member``'s device makes for an interval starting at ``hour``: a battery offers
    to charge (down) from 10 to 15 h, when the PV feeders export, and to discharge (up) at the
    evening peak; a flexible load offers to give up its consumption (up) all day. Prices: a
    battery 0.005-0.03 tokens per kWh, a flexible load 0.01-0.05 - below the gains of most trades
    they could rescue, above those of some."""
    if not member.device_kind:
        return None
    power_w = int(1000 * member.device_kw)
    if member.device_kind == DEVICE_BATTERY:
        price = int(TOKEN_UNIT * rng.uniform(0.005, 0.03))
        if 10.0 <= hour < 15.0:
            return Offer(FLEX_DOWN, power_w, 0, price)
        if hour >= 17.0:
            return Offer(FLEX_UP, power_w, 0, price)
        return None
    price = int(TOKEN_UNIT * rng.uniform(0.01, 0.05))
    return Offer(FLEX_UP, -member.device_baseline_w, member.device_baseline_w, price)


@dataclass(frozen=True)
class Intent:
    """What a member wants to trade in one interval."""

    side: int  # 0 sell, 1 buy
    energy_wh: int
    price_per_kwh: int


def intent_for(
    member: Member, hour: float, interval_hours: float, rng: random.Random
) -> Intent | None:
    """The order ``member`` places for an interval starting at ``hour`` (None: sits it out)."""
    load_kwh = member.load_peak_kw * profiles.household(hour) * interval_hours
    pv_kwh = member.pv_peak_kw * profiles.pv(hour) * interval_hours
    if member.kind == PV:
        surplus_wh = int(1000 * (pv_kwh - load_kwh) * rng.uniform(0.6, 1.0))
        if surplus_wh < 100:
            return None
        return Intent(0, surplus_wh, int(TOKEN_UNIT * rng.uniform(0.06, 0.14)))
    if member.kind == BATTERY:
        battery_kwh = member.battery_kw * interval_hours
        if 10.0 <= hour < 15.0:  # charge from the midday PV surplus
            return Intent(
                1, int(1000 * battery_kwh * rng.uniform(0.5, 0.9)), int(TOKEN_UNIT * 0.16)
            )
        if hour >= 17.0 or hour < 8.0:  # sell into the evening peak
            return Intent(
                0, int(1000 * battery_kwh * rng.uniform(0.5, 0.9)), int(TOKEN_UNIT * 0.18)
            )
        return None
    demand_wh = int(1000 * (load_kwh + member.ev_kw * interval_hours * rng.uniform(0.6, 1.0)))
    if demand_wh < 100:
        return None
    return Intent(1, demand_wh, int(TOKEN_UNIT * rng.uniform(0.10, 0.30)))
