"""The API's one rule for integers in JSON (``backend.api.schemas``): token amounts and nonces are
decimal strings, every other integer a JSON number no larger than 2^53 - 1; requests take either
spelling, answers use the rule's type, and the OpenAPI document says so for every field. Against
the real app over a memory ledger."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.schemas import DECIMAL_PATTERN, MAX_SAFE_INTEGER
from backend.market.memory import MemoryLedger
from backend.market.service import Market
from backend.market.store import Store
from backend.settings import ANVIL_KEYS

K = ANVIL_KEYS
ZERO = "0x" + "00" * 20
NONCES = itertools.count(2**60)
SPELLING = "must be an integer: a JSON integer or a string of decimal digits"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Market]]:
    ledger = MemoryLedger()
    for i, key in enumerate(K[:4]):
        ledger.add_participant(
            Account.from_key(key).address, 10 + i, 100_000, 100_000, deposit=10**12
        )
    tmp: Path = tmp_path_factory.mktemp("numbers")
    market = Market(Store(f"sqlite:///{tmp / 'book.db'}"), ledger, None, K[9])
    with TestClient(create_app(market, dev=True, scheduler=False)) as client:
        yield client, market


def _message(market: Market, key: str, side: int, price: int, interval: int) -> dict[str, Any]:
    return {
        "trader": Account.from_key(key).address,
        "side": side,
        "intervalId": interval,
        "energyWh": 1000,
        "pricePerKWh": price,
        "nonce": next(NONCES),
        "expiry": interval * 900 + 3600,
        "counterparty": ZERO,
    }


def _signed(client: TestClient, key: str, message: dict[str, Any]) -> str:
    template = client.get("/orders/eip712").json()
    sig = Account.sign_typed_data(key, full_message={**template, "message": message}).signature
    return "0x" + sig.hex().removeprefix("0x")


def _spelled(message: dict[str, Any], as_string: set[str]) -> dict[str, Any]:
    return {k: str(v) if k in as_string else v for k, v in message.items()}


INTEGERS = {"side", "intervalId", "energyWh", "pricePerKWh", "nonce", "expiry"}


@pytest.mark.parametrize(
    "as_string",
    [set(), {"pricePerKWh", "nonce"}, INTEGERS],
    ids=["all numbers (eth-account)", "the API's types", "all strings (viem bigints)"],
)
def test_order_is_accepted_in_every_spelling_and_answered_in_the_rules_types(
    api: tuple[TestClient, Market], as_string: set[str]
) -> None:
    client, market = api
    interval = market.current_interval() + 2
    message = _message(market, K[1], 0, 123_456, interval)
    signature = _signed(client, K[1], message)
    body = {"message": _spelled(message, as_string), "signature": signature}
    r = client.post("/orders", json=body)
    assert r.status_code == 201, r.text
    body = r.json()
    expected_hash = "0x" + market.domain.digest("Order", message).hex()
    assert {k: body[k] for k in (*message, "hash", "status", "filledWh")} == {
        **message,
        "pricePerKWh": "123456",
        "nonce": str(message["nonce"]),
        "hash": expected_hash,
        "status": "open",
        "filledWh": 0,
    }
    assert isinstance(body["createdAt"], float)
    assert client.get(f"/orders/{body['hash']}").json() == body
    listed = client.get("/orders", params={"trader": message["trader"], "interval": interval})
    assert body in listed.json()
    # the event stream carries the price as the same decimal string
    (event,) = [e for e in market.events.recent() if e.data.get("hash") == body["hash"]]
    assert (event.data["pricePerKWh"], event.data["energyWh"]) == ("123456", 1000)


@pytest.mark.parametrize(
    ("field", "value", "msg"),
    [
        ("energyWh", 1000.0, SPELLING),
        ("energyWh", "1e3", SPELLING),
        ("energyWh", "1000.0", SPELLING),
        ("pricePerKWh", " 100", SPELLING),
        ("pricePerKWh", "1_000", SPELLING),
        ("pricePerKWh", "0x64", SPELLING),
        ("pricePerKWh", "-1", SPELLING),
        ("nonce", -1, "must be at least 0"),
        ("side", True, SPELLING),
        ("side", 2, "must be at most 1"),
        ("energyWh", 0, "must be at least 1"),
        ("energyWh", 2**53, f"must be at most {MAX_SAFE_INTEGER}"),
        ("intervalId", str(2**53), f"must be at most {MAX_SAFE_INTEGER}"),
        ("expiry", 2**64 - 1, f"must be at most {MAX_SAFE_INTEGER}"),
        ("pricePerKWh", str(2**128), f"must be at most {2**128 - 1}"),
        ("nonce", 2**64, f"must be at most {2**64 - 1}"),
    ],
)
def test_order_integer_in_another_spelling_or_out_of_range_is_refused(
    api: tuple[TestClient, Market], field: str, value: Any, msg: str
) -> None:
    client, market = api
    interval = market.current_interval() + 2
    message = _message(market, K[2], 1, 100, interval)
    body = {"message": {**message, field: value}, "signature": "0x" + "11" * 65}
    r = client.post("/orders", json=body)
    assert r.status_code == 422
    assert r.json()["detail"] == {
        "code": "INVALID_REQUEST",
        "message": f"message.{field}: {msg}",
        "errors": [{"loc": ["body", "message", field], "msg": msg}],
    }
    listed = client.get("/orders", params={"trader": message["trader"], "interval": interval})
    assert listed.json() == []


def test_cleared_interval_trades_and_balances_follow_the_rule(
    api: tuple[TestClient, Market],
) -> None:
    client, market = api
    interval = market.current_interval() + 3
    for key, side, price in ((K[1], 0, 90), (K[3], 1, 110)):
        message = _message(market, key, side, price, interval)
        signature = _signed(client, key, message)
        r = client.post("/orders", json={"message": message, "signature": signature})
        assert r.status_code == 201, r.text
    body = client.post(f"/intervals/{interval}/close").json()
    assert (body["status"], body["clearingPrice"], body["tradedWh"]) == ("recorded", "100", 1000)
    assert (body["startsAt"], body["gateClosureAt"]) == (interval * 900, interval * 900 - 60)
    (trade,) = client.get("/trades", params={"interval": interval}).json()
    assert (trade["energyWh"], trade["pricePerKWh"], trade["intervalId"]) == (1000, "100", interval)
    assert (trade["deliveredWh"], trade["paid"]) == (None, None)
    buyer = client.get(f"/participants/{Account.from_key(K[3]).address}").json()
    assert buyer["availableBalance"] == str(10**12 - 100)
    assert (buyer["reservedByOrders"], buyer["busId"]) == ("0", 13)


def test_interval_whose_start_passes_2_53_seconds_is_refused(
    api: tuple[TestClient, Market],
) -> None:
    client, _market = api
    last = MAX_SAFE_INTEGER // 900
    r = client.get(f"/intervals/{last}")
    assert r.status_code == 200 and r.json()["startsAt"] == last * 900
    for method in ("GET", "POST"):
        url = f"/intervals/{last + 1}" + ("/close" if method == "POST" else "")
        r = client.request(method, url)
        msg = f"must be at most {last} (its start would pass 2^53 - 1 seconds)"
        assert r.status_code == 422
        assert r.json()["detail"] == {
            "code": "INVALID_REQUEST",
            "message": f"interval_id: {msg}",
            "errors": [{"loc": ["path", "interval_id"], "msg": msg}],
        }


def _integer_kind(schema: dict[str, Any]) -> str | None:
    """'number', 'string' (a decimal string), 'either' (a request field) or None."""
    options = schema.get("anyOf", [schema])
    kinds = {
        "number" if o.get("type") == "integer" else "string"
        for o in options
        if o.get("type") == "integer" or o.get("pattern") == DECIMAL_PATTERN
    }
    if not kinds:
        return None
    return "either" if kinds == {"number", "string"} else kinds.pop()


def test_openapi_documents_the_rule_on_every_integer_field(api: tuple[TestClient, Market]) -> None:
    client, _market = api
    doc = client.get("/openapi.json").json()
    seen: dict[str, set[str]] = {"number": set(), "string": set(), "either": set()}
    for model, schema in doc["components"]["schemas"].items():
        for name, prop in schema.get("properties", {}).items():
            kind = _integer_kind(prop)
            if kind is None:
                continue
            where = f"{model}.{name}"
            seen[kind].add(where)
            description = prop.get("description", "")
            for option in prop.get("anyOf", [prop]):  # a bound past 2^53 would be a float
                assert option.get("maximum", 0) <= MAX_SAFE_INTEGER, where
            wanted, unwanted = {
                "number": ("JSON number", "decimal string"),
                "string": ("decimal string", "JSON number"),
                "either": ("accepted in requests", "\0"),
            }[kind]
            assert wanted in description and unwanted not in description, (where, description)
    assert {"OrderOut.pricePerKWh", "OrderOut.nonce", "TradeOut.paid", "IntervalOut.clearingPrice",
            "ParticipantOut.availableBalance"} <= seen["string"]  # fmt: skip
    assert {"OrderOut.expiry", "OrderOut.energyWh", "IntervalOut.startsAt", "TradeOut.energyWh",
            "Domain.chainId"} <= seen["number"]  # fmt: skip
    assert {"OrderMessage.pricePerKWh", "OrderMessage.intervalId", "ConnectionMessage.nonce",
            "DomainIn.chainId"} <= seen["either"]  # fmt: skip
    for item in doc["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                if p["schema"].get("type") == "integer" and "maximum" in p["schema"]:
                    assert p["schema"]["maximum"] <= MAX_SAFE_INTEGER, p
