"""The one encoder of EnergyMarket and MeterReadings batch calldata (no chain access).

The contracts take packed calldata (big-endian fixed-width fields, no ABI padding; the byte layouts
are documented in ``contracts/interfaces/IEnergyMarket.sol`` and ``IMeterReadings.sol``). Every
caller - market operator, oracle, keeper, demo, benchmarks, contract tests - builds them here:

- :func:`record_args` -> ``recordTrades(intervalId, batchIndex, batchCount, orders, trades,
  evidenceHash, signature)``:
  every distinct signed order once (153 bytes each), the trades by order index (29 bytes each);
- :meth:`CandidateTrade.record` / :func:`pack_record` -> the 104-byte trade record a batch commits
  to (:func:`commitment`) and ``settle`` / ``reclaim`` take again; :func:`settle_args` -> the other
  arguments of ``settle``;
- :func:`signed_reading` -> one 100-byte reading of ``submitReadings(intervalId, readings)``;
  :func:`unpack_accepted` decodes the ``accepted`` bytes of ``ReadingsSubmitted`` (28 bytes per
  accepted reading), :func:`accepted_from_logs` the readings of a list of those logs;
- :func:`record_trades_calldata`, :func:`settle_calldata`, :func:`reclaim_calldata`,
  :func:`submit_readings_calldata`: the
  whole transaction data, for callers that send raw calldata;
- :func:`sort_by_trade_id` (ascending trade ids within an interval) and :func:`attest` (the
  validator's signature over a batch);
- the decoders back: :func:`unpack_order`, :func:`unpack_trade`, :func:`unpack_record`,
  :func:`decode_record_trades_calldata` and :func:`orders_of_trade` (the two signed orders a trade
  id hashes, found in a batch's packed orders).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector, keccak

from backend.chain import eip712, protocol
from backend.chain.address import checksum
from backend.chain.protocol import ACCEPTED_SIZE, ORDER_SIZE, RECORD_SIZE, TRADE_SIZE

READINGS_SUBMITTED_SIGNATURE = "ReadingsSubmitted(uint64,bytes)"

RECORD_TRADES_SIGNATURE = "recordTrades(uint64,uint32,uint32,bytes,bytes,bytes32,bytes)"
RECORD_TRADES_ARGS = ["uint64", "uint32", "uint32", "bytes", "bytes", "bytes32", "bytes"]
SETTLE_SIGNATURE = "settle(uint64,bytes[],bytes,bytes,uint32)"
RECLAIM_SIGNATURE = "reclaim(uint64,bytes[])"
SUBMIT_READINGS_SIGNATURE = "submitReadings(uint64,bytes)"
SUBMIT_DEVICE_READINGS_SIGNATURE = "submitDeviceReadings(uint64,bytes)"


@cache
def _selector(signature: str) -> bytes:
    return bytes(function_signature_to_4byte_selector(signature))


def _address(value: Any) -> bytes:
    text = str(value) if value else "0x" + "00" * 20
    return bytes.fromhex(text[2:] if text.startswith("0x") else text).rjust(20, b"\x00")


def _int(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, "big")


def pack_order(order: dict[str, Any], signature: tuple[bytes, bytes]) -> bytes:
    """153-byte packed signed order (the EIP-712 Order fields, then r and vs)."""
    trader, side, interval, energy, price, nonce, expiry, counterparty = eip712.order_tuple(order)
    r, vs = signature
    return b"".join(
        (
            _address(trader), _int(side, 1), _int(interval, 8), _int(energy, 8),
            _int(price, 16), _int(nonce, 8), _int(expiry, 8), _address(counterparty),
            bytes(r).rjust(32, b"\x00"), bytes(vs).rjust(32, b"\x00"),
        )
    )  # fmt: skip


def pack_trade(
    sell_order: int, buy_order: int, energy_wh: int, price_per_kwh: int, verdict: int
) -> bytes:
    """29-byte packed trade: indices into the batch's orders, amount, price, verdict."""
    return (
        _int(sell_order, 2) + _int(buy_order, 2) + _int(energy_wh, 8)
        + _int(price_per_kwh, 16) + _int(verdict, 1)
    )  # fmt: skip


