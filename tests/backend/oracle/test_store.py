from __future__ import annotations

import sqlite3
from pathlib import Path

from backend.iot.signing import Reading
from backend.oracle.store import INFLIGHT, PENDING, SUBMITTED, Incoming, OracleStore, Rejection

METER_A = "0x" + "0A" * 20
METER_B = "0x" + "0B" * 20


def _store(tmp_path: Path) -> OracleStore:
    return OracleStore(f"sqlite:///{tmp_path / 'q.db'}")


def _inc(meter: str, interval_id: int, imp: int = 1, exp: int = 0) -> Incoming:
    return Incoming(Reading(meter, interval_id, imp, exp), b"\x01" * 65)


def test_ingest_dedupes_replays_and_conflicts(tmp_path: Path) -> None:
    store = _store(tmp_path)
    res = store.ingest(
        [_inc(METER_A, 1), _inc(METER_B, 1), _inc(METER_A, 1)], [Rejection("malformed", "x")]
    )
    assert res.queued == 2
    assert [r.reason for r in res.rejections] == ["malformed", "replayed"]
    res = store.ingest([_inc(METER_A, 1, imp=2), _inc(METER_B, 1)])
    assert res.queued == 0 and [r.reason for r in res.rejections] == ["conflicting", "replayed"]
    st = store.status()
    assert st.pending == 2 and st.rejected_by_reason == {
        "malformed": 1,
        "replayed": 2,
        "conflicting": 1,
    }


def test_batch_lifecycle_and_status(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ingest([_inc(METER_A, 1), _inc(METER_B, 1), _inc(METER_A, 2)])
    assert store.pending_intervals() == [1, 2]
    assert store.pending_intervals(ended_before_interval=2) == [1]
    batch_id, items = store.claim_batch(1, 10)
    assert len(items) == 2 and store.status().inflight == 2
    store.set_batch_tx(batch_id, "0x" + "ff" * 32)
    assert store.inflight_batches()[0][1] == "0x" + "ff" * 32
    store.finish_batch(batch_id, 42, 90000, rejected={items[1].id: "inactive"})
    st = store.status()
    assert (st.pending, st.inflight, st.submitted, st.last_block, st.batches) == (1, 0, 1, 42, 1)
    assert st.rejected_by_reason == {"inactive": 1}
    batch2, _items2 = store.claim_batch(2, 10)
    store.requeue_batch(batch2)
    assert [r.status for r in store.rows()] == [SUBMITTED, "rejected", PENDING]
    assert INFLIGHT not in {r.status for r in store.rows()}


def test_store_survives_reopen(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ingest([_inc(METER_A, 1)])
    store.claim_batch(1, 10)
    store.close()
    again = _store(tmp_path)
    assert again.status().inflight == 1
    assert again.status().as_dict()["queue_depth"] == 1


def test_device_readings_are_batched_apart_from_meters(tmp_path: Path) -> None:
    """A batch holds one kind (submitReadings or submitDeviceReadings), the oldest's first; the
    kind survives a requeue and the in-flight view."""
    store = _store(tmp_path)
    device = "0x" + "0D" * 20
    store.ingest(
        [_inc(METER_A, 1), Incoming(Reading(device, 1, 0, 8803), b"\x02" * 65, device=True),
         _inc(METER_B, 1)]
    )  # fmt: skip
    meters_id, meters = store.claim_batch(1, 10)
    assert [(q.reading.meter, q.device) for q in meters] == [(METER_A, False), (METER_B, False)]
    devices_id, devices = store.claim_batch(1, 10)
    assert [(q.reading.meter, q.device) for q in devices] == [(device, True)]
    assert [[q.device for q in items] for _b, _tx, items in store.inflight_batches()] == [
        [False, False], [True]
    ]  # fmt: skip
    store.requeue_batch(devices_id)
    assert [(q.reading.meter, q.device) for q in store.claim_batch(1, 10)[1]] == [(device, True)]
    assert store.claim_batch(1, 10) == (0, [])
    assert meters_id != devices_id


def test_queue_from_before_device_readings_gets_the_column(tmp_path: Path) -> None:
    """An oracle queue written before device readings opens with every row a meter's."""
    path = tmp_path / "q.db"
    store = _store(tmp_path)
    store.ingest([_inc(METER_A, 1)])
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE oracle_readings DROP COLUMN device")
    store = _store(tmp_path)
    [q] = store.claim_batch(1, 10)[1]
    assert (q.reading.meter, q.device) == (METER_A, False)
