"""Clearing an interval whose order book is closed: the eligible orders go through the auction's
rounds at the Neural Grid (``GridPort.clear``), the decided trades become ``ClearedTrade`` rows in
ascending trade-id order, and the trades are planned into batches within a share of the block gas
limit (by the measured gas model), each signed by the validator (``GridAttestation`` over its
index, count and every trade's amounts and verdict).

Crash safety: the clearing (trades, the batches and their attestations) is one transaction
committed *before* any batch is sent (``recorder``); a clearing that did not commit is made again
from the still-open orders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak

from backend.chain import eip712, flex, protocol
from backend.chain.errors import ChainUnavailableError
from backend.market import typed
from backend.market.activations import (
    FlexInput,
    FlexOption,
    PayerFunds,
    PlannedActivation,
    device_setpoints,
)
from backend.market.auction import BookOrder, Candidate, Clearing, Decision, clear
from backend.market.batching import GasModel, TradeSpec, order_count, split
from backend.market.config import MarketConfig
from backend.market.errors import BatchTooLargeError, MarketError, NotFoundError
from backend.market.events import EventBus
from backend.market.intake import Intake
from backend.market.models import BatchRow, BatchState, FlexStatus, OrderRow
from backend.market.ports import ChainTrade, GridPort, MarketLedger, Participant, SocSource
from backend.market.store import Store, trade_ids_json

log = logging.getLogger("tegrid.market")

GRID_CONNECTED = 0  # ParticipantRegistry.gridMode(): 0 grid-connected, 1 islanded
MODES_KEPT = 1024  # intervals whose grid mode is remembered (the oldest forgotten first)
# Activations per ``recordActivations`` batch (~42k gas each recorded and settled: a batch of 100
# is ~4.2M gas, well inside a block).
ACTIVATIONS_PER_BATCH = 100


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


@dataclass(frozen=True)
class ClearedTrade:
    """One trade of a clearing: the matched pair, its amounts and the grid's verdict, at its
    ``position`` in the interval (ascending ``trade_id``, as the contract wants them)."""

    trade_id: str
    interval_id: int
    position: int
    kind: str  # "bilateral" | "auction"
    sell_hash: str
    buy_hash: str
    seller: str
    buyer: str
    seller_bus: int
    buyer_bus: int
    energy_wh: int
    price_per_kwh: int
    verdict: int  # 0 approved, else the grid's reason code
    reason: str
    element: str
    veto_value: float | None = None  # a veto's binding element: its value (pu or %) ...
    veto_limit: float | None = None  # ... and the limit it would break

    @classmethod
    def decided(
        cls, interval_id: int, position: int, trade_id: str, c: Candidate, d: Decision
    ) -> ClearedTrade:
        return cls(
            trade_id=trade_id,
            interval_id=interval_id,
            position=position,
            kind=c.kind,
            sell_hash=c.sell.hash,
            buy_hash=c.buy.hash,
            seller=c.sell.trader,
            buyer=c.buy.trader,
            seller_bus=c.sell.bus,
            buyer_bus=c.buy.bus,
            energy_wh=c.energy_wh,
            price_per_kwh=c.price_per_kwh,
            verdict=d.reason_code,
            reason=d.reason,
            element=d.element[:40],
            veto_value=d.value,
            veto_limit=d.limit,
        )

    def spec(self) -> TradeSpec:
        return TradeSpec(
            self.trade_id, self.sell_hash, self.buy_hash, self.energy_wh, self.price_per_kwh,
            self.verdict,
        )  # fmt: skip

    def row(self) -> dict[str, Any]:
        """The store's columns of a new trade (``pending`` until its batch is on chain)."""
        return {
            "id": self.trade_id,
            "interval_id": self.interval_id,
            "position": self.position,
            "kind": self.kind,
            "sell_hash": self.sell_hash,
            "buy_hash": self.buy_hash,
            "seller": self.seller,
            "buyer": self.buyer,
            "seller_bus": self.seller_bus,
            "buyer_bus": self.buyer_bus,
            "energy_wh": self.energy_wh,
            "price_per_kwh": str(self.price_per_kwh),
            "verdict": self.verdict,
            "reason": self.reason,
            "element": self.element,
            "veto_value": self.veto_value,
            "veto_limit": self.veto_limit,
            "status": "pending",
        }

    def verdict_event(self) -> dict[str, Any]:
        return {
            "tradeId": self.trade_id,
            "intervalId": self.interval_id,
            "verdict": self.verdict,
            "reason": self.reason,
            # a veto's binding element, the value it would reach and the limit (as the trade)
            "element": self.element,
            "vetoValue": self.veto_value,
            "vetoLimit": self.veto_limit,
            "energyWh": self.energy_wh,
            "pricePerKWh": str(self.price_per_kwh),
            "seller": self.seller,
            "buyer": self.buyer,
        }


