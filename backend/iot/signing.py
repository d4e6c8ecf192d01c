"""EIP-712 typed data of a meter reading, exactly as ``MeterReadings`` verifies it on-chain.

Domain: name "tegrid MeterReadings", version "1", chainId, verifyingContract. Struct:
``Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)``.

Hashing is done by hand here (the struct has four static fields) over the domain separator computed
once; signing is ``backend.chain.eip712.sign_digest`` (coincurve, 0.07 ms) and checks go through
eth-keys on its coincurve backend (~0.1 ms instead of several ms through eth-account's generic
encoder). The unit tests pin this against eth-account's ``encode_typed_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_keys import KeyAPI
from eth_keys.backends import CoinCurveECCBackend
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_canonical_address

from backend.chain.address import checksum
from backend.chain.eip712 import (
    DOMAIN_VERSION,
    READING_TYPE_STRING,
    READINGS_DOMAIN_NAME,
    sign_digest,
)
from backend.iot import MessageError

DOMAIN_NAME = READINGS_DOMAIN_NAME
READING_TYPE = READING_TYPE_STRING
READING_TYPEHASH = keccak(text=READING_TYPE)
DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
UINT64_MAX = 2**64 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_keys = KeyAPI(backend=CoinCurveECCBackend())


@dataclass(frozen=True)
class ReadingDomain:
    """The EIP-712 domain of one deployed ``MeterReadings`` contract."""

    chain_id: int
    verifying_contract: str

    def separator(self) -> bytes:
        return keccak(
            DOMAIN_TYPEHASH
            + keccak(text=DOMAIN_NAME)
            + keccak(text=DOMAIN_VERSION)
            + self.chain_id.to_bytes(32, "big")
            + to_canonical_address(self.verifying_contract).rjust(32, b"\0")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": checksum(self.verifying_contract),
        }


@dataclass(frozen=True)
class Reading:
    """One meter's energy over one delivery interval, in Wh (unsigned, 64 bit)."""

    meter: str
    interval_id: int
    import_wh: int
    export_wh: int

    def __post_init__(self) -> None:
        for name in ("interval_id", "import_wh", "export_wh"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= UINT64_MAX
            ):
                raise MessageError(
                    "schema", f"{name} must be an integer in [0, 2^64-1], got {value!r}"
                )

    def struct_hash(self) -> bytes:
        return keccak(
            READING_TYPEHASH
            + to_canonical_address(self.meter).rjust(32, b"\0")
            + self.interval_id.to_bytes(32, "big")
            + self.import_wh.to_bytes(32, "big")
            + self.export_wh.to_bytes(32, "big")
        )

    def as_tuple(self) -> tuple[str, int, int, int]:
        return (checksum(self.meter), self.interval_id, self.import_wh, self.export_wh)


def typed_data(domain: ReadingDomain, reading: Reading) -> dict[str, Any]:
    """The full ``eth_signTypedData_v4`` payload, for wallets, hardware meters and cross-checks."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Reading": [
                {"name": "meter", "type": "address"},
                {"name": "intervalId", "type": "uint64"},
                {"name": "importWh", "type": "uint64"},
                {"name": "exportWh", "type": "uint64"},
            ],
        },
        "primaryType": "Reading",
        "domain": domain.as_dict(),
        "message": {
            "meter": checksum(reading.meter),
            "intervalId": reading.interval_id,
            "importWh": reading.import_wh,
            "exportWh": reading.export_wh,
        },
    }


def digest(domain_separator: bytes, reading: Reading) -> bytes:
    return keccak(b"\x19\x01" + domain_separator + reading.struct_hash())


def sign_reading(private_key: bytes | str, domain_separator: bytes, reading: Reading) -> bytes:
    """65-byte signature r || s || v (v = 27/28, low s), as OpenZeppelin's ``ECDSA.recover``
    expects.
    """
    return bytes.fromhex(sign_digest(digest(domain_separator, reading), private_key)[2:])


def recover_signer(domain_separator: bytes, reading: Reading, signature: bytes) -> str:
    """Checksummed address that signed ``reading``; rejects what the chain's ECDSA would reject."""
    if len(signature) != 65:
        raise MessageError("bad_signature", f"signature must be 65 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise MessageError("bad_signature", f"v must be 27 or 28, got {v}")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        raise MessageError("bad_signature", "r/s out of range (high-s signatures are malleable)")
    try:
        sig = _keys.Signature(vrs=(v - 27, r, s))
        public_key = _keys.ecdsa_recover(digest(domain_separator, reading), sig)
    except (BadSignature, ValidationError, ValueError) as exc:
        raise MessageError("bad_signature", str(exc)) from None
    return checksum("0x" + public_key.to_canonical_address().hex())


def address_of(private_key: bytes | str) -> str:
    key_bytes = (
        bytes.fromhex(private_key.removeprefix("0x"))
        if isinstance(private_key, str)
        else private_key
    )
    return _keys.PrivateKey(key_bytes).public_key.to_checksum_address()
