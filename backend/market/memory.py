"""An in-memory ledger with the contract's rules that matter to the market (participants, balances,
cancelled nonces, ascending trade ids, escrow locks). For unit tests and chain-less experiments
only."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from eth_utils import to_checksum_address

from backend.chain import flex, protocol
from backend.chain.errors import ChainUnavailableError
from backend.market.errors import (
    AlreadyConnectedError,
    BatchRevertedError,
    BatchTooLargeError,
    DeviceInUseError,
    MeterInUseError,
    TraderInactiveError,
)
from backend.market.ports import (
    ChainTrade,
    ClearingReads,
    Device,
    IntervalSettlement,
    Participant,
    Receipt,
)


class MemoryLedger:
    def __init__(
        self,
        chain_id: int = 31337,
        market_address: str = "0x" + "11" * 20,
        registry_address: str = "0x" + "22" * 20,
        flex_address: str = "0x" + "33" * 20,
        start_time: int | None = None,
        interval_seconds: int = 900,
        gate_lead_seconds: int = 0,
    ) -> None:
        self.chain_id = chain_id
        self.interval_seconds = interval_seconds
        self.gate_lead_seconds = gate_lead_seconds
        self.market_address = to_checksum_address(market_address)
        self.registry_address = to_checksum_address(registry_address)
        self.flex_address = to_checksum_address(flex_address)
        self.clock_offset = 0 if start_time is None else start_time - int(time.time())
        self.participants: dict[str, Participant] = {}
        self.available: dict[str, int] = {}
        self.locked: dict[str, int] = {}
        self.cancelled: set[tuple[str, int]] = set()
        self.last_trade_id: dict[int, str] = {}
        self.batches: list[tuple[int, list[ChainTrade]]] = []
        self.settled: dict[int, IntervalSettlement] = {}
        self.debts: dict[str, int] = {}  # what a wallet owes the balancing account
        self.fail_sends = 0  # fail the next N record_trades calls (tests)
        self.batch_counts: dict[int, int] = {}  # interval -> attested batch count
        self.fork_block: int | None = None  # a rollback for the next ``rollback`` call (tests)
        self.gas_limit = 30_000_000
        # a rough recordTrades cost, so batches split as on a chain
        self.gas_per_trade, self.gas_per_order, self.gas_base = 30_000, 25_000, 60_000
        self.batch_txs: dict[tuple[int, int], Receipt] = {}
        self._tx = itertools.count(1)
        self.calls: list[str] = []
        self.devices: dict[str, Device] = {}
        self.remedy_caps: dict[str, int] = {}  # wallet -> base units per kWh (setRemedyCap)
        self.balancing = ""  # the balancing account (EnergyMarket.balancingAccount)
        # (interval, batch index) -> (packed activations, state: recorded / settled / reclaimed)
        self.activation_batches: dict[tuple[int, int], tuple[bytes, str]] = {}
        # what closed each batch, as ``activation_outcomes`` reports it
        self.activation_closed: dict[tuple[int, int], dict[str, Any]] = {}
        self.device_metered_w: dict[tuple[str, int], int] = {}  # (device, interval) -> W (tests)
        self.grid_mode_now = 0  # the registry's setGridMode: 0 grid-connected, 1 islanded

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    def head(self) -> int:
        return len(self.batches)

    def rollback(self) -> int | None:
        fork, self.fork_block = self.fork_block, None
        return fork

    def grid_mode(self) -> int:
        return self.grid_mode_now

    def grid_forming_devices(self) -> list[Device]:
        return [
            d for d in self.devices.values()
            if d.active and d.kind in protocol.GRID_FORMING_KINDS
        ]  # fmt: skip

    def gate_closure(self, interval_id: int) -> int:
        return max(0, interval_id * self.interval_seconds - self.gate_lead_seconds)

    def advance(self, seconds: int) -> None:
        self.clock_offset += seconds

    def add_participant(
        self,
        wallet: str,
        bus_id: int,
        max_export_w: int = 10_000,
        max_import_w: int = 10_000,
        deposit: int = 0,
        active: bool = True,
    ) -> None:
        wallet = to_checksum_address(wallet)
        self.participants[wallet] = Participant(
            wallet,
            "0x" + "00" * 19 + "01",
            bus_id,
            max_export_w,
            max_import_w,
            active,
            len(self.participants) + 1,
        )
        self.available[wallet] = self.available.get(wallet, 0) + deposit

    def participant(self, wallet: str) -> Participant | None:
        return self.participants.get(wallet)

    def available_balance(self, wallet: str) -> int:
        return self.available.get(wallet, 0)

    def debt_of(self, wallet: str) -> int:
        return self.debts.get(wallet, 0)

    def balancing_account(self) -> str:
        return self.balancing

    def nonce_cancelled(self, trader: str, nonce: int) -> bool:
        return (trader, nonce) in self.cancelled

    def clearing_reads(
        self,
        wallets: Sequence[str],
        nonces: Sequence[tuple[str, int]],
        balance_wallets: Sequence[str],
    ) -> ClearingReads:
        return ClearingReads(
            {w: self.participant(w) for w in wallets},
            frozenset(k for k in nonces if self.nonce_cancelled(*k)),
            {w: self.available_balance(w) for w in balance_wallets},
            {w: self.debt_of(w) for w in wallets},
        )

    def batch_recorded(self, interval_id: int, last_trade_id: str) -> bool:
        return int(self.last_trade_id.get(interval_id, "0x0"), 16) >= int(last_trade_id, 16)

    def _gas(self, trades: Sequence[ChainTrade]) -> int:
        orders = {repr(sorted(o.items())) for t in trades for o in (t.sell, t.buy)}
        return self.gas_base + self.gas_per_trade * len(trades) + self.gas_per_order * len(orders)

    def _check(
        self, interval_id: int, batch_index: int, batch_count: int, trades: Sequence[ChainTrade]
    ) -> None:
        """The contract's refusals that the market can meet: gate closure, batch sequence, trade
        order, deposits."""
        closure = self.gate_closure(interval_id)
        if self.now() > closure:
            raise BatchRevertedError(f"MarketGateClosed({interval_id}, {closure})")
        recorded = sum(1 for iv, _t in self.batches if iv == interval_id)
        if batch_index != recorded:
            raise BatchRevertedError(
                f"MarketBatchOutOfSequence({interval_id}, {recorded}, {batch_index})"
            )
        expected = self.batch_counts.get(interval_id, 0)
        if batch_count <= batch_index or (expected and batch_count != expected):
            raise BatchRevertedError(
                f"MarketBatchCountInvalid({interval_id}, {expected}, {batch_count})"
            )
        for t in trades:
            for order in (t.sell, t.buy):
                if (order["trader"], int(order["nonce"])) in self.cancelled:
                    who, nonce = order["trader"], order["nonce"]
                    raise BatchRevertedError(f"MarketOrderCancelled({who}, {nonce})")
                if t.verdict == 0 and self.debt_of(order["trader"]):
                    who, debt = order["trader"], self.debt_of(order["trader"])
                    raise BatchRevertedError(f"MarketAccountOwing({who}, {debt})")
        last = int(self.last_trade_id.get(interval_id, "0x0"), 16)
        for t in trades:
            if int(t.trade_id, 16) <= last:
                raise BatchRevertedError(f"MarketTradeOutOfOrder({t.trade_id})")
            last = int(t.trade_id, 16)
        need: dict[str, int] = {}
        for t in trades:
            if t.verdict == 0:
                buyer = t.buy["trader"]
                need[buyer] = need.get(buyer, 0) - (-t.energy_wh * t.price_per_kwh // 1000)
        for buyer, cost in need.items():
            if self.available.get(buyer, 0) < cost:
                raise BatchRevertedError(f"MarketInsufficientBalance({buyer})")

    def estimate_record_gas(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[ChainTrade],
        evidence_hash: str,
        signature: str,
    ) -> int:
        self.calls.append("estimate_record_gas")
        self._check(interval_id, batch_index, batch_count, trades)
        gas = self._gas(trades)
        if gas > self.gas_limit:
            raise BatchTooLargeError(f"{gas} gas does not fit in a block of {self.gas_limit}")
        return gas

    def block_gas_limit(self) -> int:
        return self.gas_limit

    def record_trades(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[ChainTrade],
        evidence_hash: str,
        signature: str,
        gas: int | None = None,
    ) -> str:
        self.calls.append("record_trades")
        if self.fail_sends:
            self.fail_sends -= 1
            raise ChainUnavailableError("simulated send failure")
        self._check(interval_id, batch_index, batch_count, trades)
        self.batch_counts[interval_id] = batch_count
        for t in trades:
            if t.verdict == 0:
                cost = -(-t.energy_wh * t.price_per_kwh // 1000)
                buyer = t.buy["trader"]
                self.available[buyer] -= cost
                self.locked[buyer] = self.locked.get(buyer, 0) + cost
        self.last_trade_id[interval_id] = trades[-1].trade_id
        index = sum(1 for iv, _t in self.batches if iv == interval_id)
        self.batches.append((interval_id, list(trades)))
        tx = "0x" + f"{next(self._tx):064x}"
        self.batch_txs[(interval_id, index)] = Receipt(tx, int(tx, 16), True, self._gas(trades))
        return tx

    def batch_transaction(self, interval_id: int, batch_index: int) -> Receipt | None:
        return self.batch_txs.get((interval_id, batch_index))

    def wait(self, tx_hash: str, timeout_s: float = 60.0) -> Receipt:
        for r in self.batch_txs.values():
            if r.tx_hash == tx_hash:
                return r
        return Receipt(tx_hash, int(tx_hash, 16), True)

    def interval_settlement(self, interval_id: int) -> IntervalSettlement | None:
        return self.settled.get(interval_id)

    def connect(
        self, wallet: str, meter: str, bus_id: int, max_export_w: int, max_import_w: int
    ) -> str:
        """Refuses as the registry contract does: a connected wallet, a meter in use."""
        if wallet in self.participants:
            raise AlreadyConnectedError(f"{wallet} is already connected")
        if any(p.meter == meter for p in self.participants.values()):
            raise MeterInUseError(f"the meter {meter} is already registered to another participant")
        self.participants[wallet] = Participant(
            wallet, meter, bus_id, max_export_w, max_import_w, True, len(self.participants) + 1
        )
        return "0x" + f"{next(self._tx):064x}"

    def device(self, device: str) -> Device | None:
        return self.devices.get(to_checksum_address(device))

    def register_device(
        self,
        device: str,
        owner: str,
        bus_id: int,
        kind: int,
        min_w: int,
        max_w: int,
        capacity_wh: int,
    ) -> str:
        """Refuses as the registry contract does: a key in use, an owner that is not active."""
        device, owner = to_checksum_address(device), to_checksum_address(owner)
        if device in self.devices or device in self.participants:
            raise DeviceInUseError(f"the key {device} is already a device, a wallet or a meter key")
        p = self.participants.get(owner)
        if p is None or not p.active:
            raise TraderInactiveError(f"{owner} is not an active participant", field="owner")
        self.devices[device] = Device(device, owner, bus_id, kind, True, min_w, max_w, capacity_wh)
        return "0x" + f"{next(self._tx):064x}"

    def remedy_cap(self, wallet: str, interval_id: int) -> int:
        # one cap for every interval: this ledger has no clock to stage a change by
        del interval_id
        return self.remedy_caps.get(to_checksum_address(wallet), 0)

    def record_activations(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> str:
        """Locks each share as FlexibilityMarket does (no signature or grid checks here)."""
        expected = sum(1 for iv, _b in self.activation_batches if iv == interval_id)
        if batch_index != expected:
            raise BatchRevertedError(
                f"FlexBatchOutOfSequence({interval_id}, {expected}, {batch_index})"
            )
        acts = flex.unpack(activations)
        needed: dict[str, int] = {}
        for a in acts:
            for payer, share in ((a.payer0, a.share0), (a.payer1, a.share1)):
                if share:
                    needed[payer] = needed.get(payer, 0) + share
        for payer, amount in needed.items():
            if self.available.get(payer, 0) < amount:
                raise BatchRevertedError(
                    f"MarketInsufficientBalance({payer}, {self.available.get(payer, 0)}, {amount})"
                )
        for payer, amount in needed.items():
            self.available[payer] -= amount
            self.locked[payer] = self.locked.get(payer, 0) + amount
        self.activation_batches[(interval_id, batch_index)] = (bytes(activations), "recorded")
        return "0x" + f"{next(self._tx):064x}"

    def estimate_record_activations_gas(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> int:
        expected = sum(1 for iv, _b in self.activation_batches if iv == interval_id)
        if batch_index != expected:
            raise BatchRevertedError(
                f"recordActivations would revert: "
                f"FlexBatchOutOfSequence({interval_id}, {expected}, {batch_index})"
            )
        return 28_609 * (len(activations) // flex.ACTIVATION_SIZE) + 60_000

    def activation_batch_state(self, interval_id: int, batch_index: int) -> int:
        _packed, state = self.activation_batches.get((interval_id, batch_index), (b"", "none"))
        return ("none", "recorded", "settled", "reclaimed").index(state)

    def activation_outcomes(
        self, interval_id: int, batch_index: int, activations: bytes
    ) -> dict[str, Any]:
        return dict(self.activation_closed.get((interval_id, batch_index), {}))

    def settle_activations(self, interval_id: int, batch_index: int, activations: bytes) -> str:
        """Pays on ``device_metered_w`` (a missing entry: no reading, nothing delivered)."""
        acts = self._open_activations(interval_id, batch_index, activations)
        outcomes: dict[str, tuple[int, int, int, int]] = {}
        for a in acts:
            metered = self.device_metered_w.get((a.offer["device"], interval_id))
            delivered = flex.delivered_w(
                a.offer["direction"], a.offer["baselineW"], a.activated_w, metered
            )
            paid = flex.payments(a.share0, a.share1, a.activated_w, delivered)
            self._release(a, paid)
            outcomes[self._activation_key(a)] = (
                0 if metered is None else metered, delivered, sum(paid),
                a.share0 + a.share1 - sum(paid),
            )  # fmt: skip
        self.activation_batches[(interval_id, batch_index)] = (bytes(activations), "settled")
        tx = "0x" + f"{next(self._tx):064x}"
        self.activation_closed[(interval_id, batch_index)] = {
            "tx_hash": tx, "reclaimed": False, "activations": outcomes
        }  # fmt: skip
        return tx

    def reclaim_activations(self, interval_id: int, batch_index: int, activations: bytes) -> str:
        outcomes: dict[str, tuple[int, int, int, int]] = {}
        for a in self._open_activations(interval_id, batch_index, activations):
            self._release(a, (0, 0))
            outcomes[self._activation_key(a)] = (0, 0, 0, a.share0 + a.share1)
        self.activation_batches[(interval_id, batch_index)] = (bytes(activations), "reclaimed")
        tx = "0x" + f"{next(self._tx):064x}"
        self.activation_closed[(interval_id, batch_index)] = {
            "tx_hash": tx, "reclaimed": True, "activations": outcomes
        }  # fmt: skip
        return tx

    def _activation_key(self, a: flex.Activation) -> str:
        return "0x" + a.activation_id(flex.domain(self.chain_id, self.flex_address)).hex()

    def _open_activations(
        self, interval_id: int, batch_index: int, activations: bytes
    ) -> list[flex.Activation]:
        packed, state = self.activation_batches.get((interval_id, batch_index), (b"", "none"))
        if state != "recorded":
            raise BatchRevertedError(f"FlexBatchNotOpen({interval_id}, {batch_index}, {state})")
        if packed != bytes(activations):
            raise BatchRevertedError(f"FlexBatchCommitmentMismatch({interval_id}, {batch_index})")
        return flex.unpack(packed)

    def _release(self, a: flex.Activation, paid: tuple[int, int]) -> None:
        provider = a.offer["provider"]
        for payer, share, part in ((a.payer0, a.share0, paid[0]), (a.payer1, a.share1, paid[1])):
            if share:
                self.locked[payer] -= share
                self.available[payer] += share - part
                self.available[provider] = self.available.get(provider, 0) + part

    def health(self) -> dict[str, Any]:
        return {
            "reachable": True,
            "chain_id": self.chain_id,
            "latest_block": len(self.batches),
            "contracts": {
                "EnergyMarket": self.market_address,
                "ParticipantRegistry": self.registry_address,
                "FlexibilityMarket": self.flex_address,
            },
        }
