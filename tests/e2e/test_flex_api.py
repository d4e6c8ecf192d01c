"""Devices and flexibility offers through the real API, on a real Anvil with the deployed contracts
and the real Neural Grid (hosting capacity by AC bisection): registration end to end, each
refusal with its exact code and field and nothing changed, offers stored, listed, refused and
cancelled."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from eth_account.signers.local import LocalAccount
from test_wallets import sign_with
from web3 import Web3

from backend.api.app import create_app
from backend.chain.contracts import contract_at
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now, set_time
from backend.devtools.devstack import start_dev_stack
from backend.devtools.server import ServerHandle, start_in_thread
from backend.market.factory import build_market
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e
K = ANVIL_KEYS
BATTERY, EV, PV = 1, 2, 4
NONCES = itertools.count(2**200)  # flex nonces are uint256: decimal strings in JSON
AHEAD = itertools.count(3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("flex-e2e")
    with AnvilProcess() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        set_time(w3, (chain_now(w3) // 86400 + 1) * 86400 + 12 * 3600)  # noon, as the market tests
        settings = dev_settings(tmp, anvil.url)
        dev = start_dev_stack(settings)
        market = build_market(settings)
        app = create_app(market, dev=True, scheduler=False)
        server: ServerHandle = start_in_thread(app)
        client = httpx.Client(base_url=server.url, timeout=120)
        try:
            yield {"client": client, "market": market, "dev": dev}
        finally:
            client.close()
            server.stop()
            market.store.close()


def _sig(template: dict[str, Any], key: Any, message: dict[str, Any]) -> str:
    sig = Account.sign_typed_data(key, full_message={**template, "message": message}).signature
    return "0x" + sig.hex().removeprefix("0x")


def _bus(stack: dict[str, Any], key: str) -> int:
    wallet = Account.from_key(key).address
    return next(int(p["bus"]) for p in stack["dev"].participants if p["wallet"] == wallet)


def _registration(
    stack: dict[str, Any], owner_key: str, device: LocalAccount, **over: Any
) -> dict[str, Any]:
    c, market = stack["client"], stack["market"]
    template = c.get("/devices/eip712").json()
    msg = {
        "owner": Account.from_key(owner_key).address,
        "device": device.address,
        "busId": over.pop("busId") if "busId" in over else _bus(stack, owner_key),
        "kind": BATTERY,
        "minW": -5000,
        "maxW": 5000,
        "capacityWh": 10_000,
        "expiry": market.ledger.now() + 3600,
        **over,
    }
    return {
        "message": msg,
        "signature": _sig(template, owner_key, msg),
        "deviceSignature": _sig(template, device.key, msg),
    }


def _problem(r: httpx.Response) -> tuple[int, str, str | None]:
    detail = r.json()["detail"]
    return r.status_code, detail["code"], detail.get("field")


@pytest.fixture(scope="module")
def battery(stack: dict[str, Any]) -> LocalAccount:
    """A 5 kW / 10 kWh battery of participant 5."""
    device: LocalAccount = Account.create()
    r = stack["client"].post("/devices", json=_registration(stack, K[5], device))
    assert r.status_code == 201, r.text
    return device


def test_register_device_end_to_end(stack: dict[str, Any]) -> None:
    c, market = stack["client"], stack["market"]
    device = Account.create()
    owner = Account.from_key(K[3]).address
    bus = _bus(stack, K[3])
    body = _registration(stack, K[3], device, kind=EV, minW=-11_000, maxW=0, capacityWh=0)
    r = c.post("/devices", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["hostingExportW"] is None  # an EV charger that only charges: no export to check
    assert out["hostingImportW"] == market.grid.import_capacity_w(bus)  # type: ignore[union-attr]
    assert out["hostingImportW"] >= 11_000 and out["txHash"].startswith("0x")
    assert {k: out[k] for k in ("device", "owner", "busId", "kind", "kindName", "active")} == {
        "device": device.address, "owner": owner, "busId": bus, "kind": EV,
        "kindName": "ev_charger", "active": True,
    }  # fmt: skip
    assert (out["minW"], out["maxW"], out["capacityWh"]) == (-11_000, 0, 0)
    # on chain, read from the registry itself
    w3 = market.ledger.w3  # type: ignore[attr-defined]
    registry = contract_at(w3, "ParticipantRegistry", market.ledger.registry_address)
    assert tuple(registry.functions.deviceOf(device.address).call()) == (
        owner, bus, EV, True, -11_000, 0, 0
    )  # fmt: skip
    logs = registry.events.DeviceRegistered.get_logs(from_block=0)
    assert [lg["args"]["device"] for lg in logs].count(device.address) == 1
    assert c.get(f"/devices/{device.address.lower()}").json() == out
    assert out in c.get("/devices", params={"owner": owner}).json()
    assert c.get("/devices", params={"owner": Account.create().address}).json() == []


def test_register_device_refusals_are_exact_and_change_nothing(stack: dict[str, Any]) -> None:
    c, market = stack["client"], stack["market"]
    dev = stack["dev"].participants
    device = Account.create()
    good = _registration(stack, K[4], device)
    far_bus = _bus(stack, K[9])
    export_cap = market.grid.hosting_capacity_w(far_bus)  # type: ignore[union-attr]
    assert export_cap < 199_000  # the far end of the feeder (the market tests' voltage veto)
    stranger = "0x" + "42" * 32
    wallet, meter = Account.from_key(K[6]), Account.from_key(dev[7]["meterKey"])
    tampered = {**good, "message": {**good["message"], "maxW": 4999}}
    cases: list[tuple[dict[str, Any], tuple[int, str, str | None]]] = [
        (tampered, (401, "BAD_SIGNATURE", "signature")),
        ({**good, "deviceSignature": _sig(c.get("/devices/eip712").json(), K[4], good["message"])},
         (401, "BAD_SIGNATURE", "deviceSignature")),
        (_registration(stack, K[4], device, expiry=1_000_000), (422, "ORDER_EXPIRED", "expiry")),
        (_registration(stack, K[4], device, kind=6), (422, "INVALID_ORDER", "kind")),
        (_registration(stack, K[4], device, kind=PV, minW=10, maxW=0, capacityWh=0),
         (422, "INVALID_ORDER", "minW")),
        (_registration(stack, K[4], device, capacityWh=0), (422, "INVALID_ORDER", "capacityWh")),
        (_registration(stack, K[4], device, kind=PV, minW=0, capacityWh=500),
         (422, "INVALID_ORDER", "capacityWh")),
        (_registration(stack, K[4], device, busId=far_bus), (422, "WRONG_BUS", "busId")),
        (_registration(stack, K[4], device, maxW=250_000),
         (422, "OVER_CONNECTION_LIMIT", "maxW")),
        (_registration(stack, K[4], device, minW=-250_000),
         (422, "OVER_CONNECTION_LIMIT", "minW")),
        (_registration(stack, K[9], device, maxW=199_000), (422, "HOSTING_CAPACITY", "maxW")),
        (_registration(stack, stranger, device, busId=_bus(stack, K[4])),
         (403, "UNKNOWN_TRADER", "owner")),
        (_registration(stack, K[4], wallet), (409, "DEVICE_IN_USE", "device")),
        # a meter key: the registry itself refuses it (RegistryKeyInUse), answered the same
        (_registration(stack, K[4], meter), (409, "DEVICE_IN_USE", "device")),
    ]  # fmt: skip
    for body, expected in cases:
        r = c.post("/devices", json=body)
        assert _problem(r) == expected, (body["message"], r.text)
    r = c.post("/devices", json=_registration(stack, K[9], device, maxW=199_000))
    assert r.json()["detail"]["message"] == (
        f"the hosting capacity at bus {far_bus} is {export_cap} W of export, less than the "
        "device's maxW of 199000 W"
    )
    r = c.post("/devices", json={**good, "message": {**good["message"], "minW": 2**31}})
    assert (r.status_code, r.json()["detail"]["code"]) == (422, "INVALID_REQUEST")
    for key in (device.address, meter.address):
        assert _problem(c.get(f"/devices/{key}")) == (404, "NOT_FOUND", None)
        assert market.store.get_device(key) is None
    assert c.post("/devices", json=good).status_code == 201
    assert _problem(c.post("/devices", json=good)) == (409, "DEVICE_IN_USE", "device")


def _interval(stack: dict[str, Any], ahead: int | None = None) -> int:
    step = next(AHEAD) if ahead is None else ahead
    return int(stack["client"].get("/intervals/current").json()["id"]) + step


def _offer(
    stack: dict[str, Any], key: str, device: str, interval: int, **over: Any
) -> dict[str, Any]:
    template = stack["client"].get("/flex/eip712").json()
    msg = {
        "provider": Account.from_key(key).address,
        "device": device,
        "intervalId": interval,
        "direction": 0,
        "powerW": 3000,
        "baselineW": -1000,
        "pricePerKWh": "250000",
        "nonce": str(next(NONCES)),
        "expiry": interval * 900 + 7200,
        **over,
    }
    return {"message": msg, "signature": _sig(template, key, msg)}


def test_flex_offer_is_stored_and_listed(stack: dict[str, Any], battery: LocalAccount) -> None:
    c = stack["client"]
    iv = _interval(stack)
    body = _offer(stack, K[5], battery.address, iv)
    r = c.post("/flex", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    m = body["message"]
    assert {k: out[k] for k in m} == m
    assert out["status"] == "open"
    # the hash is the EIP-712 digest of the offer, as eth-account computes it
    template = c.get("/flex/eip712").json()
    ledger = stack["market"].ledger
    assert template["domain"] == {
        "name": "tegrid FlexibilityMarket", "version": "1", "chainId": 31337,
        "verifyingContract": ledger.flex_address,
    }  # fmt: skip
    signable = Account.sign_typed_data(K[5], full_message={**template, "message": m})
    assert out["hash"] == "0x" + bytes(signable.message_hash).hex()
    # the contract that will verify it at recording computes the same offer hash
    fields = [f["name"] for f in template["types"]["FlexOffer"]]
    args = [m[k] if k in ("provider", "device") else int(m[k]) for k in fields]
    on_chain = ledger.flexibility.functions.offerHash(*args).call()
    assert "0x" + bytes(on_chain).hex() == out["hash"]
    assert c.get("/flex", params={"interval": iv}).json() == [out]
    assert out in c.get("/flex", params={"provider": m["provider"]}).json()
    assert c.get(f"/flex/{out['hash']}").json() == out
    assert c.get("/flex", params={"interval": iv, "status": "cancelled"}).json() == []


def test_flex_offer_refusals_are_exact(stack: dict[str, Any], battery: LocalAccount) -> None:
    c, market = stack["client"], stack["market"]
    iv = _interval(stack)
    dev = battery.address
    # a second device of participant 5, deactivated by the grid operator on chain
    retired = Account.create()
    assert c.post("/devices", json=_registration(stack, K[5], retired)).status_code == 201
    ledger = market.ledger
    ledger.grid_operator.transact(  # type: ignore[attr-defined]
        ledger.registry.functions.deactivateDevice(retired.address)  # type: ignore[attr-defined]
    )
    assert c.get(f"/devices/{retired.address}").json()["active"] is False
    good = _offer(stack, K[5], dev, iv)
    template = c.get("/flex/eip712").json()
    other_chain = {**template, "domain": {**template["domain"], "chainId": 1}}
    wrong_domain = {"message": good["message"], "domain": other_chain["domain"],
                    "signature": _sig(other_chain, K[5], good["message"])}  # fmt: skip
    cases: list[tuple[dict[str, Any], tuple[int, str, str | None]]] = [
        ({**good, "message": {**good["message"], "powerW": 3001}}, (401, "BAD_SIGNATURE", None)),
        (wrong_domain, (400, "WRONG_DOMAIN", None)),
        (_offer(stack, "0x" + "42" * 32, dev, iv), (403, "UNKNOWN_TRADER", None)),
        (_offer(stack, K[6], dev, iv), (403, "NOT_DEVICE_OWNER", "device")),
        (_offer(stack, K[5], Account.create().address, iv), (422, "UNKNOWN_DEVICE", "device")),
        (_offer(stack, K[5], retired.address, iv), (403, "DEVICE_INACTIVE", "device")),
        # the battery runs between -5000 and 5000 W
        (_offer(stack, K[5], dev, iv, baselineW=-6000), (422, "OUT_OF_DEVICE_LIMITS", "baselineW")),
        (_offer(stack, K[5], dev, iv, baselineW=3000), (422, "OUT_OF_DEVICE_LIMITS", "powerW")),
        (_offer(stack, K[5], dev, iv, direction=1, baselineW=-3000),
         (422, "OUT_OF_DEVICE_LIMITS", "powerW")),
        (_offer(stack, K[5], dev, iv, powerW=0), (422, "INVALID_ORDER", "powerW")),
        (_offer(stack, K[5], dev, iv, direction=2), (422, "INVALID_ORDER", "direction")),
        (_offer(stack, K[5], dev, _interval(stack, 0)), (409, "INTERVAL_CLOSED", None)),
        (_offer(stack, K[5], dev, iv, expiry=1_000_000), (422, "ORDER_EXPIRED", None)),
    ]  # fmt: skip
    for body, expected in cases:
        r = c.post("/flex", json=body)
        assert _problem(r) == expected, (body["message"], r.text)
    assert (
        c.post("/flex", json=wrong_domain)
        .json()["detail"]["message"]
        .startswith(
            "the offer is signed for another domain; sign for 'tegrid FlexibilityMarket' v1 "
            "on chain 31337"
        )
    )
    assert c.get("/flex", params={"interval": iv}).json() == []
    # one offer per device and interval; the down direction within the limits in the next
    # interval; then the first offer's nonce again
    down = _offer(stack, K[5], dev, iv, direction=1, baselineW=1000, powerW=6000)
    first = c.post("/flex", json=good)
    assert first.status_code == 201
    r = c.post("/flex", json=down)
    assert _problem(r) == (409, "DEVICE_ALREADY_OFFERED", "device")
    assert first.json()["hash"] in r.json()["detail"]["message"]
    nxt = _interval(stack)
    down = _offer(stack, K[5], dev, nxt, direction=1, baselineW=1000, powerW=6000)
    assert c.post("/flex", json=down).status_code == 201
    again = _offer(stack, K[5], dev, _interval(stack), nonce=good["message"]["nonce"], powerW=1000)
    assert _problem(c.post("/flex", json=again)) == (409, "NONCE_USED", "nonce")
    assert _problem(c.post("/flex", json=good)) == (409, "NONCE_USED", "nonce")
    assert len(c.get("/flex", params={"interval": iv}).json()) == 1
    assert len(c.get("/flex", params={"interval": nxt}).json()) == 1


def test_flex_cancel(stack: dict[str, Any], battery: LocalAccount) -> None:
    c = stack["client"]
    iv = _interval(stack)
    out = c.post("/flex", json=_offer(stack, K[5], battery.address, iv)).json()
    tpl = c.get("/flex/eip712", params={"primaryType": "Cancel"}).json()
    msg = {"trader": out["provider"], "orderHash": out["hash"]}
    r = c.post(f"/flex/{out['hash']}/cancel", json={"signature": _sig(tpl, K[6], msg)})
    assert _problem(r) == (401, "BAD_SIGNATURE", None)
    assert c.get(f"/flex/{out['hash']}").json()["status"] == "open"
    r = c.post(f"/flex/{out['hash']}/cancel", json={"signature": _sig(tpl, K[5], msg)})
    assert r.status_code == 200 and r.json() == {**out, "status": "cancelled"}
    r = c.post(f"/flex/{out['hash']}/cancel", json={"signature": _sig(tpl, K[5], msg)})
    assert _problem(r) == (409, "NOT_CANCELLABLE", None)
    assert c.get("/flex", params={"interval": iv, "status": "cancelled"}).json() == [
        {**out, "status": "cancelled"}
    ]
    missing = "0x" + "ab" * 32
    r = c.post(f"/flex/{missing}/cancel", json={"signature": _sig(tpl, K[5], msg)})
    assert _problem(r) == (404, "NOT_FOUND", None)


def test_flex_offer_signed_with_ethers(stack: dict[str, Any], battery: LocalAccount) -> None:
    """ethers v6 signs the ``for=ethers`` template (negative int32 baseline, uint256 nonce past
    2^53): the API accepts it and its hash is ethers' TypedDataEncoder.hash."""
    c = stack["client"]
    iv = _interval(stack)
    template = c.get("/flex/eip712", params={"for": "ethers"}).json()
    assert "EIP712Domain" not in template["types"]
    msg = _offer(stack, K[5], battery.address, iv, baselineW=-4000, powerW=7000)["message"]
    signed = sign_with("ethers", template, msg, K[5])
    r = c.post("/flex", json={"message": msg, "signature": signed["signature"]})
    assert r.status_code == 201, r.text
    assert r.json()["hash"] == signed["hash"]
    assert r.json()["baselineW"] == -4000


def test_device_and_flex_events_reach_the_stream(
    stack: dict[str, Any], battery: LocalAccount
) -> None:
    c = stack["client"]
    out = c.post("/flex", json=_offer(stack, K[5], battery.address, _interval(stack))).json()
    seen: dict[str, list[dict[str, Any]]] = {"device": [], "flex": []}
    with c.stream(
        "GET", "/events", params={"kinds": "device,flex"}, headers={"Last-Event-ID": "0"},
        timeout=10,
    ) as s:  # fmt: skip
        kind = ""
        for line in s.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in seen:
                data = json.loads(line[6:])
                seen[kind].append({k: v for k, v in data.items() if k not in ("id", "at")})
                if any(e.get("hash") == out["hash"] for e in seen["flex"]):
                    break
    owner = Account.from_key(K[5]).address
    assert {"device": battery.address, "owner": owner, "busId": _bus(stack, K[5]),
            "kind": BATTERY, "status": "registered"} in seen["device"]  # fmt: skip
    assert {"hash": out["hash"], "provider": out["provider"], "device": battery.address,
            "intervalId": out["intervalId"], "direction": 0, "powerW": 3000,
            "pricePerKWh": "250000", "status": "open"} in seen["flex"]  # fmt: skip
