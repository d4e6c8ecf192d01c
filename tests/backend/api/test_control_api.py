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
from backend.iot.control import ControlAck, StateOfCharge, registry_domain
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
        "kind": "control", "mode": None,
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


def test_a_mode_switch_row_names_its_mode_and_has_no_setpoint(
    env: tuple[TestClient, ControlStore, Market],
) -> None:
    client, store, _m = env
    mode_id = (77).to_bytes(32, "big")
    store.add([ControlTarget.for_mode(mode_id, DEVICE, 1, 7, 10_000)], now=100.0)
    store.sign_pending(lambda a: a.sign(ANVIL_KEYS[0], DOMAIN), OPERATOR, now=101.0)
    ack = ControlAck(mode_id, DEVICE, 0, 48_000, 500).sign(DEVICE_KEY, DOMAIN)
    assert store.record_acks([ack], now=102.0) == ["acknowledged"]
    [row] = client.get("/control/actions", params={"interval": 7}).json()
    assert (row["kind"], row["mode"], row["setpointW"], row["intervalId"], row["state"]) == (
        "mode", "islanded", None, 7, "acknowledged"
    )  # fmt: skip
    assert row["ack"]["appliedW"] == "48000"


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


def test_reported_state_of_charge_shows_on_the_device_and_refuses_an_offer(
    tmp_path: Path,
) -> None:
    """A battery's signed state of charge report, kept by the dispatcher's store, is in ``GET
    /devices/{address}``; a FlexOffer whose target power held over the interval needs more energy
    than the report holds (or room than it leaves) is refused 422 STATE_OF_CHARGE, and nothing is
    stored; within it, the offer is taken."""
    owner_key = ANVIL_KEYS[1]
    owner = Account.from_key(owner_key).address
    ledger = MemoryLedger()
    ledger.add_participant(owner, bus_id=11, max_export_w=20_000, max_import_w=20_000)
    market = Market(Store(f"sqlite:///{tmp_path / 'book.db'}"), ledger, None, ANVIL_KEYS[9])
    store = ControlStore(f"sqlite:///{tmp_path / 'control.db'}")
    app = create_app(market, scheduler=False, control_store=store, control_poll_seconds=0.05)

    def sign(primary: str, key: str, msg: dict[str, Any]) -> str:
        doc = {**market.template(primary), "message": msg}
        return "0x" + bytes(Account.sign_typed_data(key, full_message=doc).signature).hex()

    reg = {"owner": owner, "device": DEVICE, "busId": 11, "kind": 1, "minW": -4000,
           "maxW": 4000, "capacityWh": 8000, "expiry": ledger.now() + 600}  # fmt: skip
    market.register_device(
        reg, sign("DeviceRegistration", owner_key, reg), sign("DeviceRegistration", DEVICE_KEY, reg)
    )
    interval = market.current_interval() + 2

    def offer(nonce: int, direction: int, power_w: int) -> dict[str, Any]:
        msg = {"provider": owner, "device": DEVICE, "intervalId": interval,
               "direction": direction, "powerW": power_w, "baselineW": 0,
               "pricePerKWh": "90000", "nonce": str(nonce),
               "expiry": interval * 900 + 3600}  # fmt: skip
        return {"message": msg, "signature": sign("FlexOffer", owner_key, msg)}

    with TestClient(app) as client:
        before = client.get(f"/devices/{DEVICE}").json()
        assert (before["stateOfChargeWh"], before["stateOfChargeAt"]) == (None, None)
        report = StateOfCharge(DEVICE, 7_400, ledger.now() - 30).sign(DEVICE_KEY, DOMAIN)
        assert store.record_socs([report]) == 1
        got = client.get(f"/devices/{DEVICE}").json()
        assert (got["stateOfChargeWh"], got["stateOfChargeAt"]) == (7400, ledger.now() - 30)
        # down 3,000 W for 900 s = 750 Wh into a battery with 600 Wh of room
        r = client.post("/flex", json=offer(1, 1, 3000))
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert (detail["code"], detail["field"]) == ("STATE_OF_CHARGE", "powerW")
        assert detail["message"] == (
            f"the battery {DEVICE} reported 7400 of 8000 Wh at {ledger.now() - 30}: it cannot "
            "take 750 Wh (-3000 W for the interval)"
        )
        assert market.store.device_flex_offer(DEVICE, interval) is None  # nothing stored
        # up: 2,400 W = 600 Wh out of 7,400 Wh: taken
        assert client.post("/flex", json=offer(2, 0, 2400)).status_code == 201
        # an emptier battery reported later: 500 Wh cannot give 2,400 W (600 Wh)
        store.record_socs([StateOfCharge(DEVICE, 500, ledger.now()).sign(DEVICE_KEY, DOMAIN)])
        interval += 1  # one offer per device and interval
        r = client.post("/flex", json=offer(3, 0, 2400))
        assert (r.status_code, r.json()["detail"]["code"]) == (422, "STATE_OF_CHARGE")
        assert "reported 500 Wh" in r.json()["detail"]["message"]
    store.close()
