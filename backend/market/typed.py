"""EIP-712 typed data the market signs and verifies: orders, cancellations and connection requests.

The ``Order`` struct and the domain ("tegrid EnergyMarket", version "1", chain id, market address)
are
exactly what ``EnergyMarket`` verifies on chain, so a wallet signing the template from
``GET /orders/eip712`` (``eth_signTypedData_v4``, eth-account, ``cast wallet sign --data``) signs
what the
contract checks. ``Cancel`` and ``ConnectionRequest`` are checked off chain only (by this backend).

Hashing is done by hand for these fixed structs (every field is a static 32-byte word) and
signatures
are recovered with coincurve, because the accept path runs thousands of times per second; the tests
check the digests against eth-account's generic ``encode_typed_data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coincurve import PublicKey
from eth_hash.auto import keccak

from backend.chain.address import checksum
from backend.chain.eip712 import (
    DOMAIN_TYPE,
    DOMAIN_VERSION,
    MARKET_DOMAIN_NAME,
    ORDER_TYPE,
)
from backend.market.errors import BadSignature, InvalidOrder

REGISTRY_DOMAIN_NAME = "tegrid ParticipantRegistry"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

SELL = 0
BUY = 1

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2

# The domain and Order structs are the contract's, defined once in backend.chain.eip712.
EIP712_DOMAIN_FIELDS = DOMAIN_TYPE
ORDER_FIELDS: list[dict[str, str]] = ORDER_TYPE
CANCEL_FIELDS: list[dict[str, str]] = [
    {"name": "trader", "type": "address"},
    {"name": "orderHash", "type": "bytes32"},
]
CONNECTION_FIELDS: list[dict[str, str]] = [
    {"name": "wallet", "type": "address"},
    {"name": "meter", "type": "address"},
    {"name": "busId", "type": "uint32"},
    {"name": "maxExportW", "type": "uint64"},
    {"name": "maxImportW", "type": "uint64"},
    {"name": "nonce", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
]
STRUCTS: dict[str, list[dict[str, str]]] = {
    "Order": ORDER_FIELDS,
    "Cancel": CANCEL_FIELDS,
    "ConnectionRequest": CONNECTION_FIELDS,
}


_UINT_BITS = {"uint8": 8, "uint32": 32, "uint64": 64, "uint128": 128, "uint256": 256}


def _type_string(name: str, fields: list[dict[str, str]]) -> bytes:
    return f"{name}({','.join(f['type'] + ' ' + f['name'] for f in fields)})".encode()


TYPEHASHES: dict[str, bytes] = {name: keccak(_type_string(name, f)) for name, f in STRUCTS.items()}
_DOMAIN_TYPEHASH = keccak(_type_string("EIP712Domain", EIP712_DOMAIN_FIELDS))


@dataclass(frozen=True)
class Domain:
    """An EIP-712 domain with its separator computed once."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str
    _sep: bytes = field(init=False, repr=False, compare=False, default=b"")

    @property
    def separator(self) -> bytes:
        return self._sep

    def __post_init__(self) -> None:
        sep = keccak(
            _DOMAIN_TYPEHASH
            + keccak(self.name.encode())
            + keccak(self.version.encode())
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + bytes.fromhex(self.verifying_contract[2:])
        )
        object.__setattr__(self, "_sep", sep)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": checksum(self.verifying_contract),
        }

    def template(self, primary_type: str) -> dict[str, Any]:
        """The full typed-data template (types include ``EIP712Domain``); fill in ``message`` to
        sign."""
        return {
            "domain": self.as_dict(),
            "types": {"EIP712Domain": EIP712_DOMAIN_FIELDS, primary_type: STRUCTS[primary_type]},
            "primaryType": primary_type,
        }

    def digest(self, primary_type: str, message: dict[str, Any]) -> bytes:
        """``keccak(0x1901 || domainSeparator || hashStruct(message))`` for one of the fixed
        structs."""
        return keccak(b"\x19\x01" + self._sep + struct_hash(primary_type, message))


