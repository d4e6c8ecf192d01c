"""The dispatcher's store (real SQLite, and PostgreSQL with TEGRID_TEST_DATABASE_URL): idempotent
adds, conflicts refused whole, expiry, resends of the stored signature, acks of unknown actions or
other devices ignored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from backend.iot.control import ControlAck, registry_domain
from backend.iot.control_store import Base, ControlConflictError, ControlStore, ControlTarget
from backend.settings import ANVIL_KEYS

DOMAIN = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
DEVICE_KEY = "0x" + "44" * 32
DEVICE = Account.from_key(DEVICE_KEY).address
OTHER_KEY = "0x" + "55" * 32
OPERATOR = Account.from_key(ANVIL_KEYS[0]).address
PG_URL = os.environ.get("TEGRID_TEST_DATABASE_URL")


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlStore]:
    url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else str(PG_URL)
    s = ControlStore(url)
    if request.param == "postgresql":  # a clean slate in the shared test database
        Base.metadata.drop_all(s.engine)
        Base.metadata.create_all(s.engine)
    yield s
    s.close()


def _t(n: int, setpoint_w: int = 1000, expiry: int = 5000) -> ControlTarget:
    return ControlTarget(n.to_bytes(32, "big"), DEVICE, 3, setpoint_w, expiry)


def _sign(store: ControlStore, now: float) -> list[bytes]:
    signed = store.sign_pending(lambda a: a.sign(ANVIL_KEYS[0], DOMAIN), OPERATOR, now)
    return [s.signature for s in signed]


def test_add_is_idempotent_and_refuses_a_conflict_whole(store: ControlStore) -> None:
    assert store.add([_t(1), _t(2)]) == 2
    assert store.add([_t(1), _t(2)]) == 0
    with pytest.raises(ControlConflictError, match="already stored for another action"):
        store.add([_t(3), _t(1, setpoint_w=999)])
    assert [r.activation_id[-2:] for r in store.actions()] == ["01", "02"]  # 3 not stored
    with pytest.raises(ControlConflictError, match="at most 2"):
        store.add([_t(4, expiry=2**53)])


def test_resends_publish_the_stored_signature_until_expiry(store: ControlStore) -> None:
    store.add([_t(1, expiry=5000), _t(2, expiry=6000)])
    first = _sign(store, now=100.0)
    assert _sign(store, now=101.0) == []  # nothing pending any more
    assert store.due_resends(now=103.0, retry_s=5.0, chain_now=4000) == []  # not due yet
    again = store.due_resends(now=106.0, retry_s=5.0, chain_now=4000)
    assert [s.signature for s in again] == first
    assert store.expire(chain_now=5000) == 1
    assert [s.action.activation_id[-1] for s in store.due_resends(200.0, 5.0, 5000)] == [2]
    rows = {r.activation_id[-1:]: r for r in store.actions()}
    assert (rows["1"].state, rows["1"].attempts) == ("expired", 2)
    assert (rows["2"].state, rows["2"].attempts, rows["2"].last_sent_at) == ("sent", 3, 200.0)


def test_acks_of_unknown_or_other_devices_change_nothing(store: ControlStore) -> None:
    store.add([_t(1), _t(2)])
    _sign(store, now=1.0)
    other = Account.from_key(OTHER_KEY).address
    acks = [
        ControlAck((9).to_bytes(32, "big"), DEVICE, 0, 1000, 7).sign(DEVICE_KEY, DOMAIN),
        ControlAck((1).to_bytes(32, "big"), other, 0, 1000, 7).sign(OTHER_KEY, DOMAIN),
        ControlAck((2).to_bytes(32, "big"), DEVICE, 5, 0, 7).sign(DEVICE_KEY, DOMAIN),
    ]
    assert store.record_acks(acks) == ["unknown", "unknown", "refused"]
    assert store.counts() == {"pending": 0, "sent": 1, "acknowledged": 0, "refused": 1,
                              "expired": 0}  # fmt: skip
    assert store.get((2).to_bytes(32, "big")).reason == "out_of_limits"  # type: ignore[union-attr]


def test_a_store_written_before_mode_actions_gets_the_kind_column(tmp_path: Path) -> None:
    """A ``control_actions`` table without ``kind`` (an older store) is given the column on open,
    every existing row a control action; a mode target stored next to it keeps its kind, and the
    same id with another kind is a conflict."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = ControlStore(url)
    old.add([_t(1)], now=1.0)
    with old.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE control_actions DROP COLUMN kind")
    old.close()
    store = ControlStore(url)
    [row] = store.actions()
    assert (row.kind, row.as_dict()["kind"], "mode" in row.as_dict()) == (
        "control",
        "control",
        False,
    )
    mode = ControlTarget.for_mode((9).to_bytes(32, "big"), DEVICE, 1, 7, 9000)
    assert store.add([mode], now=2.0) == 1
    stored = store.get((9).to_bytes(32, "big"))
    assert stored is not None and (stored.kind, stored.setpoint_w, stored.interval_id) == (
        "mode", 1, 7
    )  # fmt: skip
    assert stored.as_dict()["mode"] == "islanded" and stored.as_dict()["setpointW"] is None
    with pytest.raises(ControlConflictError):
        store.add([ControlTarget((9).to_bytes(32, "big"), DEVICE, 7, 1, 9000)])
    store.close()
