"""Bad inputs against the real app over a memory ledger: oversized, deeply nested, huge-integer and
non-finite bodies are refused before parsing with a JSON problem (never a 5xx), registry conflicts
are 409s naming the field, 405s carry ``Allow`` and every 422 matches the documented schema."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.limits import Limits, nesting_depth_exceeds
from backend.devtools.server import start_in_thread
from backend.market.memory import MemoryLedger
from backend.market.service import Market
from backend.market.store import Store
from backend.settings import ANVIL_KEYS, Settings

JSON = {"content-type": "application/json"}
MiB = 1 << 20


def _market(tmp: Path) -> Market:
    ledger = MemoryLedger()
    for i, key in enumerate(ANVIL_KEYS[:4]):
        ledger.add_participant(Account.from_key(key).address, 10 + i, deposit=10**9)
    return Market(Store(f"sqlite:///{tmp / 'book.db'}"), ledger, None, ANVIL_KEYS[9])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    market = _market(tmp_path_factory.mktemp("inputs"))
    with TestClient(create_app(market, scheduler=False)) as c:
        yield c


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app whose body limit is 100 bytes."""
    settings = dataclasses.replace(Settings(), api_max_body_bytes=100)
    market = _market(tmp_path_factory.mktemp("small"))
    with TestClient(create_app(market, settings=settings, scheduler=False)) as c:
        yield c


def _problem(r: httpx.Response) -> tuple[int, str, str]:
    detail = r.json()["detail"]
    return r.status_code, detail["code"], detail["message"]


# ---------------------------------------------------------------------------------- body size
def test_post_body_over_declared_limit_gives_413(client: TestClient) -> None:
    r = client.post("/orders", content=b" " * (MiB + 1), headers=JSON)
    assert _problem(r) == (413, "BODY_TOO_LARGE", "the request body is larger than 1048576 bytes")
    assert r.headers["content-type"] == "application/json"


def test_post_body_at_limit_reaches_the_route(small: TestClient) -> None:
    body = b'{"signature": "0x"}'.ljust(100)
    r = small.post("/orders/0x" + "00" * 32 + "/cancel", content=body, headers=JSON)
    status, code, _ = _problem(r)
    assert (status, code) == (422, "INVALID_REQUEST")


