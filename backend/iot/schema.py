"""Wire format of meter messages (JSON over MQTT) and their topics.

``tegrid/meters/<address>/readings``::

    {"v": 1, "meter": "0x..", "intervalId": 1234, "importWh": 512, "exportWh": 0,
     "signature": "0x<65 bytes hex>", "sentAt": 1700000000.123}

``tegrid/meters/<address>/announce``::

    {"v": 1, "address": "0x..", "bus": 12, "sentAt": 1700000000.123}

``sentAt`` (publisher's wall clock, seconds) is optional and informational: it is never trusted,
only used to measure publish-to-receipt latency. Every other field is checked strictly; anything
else is a ``MessageError`` with a short ``reason`` that the oracle counts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from backend.chain.address import checksum
from backend.iot.errors import MessageError
from backend.iot.signing import Reading

SCHEMA_VERSION = 1
TOPIC_PREFIX = "tegrid/meters"
READINGS_WILDCARD = f"{TOPIC_PREFIX}/+/readings"
ANNOUNCE_WILDCARD = f"{TOPIC_PREFIX}/+/announce"
MAX_PAYLOAD_BYTES = 4096
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_READING_KEYS = {"v", "meter", "intervalId", "importWh", "exportWh", "signature", "sentAt"}
_ANNOUNCE_KEYS = {"v", "address", "bus", "sentAt"}


def readings_topic(meter: str) -> str:
    return f"{TOPIC_PREFIX}/{meter.lower()}/readings"


def announce_topic(meter: str) -> str:
    return f"{TOPIC_PREFIX}/{meter.lower()}/announce"


@dataclass(frozen=True)
class SignedReading:
    """A reading with the meter's 65-byte EIP-712 signature, as carried on the wire."""

    reading: Reading
    signature: bytes
    sent_at: float | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "meter": checksum(self.reading.meter),
            "intervalId": self.reading.interval_id,
            "importWh": self.reading.import_wh,
            "exportWh": self.reading.export_wh,
            "signature": "0x" + self.signature.hex(),
        }
        if self.sent_at is not None:
            body["sentAt"] = self.sent_at
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Announcement:
    """A meter introducing itself (plug and play): its address and the grid bus it sits on."""

    address: str
    bus: int | str
    sent_at: float | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "address": checksum(self.address),
            "bus": self.bus,
        }
        if self.sent_at is not None:
            body["sentAt"] = self.sent_at
        return json.dumps(body, separators=(",", ":")).encode()


def _load_object(payload: bytes, allowed: set[str]) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(
            "malformed", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
        )
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError("malformed", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MessageError("malformed", "payload must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise MessageError("schema", f"unknown fields {sorted(unknown)}")
    if body.get("v") != SCHEMA_VERSION:
        raise MessageError("schema", f"v must be {SCHEMA_VERSION}, got {body.get('v')!r}")
    return body


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError("schema", f"{name} must be an integer, got {value!r}")
    return value


def _address_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise MessageError(
            "schema", f"{name} must be a 0x-prefixed 20-byte hex address, got {value!r}"
        )
    return checksum(value)


def _sent_at(body: dict[str, Any]) -> float | None:
    value = body.get("sentAt")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError("schema", f"sentAt must be a number, got {value!r}")
    return float(value)


def topic_address(topic: str) -> str:
    """The meter address inside ``tegrid/meters/<address>/<kind>``."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX or not _ADDRESS.match(parts[2]):
        raise MessageError("topic", f"unexpected topic {topic!r}")
    return checksum(parts[2])


def parse_reading(payload: bytes, topic: str | None = None) -> SignedReading:
    """Parse and type-check a reading message (the signature is checked by the caller, who knows the
    domain).
    """
    body = _load_object(payload, _READING_KEYS)
    meter = _address_field(body, "meter")
    reading = Reading(
        meter,
        _int_field(body, "intervalId"),
        _int_field(body, "importWh"),
        _int_field(body, "exportWh"),
    )
    signature = body.get("signature")
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        raise MessageError("schema", "signature must be 0x-prefixed 65-byte hex")
    if topic is not None and topic_address(topic) != meter:
        raise MessageError("topic", f"message for {meter} published on {topic!r}")
    return SignedReading(reading, bytes.fromhex(signature[2:]), _sent_at(body))


def parse_announcement(payload: bytes, topic: str | None = None) -> Announcement:
    body = _load_object(payload, _ANNOUNCE_KEYS)
    address = _address_field(body, "address")
    bus = body.get("bus")
    if (
        isinstance(bus, bool)
        or not isinstance(bus, int | str)
        or (isinstance(bus, str) and not 0 < len(bus) <= 64)
    ):
        raise MessageError("schema", f"bus must be an integer index or a short name, got {bus!r}")
    if topic is not None and topic_address(topic) != address:
        raise MessageError("topic", f"announcement for {address} published on {topic!r}")
    return Announcement(address, bus, _sent_at(body))
