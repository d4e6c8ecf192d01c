"""Control actions to devices and their acknowledgements: EIP-712 typed data, wire format, topics.

The M2M half of the active Neural Grid. For each activation the grid operator's key signs a
``ControlAction(bytes32 activationId, address device, uint64 intervalId, int64 setpointW, uint64
expiry)`` in the registry's domain (``setpointW``: the absolute power target of the interval,
signed W, positive = injection) and publishes it on ``tegrid/devices/<device>/control`` (QoS 1);
the device answers with ``ControlAck(bytes32 activationId, address device, uint8 status, int64
appliedW, uint64 at)`` signed by its own key on ``tegrid/devices/<device>/ack``.

``tegrid/devices/<address>/control``::

    {"v": 1, "activationId": "0x<32 bytes>", "device": "0x..", "intervalId": 1234,
     "setpointW": -3000, "expiry": 1700000900, "signature": "0x<65 bytes>", "sentAt": 1.7e9}

``tegrid/devices/<address>/ack``::

    {"v": 1, "activationId": "0x..", "device": "0x..", "status": 0, "appliedW": -3000,
     "at": 1700000123, "signature": "0x<65 bytes>", "sentAt": 1.7e9}

On a ``GridModeChanged`` of the registry the dispatcher sends every active grid-forming device
(battery, genset) a ``ModeAction(bytes32 actionId, address device, uint8 mode, uint64
effectiveInterval, uint64 expiry)`` on the same control topic, answered by the same ``ControlAck``
(its ``activationId`` the action id, ``appliedW`` the unit's power right after the switch)::

    {"v": 1, "actionId": "0x..", "device": "0x..", "mode": 1, "effectiveInterval": 1235,
     "expiry": 1700003600, "signature": "0x..", "sentAt": 1.7e9}

A battery reports its state of charge, signed by its key, on ``tegrid/devices/<device>/soc``::

    {"v": 1, "device": "0x..", "socWh": 400000, "at": 1700000123, "signature": "0x.."}

Every field is checked on receipt as the meters' messages are (``backend.iot.schema``: size,
JSON object, known fields only, version, types; the integer ranges of the typed data); ``sentAt``
is informational (latency only), never trusted and not signed. Hashing, signing and recovery
are :mod:`backend.chain.eip712`'s fast path, the same as every other signature of the project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from eth_utils import keccak

from backend.chain import eip712
from backend.chain.address import checksum
from backend.chain.eip712 import Domain
from backend.chain.errors import SignatureError, TypedDataError
from backend.chain.protocol import DOMAIN_VERSION, REGISTRY_DOMAIN_NAME
from backend.iot.errors import MessageError
from backend.iot.schema import (
    _SIGNATURE,
    SCHEMA_VERSION,
    _address_field,
    _int_field,
    _load_object,
    _sent_at,
)

TOPIC_PREFIX = "tegrid/devices"
CONTROL_WILDCARD = f"{TOPIC_PREFIX}/+/control"
ACK_WILDCARD = f"{TOPIC_PREFIX}/+/ack"
SOC_WILDCARD = f"{TOPIC_PREFIX}/+/soc"
MODE_GRID_CONNECTED, MODE_ISLANDED = 0, 1
GRID_MODES = {MODE_GRID_CONNECTED: "grid_connected", MODE_ISLANDED: "islanded"}
_MODE_KEYS = {"v", "actionId", "device", "mode", "effectiveInterval", "expiry", "signature",
              "sentAt"}  # fmt: skip
_SOC_KEYS = {"v", "device", "socWh", "at", "signature", "sentAt"}
_ACTION_KEYS = {"v", "activationId", "device", "intervalId", "setpointW", "expiry", "signature",
                "sentAt"}  # fmt: skip
_ACK_KEYS = {"v", "activationId", "device", "status", "appliedW", "at", "signature", "sentAt"}


def _json_schema(title: str, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {
            "v": {"const": SCHEMA_VERSION},
            **fields,
            "signature": {
                "type": "string",
                "pattern": "^0x[0-9a-fA-F]{130}$",
                "minLength": 132,
                "maxLength": 132,
            },
            "sentAt": {"type": "number", "description": "publisher's clock, informational"},
        },
        "required": ["v", *fields, "signature"],
        "additionalProperties": False,
    }


# the lengths as well: Python's "$" (hypothesis, jsonschema's re) also matches before a final "\n"
_ID = {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$", "minLength": 66, "maxLength": 66}
_ADDR = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$", "minLength": 42, "maxLength": 42}
_UINT64 = {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}
_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
# The wire format as JSON Schema documents, for devices written elsewhere; what the parsers below
# accept (the tests generate payloads from these and parse them).
ACTION_JSON_SCHEMA = _json_schema("tegrid ControlAction message", {
    "activationId": _ID, "device": _ADDR, "intervalId": _UINT64, "setpointW": _INT64,
    "expiry": _UINT64,
})  # fmt: skip
ACK_JSON_SCHEMA = _json_schema("tegrid ControlAck message", {
    "activationId": _ID, "device": _ADDR, "status": {"type": "integer", "minimum": 0,
    "maximum": 255}, "appliedW": _INT64, "at": _UINT64,
})  # fmt: skip
MODE_JSON_SCHEMA = _json_schema("tegrid ModeAction message", {
    "actionId": _ID, "device": _ADDR, "mode": {"type": "integer", "minimum": 0, "maximum": 255},
    "effectiveInterval": _UINT64, "expiry": _UINT64,
})  # fmt: skip
SOC_JSON_SCHEMA = _json_schema("tegrid StateOfCharge message", {
    "device": _ADDR, "socWh": _UINT64, "at": _UINT64,
})  # fmt: skip


class AckStatus(IntEnum):
    """What a device answers to a control action: 0 applied, every other value a refusal."""

    APPLIED = 0
    UNAUTHORIZED = 1  # the signature does not recover to a key with GRID_OPERATOR_ROLE
    WRONG_DEVICE = 2  # addressed to another device (or published on another device's topic)
    EXPIRED = 3  # expiry is not after the device's clock
    INTERVAL_OVER = 4  # the interval has ended
    OUT_OF_LIMITS = 5  # setpointW outside the device's [minW, maxW]
    STATE_OF_CHARGE = 6  # a battery cannot give or take that energy
    REPLAYED = 7  # another action with an activationId this device already applied
    DEVICE_INACTIVE = 8  # the registry does not list the device as active
    NOT_GRID_FORMING = 9  # a mode action to a device that cannot form the grid (not 1 or 5)
    UNKNOWN_MODE = 10  # a mode action with a mode other than 0 or 1

    @property
    def label(self) -> str:
        return self.name.lower()


def registry_domain(chain_id: int, registry_address: str) -> Domain:
    """The domain control actions and acks are signed in: ``ParticipantRegistry``'s."""
    return Domain(REGISTRY_DOMAIN_NAME, DOMAIN_VERSION, chain_id, checksum(registry_address))


