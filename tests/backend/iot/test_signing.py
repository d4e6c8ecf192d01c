from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.iot.errors import MessageError
from backend.iot.signing import (
    SECP256K1_N,
    Reading,
    ReadingDomain,
    address_of,
    digest,
    recover_signer,
    sign_reading,
    typed_data,
)

KEY = "0x" + "11" * 32
DOMAIN = ReadingDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


@settings(max_examples=40, deadline=None)
@given(
    interval_id=st.integers(0, 2**64 - 1),
    import_wh=st.integers(0, 2**64 - 1),
    export_wh=st.integers(0, 2**64 - 1),
)
def test_sign_reading_matches_eth_account_typed_data(
    interval_id: int, import_wh: int, export_wh: int
) -> None:
    meter = address_of(KEY)
    reading = Reading(meter, interval_id, import_wh, export_wh)
    ours = sign_reading(KEY, DOMAIN.separator(), reading)
    theirs = Account.sign_typed_data(KEY, full_message=typed_data(DOMAIN, reading)).signature
    assert ours == bytes(theirs)
    assert recover_signer(DOMAIN.separator(), reading, ours) == meter


def test_digest_matches_eth_account_hash() -> None:
    from eth_account.messages import _hash_eip191_message

    reading = Reading(address_of(KEY), 7, 100, 0)
    signable = encode_typed_data(full_message=typed_data(DOMAIN, reading))
    assert digest(DOMAIN.separator(), reading) == bytes(_hash_eip191_message(signable))


def test_recover_signer_other_domain_gives_other_address() -> None:
    reading = Reading(address_of(KEY), 1, 2, 3)
    sig = sign_reading(KEY, DOMAIN.separator(), reading)
    other = ReadingDomain(1, DOMAIN.verifying_contract).separator()
    assert recover_signer(other, reading, sig) != reading.meter


def test_recover_signer_rejects_high_s_and_bad_v() -> None:
    reading = Reading(address_of(KEY), 1, 2, 3)
    sig = sign_reading(KEY, DOMAIN.separator(), reading)
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(MessageError) as exc:
        recover_signer(DOMAIN.separator(), reading, flipped)
    assert exc.value.reason == "bad_signature"
    with pytest.raises(MessageError):
        recover_signer(DOMAIN.separator(), reading, sig[:64] + b"\x01")
    with pytest.raises(MessageError):
        recover_signer(DOMAIN.separator(), reading, sig[:64])


def test_reading_rejects_out_of_range_values() -> None:
    with pytest.raises(MessageError):
        Reading(address_of(KEY), -1, 0, 0)
    with pytest.raises(MessageError):
        Reading(address_of(KEY), 0, 2**64, 0)
    with pytest.raises(MessageError):
        Reading(address_of(KEY), 0, True, 0)  # type: ignore[arg-type]
