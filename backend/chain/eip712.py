"""EIP-712 typed data of the tegrid contracts, byte-for-byte what the contracts hash.

Every ``*_typed_data`` function returns the full ``eth_signTypedData_v4`` JSON document
(``types`` with ``EIP712Domain``, ``primaryType``, ``domain``, ``message``): wallets sign it as is,
eth-account with ``Account.sign_typed_data(key, full_message=...)`` (:func:`sign_typed_data`).
Field names are the Solidity names (camelCase); bytes32 values are ``0x`` hex strings (plain JSON).

Identifiers:
- order hash = EIP-712 digest of the Order (domain "tegrid EnergyMarket", "1", chain id, market);
- trade id: :func:`backend.chain.protocol.trade_id`;
- attestation = GridAttestation(intervalId, batchIndex, batchCount, tradeIds[], energyWh[],
  pricePerKWh[], verdicts[], evidenceHash): every value the contract records of each trade, in
  batch order.
Order and reading signatures go on chain in EIP-2098 compact form (r, vs): :func:`to_compact`.

The fast path, one for every signer and verifier (market, meters, oracle, validator, tests):
:class:`Domain` (separator computed once) and :func:`struct_hash` encode the fixed structs (every
field a static 32-byte word) by hand, :func:`sign_digest` signs and :func:`recover` recovers with
coincurve - the order accept path and the meters run thousands per second; eth-account's generic
``encode_typed_data`` (:func:`typed_data_hash`) is ~10x slower and the tests compare both.
``Cancel``, ``ConnectionRequest``, ``DeviceRegistration``, ``FlexOffer``, ``ControlAction``,
``ControlAck``, ``ModeAction`` and ``StateOfCharge`` are the backend's own (checked off chain only,
so far).

One module (a little over 500 lines) on purpose: the one place where typed data is defined, hashed,
signed and recovered, so the fast path and the reference path sit side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from coincurve import PrivateKey, PublicKey
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak as _keccak
from eth_utils import keccak, to_bytes, to_checksum_address

from backend.chain.address import checksum
from backend.chain.errors import SignatureError, TypedDataError
from backend.chain.protocol import (
    DOMAIN_VERSION,
    MARKET_DOMAIN_NAME,
    READINGS_DOMAIN_NAME,
    ZERO_ADDRESS,
)

DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
ORDER_TYPE = [
    {"name": "trader", "type": "address"},
    {"name": "side", "type": "uint8"},
    {"name": "intervalId", "type": "uint64"},
    {"name": "energyWh", "type": "uint64"},
    {"name": "pricePerKWh", "type": "uint128"},
    {"name": "nonce", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
    {"name": "counterparty", "type": "address"},
]
READING_TYPE = [
    {"name": "meter", "type": "address"},
    {"name": "intervalId", "type": "uint64"},
    {"name": "importWh", "type": "uint64"},
    {"name": "exportWh", "type": "uint64"},
]
ATTESTATION_TYPE = [
    {"name": "intervalId", "type": "uint64"},
    {"name": "batchIndex", "type": "uint32"},
    {"name": "batchCount", "type": "uint32"},
    {"name": "tradeIds", "type": "bytes32[]"},
    {"name": "energyWh", "type": "uint64[]"},
    {"name": "pricePerKWh", "type": "uint128[]"},
    {"name": "verdicts", "type": "uint8[]"},
    {"name": "evidenceHash", "type": "bytes32"},
]
CANCEL_TYPE = [
    {"name": "trader", "type": "address"},
    {"name": "orderHash", "type": "bytes32"},
]
CONNECTION_REQUEST_TYPE = [
    {"name": "wallet", "type": "address"},
    {"name": "meter", "type": "address"},
    {"name": "busId", "type": "uint32"},
    {"name": "maxExportW", "type": "uint64"},
    {"name": "maxImportW", "type": "uint64"},
    {"name": "nonce", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
]
# Registration of a controllable device (registry domain): signed by the owner wallet and, as
# proof of possession, by the device key - the same struct, so both bind every value registered.
DEVICE_REGISTRATION_TYPE = [
    {"name": "owner", "type": "address"},
    {"name": "device", "type": "address"},
    {"name": "busId", "type": "uint32"},
    {"name": "kind", "type": "uint8"},
    {"name": "minW", "type": "int32"},
    {"name": "maxW", "type": "int32"},
    {"name": "capacityWh", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
]
# A flexibility offer (market domain): direction 0 up (more injection / less consumption), 1 down.
FLEX_OFFER_TYPE = [
    {"name": "provider", "type": "address"},
    {"name": "device", "type": "address"},
    {"name": "intervalId", "type": "uint64"},
    {"name": "direction", "type": "uint8"},
    {"name": "powerW", "type": "uint32"},
    {"name": "baselineW", "type": "int32"},
    {"name": "pricePerKWh", "type": "uint128"},
    {"name": "nonce", "type": "uint256"},
    {"name": "expiry", "type": "uint64"},
]
# A control action to a device (registry domain), signed by a grid operator key: the absolute
# power target setpointW (signed W: positive inject) of one activation for one interval.
CONTROL_ACTION_TYPE = [
    {"name": "activationId", "type": "bytes32"},
    {"name": "device", "type": "address"},
    {"name": "intervalId", "type": "uint64"},
    {"name": "setpointW", "type": "int64"},
    {"name": "expiry", "type": "uint64"},
]
# The device's answer to a control action (registry domain), signed by the device key: status 0
# applied, else the refusal reason (backend.iot.control.AckStatus); appliedW the power it runs at.
CONTROL_ACK_TYPE = [
    {"name": "activationId", "type": "bytes32"},
    {"name": "device", "type": "address"},
    {"name": "status", "type": "uint8"},
    {"name": "appliedW", "type": "int64"},
    {"name": "at", "type": "uint64"},
]
# A grid mode switch told to a grid-forming device (registry domain), signed by a grid operator
# key: mode 0 grid-connected, 1 islanded (form the grid), from effectiveInterval (the first interval
# the market validates in that mode); actionId names the GridModeChanged event and the device.
MODE_ACTION_TYPE = [
    {"name": "actionId", "type": "bytes32"},
    {"name": "device", "type": "address"},
    {"name": "mode", "type": "uint8"},
    {"name": "effectiveInterval", "type": "uint64"},
    {"name": "expiry", "type": "uint64"},
]
# A battery's state of charge as the device measured it at ``at`` (its clock, unix seconds),
# signed by the device key (registry domain); the latest ``at`` per device wins.
STATE_OF_CHARGE_TYPE = [
    {"name": "device", "type": "address"},
    {"name": "socWh", "type": "uint64"},
    {"name": "at", "type": "uint64"},
]
# The structs of static fields, hashed by :func:`struct_hash`.
STRUCTS: dict[str, list[dict[str, str]]] = {
    "Order": ORDER_TYPE,
    "Reading": READING_TYPE,
    "Cancel": CANCEL_TYPE,
    "ConnectionRequest": CONNECTION_REQUEST_TYPE,
    "DeviceRegistration": DEVICE_REGISTRATION_TYPE,
    "FlexOffer": FLEX_OFFER_TYPE,
    "ControlAction": CONTROL_ACTION_TYPE,
    "ControlAck": CONTROL_ACK_TYPE,
    "ModeAction": MODE_ACTION_TYPE,
    "StateOfCharge": STATE_OF_CHARGE_TYPE,
}
ORDER_TYPE_STRING = (
    "Order(address trader,uint8 side,uint64 intervalId,uint64 energyWh,uint128 pricePerKWh,"
    "uint64 nonce,uint64 expiry,address counterparty)"
)
READING_TYPE_STRING = "Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)"
ATTESTATION_TYPE_STRING = (
    "GridAttestation(uint64 intervalId,uint32 batchIndex,uint32 batchCount,bytes32[] tradeIds,"
    "uint64[] energyWh,uint128[] pricePerKWh,uint8[] verdicts,bytes32 evidenceHash)"
)
_ATTESTATION_TYPEHASH = keccak(text=ATTESTATION_TYPE_STRING)
# FlexibilityMarket's batch attestation: `activations` is the batch's packed calldata (EIP-712
# hashes a `bytes` member as keccak256 of its content), covering every value of every activation.
FLEX_ATTESTATION_TYPE_STRING = (
    "FlexAttestation(uint64 intervalId,uint32 batchIndex,bytes activations,bytes32 evidenceHash)"
)
_FLEX_ATTESTATION_TYPEHASH = keccak(text=FLEX_ATTESTATION_TYPE_STRING)
_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


def _hex32(value: bytes | str) -> str:
    raw = to_bytes(hexstr=value) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return "0x" + raw.hex()


def domain(name: str, chain_id: int, verifying_contract: str) -> dict[str, Any]:
    """The EIP-712 domain of a tegrid contract."""
    return {
        "name": name,
        "version": DOMAIN_VERSION,
        "chainId": int(chain_id),
        "verifyingContract": to_checksum_address(verifying_contract),
    }


def domain_separator(name: str, chain_id: int, verifying_contract: str) -> bytes:
    """The EIP-712 domain separator (``hashStruct(EIP712Domain)``) of :func:`domain`."""
    return Domain(name, DOMAIN_VERSION, int(chain_id), verifying_contract).separator


def _document(
    primary: str, fields: list[dict[str, str]], dom: dict[str, Any], message: dict[str, Any]
) -> dict[str, Any]:
    return {
        "types": {"EIP712Domain": DOMAIN_TYPE, primary: fields},
        "primaryType": primary,
        "domain": dom,
        "message": message,
    }


def order_message(order: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise an order dict (Solidity field names) to the exact message values."""
    return {
        "trader": to_checksum_address(order["trader"]),
        "side": int(order["side"]),
        "intervalId": int(order["intervalId"]),
        "energyWh": int(order["energyWh"]),
        "pricePerKWh": int(order["pricePerKWh"]),
        "nonce": int(order["nonce"]),
        "expiry": int(order["expiry"]),
        "counterparty": to_checksum_address(order.get("counterparty") or ZERO_ADDRESS),
    }


