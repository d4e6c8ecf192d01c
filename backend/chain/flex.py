"""FlexibilityMarket's packed activations and its arithmetic, byte-for-byte what the contract reads.

One activation = the provider's signed ``FlexOffer`` plus what the validator activated of it, 293
bytes (``contracts/libraries/PackedActivation.sol`` names the offsets, docs/packed-calldata.md
lists them): provider (20) | device (20) | intervalId (8) | direction (1) | powerW (4) |
baselineW (4, two's complement) | pricePerKWh (16) | nonce (32) | expiry (8) | r (32) | vs (32) |
activatedW (4) | tradeId (32) | tradeEnergyWh (8) | payer0 (20) | share0 (16) | payer1 (20) |
share1 (16). A batch is the activations concatenated, in ascending (offerHash, tradeId) order;
the validator's ``FlexAttestation`` signs those bytes
(:func:`backend.chain.eip712.flex_attestation_hash`).
What the batch commits to is each activation's 121-byte record (:meth:`Activation.record`,
``contracts/libraries/ActivationRecord.sol``): device (20) | direction (1) | baselineW (4) |
activatedW (4) | provider (20) | payer0 (20) | share0 (16) | payer1 (20) | share1 (16) - what
settling and reclaiming take again (:func:`records`; the commitment: :func:`commitment`).
Settling reports per activation (meteredW, deliveredW) (:func:`deliveries`).

The rules (who pays, what is delivered, what is paid) are the contract's, in integers; the
market and the tests compute them here, nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from backend.chain import eip712
from backend.chain.protocol import DOMAIN_VERSION, FLEX_DOMAIN_NAME, FLEX_UP, ZERO_ADDRESS

ACTIVATION_SIZE = 293
RECORD_SIZE = 121
DELIVERY_SIZE = 12
ZERO_TRADE_ID = bytes(32)
SECONDS_PER_HOUR = 3600


def domain(chain_id: int, flex_address: str) -> eip712.Domain:
    """FlexibilityMarket's EIP-712 domain (the FlexOffer's and the FlexAttestation's)."""
    return eip712.Domain(FLEX_DOMAIN_NAME, DOMAIN_VERSION, int(chain_id), flex_address)


def offer_hash(dom: eip712.Domain, offer: Mapping[str, Any]) -> bytes:
    """The FlexOffer's EIP-712 digest (its offerHash) from its message (Solidity field names)."""
    return dom.digest("FlexOffer", offer)


def activation_id(offer_hash_: bytes, trade_id: bytes = ZERO_TRADE_ID) -> bytes:
    """keccak256(abi.encode(offerHash, tradeId)); tradeId zero for a DSO-service activation."""
    return keccak(bytes(offer_hash_) + bytes(trade_id))


def energy_wh(activated_w: int, interval_seconds: int) -> int:
    """Energy of an activation: floor(activatedW x intervalSeconds / 3600)."""
    return activated_w * interval_seconds // SECONDS_PER_HOUR


def cost(activated_w: int, price_per_kwh: int, interval_seconds: int) -> int:
    """What an activation costs its payers: floor(energyWh x pricePerKWh / 1000) base units."""
    return energy_wh(activated_w, interval_seconds) * price_per_kwh // 1000


def remedy_cap(max_per_kwh: int, trade_energy_wh: int) -> int:
    """What a party's remedy cap allows for one rescued trade: floor(maxPerKWh x Wh / 1000)."""
    return max_per_kwh * trade_energy_wh // 1000


