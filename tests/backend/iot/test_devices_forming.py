"""A simulated battery that forms the island: after an applied mode action it runs the island's
residual load (``forming_w``) clamped to its limits and to what its state of charge can give or
take over the interval, and reports its state of charge signed; a genset starts at its minimum
load. The registry records are given as the registry returns them (``DeviceRecord``); the checks
against a real registry and broker are tests/e2e/test_mode_actions.py."""

from __future__ import annotations

import time
from collections.abc import Sequence

from backend.chain.registry import DeviceRecord
from backend.iot.control import ModeAction, parse_soc, registry_domain, soc_topic
from backend.iot.devices import DeviceFleet, DeviceSpec, dev_device_key
from backend.iot.signing import ReadingDomain
from backend.iot.transport import InProcessBroker, InProcessTransport, Message
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900
NOW = 1000 * INTERVAL_S + 10
DOMAIN = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
BATTERY = DeviceSpec(dev_device_key(300), min_w=-20_000, max_w=10_000, capacity_wh=8_000,
                     soc_wh=2_000)  # fmt: skip
GENSET = DeviceSpec(dev_device_key(301), kind=5, min_w=3_000, max_w=9_000, capacity_wh=0, soc_wh=0)


def _records(keys: Sequence[str]) -> dict[str, DeviceRecord]:
    specs = {s.address: s for s in (BATTERY, GENSET)}
    return {
        k: DeviceRecord(k, "0x" + "11" * 20, 1, specs[k].kind, True, specs[k].min_w,
                        specs[k].max_w, specs[k].capacity_wh)
        for k in keys
    }  # fmt: skip


def test_islanded_battery_follows_the_residual_load_within_power_and_charge() -> None:
    broker = InProcessBroker()
    transport = InProcessTransport(broker, "devices")
    want = {1001: 30_000, 1002: -40_000, 1003: 4_000}  # W the island asks of the battery
    fleet = DeviceFleet(
        [BATTERY, GENSET], DOMAIN, ReadingDomain(31337, "0x" + "22" * 20), transport, INTERVAL_S,
        lambda _signer: True, _records, lambda: NOW, forming_w=lambda _d, i: want.get(i),
    )  # fmt: skip
    fleet.sync_registry()
    reports: list[Message] = []
    listener = InProcessTransport(broker, "listener")
    listener.connect()
    listener.subscribe(soc_topic(BATTERY.address), reports.append)
    transport.connect()
    for n, spec in enumerate((BATTERY, GENSET)):
        action = ModeAction(bytes([n + 1]) * 32, spec.address, 1, 1001, NOW + 600)
        ack = fleet.decide(fleet.devices[spec.address], action.sign(ANVIL_KEYS[0], DOMAIN))
        assert ack.ack.status == 0
    battery, genset = fleet.devices[BATTERY.address], fleet.devices[GENSET.address]
    assert genset.power_w(1001) == 3_000 and genset.power_w(1000) == 0
    # 1001: 30 kW asked; 10 kW max power, 2,000 Wh = 8 kW over 15 min: 8 kW, the battery empty
    fleet.publish_readings(1001)
    assert (battery.power_w(1001), battery.soc_wh) == (8_000, 0)
    # 1002: 40 kW of charging asked; 20 kW charging limit, 8,000 Wh of room = 32 kW: 20 kW
    fleet.publish_readings(1002)
    assert (battery.power_w(1002), battery.soc_wh) == (-20_000, 5_000)
    # 1003: 4 kW: within both
    fleet.publish_readings(1003)
    assert (battery.power_w(1003), battery.soc_wh) == (4_000, 4_000)
    # 1000, before the switch: its baseline, nothing formed
    assert battery.power_w(1000) == 0 and 1000 not in battery.forming
    deadline = time.monotonic() + 5
    while len(reports) < 3 and time.monotonic() < deadline:  # delivered by the broker's thread
        time.sleep(0.01)
    transport.close()
    listener.close()
    socs = [parse_soc(m.payload, m.topic) for m in reports]
    assert [s.report.soc_wh for s in socs] == [0, 5_000, 4_000]
    assert all(s.signer(DOMAIN) == BATTERY.address for s in socs)
