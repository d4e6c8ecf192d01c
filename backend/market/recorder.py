"""Recording cleared intervals on chain and following them to settlement: the recorder thread,
retries with back-off, expiry at the chain's gate closure, recovery after a crash and
reconciliation after a chain rollback.

Crash safety: an order is accepted once its row is committed. Closing an interval is a committed
state; the clearing (trades, the batch and its attestation) is one transaction committed *before*
the batch is sent; on restart an unfinished batch is first looked up on chain (``intervalOf``), and
only sent when it is not there. A failed send leaves the batch pending for the next attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backend.chain.errors import ChainUnavailableError
from backend.market.batching import backoff_s
from backend.market.clearing import Clearer
from backend.market.config import MarketConfig
from backend.market.errors import BatchRevertedError, BatchTooLargeError, MarketError
from backend.market.events import EventBus
from backend.market.intake import Intake
from backend.market.models import (
    ActivationBatchRow,
    BatchRow,
    BatchState,
    FlexBatchState,
    IntervalStatus,
)
from backend.market.ports import MarketLedger
from backend.market.store import Store

log = logging.getLogger("tegrid.market")

# The market's chain clock is an estimate (carried forward between block reads): a batch is given
# up as expired only this long after the chain's gate closure; the chain itself is the judge.
GATE_MARGIN_S = 5


class Recorder:
    """Sends each cleared interval's signed batches, in order and exactly once; one batch on its
    way to the chain at a time (``lock``; a clearing may run beside it)."""

    def __init__(
        self,
        store: Store,
        ledger: MarketLedger,
        config: MarketConfig,
        events: EventBus,
        intake: Intake,
        clearing: Clearer,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.config = config
        self.events = events
        self.intake = intake
        self.clearing = clearing
        self.lock = threading.RLock()
        self._thread: ThreadPoolExecutor | None = None
        # intervals whose batch would revert for what a participant did after the clearing:
        # ``Market.reclear_due`` clears them again while nothing of them is on chain
        self.reclear_wanted: set[int] = set()

    def record_batch(self, interval_id: int, due_only: bool = False) -> bool:
        """Make sure every batch of the interval is on chain exactly once, in order; True when
        they all are. A batch that fails is marked ``failed`` with the reason and a time for the
        next attempt (``due_only``: not before it) and the later batches wait for it."""
        with self.lock:
            for _replan in range(3):
                batches = self.store.batches(interval_id)
                if not batches:
                    return self.record_activation_batches(interval_id, due_only)
                outcome = "recorded"
                for b in batches:
                    if b.state == BatchState.RECORDED:
                        continue
                    if due_only and b.next_attempt_at and time.time() < b.next_attempt_at:
                        return False
                    outcome = self._record_one(interval_id, b)
                    if outcome != "recorded":
                        break
                if outcome == "recorded":
                    return self.record_activation_batches(interval_id, due_only)
                if outcome != "replanned":
                    return False
            return False

    def record_activation_batches(self, interval_id: int, due_only: bool = False) -> bool:
        """Record the interval's activation batches on FlexibilityMarket, in order, once every
        trade batch of it is on EnergyMarket (the caller made sure); True when all are (or there
        are none). Same rules as trade batches: estimate first (a revert is reported with the
        contract's decoded error, nothing mined), ``sent`` stored before sending, a batch found
        on chain (``batchOf``) after a crash is taken as recorded, a failure waits for its next
        attempt, the chain's gate closure makes the rest ``expired``."""
        with self.lock:
            for b in self.store.activation_batches(interval_id):
                if b.state not in BatchState.UNFINISHED:
                    if b.state == BatchState.EXPIRED:
                        return False
                    continue
                if due_only and b.next_attempt_at and time.time() < b.next_attempt_at:
                    return False
                if not self._record_activation_batch(interval_id, b):
                    return False
            return True

    def _record_activation_batch(self, interval_id: int, b: ActivationBatchRow) -> bool:
        packed = bytes.fromhex(b.packed[2:])
        count = len(json.loads(b.activation_ids))
        sent = False
        tx: str | None = None
        try:
            if self.ledger.activation_batch_state(interval_id, b.batch_index) != 0:
                self._activation_batch_recorded(interval_id, b, b.tx_hash, b.block_number, None)
                return True
            closure = self.ledger.gate_closure(interval_id)
            if self.ledger.now() > closure + GATE_MARGIN_S:
                reason = (
                    f"the chain's gate closure of interval {interval_id} ({closure}) passed "
                    "before this activation batch landed: it can no longer be recorded"
                )
                self.store.update_activation_batch(
                    interval_id, b.batch_index, state=BatchState.EXPIRED, last_error=reason,
                    next_attempt_at=None,
                )  # fmt: skip
                self._activation_event(interval_id, b, BatchState.EXPIRED, reason=reason)
                log.warning(
                    "interval %s activation batch %d: %s", interval_id, b.batch_index, reason
                )
                return False
            gas = self.ledger.estimate_record_activations_gas(
                interval_id, b.batch_index, packed, b.evidence_hash, b.attestation_signature
            )
            self.store.update_activation_batch(
                interval_id, b.batch_index, count_attempt=True, state=BatchState.SENT,
                next_attempt_at=None,
            )  # fmt: skip
            sent = True
            self._activation_event(interval_id, b, BatchState.SENT, activations=count, gas=gas)
            tx = self.ledger.record_activations(
                interval_id, b.batch_index, packed, b.evidence_hash, b.attestation_signature
            )
            receipt = self.ledger.wait(tx)
            if not receipt.ok:
                raise BatchRevertedError(f"transaction {tx} reverted")
        except Exception as exc:  # a revert, the chain away, or anything else: report, retry
            known = isinstance(exc, MarketError | ChainUnavailableError)
            why = str(exc) if known else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                if self.ledger.activation_batch_state(interval_id, b.batch_index) != 0:
                    self._activation_batch_recorded(interval_id, b, tx, None, None)
                    return True
            attempts = b.attempts + 1
            delay = backoff_s(attempts, self.config.retry_base_s, self.config.retry_max_s)
            next_at = time.time() + delay
            with contextlib.suppress(Exception):
                self.store.update_activation_batch(
                    interval_id, b.batch_index, count_attempt=not sent, state=BatchState.FAILED,
                    last_error=why, next_attempt_at=next_at, tx_hash=tx,
                )  # fmt: skip
            log.warning(
                "interval %s activation batch %d/%d not recorded (attempt %d, next in %.0f s): %s",
                interval_id, b.batch_index + 1, b.batch_count, attempts, delay, why,
            )  # fmt: skip
            self._activation_event(
                interval_id, b, BatchState.FAILED, reason=why, attempts=attempts,
                nextAttemptAt=next_at, txHash=tx,
            )  # fmt: skip
            return False
        self._activation_batch_recorded(
            interval_id, b, receipt.tx_hash, receipt.block_number, receipt.gas_used
        )
        return True

    def _activation_batch_recorded(
        self,
        interval_id: int,
        b: ActivationBatchRow,
        tx_hash: str | None,
        block: int | None,
        gas_used: int | None,
    ) -> None:
        self.store.update_activation_batch(
            interval_id, b.batch_index, state=BatchState.RECORDED, tx_hash=tx_hash or b.tx_hash,
            block_number=block if block is not None else b.block_number,
            gas_used=gas_used if gas_used is not None else b.gas_used, last_error=None,
            next_attempt_at=None,
        )  # fmt: skip
        self._activation_event(
            interval_id, b, BatchState.RECORDED, txHash=tx_hash, block=block, gasUsed=gas_used
        )

    def _activation_event(
        self, interval_id: int, b: ActivationBatchRow, state: str, **extra: Any
    ) -> None:
        self.events.publish(
            "activation_batch",
            {
                "intervalId": interval_id,
                "index": b.batch_index,
                "count": b.batch_count,
                "state": state,
                "activations": len(json.loads(b.activation_ids)),
                **extra,
            },
        )

    def record_later(self, interval_id: int) -> None:
        """Record the batches in the recorder thread (intervals go out in the order they are
        handed over); a failure leaves them for ``tick`` or ``recover``."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")

        def run() -> None:
            try:
                self.record_batch(interval_id)
            except Exception:  # nobody reads this thread's future: say it here
                log.exception("recording the batches of interval %s failed", interval_id)

        self._thread.submit(run)

    def retry_batches(self) -> None:
        """Record the batches whose next attempt is due (every unfinished interval)."""
        for interval_id in self.store.unfinished_intervals():
            try:
                with self.clearing.lock:
                    self.record_batch(interval_id, due_only=True)
            except Exception:
                log.exception("recording the batches of interval %s failed", interval_id)

    def _record_one(self, interval_id: int, b: BatchRow) -> str:
        """One batch: on chain already (a crash after sending) -> recorded with the transaction
        found in the logs; else estimate (a revert is reported, not mined) and send. Returns
        ``recorded``, ``failed`` or ``replanned`` (the interval's split was made again)."""
        ids: list[str] = json.loads(b.trade_ids)
        sent = False
        try:
            if self.ledger.batch_recorded(interval_id, ids[-1]):
                self._found_on_chain(interval_id, b)
                return "recorded"
            closure = self.ledger.gate_closure(interval_id)
            if self.ledger.now() > closure + GATE_MARGIN_S:
                self._expired(interval_id, closure)
                return "failed"
            trades = self.clearing.batch_input(b)
            try:
                gas = self.ledger.estimate_record_gas(
                    interval_id,
                    b.batch_index,
                    b.batch_count,
                    trades,
                    b.evidence_hash,
                    b.attestation_signature,
                )
            except BatchRevertedError:
                self.reclear_wanted.add(interval_id)
                raise
            except BatchTooLargeError as exc:
                self.clearing.gas.learn(len(ids), b.order_count, self.ledger.block_gas_limit())
                if self._replan(interval_id):
                    return "replanned"
                self._batch_failed(interval_id, b, str(exc), counted=False)
                return "failed"
            gas_limit = min(int(gas * 1.2) + 10_000, self.ledger.block_gas_limit())
            self.store.mark_batch_sending(interval_id, b.batch_index)
            sent = True
            self.events.publish("batch", self._batch_event(interval_id, b, BatchState.SENT))
            tx_hash = self.ledger.record_trades(
                interval_id,
                b.batch_index,
                b.batch_count,
                trades,
                b.evidence_hash,
                b.attestation_signature,
                gas_limit,
            )
            receipt = self.ledger.wait(tx_hash)
            if not receipt.ok:
                self._batch_failed(
                    interval_id, b, f"transaction {tx_hash} reverted", counted=sent, tx=tx_hash
                )
                return "failed"
        except Exception as exc:  # a revert, the chain away, or anything else: report, retry
            known = isinstance(exc, MarketError | ChainUnavailableError)
            why = str(exc) if known else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                if self.ledger.batch_recorded(interval_id, ids[-1]):
                    self._found_on_chain(interval_id, b)
                    return "recorded"
            with contextlib.suppress(Exception):
                self._batch_failed(interval_id, b, why, counted=sent)
            return "failed"
        self.clearing.gas.learn(len(ids), b.order_count, receipt.gas_used)
        self._batch_recorded(
            interval_id, b, receipt.tx_hash, receipt.block_number, receipt.gas_used
        )
        return "recorded"

    def _replan(self, interval_id: int) -> bool:
        """Split a interval again when its first batch needs more gas than a block has; only
        while nothing of it is on chain or in flight."""
        batches = self.store.batches(interval_id)
        if not batches or any(b.state in (BatchState.SENT, BatchState.RECORDED) for b in batches):
            return False
        first_id = json.loads(batches[0].trade_ids)[0]
        if self.ledger.batch_recorded(interval_id, first_id):
            return False
        specs = self.clearing.specs([t.id for t in self.store.trades(interval_id)])
        orders = self.clearing.orders_of(specs)
        plan = self.clearing.plan(interval_id, specs, batches[0].evidence_hash, orders)
        if len(plan) <= len(batches) and max(len(json.loads(p["trade_ids"])) for p in plan) >= max(
            len(json.loads(b.trade_ids)) for b in batches
        ):
            return False  # the measurement did not make the batches any smaller
        if not self.store.replace_batches(interval_id, plan):
            return False
        log.info("interval %s split again into %d batches", interval_id, len(plan))
        return True

    def _batch_event(
        self, interval_id: int, b: BatchRow, state: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "intervalId": interval_id,
            "index": b.batch_index,
            "count": b.batch_count,
            "state": state,
            "trades": len(json.loads(b.trade_ids)),
            **extra,
        }

    def _batch_failed(
        self, interval_id: int, b: BatchRow, reason: str, counted: bool, tx: str | None = None
    ) -> None:
        attempts = b.attempts + 1
        delay = backoff_s(attempts, self.config.retry_base_s, self.config.retry_max_s)
        next_at = time.time() + delay
        self.store.mark_batch_failed(
            interval_id, b.batch_index, reason, next_at, count_attempt=not counted, tx_hash=tx
        )
        log.warning(
            "interval %s batch %d/%d not recorded (attempt %d, next in %.0f s): %s",
            interval_id, b.batch_index + 1, b.batch_count, attempts, delay, reason,
        )  # fmt: skip
        self.events.publish(
            "batch",
            self._batch_event(
                interval_id, b, BatchState.FAILED, reason=reason, attempts=attempts,
                nextAttemptAt=next_at, txHash=tx,
            ),
        )  # fmt: skip

    def _expired(self, interval_id: int, closure: int) -> None:
        """The chain refuses the interval's batches from its gate closure on: the ones not on
        chain are final (``expired``), not retried into the same revert."""
        reason = (
            f"the chain's gate closure of interval {interval_id} ({closure}) passed before this "
            "batch landed: it can no longer be recorded (nothing of it was locked on chain)"
        )
        for index in self.store.mark_batches_expired(interval_id, reason):
            log.warning("interval %s batch %d: %s", interval_id, index, reason)
            self.events.publish(
                "batch",
                {"intervalId": interval_id, "index": index, "state": BatchState.EXPIRED,
                 "reason": reason},
            )  # fmt: skip

    def _found_on_chain(self, interval_id: int, b: BatchRow) -> None:
        """The batch is on chain though the store did not see its receipt (a crash, a lost
        answer): its transaction comes from the ``BatchRecorded`` log."""
        found = self.ledger.batch_transaction(interval_id, b.batch_index)
        if found is None:
            self._batch_recorded(interval_id, b, b.tx_hash, b.block_number, None)
        else:
            self._batch_recorded(
                interval_id, b, found.tx_hash, found.block_number, found.gas_used or None
            )

    def _batch_recorded(
        self,
        interval_id: int,
        b: BatchRow,
        tx_hash: str | None,
        block: int | None,
        gas_used: int | None,
    ) -> None:
        done = self.store.mark_batch_recorded(interval_id, b.batch_index, tx_hash, block, gas_used)
        self.events.publish(
            "batch",
            self._batch_event(
                interval_id, b, BatchState.RECORDED, txHash=tx_hash, block=block, gasUsed=gas_used
            ),
        )
        if done:
            self._recorded(interval_id, tx_hash, block)

    def _recorded(self, interval_id: int, tx_hash: str | None, block: int | None) -> None:
        self.intake.reload()
        for t in self.store.trades(interval_id):
            self.intake.forget_balance(t.buyer)
        self.events.publish(
            "recorded", {"intervalId": interval_id, "txHash": tx_hash, "block": block}
        )

    def reconcile(self, since_block: int | None = None) -> list[tuple[int, int]]:
        """A receipt is not final: batches recorded in blocks the chain no longer has (the head
        went back below them, or a rollback the ledger noticed forked at or below them) and not
        on chain any more are made pending again and recorded again, with the same signature, by
        the recorder; activation batches alike (``batchOf`` says none). ``since_block``: check
        every batch recorded from that block on. Returns the (interval, trade batch) pairs found
        lost."""
        fork = self.ledger.rollback() if since_block is None else since_block
        head = self.ledger.head()
        start = fork if fork is not None else head + 1
        candidates = self.store.recorded_batches_from(start)
        lost: list[tuple[int, int]] = []
        for b in candidates:
            last_id = json.loads(b.trade_ids)[-1]
            if self.ledger.batch_recorded(b.interval_id, last_id):
                continue
            reason = (
                f"recorded in block {b.block_number} (tx {b.tx_hash}), no longer on chain "
                f"(head {head}): recorded again"
            )
            self.store.mark_batch_lost(b.interval_id, b.batch_index, reason)
            log.warning("interval %s batch %d: %s", b.interval_id, b.batch_index, reason)
            self.events.publish(
                "batch",
                {"intervalId": b.interval_id, "index": b.batch_index,
                 "state": BatchState.PENDING, "reason": reason},
            )  # fmt: skip
            lost.append((b.interval_id, b.batch_index))
        for fb in self.store.activation_batches_in((BatchState.RECORDED,)):
            if fb.block_number is None or fb.block_number < start:
                continue
            if self.ledger.activation_batch_state(fb.interval_id, fb.batch_index) != 0:
                continue
            reason = (
                f"activation batch recorded in block {fb.block_number} (tx {fb.tx_hash}), no "
                f"longer on chain (head {head}): recorded again"
            )
            self.store.update_activation_batch(
                fb.interval_id, fb.batch_index, state=BatchState.PENDING, last_error=reason,
                tx_hash=None, block_number=None, next_attempt_at=None,
            )  # fmt: skip
            log.warning("interval %s activation batch %d: %s", fb.interval_id, fb.batch_index,
                        reason)  # fmt: skip
            self._activation_event(fb.interval_id, fb, BatchState.PENDING, reason=reason)
        if lost:
            self.intake.reload()
        return lost

    def recover(self) -> list[int]:
        """After a restart: batches the chain lost meanwhile back to pending, clear intervals
        closed but not cleared, and finish unsent batches. Never raises: what fails is logged
        and shown with its interval (batch state and reason, or the interval's error), and the
        scheduler tries again."""
        done: list[int] = []
        try:
            self.reconcile()
        except Exception:
            log.exception("recovery: checking recorded batches against the chain failed")
        try:
            closed = self.store.intervals_in((IntervalStatus.CLOSED,))
        except Exception:
            log.exception("recovery: the store cannot list closed intervals")
            closed = []
        for row in closed:
            try:
                with self.clearing.lock:
                    self.clearing.clear(row.id)
            except Exception as exc:
                self.clearing.failed(row.id, f"clearing failed: {exc}")
                log.exception("recovery: clearing interval %s failed", row.id)
        try:
            unfinished = self.store.unfinished_intervals()
        except Exception:
            log.exception("recovery: the store cannot list unfinished batches")
            unfinished = []
        for interval_id in unfinished:
            try:
                with self.clearing.lock:
                    if self.record_batch(interval_id):
                        done.append(interval_id)
            except Exception:
                log.exception("recovery: recording interval %s failed", interval_id)
        return done

    def follow_activation_settlements(self) -> list[tuple[int, int]]:
        """Mark recorded activation batches settled (or reclaimed) once the keeper closed them on
        chain, with each activation's payment and refund from the chain's events."""
        closed: list[tuple[int, int]] = []
        for b in self.store.activation_batches_in((BatchState.RECORDED,)):
            try:
                if self.ledger.activation_batch_state(b.interval_id, b.batch_index) < 2:
                    continue
                found = self.ledger.activation_outcomes(
                    b.interval_id, b.batch_index, bytes.fromhex(b.packed[2:])
                )
                if not found:  # the event is not visible yet
                    continue
                state = FlexBatchState.RECLAIMED if found["reclaimed"] else FlexBatchState.SETTLED
                self.store.mark_activation_batch_closed(
                    b.interval_id, b.batch_index, state, found["tx_hash"], found["activations"]
                )
            except Exception:
                log.exception(
                    "following activation batch %s/%s failed", b.interval_id, b.batch_index
                )
                continue
            closed.append((b.interval_id, b.batch_index))
            self._activation_event(b.interval_id, b, state, txHash=found["tx_hash"])
        return closed

    def follow_settlements(self) -> list[int]:
        """Mark recorded intervals settled once the keeper has settled them on chain (and their
        activation batches, ``follow_activation_settlements``)."""
        with contextlib.suppress(Exception):  # it logs what fails itself
            self.follow_activation_settlements()
        settled: list[int] = []
        for row in self.store.intervals_in((IntervalStatus.RECORDED,)):
            try:
                info = self.ledger.interval_settlement(row.id)
                if info is None:
                    continue
                self.store.mark_trades_settled(row.id, info)
            except Exception:
                log.exception("following the settlement of interval %s failed", row.id)
                continue
            settled.append(row.id)
            self.events.publish(
                "settlement",
                {
                    "intervalId": row.id,
                    "trades": len(info.trades),
                    "imbalances": 0 if info.imbalance is None else len(info.imbalance.parties),
                },
            )
        return settled
