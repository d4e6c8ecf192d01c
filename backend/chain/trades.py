"""EnergyMarket's trades read from the chain alone (no market store).

- :func:`decode_trade_recorded` reads a raw ``TradeRecorded`` log (topics tradeId, seller, buyer;
  data intervalId, energyWh, pricePerKWh);
- :class:`BatchAssembler` pairs the ``TradeRecorded`` logs of a transaction with the
  ``BatchRecorded`` log after them (``recordTrades`` emits the approved trades in batch order, then
  the batch), giving each batch's trades and, with the registry indices, its 104-byte records - what
  the keeper settles with and ``tradeOf`` checks;
- :func:`find_trade` answers "what is trade X?" from its logs (one ``eth_getLogs`` on topic 1 =
  tradeId) and the ``tradeOf`` view (state from storage, record checked against the batch's
  commitment);
- :func:`find_orders` finds the two signed orders a trade id hashes, in the calldata of the
  ``recordTrades`` transaction that recorded (or vetoed) it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from eth_abi import decode as abi_decode
from eth_utils import to_checksum_address
from web3 import Web3

from backend.chain import batches
from backend.chain.address import checksum
from backend.chain.protocol import (
    BATCH_RECORDED,
    ESCROW_RECLAIMED,
    TRADE_RECORDED,
    TRADE_SETTLED,
    TRADE_VETOED,
    TradeState,
)

TRADE_TOPICS = [TRADE_RECORDED, TRADE_VETOED, TRADE_SETTLED, ESCROW_RECLAIMED]


class RecordedTrade(NamedTuple):
    """One ``TradeRecorded`` log."""

    trade_id: bytes
    seller: str
    buyer: str
    interval_id: int
    energy_wh: int
    price_per_kwh: int


def _topic_address(topic: Any) -> str:
    return checksum(bytes(topic)[12:])


def decode_trade_recorded(log: Mapping[str, Any]) -> RecordedTrade:
    """A raw ``TradeRecorded`` log (``topics``, ``data``) decoded; ValueError for another log."""
    topics = [bytes(t) for t in log["topics"]]
    if len(topics) != 4 or topics[0] != TRADE_RECORDED:
        raise ValueError("not a TradeRecorded log")
    interval_id, energy_wh, price = abi_decode(["uint64", "uint64", "uint128"], bytes(log["data"]))
    return RecordedTrade(
        topics[1],
        _topic_address(topics[2]),
        _topic_address(topics[3]),
        int(interval_id),
        int(energy_wh),
        int(price),
    )


@dataclass
class RecordedBatch:
    """A recorded batch as its transaction's logs tell it."""

    interval_id: int
    batch_index: int
    commitment: bytes
    approved: int
    tx_hash: bytes
    block: int
    trades: list[RecordedTrade] = field(default_factory=list)

    def records(self, index_of: Callable[[str], int]) -> list[bytes]:
        """The batch's 104-byte trade records (registry indices from ``index_of``), as committed."""
        return [
            batches.pack_record(
                t.trade_id,
                t.seller,
                t.buyer,
                index_of(t.seller),
                index_of(t.buyer),
                t.energy_wh,
                t.price_per_kwh,
            )
            for t in self.trades
        ]


class BatchAssembler:
    """Feed market logs in chain order (block, log index); :meth:`feed` returns a batch at its
    ``BatchRecorded`` log, with the ``TradeRecorded`` logs its transaction emitted before it."""

    def __init__(self) -> None:
        self._pending: dict[bytes, list[RecordedTrade]] = {}  # tx hash -> trades not yet batched

    def feed(self, log: Mapping[str, Any]) -> RecordedBatch | None:
        topic0 = bytes(log["topics"][0])
        tx = bytes(log["transactionHash"])
        if topic0 == TRADE_RECORDED:
            self._pending.setdefault(tx, []).append(decode_trade_recorded(log))
        elif topic0 == BATCH_RECORDED:
            batch_index, commitment, approved, _evidence = abi_decode(
                ["uint32", "bytes32", "uint32", "bytes32"], bytes(log["data"])
            )
            return RecordedBatch(
                int.from_bytes(bytes(log["topics"][1]), "big"),
                int(batch_index),
                bytes(commitment),
                int(approved),
                tx,
                int(log["blockNumber"]),
                self._pending.pop(tx, []),
            )
        return None


def _chain_order(logs: Iterable[Any]) -> list[Any]:
    return sorted(logs, key=lambda e: (int(e["blockNumber"]), int(e["logIndex"])))


