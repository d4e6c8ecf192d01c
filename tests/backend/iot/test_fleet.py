"""The meter fleet of ``tegrid meters simulate``: buses and wallets from the registry (every
meter it cannot back reported in one line), the market's trades metered on top of the
households."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from backend.chain.registry import MeterOwner
from backend.iot.errors import IotError
from backend.iot.fleet import MarketTrades, MeterFleet, positions_from_trades
from backend.iot.meters import Deviations, MeterSimulator, Position, dev_meters, physical_energy_wh
from backend.iot.schema import parse_reading
from backend.iot.signing import ReadingDomain
from backend.net import free_port
from tests.backend.iot.test_meters import Recorder

DOMAIN = ReadingDomain(31337, "0x" + "aa" * 20)
W = ["0x" + f"{i:02x}" * 20 for i in range(1, 6)]  # wallets (checksum-neutral: digits only)
NIGHT = 8  # interval 8 of 900 s: 02:00 UTC, no PV


def _trade(seller: str, buyer: str, wh: int, **over: Any) -> dict[str, Any]:
    base = {"intervalId": NIGHT, "seller": seller, "buyer": buyer, "energyWh": wh,
            "approved": True, "status": "recorded"}  # fmt: skip
    return {**base, **over}


def test_positions_count_approved_trades_on_chain_only() -> None:
    meter_of = {W[0]: "0xM0", W[1]: "0xM1", W[2]: "0xM2"}
    trades = [
        _trade(W[0], W[1], 1000),
        _trade(W[0], W[2], 250, status="settled"),
        _trade(W[2], W[0], 100),  # W[0] buys as well as sells: both count
        _trade(W[0], W[1], 5000, approved=False),  # vetoed
        _trade(W[0], W[1], 7000, status="pending"),  # never reached the chain
        _trade(W[0], W[1], 9000, intervalId=NIGHT + 1),  # another interval
        _trade(W[3], W[4], 600),  # neither party has a meter here
    ]
    assert positions_from_trades(trades, meter_of, NIGHT) == {
        ("0xM0", NIGHT): Position(1250, 100),
        ("0xM1", NIGHT): Position(0, 1000),
        ("0xM2", NIGHT): Position(100, 250),
    }


class Registry:
    """The registry's answers, changed by the test between looks."""

    def __init__(self, owners: dict[str, MeterOwner]) -> None:
        self.state = owners
        self.looks = 0

    def __call__(self, meters: Sequence[str]) -> dict[str, MeterOwner]:
        self.looks += 1
        return {m: self.state.get(m, MeterOwner(m)) for m in meters}


def test_registry_gives_buses_and_wallets_and_reports_what_it_cannot_back() -> None:
    meters = dev_meters(4)
    ok, moved, inactive, unknown = (m.address for m in meters)
    registry = Registry({
        ok: MeterOwner(ok, W[0], 1, True),  # the bus it states
        moved: MeterOwner(moved, W[1], 17, True),
        inactive: MeterOwner(inactive, W[2], 3, False),
    })  # fmt: skip
    said: list[str] = []
    fleet = MeterFleet(
        MeterSimulator(meters, DOMAIN, Recorder(), 900), registry, None, said.append,
        stated_buses=True,
    )  # fmt: skip
    fleet.sync_registry()
    assert said == [
        "registry: 2 of 4 meters belong to active participants (their buses and wallets come "
        "from the registry)",
        f"warning: meter {moved} announces bus 2, but the registry connects its participant "
        f"{W[1]} at bus 17: the registry's bus counts",
        f"warning: meter {inactive} belongs to participant {W[2]}, which is inactive: "
        "MeterReadings refuses its readings",
        f"warning: meter {unknown} is not registered: no participant has this meter key, so "
        "MeterReadings refuses its readings",
    ]
    # the stated buses stay what the meters announce (the oracle reports the mismatch as well)
    assert [(m.bus, m.wallet) for m in fleet.sim.meters] == [
        (1, W[0]), (2, W[1]), (3, W[2]), (4, meters[3].wallet)
    ]  # fmt: skip
    said.clear()
    fleet.sync_registry()  # nothing changed: nothing said
    assert said == [] and registry.looks == 2
    registry.state[unknown] = MeterOwner(unknown, W[3], 4, True)
    fleet.sync_registry()
    assert said == [
        "registry: 3 of 4 meters belong to active participants (their buses and wallets come "
        "from the registry)"
    ]


def test_dev_meters_take_the_registry_bus_without_a_warning() -> None:
    meters = dev_meters(1)
    registry = Registry({meters[0].address: MeterOwner(meters[0].address, W[0], 35, True)})
    said: list[str] = []
    fleet = MeterFleet(MeterSimulator(meters, DOMAIN, Recorder(), 900), registry, None, said.append)
    fleet.sync_registry()
    assert said == [
        "registry: 1 of 1 meters belong to active participants (their buses and wallets come "
        "from the registry)"
    ]
    assert fleet.sim.meters[0].bus == 35


def test_published_readings_carry_the_traded_energy() -> None:
    buyer, seller, idle = dev_meters(3)  # meter 1 (the seller) has no PV
    assert seller.address < buyer.address  # the report lists meters by address
    registry = Registry({
        m.address: MeterOwner(m.address, W[i], 10 + i, True)
        for i, m in enumerate((buyer, seller, idle))
    })  # fmt: skip
    trades = {NIGHT: [_trade(W[1], W[0], 1000)]}
    rec = Recorder()
    fleet = MeterFleet(
        MeterSimulator([buyer, seller, idle], DOMAIN, rec, 900, Deviations(under_delivery=0.5)),
        registry,
        lambda i: trades.get(i, []), lambda _line: None,
    )  # fmt: skip
    fleet.sync_registry()
    report = fleet.publish(NIGHT)
    readings = {r.meter: r for r in (parse_reading(p).reading for _t, p in rec.sent)}

    def own_import(spec: Any) -> int:
        return round(physical_energy_wh(spec, NIGHT, 900)[0])

    assert (readings[seller.address].import_wh, readings[seller.address].export_wh) == (
        own_import(seller), 500
    )  # fmt: skip
    assert (readings[buyer.address].import_wh, readings[buyer.address].export_wh) == (
        own_import(buyer) + 1000, 0
    )  # fmt: skip
    assert (readings[idle.address].import_wh, readings[idle.address].export_wh) == (
        own_import(idle), 0
    )  # fmt: skip
    assert fleet.sim.positions == {}  # signed and sent: not kept
    assert report.line(0.5) == (
        f"interval {NIGHT}: 3 readings published (0 missing, 0 held back to send late); "
        f"traded: {seller.address} sold 1000 Wh, exports 500 Wh of it; "
        f"{buyer.address} bought 1000 Wh, imports it"
    )
    rec.sent.clear()
    assert fleet.publish(NIGHT + 1).line() == (
        f"interval {NIGHT + 1}: 3 readings published (0 missing, 0 held back to send late); "
        "no trades"
    )


def test_market_trades_unreachable_is_one_readable_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    trades = MarketTrades(url, timeout_s=2)
    with pytest.raises(IotError) as err:
        trades.of_interval(5)
    trades.close()
    message = str(err.value)
    assert message.startswith(f"cannot read the trades of interval 5 from {url}: ")
    assert message.endswith("(is `tegrid serve` running there?)")
    assert "\n" not in message
