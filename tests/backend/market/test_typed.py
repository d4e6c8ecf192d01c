from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from backend.chain import eip712
from backend.market import typed
from backend.market.errors import BadSignatureError
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