def unpack_order(packed: bytes) -> tuple[dict[str, Any], tuple[bytes, bytes]]:
    """The order (dict, Solidity field names) and compact signature (r, vs) of a 153-byte packed
    order; :func:`pack_order` backwards."""
    if len(packed) != ORDER_SIZE:
        raise ValueError(f"a packed order is {ORDER_SIZE} bytes, not {len(packed)}")
    num = lambda a, b: int.from_bytes(packed[a:b], "big")  # noqa: E731
    order = {
        "trader": checksum(packed[0:20]),
        "side": packed[20],
        "intervalId": num(21, 29),
        "energyWh": num(29, 37),
        "pricePerKWh": num(37, 53),
        "nonce": num(53, 61),
        "expiry": num(61, 69),
        "counterparty": checksum(packed[69:89]),
    }
    return order, (bytes(packed[89:121]), bytes(packed[121:153]))


class PackedTradeRow(NamedTuple):
    """A decoded 29-byte trade of ``recordTrades``."""

    sell_order: int
    buy_order: int
    energy_wh: int
    price_per_kwh: int
    verdict: int


def unpack_trade(packed: bytes) -> PackedTradeRow:
    """:func:`pack_trade` backwards."""
    if len(packed) != TRADE_SIZE:
        raise ValueError(f"a packed trade is {TRADE_SIZE} bytes, not {len(packed)}")
    return PackedTradeRow(
        int.from_bytes(packed[0:2], "big"),
        int.from_bytes(packed[2:4], "big"),
        int.from_bytes(packed[4:12], "big"),
        int.from_bytes(packed[12:28], "big"),
        packed[28],
    )


def pack_record(
    trade_id: bytes,
    seller: str,
    buyer: str,
    seller_index: int,
    buyer_index: int,
    energy_wh: int,
    price_per_kwh: int,
) -> bytes:
    """104-byte trade record of an approved trade, as the batch commitment covers it."""
    return (
        bytes(trade_id) + _address(seller) + _address(buyer) + _int(seller_index, 4)
        + _int(buyer_index, 4) + _int(energy_wh, 8) + _int(price_per_kwh, 16)
    )  # fmt: skip


class TradeRecord(NamedTuple):
    """A decoded 104-byte trade record."""

    trade_id: bytes
    seller: str
    buyer: str
    seller_index: int
    buyer_index: int
    energy_wh: int
    price_per_kwh: int


def unpack_record(record: bytes) -> TradeRecord:
    if len(record) != RECORD_SIZE:
        raise ValueError(f"a trade record is {RECORD_SIZE} bytes, not {len(record)}")
    return TradeRecord(
        record[:32],
        checksum(record[32:52]),
        checksum(record[52:72]),
        int.from_bytes(record[72:76], "big"),
        int.from_bytes(record[76:80], "big"),
        int.from_bytes(record[80:88], "big"),
        int.from_bytes(record[88:104], "big"),
    )


@dataclass
class CandidateTrade:
    """Sell and buy order (dicts, Solidity field names), compact signatures, amount and price."""

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
        return protocol.trade_id(*self.order_hashes(chain_id, market))

    def attested(self, chain_id: int, market: str) -> eip712.AttestedTrade:
        """What the validator's attestation binds of this trade."""
        return eip712.AttestedTrade(
            self.trade_id(chain_id, market), self.energy_wh, self.price_per_kwh, self.verdict
        )

    def record(self, chain_id: int, market: str, seller_index: int, buyer_index: int) -> bytes:
        """The 104-byte trade record the batch commitment covers (approved trades only)."""
        return pack_record(
            self.trade_id(chain_id, market),
            eip712.order_message(self.sell)["trader"],
            eip712.order_message(self.buy)["trader"],
            seller_index,
            buyer_index,
            self.energy_wh,
            self.price_per_kwh,
        )


def record_args(trades: Sequence[CandidateTrade]) -> tuple[bytes, bytes]:
    """``(orders, trades)`` arguments of ``recordTrades``: every distinct signed order once (153
    bytes each, in order of first use) and the trades (29 bytes each) indexing into ``orders``."""
    position: dict[bytes, int] = {}
    orders: list[bytes] = []
    rows: list[bytes] = []
    for t in trades:
        idx = []
        for order, sig in ((t.sell, t.sell_sig), (t.buy, t.buy_sig)):
            packed = pack_order(order, sig)
            if packed not in position:
                position[packed] = len(orders)
                orders.append(packed)
            idx.append(position[packed])
        rows.append(pack_trade(idx[0], idx[1], t.energy_wh, t.price_per_kwh, t.verdict))
    if len(orders) > 0xFFFF:
        raise ValueError("a batch holds at most 65,535 distinct orders")
    return b"".join(orders), b"".join(rows)


