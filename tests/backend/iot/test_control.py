"""Control actions and acks: typed data pinned against eth-account, the wire format checked field
by field on receipt, topics."""

from __future__ import annotations

import json

import jsonschema
import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from backend.iot.control import (
    ACK_JSON_SCHEMA,
    ACTION_JSON_SCHEMA,
    MODE_JSON_SCHEMA,
    SOC_JSON_SCHEMA,
    AckStatus,
    ControlAck,
    ControlAction,
    ModeAction,
    StateOfCharge,
    ack_topic,
    control_topic,
    mode_action_id,
    parse_ack,
    parse_action,
    parse_soc,
    registry_domain,
    soc_topic,
    topic_device,
)
from backend.iot.control_store import ControlTarget
from backend.iot.errors import MessageError

KEY = "0x" + "11" * 32
DEVICE_KEY = "0x" + "22" * 32
DEVICE = Account.from_key(DEVICE_KEY).address
DOMAIN = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
AID = bytes(range(32))


def _full(primary: str, message: dict[str, object]) -> dict[str, object]:
    doc = DOMAIN.template(primary)
    msg = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in message.items()}
    return {**doc, "message": msg}


@settings(max_examples=30, deadline=None)
@given(
    interval_id=st.integers(0, 2**64 - 1),
    setpoint_w=st.integers(-(2**63), 2**63 - 1),
    expiry=st.integers(0, 2**64 - 1),
)
def test_control_action_signature_matches_eth_account(
    interval_id: int, setpoint_w: int, expiry: int
) -> None:
    action = ControlAction(AID, DEVICE, interval_id, setpoint_w, expiry)
    signed = action.sign(KEY, DOMAIN)
    theirs = Account.sign_typed_data(KEY, full_message=_full("ControlAction", action.message()))
    assert signed.signature == bytes(theirs.signature)
    assert signed.signer(DOMAIN) == Account.from_key(KEY).address
    assert parse_action(signed.to_json(), control_topic(DEVICE)) == signed


def test_control_ack_signature_matches_eth_account_and_round_trips() -> None:
    ack = ControlAck(AID, DEVICE, int(AckStatus.STATE_OF_CHARGE), -2500, 1_700_000_000)
    signed = ack.sign(DEVICE_KEY, DOMAIN)
    theirs = Account.sign_typed_data(DEVICE_KEY, full_message=_full("ControlAck", ack.message()))
    assert signed.signature == bytes(theirs.signature)
    parsed = parse_ack(signed.to_json(), ack_topic(DEVICE))
    assert parsed == signed and parsed.signer(DOMAIN) == DEVICE
    assert parsed.ack.reason == "state_of_charge" and not parsed.ack.applied


def test_topics_are_lowercase_and_give_back_the_checksummed_device() -> None:
    assert control_topic(DEVICE) == f"tegrid/devices/{DEVICE.lower()}/control"
    assert topic_device(ack_topic(DEVICE)) == DEVICE
    with pytest.raises(MessageError) as err:
        topic_device("tegrid/meters/x/ack")
    assert err.value.reason == "topic"


def _action_body(**over: object) -> bytes:
    body = json.loads(ControlAction(AID, DEVICE, 5, 1000, 99).sign(KEY, DOMAIN).to_json())
    body.update(over)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("over", "reason", "text"),
    [
        ({"setpointW": 2**63}, "schema", "setpointW must be between -2^63"),
        ({"intervalId": -1}, "schema", "intervalId must be between 0 and 2^64-1"),
        ({"expiry": "99"}, "schema", "expiry must be an integer"),
        ({"setpointW": True}, "schema", "setpointW must be an integer"),
        ({"activationId": "0x12"}, "schema", "activationId must be 0x-prefixed 32-byte hex"),
        ({"device": "0xabc"}, "schema", "device must be a 0x-prefixed 20-byte hex address"),
        ({"signature": "0x00"}, "schema", "signature must be 0x-prefixed 65-byte hex"),
        ({"extra": 1}, "schema", "unknown fields ['extra']"),
        ({"v": 2}, "schema", "v must be 1"),
    ],
)
def test_parse_action_refuses_each_bad_field(
    over: dict[str, object], reason: str, text: str
) -> None:
    with pytest.raises(MessageError) as err:
        parse_action(_action_body(**over))
    assert err.value.reason == reason and text in str(err.value)


def test_parse_action_refuses_other_devices_topic_and_non_json() -> None:
    other = Account.from_key(KEY).address
    with pytest.raises(MessageError) as err:
        parse_action(_action_body(), control_topic(other))
    assert err.value.reason == "topic"
    with pytest.raises(MessageError) as err:
        parse_action(b"\xff not json")
    assert err.value.reason == "malformed"
    with pytest.raises(MessageError) as err:
        parse_action(b"x" * 5000)
    assert err.value.reason == "malformed"


def test_parse_ack_refuses_status_out_of_uint8() -> None:
    body = json.loads(ControlAck(AID, DEVICE, 0, 0, 1).sign(DEVICE_KEY, DOMAIN).to_json())
    body["status"] = 256
    with pytest.raises(MessageError) as err:
        parse_ack(json.dumps(body).encode())
    assert err.value.reason == "schema" and "status must be between 0 and 2^8-1" in str(err.value)


