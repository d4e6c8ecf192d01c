"""Builders for the calldata of EnergyMarket and MeterReadings batches (no chain access).

Used by the market operator, the oracle, the keeper, the benchmark and the contract tests, so every
caller builds the exact tuples the contracts expect:

- :class:`CandidateTrade` -> ``Trade`` tuple (``recordTrades``), ``TradeRecord`` tuple (``settle``);
- :func:`sort_by_trade_id` (the market requires ascending trade ids within an interval);
- :func:`attest` (validator signature over a batch), :func:`settle_parties`, :func:`signed_reading`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak

from backend.chain import eip712


@dataclass
class CandidateTrade:
    """Sell and buy order (dicts, Solidity field names), their signatures, amount and price."""

    sell: dict[str, Any]
    buy: dict[str, Any]
    sell_sig: tuple[bytes, bytes]
    buy_sig: tuple[bytes, bytes]
    energy_wh: int
    price_per_kwh: int
    verdict: int = 0
    _hashes: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def order_hashes(self, chain_id: int, market: str) -> tuple[bytes, bytes]:
        """(sellOrderHash, buyOrderHash), computed once (the orders must not change afterwards)."""
        if self._hashes is None:
            self._hashes = (
                eip712.order_hash(chain_id, market, self.sell),
                eip712.order_hash(chain_id, market, self.buy),
            )
        return self._hashes

    def trade_id(self, chain_id: int, market: str) -> bytes:
        return eip712.trade_id(*self.order_hashes(chain_id, market))

    def record(
        self, chain_id: int, market: str, seller_index: int, buyer_index: int
    ) -> tuple[Any, ...]:
        """The ``TradeRecord`` tuple the batch commitment covers (approved trades only)."""
        return (
            self.trade_id(chain_id, market),
            eip712.order_message(self.sell)["trader"],
            eip712.order_message(self.buy)["trader"],
            seller_index,
            buyer_index,
            self.energy_wh,
            self.price_per_kwh,
        )


def record_args(
    trades: Sequence[CandidateTrade], chain_id: int, market: str
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``(orders, trades)`` arguments of ``recordTrades``: every distinct signed order once, and the
    trades as (sellOrder, buyOrder, energyWh, pricePerKWh, verdict) with indices into ``orders``."""
    orders: list[tuple[Any, ...]] = []
    position: dict[tuple[bytes, bytes, bytes], int] = {}
    rows: list[tuple[Any, ...]] = []
    for t in trades:
        idx = []
        hashes = t.order_hashes(chain_id, market)
        for order, sig, h in ((t.sell, t.sell_sig, hashes[0]), (t.buy, t.buy_sig, hashes[1])):
            key = (h, sig[0], sig[1])
            if key not in position:
                position[key] = len(orders)
                orders.append((eip712.order_tuple(order), sig[0], sig[1]))
            idx.append(position[key])
        rows.append((idx[0], idx[1], t.energy_wh, t.price_per_kwh, t.verdict))
    return orders, rows


RECORD_ABI_TYPE = "(bytes32,address,address,uint32,uint32,uint64,uint128)"


def commitment(records: Sequence[tuple[Any, ...]]) -> bytes:
    """A batch commitment: keccak256 of the approved TradeRecords, each ABI-encoded (7 words)."""
    return keccak(b"".join(abi_encode([RECORD_ABI_TYPE], [r]) for r in records))


def settle_args(record_batches: Sequence[Sequence[tuple[Any, ...]]]) -> tuple[list[str], list[int]]:
    """``(parties, positions)`` arguments of ``settle`` for the interval's committed batches."""
    parties = settle_parties([r for b in record_batches for r in b])
    where = {a: i for i, a in enumerate(parties)}
    positions: list[int] = []
    for batch in record_batches:
        for r in batch:
            positions += [where[str(r[1])], where[str(r[2])]]
    return parties, positions


def sign_order(
    private_key: str | bytes, chain_id: int, market: str, order: dict[str, Any]
) -> tuple[bytes, bytes]:
    """Compact (r, vs) signature of an order."""
    return eip712.sign_compact(private_key, eip712.order_typed_data(chain_id, market, order))


def sort_by_trade_id(
    trades: Iterable[CandidateTrade], chain_id: int, market: str
) -> list[CandidateTrade]:
    """Trades in the ascending trade-id order the market requires."""
    return sorted(trades, key=lambda t: int.from_bytes(t.trade_id(chain_id, market), "big"))


def attest(
    validator_key: str | bytes,
    chain_id: int,
    market: str,
    interval_id: int,
    trades: Sequence[CandidateTrade],
    evidence_hash: bytes,
) -> bytes:
    """65-byte validator signature of the GridAttestation over ``trades`` (in batch order)."""
    doc = eip712.attestation_typed_data(
        chain_id,
        market,
        interval_id,
        [t.trade_id(chain_id, market) for t in trades],
        [t.verdict for t in trades],
        evidence_hash,
    )
    return eip712.sign_typed_data(validator_key, doc)


def settle_parties(records: Iterable[tuple[Any, ...]]) -> list[str]:
    """Every seller and buyer of the records, strictly ascending by address (for ``settle``)."""
    rows = list(records)
    wallets = {str(r[1]) for r in rows} | {str(r[2]) for r in rows}
    return sorted(wallets, key=lambda a: int(a, 16))


def signed_reading(
    meter_key: str | bytes,
    chain_id: int,
    readings_address: str,
    meter: str,
    interval_id: int,
    import_wh: int,
    export_wh: int,
) -> tuple[Any, ...]:
    """The ``SignedReading`` tuple of ``submitReadings``, signed by the meter key."""
    doc = eip712.reading_typed_data(
        chain_id, readings_address, meter, interval_id, import_wh, export_wh
    )
    r, vs = eip712.sign_compact(meter_key, doc)
    return (doc["message"]["meter"], import_wh, export_wh, r, vs)