def market_domain(chain_id: int, market_address: str) -> Domain:
    return Domain(MARKET_DOMAIN_NAME, DOMAIN_VERSION, chain_id, market_address)


def registry_domain(chain_id: int, registry_address: str) -> Domain:
    return Domain(REGISTRY_DOMAIN_NAME, DOMAIN_VERSION, chain_id, registry_address)


def _word(kind: str, value: Any, name: str) -> bytes:
    if kind == "address":
        raw = address_bytes(value, name)
        return bytes(12) + raw
    if kind == "bytes32":
        return bytes32(value, name)
    bits = _UINT_BITS[kind]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOrder(f"{name} must be an integer")
    if not 0 <= value < (1 << bits):
        raise InvalidOrder(f"{name} must be between 0 and 2^{bits}-1")
    return value.to_bytes(32, "big")


def struct_hash(primary_type: str, message: dict[str, Any]) -> bytes:
    fields = STRUCTS[primary_type]
    try:
        words = b"".join(_word(f["type"], message[f["name"]], f["name"]) for f in fields)
    except KeyError as exc:
        raise InvalidOrder(f"message is missing field {exc.args[0]}") from None
    return keccak(TYPEHASHES[primary_type] + words)


def address_bytes(value: Any, name: str = "address") -> bytes:
    if not isinstance(value, str) or len(value) != 42 or not value.startswith(("0x", "0X")):
        raise InvalidOrder(f"{name} must be a 0x-prefixed 20-byte hex address")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidOrder(f"{name} must be a 0x-prefixed 20-byte hex address") from None


def bytes32(value: Any, name: str = "value") -> bytes:
    if isinstance(value, bytes) and len(value) == 32:
        return value
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        raise InvalidOrder(f"{name} must be 0x-prefixed 32-byte hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidOrder(f"{name} must be 0x-prefixed 32-byte hex") from None


def split_signature(signature: str) -> tuple[int, int, int]:
    """Parse a 65-byte ``r || s || v`` hex signature (v 27/28 or 0/1) or a 64-byte EIP-2098
    compact one (``r || yParity << 255 | s``, what ethers' ``Signature.compactSerialized`` and
    viem's ``serializeCompactSignature`` give); refuse malleable high-s forms, as OpenZeppelin's
    ECDSA does on chain."""
    raw = signature[2:] if signature.startswith(("0x", "0X")) else signature
    if len(raw) not in (128, 130):
        raise BadSignature(
            "signature must be 65 bytes (r, s, v) or 64 bytes (EIP-2098 r, vs) in hex"
        )
    try:
        sig = bytes.fromhex(raw)
    except ValueError:
        raise BadSignature("signature is not valid hex") from None
    r = int.from_bytes(sig[:32], "big")
    if len(sig) == 64:
        vs = int.from_bytes(sig[32:64], "big")
        s, v = vs & ((1 << 255) - 1), vs >> 255
    else:
        s = int.from_bytes(sig[32:64], "big")
        v = sig[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1) or not 0 < r < _SECP256K1_N or not 0 < s <= _HALF_N:
        raise BadSignature("signature has an invalid r, s or v (high-s signatures are refused)")
    return r, s, v


def canonical_signature(signature: str) -> str:
    """The 65-byte ``0x`` r || s || v (v 27/28) form of a valid signature, compact or not: the
    one form the store keeps and the chain encoder reads."""
    r, s, v = split_signature(signature)
    return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + v])).hex()


def recover(digest: bytes, signature: str) -> str:
    """The checksummed address that signed ``digest``; ``BadSignature`` if none can be recovered."""
    r, s, v = split_signature(signature)
    try:
        pub = PublicKey.from_signature_and_message(
            r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v]), digest, hasher=None
        )
    except Exception:  # coincurve raises plain Exception/ValueError for unrecoverable signatures
        raise BadSignature("signature does not recover to any key") from None
    return checksum(keccak(pub.format(compressed=False)[1:])[-20:])