def test_control_target_of_an_activation_moves_from_the_baseline() -> None:
    up = ControlTarget.for_activation(AID, DEVICE, 10, 0, -1500, 1000, 900)
    down = ControlTarget.for_activation(AID, DEVICE, 10, 1, -1500, 1000, 900)
    assert (up.setpoint_w, down.setpoint_w, up.expiry) == (-500, -2500, 9900)
    with pytest.raises(ValueError, match="direction must be 0"):
        ControlTarget.for_activation(AID, DEVICE, 10, 2, 0, 1000, 900)
    with pytest.raises(ValueError, match="activatedW must be positive"):
        ControlTarget.for_activation(AID, DEVICE, 10, 0, 0, 0, 900)


@settings(max_examples=40, deadline=None)
@given(body=from_schema(ACTION_JSON_SCHEMA))
def test_every_payload_the_action_schema_allows_parses(body: dict[str, object]) -> None:
    jsonschema.validate(body, ACTION_JSON_SCHEMA)
    signed = parse_action(json.dumps(body).encode())
    assert "0x" + signed.action.activation_id.hex() == str(body["activationId"]).lower()
    assert signed.action.setpoint_w == body["setpointW"]


@settings(max_examples=40, deadline=None)
@given(body=from_schema(ACK_JSON_SCHEMA))
def test_every_payload_the_ack_schema_allows_parses(body: dict[str, object]) -> None:
    signed = parse_ack(json.dumps(body).encode())
    assert signed.ack.status == body["status"] and signed.ack.at == body["at"]


@pytest.mark.parametrize(
    "over",
    [{"setpointW": 2**63}, {"intervalId": -1}, {"expiry": "99"}, {"extra": 1}, {"v": 2},
     {"device": "0xabc"}, {"signature": None}],
)  # fmt: skip
def test_the_action_schema_refuses_what_the_parser_refuses(over: dict[str, object]) -> None:
    body = json.loads(_action_body(**over))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, ACTION_JSON_SCHEMA)
    with pytest.raises(MessageError):
        parse_action(json.dumps(body).encode())


@settings(max_examples=30, deadline=None)
@given(
    mode=st.integers(0, 255),
    effective=st.integers(0, 2**64 - 1),
    expiry=st.integers(0, 2**64 - 1),
)
def test_mode_action_signature_matches_eth_account(mode: int, effective: int, expiry: int) -> None:
    action = ModeAction(AID, DEVICE, mode, effective, expiry)
    signed = action.sign(KEY, DOMAIN)
    theirs = Account.sign_typed_data(KEY, full_message=_full("ModeAction", action.message()))
    assert signed.signature == bytes(theirs.signature)
    assert signed.signer(DOMAIN) == Account.from_key(KEY).address
    assert parse_action(signed.to_json(), control_topic(DEVICE)) == signed


def test_state_of_charge_signature_matches_eth_account_and_round_trips() -> None:
    report = StateOfCharge(DEVICE, 400_000, 1_700_000_123)
    signed = report.sign(DEVICE_KEY, DOMAIN)
    theirs = Account.sign_typed_data(
        DEVICE_KEY, full_message=_full("StateOfCharge", report.message())
    )
    assert signed.signature == bytes(theirs.signature)
    assert parse_soc(signed.to_json(), soc_topic(DEVICE)) == signed
    assert signed.signer(DOMAIN) == DEVICE
    assert soc_topic(DEVICE) == f"tegrid/devices/{DEVICE.lower()}/soc"


def test_mode_action_id_is_the_abi_encoded_event_and_device() -> None:
    tx = bytes(range(1, 33))
    expected = keccak(encode(["bytes32", "uint256", "address"], [tx, 7, DEVICE]))
    assert mode_action_id(tx, 7, DEVICE) == expected
    assert mode_action_id(tx, 8, DEVICE) != expected


def test_parse_mode_action_refuses_mixed_and_out_of_range_fields() -> None:
    signed = ModeAction(AID, DEVICE, 1, 10, 99).sign(KEY, DOMAIN)
    body = json.loads(signed.to_json())
    cases = [
        ({"setpointW": 5}, "unknown fields"),
        ({"mode": 256}, r"mode must be between 0 and 2\^8-1"),
        ({"effectiveInterval": -1}, "effectiveInterval must be between 0"),
    ]
    for over, reason in cases:
        with pytest.raises(MessageError, match=reason):
            parse_action(json.dumps({**body, **over}).encode())
    with pytest.raises(MessageError, match="published on"):
        parse_action(signed.to_json(), control_topic(Account.from_key(KEY).address))


@settings(max_examples=40, deadline=None)
@given(body=from_schema(MODE_JSON_SCHEMA))
def test_every_payload_the_mode_schema_allows_parses(body: dict[str, object]) -> None:
    signed = parse_action(json.dumps(body).encode())
    assert isinstance(signed.action, ModeAction)
    assert (signed.action.mode, signed.action.effective_interval) == (
        body["mode"], body["effectiveInterval"]
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(body=from_schema(SOC_JSON_SCHEMA))
def test_every_payload_the_soc_schema_allows_parses(body: dict[str, object]) -> None:
    signed = parse_soc(json.dumps(body).encode())
    assert (signed.report.soc_wh, signed.report.at) == (body["socWh"], body["at"])
