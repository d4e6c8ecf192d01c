"""Durable queue of the oracle: every accepted reading and every rejection, in SQLite (SQLAlchemy).

Lifecycle of a reading: ``pending`` (persisted, then acked to the broker) -> ``inflight`` (in a
transaction that was or may have been sent; ``batch_id`` and ``tx_hash`` say which) -> ``submitted``
(receipt seen, the chain accepted it or already held the identical reading) or ``rejected`` (the
chain refused it; reason kept). After a crash, ``inflight`` rows are reconciled against the chain
(``readingOf``) before anything is resent. After a chain rollback, ``submitted`` rows whose
transaction the chain lost go back to ``pending`` (:meth:`OracleStore.reopen_batch`).

One module (a little over 500 lines) on purpose: it is the oracle's one persistence boundary,
each method one transaction over the same tables, so every state change of a reading is in one
place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    false,
    func,
    insert,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from backend import db
from backend.iot.signing import Reading
from backend.oracle.errors import OracleError

PENDING, INFLIGHT, SUBMITTED, REJECTED = "pending", "inflight", "submitted", "rejected"
ROLLED_BACK = "rolled_back"  # a batch whose transaction a chain rollback removed
# checked and kept, but whether its key is a meter or a device is not known yet (the registry was
# out of reach at ingest): ``decide`` makes it pending (as a meter's or a device's) or rejects it
UNDECIDED = "undecided"
DETAIL_MAX = 300


class Base(DeclarativeBase):
    pass


class ReadingRow(Base):
    __tablename__ = "oracle_readings"
    __table_args__ = (
        UniqueConstraint("meter", "interval_id", name="uq_meter_interval"),
        Index("ix_status_interval", "status", "interval_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    meter: Mapped[str] = mapped_column(String(42))
    interval_id: Mapped[int] = mapped_column(BigInteger)
    import_wh: Mapped[int] = mapped_column(BigInteger)
    export_wh: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    status: Mapped[str] = mapped_column(String(12), default=PENDING)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("oracle_batches.id"), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    received_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    submitted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # signed by a registered device key, not a meter: submitted with submitDeviceReadings
    device: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    def reading(self) -> Reading:
        return Reading(self.meter, self.interval_id, self.import_wh, self.export_wh)


class BatchRow(Base):
    __tablename__ = "oracle_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    interval_id: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    status: Mapped[str] = mapped_column(String(12), default=INFLIGHT)
    created_at: Mapped[float] = mapped_column(Float)
    gas_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class RejectionRow(Base):
    __tablename__ = "oracle_rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reason: Mapped[str] = mapped_column(String(40), index=True)
    detail: Mapped[str] = mapped_column(String(DETAIL_MAX), default="")
    meter: Mapped[str | None] = mapped_column(String(42), nullable=True)
    interval_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    topic: Mapped[str | None] = mapped_column(String(200), nullable=True)
    at: Mapped[float] = mapped_column(Float)


class MetaRow(Base):
    __tablename__ = "oracle_meta"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


@dataclass
class Incoming:
    """A checked reading about to be queued."""

    reading: Reading
    signature: bytes
    sent_at: float | None = None
    device: bool = False  # signed by a registered device key (submitDeviceReadings)
    undecided: bool = False  # the registry did not answer: meter or device is decided later


@dataclass
class Rejection:
    reason: str
    detail: str = ""
    meter: str | None = None
    interval_id: int | None = None
    topic: str | None = None


@dataclass
class IngestResult:
    queued: int = 0
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class QueuedReading:
    id: int
    reading: Reading
    signature: bytes
    sent_at: float | None
    device: bool = False


@dataclass
class Status:
    pending: int
    inflight: int
    submitted: int
    rejected_by_reason: dict[str, int]
    last_block: int | None
    last_submit_at: float | None
    batches: int
    intervals_pending: list[int]

    @property
    def queue_depth(self) -> int:
        return self.pending + self.inflight

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue_depth,
            "pending": self.pending,
            "inflight": self.inflight,
            "submitted": self.submitted,
            "rejected": sum(self.rejected_by_reason.values()),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "batches": self.batches,
            "last_block": self.last_block,
            "last_submit_at": self.last_submit_at,
            "intervals_pending": self.intervals_pending,
        }


def make_engine(url: str) -> Engine:
    """:func:`backend.db.make_engine`, a malformed URL as an :class:`OracleError`."""
    try:
        return db.make_engine(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise OracleError(f"bad oracle database URL {url!r}: {exc}") from None


class OracleStore:
    """The oracle's queue. All methods are short transactions; safe to call from several threads."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if create:
            try:
                Base.metadata.create_all(self.engine)
                _add_device_column(self.engine)
            except SQLAlchemyError as exc:
                raise OracleError(f"cannot open oracle database {url}: {exc}") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # --- ingest

    def ingest(
        self, items: Sequence[Incoming], rejections: Iterable[Rejection] = ()
    ) -> IngestResult:
        """Queue checked readings and record rejections in ONE transaction (so the caller can ack
        after).

        A reading whose (meter, interval) is already queued is rejected as ``replayed`` when
        identical and ``conflicting`` otherwise (also within ``items``).
        """
        result = IngestResult(rejections=list(rejections))
        now = time.time()
        with self._session.begin() as session:
            keys = list({(i.reading.meter, i.reading.interval_id) for i in items})
            existing: dict[tuple[str, int], tuple[int, int]] = {}
            for chunk_start in range(0, len(keys), 400):
                chunk = keys[chunk_start : chunk_start + 400]
                rows = session.execute(
                    select(
                        ReadingRow.meter,
                        ReadingRow.interval_id,
                        ReadingRow.import_wh,
                        ReadingRow.export_wh,
                    ).where(tuple_(ReadingRow.meter, ReadingRow.interval_id).in_(chunk))
                ).all()
                for meter, interval_id, imp, exp in rows:
                    existing[(meter, interval_id)] = (imp, exp)
            new_rows = []
            for item in items:
                r = item.reading
                key = (r.meter, r.interval_id)
                values = (r.import_wh, r.export_wh)
                if key in existing:
                    reason = "replayed" if existing[key] == values else "conflicting"
                    result.rejections.append(
                        Rejection(reason, f"already queued {existing[key]}", r.meter, r.interval_id)
                    )
                    continue
                existing[key] = values
                new_rows.append(
                    {
                        "meter": r.meter,
                        "interval_id": r.interval_id,
                        "import_wh": r.import_wh,
                        "export_wh": r.export_wh,
                        "signature": item.signature,
                        "status": UNDECIDED if item.undecided else PENDING,
                        "received_at": now,
                        "sent_at": item.sent_at,
                        "device": item.device,
                    }
                )
            if new_rows:  # Core executemany: ~10x faster than ORM objects for thousands of rows
                session.execute(insert(ReadingRow), new_rows)
            session.add_all(
                RejectionRow(
                    reason=rej.reason,
                    detail=rej.detail[:DETAIL_MAX],
                    meter=rej.meter,
                    interval_id=rej.interval_id,
                    topic=(rej.topic or "")[:200] or None,
                    at=now,
                )
                for rej in result.rejections
            )
            result.queued = len(new_rows)
        return result

    def add_rejections(self, rejections: Iterable[Rejection]) -> None:
        self.ingest([], rejections)

    # --- submission

    def undecided_keys(self) -> list[str]:
        """The keys of the readings queued while the registry was out of reach, oldest first."""
        with self._session() as session:
            rows = session.execute(
                select(ReadingRow.meter, func.min(ReadingRow.id))
                .where(ReadingRow.status == UNDECIDED)
                .group_by(ReadingRow.meter)
            ).all()
        return [meter for meter, _first in sorted(rows, key=lambda r: r[1])]

    def decide(self, kinds: dict[str, bool], refusals: dict[str, Rejection]) -> int:
        """Settle what undecided readings are, in one transaction: a key in ``kinds`` is a
        registered, active meter (False) or device (True) and its readings become pending as
        such; a key in ``refusals`` has its readings rejected with that reason (recorded per
        reading). Returns how many readings were decided."""
        now = time.time()
        decided = 0
        with self._session.begin() as session:
            for key, device in kinds.items():
                ids = session.scalars(
                    select(ReadingRow.id).where(
                        ReadingRow.meter == key, ReadingRow.status == UNDECIDED
                    )
                ).all()
                session.execute(
                    update(ReadingRow)
                    .where(ReadingRow.id.in_(ids))
                    .values(status=PENDING, device=device)
                )
                decided += len(ids)
            for key, why in refusals.items():
                rows = session.scalars(
                    select(ReadingRow).where(
                        ReadingRow.meter == key, ReadingRow.status == UNDECIDED
                    )
                ).all()
                for row in rows:
                    row.status, row.reason = REJECTED, why.reason
                    session.add(
                        RejectionRow(
                            reason=why.reason,
                            detail=why.detail[:DETAIL_MAX],
                            meter=row.meter,
                            interval_id=row.interval_id,
                            at=now,
                        )
                    )
                decided += len(rows)
        return decided

    def pending_intervals(self, ended_before_interval: int | None = None) -> list[int]:
        """Intervals with pending readings (only those < ``ended_before_interval`` when given),
        oldest first.
        """
        with self._session() as session:
            q = select(ReadingRow.interval_id).where(ReadingRow.status == PENDING).distinct()
            if ended_before_interval is not None:
                q = q.where(ReadingRow.interval_id < ended_before_interval)
            return sorted(session.scalars(q).all())

    def claim_batch(self, interval_id: int, limit: int) -> tuple[int, list[QueuedReading]]:
        """Move up to ``limit`` pending readings of one interval to ``inflight`` under a new batch
        id; one kind per batch (meters' or devices' readings, as the oldest pending one).
        """
        with self._session.begin() as session:
            kind = session.scalars(
                select(ReadingRow.device)
                .where(ReadingRow.status == PENDING, ReadingRow.interval_id == interval_id)
                .order_by(ReadingRow.id)
                .limit(1)
            ).first()
            if kind is None:
                return 0, []
            rows = session.execute(
                select(
                    ReadingRow.id,
                    ReadingRow.meter,
                    ReadingRow.import_wh,
                    ReadingRow.export_wh,
                    ReadingRow.signature,
                    ReadingRow.sent_at,
                )
                .where(
                    ReadingRow.status == PENDING,
                    ReadingRow.interval_id == interval_id,
                    ReadingRow.device == bool(kind),
                )
                .order_by(ReadingRow.id)
                .limit(limit)
            ).all()
            if not rows:
                return 0, []
            batch = BatchRow(
                interval_id=interval_id, size=len(rows), status=INFLIGHT, created_at=time.time()
            )
            session.add(batch)
            session.flush()
            ids = [r.id for r in rows]
            session.execute(
                update(ReadingRow)
                .where(ReadingRow.id.in_(ids))
                .values(status=INFLIGHT, batch_id=batch.id)
            )
            return batch.id, [
                QueuedReading(
                    r.id,
                    Reading(r.meter, interval_id, r.import_wh, r.export_wh),
                    r.signature,
                    r.sent_at,
                    bool(kind),
                )
                for r in rows
            ]

    def set_batch_tx(self, batch_id: int, tx_hash: str) -> None:
        with self._session.begin() as session:
            session.execute(update(BatchRow).where(BatchRow.id == batch_id).values(tx_hash=tx_hash))

    def finish_batch(
        self,
        batch_id: int,
        block_number: int | None,
        gas_used: int | None,
        rejected: dict[int, str] | None = None,
        requeue: Iterable[int] = (),
    ) -> None:
        """Receipt seen: rows of the batch become ``submitted``, except ``rejected`` (row id ->
        reason) and ``requeue`` (row ids back to ``pending``).
        """
        rejected = rejected or {}
        requeue_ids = set(requeue)
        now = time.time()
        with self._session.begin() as session:
            batch = session.get(BatchRow, batch_id)
            if batch is None:
                raise OracleError(f"unknown batch {batch_id}")
            batch.status = SUBMITTED
            batch.block_number = block_number
            batch.gas_used = gas_used
            special = set(rejected) | requeue_ids
            if special:
                rows = session.scalars(
                    select(ReadingRow).where(
                        ReadingRow.id.in_(special), ReadingRow.status == INFLIGHT
                    )
                ).all()
                for row in rows:
                    if row.id in requeue_ids:
                        row.status, row.batch_id = PENDING, None
                    else:
                        row.status, row.reason = REJECTED, rejected[row.id]
                        session.add(
                            RejectionRow(
                                reason=rejected[row.id],
                                detail="refused by MeterReadings",
                                meter=row.meter,
                                interval_id=row.interval_id,
                                at=now,
                            )
                        )
                session.flush()
            session.execute(
                update(ReadingRow)
                .where(ReadingRow.batch_id == batch_id, ReadingRow.status == INFLIGHT)
                .values(status=SUBMITTED, submitted_at=now, block_number=block_number)
            )
            if block_number is not None:
                self._set_meta(session, "last_block", str(block_number))
            self._set_meta(session, "last_submit_at", repr(now))

    def requeue_batch(self, batch_id: int) -> None:
        """The transaction certainly did not happen (unsent or reverted): back to ``pending``."""
        with self._session.begin() as session:
            session.execute(
                update(ReadingRow)
                .where(ReadingRow.batch_id == batch_id, ReadingRow.status == INFLIGHT)
                .values(status=PENDING, batch_id=None)
            )
            session.execute(update(BatchRow).where(BatchRow.id == batch_id).values(status="failed"))

    def submitted_batches(self, since_block: int) -> list[tuple[int, str | None, int | None]]:
        """(batch id, tx hash, block) of submitted batches mined at or above ``since_block`` (or
        without a block: reconciled from ``readingOf``), oldest first: the work a rollback from
        that block may have undone."""
        with self._session() as session:
            rows = session.execute(
                select(BatchRow.id, BatchRow.tx_hash, BatchRow.block_number)
                .where(
                    BatchRow.status == SUBMITTED,
                    (BatchRow.block_number >= since_block) | BatchRow.block_number.is_(None),
                )
                .order_by(BatchRow.id)
            ).all()
            return [(int(i), h, None if b is None else int(b)) for i, h, b in rows]

    def batch_readings(self, batch_id: int) -> list[QueuedReading]:
        """The ``submitted`` readings of a batch."""
        with self._session() as session:
            rows = session.scalars(
                select(ReadingRow)
                .where(ReadingRow.batch_id == batch_id, ReadingRow.status == SUBMITTED)
                .order_by(ReadingRow.id)
            ).all()
            return [_queued(r) for r in rows]

    def move_batch(self, batch_id: int, block_number: int) -> None:
        """The batch's transaction is on chain, in another block than recorded (re-mined)."""
        with self._session.begin() as session:
            session.execute(
                update(BatchRow).where(BatchRow.id == batch_id).values(block_number=block_number)
            )
            session.execute(
                update(ReadingRow)
                .where(ReadingRow.batch_id == batch_id, ReadingRow.status == SUBMITTED)
                .values(block_number=block_number)
            )

    def reopen_batch(
        self, batch_id: int, missing: Iterable[int], conflicting: dict[int, str] | None = None
    ) -> None:
        """The batch's transaction is no longer on chain: ``missing`` rows (not on chain either)
        go back to ``pending`` to be submitted again, ``conflicting`` ones become ``rejected``;
        rows the chain holds (identical) stay ``submitted``."""
        conflicting = conflicting or {}
        missing_ids = list(missing)
        now = time.time()
        with self._session.begin() as session:
            session.execute(
                update(BatchRow).where(BatchRow.id == batch_id).values(status=ROLLED_BACK)
            )
            if missing_ids:
                session.execute(
                    update(ReadingRow)
                    .where(ReadingRow.id.in_(missing_ids), ReadingRow.status == SUBMITTED)
                    .values(status=PENDING, batch_id=None, submitted_at=None, block_number=None)
                )
            for row_id, reason in conflicting.items():
                row = session.get(ReadingRow, row_id)
                if row is None or row.status != SUBMITTED:
                    continue
                row.status, row.reason = REJECTED, reason
                session.add(
                    RejectionRow(
                        reason=reason,
                        detail="another reading is on chain after a rollback",
                        meter=row.meter,
                        interval_id=row.interval_id,
                        at=now,
                    )
                )

    def inflight_batches(self) -> list[tuple[int, str | None, list[QueuedReading]]]:
        with self._session() as session:
            batches = session.scalars(
                select(BatchRow).where(BatchRow.status == INFLIGHT).order_by(BatchRow.id)
            ).all()
            out = []
            for b in batches:
                rows = session.scalars(
                    select(ReadingRow).where(
                        ReadingRow.batch_id == b.id, ReadingRow.status == INFLIGHT
                    )
                ).all()
                out.append(
                    (
                        b.id,
                        b.tx_hash,
                        [_queued(r) for r in rows],
                    )
                )
            return out

    def set_meta(self, key: str, value: str) -> None:
        with self._session.begin() as session:
            self._set_meta(session, key, value)

    @staticmethod
    def _set_meta(session: Session, key: str, value: str) -> None:
        row = session.get(MetaRow, key)
        if row is None:
            session.add(MetaRow(key=key, value=value))
        else:
            row.value = value

    def meta(self, key: str) -> str | None:
        with self._session() as session:
            row = session.get(MetaRow, key)
            return row.value if row is not None else None

    # --- reporting

    def status(self) -> Status:
        with self._session() as session:
            counts: dict[str, int] = {
                status: int(n)
                for status, n in session.execute(
                    select(ReadingRow.status, func.count()).group_by(ReadingRow.status)
                )
            }
            by_reason: dict[str, int] = {
                reason: int(n)
                for reason, n in session.execute(
                    select(RejectionRow.reason, func.count()).group_by(RejectionRow.reason)
                )
            }
            batches = session.scalar(
                select(func.count()).select_from(BatchRow).where(BatchRow.status == SUBMITTED)
            )
            intervals = sorted(
                session.scalars(
                    select(ReadingRow.interval_id)
                    .where(ReadingRow.status.in_((PENDING, UNDECIDED, INFLIGHT)))
                    .distinct()
                ).all()
            )
            last_block = session.get(MetaRow, "last_block")
            last_submit = session.get(MetaRow, "last_submit_at")
        return Status(
            pending=counts.get(PENDING, 0) + counts.get(UNDECIDED, 0),  # undecided wait too
            inflight=counts.get(INFLIGHT, 0),
            submitted=counts.get(SUBMITTED, 0),
            rejected_by_reason=by_reason,
            last_block=int(last_block.value) if last_block else None,
            last_submit_at=float(last_submit.value) if last_submit else None,
            batches=batches or 0,
            intervals_pending=intervals,
        )

    def rows(self, status: str | None = None) -> list[ReadingRow]:
        with self._session() as session:
            q = select(ReadingRow).order_by(ReadingRow.id)
            if status is not None:
                q = q.where(ReadingRow.status == status)
            return list(session.scalars(q).all())

    def latencies_s(self) -> list[float]:
        """Publish-to-receipt latency of every submitted reading that carried ``sentAt``."""
        with self._session() as session:
            rows = session.execute(
                select(ReadingRow.sent_at, ReadingRow.submitted_at).where(
                    ReadingRow.status == SUBMITTED, ReadingRow.sent_at.is_not(None)
                )
            ).all()
        return [
            float(done) - float(sent)
            for sent, done in rows
            if done is not None and sent is not None
        ]


def _queued(r: ReadingRow) -> QueuedReading:
    return QueuedReading(r.id, r.reading(), r.signature, r.sent_at, bool(r.device))


def _add_device_column(engine: Engine) -> None:
    """A queue written before device readings gets the ``device`` column (every row a meter's)."""
    if "device" in {c["name"] for c in inspect(engine).get_columns("oracle_readings")}:
        return
    with engine.begin() as conn:
        conn.execute(
            text("ALTER TABLE oracle_readings ADD COLUMN device BOOLEAN NOT NULL DEFAULT false")
        )