def test_post_chunked_body_over_limit_gives_413(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"signature": "'
        for _ in range(10):
            yield b"0" * 10
        yield b'"}'

    r = small.post("/orders", content=chunks(), headers=JSON)
    assert "content-length" not in r.request.headers
    assert _problem(r) == (413, "BODY_TOO_LARGE", "the request body is larger than 100 bytes")


def test_chunked_body_over_limit_over_a_real_socket_gives_413(tmp_path: Path) -> None:
    """Through uvicorn, with ``Transfer-Encoding: chunked`` and no content-length; then NaN,
    which the report saw drop the connection."""
    settings = dataclasses.replace(Settings(), api_max_body_bytes=1000)
    server = start_in_thread(create_app(_market(tmp_path), settings=settings, scheduler=False))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            r = http.post("/participants", content=iter([b"[" * 600, b"]" * 600]), headers=JSON)
            assert r.request.headers["transfer-encoding"] == "chunked"
            assert _problem(r) == (
                413,
                "BODY_TOO_LARGE",
                "the request body is larger than 1000 bytes",
            )
            r = http.post("/orders", content=b'{"message": {"energyWh": NaN}}', headers=JSON)
            assert _problem(r)[:2] == (422, "NON_FINITE_NUMBER")
    finally:
        server.stop()


# ------------------------------------------------------------------------------ nesting depth
@pytest.mark.parametrize("path", ["/orders", "/participants"])
@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_post_deeply_nested_body_gives_422(
    client: TestClient, path: str, opener: str, closer: str
) -> None:
    body = opener * 50_000 + "1" + closer * 50_000
    r = client.post(path, content=body, headers=JSON)
    assert _problem(r) == (
        422,
        "BODY_TOO_DEEP",
        "the JSON body nests arrays/objects deeper than 32 levels",
    )


def test_post_body_nested_to_the_limit_reaches_validation(client: TestClient) -> None:
    r = client.post("/participants", content="[" * 32 + "]" * 32, headers=JSON)
    assert _problem(r)[:2] == (422, "INVALID_REQUEST")


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    inside = json.dumps({"note": "[" * 100 + "{" * 100}).encode()
    assert not nesting_depth_exceeds(inside, 32)
    escaped = json.dumps({"note": '\\"' + "[" * 100}).encode()
    assert not nesting_depth_exceeds(escaped, 32)
    assert nesting_depth_exceeds(b"[" * 33 + b"]" * 33, 32)
    assert not nesting_depth_exceeds(b"[" * 32 + b"]" * 32, 32)
    assert not nesting_depth_exceeds(b"[[]]" * 100, 2)  # wide, not deep


# ----------------------------------------------------------------------------------- integers
@pytest.mark.parametrize("path", ["/orders", "/participants", "/orders/0x" + "00" * 32 + "/cancel"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_post_5000_digit_integer_gives_422(client: TestClient, path: str, sign: str) -> None:
    body = '{"message": {"energyWh": ' + sign + "9" * 5000 + "}}"
    r = client.post(path, content=body, headers=JSON)
    assert _problem(r) == (
        422,
        "INTEGER_TOO_LONG",
        "an integer in the JSON body has 5000 digits; at most 78 are accepted",
    )


def test_post_78_digit_integer_reaches_validation(client: TestClient) -> None:
    body = {"message": {"busId": int("9" * 78)}, "signature": "0x"}
    r = client.post("/participants", content=json.dumps(body), headers=JSON)
    status, code, _ = _problem(r)
    assert (status, code) == (422, "INVALID_REQUEST")
    errors = r.json()["detail"]["errors"]
    assert {"loc": ["body", "message", "busId"], "msg": "must be at most 4294967295"} in (errors)


# ------------------------------------------------------------------------- NaN and Infinity
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("path", ["/orders", "/participants"])
def test_post_non_finite_number_gives_422(client: TestClient, constant: str, path: str) -> None:
    r = client.post(path, content='{"message": {"energyWh": ' + constant + "}}", headers=JSON)
    assert _problem(r) == (
        422,
        "NON_FINITE_NUMBER",
        f"{constant} is not a JSON number (NaN and Infinity are refused)",
    )


def test_post_overflowing_float_gives_422(client: TestClient) -> None:
    r = client.post("/orders", content='{"message": {"energyWh": 1e400}}', headers=JSON)
    assert _problem(r) == (422, "NON_FINITE_NUMBER", "the number 1e400 is out of range")


def test_non_json_body_is_left_to_the_route(client: TestClient) -> None:
    """A body that is not JSON (or not declared JSON) is the route's to refuse, as before."""
    r = client.post("/orders", content=b"NaN", headers={"content-type": "text/plain"})
    assert _problem(r)[:2] == (422, "INVALID_REQUEST")
    r = client.post("/orders", content=b'{"message": ', headers=JSON)
    assert _problem(r) == (422, "INVALID_REQUEST", "12: JSON decode error")


def test_limits_default_to_the_settings() -> None:
    s = Settings()
    assert Limits() == Limits(s.api_max_body_bytes, s.api_max_json_depth, s.api_max_int_digits)
    assert (s.api_max_body_bytes, s.api_max_json_depth, s.api_max_int_digits) == (MiB, 32, 78)


# ------------------------------------------------------------------------- registry conflicts
def _connection(client: TestClient, wallet_key: str, meter: str, bus_id: int = 5) -> dict[str, Any]:
    template = client.get("/participants/eip712").json()
    message = {
        "wallet": Account.from_key(wallet_key).address,
        "meter": meter,
        "busId": bus_id,
        "maxExportW": 5000,
        "maxImportW": 5000,
        "nonce": 1,
        "expiry": 2**40,
    }
    signed = Account.sign_typed_data(wallet_key, full_message={**template, "message": message})
    return {"message": message, "signature": "0x" + signed.signature.hex().removeprefix("0x")}


def test_register_meter_of_another_participant_gives_409_naming_meter(
    client: TestClient,
) -> None:
    meter = Account.create().address
    first = client.post("/participants", json=_connection(client, Account.create().key, meter))
    assert first.status_code == 201, first.text
    r = client.post("/participants", json=_connection(client, Account.create().key, meter))
    assert r.status_code == 409
    assert r.json()["detail"] == {
        "code": "METER_IN_USE",
        "message": f"the meter {meter} is already registered to another participant",
        "field": "meter",
    }


def test_register_connected_wallet_gives_409_naming_wallet(client: TestClient) -> None:
    key = ANVIL_KEYS[1]
    r = client.post("/participants", json=_connection(client, key, Account.create().address))
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert (detail["code"], detail["field"]) == ("ALREADY_CONNECTED", "wallet")
    assert detail["message"] == f"{Account.from_key(key).address} is already connected at bus 11"


# --------------------------------------------------------------------------------- 405 and 422
@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("DELETE", "/orders", "GET, POST"),
        ("PUT", "/participants", "POST"),
        ("POST", "/participants/eip712", "GET"),
        ("PATCH", "/intervals/5/close", "POST"),
    ],
)
def test_method_not_allowed_carries_allow(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path)
    assert r.headers["allow"] == allow
    assert _problem(r) == (
        405,
        "METHOD_NOT_ALLOWED",
        f"{method} is not allowed on {path}; allowed: {allow}",
    )


def _validator(client: TestClient, method: str, path: str, status: str) -> jsonschema.Validator:
    doc = client.get("/openapi.json").json()
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"]
    root = {**schema["schema"], "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def test_every_operation_documents_422_as_the_problem_it_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            schema = op["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)
            if "requestBody" in op:
                assert "413" in op["responses"], (method, path)


@pytest.mark.parametrize(
    "method,path,kwargs",
    [
        ("get", "/orders", {"params": {"limit": 0}}),
        ("get", "/trades", {"params": {"interval": "x"}}),
        ("get", "/intervals/{interval_id}", {"url": "/intervals/-1"}),
        ("post", "/participants", {"json": {"message": {}}}),
        ("post", "/orders", {"json": {"message": {"side": 3}}}),
        ("post", "/orders", {"content": '{"energyWh": NaN}', "headers": JSON}),
        ("post", "/participants", {"content": "[" * 40 + "]" * 40, "headers": JSON}),
    ],
)
def test_422_body_matches_the_documented_schema(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    url = kwargs.pop("url", path)
    r = client.request(method.upper(), url, **kwargs)
    assert r.status_code == 422, r.text
    _validator(client, method, path, "422").validate(r.json())


def test_413_body_matches_the_documented_schema(small: TestClient) -> None:
    r = small.post("/participants", content=b"{}".ljust(101), headers=JSON)
    assert r.status_code == 413
    _validator(small, "post", "/participants", "413").validate(r.json())


def test_409_conflict_body_matches_the_documented_schema(client: TestClient) -> None:
    r = client.post(
        "/participants", json=_connection(client, ANVIL_KEYS[2], Account.create().address)
    )
    assert r.status_code == 409
    _validator(client, "post", "/participants", "409").validate(r.json())


# ------------------------------------------------------------------------- wallets
def test_contracts_give_the_chain_as_wallets_add_it(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        Settings(), public_rpc_url="https://rpc.example.org/tegrid", chain_name="tegrid pilot"
    )
    with TestClient(create_app(_market(tmp_path), settings=settings, scheduler=False)) as c:
        add_chain = c.get("/contracts").json()["addChain"]
    assert add_chain == {
        "chainId": "0x7a69",
        "chainName": "tegrid pilot",
        "rpcUrls": ["https://rpc.example.org/tegrid"],
        "nativeCurrency": {"name": "Ether", "symbol": "ETH", "decimals": 18},
    }


def test_contracts_offer_the_rpc_url_when_no_public_one_is_set(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings(), rpc_url="http://10.0.0.5:8545")
    with TestClient(create_app(_market(tmp_path), settings=settings, scheduler=False)) as c:
        add_chain = c.get("/contracts").json()["addChain"]
    assert (add_chain["chainName"], add_chain["rpcUrls"]) == ("tegrid", ["http://10.0.0.5:8545"])


@pytest.mark.parametrize("path", ["funds", "deposit-transactions?amount=1"])
def test_funds_without_a_chain_give_409_no_chain(client: TestClient, path: str) -> None:
    wallet = Account.from_key(ANVIL_KEYS[1]).address
    r = client.get(f"/participants/{wallet}/{path}")
    assert _problem(r) == (409, "NO_CHAIN", "this market keeps no balances on a chain")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/participants/0x1234/funds", "address"),
        (f"/participants/{'0x' + '11' * 20}/deposit-transactions", "amount"),
        (f"/participants/{'0x' + '11' * 20}/deposit-transactions?amount={'1' * 83}", "amount"),
    ],
)
def test_funds_with_bad_input_give_422_naming_the_field(
    client: TestClient, path: str, field: str
) -> None:
    r = client.get(path)
    assert r.status_code == 422, r.text
    assert [e["loc"][-1] for e in r.json()["detail"]["errors"]] == [field]