def control_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device.lower()}/control"


def ack_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device.lower()}/ack"


def soc_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device.lower()}/soc"


def topic_device(topic: str) -> str:
    """The device address inside ``tegrid/devices/<address>/<kind>``."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX:
        raise MessageError("topic", f"unexpected topic {topic!r}")
    try:
        return checksum(parts[2])
    except ValueError:
        raise MessageError("topic", f"unexpected topic {topic!r}") from None


def _recover(digest: bytes, signature: bytes) -> str:
    try:
        return eip712.recover(digest, signature)
    except SignatureError as exc:
        raise MessageError("bad_signature", str(exc)) from None


def _struct_hash(primary: str, message: dict[str, Any]) -> bytes:
    """``hashStruct`` of the message, which also checks every field's range."""
    try:
        return eip712.struct_hash(primary, message)
    except TypedDataError as exc:
        raise MessageError("schema", str(exc)) from None


def _signature_field(body: dict[str, Any]) -> bytes:
    signature = body.get("signature")
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        raise MessageError("schema", "signature must be 0x-prefixed 65-byte hex")
    return bytes.fromhex(signature[2:])


def _bytes32_field(body: dict[str, Any], name: str) -> bytes:
    try:
        return eip712.bytes32(body.get(name), name)
    except TypedDataError as exc:
        raise MessageError("schema", str(exc)) from None