def record_trades_calldata(
    interval_id: int,
    batch_index: int,
    batch_count: int,
    orders: bytes,
    trades: bytes,
    evidence_hash: bytes,
    signature: bytes,
) -> bytes:
    """Transaction data of ``recordTrades``."""
    return _selector(RECORD_TRADES_SIGNATURE) + abi_encode(
        RECORD_TRADES_ARGS,
        [interval_id, batch_index, batch_count, orders, trades, evidence_hash, signature],
    )


class RecordTradesCall(NamedTuple):
    """The arguments of a ``recordTrades`` transaction."""

    interval_id: int
    batch_index: int
    batch_count: int
    orders: bytes
    trades: bytes
    evidence_hash: bytes
    signature: bytes


def decode_record_trades_calldata(data: bytes) -> RecordTradesCall:
    """:func:`record_trades_calldata` backwards; ValueError for data of another function."""
    data = bytes(data)
    if data[:4] != _selector(RECORD_TRADES_SIGNATURE):
        raise ValueError("not the calldata of recordTrades (another function or contract)")
    return RecordTradesCall(*abi_decode(RECORD_TRADES_ARGS, data[4:]))


class TradeOrders(NamedTuple):
    """The two signed orders a trade id hashes: tradeId = keccak256(sellOrderHash, buyOrderHash)."""

    trade_id: bytes
    sell_hash: bytes
    sell: dict[str, Any]
    buy_hash: bytes
    buy: dict[str, Any]
    energy_wh: int
    price_per_kwh: int
    verdict: int


def orders_of_trade(
    call: RecordTradesCall, chain_id: int, market: str, trade_id: bytes
) -> TradeOrders | None:
    """The orders of trade ``trade_id`` in a ``recordTrades`` call: each packed order's EIP-712
    hash, then the trade whose (sell, buy) hashes hash to the id; None when the batch has no such
    trade. A trade id cannot be inverted; its orders are found where they were sent."""
    orders = [
        unpack_order(call.orders[o : o + ORDER_SIZE])[0]
        for o in range(0, len(call.orders), ORDER_SIZE)
    ]
    domain = eip712.Domain(protocol.MARKET_DOMAIN_NAME, protocol.DOMAIN_VERSION, chain_id, market)
    hashes = [domain.digest("Order", order) for order in orders]
    for t in range(0, len(call.trades), TRADE_SIZE):
        row = unpack_trade(call.trades[t : t + TRADE_SIZE])
        if max(row.sell_order, row.buy_order) >= len(orders):
            continue
        sell_hash, buy_hash = hashes[row.sell_order], hashes[row.buy_order]
        if protocol.trade_id(sell_hash, buy_hash) == bytes(trade_id):
            return TradeOrders(
                bytes(trade_id), sell_hash, orders[row.sell_order], buy_hash,
                orders[row.buy_order], row.energy_wh, row.price_per_kwh, row.verdict,
            )  # fmt: skip
    return None


def commitment(records: Sequence[bytes]) -> bytes:
    """A batch commitment: keccak256 of its approved trades' 104-byte records, concatenated."""
    return keccak(b"".join(records))


def settle_args(record_batches: Sequence[Sequence[bytes]]) -> tuple[list[bytes], bytes, bytes]:
    """``(batches, parties, positions)`` arguments of ``settle`` for an interval's committed batches
    (each batch: its approved trades' records in batch order)."""
    records = [bytes(r) for b in record_batches for r in b]
    for r in records:
        if len(r) != RECORD_SIZE:
            raise ValueError(f"a trade record is {RECORD_SIZE} bytes, not {len(r)}")
    # Parties as the records hold them (20 bytes): byte order of equal-width big-endian
    # addresses is their numeric order, the one the contract checks.
    parties = sorted({r[o : o + 20] for r in records for o in (32, 52)})
    if len(parties) > 0xFFFF:
        raise ValueError("an interval settles at most 65,535 parties")
    where = {a: i for i, a in enumerate(parties)}
    positions = b"".join(_int(where[r[32:52]], 2) + _int(where[r[52:72]], 2) for r in records)
    packed_parties = b"".join(parties)
    return [b"".join(b) for b in record_batches], packed_parties, bytes(positions)


