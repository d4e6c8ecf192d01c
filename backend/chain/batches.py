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
    _id: bytes | None = field(default=None, repr=False)

    def trade_id(self, chain_id: int, market: str) -> bytes:
        if self._id is None:
            self._id = eip712.trade_id(
                eip712.order_hash(chain_id, market, self.sell),
                eip712.order_hash(chain_id, market, self.buy),
            )
        return self._id

    def abi(self) -> tuple[Any, ...]:
        """The ``Trade`` struct tuple of ``recordTrades``."""
        return (
            (eip712.order_tuple(self.sell), self.sell_sig[0], self.sell_sig[1]),
            (eip712.order_tuple(self.buy), self.buy_sig[0], self.buy_sig[1]),
            self.energy_wh,
            self.price_per_kwh,
            self.verdict,
        )

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