def activation_row(position: int, a: PlannedActivation, setpoint_w: int) -> dict[str, Any]:
    """The ``ActivationRow`` values of a planned activation (without interval and time);
    ``setpoint_w`` its device's target with every activation of the interval
    (``device_setpoints``)."""
    return {
        "id": a.activation_id,
        "position": position,
        "offer_hash": a.offer_hash,
        "provider": a.provider,
        "device": a.device,
        "bus_id": a.bus,
        "direction": a.direction,
        "activated_w": a.activated_w,
        "baseline_w": a.baseline_w,
        "setpoint_w": setpoint_w,
        "price_per_kwh": str(a.price_per_kwh),
        "trade_id": a.trade_id,
        "energy_wh": a.energy_wh,
        "cost": str(a.cost),
        "payers": json.dumps([[w, str(v)] for w, v in a.payers]),
    }


def activation_event(row: dict[str, Any]) -> dict[str, Any]:
    """The ``activation`` event of a stored activation row."""
    return {
        "activationId": row["id"],
        "offerHash": row["offer_hash"],
        "provider": row["provider"],
        "device": row["device"],
        "busId": row["bus_id"],
        "direction": row["direction"],
        "activatedW": row["activated_w"],
        "setpointW": row["setpoint_w"],
        "tradeId": row["trade_id"],
        "cost": row["cost"],
    }


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:  # the validation computes it again and says why
        log.warning("preparing the next interval's grid state failed: %s", exc)