def trade_logs(w3: Web3, market: str, trade_id: bytes, from_block: int) -> list[Any]:
    """Every per-trade log of ``trade_id`` (recorded or vetoed, settled or reclaimed), in chain
    order: one ``eth_getLogs`` on topic 1."""
    return _chain_order(
        w3.eth.get_logs(
            {
                "address": to_checksum_address(market),
                "fromBlock": from_block,
                "toBlock": "latest",
                "topics": [TRADE_TOPICS, bytes(trade_id)],  # type: ignore[list-item]
            }
        )
    )


@dataclass
class TradeOnChain:
    """What the chain says of one trade. ``status``: vetoed, or the ``TradeState`` label of an
    approved trade (unsettled, settled, reclaimed)."""

    trade_id: str
    status: str
    interval_id: int
    batch_index: int
    recorded_tx: str
    seller: str | None = None
    buyer: str | None = None
    energy_wh: int | None = None
    price_per_kwh: int | None = None
    escrow: int | None = None
    reason: int | None = None  # the validator's veto code
    delivered_wh: int | None = None
    paid: int | None = None
    refunded: int | None = None
    settled_tx: str | None = None


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _recording_batch(w3: Web3, market: str, log: Any) -> RecordedBatch:
    """The batch of ``log`` (a TradeRecorded or TradeVetoed log): the first ``BatchRecorded`` after
    it in its transaction."""
    receipt = w3.eth.get_transaction_receipt(log["transactionHash"])
    assembler = BatchAssembler()
    for entry in _chain_order(r for r in receipt["logs"] if r["address"] == checksum(market)):
        batch = assembler.feed(entry)
        if batch is not None and int(entry["logIndex"]) > int(log["logIndex"]):
            return batch
    raise ValueError(f"no BatchRecorded after log {log['logIndex']} of its transaction")


def find_trade(
    w3: Web3,
    market: Any,
    index_of: Callable[[str], int],
    trade_id: bytes,
    from_block: int,
) -> TradeOnChain | None:
    """Trade ``trade_id`` of the EnergyMarket contract ``market`` (a web3 contract), None when this
    market never recorded or vetoed it. An approved trade's batch is rebuilt from its recording
    transaction's logs (registry indices from ``index_of``) and read through ``tradeOf``, which
    checks it against the batch's commitment and gives its state; delivered and paid come from its
    ``TradeSettled`` log."""
    logs = trade_logs(w3, market.address, trade_id, from_block)
    first = next((e for e in logs if bytes(e["topics"][0]) in (TRADE_RECORDED, TRADE_VETOED)), None)
    if first is None:
        return None
    batch = _recording_batch(w3, market.address, first)
    out = TradeOnChain(
        _hex(trade_id), "vetoed", batch.interval_id, batch.batch_index, _hex(batch.tx_hash)
    )
    if bytes(first["topics"][0]) == TRADE_VETOED:
        (out.reason,) = abi_decode(["uint8"], bytes(first["data"]))
        return out
    info = market.functions.tradeOf(
        bytes(trade_id), batch.interval_id, batch.batch_index, b"".join(batch.records(index_of))
    ).call()
    _iv, _bi, out.seller, out.buyer, out.energy_wh, out.price_per_kwh, out.escrow, state = info
    out.status = TradeState(state).label
    for entry in logs:
        topic0 = bytes(entry["topics"][0])
        if topic0 == TRADE_SETTLED:
            out.delivered_wh, out.paid, out.refunded = abi_decode(
                ["uint64", "uint256", "uint256"], bytes(entry["data"])
            )
            out.settled_tx = _hex(entry["transactionHash"])
        elif topic0 == ESCROW_RECLAIMED:
            (out.refunded,) = abi_decode(["uint256"], bytes(entry["data"]))
            out.delivered_wh, out.paid = 0, 0
            out.settled_tx = _hex(entry["transactionHash"])
    return out


def find_orders(
    w3: Web3, market: str, chain_id: int, trade_id: bytes, from_block: int
) -> tuple[batches.TradeOrders, str] | None:
    """The two signed orders trade ``trade_id`` hashes and the hash of the ``recordTrades``
    transaction they were found in; None when this market never recorded or vetoed the trade.
    ValueError when that transaction did not call ``recordTrades`` directly (e.g. through another
    contract: its calldata does not hold the orders)."""
    logs = trade_logs(w3, market, trade_id, from_block)
    first = next((e for e in logs if bytes(e["topics"][0]) in (TRADE_RECORDED, TRADE_VETOED)), None)
    if first is None:
        return None
    tx = w3.eth.get_transaction(first["transactionHash"])
    call = batches.decode_record_trades_calldata(bytes(tx["input"]))
    found = batches.orders_of_trade(call, chain_id, checksum(market), trade_id)
    if found is None:
        raise ValueError(f"the orders of {_hex(trade_id)} are not in its recording transaction")
    return found, _hex(first["transactionHash"])
