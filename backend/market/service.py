"""The market: accepts wallet-signed orders, clears intervals at gate closure, records the validated
batches on chain and follows them to settlement. The API and the CLI use ``Market``; it knows no
HTTP.

``Market`` is a facade over four parts, each with its own module:

- ``intake.Intake``: verification, the registry and deposit caches, per-trader limits and the
  group commit (the accept path is described there);
- ``clearing.Clearer``: eligibility, the auction rounds at the Neural Grid, ``ClearedTrade`` rows,
  the batch plan by measured gas and the validator's attestation of each batch;
- ``recorder.Recorder``: the recorder thread, retries with back-off, expiry at the chain's gate
  closure, crash recovery and reconciliation after rollbacks (crash safety is described there);
- ``connections.Connections``: plug-and-play connection requests;
- ``devices.Devices``: plug-and-play registration of controllable devices;
- ``flex.FlexBook``: wallet-signed flexibility offers of those devices.

What stays here ties them together: closing an interval (intake -> clearing -> recorder) and the
scheduler step.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from backend.market import typed
from backend.market.auction import Candidate
from backend.market.clearing import Clearer
from backend.market.config import MarketConfig
from backend.market.connections import Connections
from backend.market.devices import Devices
from backend.market.errors import ConflictError, NotFoundError
from backend.market.events import EventBus
from backend.market.flex import FlexBook
from backend.market.group_commit import GroupCommit
from backend.market.intake import CheckedOrder, Intake
from backend.market.models import (
    BatchRow,
    DeviceRow,
    FlexOfferRow,
    ImbalanceRow,
    IntervalImbalanceRow,
    IntervalRow,
    IntervalStatus,
    OrderRow,
    TradeRow,
)
from backend.market.ports import ChainTrade, GridPort, MarketLedger, Participant, SocSource
from backend.market.recorder import Recorder
from backend.market.store import Store

__all__ = ["Market", "MarketConfig"]

log = logging.getLogger("tegrid.market")


class Market:
    """Order book, clearing and recording. Thread-safe: the accept path and the closing of an
    interval share the intake's lock; one clearing and one batch send run at a time."""

    def __init__(
        self,
        store: Store,
        ledger: MarketLedger,
        grid: GridPort | None,
        validator_key: str,
        config: MarketConfig | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.grid = grid
        self.config = config or MarketConfig()
        self.events = events or EventBus()
        self.domain = typed.market_domain(ledger.chain_id, ledger.market_address)
        self.registry_domain = typed.registry_domain(ledger.chain_id, ledger.registry_address)
        self.flex_domain = typed.flex_domain(ledger.chain_id, ledger.flex_address)
        self.intake = Intake(store, ledger, self.config, self.events, self.domain)
        self.clearing = Clearer(
            store, ledger, grid, self.config, self.events, self.domain, validator_key, self.intake
        )
        self.recorder = Recorder(
            store, ledger, self.config, self.events, self.intake, self.clearing
        )
        self._reclears: dict[int, int] = {}  # interval -> times cleared again
        self.connections = Connections(
            store, ledger, grid, self.events, self.registry_domain, self.intake
        )
        self.devices = Devices(store, ledger, grid, self.events, self.registry_domain, self.intake)
        self.flex = FlexBook(store, ledger, self.events, self.flex_domain, self.intake)

    def use_socs(self, socs: SocSource | None) -> None:
        """Where the batteries' reported states of charge are read (the dispatcher's store): the
        offers' energy check and the islanded clearing's master unit use them."""
        self.flex.socs = socs
        self.clearing.socs = socs

    # ----------------------------------------------------------------- state
    def reload(self) -> None:
        """Rebuild the in-memory reservations and closed intervals from the store."""
        self.intake.reload()

    def interval_of(self, unix_s: int) -> int:
        return self.intake.interval_of(unix_s)

    def gate_closure(self, interval_id: int) -> int:
        return self.intake.gate_closure(interval_id)

    def current_interval(self) -> int:
        return self.interval_of(self.ledger.now())

    def participant(self, wallet: str, fresh: bool = False) -> Participant | None:
        return self.intake.participant(wallet, fresh)

    def available_balance(self, wallet: str, fresh: bool = False) -> int:
        return self.intake.available_balance(wallet, fresh)

    def reserved(self, wallet: str) -> int:
        return self.intake.reserved(wallet)

    # ---------------------------------------------------------------- orders
    def template(self, primary_type: str = "Order") -> dict[str, Any]:
        if primary_type in ("ConnectionRequest", "DeviceRegistration"):
            return self.registry_domain.template(primary_type)
        if primary_type == "FlexOffer":
            return self.flex_domain.template(primary_type)
        return self.domain.template(primary_type)

    def flex_template(self, primary_type: str = "FlexOffer") -> dict[str, Any]:
        """A flexibility offer or its cancellation, in FlexibilityMarket's domain."""
        return self.flex_domain.template(primary_type)

    def submit_order(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> OrderRow:
        return self.intake.submit_order(message, signature, domain)

    async def submit_order_async(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self.intake.submit_order_async(message, signature, domain)

    def get_order(self, order_hash: str) -> OrderRow:
        return self.intake.get_order(order_hash)

    def cancel_order(self, order_hash: str, signature: str) -> OrderRow:
        return self.intake.cancel_order(order_hash, signature)

    # -------------------------------------------------- clearing and recording
    def close_interval(
        self, interval_id: int, force: bool = False, wait: bool = True
    ) -> IntervalRow:
        """Close the gate, clear, and record the batches. ``force`` closes before gate closure
        (dev). ``wait`` False returns once the clearing is stored (status ``cleared``) and sends
        the batches from the recorder thread, so the next interval can be cleared meanwhile."""
        if not force and self.ledger.now() < self.gate_closure(interval_id):
            raise ConflictError(
                f"interval {interval_id} reaches gate closure at {self.gate_closure(interval_id)}",
                reason="GATE_NOT_REACHED",
            )
        with self.clearing.lock:
            closed_now = self.intake.close_for_orders(interval_id)
            row = self.store.get_interval(interval_id)
            assert row is not None
            if not closed_now and row.status != IntervalStatus.CLOSED:
                if row.status == IntervalStatus.CLEARED:
                    self.recorder.record_batch(interval_id)
                    return self.interval(interval_id)
                raise ConflictError(
                    f"interval {interval_id} is already {row.status}", reason="INTERVAL_NOT_OPEN"
                )
            self.events.publish(
                "interval", {"intervalId": interval_id, "status": IntervalStatus.CLOSED}
            )
            self.clearing.clear(interval_id)
            self.clearing.prepare(interval_id + 1)
            if wait:
                self.recorder.record_batch(interval_id)
        if not wait:
            self.recorder.record_later(interval_id)
        return self.interval(interval_id)

    def record_batch(self, interval_id: int, due_only: bool = False) -> bool:
        return self.recorder.record_batch(interval_id, due_only)

    def reconcile(self, since_block: int | None = None) -> list[tuple[int, int]]:
        return self.recorder.reconcile(since_block)

    def recover(self) -> list[int]:
        return self.recorder.recover()

    def due_intervals(self) -> list[int]:
        return self.intake.due_intervals()

    def follow_settlements(self) -> list[int]:
        return self.recorder.follow_settlements()

    def _close_due(self) -> None:
        for interval_id in self.due_intervals():
            try:
                self.close_interval(interval_id)
            except ConflictError:
                pass
            except Exception as exc:  # the next intervals are still closed
                self.clearing.failed(interval_id, f"clearing failed: {exc}")
                log.exception("closing interval %s failed", interval_id)

    def reclear_due(self) -> None:
        """One participant must not make an interval unrecordable: when a batch would revert
        (its order's nonce cancelled after the clearing, its deposit withdrawn, its trader
        deactivated) and nothing of the interval is on chain or in flight, the clearing is taken
        back and done again - its eligibility reads of the chain leave that order out, the Neural
        Grid validates the new set and new batches are signed. At most ``max_reclears`` times per
        interval; then the batch stays failed (reported, backed off) until the chain's gate
        closure expires it."""
        for interval_id in sorted(self.recorder.reclear_wanted):
            self.recorder.reclear_wanted.discard(interval_id)
            done = self._reclears.get(interval_id, 0)
            if done >= self.config.max_reclears:
                continue
            # clearing lock before recorder lock, as close_interval takes them: the recorder
            # thread is not sending a batch of the interval while it is taken back
            with self.clearing.lock, self.recorder.lock:
                if not self.store.undo_clearing(interval_id):
                    continue
                self._reclears[interval_id] = done + 1
                log.warning(
                    "interval %s: a batch would revert and nothing of it is on chain: "
                    "cleared again (%d of at most %d)",
                    interval_id, done + 1, self.config.max_reclears,
                )  # fmt: skip
                self.reload()
                self.events.publish(
                    "interval",
                    {"intervalId": interval_id, "status": IntervalStatus.CLOSED,
                     "reason": "a batch would revert: cleared again"},
                )  # fmt: skip
                self.clearing.clear(interval_id)

    def tick(self) -> None:
        """One scheduler step: close due intervals, retry batches that are due, follow
        settlements. A failure in one step (or one interval) is logged and skips nothing else."""
        for what, step in (
            ("checking the chain for rollbacks", self.reconcile),
            ("clearing again intervals whose batches would revert", self.reclear_due),
            ("closing due intervals", self._close_due),
            ("recording batches", self.recorder.retry_batches),
            ("following settlements", self.follow_settlements),
        ):
            try:
                step()
            except Exception:
                log.exception("scheduler: %s failed", what)

    # ----------------------------------------------------------------- views
    def interval(self, interval_id: int) -> IntervalRow:
        row = self.store.get_interval(interval_id)
        if row is None:
            now = self.ledger.now()
            status = (
                IntervalStatus.OPEN
                if now < self.gate_closure(interval_id)
                else IntervalStatus.CLOSED
            )
            return IntervalRow(
                id=interval_id,
                status=status,
                closed_at=None,
                clearing_price=None,
                offered_wh=0,
                bid_wh=0,
                traded_wh=0,
                vetoed_wh=0,
                approved_count=0,
                vetoed_count=0,
                updated_at=time.time(),
            )
        return row

    def trades(
        self, interval_id: int | None = None, limit: int | None = None, offset: int = 0
    ) -> list[TradeRow]:
        return self.store.trades(interval_id, limit, offset)

    def get_trade(self, trade_id: str) -> TradeRow:
        """One trade by its id (``0x`` + 64 hex digits, any case)."""
        row = self.store.trades_by_id([trade_id.lower()]).get(trade_id.lower())
        if row is None:
            raise NotFoundError(f"no trade {trade_id}")
        return row

    def batches(self, interval_id: int) -> list[BatchRow]:
        return self.store.batches(interval_id)

    def imbalance(self, interval_id: int) -> tuple[IntervalImbalanceRow, list[ImbalanceRow]] | None:
        """The interval's imbalance settlement as followed from the chain, None before it."""
        return self.store.imbalance(interval_id)

    def interval_error(self, interval_id: int) -> str | None:
        """Why the interval could not be cleared, while it is not."""
        return self.clearing.error(interval_id)

    def approved_candidates(self, interval_id: int) -> list[Candidate]:
        return self.clearing.approved_candidates(interval_id)

    # ---------------------------------------------------------- participants
    def request_connection(self, message: dict[str, Any], signature: str) -> Any:
        """A plug-and-play connection request signed by the wallet (``Connections.request``)."""
        return self.connections.request(message, signature)

    def register_device(
        self, message: dict[str, Any], signature: str, device_signature: str
    ) -> DeviceRow:
        """A device registration signed by its owner and its own key (``Devices.register``)."""
        return self.devices.register(message, signature, device_signature)

    # ----------------------------------------------------------- flexibility
    def submit_flex(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> FlexOfferRow:
        return self.flex.submit(message, signature, domain)

    def cancel_flex(self, offer_hash: str, signature: str) -> FlexOfferRow:
        return self.flex.cancel(offer_hash, signature)

    # ------------------------------------------- the parts' state, for tests
    @property
    def _record_lock(self) -> threading.RLock:
        return self.recorder.lock

    def _batch_input(self, b: BatchRow) -> list[ChainTrade]:
        return self.clearing.batch_input(b)

    @property
    def _committer(self) -> GroupCommit | None:
        return self.intake.committer

    def _group_commit(self) -> GroupCommit:
        return self.intake.group_commit()

    @property
    def _inflight(self) -> dict[str, CheckedOrder]:
        return self.intake.inflight

    @property
    def _inflight_nonces(self) -> set[tuple[str, str]]:
        return self.intake.inflight_nonces

    @property
    def _side_wh(self) -> dict[tuple[str, int, int], int]:
        return self.intake.side_wh
