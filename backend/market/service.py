"""The market: accepts wallet-signed orders, clears intervals at gate closure, records the validated
batch on chain and follows it to settlement. The API and the CLI use this class; it knows no HTTP.

Accept path (kept lean, it runs thousands of times per second): schema -> EIP-712 digest and
signature
(coincurve) -> clock, interval and gate -> participant (cached view of the registry) -> connection
limit
(energy of the trader's live orders on that side of the interval plus this one, against max W x
interval
hours) -> deposit for buys (on-chain available balance, cached for ``balance_ttl_s``, minus the
worst-case
cost ``ceil(energyWh x price / 1000)`` of the trader's live buy orders) -> one insert.
Limits and deposits are checked against in-memory totals (rebuilt from the store by ``reload``),
the nonce by the store's unique key. ``submit_order_async`` (the API) runs the same checks but
joins a group commit: the orders admitted in one turn of the event loop are inserted in one
transaction, and each is answered only after that commit. While an admitted order waits for its
commit it already counts against its trader's limit and deposit; a refusal that such an order could
have caused waits for its outcome and is decided again, and closing an interval waits for the
interval's orders in flight, so the answers are the ones the one-insert-per-order path would give.

Crash safety: an order is accepted once its row is committed. Closing an interval is a committed
state;
the clearing (trades, the batch and its attestation) is one transaction committed *before* the batch
is
sent; on restart an unfinished batch is first looked up on chain (``intervalOf``), and only sent
when
it is not there. A failed send leaves the batch pending for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak

from backend.chain import eip712
from backend.chain.address import checksum
from backend.market import typed
from backend.market.auction import BookOrder, Candidate, Clearing, clear
from backend.market.batching import GasModel, TradeSpec, backoff_s, order_count, split
from backend.market.errors import (
    AlreadyConnected,
    BadSignature,
    BatchReverted,
    BatchTooLarge,
    Conflict,
    InsufficientDeposit,
    IntervalClosed,
    InvalidOrder,
    MarketError,
    NonceUsed,
    NotFound,
    OrderExpired,
    OverConnectionLimit,
    TooManyOrders,
    TraderInactive,
    UnknownTrader,
    WrongDomain,
)
from backend.market.events import EventBus
from backend.market.models import (
    BatchRow,
    BatchState,
    IntervalRow,
    IntervalStatus,
    OrderRow,
    OrderStatus,
    TradeRow,
)
from backend.market.ports import ChainTrade, GridPort, Ledger, Participant
from backend.market.store import Store, trade_ids_json

log = logging.getLogger("tegrid.market")

MAX_INT63 = (1 << 63) - 1
# The market's chain clock is an estimate (carried forward between block reads): a batch is given
# up as expired only this long after the chain's gate closure; the chain itself is the judge.
GATE_MARGIN_S = 5


@dataclass(frozen=True)
class MarketConfig:
    interval_seconds: int = 900
    gate_lead_seconds: int = 60  # gate closes this long before the interval starts
    # ... and at least this long before the chain's gate closure (``gateLeadSeconds`` of the
    # contract), so that clearing and recording fit before the chain refuses the batches
    clearing_window_s: int = 30
    max_intervals_ahead: int = 96 * 7
    participant_ttl_s: float = 5.0
    balance_ttl_s: float = 2.0
    expiry_margin_s: int = 30  # orders expiring this close to recording are left out of a batch
    # Bounded work per interval: live orders one trader may have for one interval.
    max_orders_per_trader_interval: int = 64
    # A batch is planned to use at most this share of the block gas limit (by the measured model).
    batch_gas_share: float = 0.5
    # Trades in the batch that measures the gas rate when nothing has been measured yet.
    probe_trades: int = 32
    # A failed batch is retried after retry_base_s, doubling per failure up to retry_max_s.
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    # An interval whose batch would revert (a participant acted after the clearing) is cleared
    # again at most this often while nothing of it is on chain.
    max_reclears: int = 2


def escrow_of(energy_wh: int, price_per_kwh: int) -> int:
    """``ceil(energyWh x pricePerKWh / 1000)``, as the contract locks it."""
    return -(-energy_wh * price_per_kwh // 1000)


def trade_id_of(sell_hash: str, buy_hash: str) -> str:
    """``keccak256(abi.encode(sellOrderHash, buyOrderHash))``."""
    return "0x" + keccak(bytes.fromhex(sell_hash[2:]) + bytes.fromhex(buy_hash[2:])).hex()


def attestation_digest(
    domain: typed.Domain,
    interval_id: int,
    batch_index: int,
    batch_count: int,
    trades: Sequence[eip712.AttestedTrade],
    evidence_hash: str,
) -> bytes:
    """EIP-712 digest of the validator's ``GridAttestation`` of batch ``batch_index`` of
    ``batch_count``: every trade's id, energy, price and verdict in batch order, as
    ``attestationDigest`` on chain."""
    struct = eip712.attestation_struct_hash(
        interval_id, batch_index, batch_count, trades, evidence_hash
    )
    return keccak(b"\x19\x01" + domain.separator + struct)


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:  # the validation computes it again and says why
        log.warning("preparing the next interval's grid state failed: %s", exc)


class _TTLCache:
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


def order_message(row: OrderRow) -> dict[str, Any]:
    return {
        "trader": row.trader,
        "side": row.side,
        "intervalId": row.interval_id,
        "energyWh": row.energy_wh,
        "pricePerKWh": int(row.price_per_kwh),
        "nonce": int(row.nonce),
        "expiry": int(row.expiry),
        "counterparty": row.counterparty,
    }


@dataclass
class _Checked:
    """An order that passed the lock-free checks: the row to store and what ``_admit`` needs."""

    row: dict[str, Any]
    book_key: tuple[str, int, int]  # (trader, interval, side)
    reserve: int
    limit_w: int
    now: int
    gate: int


class _GroupCommit:
    """Group commit on one asyncio loop: the orders admitted during one turn of the loop go into
    the store in one transaction (``call_soon`` runs the flush after the requests that are
    already runnable), and each caller is answered only once that transaction is committed."""

    def __init__(self, market: Market, loop: asyncio.AbstractEventLoop) -> None:
        self.market = market
        self.loop = loop
        self._thread = threading.get_ident()
        self._batch: list[tuple[_Checked, asyncio.Future[None]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self.batches = 0
        self.rows = 0

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def commit(self, order: _Checked) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self._batch.append((order, fut))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)
        return fut

    def drained(self) -> asyncio.Future[None]:
        """Resolved once the orders waiting now have their outcome."""
        fut: asyncio.Future[None] = self.loop.create_future()
        if self._batch:
            self._waiters.append(fut)
        else:
            fut.set_result(None)
        return fut

    def flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        waiters, self._waiters = self._waiters, []
        if not batch:
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            return
        m = self.market
        results: list[Exception | None]
        with m._lock:
            try:
                results = list(m.store.insert_orders([o.row for o, _f in batch]))
            except Exception as exc:  # the store is unusable: every order of the batch fails
                results = [exc] * len(batch)
            for (order, _f), res in zip(batch, results, strict=True):
                if res is not None:
                    m._release(order)
                m._forget(order)
            m._inflight_cond.notify_all()
        self.batches += 1
        self.rows += len(batch)
        for (_o, fut), res in zip(batch, results, strict=True):
            if fut.done():  # the caller went away; the outcome stands
                continue
            if res is None:
                fut.set_result(None)
            else:
                fut.set_exception(res)
        for w in waiters:
            if not w.done():
                w.set_result(None)


class Market:
    """Order book, clearing and recording. Thread-safe: the accept path and clearing share one
    lock."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
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
        self._validator_key = validator_key
        self.domain = typed.market_domain(ledger.chain_id, ledger.market_address)
        self.registry_domain = typed.registry_domain(ledger.chain_id, ledger.registry_address)
        self._domain_dict = self.domain.as_dict()
        self._lock = threading.RLock()
        self._clearing_lock = threading.Lock()
        # One batch on its way to the chain at a time (a clearing may run beside it).
        self._record_lock = threading.RLock()
        self._recorder: ThreadPoolExecutor | None = None
        self._participants = _TTLCache(self.config.participant_ttl_s)
        self._balances = _TTLCache(self.config.balance_ttl_s)
        self._closed: set[int] = set()
        self._side_wh: dict[tuple[str, int, int], int] = defaultdict(int)
        self._reserved: dict[str, int] = defaultdict(int)
        self._order_count: dict[tuple[str, int], int] = defaultdict(int)  # (trader, interval)
        # Why an interval could not be cleared (shown with the interval until it is).
        self._interval_errors: dict[int, str] = {}
        self._reclear_wanted: set[int] = set()  # intervals whose batch would revert
        self._reclears: dict[int, int] = {}  # interval -> times cleared again
        self._gas = GasModel()
        with contextlib.suppress(Exception):  # a store that cannot say just starts unmeasured
            for trades, orders, gas in reversed(store.recorded_batch_gas()):
                self._gas.learn(trades, orders, gas)
        # Orders admitted by submit_order_async and waiting for the group commit: counted in
        # _side_wh/_reserved already, not in the store yet.
        self._inflight: dict[str, _Checked] = {}
        self._inflight_nonces: set[tuple[str, str]] = set()
        self._inflight_cond = threading.Condition(self._lock)
        self._committer: _GroupCommit | None = None
        self._fetches: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._preparer: ThreadPoolExecutor | None = None
        self.reload()

    # ----------------------------------------------------------------- state
    def reload(self) -> None:
        """Rebuild the in-memory reservations and closed intervals from the store."""
        with self._lock:
            self._closed = self.store.closed_interval_ids()
            self._side_wh = defaultdict(int)
            self._reserved = defaultdict(int)
            self._order_count = defaultdict(int)
            for o in self.store.live_orders():
                self._side_wh[(o.trader, o.interval_id, o.side)] += o.energy_wh
                self._order_count[(o.trader, o.interval_id)] += 1
                if o.side == typed.BUY:
                    self._reserved[o.trader] += int(o.reserved)
            for pending in self._inflight.values():
                self._count(pending, +1)

    def interval_of(self, unix_s: int) -> int:
        return unix_s // self.config.interval_seconds

    def gate_closure(self, interval_id: int) -> int:
        """When the order book of an interval closes: ``gate_lead_seconds`` before its start, and
        never later than ``clearing_window_s`` before the chain's gate closure (the two agree by
        construction: no order is taken that could not be recorded in time)."""
        own = interval_id * self.config.interval_seconds - self.config.gate_lead_seconds
        return min(own, self.ledger.gate_closure(interval_id) - self.config.clearing_window_s)

    def current_interval(self) -> int:
        return self.interval_of(self.ledger.now())

    def participant(self, wallet: str, fresh: bool = False) -> Participant | None:
        value: Any
        hit, value = (False, None) if fresh else self._participants.get(wallet)
        if not hit:
            value = self.ledger.participant(wallet)
            self._participants.put(wallet, value)
        return value

    def available_balance(self, wallet: str, fresh: bool = False) -> int:
        value: Any
        hit, value = (False, None) if fresh else self._balances.get(wallet)
        if not hit:
            value = self.ledger.available_balance(wallet)
            self._balances.put(wallet, value)
        return int(value)

    def reserved(self, wallet: str) -> int:
        return self._reserved.get(wallet, 0)

    # ---------------------------------------------------------------- orders
    def template(self, primary_type: str = "Order") -> dict[str, Any]:
        if primary_type == "ConnectionRequest":
            return self.registry_domain.template(primary_type)
        return self.domain.template(primary_type)

    def _check_domain(self, domain: dict[str, Any] | None) -> None:
        if domain is None:
            return
        ours = self._domain_dict
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
            raise WrongDomain(
                f"the order is signed for another domain; sign for {ours['name']!r} "
                f"v{ours['version']} "
                f"on chain {ours['chainId']} at {ours['verifyingContract']} (GET /orders/eip712)"
            )

    def submit_order(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> OrderRow:
        """Verify and accept one signed order; raises an ``OrderRejected`` subclass saying why
        not. The row is committed (its own transaction) before this returns."""
        order = self._verify_order(message, signature, domain)
        with self._lock:
            self._admit(order)
            try:
                seq = self.store.insert_order(order.row)
            except BaseException:
                self._release(order)
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
        committer = self._group_commit()
        for attempt in range(8):
            try:
                with self._lock:
                    self._admit(order)
                    self._hold(order)
                break
            except (OverConnectionLimit, InsufficientDeposit, NonceUsed):
                # Only orders still waiting for their commit can make this a premature refusal
                # (one of them may yet fail, e.g. on a used nonce): wait for them, then decide.
                if attempt == 7 or not self._pending_of(order.row["trader"]):
                    raise
                await committer.drained()
        await committer.commit(order)
        self._announce(order.row)
        return order.row

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
        if message.get("side") == typed.BUY and not self._balances.get(trader)[0]:
            await self._fetch(("balance", trader), self.available_balance, trader)

    def _fetched(self, key: tuple[str, str], task: asyncio.Future[Any]) -> None:
        self._fetches.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the checks raise it again in their order

    async def _fetch(self, key: tuple[str, str], fn: Any, trader: str) -> None:
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
    ) -> _Checked:
        """Every check that needs no lock: domain, fields, signature, clock, registry."""
        self._check_domain(domain)
        msg = dict(message)
        for key in ("trader", "counterparty"):
            typed.address_bytes(msg.get(key), key)
            msg[key] = checksum(msg[key])
        digest = self.domain.digest("Order", msg)
        order_hash = "0x" + digest.hex()
        trader: str = msg["trader"]
        signer = typed.recover(digest, signature)
        if signer != trader:
            raise BadSignature(
                f"signature recovers to {signer}, not the trader {trader} "
                "(tampered message, another chain id or another contract)"
            )
        side, interval_id, energy_wh = msg["side"], msg["intervalId"], msg["energyWh"]
        price, nonce, expiry = msg["pricePerKWh"], msg["nonce"], msg["expiry"]
        if side not in (typed.SELL, typed.BUY):
            raise InvalidOrder("side must be 0 (sell) or 1 (buy)")
        if energy_wh <= 0 or energy_wh > MAX_INT63:
            raise InvalidOrder("energyWh must be positive")
        if msg["counterparty"] == trader:
            raise InvalidOrder("an order cannot name its own trader as counterparty")
        now = self.ledger.now()
        if expiry <= now:
            raise OrderExpired(f"the order expired at {expiry}; the chain time is {now}")
        current = self.interval_of(now)
        gate = self.gate_closure(interval_id)
        if interval_id > current + self.config.max_intervals_ahead:
            raise InvalidOrder(
                f"interval {interval_id} is more than {self.config.max_intervals_ahead} "
                "intervals ahead "
                f"(current interval {current})"
            )
        if expiry <= gate:
            raise OrderExpired(
                f"the order expires at {expiry}, before its interval's gate closure at {gate}"
            )
        participant = self.participant(trader)
        if participant is None:
            raise UnknownTrader(f"{trader} is not a registered participant (POST /participants)")
        if not participant.active:
            raise TraderInactive(f"participant {trader} is inactive")
        limit_w = participant.max_export_w if side == typed.SELL else participant.max_import_w
        reserve = escrow_of(energy_wh, price) if side == typed.BUY else 0
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
            "signature": signature if signature.startswith("0x") else "0x" + signature,
            "status": OrderStatus.OPEN,
            "filled_wh": 0,
            "reserved": str(reserve),
            "created_at": time.time(),
        }
        return _Checked(row, (trader, interval_id, side), reserve, limit_w, now, gate)

    def _admit(self, order: _Checked) -> None:
        """Under ``self._lock``: gate, in-flight nonce, connection limit and deposit; on success
        the order's energy and worst-case cost are counted (``_release`` undoes it)."""
        row = order.row
        trader, interval_id, side = order.book_key
        energy_wh, gate, now = row["energy_wh"], order.gate, order.now
        if interval_id in self._closed or now >= gate:
            raise IntervalClosed(
                f"interval {interval_id} is closed for orders (gate closure at {gate}, now {now})"
            )
        if row["hash"] in self._inflight or (trader, row["nonce"]) in self._inflight_nonces:
            raise NonceUsed(
                f"nonce {row['nonce']} of {trader} is already used by an accepted order"
            )
        cap = self.config.max_orders_per_trader_interval
        if self._order_count.get((trader, interval_id), 0) >= cap:
            raise TooManyOrders(
                f"{trader} already has {cap} live orders for interval {interval_id}, the limit "
                "per trader and interval (TEGRID_MAX_ORDERS_PER_TRADER_INTERVAL); cancel one or "
                "trade in another interval"
            )
        limit_w = order.limit_w
        limit_wh = limit_w * self.config.interval_seconds // 3600
        booked = self._side_wh.get(order.book_key, 0)
        if booked + energy_wh > limit_wh:
            kind = "export" if side == typed.SELL else "import"
            raise OverConnectionLimit(
                f"{energy_wh} Wh plus {booked} Wh already offered exceeds the {kind} limit of "
                f"{limit_w} W x {self.config.interval_seconds} s = {limit_wh} Wh"
            )
        reserve = order.reserve
        if reserve:
            available = self.available_balance(trader)
            held = self._reserved.get(trader, 0)
            if held + reserve > available:
                raise InsufficientDeposit(
                    f"buying needs {reserve} (worst case) on top of {held} held by open "
                    "buy orders, "
                    f"but the available deposit is {available}; deposit more into EnergyMarket"
                )
        self._count(order, +1)

    def _count(self, order: _Checked, sign: int) -> None:
        key = order.book_key
        self._side_wh[key] = max(0, self._side_wh.get(key, 0) + sign * order.row["energy_wh"])
        per = (key[0], key[1])
        self._order_count[per] = max(0, self._order_count.get(per, 0) + sign)
        if order.reserve:
            trader = key[0]
            self._reserved[trader] = max(0, self._reserved.get(trader, 0) + sign * order.reserve)

    def _release(self, order: _Checked) -> None:
        """Under ``self._lock``: undo ``_admit`` for an order whose insert failed."""
        self._count(order, -1)

    def _hold(self, order: _Checked) -> None:
        self._inflight[order.row["hash"]] = order
        self._inflight_nonces.add((order.book_key[0], order.row["nonce"]))

    def _forget(self, order: _Checked) -> None:
        self._inflight.pop(order.row["hash"], None)
        self._inflight_nonces.discard((order.book_key[0], order.row["nonce"]))

    def _pending_of(self, trader: str) -> bool:
        with self._lock:
            return any(k[0] == trader for k in self._inflight_nonces)

    def _drain_inflight(self, interval_id: int) -> None:
        """Under ``self._lock``: wait until no order of ``interval_id`` is waiting for its commit
        (it was admitted before the gate closed, so it belongs in the clearing)."""
        while any(o.book_key[1] == interval_id for o in self._inflight.values()):
            gc = self._committer
            if gc is not None and gc.on_loop_thread():
                gc.flush()
            else:
                self._inflight_cond.wait(timeout=1.0)

    def _group_commit(self) -> _GroupCommit:
        loop = asyncio.get_running_loop()
        gc = self._committer
        if gc is None or gc.loop is not loop:
            gc = self._committer = _GroupCommit(self, loop)
        return gc

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
            raise NotFound(f"no order {order_hash}")
        return row

    def cancel_order(self, order_hash: str, signature: str) -> OrderRow:
        """Cancel an open order with the trader's signature over ``Cancel(trader, orderHash)``."""
        row = self.get_order(order_hash)
        digest = self.domain.digest("Cancel", {"trader": row.trader, "orderHash": row.hash})
        signer = typed.recover(digest, signature)
        if signer != row.trader:
            raise BadSignature(
                f"the cancellation is signed by {signer}, not the trader {row.trader}"
            )
        with self._lock:
            if not self.store.cancel_order(row.hash):
                raise Conflict(
                    f"order {row.hash} is {self.get_order(row.hash).status}, not open",
                    code="NOT_CANCELLABLE",
                )
            key = (row.trader, row.interval_id, row.side)
            self._side_wh[key] = max(0, self._side_wh.get(key, 0) - row.energy_wh)
            per = (row.trader, row.interval_id)
            self._order_count[per] = max(0, self._order_count.get(per, 0) - 1)
            if row.side == typed.BUY:
                self._reserved[row.trader] = max(
                    0, self._reserved.get(row.trader, 0) - int(row.reserved)
                )
        row.status = OrderStatus.CANCELLED
        self.events.publish("cancel", {"hash": row.hash, "trader": row.trader})
        return row

    # -------------------------------------------------------------- clearing
    def close_interval(
        self, interval_id: int, force: bool = False, wait: bool = True
    ) -> IntervalRow:
        """Close the gate, clear, and record the batch. ``force`` closes before gate closure
        (dev). ``wait`` False returns once the clearing is stored (status ``cleared``) and sends
        the batch from the recorder thread, so the next interval can be cleared meanwhile."""
        if not force and self.ledger.now() < self.gate_closure(interval_id):
            raise Conflict(
                f"interval {interval_id} reaches gate closure at {self.gate_closure(interval_id)}",
                code="GATE_NOT_REACHED",
            )
        with self._clearing_lock:
            with self._lock:
                was_closed = interval_id in self._closed
                self._closed.add(interval_id)  # refuse new orders from here on
                try:
                    self._drain_inflight(interval_id)
                    closed_now = self.store.close_interval(interval_id)
                except BaseException:
                    if not was_closed:
                        self._closed.discard(interval_id)
                    raise
                self._closed.add(interval_id)
            row = self.store.get_interval(interval_id)
            assert row is not None
            if not closed_now and row.status != IntervalStatus.CLOSED:
                if row.status == IntervalStatus.CLEARED:
                    self.record_batch(interval_id)
                    return self.interval(interval_id)
                raise Conflict(
                    f"interval {interval_id} is already {row.status}", code="INTERVAL_NOT_OPEN"
                )
            self.events.publish(
                "interval", {"intervalId": interval_id, "status": IntervalStatus.CLOSED}
            )
            self._clear(interval_id)
            self._prepare(interval_id + 1)
            if wait:
                self.record_batch(interval_id)
        if not wait:
            self._record_later(interval_id)
        return self.interval(interval_id)

    def _prepare(self, interval_id: int) -> None:
        """Let the grid compute the next interval's base state in a worker thread while this
        clearing waits for its receipt, instead of in the next clearing."""
        if self.grid is None:
            return
        if self._preparer is None:
            self._preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grid-prepare")
        future = self._preparer.submit(self.grid.prepare, interval_id)
        future.add_done_callback(_log_failure)

    def _eligible(
        self, interval_id: int, rows: list[OrderRow]
    ) -> list[tuple[OrderRow, Participant]]:
        """Orders that can still go on chain: trader active, not expiring, nonce not cancelled, and
        buyer
        deposits that cover their worst case (later buy orders are dropped first)."""
        deadline = self.ledger.now() + self.config.expiry_margin_s
        wallets = list(dict.fromkeys(o.trader for o in rows))
        buyers = list(dict.fromkeys(o.trader for o in rows if o.side == typed.BUY))
        pending = self._unrecorded_escrow(interval_id)
        # One fresh read of each trader, nonce and buyer deposit, batched (a clearing of 150
        # orders was ~300 sequential round trips).
        reads = self.ledger.clearing_reads(
            wallets, [(o.trader, int(o.nonce)) for o in rows], buyers
        )
        for w, value in reads.participants.items():
            self._participants.put(w, value)
        for w, bal in reads.balances.items():
            self._balances.put(w, bal)
        balances = dict(reads.balances)
        for w, escrow in pending.items():
            if w in balances:
                balances[w] = max(0, balances[w] - escrow)
        out: list[tuple[OrderRow, Participant]] = []
        spend: dict[str, int] = defaultdict(int)
        for o in rows:
            p = reads.participants.get(o.trader)
            if p is None or not p.active or int(o.expiry) <= deadline:
                continue
            if (o.trader, int(o.nonce)) in reads.cancelled:
                continue
            if o.side == typed.BUY:
                cost = int(o.reserved)
                if spend[o.trader] + cost > balances.get(o.trader, 0):
                    continue
                spend[o.trader] += cost
            out.append((o, p))
        return out

    def _unrecorded_escrow(self, interval_id: int) -> dict[str, int]:
        """Escrow per buyer that other intervals' batches, cleared but not on chain when this
        is called, will lock when they are recorded (the recorder thread may be sending one):
        the deposits read after this must not be counted for this interval's orders too. A
        batch that lands between this look and the deposit reads is subtracted twice, which
        only errs on the safe side."""
        out: dict[str, int] = defaultdict(int)
        for b in self.store.unfinished_batches():
            if b.interval_id == interval_id:
                continue
            ids: list[str] = json.loads(b.trade_ids)
            if self.ledger.batch_recorded(b.interval_id, ids[-1]):
                continue
            for t in self.store.trades_by_id(ids).values():
                if t.verdict == 0:
                    out[t.buyer] += escrow_of(t.energy_wh, int(t.price_per_kwh))
        return out

    def _clear(self, interval_id: int) -> Clearing:
        rows = self.store.open_orders(interval_id)
        eligible = self._eligible(interval_id, rows)
        book = [
            BookOrder(
                o.hash,
                o.trader,
                o.side,
                o.energy_wh,
                int(o.price_per_kwh),
                o.counterparty,
                o.seq,
                p.bus_id,
            )
            for o, p in eligible
        ]
        # The grid runs the clearing's rounds where it validates (a worker process: the whole
        # book goes over once); no grid approves everything.
        result = clear(book) if self.grid is None else self.grid.clear(interval_id, book)
        # The contract wants each interval's trades in ascending tradeId order.
        decided = sorted(
            ((trade_id_of(c.sell.hash, c.buy.hash), c, d) for c, d in result.trades),
            key=lambda t: int(t[0], 16),
        )
        trades = [
            {
                "id": tid,
                "interval_id": interval_id,
                "position": pos,
                "kind": c.kind,
                "sell_hash": c.sell.hash,
                "buy_hash": c.buy.hash,
                "seller": c.sell.trader,
                "buyer": c.buy.trader,
                "seller_bus": c.sell.bus,
                "buyer_bus": c.buy.bus,
                "energy_wh": c.energy_wh,
                "price_per_kwh": str(c.price_per_kwh),
                "verdict": d.reason_code,
                "reason": d.reason,
                "element": d.element[:40],
                "status": "pending",
            }
            for pos, (tid, c, d) in enumerate(decided)
        ]
        specs = [
            TradeSpec(tid, c.sell.hash, c.buy.hash, c.energy_wh, c.price_per_kwh, d.reason_code)
            for tid, c, d in decided
        ]
        orders = {o.hash: o for o in rows}
        batches = self._plan(interval_id, specs, result.evidence_hash, orders) if specs else []
        stats = {
            "clearing_price": None if result.clearing_price is None else str(result.clearing_price),
            "offered_wh": result.offered_wh,
            "bid_wh": result.bid_wh,
            "traded_wh": result.traded_wh,
            "vetoed_wh": result.vetoed_wh,
            "approved_count": len(result.approved),
            "vetoed_count": len(result.trades) - len(result.approved),
        }
        self.store.save_clearing(interval_id, trades, batches, result.fills(), stats)
        self._interval_errors.pop(interval_id, None)
        self.reload()
        self.events.publish(
            "clearing", {"intervalId": interval_id, "batches": len(batches), **stats}
        )
        for t in trades:
            self.events.publish(
                "verdict",
                {
                    "tradeId": t["id"],
                    "intervalId": interval_id,
                    "verdict": t["verdict"],
                    "reason": t["reason"],
                    "energyWh": t["energy_wh"],
                    "pricePerKWh": t["price_per_kwh"],
                    "seller": t["seller"],
                    "buyer": t["buyer"],
                },
            )
        return result

    # ------------------------------------------------------------- batches
    def _attest(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[TradeSpec],
        evidence_hash: str,
    ) -> str:
        """The validator's signature over one batch: the one place ``attestation_digest`` is
        called (every field it may bind - index, count, each trade's amounts - is at hand)."""
        attested = [
            eip712.AttestedTrade(t.trade_id, t.energy_wh, t.price_per_kwh, t.verdict)
            for t in trades
        ]
        digest = attestation_digest(
            self.domain, interval_id, batch_index, batch_count, attested, evidence_hash
        )
        return eip712.sign_digest(digest, self._validator_key)

    def _signed_batches(
        self,
        interval_id: int,
        specs: Sequence[TradeSpec],
        sizes: Sequence[int],
        evidence_hash: str,
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 0
        for index, size in enumerate(sizes):
            part = specs[start : start + size]
            start += size
            orders = order_count(part)
            out.append(
                {
                    "batch_index": index,
                    "batch_count": len(sizes),
                    "state": BatchState.PENDING,
                    "evidence_hash": evidence_hash,
                    "attestation_signature": self._attest(
                        interval_id, index, len(sizes), part, evidence_hash
                    ),
                    "trade_ids": trade_ids_json(t.trade_id for t in part),
                    "order_count": orders,
                    "gas_planned": self._gas.predict(size, orders),
                    "attempts": 0,
                }
            )
        return out

    def _plan(
        self,
        interval_id: int,
        specs: Sequence[TradeSpec],
        evidence_hash: str,
        orders: dict[str, OrderRow],
    ) -> list[dict[str, Any]]:
        """The interval's trades as signed batches, each within ``batch_gas_share`` of the block
        gas limit by the measured gas model. The first batch of a plan is estimated on the chain
        (its signature never leaves this process unless the plan is kept): with no measurement
        yet it is a probe of ``probe_trades`` trades whose figure sizes the rest; a plan whose
        first batch turns out over budget is made again with that figure. When the chain cannot
        be asked, the plan stands as it is (the send estimates each batch again)."""
        try:
            limit = self.ledger.block_gas_limit()
        except MarketError as exc:
            log.warning("block gas limit unknown (%s): probe-sized batches", exc)
            sizes = split(specs, lambda t, _o: t <= self.config.probe_trades)
            return self._signed_batches(interval_id, specs, sizes, evidence_hash)
        budget = int(limit * self.config.batch_gas_share)
        batches: list[dict[str, Any]] = []
        probe = self.config.probe_trades

        def fits(t: int, o: int) -> bool:
            need = self._gas.predict(t, o)
            return t <= probe if need is None else need <= budget

        for _round in range(4):
            measured = self._gas.known
            sizes = split(specs, fits)
            batches = self._signed_batches(interval_id, specs, sizes, evidence_hash)
            first = specs[: sizes[0]]
            try:
                gas = self.ledger.estimate_record_gas(
                    interval_id,
                    0,
                    len(sizes),
                    self._chain_trades(first, orders),
                    evidence_hash,
                    batches[0]["attestation_signature"],
                )
            except BatchTooLarge:
                self._gas.learn(len(first), order_count(first), limit)
                continue
            except MarketError as exc:  # a revert or the chain away: the send will say why
                log.warning("interval %s: first batch not measured: %s", interval_id, exc)
                return batches
            self._gas.learn(len(first), order_count(first), gas)
            if (measured or len(sizes) == 1) and gas <= budget:
                return batches
        return batches

    def _chain_trades(
        self, specs: Sequence[TradeSpec], orders: dict[str, OrderRow]
    ) -> list[ChainTrade]:
        missing = [h for t in specs for h in (t.sell_hash, t.buy_hash) if h not in orders]
        if missing:
            raise NotFound(f"no order {missing[0]}")
        return [
            ChainTrade(
                trade_id=t.trade_id,
                sell=order_message(orders[t.sell_hash]),
                sell_signature=orders[t.sell_hash].signature,
                buy=order_message(orders[t.buy_hash]),
                buy_signature=orders[t.buy_hash].signature,
                energy_wh=t.energy_wh,
                price_per_kwh=t.price_per_kwh,
                verdict=t.verdict,
            )
            for t in specs
        ]

    def _specs(self, ids: Sequence[str]) -> list[TradeSpec]:
        rows = self.store.trades_by_id(ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise NotFound(f"no trade {missing[0]}")
        return [
            TradeSpec(t.id, t.sell_hash, t.buy_hash, t.energy_wh, int(t.price_per_kwh), t.verdict)
            for t in (rows[i] for i in ids)
        ]

    def _batch_input(self, b: BatchRow) -> list[ChainTrade]:
        specs = self._specs(json.loads(b.trade_ids))
        orders = self.store.get_orders([h for t in specs for h in (t.sell_hash, t.buy_hash)])
        return self._chain_trades(specs, orders)

    def record_batch(self, interval_id: int, due_only: bool = False) -> bool:
        """Make sure every batch of the interval is on chain exactly once, in order; True when
        they all are. A batch that fails is marked ``failed`` with the reason and a time for the
        next attempt (``due_only``: not before it) and the later batches wait for it."""
        with self._record_lock:
            for _replan in range(3):
                batches = self.store.batches(interval_id)
                if not batches:
                    return False
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
                    return True
                if outcome != "replanned":
                    return False
            return False

    def _record_later(self, interval_id: int) -> None:
        """Record the batches in the recorder thread (intervals go out in the order they are
        handed over); a failure leaves them for ``tick`` or ``recover``."""
        if self._recorder is None:
            self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")

        def run() -> None:
            try:
                self.record_batch(interval_id)
            except Exception:  # nobody reads this thread's future: say it here
                log.exception("recording the batches of interval %s failed", interval_id)

        self._recorder.submit(run)

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
            trades = self._batch_input(b)
            try:
                gas = self.ledger.estimate_record_gas(
                    interval_id,
                    b.batch_index,
                    b.batch_count,
                    trades,
                    b.evidence_hash,
                    b.attestation_signature,
                )
            except BatchReverted:
                # what a participant did after the clearing (a nonce cancelled, the deposit
                # withdrawn, the trader deactivated): the scheduler clears the interval again
                # while nothing of it is on chain (``_reclear_due``)
                self._reclear_wanted.add(interval_id)
                raise
            except BatchTooLarge as exc:
                self._gas.learn(len(ids), b.order_count, self.ledger.block_gas_limit())
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
            why = str(exc) if isinstance(exc, MarketError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                if self.ledger.batch_recorded(interval_id, ids[-1]):
                    self._found_on_chain(interval_id, b)
                    return "recorded"
            with contextlib.suppress(Exception):
                self._batch_failed(interval_id, b, why, counted=sent)
            return "failed"
        self._gas.learn(len(ids), b.order_count, receipt.gas_used)
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
        specs = self._specs([t.id for t in self.store.trades(interval_id)])
        orders = self.store.get_orders([h for t in specs for h in (t.sell_hash, t.buy_hash)])
        plan = self._plan(interval_id, specs, batches[0].evidence_hash, orders)
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
        self.reload()
        for t in self.store.trades(interval_id):
            self._balances.drop(t.buyer)
        self.events.publish(
            "recorded", {"intervalId": interval_id, "txHash": tx_hash, "block": block}
        )

    def reconcile(self, since_block: int | None = None) -> list[tuple[int, int]]:
        """A receipt is not final: batches recorded in blocks the chain no longer has (the head
        went back below them, or a rollback the ledger noticed forked at or below them) and not
        on chain any more are made pending again and recorded again, with the same signature, by
        the recorder. ``since_block``: check every batch recorded from that block on. Returns the
        (interval, batch) pairs found lost."""
        fork = self.ledger.rollback() if since_block is None else since_block
        head = self.ledger.head()
        candidates = self.store.recorded_batches_from(fork if fork is not None else head + 1)
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
        if lost:
            self.reload()
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
                with self._clearing_lock:
                    self._clear(row.id)
            except Exception as exc:
                self._interval_errors[row.id] = f"clearing failed: {exc}"
                log.exception("recovery: clearing interval %s failed", row.id)
        try:
            unfinished = self.store.unfinished_intervals()
        except Exception:
            log.exception("recovery: the store cannot list unfinished batches")
            unfinished = []
        for interval_id in unfinished:
            try:
                with self._clearing_lock:
                    if self.record_batch(interval_id):
                        done.append(interval_id)
            except Exception:
                log.exception("recovery: recording interval %s failed", interval_id)
        return done

    def due_intervals(self) -> list[int]:
        """Intervals with open orders whose gate has closed (for the scheduler)."""
        now = self.ledger.now()
        ids = {o.interval_id for o in self.store.live_orders() if o.status == OrderStatus.OPEN}
        return sorted(i for i in ids if now >= self.gate_closure(i) and i not in self._closed)

    def follow_settlements(self) -> list[int]:
        """Mark recorded intervals settled once the keeper has settled them on chain."""
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
            self.events.publish("settlement", {"intervalId": row.id, "trades": len(info)})
        return settled

    def _close_due(self) -> None:
        for interval_id in self.due_intervals():
            try:
                self.close_interval(interval_id)
            except Conflict:
                pass
            except Exception as exc:  # the next intervals are still closed
                self._interval_errors[interval_id] = f"clearing failed: {exc}"
                log.exception("closing interval %s failed", interval_id)

    def _reclear_due(self) -> None:
        """One participant must not make an interval unrecordable: when a batch would revert
        (its order's nonce cancelled after the clearing, its deposit withdrawn, its trader
        deactivated) and nothing of the interval is on chain or in flight, the clearing is taken
        back and done again - its eligibility reads of the chain leave that order out, the Neural
        Grid validates the new set and signs new batches. At most ``max_reclears`` times per
        interval; then the batch stays failed (reported, backed off) until the chain's gate
        closure expires it."""
        for interval_id in sorted(self._reclear_wanted):
            self._reclear_wanted.discard(interval_id)
            done = self._reclears.get(interval_id, 0)
            if done >= self.config.max_reclears:
                continue
            # clearing lock before record lock, as close_interval takes them: the recorder
            # thread is not sending a batch of the interval while it is taken back
            with self._clearing_lock, self._record_lock:
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
                self._clear(interval_id)

    def _retry_batches(self) -> None:
        for interval_id in self.store.unfinished_intervals():
            try:
                with self._clearing_lock:
                    self.record_batch(interval_id, due_only=True)
            except Exception:
                log.exception("recording the batches of interval %s failed", interval_id)

    def tick(self) -> None:
        """One scheduler step: close due intervals, retry batches that are due, follow
        settlements. A failure in one step (or one interval) is logged and skips nothing else."""
        for what, step in (
            ("checking the chain for rollbacks", self.reconcile),
            ("clearing again intervals whose batches would revert", self._reclear_due),
            ("closing due intervals", self._close_due),
            ("recording batches", self._retry_batches),
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

    def batches(self, interval_id: int) -> list[BatchRow]:
        return self.store.batches(interval_id)

    def interval_error(self, interval_id: int) -> str | None:
        """Why the interval could not be cleared, while it is not."""
        return self._interval_errors.get(interval_id)

    def approved_candidates(self, interval_id: int) -> list[Candidate]:
        out = []
        for t in self.store.trades(interval_id):
            if t.verdict != 0:
                continue
            s = BookOrder(
                t.sell_hash,
                t.seller,
                typed.SELL,
                t.energy_wh,
                0,
                typed.ZERO_ADDRESS,
                0,
                t.seller_bus,
            )
            b = BookOrder(
                t.buy_hash, t.buyer, typed.BUY, t.energy_wh, 0, typed.ZERO_ADDRESS, 0, t.buyer_bus
            )
            out.append(Candidate(s, b, t.energy_wh, int(t.price_per_kwh), t.kind))
        return out

    # ---------------------------------------------------------- participants
    def request_connection(self, message: dict[str, Any], signature: str) -> Any:
        """A plug-and-play connection request signed by the wallet: hosting capacity at the bus is
        checked by the Neural Grid, then the grid operator key registers it on chain."""
        from backend.market.errors import ConnectionRefused

        msg = dict(message)
        for key in ("wallet", "meter"):
            typed.address_bytes(msg.get(key), key)
            msg[key] = checksum(msg[key])
        digest = self.registry_domain.digest("ConnectionRequest", msg)
        signer = typed.recover(digest, signature)
        wallet = msg["wallet"]
        if signer != wallet:
            raise BadSignature(f"the request is signed by {signer}, not the wallet {wallet}")
        now = self.ledger.now()
        if msg["expiry"] <= now:
            raise OrderExpired(f"the request expired at {msg['expiry']}; the chain time is {now}")
        if msg["meter"] == typed.ZERO_ADDRESS or msg["meter"] == wallet:
            raise InvalidOrder("the meter key must be its own non-zero address")
        existing = self.participant(wallet, fresh=True)
        if existing is not None:
            raise AlreadyConnected(f"{wallet} is already connected at bus {existing.bus_id}")
        bus_id, export_w, import_w = msg["busId"], msg["maxExportW"], msg["maxImportW"]
        if export_w >= 1 << 32 or import_w >= 1 << 32:
            raise InvalidOrder("connection limits must fit in 32 bits (W)")
        capacity: int | None = None
        refusal = ""
        code = "CONNECTION_REFUSED"
        if self.grid is not None:
            if bus_id not in self.grid.load_buses():
                refusal, code = f"bus {bus_id} is not a connectable bus of the grid", "UNKNOWN_BUS"
            else:
                capacity = self.grid.hosting_capacity_w(bus_id)
                if export_w > capacity:
                    refusal = (
                        f"the hosting capacity at bus {bus_id} is {capacity} W, "
                        f"less than the requested export of {export_w} W"
                    )
                    code = "HOSTING_CAPACITY"
        values = {
            "wallet": wallet,
            "meter": msg["meter"],
            "bus_id": bus_id,
            "max_export_w": export_w,
            "max_import_w": import_w,
            "hosting_capacity_w": capacity,
        }
        if refusal:
            self.store.save_connection(
                {**values, "status": "refused", "reason": refusal, "tx_hash": None}
            )
            self.events.publish(
                "participant", {"wallet": wallet, "status": "refused", "reason": refusal}
            )
            raise ConnectionRefused(refusal, code=code)
        tx_hash = self.ledger.connect(wallet, msg["meter"], bus_id, export_w, import_w)
        receipt = self.ledger.wait(tx_hash)
        if not receipt.ok:
            raise Conflict(
                f"the registry refused the connection (transaction {tx_hash} reverted)",
                code="REGISTRY_REFUSED",
            )
        self._participants.drop(wallet)
        self.store.save_connection(
            {**values, "status": "registered", "reason": "", "tx_hash": tx_hash}
        )
        self.events.publish(
            "participant", {"wallet": wallet, "status": "registered", "busId": bus_id}
        )
        return self.store.get_connection(wallet)
