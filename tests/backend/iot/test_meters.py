from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.iot.errors import IotError
from backend.iot.meters import (
    Deviations,
    MeterSimulator,
    MeterSpec,
    Position,
    dev_meters,
    load_meter_file,
    metered_energy_wh,
    physical_energy_wh,
)
from backend.iot.schema import parse_reading
from backend.iot.signing import ReadingDomain, recover_signer
from backend.iot.transport import InProcessBroker, InProcessTransport

DOMAIN = ReadingDomain(31337, "0x" + "aa" * 20)
NOON_900 = 48  # interval 48 of 900 s starts at 12:00 UTC


class Recorder:
    kind = "record"

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def connect(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.sent.append((topic, payload))

    def flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def subscribe(self, pattern: str, handler: object, qos: int = 1) -> None: ...

    def close(self) -> None: ...


def test_metered_energy_follows_grid_profiles() -> None:
    spec = MeterSpec("0x" + "01" * 32, 1, load_peak_kw=4.0, pv_peak_kw=8.0)
    load_wh, pv_wh = physical_energy_wh(spec, NOON_900, 900)
    from grid import profiles

    assert load_wh == pytest.approx(4.0 * profiles.household(12.0) * 250)
    assert pv_wh == pytest.approx(8.0 * profiles.pv(12.0) * 250)
    imp, exp = metered_energy_wh(spec, NOON_900, 900)
    assert imp == 0 and exp == round(pv_wh - load_wh)
    # selling 500 Wh more adds 500 Wh of export; under-delivering 40 % withholds 200 of it
    assert metered_energy_wh(spec, NOON_900, 900, sold_wh=500) == (0, exp + 500)
    assert metered_energy_wh(spec, NOON_900, 900, sold_wh=500, under_delivery=0.4) == (
        0,
        exp + 300,
    )
    night_imp, night_exp = metered_energy_wh(spec, 0, 900, bought_wh=300)
    assert night_exp == 0 and night_imp == round(physical_energy_wh(spec, 0, 900)[0]) + 300


def test_traded_energy_adds_to_the_own_balance_never_nets_against_it() -> None:
    """A seller that imports for its own load still exports all it sold, a buyer with a PV
    surplus still imports all it bought: the min-of-two settlement sees the trade delivered."""
    no_pv = MeterSpec("0x" + "02" * 32, 1, load_peak_kw=4.0)
    own_import = round(physical_energy_wh(no_pv, 0, 900)[0])
    assert own_import > 0
    assert metered_energy_wh(no_pv, 0, 900, sold_wh=1000) == (own_import, 1000)
    assert metered_energy_wh(no_pv, 0, 900, sold_wh=1000, under_delivery=0.5) == (own_import, 500)
    assert metered_energy_wh(no_pv, 0, 900, sold_wh=333, under_delivery=0.5) == (own_import, 166)
    sunny = MeterSpec("0x" + "03" * 32, 1, load_peak_kw=1.0, pv_peak_kw=8.0)
    own_export = metered_energy_wh(sunny, NOON_900, 900)[1]
    assert own_export > 0
    assert metered_energy_wh(sunny, NOON_900, 900, bought_wh=1000) == (1000, own_export)
    both = metered_energy_wh(no_pv, 0, 900, sold_wh=700, bought_wh=200)
    assert both == (own_import + 200, 700)


def test_simulator_meters_each_position() -> None:
    rec = Recorder()
    buyer, seller = dev_meters(2)  # meter 1 has no PV
    positions = {(buyer.address, 0): Position(0, 1000), (seller.address, 0): Position(400, 0)}
    sim = MeterSimulator([seller, buyer], DOMAIN, rec, 900, positions=positions)
    assert sim.reading_for(buyer, 0).import_wh == round(physical_energy_wh(buyer, 0, 900)[0]) + 1000
    assert sim.reading_for(seller, 0).export_wh == 400
    assert sim.reading_for(seller, 1).export_wh == 0  # no position in interval 1


def test_simulator_signs_every_reading_with_the_meter_key() -> None:
    rec = Recorder()
    meters = dev_meters(5)
    sim = MeterSimulator(meters, DOMAIN, rec, 900, clock=lambda: 1.0)
    stats = sim.publish_interval(NOON_900)
    assert stats.published == 5 and len(rec.sent) == 5
    for (topic, payload), spec in zip(rec.sent, meters, strict=True):
        signed = parse_reading(payload, topic)
        assert signed.sent_at == 1.0
        assert recover_signer(DOMAIN.separator(), signed.reading, signed.signature) == spec.address


def test_simulator_missing_and_late_readings() -> None:
    rec = Recorder()
    sim = MeterSimulator(
        dev_meters(50), DOMAIN, rec, 900, Deviations(missing=0.2, late=0.2, seed=3)
    )
    first = sim.publish_interval(10)
    assert first.missing > 0 and first.deferred > 0
    assert first.published + first.missing + first.deferred == 50
    second = sim.publish_interval(11)
    assert second.late_published == first.deferred
    assert sim.publish_remaining_late() == second.deferred


def test_simulator_overrides_and_announce() -> None:
    bus = InProcessBroker()
    got: list[str] = []
    sub = InProcessTransport(bus)
    sub.connect()
    sub.subscribe(
        "tegrid/meters/+/announce", lambda m: got.append(json.loads(m.payload)["address"])
    )
    pub = InProcessTransport(bus)
    pub.connect()
    meters = dev_meters(3, buses=[4, 5])
    sim = MeterSimulator(meters, DOMAIN, pub, 900, overrides={(meters[0].address, 9): (7, 8)})
    assert sim.reading_for(meters[0], 9).import_wh == 7
    assert sim.announce_all() == 3
    import time

    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [m.address for m in meters]
    assert [m.bus for m in meters] == [4, 5, 4]
    sub.close()
    pub.close()


def test_load_meter_file_checks_input(tmp_path: Path) -> None:
    good = tmp_path / "m.json"
    good.write_text(json.dumps([{"key": "0x" + "05" * 32, "bus": 3, "pv_peak_kw": 5}]))
    assert load_meter_file(good)[0].pv_peak_kw == 5.0
    for content in ("nope", "{}", '[{"bus": 1}]', '[{"key": "0x12", "bus": 1}]'):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(IotError):
            load_meter_file(bad)
    with pytest.raises(IotError):
        load_meter_file(tmp_path / "missing.json")
    with pytest.raises(IotError):
        Deviations(missing=1.5)