def order_typed_data(
    chain_id: int, market_address: str, order: Mapping[str, Any]
) -> dict[str, Any]:
    """Full typed-data document of an Order for EnergyMarket at ``market_address``."""
    return _document(
        "Order",
        ORDER_TYPE,
        domain(MARKET_DOMAIN_NAME, chain_id, market_address),
        order_message(order),
    )


def reading_typed_data(
    chain_id: int,
    readings_address: str,
    meter: str,
    interval_id: int,
    import_wh: int,
    export_wh: int,
) -> dict[str, Any]:
    """Full typed-data document of a Reading for MeterReadings at ``readings_address``."""
    message = {
        "meter": to_checksum_address(meter),
        "intervalId": int(interval_id),
        "importWh": int(import_wh),
        "exportWh": int(export_wh),
    }
    return _document(
        "Reading", READING_TYPE, domain(READINGS_DOMAIN_NAME, chain_id, readings_address), message
    )


class AttestedTrade(NamedTuple):
    """What the validator's attestation binds of one trade: the contract records exactly these."""

    trade_id: bytes | str
    energy_wh: int
    price_per_kwh: int
    verdict: int


def attestation_typed_data(
    chain_id: int,
    market_address: str,
    interval_id: int,
    batch_index: int,
    batch_count: int,
    trades: Sequence[AttestedTrade],
    evidence_hash: bytes | str,
) -> dict[str, Any]:
    """Full typed-data document of a GridAttestation over batch ``batch_index`` of ``batch_count``
    (the trades in batch order)."""
    message = {
        "intervalId": int(interval_id),
        "batchIndex": int(batch_index),
        "batchCount": int(batch_count),
        "tradeIds": [_hex32(t.trade_id) for t in trades],
        "energyWh": [int(t.energy_wh) for t in trades],
        "pricePerKWh": [int(t.price_per_kwh) for t in trades],
        "verdicts": [int(t.verdict) for t in trades],
        "evidenceHash": _hex32(evidence_hash),
    }
    return _document(
        "GridAttestation",
        ATTESTATION_TYPE,
        domain(MARKET_DOMAIN_NAME, chain_id, market_address),
        message,
    )


