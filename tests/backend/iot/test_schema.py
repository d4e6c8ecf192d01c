from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.iot.errors import MessageError
from backend.iot.schema import (
    Announcement,
    SignedReading,
    announce_topic,
    parse_announcement,
    parse_reading,
    readings_topic,
)
from backend.iot.signing import Reading, address_of

METER = address_of("0x" + "22" * 32)


def _msg(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "meter": METER,
        "intervalId": 5,
        "importWh": 10,
        "exportWh": 0,
        "signature": "0x" + "ab" * 65,
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_parse_reading_round_trip() -> None:
    signed = SignedReading(Reading(METER, 5, 10, 0), b"\xab" * 65, 12.5)
    parsed = parse_reading(signed.to_json(), readings_topic(METER))
    assert parsed == signed


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed"),
        (b"[1,2]", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"x" * 5000, "malformed"),
        (_msg(v=2), "schema"),
        (_msg(meter="0x123"), "schema"),
        (_msg(intervalId="5"), "schema"),
        (_msg(importWh=True), "schema"),
        (_msg(exportWh=-1), "schema"),
        (_msg(importWh=2**64), "schema"),
        (_msg(signature="0xabc"), "schema"),
        (_msg(extra=1), "schema"),
        (_msg(sentAt="now"), "schema"),
    ],
)
def test_parse_reading_rejects_bad_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as exc:
        parse_reading(payload)
    assert exc.value.reason == reason


def test_parse_reading_rejects_topic_of_another_meter() -> None:
    other = address_of("0x" + "33" * 32)
    with pytest.raises(MessageError) as exc:
        parse_reading(_msg(), readings_topic(other))
    assert exc.value.reason == "topic"
    with pytest.raises(MessageError):
        parse_reading(_msg(), "tegrid/meters/nothex/readings")


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.text(max_size=10), children, max_size=6)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_parse_reading_only_ever_raises_message_error(payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        parse_reading(payload, readings_topic(METER))


def test_announcement_round_trip_and_checks() -> None:
    ann = Announcement(METER, 7)
    assert parse_announcement(ann.to_json(), announce_topic(METER)) == ann
    with pytest.raises(MessageError):
        parse_announcement(json.dumps({"v": 1, "address": METER, "bus": [1]}).encode())
    with pytest.raises(MessageError):
        parse_announcement(json.dumps({"v": 1, "address": METER, "bus": True}).encode())
