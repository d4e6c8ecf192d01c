"""The settlement keeper.

It rebuilds every interval's committed batches from the market's own events: a ``recordTrades``
transaction emits ``TradeRecorded`` for each approved trade, in batch order, then ``BatchRecorded``
(interval, batch index, commitment). Participant indices come from the registry (fixed for life).
Each rebuilt batch is checked against its on-chain commitment before it is used. An interval is
settled (``EnergyMarket.settle``) after its gate closure, once every attested batch is on chain and
all its traders' readings are present in ``MeterReadings`` or the chain time has reached
``settlementDeadline``; in pages of whole batches when the whole interval would not fit the gas
budget (``eth_estimateGas`` against the block gas limit). The last page also settles every
party's imbalance (contracted vs metered net position) against the balancing account: no step of
its own, so the keeper sends nothing more for it (a separate call would send and hash every batch
again). From ``reclaimAfter`` on, what is still
unsettled is reclaimed (escrow back to the buyers). ``IntervalSettled`` / ``IntervalReclaimed``
events and ``intervalOf`` keep it from being settled twice.

It reads events only up to the last final block (``TEGRID_CONFIRMATIONS``, see
:mod:`backend.chain.finality`), and when the chain head goes back (:mod:`backend.chain.heads`) it
forgets what it learnt from the blocks the rollback changed and scans again from there, so a batch
recorded again after the rollback - possibly below the keeper's old height - is found and settled.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3.exceptions import Web3RPCError

from backend.chain import batches as encoder
from backend.chain import finality
from backend.chain.client import AbiFunction, ChainClient, EncodedCall
from backend.chain.contracts import Deployment, contract_at
from backend.chain.errors import LedgerError
from backend.chain.heads import HeadWatcher, Rollback
from backend.chain.protocol import (
    BATCH_RECORDED,
    INTERVAL_RECLAIMED,
    INTERVAL_SETTLED,
    TRADE_RECORDED,
)
from backend.chain.trades import BatchAssembler
from backend.keeper.activations import ActivationKeeper
from backend.keeper.errors import KeeperError

log = logging.getLogger("tegrid.keeper")

TOPICS = [TRADE_RECORDED, BATCH_RECORDED, INTERVAL_SETTLED, INTERVAL_RECLAIMED]
# Share of the block gas limit one settlement page may take (estimates vary with state).
PAGE_GAS_SHARE = 0.8
LOG_CHUNK_BLOCKS = 5_000


@dataclass
class IntervalBook:
    """What the keeper knows of one interval's recorded batches."""

    interval_id: int
    batches: dict[int, list[bytes]] = field(default_factory=dict)  # index -> packed trade records
    commitments: dict[int, bytes] = field(default_factory=dict)
    batch_blocks: dict[int, int] = field(default_factory=dict)  # index -> block it was recorded in
    settled: bool = False
    settled_block: int | None = None  # block of the IntervalSettled event / settle receipt

    def forget_from(self, block: int) -> None:
        """Drop what was learnt from blocks at or above ``block`` (a rollback changed them)."""
        for index in [i for i, b in self.batch_blocks.items() if b >= block]:
            del self.batches[index], self.commitments[index], self.batch_blocks[index]
        if self.settled and (self.settled_block is None or self.settled_block >= block):
            self.settled, self.settled_block = False, None

    def ordered_batches(self) -> list[list[bytes]]:
        return [self.batches[i] for i in sorted(self.batches)]

    def records(self) -> list[bytes]:
        return [r for batch in self.ordered_batches() for r in batch]