def attestation_struct_hash(
    interval_id: int,
    batch_index: int,
    batch_count: int,
    trades: Sequence[AttestedTrade],
    evidence_hash: bytes | str,
) -> bytes:
    """``hashStruct`` of a GridAttestation, encoded directly (a batch of thousands of trades would
    take eth-account's generic encoder long): each array hashes its 32-byte words."""

    def words(values: Sequence[int]) -> bytes:
        return keccak(b"".join(int(v).to_bytes(32, "big") for v in values))

    ids = keccak(b"".join(bytes.fromhex(_hex32(t.trade_id)[2:]) for t in trades))
    return keccak(
        _ATTESTATION_TYPEHASH
        + int(interval_id).to_bytes(32, "big")
        + int(batch_index).to_bytes(32, "big")
        + int(batch_count).to_bytes(32, "big")
        + ids
        + words([t.energy_wh for t in trades])
        + words([t.price_per_kwh for t in trades])
        + words([t.verdict for t in trades])
        + bytes.fromhex(_hex32(evidence_hash)[2:])
    )


def typed_data_hash(full_message: Mapping[str, Any]) -> bytes:
    """The 32-byte EIP-712 digest (what ``ecrecover`` sees) of a typed-data document."""
    signable = encode_typed_data(full_message=dict(full_message))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def order_hash(chain_id: int, market_address: str, order: Mapping[str, Any]) -> bytes:
    """orderHash: the EIP-712 digest of an order."""
    return typed_data_hash(order_typed_data(chain_id, market_address, order))