def settle_calldata(
    interval_id: int, record_batches: Sequence[Sequence[bytes]], page_end: int | None = None
) -> bytes:
    """Transaction data of ``settle``: every batch of the interval, paying batches up to
    ``page_end`` (exclusive; default: all of them)."""
    batches, parties, positions = settle_args(record_batches)
    end = len(record_batches) if page_end is None else page_end
    return _selector(SETTLE_SIGNATURE) + abi_encode(
        ["uint64", "bytes[]", "bytes", "bytes", "uint32"],
        [interval_id, batches, parties, positions, end],
    )


def reclaim_calldata(interval_id: int, record_batches: Sequence[Sequence[bytes]]) -> bytes:
    """Transaction data of ``reclaim``: the records of the batches not yet settled."""
    return _selector(RECLAIM_SIGNATURE) + abi_encode(
        ["uint64", "bytes[]"], [interval_id, [b"".join(b) for b in record_batches]]
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
    batch_index: int = 0,
    batch_count: int = 1,
) -> bytes:
    """65-byte validator signature of the GridAttestation over ``trades`` (in batch order), batch
    ``batch_index`` of the interval's ``batch_count``."""
    digest = eip712.attestation_hash(
        chain_id,
        market,
        interval_id,
        batch_index,
        batch_count,
        [t.attested(chain_id, market) for t in trades],
        evidence_hash,
    )
    return bytes.fromhex(eip712.sign_digest(digest, validator_key)[2:])


def pack_reading(meter: str, import_wh: int, export_wh: int, r: bytes, vs: bytes) -> bytes:
    """100-byte packed signed reading."""
    return (
        _address(meter) + _int(import_wh, 8) + _int(export_wh, 8)
        + bytes(r).rjust(32, b"\x00") + bytes(vs).rjust(32, b"\x00")
    )  # fmt: skip


def signed_reading(
    meter_key: str | bytes,
    chain_id: int,
    readings_address: str,
    meter: str,
    interval_id: int,
    import_wh: int,
    export_wh: int,
) -> bytes:
    """One packed reading of ``submitReadings``, signed by the meter key."""
    doc = eip712.reading_typed_data(
        chain_id, readings_address, meter, interval_id, import_wh, export_wh
    )
    r, vs = eip712.sign_compact(meter_key, doc)
    return pack_reading(doc["message"]["meter"], import_wh, export_wh, r, vs)


class AcceptedReading(NamedTuple):
    """One reading of a ``ReadingsSubmitted`` event."""

    meter: str  # checksummed
    import_wh: int
    export_wh: int


def unpack_accepted(data: bytes) -> list[AcceptedReading]:
    """The readings packed in a ``ReadingsSubmitted`` event's ``accepted`` bytes."""
    data = bytes(data)
    if len(data) % ACCEPTED_SIZE:
        raise ValueError(
            f"accepted readings of {len(data)} bytes, not a multiple of {ACCEPTED_SIZE}"
        )
    return [
        AcceptedReading(
            checksum(data[o : o + 20]),
            int.from_bytes(data[o + 20 : o + 24], "big"),
            int.from_bytes(data[o + 24 : o + 28], "big"),
        )
        for o in range(0, len(data), ACCEPTED_SIZE)
    ]


def accepted_from_logs(logs: Iterable[Any]) -> list[tuple[int, AcceptedReading, Any]]:
    """(intervalId, reading, log) of every reading in decoded ``ReadingsSubmitted`` logs
    (web3 ``get_logs`` / receipt events, ``args`` with ``intervalId`` and ``accepted``)."""
    return [
        (int(log["args"]["intervalId"]), reading, log)
        for log in logs
        for reading in unpack_accepted(log["args"]["accepted"])
    ]


def readings_arg(readings: Iterable[bytes]) -> bytes:
    """The ``readings`` argument of ``submitReadings``: packed readings concatenated."""
    return b"".join(readings)


def submit_readings_calldata(
    interval_id: int, readings: Iterable[bytes], device: bool = False
) -> bytes:
    """Transaction data of ``submitReadings`` (``device``: ``submitDeviceReadings``, the same
    arguments for readings signed by registered device keys)."""
    signature = SUBMIT_DEVICE_READINGS_SIGNATURE if device else SUBMIT_READINGS_SIGNATURE
    return _selector(signature) + abi_encode(
        ["uint64", "bytes"], [interval_id, readings_arg(readings)]
    )