class Clearer:
    """Clears closed intervals (one at a time: ``lock``) and plans their signed batches; holds the
    measured gas model the recorder keeps learning and why an interval could not be cleared."""

    def __init__(
        self,
        store: Store,
        ledger: MarketLedger,
        grid: GridPort | None,
        config: MarketConfig,
        events: EventBus,
        domain: typed.Domain,
        validator_key: str,
        intake: Intake,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.grid = grid
        self.config = config
        self.events = events
        self.domain = domain
        self.intake = intake
        self._validator_key = validator_key
        self.lock = threading.Lock()
        self._preparer: ThreadPoolExecutor | None = None
        # Why an interval could not be cleared (shown with the interval until it is).
        self._errors: dict[int, str] = {}
        # The chain's grid mode of each interval, read at its first clearing (gate closure) and
        # kept, so every round of that interval and its attestation use one mode.
        self._modes: dict[int, int] = {}
        self._units: dict[int, list[dict[str, Any]]] = {}  # islanded interval -> its units
        self.socs: SocSource | None = None  # the batteries' reported states of charge
        self.gas = GasModel()
        with contextlib.suppress(Exception):  # a store that cannot say just starts unmeasured
            for trades, orders, gas in reversed(store.recorded_batch_gas()):
                self.gas.learn(trades, orders, gas)

    def error(self, interval_id: int) -> str | None:
        """Why the interval could not be cleared, while it is not."""
        return self._errors.get(interval_id)

    def failed(self, interval_id: int, why: str) -> None:
        self._errors[interval_id] = why

    def prepare(self, interval_id: int) -> None:
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
        """Orders that can still go on chain: trader active and owing nothing, not expiring,
        nonce not cancelled, and buyer deposits that cover their worst case (later buy orders are
        dropped first)."""
        deadline = self.ledger.now() + self.config.expiry_margin_s
        wallets = list(dict.fromkeys(o.trader for o in rows))
        buyers = list(dict.fromkeys(o.trader for o in rows if o.side == protocol.BUY))
        pending = self._unrecorded_escrow(interval_id)
        # One fresh read of each trader, nonce and buyer deposit, batched (a clearing of 150
        # orders was ~300 sequential round trips).
        reads = self.ledger.clearing_reads(
            wallets, [(o.trader, int(o.nonce)) for o in rows], buyers
        )
        self.intake.remember(reads.participants, reads.balances, reads.debts)
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
            if reads.debts.get(o.trader, 0):  # the contract refuses an owing trader's orders
                continue
            if (o.trader, int(o.nonce)) in reads.cancelled:
                continue
            if o.side == protocol.BUY:
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
                    out[t.buyer] += protocol.escrow_of(t.energy_wh, int(t.price_per_kwh))
        return out

    def clear(self, interval_id: int) -> Clearing:
        """Clear a closed interval and store the outcome with its signed batches (one
        transaction); the caller holds ``lock``."""
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
        mode = self.mode_of(interval_id)
        if mode != GRID_CONNECTED and self.grid is not None:
            self.grid.set_mode(interval_id, True, self.island_units(interval_id))
        # The grid runs the clearing's rounds where it validates (a worker process: the whole
        # book goes over once), the remedies included; no grid approves everything.
        flex = None if self.grid is None else self._flex(interval_id, book)
        if self.grid is None:
            result = clear(book)
        elif flex is None:
            result = self.grid.clear(interval_id, book)
        else:
            result = self.grid.clear(interval_id, book, flex)
        # The contract wants each interval's trades in ascending tradeId order.
        decided = sorted(
            ((protocol.trade_id_hex(c.sell.hash, c.buy.hash), c, d) for c, d in result.trades),
            key=lambda t: int(t[0], 16),
        )
        trades = [
            ClearedTrade.decided(interval_id, pos, tid, c, d)
            for pos, (tid, c, d) in enumerate(decided)
        ]
        specs = [t.spec() for t in trades]
        orders = {o.hash: o for o in rows}
        batches = self.plan(interval_id, specs, result.evidence_hash, orders) if specs else []
        stats = {
            "clearing_price": None if result.clearing_price is None else str(result.clearing_price),
            "offered_wh": result.offered_wh,
            "bid_wh": result.bid_wh,
            "traded_wh": result.traded_wh,
            "vetoed_wh": result.vetoed_wh,
            "approved_count": len(result.approved),
            "vetoed_count": len(result.trades) - len(result.approved),
            "clearing_method": result.method[:200],
            "welfare": str(result.welfare),
            "grid_mode": mode,
        }
        targets = device_setpoints(result.activations)
        activations = [
            activation_row(pos, a, targets[a.device]) for pos, a in enumerate(result.activations)
        ]
        energy = {t.trade_id: t.energy_wh for t in trades}
        flex_batches = self.plan_activations(
            interval_id, result.activations, energy, result.evidence_hash
        )
        self.store.save_clearing(
            interval_id,
            [t.row() for t in trades],
            batches,
            result.fills(),
            stats,
            activations,
            flex_batches,
        )
        self._errors.pop(interval_id, None)
        self.intake.reload()
        self.events.publish(
            "clearing",
            {
                "intervalId": interval_id,
                "batches": len(batches),
                "activations": len(activations),
                "gridMode": mode,
                # the units an islanded interval ran with (`tegrid grid verify --units`)
                "islandUnits": self._units.get(interval_id) if mode != GRID_CONNECTED else None,
                **stats,
            },
        )
        for t in trades:
            self.events.publish("verdict", t.verdict_event())
        for a in activations:
            self.events.publish("activation", activation_event(a))
        return result

    def plan_activations(
        self,
        interval_id: int,
        planned: Sequence[PlannedActivation],
        trade_energy_wh: dict[str, int],
        evidence_hash: str,
    ) -> list[dict[str, Any]]:
        """The interval's activations as signed ``recordActivations`` batches: each one packed
        with its provider's signed offer (``backend.chain.flex``), in the contract's ascending
        (offerHash, tradeId) order across batches of at most ``ACTIVATIONS_PER_BATCH``, and
        attested by the validator (``FlexAttestation``) with the clearing's evidence hash - the
        one the trades' attestations carry."""
        if not planned:
            return []
        dom = flex.domain(self.ledger.chain_id, self.ledger.flex_address)
        acts = []
        for a in planned:
            offer = self.store.get_flex_offer(a.offer_hash)
            if offer is None:  # the clearing took it from the store a moment ago
                raise MarketError(f"flexibility offer {a.offer_hash} of {a.activation_id} is gone")
            message = {
                "provider": offer.provider, "device": offer.device,
                "intervalId": offer.interval_id, "direction": offer.direction,
                "powerW": offer.power_w, "baselineW": offer.baseline_w,
                "pricePerKWh": int(offer.price_per_kwh), "nonce": int(offer.nonce),
                "expiry": int(offer.expiry),
            }  # fmt: skip
            (payer0, share0), *rest = a.payers
            payer1, share1 = rest[0] if rest else (protocol.ZERO_ADDRESS, 0)
            acts.append(
                flex.Activation(
                    message,
                    bytes.fromhex(offer.signature[2:]),
                    a.activated_w,
                    payer0,
                    int(share0),
                    bytes.fromhex(a.trade_id[2:]),
                    trade_energy_wh.get(a.trade_id, 0),
                    payer1,
                    int(share1),
                )
            )
        ordered = sorted(acts, key=lambda x: flex.sort_key(dom, x))
        chunks = [
            ordered[i : i + ACTIVATIONS_PER_BATCH]
            for i in range(0, len(ordered), ACTIVATIONS_PER_BATCH)
        ]
        evidence = bytes.fromhex(evidence_hash[2:])
        out = []
        for index, chunk in enumerate(chunks):
            packed = b"".join(x.pack() for x in chunk)
            sig = flex.attest(self._validator_key, dom, interval_id, index, packed, evidence)
            out.append(
                {
                    "batch_index": index,
                    "batch_count": len(chunks),
                    "state": BatchState.PENDING,
                    "evidence_hash": evidence_hash,
                    "attestation_signature": "0x" + sig.hex(),
                    "activation_ids": json.dumps(
                        ["0x" + x.activation_id(dom).hex() for x in chunk]
                    ),
                    "packed": "0x" + packed.hex(),
                }
            )
        return out

    def _flex(self, interval_id: int, book: Sequence[BookOrder]) -> FlexInput | None:
        """What the remedy search needs: the interval's open offers whose device the registry
        still lists as active and owned by the provider (at its registered bus), the traders'
        remedy caps and - for those with a cap - available balances less other intervals'
        unrecorded escrow, and the DSO service's budget and account. None without offers."""
        rows = self.store.list_flex_offers(interval_id, None, FlexStatus.OPEN, 10**6, 0)
        offers: list[FlexOption] = []
        for r in rows:
            device = self.ledger.device(r.device)
            if device is None or not device.active or device.owner != r.provider:
                continue
            offers.append(
                FlexOption(
                    r.hash,
                    r.provider,
                    r.device,
                    device.bus_id,
                    r.direction,
                    r.power_w,
                    r.baseline_w,
                    int(r.price_per_kwh),
                    r.seq,
                )
            )
        if not offers:
            return None
        pending = self._unrecorded_escrow(interval_id)
        payers: dict[str, PayerFunds] = {}
        for wallet in dict.fromkeys(o.trader for o in book):
            cap = self.ledger.remedy_cap(wallet, interval_id)
            if cap > 0:
                available = self.ledger.available_balance(wallet) - pending.get(wallet, 0)
                payers[wallet.lower()] = PayerFunds(cap, max(0, available))
        account = ""
        if self.config.dso_flex_budget > 0:
            account = self.ledger.balancing_account()
            available = self.ledger.available_balance(account) - pending.get(account, 0)
            payers[account.lower()] = PayerFunds(0, max(0, available))
        return FlexInput(tuple(offers), payers, account, self.config.dso_flex_budget)

    def island_units(self, interval_id: int) -> list[dict[str, Any]] | None:
        """The grid-forming units an islanded interval runs with, from the registry (read at its
        first clearing, kept like its mode): every active genset, and the active battery with
        the most energy (capacity, then power, then address) as the master - one battery at
        most (``grid.island``): the members' home batteries registered for flexibility are no
        match for the powerhouse's and are left out, logged - with its limits, its capacity and
        its latest reported state of charge (at the start of the first interval after the
        report; with no report, half full at the start of the day, the walk from there). None:
        no registered units, the network's own."""
        kept = self._units.get(interval_id)
        if kept is not None:
            return kept or None
        units: list[dict[str, Any]] = []
        battery = False
        seconds = self.config.interval_seconds
        devices = sorted(
            self.ledger.grid_forming_devices(),
            key=lambda d: (d.kind != protocol.DEVICE_BATTERY, -d.capacity_wh, -d.max_w,
                           d.device.lower()),
        )  # fmt: skip
        for d in devices:
            unit: dict[str, Any] = {
                "name": d.device, "bus": d.bus_id, "min_kw": d.min_w / 1000,
                "max_kw": d.max_w / 1000, "device": d.device,
            }  # fmt: skip
            if d.kind == protocol.DEVICE_BATTERY:
                if battery:
                    log.warning("interval %d: battery %s left out (one forms the island)",
                                interval_id, d.device)  # fmt: skip
                    continue
                battery = True
                report = self.socs.soc(d.device) if self.socs is not None else None
                soc_wh = d.capacity_wh // 2 if report is None else report.soc_wh
                unit.update(
                    kind="battery",
                    capacity_kwh=d.capacity_wh / 1000,
                    soc_kwh=min(max(soc_wh, 0), d.capacity_wh) / 1000,
                    soc_interval=None if report is None else -(-report.at // seconds),
                )
            else:
                unit["kind"] = "genset"
            units.append(unit)
        units.sort(key=lambda u: u["kind"] != "battery")  # the master first
        self._units[interval_id] = units
        if len(self._units) > MODES_KEPT:
            self._units.pop(min(self._units))
        return units or None

    def mode_of(self, interval_id: int) -> int:
        """The grid mode the interval is validated in: the chain's at its first clearing (kept
        in memory and stored with the clearing, so a clearing again after a restart uses it)."""
        mode = self._modes.get(interval_id)
        if mode is None:
            row = self.store.get_interval(interval_id)
            stored = None if row is None else row.grid_mode
            mode = int(self.ledger.grid_mode()) if stored is None else int(stored)
            self._modes[interval_id] = mode
            if len(self._modes) > MODES_KEPT:
                self._modes.pop(min(self._modes))
        return mode

    def approved_candidates(self, interval_id: int) -> list[Candidate]:
        """The interval's approved trades as the grid's candidates (for its status view)."""
        out = []
        for t in self.store.trades(interval_id):
            if t.verdict != 0:
                continue
            s = BookOrder(
                t.sell_hash,
                t.seller,
                protocol.SELL,
                t.energy_wh,
                0,
                protocol.ZERO_ADDRESS,
                0,
                t.seller_bus,
            )
            b = BookOrder(
                t.buy_hash,
                t.buyer,
                protocol.BUY,
                t.energy_wh,
                0,
                protocol.ZERO_ADDRESS,
                0,
                t.buyer_bus,
            )
            out.append(Candidate(s, b, t.energy_wh, int(t.price_per_kwh), t.kind))
        return out

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
                    "gas_planned": self.gas.predict(size, orders),
                    "attempts": 0,
                }
            )
        return out

    def plan(
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
        except (MarketError, ChainUnavailableError) as exc:
            log.warning("block gas limit unknown (%s): probe-sized batches", exc)
            sizes = split(specs, lambda t, _o: t <= self.config.probe_trades)
            return self._signed_batches(interval_id, specs, sizes, evidence_hash)
        budget = int(limit * self.config.batch_gas_share)
        batches: list[dict[str, Any]] = []
        probe = self.config.probe_trades

        def fits(t: int, o: int) -> bool:
            need = self.gas.predict(t, o)
            return t <= probe if need is None else need <= budget

        for _round in range(4):
            measured = self.gas.known
            sizes = split(specs, fits)
            batches = self._signed_batches(interval_id, specs, sizes, evidence_hash)
            first = specs[: sizes[0]]
            try:
                gas = self.ledger.estimate_record_gas(
                    interval_id,
                    0,
                    len(sizes),
                    self.chain_trades(first, orders),
                    evidence_hash,
                    batches[0]["attestation_signature"],
                )
            except BatchTooLargeError:
                self.gas.learn(len(first), order_count(first), limit)
                continue
            except (MarketError, ChainUnavailableError) as exc:  # a revert or the chain away
                log.warning("interval %s: first batch not measured: %s", interval_id, exc)
                return batches
            self.gas.learn(len(first), order_count(first), gas)
            if (measured or len(sizes) == 1) and gas <= budget:
                return batches
        return batches

    def chain_trades(
        self, specs: Sequence[TradeSpec], orders: dict[str, OrderRow]
    ) -> list[ChainTrade]:
        """The trades as ``recordTrades`` takes them, with both signed orders."""
        missing = [h for t in specs for h in (t.sell_hash, t.buy_hash) if h not in orders]
        if missing:
            raise NotFoundError(f"no order {missing[0]}")
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

    def specs(self, ids: Sequence[str]) -> list[TradeSpec]:
        """The stored trades with these ids, in this order."""
        rows = self.store.trades_by_id(ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise NotFoundError(f"no trade {missing[0]}")
        return [
            TradeSpec(t.id, t.sell_hash, t.buy_hash, t.energy_wh, int(t.price_per_kwh), t.verdict)
            for t in (rows[i] for i in ids)
        ]

    def orders_of(self, specs: Sequence[TradeSpec]) -> dict[str, OrderRow]:
        return self.store.get_orders([h for t in specs for h in (t.sell_hash, t.buy_hash)])

    def batch_input(self, b: BatchRow) -> list[ChainTrade]:
        """A stored batch's trades as ``recordTrades`` takes them."""
        specs = self.specs(json.loads(b.trade_ids))
        return self.chain_trades(specs, self.orders_of(specs))