def reading_hash(
    chain_id: int,
    readings_address: str,
    meter: str,
    interval_id: int,
    import_wh: int,
    export_wh: int,
) -> bytes:
    """EIP-712 digest of a reading."""
    return typed_data_hash(
        reading_typed_data(chain_id, readings_address, meter, interval_id, import_wh, export_wh)
    )


def attestation_hash(
    chain_id: int,
    market_address: str,
    interval_id: int,
    batch_index: int,
    batch_count: int,
    trades: Sequence[AttestedTrade],
    evidence_hash: bytes | str,
) -> bytes:
    """EIP-712 digest of a GridAttestation (what the validator signs and the contract recovers)."""
    separator = domain_separator(MARKET_DOMAIN_NAME, chain_id, market_address)
    struct = attestation_struct_hash(interval_id, batch_index, batch_count, trades, evidence_hash)
    return keccak(b"\x19\x01" + separator + struct)


def flex_attestation_hash(
    dom: Domain, interval_id: int, batch_index: int, activations: bytes, evidence_hash: bytes
) -> bytes:
    """EIP-712 digest of a FlexAttestation in FlexibilityMarket's domain ``dom``."""
    struct = _keccak(
        _FLEX_ATTESTATION_TYPEHASH
        + interval_id.to_bytes(32, "big")
        + batch_index.to_bytes(32, "big")
        + _keccak(bytes(activations))
        + bytes32(evidence_hash, "evidenceHash")
    )
    return digest(dom.separator, struct)


def sign_typed_data(private_key: str | bytes, full_message: Mapping[str, Any]) -> bytes:
    """65-byte (r, s, v) signature of a typed-data document, as a wallet returns it."""
    signed = Account.sign_typed_data(private_key, full_message=dict(full_message))
    return bytes(signed.signature)


