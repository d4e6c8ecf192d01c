"""The order book store: SQLAlchemy over a SQLite file (default) or PostgreSQL (same URL scheme).

Every state change the market makes is one transaction here, so a crash leaves either the old or the
new
state. SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed order survives a process
crash
(``kill -9``); only an OS crash or power loss could drop the last commits (use PostgreSQL for that).
One module (over 500 lines) on purpose: it is the market's one persistence boundary, each method
one transaction over the same tables, so a reader sees every state change in one place.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from backend.db import make_engine
from backend.market.errors import NonceUsedError, StoreError
from backend.market.models import (
    ActivationBatchRow,
    ActivationRow,
    Base,
    BatchRow,
    BatchState,
    ConnectionRow,
    DeviceRow,
    FlexBatchState,
    FlexOfferRow,
    FlexStatus,
    ImbalanceRow,
    IntervalImbalanceRow,
    IntervalRow,
    IntervalStatus,
    OrderRow,
    OrderStatus,
    TradeRow,
)
from backend.market.ports import IntervalSettlement


class Store:
    """All reads and writes of the order book, intervals, trades, batches and connection
    requests."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = make_engine(url)
            Base.metadata.create_all(self.engine)
            _migrate(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the order store at {_safe_url(url)}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The accept path keeps one connection and one compiled insert (no pool checkout per order).
        self._insert_stmt = insert(OrderRow)
        self._insert_conn: Connection | None = None
        self._insert_lock = threading.Lock()

    def close(self) -> None:
        if self._insert_conn is not None:
            self._insert_conn.close()
            self._insert_conn = None
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def drop_all(self) -> None:
        """Tests only: remove every table."""
        Base.metadata.drop_all(self.engine)
        Base.metadata.create_all(self.engine)

    # ---------------------------------------------------------------- orders
    def _insert(self, params: dict[str, Any] | list[dict[str, Any]]) -> Any:
        """Run the order insert on the kept connection and commit; ``None`` when a unique
        constraint refused it (rolled back). Any other database error drops the connection (the
        next insert opens a fresh one) and propagates."""
        with self._insert_lock:
            conn = self._insert_conn
            if conn is None or conn.closed:
                conn = self._insert_conn = self.engine.connect()
            try:
                res = conn.execute(self._insert_stmt, params)
                conn.commit()
                return res
            except IntegrityError:
                conn.rollback()
                return None
            except SQLAlchemyError:
                conn.rollback()
                conn.close()
                self._insert_conn = None
                raise

    def insert_order(self, row: dict[str, Any]) -> int:
        """Insert one accepted order; ``NonceUsedError`` when the trader's nonce (or the order)
        exists."""
        res = self._insert(row)
        if res is not None:
            pk = res.inserted_primary_key
            return int(pk[0]) if pk else 0
        raise NonceUsedError(
            f"nonce {row['nonce']} of {row['trader']} is already used by an accepted order"
        )

    def insert_orders(self, rows: Sequence[dict[str, Any]]) -> list[Exception | None]:
        """Insert accepted orders in one transaction (group commit); per row ``None`` when it is
        committed, else the error that refused it (``NonceUsedError``). A batch with a refused row
        is retried row by row (each its own transaction), so one bad nonce costs the others
        nothing."""
        if not rows:
            return []
        if self._insert(list(rows)) is not None:
            return [None] * len(rows)
        out: list[Exception | None] = []
        for row in rows:
            try:
                self.insert_order(row)
                out.append(None)
            except (NonceUsedError, SQLAlchemyError) as exc:
                out.append(exc)
        return out

    def get_order(self, order_hash: str) -> OrderRow | None:
        with self.session() as s:
            return s.scalars(select(OrderRow).where(OrderRow.hash == order_hash)).first()

    def get_orders(self, hashes: Sequence[str]) -> dict[str, OrderRow]:
        """The orders with these hashes, by hash (one query per 500 hashes)."""
        wanted = list(dict.fromkeys(hashes))
        out: dict[str, OrderRow] = {}
        with self.session() as s:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                out.update(
                    (o.hash, o) for o in s.scalars(select(OrderRow).where(OrderRow.hash.in_(chunk)))
                )
        return out

    def list_orders(
        self,
        trader: str | None = None,
        interval_id: int | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[OrderRow]:
        q = select(OrderRow)
        if trader is not None:
            q = q.where(OrderRow.trader == trader)
        if interval_id is not None:
            q = q.where(OrderRow.interval_id == interval_id)
        if status is not None:
            q = q.where(OrderRow.status == status)
        q = q.order_by(OrderRow.seq).limit(limit).offset(offset)
        with self.session() as s:
            return list(s.scalars(q))

    def live_orders(self) -> list[OrderRow]:
        """Orders that still reserve capacity or deposit (open, or matched but not on chain yet)."""
        with self.session() as s:
            return list(s.scalars(select(OrderRow).where(OrderRow.status.in_(OrderStatus.LIVE))))

    def open_orders(self, interval_id: int) -> list[OrderRow]:
        with self.session() as s:
            q = (
                select(OrderRow)
                .where(OrderRow.interval_id == interval_id, OrderRow.status == OrderStatus.OPEN)
                .order_by(OrderRow.seq)
            )
            return list(s.scalars(q))

    def cancel_order(self, order_hash: str) -> bool:
        """Open -> cancelled; False when the order was no longer open."""
        with self.session() as s:
            res = s.execute(
                update(OrderRow)
                .where(OrderRow.hash == order_hash, OrderRow.status == OrderStatus.OPEN)
                .values(status=OrderStatus.CANCELLED)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def nonce_taken(self, trader: str, nonce: int) -> bool:
        with self.session() as s:
            q = (
                select(func.count())
                .select_from(OrderRow)
                .where(OrderRow.trader == trader, OrderRow.nonce == str(nonce))
            )
            return bool(s.scalar(q))

    # ------------------------------------------------------------- intervals
    def get_interval(self, interval_id: int) -> IntervalRow | None:
        with self.session() as s:
            return s.get(IntervalRow, interval_id)

    def intervals_in(self, statuses: Sequence[str]) -> list[IntervalRow]:
        with self.session() as s:
            q = select(IntervalRow).where(IntervalRow.status.in_(statuses)).order_by(IntervalRow.id)
            return list(s.scalars(q))

    def closed_interval_ids(self) -> set[int]:
        with self.session() as s:
            q = select(IntervalRow.id).where(IntervalRow.status != IntervalStatus.OPEN)
            return set(s.scalars(q))

    def close_interval(self, interval_id: int) -> bool:
        """Mark the gate closed (creating the row if needed); False when it was already past
        open."""
        now = time.time()
        with self.session() as s:
            row = s.get(IntervalRow, interval_id, with_for_update=True)
            if row is None:
                s.add(
                    IntervalRow(
                        id=interval_id, status=IntervalStatus.CLOSED, closed_at=now, updated_at=now
                    )
                )
                return True
            if row.status != IntervalStatus.OPEN:
                return False
            row.status = IntervalStatus.CLOSED
            row.closed_at = now
            row.updated_at = now
            return True

    def set_interval_status(self, interval_id: int, status: str) -> None:
        with self.session() as s:
            s.execute(
                update(IntervalRow)
                .where(IntervalRow.id == interval_id)
                .values(status=status, updated_at=time.time())
            )

    # ------------------------------------------------------ clearing/batches
    def save_clearing(
        self,
        interval_id: int,
        trades: Sequence[dict[str, Any]],
        batches: Sequence[dict[str, Any]],
        fills: dict[str, int],
        stats: dict[str, Any],
        activations: Sequence[dict[str, Any]] = (),
        activation_batches: Sequence[dict[str, Any]] = (),
    ) -> None:
        """One transaction: trades, the batches to send (every one signed, before any is sent),
        order fills, the flexibility activations (their offers become ``activated`` with the
        power left) and their signed ``recordActivations`` batches, and the interval outcome.
        Orders with a fill become ``matched``; the other open orders become ``unfilled``."""
        now = time.time()
        with self.session() as s:
            row = s.get(IntervalRow, interval_id, with_for_update=True)
            if row is None or row.status != IntervalStatus.CLOSED:
                raise StoreError(f"interval {interval_id} is not closed, cannot save its clearing")
            if activations:
                s.execute(
                    insert(_table(ActivationRow)),
                    [{**a, "interval_id": interval_id, "created_at": now} for a in activations],
                )
                used: dict[str, int] = {}
                for a in activations:
                    used[a["offer_hash"]] = used.get(a["offer_hash"], 0) + int(a["activated_w"])
                offers = _table(FlexOfferRow)
                s.execute(
                    update(offers)
                    .where(offers.c.hash == bindparam("offer_hash"))
                    .values(
                        status=FlexStatus.ACTIVATED,
                        remaining_w=offers.c.power_w - bindparam("used"),
                    ),
                    [{"offer_hash": h, "used": w} for h, w in used.items()],
                )
            # Two statements with many parameter sets (executemany) instead of an ORM object per
            # trade and an UPDATE per filled order.
            if trades:
                s.execute(insert(_table(TradeRow)), [dict(t) for t in trades])
            if fills:
                orders = _table(OrderRow)
                s.execute(
                    update(orders)
                    .where(orders.c.hash == bindparam("order_hash"))
                    .values(filled_wh=bindparam("filled"), status=OrderStatus.MATCHED),
                    [{"order_hash": h, "filled": f} for h, f in fills.items()],
                )
            s.execute(
                update(OrderRow)
                .where(OrderRow.interval_id == interval_id, OrderRow.status == OrderStatus.OPEN)
                .values(status=OrderStatus.UNFILLED)
            )
            for b in batches:
                s.add(BatchRow(interval_id=interval_id, updated_at=now, **b))
            for b in activation_batches:
                s.add(ActivationBatchRow(interval_id=interval_id, updated_at=now, **b))
            for key, value in stats.items():
                setattr(row, key, value)
            row.status = IntervalStatus.CLEARED if batches else IntervalStatus.RECORDED
            row.updated_at = now

    def batches(self, interval_id: int) -> list[BatchRow]:
        """The interval's batches in recording order."""
        with self.session() as s:
            q = select(BatchRow).where(BatchRow.interval_id == interval_id)
            return list(s.scalars(q.order_by(BatchRow.batch_index)))

    def unfinished_batches(self) -> list[BatchRow]:
        """Batches not on chain yet, by interval and index."""
        with self.session() as s:
            q = select(BatchRow).where(BatchRow.state.in_(BatchState.UNFINISHED))
            return list(s.scalars(q.order_by(BatchRow.interval_id, BatchRow.batch_index)))

    def unfinished_intervals(self) -> list[int]:
        """Intervals with a trade or an activation batch not on chain yet."""
        with self.session() as s:
            q = select(BatchRow.interval_id).where(BatchRow.state.in_(BatchState.UNFINISHED))
            fq = select(ActivationBatchRow.interval_id).where(
                ActivationBatchRow.state.in_(BatchState.UNFINISHED)
            )
            return sorted(set(s.scalars(q)) | set(s.scalars(fq)))

    # ------------------------------------------------------- activation batches
    def activation_batches(self, interval_id: int) -> list[ActivationBatchRow]:
        """The interval's ``recordActivations`` batches in recording order."""
        with self.session() as s:
            q = select(ActivationBatchRow).where(ActivationBatchRow.interval_id == interval_id)
            return list(s.scalars(q.order_by(ActivationBatchRow.batch_index)))

    def activation_batches_in(self, states: Sequence[str]) -> list[ActivationBatchRow]:
        """Activation batches in one of ``states``, by interval and index."""
        with self.session() as s:
            q = select(ActivationBatchRow).where(ActivationBatchRow.state.in_(tuple(states)))
            order = (ActivationBatchRow.interval_id, ActivationBatchRow.batch_index)
            return list(s.scalars(q.order_by(*order)))

    def update_activation_batch(
        self, interval_id: int, batch_index: int, *, count_attempt: bool = False, **values: Any
    ) -> None:
        """Set an activation batch's columns (``count_attempt``: one more attempt)."""
        if count_attempt:
            values["attempts"] = ActivationBatchRow.attempts + 1
        if "last_error" in values and values["last_error"] is not None:
            values["last_error"] = values["last_error"][:2000]
        with self.session() as s:
            s.execute(
                update(ActivationBatchRow)
                .where(
                    ActivationBatchRow.interval_id == interval_id,
                    ActivationBatchRow.batch_index == batch_index,
                )
                .values(updated_at=time.time(), **values)
            )

    def mark_activation_batch_closed(
        self,
        interval_id: int,
        batch_index: int,
        state: str,
        tx_hash: str | None,
        outcomes: dict[str, tuple[int, int, int, int]],
    ) -> None:
        """The chain settled (or reclaimed) the batch: its state and transaction, and per
        activation (metered W, delivered W, paid, refunded), one transaction."""
        with self.session() as s:
            s.execute(
                update(ActivationBatchRow)
                .where(
                    ActivationBatchRow.interval_id == interval_id,
                    ActivationBatchRow.batch_index == batch_index,
                )
                .values(state=state, settle_tx_hash=tx_hash, updated_at=time.time())
            )
            for activation_id, (metered, delivered, paid, refunded) in outcomes.items():
                s.execute(
                    update(ActivationRow)
                    .where(ActivationRow.id == activation_id)
                    .values(
                        metered_w=metered, delivered_w=delivered, paid=str(paid),
                        refunded=str(refunded),
                    )
                )  # fmt: skip

    def undo_clearing(self, interval_id: int) -> bool:
        """Take back an interval's clearing while nothing of it is on chain or in flight (every
        batch pending or failed without a mined transaction): its trades and batches go, its
        orders are open again and the interval closed, to be cleared anew. False when a batch
        was sent or recorded (the clearing stands)."""
        now = time.time()
        with self.session() as s:
            row = s.get(IntervalRow, interval_id, with_for_update=True)
            if row is None or row.status != IntervalStatus.CLEARED:
                return False
            q = select(func.count()).where(
                BatchRow.interval_id == interval_id,
                BatchRow.state.not_in((BatchState.PENDING, BatchState.FAILED))
                | BatchRow.tx_hash.is_not(None),
            )
            if s.scalar(q.select_from(BatchRow)):
                return False
            s.execute(delete(BatchRow).where(BatchRow.interval_id == interval_id))
            s.execute(delete(TradeRow).where(TradeRow.interval_id == interval_id))
            s.execute(delete(ActivationRow).where(ActivationRow.interval_id == interval_id))
            s.execute(
                delete(ActivationBatchRow).where(ActivationBatchRow.interval_id == interval_id)
            )
            s.execute(
                update(FlexOfferRow)
                .where(
                    FlexOfferRow.interval_id == interval_id,
                    FlexOfferRow.status == FlexStatus.ACTIVATED,
                )
                .values(status=FlexStatus.OPEN, remaining_w=None)
            )
            s.execute(
                update(OrderRow)
                .where(
                    OrderRow.interval_id == interval_id,
                    OrderRow.status.in_((OrderStatus.MATCHED, OrderStatus.UNFILLED)),
                )
                .values(status=OrderStatus.OPEN, filled_wh=0)
            )
            row.status = IntervalStatus.CLOSED
            row.updated_at = now
            return True

    def replace_batches(self, interval_id: int, batches: Sequence[dict[str, Any]]) -> bool:
        """Split the interval's trades anew (a measured gas figure showed the plan does not fit);
        only while none of its batches was sent. False when one was (the plan stands)."""
        now = time.time()
        with self.session() as s:
            row = s.get(IntervalRow, interval_id, with_for_update=True)
            if row is None:
                return False
            q = select(func.count()).where(
                BatchRow.interval_id == interval_id, BatchRow.state != BatchState.PENDING
            )
            if s.scalar(q.select_from(BatchRow)):
                return False
            s.execute(delete(BatchRow).where(BatchRow.interval_id == interval_id))
            s.flush()
            for b in batches:
                s.add(BatchRow(interval_id=interval_id, updated_at=now, **b))
            return True

    def _batch_update(self, interval_id: int, batch_index: int, **values: Any) -> None:
        with self.session() as s:
            s.execute(
                update(BatchRow)
                .where(BatchRow.interval_id == interval_id, BatchRow.batch_index == batch_index)
                .values(updated_at=time.time(), **values)
            )

    def mark_batch_sending(self, interval_id: int, batch_index: int) -> None:
        """About to send: a crash from here on leaves it ``sent``, and a restart looks for it on
        chain before anything else."""
        with self.session() as s:
            s.execute(
                update(BatchRow)
                .where(BatchRow.interval_id == interval_id, BatchRow.batch_index == batch_index)
                .values(
                    state=BatchState.SENT,
                    attempts=BatchRow.attempts + 1,
                    next_attempt_at=None,
                    updated_at=time.time(),
                )
            )

    def mark_batches_expired(self, interval_id: int, reason: str) -> list[int]:
        """Every unfinished batch of the interval can no longer be recorded (the chain's gate
        closure passed): state ``expired`` with ``reason``, no further attempt. Returns their
        indices."""
        with self.session() as s:
            q = select(BatchRow).where(
                BatchRow.interval_id == interval_id, BatchRow.state.in_(BatchState.UNFINISHED)
            )
            rows = list(s.scalars(q.with_for_update()))
            for row in rows:
                row.state = BatchState.EXPIRED
                row.last_error = reason[:2000]
                row.next_attempt_at = None
                row.updated_at = time.time()
            return [r.batch_index for r in rows]

    def mark_batch_failed(
        self,
        interval_id: int,
        batch_index: int,
        error: str,
        next_attempt_at: float,
        count_attempt: bool,
        tx_hash: str | None = None,
    ) -> None:
        """The attempt failed (``count_attempt``: an attempt that was not counted when it began,
        e.g. an estimate that found a revert before anything was sent)."""
        values: dict[str, Any] = {
            "state": BatchState.FAILED,
            "last_error": error[:2000],
            "next_attempt_at": next_attempt_at,
        }
        if count_attempt:
            values["attempts"] = BatchRow.attempts + 1
        if tx_hash is not None:
            values["tx_hash"] = tx_hash
        self._batch_update(interval_id, batch_index, **values)

    def recorded_batches_from(self, block_number: int) -> list[BatchRow]:
        """Batches marked recorded in block ``block_number`` or later (or in no known block)."""
        with self.session() as s:
            q = select(BatchRow).where(
                BatchRow.state == BatchState.RECORDED,
                (BatchRow.block_number >= block_number) | BatchRow.block_number.is_(None),
            )
            return list(s.scalars(q.order_by(BatchRow.interval_id, BatchRow.batch_index)))

    def mark_batch_lost(self, interval_id: int, batch_index: int, reason: str) -> None:
        """The chain no longer has the batch (a rollback or reorg): it is pending again (same
        signature, sent again as it was), its trades pending, the interval cleared and its matched
        orders matched until every batch is back on chain."""
        now = time.time()
        with self.session() as s:
            iv = s.get(IntervalRow, interval_id, with_for_update=True)
            b = s.get(BatchRow, (interval_id, batch_index), with_for_update=True)
            if iv is None or b is None or b.state != BatchState.RECORDED:
                return
            b.state = BatchState.PENDING
            b.tx_hash = b.block_number = b.gas_used = None
            b.attempts = 0
            b.last_error = reason[:2000]
            b.next_attempt_at = None
            b.updated_at = now
            ids = json.loads(b.trade_ids)
            for i in range(0, len(ids), 500):
                s.execute(
                    update(TradeRow)
                    .where(
                        TradeRow.id.in_(ids[i : i + 500]),
                        TradeRow.status.in_(("recorded", "settled")),
                    )
                    .values(status="pending", tx_hash=None)
                )
            s.execute(
                update(OrderRow)
                .where(
                    OrderRow.interval_id == interval_id,
                    OrderRow.status.in_((OrderStatus.FILLED, OrderStatus.PARTIAL)),
                )
                .values(status=OrderStatus.MATCHED)
            )
            if iv.status in (IntervalStatus.RECORDED, IntervalStatus.SETTLED):
                iv.status = IntervalStatus.CLEARED
                iv.updated_at = now

    def mark_batch_recorded(
        self,
        interval_id: int,
        batch_index: int,
        tx_hash: str | None,
        block_number: int | None,
        gas_used: int | None = None,
    ) -> bool:
        """The batch is on chain: its trades are recorded (with its transaction). Once every batch
        of the interval is, the matched orders become filled/partial and the interval recorded;
        True then."""
        now = time.time()
        with self.session() as s:
            iv = s.get(IntervalRow, interval_id, with_for_update=True)
            b = s.get(BatchRow, (interval_id, batch_index), with_for_update=True)
            if iv is None or b is None:
                return False
            b.state = BatchState.RECORDED
            b.tx_hash = tx_hash or b.tx_hash
            b.block_number = block_number if block_number is not None else b.block_number
            b.gas_used = gas_used if gas_used is not None else b.gas_used
            b.last_error = None
            b.next_attempt_at = None
            b.updated_at = now
            ids = json.loads(b.trade_ids)
            for i in range(0, len(ids), 500):
                s.execute(
                    update(TradeRow)
                    .where(TradeRow.id.in_(ids[i : i + 500]), TradeRow.status == "pending")
                    .values(status="recorded", tx_hash=b.tx_hash)
                )
            s.flush()
            rest = s.scalar(
                select(func.count())
                .select_from(BatchRow)
                .where(BatchRow.interval_id == interval_id, BatchRow.state != BatchState.RECORDED)
            )
            if rest:
                return False
            for o in s.scalars(
                select(OrderRow).where(
                    OrderRow.interval_id == interval_id, OrderRow.status == OrderStatus.MATCHED
                )
            ):
                o.status = OrderStatus.FILLED if o.filled_wh >= o.energy_wh else OrderStatus.PARTIAL
            if iv.status == IntervalStatus.CLEARED:
                iv.status = IntervalStatus.RECORDED
                iv.updated_at = now
            return True

    def recorded_batch_gas(self, limit: int = 16) -> list[tuple[int, int, int]]:
        """(trades, distinct orders, gas used) of the latest recorded batches whose receipt was
        seen, newest first: what the gas model of the next split learns from after a restart."""
        with self.session() as s:
            q = (
                select(BatchRow.trade_ids, BatchRow.order_count, BatchRow.gas_used)
                .where(BatchRow.state == BatchState.RECORDED, BatchRow.gas_used.is_not(None))
                .order_by(BatchRow.updated_at.desc())
                .limit(limit)
            )
            return [
                (len(json.loads(ids)), int(orders), int(gas))
                for ids, orders, gas in s.execute(q)
                if orders and gas
            ]

    def trades_by_id(self, ids: Sequence[str]) -> dict[str, TradeRow]:
        """The trades with these ids, by id (one query per 500 ids)."""
        out: dict[str, TradeRow] = {}
        with self.session() as s:
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                q = select(TradeRow).where(TradeRow.id.in_(chunk))
                out.update((t.id, t) for t in s.scalars(q))
        return out

    def trades(
        self, interval_id: int | None = None, limit: int | None = None, offset: int = 0
    ) -> list[TradeRow]:
        """Trades by interval and position; every one unless ``limit`` says otherwise (an interval
        holds as many as its bounded book can make)."""
        q = select(TradeRow)
        if interval_id is not None:
            q = q.where(TradeRow.interval_id == interval_id)
        q = q.order_by(TradeRow.interval_id, TradeRow.position).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.session() as s:
            return list(s.scalars(q))

    def mark_trades_settled(self, interval_id: int, settlement: IntervalSettlement) -> None:
        """Record per-trade settlement (delivered Wh, paid, tx) and the interval's imbalance, and
        mark the interval settled (one transaction: all of it or none)."""
        now = time.time()
        with self.session() as s:
            for trade_id, (delivered, paid, tx) in settlement.trades.items():
                s.execute(
                    update(TradeRow)
                    .where(TradeRow.id == trade_id)
                    .values(
                        status="settled", delivered_wh=delivered, paid=str(paid), settle_tx_hash=tx
                    )
                )
            im = settlement.imbalance
            if im is not None and s.get(IntervalImbalanceRow, interval_id) is None:
                s.add(
                    IntervalImbalanceRow(
                        interval_id=interval_id,
                        clearing_price=str(im.clearing_price_per_kwh),
                        short_price_bps=im.short_price_bps,
                        long_price_bps=im.long_price_bps,
                        collected=str(im.collected),
                        paid_out=str(im.paid_out),
                        settle_tx_hash=tx,
                    )
                )
                s.add_all(
                    ImbalanceRow(
                        interval_id=interval_id,
                        account=p.account,
                        contracted_wh=p.contracted_wh,
                        metered_wh=p.metered_wh,
                        payment=str(p.payment),
                        shortfall=str(p.shortfall),
                    )
                    for p in im.parties
                )
            s.execute(
                update(IntervalRow)
                .where(IntervalRow.id == interval_id)
                .values(status=IntervalStatus.SETTLED, updated_at=now)
            )

    def imbalance(self, interval_id: int) -> tuple[IntervalImbalanceRow, list[ImbalanceRow]] | None:
        """An interval's imbalance settlement and its parties (by account), None before it."""
        with self.session() as s:
            head = s.get(IntervalImbalanceRow, interval_id)
            if head is None:
                return None
            q = select(ImbalanceRow).where(ImbalanceRow.interval_id == interval_id)
            return head, list(s.scalars(q.order_by(ImbalanceRow.account)))

    # ------------------------------------------------------------ connections
    def save_connection(self, values: dict[str, Any]) -> None:
        with self.session() as s:
            row = s.get(ConnectionRow, values["wallet"])
            values = {**values, "updated_at": time.time()}
            if row is None:
                s.add(ConnectionRow(**values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)

    def get_connection(self, wallet: str) -> ConnectionRow | None:
        with self.session() as s:
            return s.get(ConnectionRow, wallet)

    # ---------------------------------------------------------------- devices
    def save_device(self, values: dict[str, Any]) -> None:
        with self.session() as s:
            s.merge(DeviceRow(**values, created_at=time.time()))

    def get_device(self, device: str) -> DeviceRow | None:
        with self.session() as s:
            return s.get(DeviceRow, device)

    def list_devices(self, owner: str | None, limit: int, offset: int) -> list[DeviceRow]:
        with self.session() as s:
            q = select(DeviceRow)
            if owner is not None:
                q = q.where(DeviceRow.owner == owner)
            q = q.order_by(DeviceRow.created_at, DeviceRow.device).limit(limit).offset(offset)
            return list(s.scalars(q))

    # ----------------------------------------------------------- flex offers
    def insert_flex_offer(self, values: dict[str, Any]) -> FlexOfferRow:
        """Insert an accepted offer; ``NonceUsedError`` when the provider's flex nonce (or the
        offer itself) is taken."""
        try:
            with self.session() as s:
                row = FlexOfferRow(**values)
                s.add(row)
                s.flush()
        except IntegrityError:
            raise NonceUsedError(
                f"flex nonce {values['nonce']} of {values['provider']} is already used",
                field="nonce",
            ) from None
        return row

    def count_open_flex(self, provider: str, interval_id: int) -> int:
        with self.session() as s:
            q = select(func.count()).where(
                FlexOfferRow.provider == provider,
                FlexOfferRow.interval_id == interval_id,
                FlexOfferRow.status == FlexStatus.OPEN,
            )
            return int(s.scalar(q) or 0)

    def device_flex_offer(self, device: str, interval_id: int) -> str | None:
        """The hash of the device's open or activated offer for the interval, if any."""
        with self.session() as s:
            q = select(FlexOfferRow.hash).where(
                FlexOfferRow.device == device,
                FlexOfferRow.interval_id == interval_id,
                FlexOfferRow.status.in_((FlexStatus.OPEN, FlexStatus.ACTIVATED)),
            )
            return s.scalars(q.limit(1)).first()

    def get_flex_offer(self, offer_hash: str) -> FlexOfferRow | None:
        with self.session() as s:
            return s.scalars(select(FlexOfferRow).where(FlexOfferRow.hash == offer_hash)).first()

    def list_flex_offers(
        self,
        interval_id: int | None,
        provider: str | None,
        status: str | None,
        limit: int,
        offset: int,
    ) -> list[FlexOfferRow]:
        with self.session() as s:
            q = select(FlexOfferRow)
            if interval_id is not None:
                q = q.where(FlexOfferRow.interval_id == interval_id)
            if provider is not None:
                q = q.where(FlexOfferRow.provider == provider)
            if status is not None:
                q = q.where(FlexOfferRow.status == status)
            q = q.order_by(FlexOfferRow.seq).limit(limit).offset(offset)
            return list(s.scalars(q))

    def activations(self, interval_id: int) -> list[ActivationRow]:
        """The interval's activations in the evidence's order."""
        with self.session() as s:
            q = select(ActivationRow).where(ActivationRow.interval_id == interval_id)
            return list(s.scalars(q.order_by(ActivationRow.position)))

    def dispatchable_activations(self, first: int, last: int) -> list[ActivationRow]:
        """The activations of intervals ``first..last`` that are on chain: the interval's trade
        batches recorded (status recorded or settled: a clearing that can still be undone and
        redone is not dispatched) and the activation's own batch recorded on FlexibilityMarket
        (a device is not moved for an activation nobody would pay), in interval and evidence
        order. Rows of a store from before activation batches (none for the interval) count."""
        done = (IntervalStatus.RECORDED, IntervalStatus.SETTLED)
        with self.session() as s:
            q = (
                select(ActivationRow)
                .join(IntervalRow, IntervalRow.id == ActivationRow.interval_id)
                .where(
                    ActivationRow.interval_id >= first,
                    ActivationRow.interval_id <= last,
                    IntervalRow.status.in_(done),
                )
                .order_by(ActivationRow.interval_id, ActivationRow.position)
            )
            rows = list(s.scalars(q))
            planned: set[int] = set()
            on_chain: set[str] = set()
            bq = select(ActivationBatchRow).where(
                ActivationBatchRow.interval_id >= first, ActivationBatchRow.interval_id <= last
            )
            closed = (BatchState.RECORDED, FlexBatchState.SETTLED, FlexBatchState.RECLAIMED)
            for b in s.scalars(bq):
                planned.add(b.interval_id)
                if b.state in closed:
                    on_chain.update(json.loads(b.activation_ids))
            return [r for r in rows if r.interval_id not in planned or r.id in on_chain]

    def cancel_flex_offer(self, offer_hash: str) -> bool:
        """Open -> cancelled; False when the offer is not open."""
        with self.session() as s:
            res = s.execute(
                update(FlexOfferRow)
                .where(FlexOfferRow.hash == offer_hash, FlexOfferRow.status == FlexStatus.OPEN)
                .values(status=FlexStatus.CANCELLED)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]


# Columns added to a table after its first release: (table, column, SQL type), nullable.
ADDED_COLUMNS = (
    ("flex_offers", "remaining_w", "BIGINT"),
    ("trades", "veto_value", "FLOAT"),
    ("trades", "veto_limit", "FLOAT"),
    ("intervals", "clearing_method", "VARCHAR(200)"),
    ("intervals", "grid_mode", "INTEGER"),
    ("intervals", "welfare", "VARCHAR(60)"),
    ("activations", "metered_w", "BIGINT"),
    ("activations", "delivered_w", "BIGINT"),
    ("activations", "paid", "VARCHAR(50)"),
    ("activations", "refunded", "VARCHAR(50)"),
)


def _migrate(engine: Engine) -> None:
    """Bring a store written by an older version up to date. The one-batch-per-interval table
    ``batches`` (primary key ``interval_id``) became ``trade_batches`` (``interval_id``,
    ``batch_index``): its rows move over as batch 0 of 1, in one transaction. Two processes opening
    the same old store race harmlessly: the loser finds the table gone. Columns added later
    (``ADDED_COLUMNS``) are added empty (older trades keep no numbers)."""
    _add_columns(engine)
    if "batches" not in inspect(engine).get_table_names():
        return
    copy = text(
        "INSERT INTO trade_batches (interval_id, batch_index, batch_count, state, evidence_hash,"
        " attestation_signature, trade_ids, order_count, tx_hash, block_number, attempts,"
        " last_error, updated_at)"
        " SELECT interval_id, 0, 1, state, evidence_hash, attestation_signature, trade_ids, 0,"
        " tx_hash, block_number, COALESCE(attempts, 0), last_error, updated_at FROM batches"
    )
    try:
        with engine.begin() as conn:
            conn.execute(copy)
            conn.execute(text("DROP TABLE batches"))
    except SQLAlchemyError:
        if "batches" in inspect(engine).get_table_names():
            raise


def _add_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, column, sql_type in ADDED_COLUMNS:
        if column in {c["name"] for c in inspector.get_columns(table)}:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
        except SQLAlchemyError:
            # another process added it meanwhile
            if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise


def _table(model: type[Base]) -> Table:
    table: Table = model.__table__  # type: ignore[assignment]
    return table


def trade_ids_json(ids: Iterable[str]) -> str:
    return json.dumps(list(ids))


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