class SettlementKeeper:
    """Scan market events, settle what is due: ``run_once`` is one round, ``run`` loops."""

    def __init__(
        self,
        client: ChainClient,
        deployment: Deployment,
        from_block: int | None = None,
        poll_s: float = 1.0,
        head_file: Path | None = None,
    ) -> None:
        self.client = client
        self.w3 = client.w3
        self.deployment = deployment
        self.market = contract_at(self.w3, "EnergyMarket", deployment.address("EnergyMarket"))
        self.readings = contract_at(self.w3, "MeterReadings", deployment.address("MeterReadings"))
        self.registry = contract_at(
            self.w3, "ParticipantRegistry", deployment.address("ParticipantRegistry")
        )
        self._state_of = AbiFunction(self.registry, "stateOf")
        self._readings_of = AbiFunction(self.readings, "readingsOf")
        self._deadline_of = AbiFunction(self.market, "settlementDeadline")
        self._interval_of = AbiFunction(self.market, "intervalOf")
        self.page_gas_share = PAGE_GAS_SHARE
        self._gate_of = AbiFunction(self.market, "gateClosure")
        self._reclaim_of = AbiFunction(self.market, "reclaimAfter")
        self._deadlines: dict[int, int] = {}
        self._now: int | None = None  # chain time of this round (pending block), read once
        self.poll_s = poll_s
        self.books: dict[int, IntervalBook] = {}
        self._first_block = deployment.block if from_block is None else from_block
        self._next_block = self._first_block
        self._indices: dict[str, int] = {}
        self._stop = threading.Event()
        self.settled: list[int] = []
        self.heads = HeadWatcher(self.w3, state_file=head_file)
        self.rescans: list[int] = []  # block each rescan after a rollback started from
        # FlexibilityMarket's activation batches, settled in the same rounds
        self.activations = ActivationKeeper(client, deployment, from_block)

    # events

    def scan(self) -> None:
        """Read market events from where the last scan stopped up to the last final block; after
        a rollback, from the first block it changed."""
        rollback = self.heads.check(force=True)
        if rollback is not None:
            self.rewind(rollback)
        latest = finality.final_block(int(self.w3.eth.block_number), self.client.confirmations)
        while self._next_block <= latest:
            to_block = min(latest, self._next_block + LOG_CHUNK_BLOCKS - 1)
            logs = self.w3.eth.get_logs(
                {
                    "address": self.market.address,
                    "fromBlock": self._next_block,
                    "toBlock": to_block,
                    "topics": [TOPICS],  # type: ignore[list-item]
                }
            )
            self._apply_logs(sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])))
            self._next_block = to_block + 1

    def rewind(self, rollback: Rollback) -> None:
        """Forget what the blocks from the rollback's fork on said, and scan them again."""
        start = max(self._first_block, rollback.fork_block)
        for book in self.books.values():
            book.forget_from(start)
        self.books = {i: b for i, b in self.books.items() if b.batches or b.settled}
        self._indices.clear()  # a registration may have been rolled back too
        self._next_block = min(self._next_block, start)
        self.activations.rewind(start)
        self.rescans.append(start)
        log.warning(
            "chain rolled back (head %d -> %d): rescanning market events from block %d",
            rollback.old_head,
            rollback.new_head,
            start,
        )

    def _apply_logs(self, logs: list[Any]) -> None:
        assembler = BatchAssembler()
        for entry in logs:
            topic0 = bytes(entry["topics"][0])
            if topic0 in (TRADE_RECORDED, BATCH_RECORDED):
                batch = assembler.feed(entry)
                if batch is None:
                    continue
                records = batch.records(self._index)
                rebuilt = encoder.commitment(records)
                if len(records) != batch.approved or rebuilt != batch.commitment:
                    raise KeeperError(
                        f"interval {batch.interval_id} batch {batch.batch_index}: rebuilt trades "
                        "do not match the on-chain commitment"
                    )
                book = self.books.setdefault(batch.interval_id, IntervalBook(batch.interval_id))
                book.batches[batch.batch_index] = records
                book.commitments[batch.batch_index] = batch.commitment
                book.batch_blocks[batch.batch_index] = batch.block
            elif topic0 in (INTERVAL_SETTLED, INTERVAL_RECLAIMED):
                interval_id = int.from_bytes(bytes(entry["topics"][1]), "big")
                book = self.books.setdefault(interval_id, IntervalBook(interval_id))
                book.settled, book.settled_block = True, int(entry["blockNumber"])

    def _index(self, wallet: str) -> int:
        if wallet not in self._indices:
            _active, index = self._state_of.call(self.w3, wallet)
            self._indices[wallet] = int(index)
        return self._indices[wallet]

    # settlement

    def readiness(self, book: IntervalBook) -> tuple[bool, str]:
        """(due, why): all readings in, or the deadline reached."""
        records = book.records()
        if not records:
            return False, "no approved trades"
        # Registry indices of every seller and buyer, as the records carry them (bytes 72..80).
        indices = sorted({int.from_bytes(r[o : o + 4], "big") for r in records for o in (72, 76)})
        _imp, _exp, present = self._readings_of.call(self.w3, book.interval_id, indices)
        if all(present):
            return True, "all readings in"
        if book.interval_id not in self._deadlines:  # fixed per interval
            self._deadlines[book.interval_id] = int(
                self._deadline_of.call(self.w3, book.interval_id)
            )
        deadline = self._deadlines[book.interval_id]
        if self._now is None:
            self._now = int(self.w3.eth.get_block("pending")["timestamp"])
        if self._now >= deadline:
            return True, f"deadline passed ({sum(present)}/{len(present)} readings)"
        return False, f"waiting for {len(present) - sum(present)} readings until {deadline}"

    def _page_end(self, book: IntervalBook, start: int) -> tuple[int, bytes]:
        """The largest page from batch ``start`` whose ``settle`` the node estimates within
        ``PAGE_GAS_SHARE`` of the block gas limit (halving the batches of the page until it does;
        a single batch is always tried)."""
        ordered = book.ordered_batches()
        budget = int(self.w3.eth.get_block("latest")["gasLimit"] * self.page_gas_share)
        end = len(ordered)
        while True:
            data = encoder.settle_calldata(book.interval_id, ordered, end)
            if end - start <= 1:
                return end, data
            try:
                gas = self.w3.eth.estimate_gas(
                    {"from": self.client.address, "to": self.market.address, "data": data}
                )
            except (Web3RPCError, ValueError):  # out of gas at the node's cap: too large
                gas = budget + 1
            if gas <= budget:
                return end, data
            end = start + max(1, (end - start) // 2)

    def settle(self, book: IntervalBook, start: int = 0) -> Any:
        """Send ``settle`` for one interval, page by page from batch ``start``; returns the last
        receipt."""
        receipt: Any = None
        while start < len(book.batches):
            end, data = self._page_end(book, start)
            fn = EncodedCall(self.w3, str(self.market.address), "0x" + data.hex())
            # Another process may send from the same key (dev defaults share account 0): the
            # client resyncs its nonce and resends when the node refuses one.
            receipt = self.client.transact(fn, bounded=True)
            log.info(
                "settled interval %d batches %d..%d of %d (%d gas)",
                book.interval_id, start, end - 1, len(book.batches), receipt["gasUsed"],
            )  # fmt: skip
            start = end
        book.settled = True
        if receipt is not None:
            book.settled_block = int(receipt["blockNumber"])
        self.settled.append(book.interval_id)
        log.info("settled interval %d (%d trades)", book.interval_id, len(book.records()))
        return receipt

    def reclaim(self, book: IntervalBook, start: int) -> Any:
        """Send ``reclaim`` for what is unsettled of an interval past ``reclaimAfter``."""
        data = encoder.reclaim_calldata(book.interval_id, book.ordered_batches()[start:])
        fn = EncodedCall(self.w3, str(self.market.address), "0x" + data.hex())
        receipt = self.client.transact(fn, bounded=True)
        book.settled, book.settled_block = True, int(receipt["blockNumber"])
        log.warning(
            "interval %d not settled by reclaimAfter: escrow of batches %d.. returned to the "
            "buyers (%d gas)", book.interval_id, start, receipt["gasUsed"],
        )  # fmt: skip
        return receipt

    def run_once(self) -> list[int]:
        """Scan, then settle every due interval; returns the intervals settled in this round."""
        self.scan()
        self._now = None
        done = []
        for interval_id in sorted(self.books):
            book = self.books[interval_id]
            if book.settled or not book.batches:
                continue
            # IntervalSettled events mark settled intervals; ask the contract once more right
            # before sending (a settlement by another keeper not scanned yet).
            _last, recorded, _n, expected, settled_batches, settled, *_rest = (
                self._interval_of.call(self.w3, interval_id)
            )
            if settled:
                book.settled = True
                continue
            if len(book.batches) < recorded:  # the scan has not seen every batch yet
                continue
            if self._now is None:
                self._now = int(self.w3.eth.get_block("pending")["timestamp"])
            try:
                if self._now >= int(self._reclaim_of.call(self.w3, interval_id)):
                    self.reclaim(book, int(settled_batches))
                    continue
                if recorded < expected or self._now <= int(
                    self._gate_of.call(self.w3, interval_id)
                ):
                    continue  # batches may still come (or never: then reclaimed later)
                due, why = self.readiness(book)
                if not due:
                    continue
                self.settle(book, int(settled_batches))
            except (LedgerError, Web3RPCError) as exc:
                log.warning("settling interval %d failed: %s", interval_id, exc)
                continue
            log.info("interval %d settled: %s", interval_id, why)
            done.append(interval_id)
        try:
            self.activations.run_once()
        except (LedgerError, KeeperError, Web3RPCError) as exc:
            log.warning("settling activation batches failed: %s", exc)
        return done

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except (LedgerError, KeeperError, Web3RPCError, ConnectionError, OSError) as exc:
                log.warning("keeper round failed: %s", exc)
            except Exception:
                log.exception("keeper round failed")
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
