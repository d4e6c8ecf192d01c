from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account

from backend.iot.meters import MeterSimulator, dev_meters
from backend.iot.schema import SignedReading, readings_topic
from backend.iot.signing import Reading, sign_reading
from backend.iot.transport import InProcessBroker, InProcessTransport, Message
from backend.oracle.daemon import OracleConfig, OracleDaemon
from backend.oracle.store import OracleStore
from tests.backend.oracle.fakes import FakeLedger, wallet_of

INTERVAL_S = 900


def _wait(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger(INTERVAL_S, now=100 * INTERVAL_S)


def _setup(
    tmp_path: Path,
    ledger: FakeLedger,
    n: int = 10,
    cfg: OracleConfig | None = None,
) -> tuple[OracleDaemon, MeterSimulator, OracleStore]:
    bus = InProcessBroker()
    sub = InProcessTransport(bus, "oracle", clean_session=False)
    sub.connect()
    pub = InProcessTransport(bus)
    pub.connect()
    meters = dev_meters(n)
    for m in meters:
        ledger.meters[m.address] = True
    store = OracleStore(f"sqlite:///{tmp_path / 'oracle.db'}")
    daemon = OracleDaemon(
        store, ledger, sub, cfg or OracleConfig(batch_size=7, backoff_initial_s=0.05)
    )
    sim = MeterSimulator(meters, ledger.domain(), pub, INTERVAL_S)
    return daemon, sim, store


def test_every_reading_submitted_exactly_once(tmp_path: Path, ledger: FakeLedger) -> None:
    daemon, sim, store = _setup(tmp_path, ledger, n=20)
    daemon.start()
    for interval_id in range(95, 99):
        sim.publish_interval(interval_id)
    assert _wait(lambda: store.status().submitted == 80)
    daemon.stop()
    assert len(ledger.accept_events) == 80 == len(set(ledger.accept_events))
    assert store.status().queue_depth == 0


def test_device_readings_go_out_in_batches_of_their_own(tmp_path: Path, ledger: FakeLedger) -> None:
    """A reading signed by a registered device key (the registry says so) is submitted with
    ``submitDeviceReadings``, never in a meters' batch."""
    daemon, sim, store = _setup(tmp_path, ledger, n=3)
    device_key = "0x" + "5d" * 32
    device = Account.from_key(device_key).address
    ledger.devices[device] = True
    daemon.start()
    sim.publish_interval(98)
    reading = Reading(device, 98, 0, 8_803)
    signed = SignedReading(reading, sign_reading(device_key, ledger.domain().separator(), reading))
    daemon.deliver(Message(readings_topic(device), signed.to_json()))
    assert _wait(lambda: store.status().submitted == 4)
    daemon.stop()
    meters = sorted(m.address for m in sim.meters)
    # every batch of one kind (the meters' may go out in one batch or more, as they arrive)
    meter_batches = [keys for is_device, keys in ledger.kinds if not is_device]
    assert sorted(k for keys in meter_batches for k in keys) == meters
    assert [keys for is_device, keys in ledger.kinds if is_device] == [[device]]
    assert ledger.stored[(device, 98)] == (0, 8_803)


def test_reading_taken_while_registry_down_is_decided_when_it_answers(
    tmp_path: Path, ledger: FakeLedger
) -> None:
    """With the registry out of reach at ingest a reading's key is neither a meter nor a device
    yet: it is kept (undecided, nothing sent) and, once the registry answers, a device's goes
    out through ``submitDeviceReadings`` and an unregistered key's is rejected ``unregistered``
    (before this fix the device's was queued as a meter's and refused ``unknown_meter``)."""
    cfg = OracleConfig(batch_size=7, backoff_initial_s=0.05, backoff_max_s=0.1)
    daemon, _sim, store = _setup(tmp_path, ledger, n=1, cfg=cfg)
    sep = ledger.domain().separator()
    device_key, stranger_key = "0x" + "5d" * 32, "0x" + "77" * 32
    device, stranger = Account.from_key(device_key).address, Account.from_key(stranger_key).address
    ledger.devices[device] = True
    ledger.down = True
    daemon.start()
    for key, reading in ((device_key, Reading(device, 98, 0, 8_803)),
                         (stranger_key, Reading(stranger, 98, 5, 0))):  # fmt: skip
        signed = SignedReading(reading, sign_reading(key, sep, reading))
        daemon.deliver(Message(readings_topic(reading.meter), signed.to_json()))
    assert _wait(lambda: store.status().pending == 2)
    assert store.undecided_keys() == [device, stranger]
    time.sleep(0.3)  # the submit loop retries against the chain that is down: nothing goes out
    assert ledger.kinds == [] and store.status().submitted == 0
    ledger.down = False
    assert _wait(lambda: store.status().submitted == 1)
    daemon.stop()
    assert ledger.kinds == [(True, [device])]
    assert ledger.stored[(device, 98)] == (0, 8_803)
    status = store.status()
    assert (status.pending, status.rejected_by_reason) == (0, {"unregistered": 1})
    assert store.undecided_keys() == []


def test_bad_messages_are_rejected_and_counted(tmp_path: Path, ledger: FakeLedger) -> None:
    daemon, sim, store = _setup(tmp_path, ledger, n=2)
    daemon.start()
    good, other = sim.meters
    sep = ledger.domain().separator()

    def put(meter: str, payload: bytes) -> None:
        daemon.deliver(Message(readings_topic(meter), payload))

    stranger_key = "0x" + "77" * 32
    from backend.iot.signing import address_of

    stranger = address_of(stranger_key)
    r = Reading(stranger, 98, 5, 0)
    put(stranger, SignedReading(r, sign_reading(stranger_key, sep, r)).to_json())  # unregistered
    put(good.address, b"{oops")  # malformed
    future = Reading(good.address, 100, 1, 0)  # interval 100 ends after "now"
    put(good.address, SignedReading(future, sign_reading(good.key, sep, future)).to_json())
    forged = Reading(good.address, 98, 1, 0)
    put(
        good.address, SignedReading(forged, sign_reading(other.key, sep, forged)).to_json()
    )  # forged
    ok = Reading(good.address, 97, 3, 0)
    signed = SignedReading(ok, sign_reading(good.key, sep, ok)).to_json()
    put(good.address, signed)
    assert _wait(lambda: store.status().submitted == 1)
    put(good.address, signed)  # replayed
    conflict = Reading(good.address, 97, 4, 0)
    put(good.address, SignedReading(conflict, sign_reading(good.key, sep, conflict)).to_json())
    big = Reading(good.address, 96, 2**31, 0)
    put(good.address, SignedReading(big, sign_reading(good.key, sep, big)).to_json())
    put(good.address, json.dumps({"v": 1}).encode())
    assert _wait(lambda: sum(store.status().rejected_by_reason.values()) == 8)
    daemon.stop()
    assert store.status().rejected_by_reason == {
        "unregistered": 1,
        "malformed": 1,
        "future_interval": 1,
        "bad_signature": 1,
        "replayed": 1,
        "conflicting": 1,
        "value_too_large": 1,
        "schema": 1,
    }
    assert ledger.accept_events == [(good.address, 97)]


def test_readings_wait_until_the_chain_sees_the_interval_end(
    tmp_path: Path, ledger: FakeLedger
) -> None:
    daemon, sim, store = _setup(tmp_path, ledger, n=3, cfg=OracleConfig(clock_skew_s=INTERVAL_S))
    daemon.start()
    sim.publish_interval(
        100
    )  # ends at 101*900, within the (large) skew: queued, not yet submittable
    assert _wait(lambda: store.status().pending == 3)
    time.sleep(0.2)
    assert store.status().submitted == 0
    ledger.now = 101 * INTERVAL_S
    assert _wait(lambda: store.status().submitted == 3)
    daemon.stop()


def test_chain_outage_queue_grows_then_drains(tmp_path: Path, ledger: FakeLedger) -> None:
    daemon, sim, store = _setup(tmp_path, ledger, n=10)
    daemon.start()
    sim.publish_interval(95)
    assert _wait(lambda: store.status().submitted == 10)
    ledger.down = True
    sim.publish_interval(96)
    sim.publish_interval(97)
    assert _wait(lambda: store.status().pending == 20)
    time.sleep(0.3)
    assert store.status().submitted == 10
    ledger.down = False
    assert _wait(lambda: store.status().submitted == 30)
    daemon.stop()
    assert len(ledger.accept_events) == 30 == len(set(ledger.accept_events))


def test_ambiguous_send_is_reconciled_not_resent(tmp_path: Path, ledger: FakeLedger) -> None:
    daemon, sim, store = _setup(
        tmp_path, ledger, n=5, cfg=OracleConfig(batch_size=100, backoff_initial_s=0.05)
    )
    ledger.crash_after_send = True  # mined, but the oracle only sees an error
    daemon.start()
    sim.publish_interval(95)
    assert _wait(lambda: ledger.down and store.status().inflight >= 1)
    assert _wait(lambda: store.status().queue_depth == 5)
    ledger.down = False
    assert _wait(lambda: store.status().submitted == 5)
    daemon.stop()
    assert sorted(ledger.accept_events) == sorted(set(ledger.accept_events))
    assert len(ledger.accept_events) == 5
    assert sorted(ledger.sent) == sorted(set(ledger.sent))  # the mined batch was never resent


def test_restart_reconciles_inflight_rows_against_chain(tmp_path: Path, ledger: FakeLedger) -> None:
    _daemon, sim, store = _setup(tmp_path, ledger, n=6)
    # Simulate a crash: two batches claimed; the first reached the chain (no tx hash recorded), the
    # second never did.
    sep = ledger.domain().separator()
    from backend.oracle.store import Incoming

    items = []
    for spec in sim.meters:
        r = Reading(spec.address, 95, 10, 0)
        items.append(Incoming(r, sign_reading(spec.key, sep, r)))
    store.ingest(items)
    _b1, first = store.claim_batch(95, 3)
    store.claim_batch(95, 3)
    for q in first:
        ledger.stored[(q.reading.meter, 95)] = (10, 0)
    restarted = OracleDaemon(store, ledger, None, OracleConfig(batch_size=50))
    restarted.start()
    assert _wait(lambda: store.status().submitted == 6)
    restarted.stop()
    assert sorted(ledger.accept_events) == sorted((q.reading.meter, 95) for q in items[3:])


def test_announcement_is_counted_and_bad_ones_rejected(tmp_path: Path, ledger: FakeLedger) -> None:
    daemon, sim, store = _setup(tmp_path, ledger, n=2)
    daemon.start()
    sim.announce_all()
    daemon.deliver(Message(f"tegrid/meters/{sim.meters[0].address.lower()}/announce", b"[]"))
    assert _wait(
        lambda: daemon.counters.announcements == 2 and store.status().rejected_by_reason != {}
    )
    daemon.stop()
    assert daemon.announced == {m.address: m.bus for m in sim.meters}
    assert store.status().rejected_by_reason == {"announce_malformed": 1}


def test_announcements_are_checked_against_the_registry(
    tmp_path: Path, ledger: FakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    daemon, sim, _store = _setup(tmp_path, ledger, n=4)
    ok, moved, inactive, unknown = sim.meters
    ledger.buses.update({ok.address: int(ok.bus), moved.address: 17, inactive.address: 3})
    ledger.meters[inactive.address] = False
    del ledger.meters[unknown.address]
    caplog.set_level("INFO", logger="tegrid.oracle")
    daemon.start()
    sim.announce_all()
    assert _wait(lambda: sum(daemon.counters.announce_problems.values()) == 3)
    daemon.stop()
    assert daemon.counters.announce_problems == {
        "bus_mismatch": 1, "inactive": 1, "unregistered": 1
    }  # fmt: skip
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert warnings == sorted([
        f"announcement: meter {moved.address} announces bus 2, but the registry connects its "
        f"participant {wallet_of(moved.address)} at bus 17: the registry's bus counts",
        f"announcement: meter {inactive.address} belongs to participant "
        f"{wallet_of(inactive.address)}, which is inactive: MeterReadings refuses its readings",
        f"announcement: meter {unknown.address} is not registered: no participant has this "
        "meter key, so MeterReadings refuses its readings",
    ])  # fmt: skip
    infos = [r.getMessage() for r in caplog.records if "as registered" in r.getMessage()]
    assert infos == [
        f"meter {ok.address} announced itself on bus 1 (participant {wallet_of(ok.address)}, "
        "as registered)"
    ]