def to_compact(signature: bytes) -> tuple[bytes, bytes]:
    """EIP-2098 compact form (r, vs) of a 65-byte signature: vs = (v - 27) << 255 | s."""
    if len(signature) != 65:
        raise ValueError("expected a 65-byte signature")
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    if v < 27:
        v += 27
    vs = ((v - 27) << 255) | s
    return r, vs.to_bytes(32, "big")


def sign_compact(private_key: str | bytes, full_message: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Sign a typed-data document; return the compact (r, vs) the contracts take."""
    return to_compact(sign_typed_data(private_key, full_message))


def order_tuple(order: Mapping[str, Any]) -> tuple[Any, ...]:
    """ABI tuple of an Order (field order of the Solidity struct)."""
    m = order_message(order)
    return (
        m["trader"], m["side"], m["intervalId"], m["energyWh"], m["pricePerKWh"],
        m["nonce"], m["expiry"], m["counterparty"],
    )  # fmt: skip


@lru_cache(maxsize=4096)
def _private_key(private_key: str | bytes) -> PrivateKey:
    """The parsed key (coincurve builds its context and checks the scalar, ~0.1 ms: as much as
    the signature itself); signers sign with the same few keys again and again."""
    key = (
        bytes.fromhex(private_key[2:] if private_key.startswith("0x") else private_key)
        if isinstance(private_key, str)
        else private_key
    )
    return PrivateKey(key)


def sign_digest(digest: bytes, private_key: str | bytes) -> str:
    """Sign a 32-byte digest with coincurve (~0.07 ms; eth-account's generic path takes ~10x as
    long): ``0x`` + r||s||v, v 27/28. The fast path of order clients, meters and the validator."""
    sig = _private_key(private_key).sign_recoverable(digest, hasher=None)
    return "0x" + sig[:64].hex() + f"{sig[64] + 27:02x}"


# ----------------------------------------------------------------------------- the fast hasher
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2
_UINT_BITS = {"uint8": 8, "uint32": 32, "uint64": 64, "uint128": 128, "uint256": 256}
_INT_BITS = {"int32": 32, "int64": 64}


def _type_string(name: str, fields: list[dict[str, str]]) -> bytes:
    return f"{name}({','.join(f['type'] + ' ' + f['name'] for f in fields)})".encode()


TYPEHASHES: dict[str, bytes] = {name: _keccak(_type_string(name, f)) for name, f in STRUCTS.items()}


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
        sep = _keccak(
            _DOMAIN_TYPEHASH
            + _keccak(self.name.encode())
            + _keccak(self.version.encode())
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
            "types": {"EIP712Domain": DOMAIN_TYPE, primary_type: STRUCTS[primary_type]},
            "primaryType": primary_type,
        }

    def digest(self, primary_type: str, message: Mapping[str, Any]) -> bytes:
        """``_keccak(0x1901 || domainSeparator || hashStruct(message))`` for one of the fixed
        structs."""
        return digest(self._sep, struct_hash(primary_type, message))


def digest(separator: bytes, struct: bytes) -> bytes:
    """The EIP-712 digest of a struct hash under a domain separator."""
    return _keccak(b"\x19\x01" + separator + struct)


def _word(kind: str, value: Any, name: str) -> bytes:
    if kind == "address":
        return bytes(12) + address_bytes(value, name)
    if kind == "bytes32":
        return bytes32(value, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypedDataError(f"{name} must be an integer")
    if kind in _INT_BITS:  # two's complement, sign-extended to 256 bits (as abi.encode does)
        half = 1 << (_INT_BITS[kind] - 1)
        if not -half <= value < half:
            raise TypedDataError(f"{name} must be between -2^{_INT_BITS[kind] - 1} and {half - 1}")
        return (value % (1 << 256)).to_bytes(32, "big")
    bits = _UINT_BITS[kind]
    if not 0 <= value < (1 << bits):
        raise TypedDataError(f"{name} must be between 0 and 2^{bits}-1")
    return value.to_bytes(32, "big")


def struct_hash(primary_type: str, message: Mapping[str, Any]) -> bytes:
    """``hashStruct`` of one of :data:`STRUCTS`, encoded directly."""
    fields = STRUCTS[primary_type]
    try:
        words = b"".join(_word(f["type"], message[f["name"]], f["name"]) for f in fields)
    except KeyError as exc:
        raise TypedDataError(f"message is missing field {exc.args[0]}") from None
    return _keccak(TYPEHASHES[primary_type] + words)


def address_bytes(value: Any, name: str = "address") -> bytes:
    if not isinstance(value, str) or len(value) != 42 or not value.startswith(("0x", "0X")):
        raise TypedDataError(f"{name} must be a 0x-prefixed 20-byte hex address")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise TypedDataError(f"{name} must be a 0x-prefixed 20-byte hex address") from None


def bytes32(value: Any, name: str = "value") -> bytes:
    if isinstance(value, bytes) and len(value) == 32:
        return value
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        raise TypedDataError(f"{name} must be 0x-prefixed 32-byte hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise TypedDataError(f"{name} must be 0x-prefixed 32-byte hex") from None


def split_signature(signature: str | bytes) -> tuple[int, int, int]:
    """Parse a 65-byte ``r || s || v`` signature (v 27/28 or 0/1) or a 64-byte EIP-2098
    compact one (``r || yParity << 255 | s``, what ethers' ``Signature.compactSerialized`` and
    viem's ``serializeCompactSignature`` give), as bytes or hex; refuse malleable high-s forms,
    as OpenZeppelin's ECDSA does on chain."""
    if isinstance(signature, bytes):
        sig = signature
        if len(sig) not in (64, 65):
            raise SignatureError(
                "signature must be 65 bytes (r, s, v) or 64 bytes (EIP-2098 r, vs) in hex"
            )
    else:
        raw = signature[2:] if signature.startswith(("0x", "0X")) else signature
        if len(raw) not in (128, 130):
            raise SignatureError(
                "signature must be 65 bytes (r, s, v) or 64 bytes (EIP-2098 r, vs) in hex"
            )
        try:
            sig = bytes.fromhex(raw)
        except ValueError:
            raise SignatureError("signature is not valid hex") from None
    r = int.from_bytes(sig[:32], "big")
    if len(sig) == 64:
        vs = int.from_bytes(sig[32:64], "big")
        s, v = vs & ((1 << 255) - 1), vs >> 255
    else:
        s = int.from_bytes(sig[32:64], "big")
        v = sig[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1) or not 0 < r < SECP256K1_N or not 0 < s <= _HALF_N:
        raise SignatureError("signature has an invalid r, s or v (high-s signatures are refused)")
    return r, s, v


def canonical_signature(signature: str) -> str:
    """The 65-byte ``0x`` r || s || v (v 27/28) form of a valid signature, compact or not: the
    one form the store keeps and the chain encoder reads."""
    r, s, v = split_signature(signature)
    return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + v])).hex()


def recover(digest: bytes, signature: str | bytes) -> str:
    """The checksummed address that signed ``digest``; :class:`SignatureError` if none can be
    recovered (or the signature is malformed or malleable)."""
    r, s, v = split_signature(signature)
    try:
        pub = PublicKey.from_signature_and_message(
            r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v]), digest, hasher=None
        )
    except Exception:  # coincurve raises plain Exception/ValueError for unrecoverable signatures
        raise SignatureError("signature does not recover to any key") from None
    return checksum(_keccak(pub.format(compressed=False)[1:])[-20:])


def address_of(private_key: bytes | str) -> str:
    """The checksummed address of a private key."""
    key = (
        bytes.fromhex(private_key.removeprefix("0x"))
        if isinstance(private_key, str)
        else private_key
    )
    if len(key) != 32:
        raise ValueError(f"a private key is 32 bytes, not {len(key)}")
    return checksum(_keccak(PrivateKey(key).public_key.format(compressed=False)[1:])[-20:])
