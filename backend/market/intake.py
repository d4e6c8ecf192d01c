"""Order intake: verifies wallet-signed orders and admits them against the trader's limits, holding
the book's in-memory totals and caches.

Accept path (kept lean, it runs thousands of times per second): schema -> EIP-712 digest and
signature (coincurve) -> clock, interval and gate -> participant (cached view of the registry) ->
connection limit (energy of the trader's live orders on that side of the interval plus this one,
against max W x interval hours) -> deposit for buys (on-chain available balance, cached for
``balance_ttl_s``, minus the worst-case cost ``ceil(energyWh x price / 1000)`` of the trader's
live buy orders) -> one insert. Limits and deposits are checked against in-memory totals (rebuilt
from the store by ``reload``), the nonce by the store's unique key. ``submit_order_async`` (the
API) runs the same checks but joins a group commit: the orders admitted in one turn of the event
loop are inserted in one transaction, and each is answered only after that commit. While an
admitted order waits for its commit it already counts against its trader's limit and deposit; a
refusal that such an order could have caused waits for its outcome and is decided again, and
closing an interval waits for the interval's orders in flight, so the answers are the ones the
one-insert-per-order path would give.

An order is accepted once its row is committed; closing an interval (``close_for_orders``) is a
committed state too. The checks and the totals they read and write under one lock are one module
on purpose (a little over 500 lines): splitting them would spread that lock's invariant.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.chain import protocol
from backend.chain.address import checksum
from backend.market import typed
from backend.market.config import MarketConfig
from backend.market.errors import (
    AccountOwingError,
    BadSignatureError,
    ConflictError,
    InsufficientDepositError,
    IntervalClosedError,
    InvalidOrderError,
    NonceUsedError,
    NotFoundError,
    OrderExpiredError,
    OverConnectionLimitError,
    TooManyOrdersError,
    TraderInactiveError,
    UnknownTraderError,
    WrongDomainError,
)
from backend.market.events import EventBus
from backend.market.group_commit import GroupCommit
from backend.market.models import OrderRow, OrderStatus
from backend.market.ports import MarketLedger, Participant
from backend.market.store import Store

MAX_INT63 = (1 << 63) - 1


class TTLCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._data: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        hit = self._data.get(key)
        if hit is None or time.monotonic() - hit[0] > self.ttl_s:
            return False, None
        return True, hit[1]

    def put(self, key: str, value: Any) -> None:
        self._data[key] = (time.monotonic(), value)

    def drop(self, key: str) -> None:
        self._data.pop(key, None)


@dataclass
class CheckedOrder:
    """An order that passed the lock-free checks: the row to store and what ``admit`` needs."""

    row: dict[str, Any]
    book_key: tuple[str, int, int]  # (trader, interval, side)
    reserve: int
    limit_w: int
    now: int
    gate: int

    @property
    def trader(self) -> str:
        return self.book_key[0]

    @property
    def nonce_key(self) -> tuple[str, str]:
        return (self.book_key[0], self.row["nonce"])


class Intake:
    """Verifies and admits orders; owns the in-memory book totals (energy per trader, interval and
    side; reserved deposits; orders per trader and interval), the closed intervals, the registry
    and balance caches and the orders waiting for their group commit. ``lock`` guards them all
    (the clearing closes an interval through ``close_for_orders``)."""

    def __init__(
        self,
        store: Store,
        ledger: MarketLedger,
        config: MarketConfig,
        events: EventBus,
        domain: typed.Domain,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.config = config
        self.events = events
        self.domain = domain
        self._domain_dict = domain.as_dict()
        self.lock = threading.RLock()
        self._participants = TTLCache(config.participant_ttl_s)
        self._balances = TTLCache(config.balance_ttl_s)
        self._debts = TTLCache(config.balance_ttl_s)
        self._closed: set[int] = set()
        self.side_wh: dict[tuple[str, int, int], int] = defaultdict(int)
        self._reserved: dict[str, int] = defaultdict(int)
        self._order_count: dict[tuple[str, int], int] = defaultdict(int)  # (trader, interval)
        # Orders admitted by submit_order_async and waiting for the group commit: counted in
        # side_wh/_reserved already, not in the store yet.
        self.inflight: dict[str, CheckedOrder] = {}
        self.inflight_nonces: set[tuple[str, str]] = set()
        self._inflight_cond = threading.Condition(self.lock)
        self.committer: GroupCommit | None = None
        self._fetches: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self.reload()

    # ----------------------------------------------------------------- state
    def reload(self) -> None:
        """Rebuild the in-memory reservations and closed intervals from the store."""
        with self.lock:
            self._closed = self.store.closed_interval_ids()
            self.side_wh = defaultdict(int)
            self._reserved = defaultdict(int)
            self._order_count = defaultdict(int)
            for o in self.store.live_orders():
                self.side_wh[(o.trader, o.interval_id, o.side)] += o.energy_wh
                self._order_count[(o.trader, o.interval_id)] += 1
                if o.side == protocol.BUY:
                    self._reserved[o.trader] += int(o.reserved)
            for pending in self.inflight.values():
                self._count(pending, +1)

    def interval_of(self, unix_s: int) -> int:
        return unix_s // self.config.interval_seconds

    def gate_closure(self, interval_id: int) -> int:
        """When the order book of an interval closes: ``gate_lead_seconds`` before its start, and
        never later than ``clearing_window_s`` before the chain's gate closure (the two agree by
        construction: no order is taken that could not be recorded in time)."""
        own = interval_id * self.config.interval_seconds - self.config.gate_lead_seconds
        return min(own, self.ledger.gate_closure(interval_id) - self.config.clearing_window_s)

    def participant(self, wallet: str, fresh: bool = False) -> Participant | None:
        value: Any
        hit, value = (False, None) if fresh else self._participants.get(wallet)
        if not hit:
            value = self.ledger.participant(wallet)
            self._participants.put(wallet, value)
        return value

    def active_participant(
        self, wallet: str, fresh: bool = False, field: str | None = None
    ) -> Participant:
        """The registered, active participant ``wallet`` (``UnknownTraderError`` /
        ``TraderInactiveError`` otherwise, naming ``field`` when given)."""
        participant = self.participant(wallet, fresh)
        if participant is None:
            raise UnknownTraderError(
                f"{wallet} is not a registered participant (POST /participants)", field=field
            )
        if not participant.active:
            raise TraderInactiveError(f"participant {wallet} is inactive", field=field)
        return participant

    def available_balance(self, wallet: str, fresh: bool = False) -> int:
        value: Any
        hit, value = (False, None) if fresh else self._balances.get(wallet)
        if not hit:
            value = self.ledger.available_balance(wallet)
            self._balances.put(wallet, value)
        return int(value)

    def debt(self, wallet: str, fresh: bool = False) -> int:
        """What ``wallet`` owes the balancing account (cached as balances are)."""
        value: Any
        hit, value = (False, None) if fresh else self._debts.get(wallet)
        if not hit:
            value = self.ledger.debt_of(wallet)
            self._debts.put(wallet, value)
        return int(value)

    def reserved(self, wallet: str) -> int:
        return self._reserved.get(wallet, 0)

    def remember(
        self,
        participants: Mapping[str, Participant | None],
        balances: Mapping[str, int],
        debts: Mapping[str, int] | None = None,
    ) -> None:
        """Fresh registry, deposit and debt reads made elsewhere (the clearing's) fill the
        caches."""
        for w, value in participants.items():
            self._participants.put(w, value)
        for w, bal in balances.items():
            self._balances.put(w, bal)
        for w, debt in (debts or {}).items():
            self._debts.put(w, debt)

    def forget_participant(self, wallet: str) -> None:
        self._participants.drop(wallet)

    def forget_balance(self, wallet: str) -> None:
        self._balances.drop(wallet)
        self._debts.drop(wallet)

    def due_intervals(self) -> list[int]:
        """Intervals with open orders whose gate has closed (for the scheduler)."""
        now = self.ledger.now()
        ids = {o.interval_id for o in self.store.live_orders() if o.status == OrderStatus.OPEN}
        return sorted(i for i in ids if now >= self.gate_closure(i) and i not in self._closed)

    # ---------------------------------------------------------------- orders
    def check_domain(
        self,
        domain: dict[str, Any] | None,
        what: str = "order",
        template: str = "/orders/eip712",
        expected: typed.Domain | None = None,
    ) -> None:
        """``WrongDomainError`` unless ``domain`` (when given) is ``expected`` (default: the
        market's)."""
        if domain is None:
            return
        ours = self._domain_dict if expected is None else expected.as_dict()
        try:
            same = (
                domain.get("name") == ours["name"]
                and str(domain.get("version")) == ours["version"]
                and int(domain.get("chainId", -1)) == ours["chainId"]
                and str(domain.get("verifyingContract", "")).lower()
                == ours["verifyingContract"].lower()
            )
        except (TypeError, ValueError):
            same = False
        if not same:
            raise WrongDomainError(
                f"the {what} is signed for another domain; sign for {ours['name']!r} "
                f"v{ours['version']} "
                f"on chain {ours['chainId']} at {ours['verifyingContract']} (GET {template})"
            )

    def check_interval(self, interval_id: int, expiry: int, now: int, what: str = "order") -> int:
        """The interval and expiry checks of an order (and of a flexibility offer, the same
        gate): not expired, not too far ahead, expiring after the interval's gate closure.
        Returns the gate closure."""
        if expiry <= now:
            raise OrderExpiredError(f"the {what} expired at {expiry}; the chain time is {now}")
        current = self.interval_of(now)
        gate = self.gate_closure(interval_id)
        if interval_id > current + self.config.max_intervals_ahead:
            raise InvalidOrderError(
                f"interval {interval_id} is more than {self.config.max_intervals_ahead} "
                "intervals ahead "
                f"(current interval {current})"
            )
        if expiry <= gate:
            raise OrderExpiredError(
                f"the {what} expires at {expiry}, before its interval's gate closure at {gate}"
            )
        return gate

    def check_open(self, interval_id: int, gate: int, now: int) -> None:
        """``IntervalClosedError`` once the interval is closed for orders (its gate closure has
        passed, or the clearing closed it)."""
        if interval_id in self._closed or now >= gate:
            raise IntervalClosedError(
                f"interval {interval_id} is closed for orders (gate closure at {gate}, now {now})"
            )

    def submit_order(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> OrderRow:
        """Verify and accept one signed order; raises an ``OrderRejectedError`` subclass saying why
        not. The row is committed (its own transaction) before this returns."""
        order = self._verify_order(message, signature, domain)
        with self.lock:
            self._admit(order)
            try:
                seq = self.store.insert_order(order.row)
            except BaseException:
                self._count(order, -1)
                raise
        self._announce(order.row)
        return OrderRow(seq=seq, **order.row)

    async def submit_order_async(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``submit_order`` for an asyncio caller (the API): the same checks and refusals, but the
        insert joins the group commit (one transaction for the orders accepted in the same
        event-loop turn). Returns the stored values (``OrderRow`` fields but ``seq``) only once
        the transaction holding the row is committed."""
        await self._warm_caches(message)
        order = self._verify_order(message, signature, domain)
        committer = self.group_commit()
        for attempt in range(8):
            try:
                with self.lock:
                    self._admit(order)
                    self._hold(order)
                break
            except (OverConnectionLimitError, InsufficientDepositError, NonceUsedError):
                # Only orders still waiting for their commit can make this a premature refusal
                # (one of them may yet fail, e.g. on a used nonce): wait for them, then decide.
                if attempt == 7 or not self._pending_of(order.trader):
                    raise
                await committer.drained()
        await committer.commit(order)
        self._announce(order.row)
        return order.row

    def group_commit(self) -> GroupCommit:
        """The group commit of the running event loop (a new loop gets a new one)."""
        loop = asyncio.get_running_loop()
        gc = self.committer
        if gc is None or gc.loop is not loop:
            gc = self.committer = GroupCommit(self, loop)
        return gc

    def insert_held(self, orders: Sequence[CheckedOrder]) -> list[Exception | None]:
        """The group commit's one transaction for orders admitted and held by
        ``submit_order_async``: per order ``None`` when committed, else the error that refused it
        (its counts are undone). None of them is in flight any more afterwards."""
        results: list[Exception | None]
        with self.lock:
            try:
                results = list(self.store.insert_orders([o.row for o in orders]))
            except Exception as exc:  # the store is unusable: every order of the batch fails
                results = [exc] * len(orders)
            for order, res in zip(orders, results, strict=True):
                if res is not None:
                    self._count(order, -1)
                self._forget(order)
            self._inflight_cond.notify_all()
        return results

    async def _warm_caches(self, message: dict[str, Any]) -> None:
        """Fill the registry and balance caches for the message's trader in a worker thread when
        they are stale, so their RPC does not stall the event loop (and every other request on
        it). Best effort: errors are left for the checks themselves to raise in their order."""
        raw = message.get("trader") if isinstance(message, dict) else None
        if not isinstance(raw, str) or len(raw) != 42:
            return
        try:
            trader = checksum(raw)
        except Exception:  # an invalid address is refused by the checks
            return
        if not self._participants.get(trader)[0]:
            await self._fetch(("participant", trader), self.participant, trader)
        if message.get("side") == protocol.BUY and not self._balances.get(trader)[0]:
            await self._fetch(("balance", trader), self.available_balance, trader)
        if not self._debts.get(trader)[0]:
            await self._fetch(("debt", trader), self.debt, trader)

    def _fetched(self, key: tuple[str, str], task: asyncio.Future[Any]) -> None:
        self._fetches.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the checks raise it again in their order

    async def _fetch(self, key: tuple[str, str], fn: Callable[..., Any], trader: str) -> None:
        """One worker-thread call per key at a time; concurrent requests wait for the same one."""
        task = self._fetches.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(fn, trader, True))
            self._fetches[key] = task
            task.add_done_callback(lambda t: self._fetched(key, t))
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    def _verify_order(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None
    ) -> CheckedOrder:
        """Every check that needs no lock: domain, fields, signature, clock, registry, debt."""
        self.check_domain(domain)
        msg = dict(message)
        for key in ("trader", "counterparty"):
            typed.address_bytes(msg.get(key), key)
            msg[key] = checksum(msg[key])
        digest = self.domain.digest("Order", msg)
        order_hash = "0x" + digest.hex()
        trader: str = msg["trader"]
        typed.require_signer(digest, signature, trader, "trader")
        side, interval_id, energy_wh = msg["side"], msg["intervalId"], msg["energyWh"]
        price, nonce, expiry = msg["pricePerKWh"], msg["nonce"], msg["expiry"]
        if side not in (protocol.SELL, protocol.BUY):
            raise InvalidOrderError("side must be 0 (sell) or 1 (buy)")
        if energy_wh <= 0 or energy_wh > MAX_INT63:
            raise InvalidOrderError("energyWh must be positive")
        if msg["counterparty"] == trader:
            raise InvalidOrderError("an order cannot name its own trader as counterparty")
        now = self.ledger.now()
        gate = self.check_interval(interval_id, expiry, now)
        participant = self.active_participant(trader)
        debt = self.debt(trader)
        if debt:
            raise AccountOwingError(
                f"{trader} owes {debt} token base units of imbalance payments to the balancing "
                "account; its orders are refused until a deposit into EnergyMarket pays the debt",
                debt,
            )
        limit_w = participant.max_export_w if side == protocol.SELL else participant.max_import_w
        reserve = protocol.escrow_of(energy_wh, price) if side == protocol.BUY else 0
        row = {
            "hash": order_hash,
            "trader": trader,
            "side": side,
            "interval_id": interval_id,
            "energy_wh": energy_wh,
            "price_per_kwh": str(price),
            "nonce": str(nonce),
            "expiry": str(expiry),
            "counterparty": msg["counterparty"],
            "signature": typed.canonical_signature(signature),
            "status": OrderStatus.OPEN,
            "filled_wh": 0,
            "reserved": str(reserve),
            "created_at": time.time(),
        }
        return CheckedOrder(row, (trader, interval_id, side), reserve, limit_w, now, gate)

    def _admit(self, order: CheckedOrder) -> None:
        """Under ``self.lock``: gate, in-flight nonce, connection limit and deposit; on success
        the order's energy and worst-case cost are counted (``_count(order, -1)`` undoes it)."""
        row = order.row
        trader, interval_id, side = order.book_key
        energy_wh, gate, now = row["energy_wh"], order.gate, order.now
        self.check_open(interval_id, gate, now)
        if row["hash"] in self.inflight or order.nonce_key in self.inflight_nonces:
            raise NonceUsedError(
                f"nonce {row['nonce']} of {trader} is already used by an accepted order"
            )
        cap = self.config.max_orders_per_trader_interval
        if self._order_count.get((trader, interval_id), 0) >= cap:
            raise TooManyOrdersError(
                f"{trader} already has {cap} live orders for interval {interval_id}, the limit "
                "per trader and interval (TEGRID_MAX_ORDERS_PER_TRADER_INTERVAL); cancel one or "
                "trade in another interval"
            )
        limit_w = order.limit_w
        limit_wh = limit_w * self.config.interval_seconds // 3600
        booked = self.side_wh.get(order.book_key, 0)
        if booked + energy_wh > limit_wh:
            kind = "export" if side == protocol.SELL else "import"
            raise OverConnectionLimitError(
                f"{energy_wh} Wh plus {booked} Wh already offered exceeds the {kind} limit of "
                f"{limit_w} W x {self.config.interval_seconds} s = {limit_wh} Wh"
            )
        reserve = order.reserve
        if reserve:
            available = self.available_balance(trader)
            held = self._reserved.get(trader, 0)
            if held + reserve > available:
                raise InsufficientDepositError(
                    f"buying needs {reserve} (worst case) on top of {held} held by open "
                    "buy orders, "
                    f"but the available deposit is {available}; deposit more into EnergyMarket"
                )
        self._count(order, +1)

    def _count(self, order: CheckedOrder, sign: int) -> None:
        """Under ``self.lock``: count an admitted order into the totals (``sign`` +1), or out."""
        self._book(order.book_key, order.row["energy_wh"], order.reserve, sign)

    def _book(self, key: tuple[str, int, int], energy_wh: int, reserve: int, sign: int) -> None:
        self.side_wh[key] = max(0, self.side_wh.get(key, 0) + sign * energy_wh)
        per = (key[0], key[1])
        self._order_count[per] = max(0, self._order_count.get(per, 0) + sign)
        if reserve:
            trader = key[0]
            self._reserved[trader] = max(0, self._reserved.get(trader, 0) + sign * reserve)

    def _hold(self, order: CheckedOrder) -> None:
        self.inflight[order.row["hash"]] = order
        self.inflight_nonces.add(order.nonce_key)

    def _forget(self, order: CheckedOrder) -> None:
        self.inflight.pop(order.row["hash"], None)
        self.inflight_nonces.discard(order.nonce_key)

    def _pending_of(self, trader: str) -> bool:
        with self.lock:
            return any(k[0] == trader for k in self.inflight_nonces)

    def close_for_orders(self, interval_id: int) -> bool:
        """Refuse the interval's orders from here on, wait for the ones admitted before and still
        waiting for their commit (they belong in the clearing), and commit the closing. True when
        this call closed the interval in the store."""
        with self.lock:
            was_closed = interval_id in self._closed
            self._closed.add(interval_id)
            try:
                self._drain_inflight(interval_id)
                closed_now = self.store.close_interval(interval_id)
            except BaseException:
                if not was_closed:
                    self._closed.discard(interval_id)
                raise
            self._closed.add(interval_id)
        return closed_now

    def _drain_inflight(self, interval_id: int) -> None:
        """Under ``self.lock``: wait until no order of ``interval_id`` is waiting for its commit."""
        while any(o.book_key[1] == interval_id for o in self.inflight.values()):
            gc = self.committer
            if gc is not None and gc.on_loop_thread():
                gc.flush()
            else:
                self._inflight_cond.wait(timeout=1.0)

    def _announce(self, row: dict[str, Any]) -> None:
        self.events.publish(
            "order",
            {
                "hash": row["hash"],
                "trader": row["trader"],
                "side": row["side"],
                "intervalId": row["interval_id"],
                "energyWh": row["energy_wh"],
                "pricePerKWh": row["price_per_kwh"],
                "status": OrderStatus.OPEN,
            },
        )

    def get_order(self, order_hash: str) -> OrderRow:
        row = self.store.get_order(order_hash.lower())
        if row is None:
            raise NotFoundError(f"no order {order_hash}")
        return row

    def cancel_order(self, order_hash: str, signature: str) -> OrderRow:
        """Cancel an open order with the trader's signature over ``Cancel(trader, orderHash)``."""
        row = self.get_order(order_hash)
        digest = self.domain.digest("Cancel", {"trader": row.trader, "orderHash": row.hash})
        signer = typed.recover(digest, signature)
        if signer != row.trader:
            raise BadSignatureError(
                f"the cancellation is signed by {signer}, not the trader {row.trader}"
            )
        with self.lock:
            if not self.store.cancel_order(row.hash):
                raise ConflictError(
                    f"order {row.hash} is {self.get_order(row.hash).status}, not open",
                    reason="NOT_CANCELLABLE",
                )
            reserve = int(row.reserved) if row.side == protocol.BUY else 0
            self._book((row.trader, row.interval_id, row.side), row.energy_wh, reserve, -1)
        row.status = OrderStatus.CANCELLED
        self.events.publish("cancel", {"hash": row.hash, "trader": row.trader})
        return row
