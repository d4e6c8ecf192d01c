"""EIP-712 typed data of a meter reading, exactly as ``MeterReadings`` verifies it on-chain.

Domain: name "tegrid MeterReadings", version "1", chainId, verifyingContract. Struct:
``Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)``.

Hashing, signing and recovery are :mod:`backend.chain.eip712`'s fast path (coincurve, ~0.1 ms
instead of several ms through eth-account's generic encoder), shared with the market; this module
adds the reading's wire rules (a 65-byte signature, v 27/28) and turns failures into
``MessageError("bad_signature")``. The unit tests pin it against eth-account's
``encode_typed_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.chain import eip712
from backend.chain.address import checksum
from backend.chain.eip712 import SECP256K1_N, address_of, sign_digest
from backend.chain.errors import SignatureError, TypedDataError
from backend.chain.protocol import READINGS_DOMAIN_NAME
from backend.iot.errors import MessageError

__all__ = [
    "SECP256K1_N",
    "Reading",
    "ReadingDomain",
    "address_of",
    "digest",
    "recover_signer",
    "sign_reading",
    "typed_data",
]

UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class ReadingDomain:
    """The EIP-712 domain of one deployed ``MeterReadings`` contract."""

    chain_id: int
    verifying_contract: str

    def separator(self) -> bytes:
        return eip712.domain_separator(READINGS_DOMAIN_NAME, self.chain_id, self.verifying_contract)

    def as_dict(self) -> dict[str, Any]:
        return eip712.domain(READINGS_DOMAIN_NAME, self.chain_id, self.verifying_contract)


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
        try:
            return eip712.struct_hash(
                "Reading",
                {
                    "meter": self.meter,
                    "intervalId": self.interval_id,
                    "importWh": self.import_wh,
                    "exportWh": self.export_wh,
                },
            )
        except TypedDataError as exc:
            raise MessageError("schema", str(exc)) from None

    def as_tuple(self) -> tuple[str, int, int, int]:
        return (checksum(self.meter), self.interval_id, self.import_wh, self.export_wh)


def typed_data(domain: ReadingDomain, reading: Reading) -> dict[str, Any]:
    """The full ``eth_signTypedData_v4`` payload, for wallets, hardware meters and cross-checks."""
    return eip712.reading_typed_data(
        domain.chain_id,
        domain.verifying_contract,
        reading.meter,
        reading.interval_id,
        reading.import_wh,
        reading.export_wh,
    )


def digest(domain_separator: bytes, reading: Reading) -> bytes:
    return eip712.digest(domain_separator, reading.struct_hash())


def sign_reading(private_key: bytes | str, domain_separator: bytes, reading: Reading) -> bytes:
    """65-byte signature r || s || v (v = 27/28, low s), as OpenZeppelin's ``ECDSA.recover``
    expects.
    """
    return bytes.fromhex(sign_digest(digest(domain_separator, reading), private_key)[2:])


def recover_signer(domain_separator: bytes, reading: Reading, signature: bytes) -> str:
    """Checksummed address that signed ``reading``; rejects what the chain's ECDSA would reject."""
    if len(signature) != 65:
        raise MessageError("bad_signature", f"signature must be 65 bytes, got {len(signature)}")
    if signature[64] not in (27, 28):
        raise MessageError("bad_signature", f"v must be 27 or 28, got {signature[64]}")
    try:
        return eip712.recover(digest(domain_separator, reading), signature)
    except SignatureError as exc:
        raise MessageError("bad_signature", str(exc)) from None