def remedy_split(total: int, cap_seller: int, cap_buyer: int) -> tuple[int, int] | None:
    """(seller, buyer) shares of a trade rescue: the seller floor(total / 2), the buyer the rest,
    each within its cap, the other taking over what a binding cap leaves; None when the caps
    together cannot cover ``total`` (no rescue)."""
    if cap_seller + cap_buyer < total:
        return None
    seller = min(total // 2, cap_seller)
    if total - seller > cap_buyer:
        seller = total - cap_buyer
    return seller, total - seller


def metered_w(import_wh: int, export_wh: int, interval_seconds: int) -> int:
    """A device's metered power: (exportWh - importWh) x 3600 / intervalSeconds, truncated
    toward zero as Solidity's signed division."""
    num = (export_wh - import_wh) * SECONDS_PER_HOUR
    q = abs(num) // interval_seconds
    return q if num >= 0 else -q


def delivered_w(direction: int, baseline_w: int, activated_w: int, metered: int | None) -> int:
    """Delivered power: up clamp(metered - baseline, 0, activated), down clamp(baseline - metered,
    0, activated); nothing without a reading (``metered`` None)."""
    if metered is None:
        return 0
    moved = metered - baseline_w if direction == FLEX_UP else baseline_w - metered
    return max(0, min(moved, activated_w))


def payments(share0: int, share1: int, activated_w: int, delivered: int) -> tuple[int, int]:
    """(from payer0, from payer1) to the provider: paid = floor(cost x delivered / activated),
    payer0 floor(share0 x paid / cost), payer1 the rest."""
    total = share0 + share1
    paid = total * delivered // activated_w
    paid0 = share0 * paid // total if total else 0
    return paid0, paid - paid0


@dataclass(frozen=True)
class Activation:
    """One activation as recorded: the signed offer (message with Solidity field names, 65-byte
    signature), the power activated, the rescued trade (zero id for a DSO service) and who pays."""

    offer: Mapping[str, Any]
    signature: bytes
    activated_w: int
    payer0: str
    share0: int
    trade_id: bytes = ZERO_TRADE_ID
    trade_energy_wh: int = 0
    payer1: str = ZERO_ADDRESS
    share1: int = 0

    def offer_hash(self, dom: eip712.Domain) -> bytes:
        return offer_hash(dom, self.offer)

    def activation_id(self, dom: eip712.Domain) -> bytes:
        return activation_id(self.offer_hash(dom), self.trade_id)

    def record(self) -> bytes:
        """The 121-byte activation record a batch commits to (what settlement takes)."""
        o = self.offer
        return b"".join(
            (
                _address(o["device"]),
                _uint(o["direction"], 1),
                (int(o["baselineW"]) % (1 << 32)).to_bytes(4, "big"),
                _uint(self.activated_w, 4),
                _address(o["provider"]),
                _address(self.payer0),
                _uint(self.share0, 16),
                _address(self.payer1),
                _uint(self.share1, 16),
            )
        )

    def pack(self) -> bytes:
        """The 293-byte packed activation."""
        o = self.offer
        r, vs = eip712.to_compact(bytes(self.signature))
        return b"".join(
            (
                _address(o["provider"]),
                _address(o["device"]),
                _uint(o["intervalId"], 8),
                _uint(o["direction"], 1),
                _uint(o["powerW"], 4),
                (int(o["baselineW"]) % (1 << 32)).to_bytes(4, "big"),
                _uint(o["pricePerKWh"], 16),
                _uint(o["nonce"], 32),
                _uint(o["expiry"], 8),
                r,
                vs,
                _uint(self.activated_w, 4),
                bytes(self.trade_id),
                _uint(self.trade_energy_wh, 8),
                _address(self.payer0),
                _uint(self.share0, 16),
                _address(self.payer1),
                _uint(self.share1, 16),
            )
        )


def unpack(packed: bytes) -> list[Activation]:
    """The activations of a packed batch (the inverse of :func:`pack_batch`, in batch order)."""
    data = bytes(packed)
    if len(data) % ACTIVATION_SIZE:
        raise ValueError(f"{len(data)} bytes are not whole {ACTIVATION_SIZE}-byte activations")
    out = []
    for at in range(0, len(data), ACTIVATION_SIZE):
        b = data[at : at + ACTIVATION_SIZE]

        def uint(lo: int, hi: int, b: bytes = b) -> int:
            return int.from_bytes(b[lo:hi], "big")

        def addr(lo: int, b: bytes = b) -> str:
            return to_checksum_address(b[lo : lo + 20])

        baseline = uint(53, 57)
        offer = {
            "provider": addr(0),
            "device": addr(20),
            "intervalId": uint(40, 48),
            "direction": b[48],
            "powerW": uint(49, 53),
            "baselineW": baseline - (1 << 32) if baseline >> 31 else baseline,
            "pricePerKWh": uint(57, 73),
            "nonce": uint(73, 105),
            "expiry": uint(105, 113),
        }
        vs = uint(145, 177)
        sig = b[113:145] + (vs & ((1 << 255) - 1)).to_bytes(32, "big") + bytes([27 + (vs >> 255)])
        act = Activation(
            offer, sig, uint(177, 181), addr(221), uint(241, 257), b[181:213],
            uint(213, 221), addr(257), uint(277, 293),
        )  # fmt: skip
        out.append(act)
    return out


def records(packed: bytes) -> bytes:
    """The activation records of a packed batch (``settleActivations`` / ``reclaimActivations``
    take them; ``FlexibilityMarket.recordsOf`` computes the same)."""
    return b"".join(a.record() for a in unpack(packed))


def commitment(packed: bytes) -> bytes:
    """What recording a packed batch commits to: keccak256 of its activation records."""
    return keccak(records(packed))


def deliveries(data: bytes, count: int) -> list[tuple[int, int]]:
    """(meteredW, deliveredW) per activation, in batch order, from ``ActivationBatchClosed``'s
    ``deliveries`` of a settled batch of ``count`` activations (12 bytes each: int64 | uint32)."""
    data = bytes(data)
    if len(data) != count * DELIVERY_SIZE:
        raise ValueError(f"{len(data)} bytes are not {count} deliveries of {DELIVERY_SIZE} bytes")
    out = []
    for at in range(0, len(data), DELIVERY_SIZE):
        metered = int.from_bytes(data[at : at + 8], "big", signed=True)
        out.append((metered, int.from_bytes(data[at + 8 : at + 12], "big")))
    return out


def outcomes(
    dom: eip712.Domain, activations: Sequence[Activation], closed: bytes | None
) -> dict[str, tuple[int, int, int, int]]:
    """Per activation id (0x hex) of a closed batch: (metered W, delivered W, paid, refunded), the
    payments by the contract's rule - ``closed``: ``ActivationBatchClosed``'s deliveries of a
    settled batch, None for a reclaimed one (nothing delivered, every share back)."""
    delivered = (
        [(0, 0)] * len(activations) if closed is None else deliveries(closed, len(activations))
    )
    out = {}
    for a, (metered, delivered_w) in zip(activations, delivered, strict=True):
        paid = sum(payments(a.share0, a.share1, a.activated_w, delivered_w))
        out["0x" + a.activation_id(dom).hex()] = (
            metered,
            delivered_w,
            paid,
            a.share0 + a.share1 - paid,
        )
    return out


def sort_key(dom: eip712.Domain, activation: Activation) -> tuple[bytes, bytes]:
    """The contract's recording order: ascending (offerHash, tradeId)."""
    return activation.offer_hash(dom), bytes(activation.trade_id)


def pack_batch(dom: eip712.Domain, activations: Sequence[Activation]) -> bytes:
    """A batch's packed activations in the contract's order (what the validator attests)."""
    return b"".join(a.pack() for a in sorted(activations, key=lambda a: sort_key(dom, a)))


def attest(
    validator_key: str | bytes,
    dom: eip712.Domain,
    interval_id: int,
    batch_index: int,
    packed: bytes,
    evidence_hash: bytes,
) -> bytes:
    """65-byte validator signature of the FlexAttestation over a packed batch."""
    digest = eip712.flex_attestation_hash(dom, interval_id, batch_index, packed, evidence_hash)
    return bytes.fromhex(eip712.sign_digest(digest, validator_key)[2:])


def sign_offer(provider_key: str | bytes, dom: eip712.Domain, offer: Mapping[str, Any]) -> bytes:
    """65-byte signature of a FlexOffer by its provider's wallet key."""
    return bytes.fromhex(eip712.sign_digest(offer_hash(dom, offer), provider_key)[2:])


def _address(value: str) -> bytes:
    return bytes.fromhex(to_checksum_address(value)[2:])


def _uint(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, "big")
