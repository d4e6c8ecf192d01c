from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from backend.chain import eip712
from backend.market import typed
from backend.market.errors import BadSignatureError, InvalidOrderError
from backend.settings import ANVIL_KEYS

DOMAIN = typed.market_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
MSG = {
    "trader": Account.from_key(ANVIL_KEYS[1]).address,
    "side": 1,
    "intervalId": 1_900_000,
    "energyWh": 1500,
    "pricePerKWh": 2**100 + 7,
    "nonce": 2**64 - 1,
    "expiry": 2**40,
    "counterparty": "0x" + "ab" * 20,
}


def test_digest_matches_eth_account() -> None:
    doc = {**DOMAIN.template("Order"), "message": MSG}
    signable = encode_typed_data(full_message=doc)
    expected = bytes(
        __import__("eth_utils").keccak(b"\x19" + signable.version + signable.header + signable.body)
    )
    assert DOMAIN.digest("Order", MSG) == expected


def test_recover_roundtrip_and_refusals() -> None:
    doc = {**DOMAIN.template("Order"), "message": MSG}
    sig = "0x" + Account.sign_typed_data(
        ANVIL_KEYS[1], full_message=doc
    ).signature.hex().removeprefix("0x")
    digest = DOMAIN.digest("Order", MSG)
    assert typed.recover(digest, sig) == MSG["trader"]
    assert typed.recover(digest, sig) == typed.recover(
        digest, eip712.sign_digest(digest, ANVIL_KEYS[1])
    )
    with pytest.raises(BadSignatureError):
        typed.recover(digest, "0x1234")
    r, s, _v = typed.split_signature(sig)
    high_s = (
        "0x"
        + r.to_bytes(32, "big").hex()
        + (eip712.SECP256K1_N - s).to_bytes(32, "big").hex()
        + "1b"
    )
    with pytest.raises(BadSignatureError):
        typed.recover(digest, high_s)


@pytest.mark.parametrize("baseline_w", [-(2**31), -1, 0, 2**31 - 1])
def test_flex_offer_digest_matches_eth_account_for_signed_ints(baseline_w: int) -> None:
    """``int32`` is encoded sign-extended to 256 bits, as eth-account's reference encoder does."""
    msg = {
        "provider": MSG["trader"],
        "device": "0x" + "cd" * 20,
        "intervalId": 1_900_000,
        "direction": 1,
        "powerW": 2**32 - 1,
        "baselineW": baseline_w,
        "pricePerKWh": 2**128 - 1,
        "nonce": 2**256 - 1,
        "expiry": 2**40,
    }
    doc = {**DOMAIN.template("FlexOffer"), "message": msg}
    assert DOMAIN.digest("FlexOffer", msg) == eip712.typed_data_hash(doc)
    registry = typed.registry_domain(31337, "0x" + "22" * 20)
    reg = {"owner": msg["provider"], "device": msg["device"], "busId": 7, "kind": 1,
           "minW": baseline_w, "maxW": 2**31 - 1, "capacityWh": 1, "expiry": 2**40}  # fmt: skip
    doc = {**registry.template("DeviceRegistration"), "message": reg}
    assert registry.digest("DeviceRegistration", reg) == eip712.typed_data_hash(doc)


@pytest.mark.parametrize("value", [-(2**31) - 1, 2**31, True])
def test_int32_out_of_range_is_invalid(value: object) -> None:
    msg = {"provider": MSG["trader"], "device": MSG["trader"], "intervalId": 1, "direction": 0,
           "powerW": 1, "baselineW": value, "pricePerKWh": 1, "nonce": 1, "expiry": 1}  # fmt: skip
    with pytest.raises(InvalidOrderError, match="baselineW"):
        DOMAIN.digest("FlexOffer", msg)