class _TypedMessage:
    """What the control topics' typed messages share: ``PRIMARY`` (their EIP-712 type), the
    checksummed ``device``, the struct hash computed once at construction (which also checks every
    field's range), the digest in a domain, the signature, and the wire form of ``message()``
    (bytes as 0x hex, in the type's field order)."""

    PRIMARY: ClassVar[str]
    device: str
    _struct: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", checksum(self.device))
        object.__setattr__(self, "_struct", _struct_hash(self.PRIMARY, self.message()))

    def message(self) -> dict[str, Any]:
        raise NotImplementedError

    def digest(self, domain: Domain) -> bytes:
        return eip712.digest(domain.separator, self._struct)

    def _signature(self, private_key: str | bytes, domain: Domain) -> bytes:
        return bytes.fromhex(eip712.sign_digest(self.digest(domain), private_key)[2:])

    def wire(self) -> dict[str, Any]:
        return {
            k: "0x" + v.hex() if isinstance(v, bytes) else v for k, v in self.message().items()
        }


def _to_json(message: _TypedMessage, signature: bytes, sent_at: float | None) -> bytes:
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION, **message.wire(), "signature": "0x" + signature.hex(),
    }  # fmt: skip
    if sent_at is not None:
        body["sentAt"] = sent_at
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ControlAction(_TypedMessage):
    """One activation's power target for one device and interval."""

    activation_id: bytes
    device: str
    interval_id: int
    setpoint_w: int
    expiry: int
    _struct: bytes = field(init=False, repr=False, compare=False, default=b"")
    PRIMARY: ClassVar[str] = "ControlAction"

    def message(self) -> dict[str, Any]:
        return {
            "activationId": self.activation_id,
            "device": self.device,
            "intervalId": self.interval_id,
            "setpointW": self.setpoint_w,
            "expiry": self.expiry,
        }

    @property
    def key(self) -> bytes:
        """The id its ack answers (``ControlAck.activationId``)."""
        return self.activation_id

    def sign(self, private_key: str | bytes, domain: Domain) -> SignedAction:
        return SignedAction(self, self._signature(private_key, domain))


@dataclass(frozen=True)
class ModeAction(_TypedMessage):
    """A grid mode switch for one grid-forming device: ``mode`` (0 grid-connected, 1 islanded:
    form the grid) from ``effective_interval`` on. ``action_id`` names the registry's
    ``GridModeChanged`` event and the device (``mode_action_id``)."""

    action_id: bytes
    device: str
    mode: int
    effective_interval: int
    expiry: int
    _struct: bytes = field(init=False, repr=False, compare=False, default=b"")
    PRIMARY: ClassVar[str] = "ModeAction"

    @property
    def key(self) -> bytes:
        return self.action_id

    def message(self) -> dict[str, Any]:
        return {
            "actionId": self.action_id,
            "device": self.device,
            "mode": self.mode,
            "effectiveInterval": self.effective_interval,
            "expiry": self.expiry,
        }

    def sign(self, private_key: str | bytes, domain: Domain) -> SignedAction:
        return SignedAction(self, self._signature(private_key, domain))


def mode_action_id(tx_hash: bytes, log_index: int, device: str) -> bytes:
    """``keccak256(abi.encode(txHash, logIndex, device))``: one id per mode switch and device, the
    same whoever computes it (a dispatcher restarted re-derives it and stores nothing twice)."""
    return keccak(
        tx_hash.rjust(32, b"\0") + int(log_index).to_bytes(32, "big")
        + bytes.fromhex(checksum(device)[2:]).rjust(32, b"\0")
    )  # fmt: skip


@dataclass(frozen=True)
class SignedAction:
    action: ControlAction | ModeAction
    signature: bytes
    sent_at: float | None = None

    def signer(self, domain: Domain) -> str:
        """The checksummed address that signed the action (``MessageError`` if none)."""
        return _recover(self.action.digest(domain), self.signature)

    def to_json(self) -> bytes:
        return _to_json(self.action, self.signature, self.sent_at)


@dataclass(frozen=True)
class ControlAck(_TypedMessage):
    """A device's answer to one control action."""

    activation_id: bytes
    device: str
    status: int
    applied_w: int
    at: int
    _struct: bytes = field(init=False, repr=False, compare=False, default=b"")
    PRIMARY: ClassVar[str] = "ControlAck"

    @property
    def applied(self) -> bool:
        return self.status == AckStatus.APPLIED

    @property
    def reason(self) -> str:
        """The status as a label (``applied``, ``expired``, ...; ``status_<n>`` if unknown)."""
        try:
            return AckStatus(self.status).label
        except ValueError:
            return f"status_{self.status}"

    def message(self) -> dict[str, Any]:
        return {
            "activationId": self.activation_id,
            "device": self.device,
            "status": self.status,
            "appliedW": self.applied_w,
            "at": self.at,
        }

    def sign(self, private_key: str | bytes, domain: Domain) -> SignedAck:
        return SignedAck(self, self._signature(private_key, domain))


