"""Durable store of the dispatcher: one row per control action (``control_actions``) and an
append-only change log (``control_events``) that the API tails for its event stream.

Lifecycle of an action: ``pending`` (an activation to dispatch) -> ``sent`` (signed; the
signature is stored *before* the first publish, and every resend publishes that same signed
action) -> ``acknowledged`` (the device applied it) or ``refused`` (the device's reason kept) or
``expired`` (no ack before the action's expiry, chain time). The device's signed ack is kept.
An ack that arrives after ``expired`` still records what the device says it did.

Two kinds of rows share the table and the lifecycle: ``control`` (a flexibility activation's
``ControlAction``) and ``mode`` (a ``ModeAction`` after a grid mode switch; its mode is kept in
``setpoint_w`` and its effective interval in ``interval_id``, so one index and one resend loop
serve both, and ``GET /control/actions?interval=`` lists a switch with the interval it acts on).

Same engine factory as the other stores (``backend.db``): SQLite with WAL (a committed row
survives kill -9) or PostgreSQL through the same URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from backend import db
from backend.chain.address import checksum
from backend.iot.control import (
    GRID_MODES,
    ControlAction,
    ModeAction,
    SignedAck,
    SignedAction,
    SignedSoc,
)
from backend.iot.errors import IotError

PENDING, SENT, ACKNOWLEDGED, REFUSED, EXPIRED = (
    "pending", "sent", "acknowledged", "refused", "expired",
)  # fmt: skip
MAX_JSON_INT = 2**53 - 1  # what the API answers as JSON numbers (interval, expiry)
STATES = (PENDING, SENT, ACKNOWLEDGED, REFUSED, EXPIRED)
CONTROL, MODE = "control", "mode"  # what a row holds: a ControlAction or a ModeAction
FINAL = frozenset({ACKNOWLEDGED, REFUSED})


class ControlStoreError(IotError):
    """The store cannot be read or written."""


class ControlConflictError(ControlStoreError, ValueError):
    """An activation id already stands for another action (device, interval, setpoint, expiry)."""


class Base(DeclarativeBase):
    pass


class ControlActionRow(Base):
    __tablename__ = "control_actions"
    __table_args__ = (
        Index("ix_control_state", "state"),
        Index("ix_control_interval", "interval_id"),
    )

    activation_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    device: Mapped[str] = mapped_column(String(42))
    interval_id: Mapped[int] = mapped_column(BigInteger)
    setpoint_w: Mapped[int] = mapped_column(BigInteger)
    expiry: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default=PENDING)
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    signer: Mapped[str | None] = mapped_column(String(42), nullable=True)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary(65), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    first_sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    acked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ack_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    applied_w: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ack_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the device's clock
    ack_signature: Mapped[bytes | None] = mapped_column(LargeBinary(65), nullable=True)
    kind: Mapped[str] = mapped_column(String(8), default=CONTROL, server_default=CONTROL)

    def action(self) -> ControlAction | ModeAction:
        key = bytes.fromhex(self.activation_id[2:])
        if self.kind == MODE:
            return ModeAction(key, self.device, self.setpoint_w, self.interval_id, self.expiry)
        return ControlAction(key, self.device, self.interval_id, self.setpoint_w, self.expiry)

    def signed(self, sent_at: float | None = None) -> SignedAction:
        if self.signature is None:
            raise ControlStoreError(f"action {self.activation_id} is not signed yet")
        return SignedAction(self.action(), self.signature, sent_at)

    def as_dict(self) -> dict[str, Any]:
        ack = None
        if self.ack_status is not None:
            ack = {
                "status": self.ack_status,
                "appliedW": self.applied_w,
                "at": self.ack_at,
                "signature": "0x" + (self.ack_signature or b"").hex(),
                "receivedAt": self.acked_at,
            }
        values: dict[str, Any] = {
            "kind": self.kind,
            "activationId": self.activation_id,
            "device": self.device,
            "intervalId": self.interval_id,
            "setpointW": self.setpoint_w,
        }
        if self.kind == MODE:  # the switch: no setpoint; the mode from intervalId on
            values["setpointW"] = None
            values["mode"] = GRID_MODES.get(self.setpoint_w, f"mode_{self.setpoint_w}")
        return {
            **values,
            "expiry": self.expiry,
            "state": self.state,
            "reason": self.reason,
            "attempts": self.attempts,
            "signer": self.signer,
            "signature": None if self.signature is None else "0x" + self.signature.hex(),
            "createdAt": self.created_at,
            "firstSentAt": self.first_sent_at,
            "lastSentAt": self.last_sent_at,
            "ack": ack,
        }


class ControlEventRow(Base):
    """One state change of one action, in commit order (the API's ``control`` events)."""

    __tablename__ = "control_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    activation_id: Mapped[str] = mapped_column(String(66))
    state: Mapped[str] = mapped_column(String(12))
    at: Mapped[float] = mapped_column(Float)


class DeviceSocRow(Base):
    """A battery's latest state of charge as the device reported it, signed (``StateOfCharge``)."""

    __tablename__ = "device_soc"

    device: Mapped[str] = mapped_column(String(42), primary_key=True)
    soc_wh: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[int] = mapped_column(BigInteger)  # the device's clock (unix seconds)
    signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    received_at: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class SocReport:
    """What ``ControlStore.soc`` answers: the latest report of one device."""

    device: str
    soc_wh: int
    at: int
    signature: bytes
    received_at: float


class ControlMetaRow(Base):
    """Facts about the dispatcher process (``started_at``: when it last started listening)."""

    __tablename__ = "control_meta"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


@dataclass(frozen=True)
class ControlTarget:
    """One activation to dispatch: the device's absolute power target for the interval."""

    activation_id: bytes
    device: str
    interval_id: int
    setpoint_w: int
    expiry: int
    kind: str = CONTROL  # MODE: a mode action (mode in setpoint_w, effective interval_id)

    def action(self) -> ControlAction | ModeAction:
        if self.kind == MODE:
            return ModeAction(
                self.activation_id, self.device, self.setpoint_w, self.interval_id, self.expiry
            )
        return ControlAction(
            self.activation_id, self.device, self.interval_id, self.setpoint_w, self.expiry
        )

    @classmethod
    def for_mode(
        cls, action_id: bytes, device: str, mode: int, effective_interval: int, expiry: int
    ) -> ControlTarget:
        """A grid mode switch for one grid-forming device (``ModeAction``)."""
        return cls(action_id, device, effective_interval, mode, expiry, MODE)

    @classmethod
    def for_activation(
        cls,
        activation_id: bytes,
        device: str,
        interval_id: int,
        direction: int,
        baseline_w: int,
        activated_w: int,
        interval_seconds: int,
    ) -> ControlTarget:
        """The target of an activation of a flex offer: up (direction 0) moves the device from
        its baseline to baseline + activatedW, down (1) to baseline - activatedW; the action
        expires when the interval ends (applying it later could deliver nothing)."""
        if direction not in (0, 1):
            raise ValueError(f"direction must be 0 (up) or 1 (down), got {direction}")
        if activated_w <= 0:
            raise ValueError(f"activatedW must be positive, got {activated_w}")
        setpoint_w = baseline_w + activated_w if direction == 0 else baseline_w - activated_w
        expiry = (interval_id + 1) * interval_seconds
        return cls(activation_id, device, interval_id, setpoint_w, expiry)


def _hex(activation_id: bytes) -> str:
    return "0x" + activation_id.hex()


class ControlStore:
    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or db.make_engine(url)
        try:
            Base.metadata.create_all(self.engine)
            _add_kind_column(self.engine)
        except SQLAlchemyError as exc:
            raise ControlStoreError(f"cannot open the control store {url}: {exc}") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _event(s: Session, row: ControlActionRow, now: float) -> None:
        s.add(ControlEventRow(activation_id=row.activation_id, state=row.state, at=now))

    @staticmethod
    def _events(s: Session, changes: list[tuple[str, str]], now: float) -> None:
        if changes:
            s.execute(
                insert(ControlEventRow),
                [{"activation_id": key, "state": state, "at": now} for key, state in changes],
            )

    # ------------------------------------------------------------------ writes
    def add(self, targets: Iterable[ControlTarget], now: float | None = None) -> int:
        """Store new activations as ``pending``; one already stored with the same values is left
        as it is. Returns how many were new; ``ControlConflictError`` (nothing stored) when an
        activation id is stored with other values."""
        now = time.time() if now is None else now
        items = {_hex(t.activation_id): t for t in targets}
        if not items:
            return 0
        try:
            return self._add(items, now)
        except IntegrityError:
            # another writer (a second dispatcher step, the same targets) stored some of them
            # between our read and our insert: read again; those are now known and compared
            return self._add(items, now)

    def _add(self, items: dict[str, ControlTarget], now: float) -> int:
        with self._session.begin() as s:
            known = {
                r.activation_id: r
                for r in s.scalars(
                    select(ControlActionRow).where(ControlActionRow.activation_id.in_(items))
                )
            }
            added = 0
            for key, t in items.items():
                row = known.get(key)
                if row is not None:
                    same = (row.device, row.interval_id, row.setpoint_w, row.expiry, row.kind) == (
                        checksum(t.device), t.interval_id, t.setpoint_w, t.expiry, t.kind,
                    )  # fmt: skip
                    if not same:
                        raise ControlConflictError(
                            f"activation {key} is already stored for another action"
                        )
                    continue
                t.action()  # range checks of the typed data before anything is stored
                if max(t.interval_id, t.expiry) > MAX_JSON_INT:
                    raise ControlConflictError(
                        f"activation {key}: interval and expiry must be at most 2^53-1"
                    )
                row = ControlActionRow(
                    activation_id=key, device=checksum(t.device), interval_id=t.interval_id,
                    setpoint_w=t.setpoint_w, expiry=t.expiry, state=PENDING, attempts=0,
                    created_at=now, kind=t.kind,
                )  # fmt: skip
                s.add(row)
                self._event(s, row, now)
                added += 1
        return added

    def sign_pending(
        self,
        sign: Callable[[ControlAction | ModeAction], SignedAction],
        signer: str,
        now: float,
        limit: int = 5000,
    ) -> list[SignedAction]:
        """Sign up to ``limit`` pending actions (``sign``, by the key of ``signer``), store each
        signature and move them to ``sent`` in one transaction; returns what to publish. Stored
        first: a crash between this commit and the publish leaves them ``sent``, resent later."""
        t = ControlActionRow
        with self._session.begin() as s:
            # the columns as tuples, not ORM objects (half the store's CPU per action went into
            # building and tracking rows that are only read once)
            rows = s.execute(
                select(t.activation_id, t.device, t.interval_id, t.setpoint_w, t.expiry, t.kind)
                .where(t.state == PENDING)
                .order_by(t.created_at, t.activation_id)
                .limit(limit)
            ).all()
            out = [
                sign(
                    ControlTarget(
                        bytes.fromhex(key[2:]), device, iv, setpoint, expiry, kind
                    ).action()
                )
                for key, device, iv, setpoint, expiry, kind in rows
            ]
            # bulk UPDATE by primary key and one multi-row INSERT: per-object ORM flushes took
            # ~0.4 ms a row, most of a 1,000-action dispatch
            if rows:
                s.execute(
                    update(t),
                    [
                        {"activation_id": row[0], "signature": signed.signature,
                         "signer": signer, "state": SENT, "attempts": 1, "first_sent_at": now,
                         "last_sent_at": now}
                        for row, signed in zip(rows, out, strict=True)
                    ],
                )  # fmt: skip
            self._events(s, [(row[0], SENT) for row in rows], now)
        return [SignedAction(signed.action, signed.signature, now) for signed in out]

    def due_resends(self, now: float, retry_s: float, chain_now: int) -> list[SignedAction]:
        """``sent`` actions unanswered for ``retry_s`` and not expired: counted as attempted
        again now, returned (the stored signed action) to publish again."""
        with self._session.begin() as s:
            rows = list(
                s.scalars(
                    select(ControlActionRow).where(
                        ControlActionRow.state == SENT,
                        ControlActionRow.last_sent_at <= now - retry_s,
                        ControlActionRow.expiry > chain_now,
                    )
                )
            )
            for row in rows:
                row.attempts += 1
                row.last_sent_at = now
            return [row.signed(now) for row in rows]

    def expire(self, chain_now: int, now: float | None = None) -> int:
        """Unanswered actions whose expiry has passed (chain time) become ``expired``."""
        now = time.time() if now is None else now
        with self._session.begin() as s:
            rows = list(
                s.scalars(
                    select(ControlActionRow).where(
                        ControlActionRow.state.in_((PENDING, SENT)),
                        ControlActionRow.expiry <= chain_now,
                    )
                )
            )
            for row in rows:
                row.state = EXPIRED
                self._event(s, row, now)
        return len(rows)

    def record_acks(self, acks: Sequence[SignedAck], now: float | None = None) -> list[str]:
        """Record the devices' (verified) acks in one transaction; per ack the state it left
        the action in, or ``unknown`` (no such action for that device) / ``duplicate``."""
        now = time.time() if now is None else now
        out: list[str] = []
        keys = {_hex(signed.ack.activation_id) for signed in acks}
        with self._session.begin() as s:
            rows = {
                r.activation_id: (r.device, r.state)
                for r in s.execute(
                    select(
                        ControlActionRow.activation_id, ControlActionRow.device,
                        ControlActionRow.state,
                    ).where(ControlActionRow.activation_id.in_(keys))
                )
            }  # fmt: skip
            changes: list[dict[str, Any]] = []
            for signed in acks:
                ack = signed.ack
                key = _hex(ack.activation_id)
                device, state = rows.get(key, (None, None))
                if device != ack.device or state in (None, PENDING):
                    out.append("unknown")
                    continue
                if state in FINAL:
                    out.append("duplicate")
                    continue
                state = ACKNOWLEDGED if ack.applied else REFUSED
                rows[key] = (device, state)
                changes.append(
                    {"activation_id": key, "state": state,
                     "reason": None if ack.applied else ack.reason, "ack_status": ack.status,
                     "applied_w": ack.applied_w, "ack_at": ack.at,
                     "ack_signature": signed.signature, "acked_at": now}
                )  # fmt: skip
                out.append(state)
            if changes:
                s.execute(update(ControlActionRow), changes)
                self._events(s, [(c["activation_id"], c["state"]) for c in changes], now)
        return out

    # ------------------------------------------------------------------ reads
    def actions(
        self, interval_id: int | None = None, limit: int = 10_000
    ) -> list[ControlActionRow]:
        q = select(ControlActionRow)
        if interval_id is not None:
            q = q.where(ControlActionRow.interval_id == interval_id)
        q = q.order_by(ControlActionRow.created_at, ControlActionRow.activation_id)
        try:
            with self._session() as s:
                return list(s.scalars(q.limit(limit)))
        except SQLAlchemyError as exc:
            raise ControlStoreError(
                f"cannot read the control store: {exc.__class__.__name__}"
            ) from None

    def get(self, activation_id: bytes) -> ControlActionRow | None:
        with self._session() as s:
            return s.get(ControlActionRow, _hex(activation_id))

    def pending_targets(self, until_interval: int) -> list[ControlTarget]:
        with self._session() as s:
            rows = s.scalars(
                select(ControlActionRow).where(
                    ControlActionRow.state == PENDING,
                    ControlActionRow.interval_id <= until_interval,
                )
            )
            return [
                ControlTarget(bytes.fromhex(r.activation_id[2:]), r.device, r.interval_id,
                              r.setpoint_w, r.expiry, r.kind)
                for r in rows
            ]  # fmt: skip

    def counts(self) -> dict[str, int]:
        with self._session() as s:
            rows = s.execute(
                select(ControlActionRow.state, func.count()).group_by(ControlActionRow.state)
            ).all()
        found = {state: int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in STATES}

    def events_after(self, cursor: int, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """State changes after event id ``cursor``: ``(id, action as_dict with the event's
        state)``, oldest first."""
        with self._session() as s:
            events = list(
                s.scalars(
                    select(ControlEventRow)
                    .where(ControlEventRow.id > cursor)
                    .order_by(ControlEventRow.id)
                    .limit(limit)
                )
            )
            rows = {
                r.activation_id: r
                for r in s.scalars(
                    select(ControlActionRow).where(
                        ControlActionRow.activation_id.in_({e.activation_id for e in events})
                    )
                )
            }
        return [(e.id, {**rows[e.activation_id].as_dict(), "state": e.state}) for e in events]

    def record_socs(self, reports: Sequence[SignedSoc], now: float | None = None) -> int:
        """Keep each device's latest (verified) state of charge report, by its ``at``: an older
        or equally old report than the one stored changes nothing. Returns how many were kept."""
        now = time.time() if now is None else now
        kept = 0
        with self._session.begin() as s:
            for signed in reports:
                r = signed.report
                row = s.get(DeviceSocRow, r.device)
                if row is None:
                    s.add(DeviceSocRow(device=r.device, soc_wh=r.soc_wh, at=r.at,
                                       signature=signed.signature, received_at=now))  # fmt: skip
                elif r.at > row.at:
                    row.soc_wh, row.at, row.signature, row.received_at = (
                        r.soc_wh, r.at, signed.signature, now,
                    )  # fmt: skip
                else:
                    continue
                kept += 1
        return kept

    def soc(self, device: str) -> SocReport | None:
        """The latest state of charge report of ``device`` (None: it never reported)."""
        try:
            with self._session() as s:
                row = s.get(DeviceSocRow, checksum(device))
        except SQLAlchemyError as exc:
            raise ControlStoreError(
                f"cannot read the control store: {exc.__class__.__name__}"
            ) from None
        if row is None:
            return None
        return SocReport(row.device, row.soc_wh, row.at, row.signature, row.received_at)

    def set_meta(self, key: str, value: str | None = None) -> None:
        with self._session.begin() as s:
            s.merge(
                ControlMetaRow(key=key, value=value if value is not None else repr(time.time()))
            )

    def meta(self, key: str) -> str | None:
        with self._session() as s:
            row = s.get(ControlMetaRow, key)
            return None if row is None else row.value

    def last_event_id(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.max(ControlEventRow.id))) or 0)


def _add_kind_column(engine: Engine) -> None:
    """A store written before mode actions gets the ``kind`` column (every row a control action)."""
    if "kind" in {c["name"] for c in inspect(engine).get_columns("control_actions")}:
        return
    with engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE control_actions ADD COLUMN kind VARCHAR(8) NOT NULL DEFAULT 'control'"
            )
        )
