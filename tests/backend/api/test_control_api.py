"""``GET /control/actions`` and the ``control`` events over the real app and a real control store
(SQLite): actions with their signed acks exactly as stored, bad queries refused with 422."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.iot.control import ControlAck, registry_domain
from backend.iot.control_store import ControlStore, ControlTarget
from backend.market.memory import MemoryLedger
from backend.market.service import Market
from backend.market.store import Store
from backend.settings import ANVIL_KEYS

DEVICE_KEY = "0x" + "33" * 32
DEVICE = Account.from_key(DEVICE_KEY).address
OPERATOR = Account.from_key(ANVIL_KEYS[0]).address
DOMAIN = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, ControlStore, Market]]:
    market = Market(Store(f"sqlite:///{tmp_path / 'book.db'}"), MemoryLedger(), None, ANVIL_KEYS[9])
    store = ControlStore(f"sqlite:///{tmp_path / 'control.db'}")
    app = create_app(market, scheduler=False, control_store=store, control_poll_seconds=0.05)
    with TestClient(app) as client:
        yield client, store, market
    store.close()


def _target(n: int, interval_id: int = 7) -> ControlTarget:
    return ControlTarget(n.to_bytes(32, "big"), DEVICE, interval_id, -2500, 10_000)


def test_actions_of_an_interval_with_their_acks(
    env: tuple[TestClient, ControlStore, Market],
) -> None:
    client, store, _m = env
    store.add([_target(1), _target(2), _target(3, interval_id=8)], now=100.0)
    sent = store.sign_pending(lambda a: a.sign(ANVIL_KEYS[0], DOMAIN), OPERATOR, now=101.0)
    assert len(sent) == 3
    acks = [
        ControlAck((1).to_bytes(32, "big"), DEVICE, 0, -2500, 500).sign(DEVICE_KEY, DOMAIN),
        ControlAck((2).to_bytes(32, "big"), DEVICE, 6, 0, 501).sign(DEVICE_KEY, DOMAIN),
    ]
    assert store.record_acks(acks, now=102.0) == ["acknowledged", "refused"]
    assert store.record_acks(acks[:1], now=103.0) == ["duplicate"]
    r = client.get("/control/actions", params={"interval": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [a["activationId"] for a in body] == ["0x" + n.to_bytes(32, "big").hex() for n in (1, 2)]
    first, second = body
    assert first == {
        "activationId": "0x" + (1).to_bytes(32, "big").hex(), "device": DEVICE, "intervalId": 7,
        "setpointW": "-2500", "expiry": 10_000, "state": "acknowledged", "reason": None,
        "attempts": 1, "signer": OPERATOR, "signature": "0x" + sent[0].signature.hex(),
        "createdAt": 100.0, "firstSentAt": 101.0, "lastSentAt": 101.0,
        "ack": {"status": 0, "appliedW": "-2500", "at": "500",
                "signature": "0x" + acks[0].signature.hex(), "receivedAt": 102.0},
    }  # fmt: skip
    assert (second["state"], second["reason"], second["ack"]["status"]) == (
        "refused", "state_of_charge", 6,
    )  # fmt: skip
    refused = client.get("/control/actions", params={"interval": 7, "state": "refused"}).json()
    assert [a["activationId"] for a in refused] == [second["activationId"]]
    assert client.get("/control/actions", params={"interval": 9}).json() == []


@pytest.mark.parametrize(
    "params",
    [{}, {"interval": -1}, {"interval": "x"}, {"interval": 2**53}, {"interval": 1, "state": "ok"}],
)
def test_bad_queries_are_422(env: tuple[TestClient, ControlStore, Market], params: Any) -> None:
    r = env[0].get("/control/actions", params=params)
    assert r.status_code == 422
    assert r.json()["detail"]["code"] == "INVALID_REQUEST"


def test_state_changes_reach_the_event_stream(env: tuple[TestClient, ControlStore, Market]) -> None:
    _client, store, market = env
    time.sleep(0.2)  # the relay has taken its starting point
    store.add([_target(5)])
    store.sign_pending(lambda a: a.sign(ANVIL_KEYS[0], DOMAIN), OPERATOR, now=time.time())
    store.record_acks(
        [ControlAck((5).to_bytes(32, "big"), DEVICE, 0, -2500, 9).sign(DEVICE_KEY, DOMAIN)]
    )
    deadline = time.monotonic() + 5
    states: list[str] = []
    while time.monotonic() < deadline and len(states) < 3:
        states = [e.data["state"] for e in market.events.recent() if e.kind == "control"]
        time.sleep(0.05)
    assert states == ["pending", "sent", "acknowledged"]
    last = [e.data for e in market.events.recent() if e.kind == "control"][-1]
    assert last["activationId"] == "0x" + (5).to_bytes(32, "big").hex()
    assert last["ack"]["appliedW"] == "-2500"  # as GET /control/actions answers it