@dataclass(frozen=True)
class SignedAck:
    ack: ControlAck
    signature: bytes
    sent_at: float | None = None

    def signer(self, domain: Domain) -> str:
        return _recover(self.ack.digest(domain), self.signature)

    def to_json(self) -> bytes:
        return _to_json(self.ack, self.signature, self.sent_at)


def _topic_matches(topic: str | None, device: str) -> None:
    if topic is not None and topic_device(topic) != device:
        raise MessageError("topic", f"message for {device} published on {topic!r}")


def parse_action(payload: bytes, topic: str | None = None) -> SignedAction:
    """Parse and type-check a control action or a mode action (told apart by the ``mode``
    field; the signer is checked by the device, which knows the domain and the registry)."""
    body = _load_object(payload, _ACTION_KEYS | _MODE_KEYS)
    mode = "mode" in body
    unknown = set(body) - (_MODE_KEYS if mode else _ACTION_KEYS)
    if unknown:
        raise MessageError("schema", f"unknown fields {sorted(unknown)}")
    if mode:
        return _parse_mode(body, topic)
    device = _address_field(body, "device")
    action = ControlAction(
        _bytes32_field(body, "activationId"),
        device,
        _int_field(body, "intervalId"),
        _int_field(body, "setpointW"),
        _int_field(body, "expiry"),
    )
    signature = _signature_field(body)
    _topic_matches(topic, device)
    return SignedAction(action, signature, _sent_at(body))


def parse_ack(payload: bytes, topic: str | None = None) -> SignedAck:
    """Parse and type-check an acknowledgement (its signer is checked by the dispatcher)."""
    body = _load_object(payload, _ACK_KEYS)
    device = _address_field(body, "device")
    ack = ControlAck(
        _bytes32_field(body, "activationId"),
        device,
        _int_field(body, "status"),
        _int_field(body, "appliedW"),
        _int_field(body, "at"),
    )
    signature = _signature_field(body)
    _topic_matches(topic, device)
    return SignedAck(ack, signature, _sent_at(body))


def _parse_mode(body: dict[str, Any], topic: str | None) -> SignedAction:
    device = _address_field(body, "device")
    action = ModeAction(
        _bytes32_field(body, "actionId"),
        device,
        _int_field(body, "mode"),
        _int_field(body, "effectiveInterval"),
        _int_field(body, "expiry"),
    )
    signature = _signature_field(body)
    _topic_matches(topic, device)
    return SignedAction(action, signature, _sent_at(body))


@dataclass(frozen=True)
class StateOfCharge(_TypedMessage):
    """A battery's state of charge (Wh) at ``at`` (the device's clock, unix seconds)."""

    device: str
    soc_wh: int
    at: int
    _struct: bytes = field(init=False, repr=False, compare=False, default=b"")
    PRIMARY: ClassVar[str] = "StateOfCharge"

    def message(self) -> dict[str, Any]:
        return {"device": self.device, "socWh": self.soc_wh, "at": self.at}

    def sign(self, private_key: str | bytes, domain: Domain) -> SignedSoc:
        return SignedSoc(self, self._signature(private_key, domain))


@dataclass(frozen=True)
class SignedSoc:
    report: StateOfCharge
    signature: bytes
    sent_at: float | None = None

    def signer(self, domain: Domain) -> str:
        return _recover(self.report.digest(domain), self.signature)

    def to_json(self) -> bytes:
        return _to_json(self.report, self.signature, self.sent_at)


def parse_soc(payload: bytes, topic: str | None = None) -> SignedSoc:
    """Parse and type-check a state of charge report (its signer is checked by the receiver)."""
    body = _load_object(payload, _SOC_KEYS)
    device = _address_field(body, "device")
    report = StateOfCharge(device, _int_field(body, "socWh"), _int_field(body, "at"))
    signature = _signature_field(body)
    _topic_matches(topic, device)
    return SignedSoc(report, signature, _sent_at(body))
