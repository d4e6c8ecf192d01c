"""The oracle daemon: broker -> checks -> durable queue -> batched ``submitReadings`` -> receipts.

Guarantees (ARCHITECTURE.md, "what must never happen"):
- persist before ack: a message is acked to the broker only after its reading (or its rejection) is
  committed to the SQLite queue, so a crash before that makes the broker re-deliver it (persistent
  session, QoS 1);
- the transaction hash is recorded before the transaction is sent, and a reading becomes
  ``submitted`` only after its receipt; on start (and after any ambiguous chain error) in-flight
  batches are reconciled by receipt or ``readingOf`` before anything is resent, so no reading is
  submitted twice or dropped;
- bad messages (malformed, forged, unregistered, future, replayed, conflicting) are logged and
  counted and never stop the daemon;
- a receipt is not the end: when the chain head goes back (:mod:`backend.chain.heads`), and on
  start and after chain errors for the last ``recheck_blocks`` blocks of its own work, every
  ``submitted`` batch is checked against the chain (its transaction, else ``readingOf`` reading by
  reading) and the readings the chain lost are submitted again. The contract ignores an identical
  resubmission, so a reading that is on chain after all counts as done, never twice.

One module (a little over 500 lines) on purpose: the guarantees above are one loop's ordering of
persist, ack, send and reconcile, and splitting it would spread that ordering over files.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from backend.chain.errors import ChainUnavailableError, LedgerError
from backend.chain.protocol import MAX_READING_WH
from backend.chain.registry import MeterOwner
from backend.iot.errors import MessageError
from backend.iot.schema import (
    ANNOUNCE_WILDCARD,
    READINGS_WILDCARD,
    Announcement,
    parse_announcement,
    parse_reading,
    topic_address,
)
from backend.iot.signing import recover_signer
from backend.iot.transport import Message, Transport
from backend.oracle.errors import BatchRefusedError
from backend.oracle.ledger import BatchReceipt, MeterState, ReadingsLedger
from backend.oracle.store import Incoming, OracleStore, QueuedReading, Rejection

log = logging.getLogger("tegrid.oracle")

CLIENT_ID = "tegrid-oracle"


@dataclass(frozen=True)
class OracleConfig:
    batch_size: int = (
        400  # readings per submitReadings transaction (~45k gas each: stays far below 30M)
    )
    ingest_chunk: int = 500  # messages committed (and then acked) per SQLite transaction
    idle_sleep_s: float = 0.02
    receipt_timeout_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    registry_ttl_s: float = 300.0
    registry_negative_ttl_s: float = 2.0
    clock_skew_s: int = (
        5  # tolerance for a reading that arrives just before the chain sees its interval end
    )
    # on start and after chain errors, submitted batches this many blocks below the newest one
    # are checked against the chain (a rollback while the oracle was not looking)
    recheck_blocks: int = 64

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.ingest_chunk < 1:
            raise ValueError("batch_size and ingest_chunk must be >= 1")


@dataclass
class OracleCounters:
    received: int = 0
    queued: int = 0
    submitted: int = 0
    batches: int = 0
    gas_used: int = 0
    announcements: int = 0
    # announcements the registry does not back: unregistered, inactive, bus_mismatch
    announce_problems: Counter[str] = field(default_factory=Counter)
    rollbacks: int = 0  # chain rollbacks noticed
    rechecked_batches: int = 0  # submitted batches checked against the chain again
    resubmitted: int = 0  # submitted readings the chain had lost, queued again
    rejected: Counter[str] = field(default_factory=Counter)


class OracleDaemon:
    """Run with :meth:`start` / :meth:`stop` (threads) or :meth:`run` (blocking)."""

    def __init__(
        self,
        store: OracleStore,
        ledger: ReadingsLedger,
        transport: Transport | None,
        config: OracleConfig | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.transport = transport
        self.config = config or OracleConfig()
        self.counters = OracleCounters()
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._registry: dict[str, tuple[MeterState, float]] = {}
        self._chain_time: tuple[int, float] | None = (
            None  # (chain timestamp, monotonic when fetched)
        )
        self._needs_reconcile = True
        self._suspect_intervals: set[int] = set()
        self._backoff_s = 0.0
        self._domain_separator = b""
        self._interval_seconds = 0
        self.announced: dict[str, int | str] = {}

    # --- life cycle

    def start(self) -> None:
        domain = self.ledger.domain()
        self._domain_separator = domain.separator()
        self._interval_seconds = self.ledger.interval_seconds()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._ingest_loop, name="oracle-ingest", daemon=True),
            threading.Thread(target=self._submit_loop, name="oracle-submit", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if self.transport is not None:
            self.transport.subscribe(READINGS_WILDCARD, self._inbox.put, qos=1)
            self.transport.subscribe(ANNOUNCE_WILDCARD, self._inbox.put, qos=1)
        self.store.set_meta("started_at", repr(time.time()))
        log.info("oracle started (interval %d s)", self._interval_seconds)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads = []

    def run(self) -> None:
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def deliver(self, message: Message) -> None:
        """Hand a message in directly (in-process use and tests); same path as the broker's."""
        self._inbox.put(message)

    def idle(self) -> bool:
        """Nothing buffered in memory and nothing pending or in flight in the queue."""
        return self._inbox.empty() and self.store.status().queue_depth == 0

    # --- ingest

    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            messages = [first]
            while len(messages) < self.config.ingest_chunk:
                try:
                    messages.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            self._ingest(messages)

    def _ingest(self, messages: list[Message]) -> None:
        items: list[Incoming] = []
        rejections: list[Rejection] = []
        self._prefetch_meters(messages)
        announcements: list[Announcement] = []
        for msg in messages:
            if msg.topic.endswith("/announce"):
                self._announce(msg, rejections, announcements)
                continue
            self.counters.received += 1
            try:
                items.append(self.check(msg.topic, msg.payload))
            except MessageError as exc:
                meter, interval_id = _best_effort_ids(msg.payload)
                rejections.append(Rejection(exc.reason, exc.detail, meter, interval_id, msg.topic))
        while not self._stop.is_set():
            try:
                result = self.store.ingest(items, rejections)
                break
            except Exception:  # disk full, locked database: keep the messages un-acked and retry
                log.exception("cannot write the oracle queue; retrying")
                time.sleep(1.0)
        else:
            return  # stopping: un-acked messages will be re-delivered by the broker
        self.counters.queued += result.queued
        for rej in result.rejections:
            self.counters.rejected[rej.reason] += 1
            log.warning(
                "rejected %s (meter %s, interval %s): %s",
                rej.reason,
                rej.meter,
                rej.interval_id,
                rej.detail,
            )
        for msg in messages:
            msg.ack()
        if announcements:
            self._check_announcements(announcements)

    def _announce(
        self, msg: Message, rejections: list[Rejection], announcements: list[Announcement]
    ) -> None:
        try:
            ann = parse_announcement(msg.payload, msg.topic)
        except MessageError as exc:
            rejections.append(Rejection(f"announce_{exc.reason}", exc.detail, topic=msg.topic))
            return
        self.counters.announcements += 1
        self.announced[ann.address] = ann.bus
        self._registry.pop(ann.address, None)  # look it up afresh: it may just have been connected
        announcements.append(ann)

    def _check_announcements(self, announcements: list[Announcement]) -> None:
        """Compare each announced meter with the registry (one round trip per chunk): a meter
        that is not registered, belongs to an inactive participant or announces another bus
        than its participant's gets a warning, never silence."""
        try:
            owners = self.ledger.meter_owners([a.address for a in announcements])
        except LedgerError as exc:
            for ann in announcements:
                log.warning(
                    "meter %s announced itself on bus %s; not compared with the registry (%s)",
                    ann.address,
                    ann.bus,
                    exc,
                )
            return
        for ann in announcements:
            owner = owners.get(ann.address) or MeterOwner(ann.address)
            problem = owner.problem(ann.bus)
            if problem is not None:
                self.counters.announce_problems[problem.reason] += 1
                log.warning("announcement: %s", problem.message)
            else:
                log.info(
                    "meter %s announced itself on bus %s (participant %s, as registered)",
                    ann.address,
                    ann.bus,
                    owner.wallet,
                )

    def check(self, topic: str, payload: bytes) -> Incoming:
        """All off-chain checks of one reading message; raises a countable MessageError."""
        signed = parse_reading(payload, topic)
        reading = signed.reading
        if reading.import_wh > MAX_READING_WH or reading.export_wh > MAX_READING_WH:
            raise MessageError("value_too_large", f"import/export above {MAX_READING_WH} Wh")
        signer = recover_signer(self._domain_separator, reading, signed.signature)
        if signer != reading.meter:
            raise MessageError("bad_signature", f"signed by {signer}, not by meter {reading.meter}")
        ends_at = (reading.interval_id + 1) * self._interval_seconds
        if ends_at > self._chain_now(ends_at) + self.config.clock_skew_s:
            raise MessageError(
                "future_interval", f"interval {reading.interval_id} ends at {ends_at}"
            )
        state = self._meter_state(reading.meter)
        if state is not None and not state.registered:
            raise MessageError("unregistered", f"{reading.meter} is not a registered meter")
        if state is not None and not state.active:
            raise MessageError("inactive", f"the participant of {reading.meter} is not active")
        # a device key's own reading goes to submitDeviceReadings; with the registry out of
        # reach it is kept undecided and the submit loop asks again before anything is sent
        if state is None:
            return Incoming(reading, signed.signature, signed.sent_at, undecided=True)
        return Incoming(reading, signed.signature, signed.sent_at, state.device)

    def _chain_now(self, needed: int) -> int:
        """Chain time, refreshed when the cached value would reject; estimated from the wall clock
        while the chain is down (the contract checks again on submission).
        """
        cached = self._chain_time
        if cached is not None and cached[0] >= needed:
            return cached[0]
        try:
            now = self.ledger.chain_time()
            self._chain_time = (now, time.monotonic())
            return now
        except ChainUnavailableError:
            if cached is None:
                return needed
            return cached[0] + int(time.monotonic() - cached[1])

    def _prefetch_meters(self, messages: list[Message]) -> None:
        """Look up every meter of a chunk missing from the cache in one round trip."""
        now = time.monotonic()
        unknown: set[str] = set()
        for msg in messages:
            if msg.topic.endswith("/readings"):
                try:
                    meter = topic_address(msg.topic)
                except MessageError:
                    continue
                hit = self._registry.get(meter)
                if hit is None or hit[1] <= now:
                    unknown.add(meter)
        if not unknown:
            return
        try:
            states = self.ledger.meter_states(sorted(unknown))
        except ChainUnavailableError:
            return
        for meter, state in states.items():
            ttl = (
                self.config.registry_ttl_s if state.active else self.config.registry_negative_ttl_s
            )
            self._registry[meter] = (state, now + ttl)

    def _meter_state(self, meter: str) -> MeterState | None:
        hit = self._registry.get(meter)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            state = self.ledger.meter_state(meter)
        except ChainUnavailableError:
            return hit[0] if hit is not None else None  # unknown now: the contract checks it again
        ttl = self.config.registry_ttl_s if state.active else self.config.registry_negative_ttl_s
        self._registry[meter] = (state, now + ttl)
        return state

    # --- submission

    def _submit_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._needs_reconcile:
                    self.reconcile()
                    self._needs_reconcile = False
                else:
                    self.watch_head()
                done = self.submit_once()
                self._backoff_s = 0.0
                if done == 0:
                    self._stop.wait(self.config.idle_sleep_s)
            except ChainUnavailableError as exc:
                self._needs_reconcile = True
                self._backoff(f"chain unavailable: {exc}")
            except BatchRefusedError as exc:
                self._backoff(f"MeterReadings refuses the batch: {exc.reason}")
            except Exception:  # never die: log, back off, reconcile, go on
                log.exception("submit loop error")
                self._needs_reconcile = True
                self._backoff("unexpected error")

    def _backoff(self, why: str) -> None:
        cfg = self.config
        self._backoff_s = min(cfg.backoff_max_s, max(cfg.backoff_initial_s, self._backoff_s * 2))
        log.warning("%s; retrying in %.1f s", why, self._backoff_s)
        self._stop.wait(self._backoff_s)

    def submit_once(self) -> int:
        """Submit every ended interval's pending readings in batches; returns readings submitted."""
        now = self.ledger.chain_time()
        self._chain_time = (now, time.monotonic())
        current_interval = now // self._interval_seconds
        self.decide_undecided()
        submitted = 0
        for interval_id in self.store.pending_intervals(ended_before_interval=current_interval):
            while not self._stop.is_set():
                batch_id, items = self.store.claim_batch(interval_id, self.config.batch_size)
                if not items:
                    break
                done = self._submit_batch(batch_id, interval_id, items)
                if done is None:
                    break  # not accepted yet: try this interval again on a later round
                submitted += done
        return submitted

    def decide_undecided(self) -> int:
        """Readings queued while the registry was out of reach: ask it now (one batched round
        trip; ``ChainUnavailableError`` leaves them waiting) whether each key is a meter or a
        device; an unregistered or inactive key's readings are rejected as at ingest."""
        keys = self.store.undecided_keys()
        if not keys:
            return 0
        states = self.ledger.meter_states(keys)
        kinds: dict[str, bool] = {}
        refusals: dict[str, Rejection] = {}
        for key in keys:
            state = states.get(key)
            if state is None or not state.registered:
                refusals[key] = Rejection("unregistered", f"{key} is not a registered meter")
            elif not state.active:
                refusals[key] = Rejection("inactive", f"the participant of {key} is not active")
            else:
                kinds[key] = state.device
        for why in refusals.values():
            self.counters.rejected[why.reason] += 1
            log.warning("rejected %s: %s (decided after the registry answered)", why.reason,
                        why.detail)  # fmt: skip
        decided = self.store.decide(kinds, refusals)
        log.info("decided %d readings queued while the registry was out of reach", decided)
        return decided

    def _submit_batch(
        self, batch_id: int, interval_id: int, items: list[QueuedReading]
    ) -> int | None:
        try:
            tx_hash, raw = self.ledger.prepare_batch(
                interval_id,
                [(q.reading, q.signature) for q in items],
                check=interval_id in self._suspect_intervals,
                device=items[0].device,
            )
        except BatchRefusedError as exc:
            self.store.requeue_batch(batch_id)
            if exc.retryable:
                log.info(
                    "batch for interval %d not accepted yet (%s); will retry",
                    interval_id,
                    exc.reason,
                )
                return None
            raise
        except ChainUnavailableError:
            self.store.requeue_batch(batch_id)  # nothing was sent
            raise
        self.store.set_batch_tx(
            batch_id, tx_hash
        )  # before sending: a crash now is reconciled by this hash
        try:
            self.ledger.send_raw(raw)
        except ChainUnavailableError:
            raise  # ambiguous: the node may have it; reconcile decides
        except Exception:
            self.ledger.reset_nonce()
            raise
        receipt = self.ledger.receipt(tx_hash, self.config.receipt_timeout_s)
        if receipt is None:
            raise ChainUnavailableError(f"transaction {tx_hash} vanished")
        return self._apply_receipt(batch_id, items, receipt)

    def _apply_receipt(
        self, batch_id: int, items: list[QueuedReading], receipt: BatchReceipt
    ) -> int:
        if receipt.status != 1:
            log.error("batch %d reverted in tx %s; requeued", batch_id, receipt.tx_hash)
            self.ledger.reset_nonce()
            self.store.requeue_batch(batch_id)
            if items:
                # the next attempt for this interval is simulated first (decoded reason, exact gas)
                self._suspect_intervals.add(items[0].reading.interval_id)
            raise ChainUnavailableError(f"batch {batch_id} reverted")
        if items:
            self._suspect_intervals.discard(items[0].reading.interval_id)
        rejected = {
            q.id: receipt.rejected[q.reading.meter]
            for q in items
            if q.reading.meter in receipt.rejected
        }
        self.store.finish_batch(batch_id, receipt.block_number, receipt.gas_used, rejected)
        for reason in rejected.values():
            self.counters.rejected[reason] += 1
        ok = len(items) - len(rejected)
        self.counters.submitted += ok
        self.counters.batches += 1
        self.counters.gas_used += receipt.gas_used
        log.info(
            "batch %d: %d readings in block %d (%d gas)",
            batch_id,
            ok,
            receipt.block_number,
            receipt.gas_used,
        )
        return ok

    def watch_head(self, force: bool = False) -> None:
        """Re-check the work a chain rollback may have undone (at most once per head poll)."""
        rollback = self.ledger.check_head(force=force)
        if rollback is None:
            return
        self.counters.rollbacks += 1
        self.ledger.reset_nonce()
        self.recheck(rollback.fork_block)

    def recheck(self, since_block: int) -> int:
        """Check every submitted batch mined at or above ``since_block`` against the chain; the
        readings of a batch whose transaction is gone and that are not on chain either go back to
        the queue. Returns how many."""
        requeued = 0
        for batch_id, tx_hash, block in self.store.submitted_batches(since_block):
            self.counters.rechecked_batches += 1
            mined = self.ledger.mined_block(tx_hash) if tx_hash else None
            if mined is not None:
                if mined != block:
                    self.store.move_batch(batch_id, mined)
                continue
            items = self.store.batch_readings(batch_id)
            states = self.ledger.readings_of(
                [(q.reading.meter, q.reading.interval_id) for q in items]
            )
            missing: list[int] = []
            conflicting: dict[int, str] = {}
            for q, (import_wh, export_wh, present) in zip(items, states, strict=True):
                if not present:
                    missing.append(q.id)
                elif (import_wh, export_wh) != (q.reading.import_wh, q.reading.export_wh):
                    conflicting[q.id] = "conflicting"
            self.store.reopen_batch(batch_id, missing, conflicting)
            requeued += len(missing)
            log.warning(
                "batch %d (tx %s, block %s) is no longer on chain: %d readings queued again, "
                "%d still on chain, %d conflicting",
                batch_id,
                tx_hash,
                block,
                len(missing),
                len(items) - len(missing) - len(conflicting),
                len(conflicting),
            )
        self.counters.resubmitted += requeued
        return requeued

    def reconcile(self) -> None:
        """Settle the fate of every in-flight batch from the chain before anything is resent, and
        re-check recent submitted batches (a rollback while the oracle was away or the chain
        down)."""
        self.watch_head(force=True)
        last_block = self.store.status().last_block
        if last_block is not None:
            self.recheck(max(0, last_block - self.config.recheck_blocks))
        for batch_id, tx_hash, items in self.store.inflight_batches():
            receipt = (
                self.ledger.receipt(tx_hash, self.config.receipt_timeout_s) if tx_hash else None
            )
            if receipt is not None:
                if receipt.status == 1:
                    self._apply_receipt(batch_id, items, receipt)
                    continue
                self.store.requeue_batch(batch_id)
                continue
            # Never reached the chain (or no hash recorded): the chain's own record decides, reading
            # by reading.
            rejected: dict[int, str] = {}
            requeue: list[int] = []
            for q in items:
                import_wh, export_wh, present = self.ledger.reading_of(
                    q.reading.meter, q.reading.interval_id
                )
                if not present:
                    requeue.append(q.id)
                elif (import_wh, export_wh) != (q.reading.import_wh, q.reading.export_wh):
                    rejected[q.id] = "conflicting"
            self.store.finish_batch(batch_id, None, None, rejected, requeue)
            log.info(
                "reconciled batch %d: %d requeued, %d already on chain",
                batch_id,
                len(requeue),
                len(items) - len(requeue) - len(rejected),
            )
        self.ledger.reset_nonce()


def _best_effort_ids(payload: bytes) -> tuple[str | None, int | None]:
    """Meter and interval of a rejected message, for the rejection log only (never trusted)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    meter = body.get("meter")
    interval_id = body.get("intervalId")
    return (
        meter[:42] if isinstance(meter, str) else None,
        interval_id
        if isinstance(interval_id, int)
        and not isinstance(interval_id, bool)
        and 0 <= interval_id < 2**63
        else None,
    )
