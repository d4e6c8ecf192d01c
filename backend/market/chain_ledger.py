"""The market's ledger over the deployed contracts (``backend.chain``): reads through web3, the
batch
sent with the market-operator key, connections registered with the grid-operator key.

The chain's clock: the latest block's timestamp, refreshed at most once a second, carried forward
with
the wall clock in between (and never behind wall time plus the skew a dev chain was moved forward
by).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from eth_typing import HexStr
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from backend.chain import batches, flex
from backend.chain.address import checksum
from backend.chain.batches import CandidateTrade
from backend.chain.client import (
    AbiFunction,
    ChainClient,
    EncodedCall,
    batch_eth_call,
    revert_data,
)
from backend.chain.contracts import Deployment, contract_at
from backend.chain.eip712 import to_compact
from backend.chain.errors import ChainUnavailableError, LedgerError, TransactionRevertedError
from backend.chain.heads import HeadWatcher
from backend.chain.imbalance import IntervalImbalance
from backend.chain.imbalance import from_receipt as settled_imbalance
from backend.chain.registry import GridModeLog
from backend.market.errors import (
    AlreadyConnectedError,
    BatchRevertedError,
    BatchTooLargeError,
    DeviceInUseError,
    InvalidOrderError,
    MarketError,
    MeterInUseError,
    TraderInactiveError,
    WrongBusError,
)
from backend.market.ports import (
    ChainTrade,
    ClearingReads,
    Device,
    IntervalSettlement,
    Participant,
    Receipt,
)

# JSON-RPC batch size for clearing reads (nodes cap batches: Geth at 1000 requests by default).
READ_BATCH = 250


def _participant(wallet: str, raw: Sequence[Any]) -> Participant | None:
    meter, index, bus_id, active, max_export_w, max_import_w = raw
    if int(index) == 0:
        return None
    return Participant(
        wallet,
        checksum(meter),
        int(bus_id),
        int(max_export_w),
        int(max_import_w),
        bool(active),
        int(index),
    )


def _registry_refusal(error_name: str | None, wallet: str, meter: str) -> MarketError | None:
    """The market error for a custom error ``ParticipantRegistry.connect`` reverted with (the
    request's fault, not the chain's), or None."""
    if error_name == "RegistryMeterInUse":
        return MeterInUseError(f"the meter {meter} is already registered to another participant")
    if error_name == "RegistryAlreadyConnected":
        return AlreadyConnectedError(f"{wallet} is already connected")
    if error_name == "RegistryZeroAddress":
        return InvalidOrderError("the wallet and the meter must be non-zero addresses")
    return None


def _device_refusal(exc: TransactionRevertedError, device: str, owner: str) -> MarketError | None:
    """The market error for a custom error ``ParticipantRegistry.registerDevice`` reverted with
    (the request's fault), or None. The checks before the send catch these first; this answers a
    race (another registration, a deactivation) in between."""
    name = exc.error_name
    if name == "RegistryKeyInUse":
        return DeviceInUseError(f"the key {device} is already a device, a wallet or a meter key")
    if name == "RegistryOwnerNotActive":
        return TraderInactiveError(f"{owner} is not an active participant", field="owner")
    if name == "RegistryDeviceBus":
        return WrongBusError("the device must sit at its owner's bus")
    if name in ("RegistryUnknownDeviceKind", "RegistryDeviceLimits", "RegistryDeviceCapacity"):
        return InvalidOrderError(f"the registry refused the device: {name}")
    return None


def _compact(signature: str) -> tuple[bytes, bytes]:
    return to_compact(bytes.fromhex(signature[2:]))


class ChainLedger:
    def __init__(
        self,
        deployment: Deployment,
        operator: ChainClient,
        grid_operator: ChainClient | None = None,
        clock_ttl_s: float = 1.0,
    ) -> None:
        self.deployment = deployment
        self.operator = operator
        self.grid_operator = grid_operator or operator
        self.w3 = operator.w3
        self.chain_id = deployment.chain_id
        self.market_address = deployment.address("EnergyMarket")
        self.registry_address = deployment.address("ParticipantRegistry")
        self.market = contract_at(self.w3, "EnergyMarket", self.market_address)
        self.registry = contract_at(self.w3, "ParticipantRegistry", self.registry_address)
        self.readings = contract_at(self.w3, "MeterReadings", deployment.address("MeterReadings"))
        self.flex_address = deployment.address("FlexibilityMarket")
        self.flexibility = contract_at(self.w3, "FlexibilityMarket", self.flex_address)
        self._remedy_cap_at = AbiFunction(self.flexibility, "remedyCapAt")
        self._participant_of = AbiFunction(self.registry, "participantOf")
        self._filled_of = AbiFunction(self.market, "filledOf")
        self._balance_of = AbiFunction(self.market, "balanceOf")
        self._debt_of = AbiFunction(self.market, "debtOf")
        self._balancing: str | None = None  # immutable on chain: read once
        self._clock_ttl_s = clock_ttl_s
        self._clock_lock = threading.Lock()
        self._block_ts = 0
        self._skew = 0.0
        self._fetched = 0.0
        self._receipts: dict[str, Receipt] = {}
        self._gate_lead: int | None = None
        self._heads = HeadWatcher(self.w3)

    def _rpc(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except MarketError:
            raise
        except LedgerError as exc:
            raise ChainUnavailableError(f"{what}: {exc}") from exc
        except Exception as exc:  # web3 raises a zoo of transport/value errors
            raise ChainUnavailableError(f"{what} failed: {exc}") from exc

    def grid_mode(self) -> int:
        mode = self._rpc("reading the grid mode", lambda: self.registry.functions.gridMode().call())
        return int(mode[0])

    def grid_forming_devices(self) -> list[Device]:
        log = GridModeLog(self.w3, self.registry_address)
        records = self._rpc(
            "reading the grid-forming devices", lambda: log.grid_forming(self.deployment.block)
        )
        return [
            Device(r.device, r.owner, r.bus_id, r.kind, r.active, r.min_w, r.max_w, r.capacity_wh)
            for r in records
            if r.owner is not None
        ]

    # ------------------------------------------------------------------ clock
    def now(self) -> int:
        wall = time.time()
        with self._clock_lock:
            if time.monotonic() - self._fetched > self._clock_ttl_s:
                block = self._rpc(
                    "reading the latest block", lambda: self.w3.eth.get_block("latest")
                )
                self._block_ts = int(block["timestamp"])
                self._skew = max(0.0, self._block_ts - wall)
                self._fetched = time.monotonic()
            return max(self._block_ts, int(wall + self._skew))

    def invalidate_clock(self) -> None:
        with self._clock_lock:
            self._fetched = 0.0

    # ------------------------------------------------------------------ reads
    def participant(self, wallet: str) -> Participant | None:
        p = self._rpc(
            "reading the registry",
            lambda: self._participant_of.call(self.w3, checksum(wallet)),
        )
        return _participant(checksum(wallet), p)

    def available_balance(self, wallet: str) -> int:
        available, _locked = self._rpc(
            "reading a balance",
            lambda: self._balance_of.call(self.w3, checksum(wallet)),
        )
        return int(available)

    def balancing_account(self) -> str:
        if self._balancing is None:
            account = self._rpc(
                "reading the balancing account",
                lambda: self.market.functions.balancingAccount().call(),
            )
            self._balancing = checksum(account)
        return self._balancing

    def debt_of(self, wallet: str) -> int:
        debt = self._rpc("reading a debt", lambda: self._debt_of.call(self.w3, checksum(wallet)))
        return int(debt)

    def nonce_cancelled(self, trader: str, nonce: int) -> bool:
        _filled, cancelled = self._rpc(
            "reading a nonce", lambda: self.market.functions.filledOf(trader, nonce).call()
        )
        return bool(cancelled)

    def clearing_reads(
        self,
        wallets: Sequence[str],
        nonces: Sequence[tuple[str, int]],
        balance_wallets: Sequence[str],
    ) -> ClearingReads:
        """The registry entries, nonce states, deposits and debts one clearing needs, as JSON-RPC
        batches of ``eth_call`` (one HTTP round trip per ``READ_BATCH`` calls instead of one per
        read)."""
        wallets = [checksum(w) for w in wallets]
        nonces = [(checksum(t), int(n)) for t, n in nonces]
        balance_wallets = [checksum(w) for w in balance_wallets]
        calls: list[tuple[AbiFunction, str]] = [
            (self._participant_of, self._participant_of.data(w)) for w in wallets
        ]
        calls += [(self._filled_of, self._filled_of.data(t, n)) for t, n in nonces]
        calls += [(self._balance_of, self._balance_of.data(w)) for w in balance_wallets]
        calls += [(self._debt_of, self._debt_of.data(w)) for w in wallets]
        results: list[Any] = []
        for i in range(0, len(calls), READ_BATCH):
            chunk = calls[i : i + READ_BATCH]
            raw = self._rpc("reading the clearing's participants", lambda c=chunk: self._calls(c))
            results += [fn.decode(r) for (fn, _d), r in zip(chunk, raw, strict=True)]
        it = iter(results)
        participants = {w: _participant(w, next(it)) for w in wallets}
        cancelled = frozenset(k for k in nonces if bool(next(it)[1]))
        balances = {w: int(next(it)[0]) for w in balance_wallets}
        debts = {w: int(next(it)) for w in wallets}
        return ClearingReads(participants, cancelled, balances, debts)

    def _calls(self, calls: Sequence[tuple[AbiFunction, str]]) -> list[str]:
        """``eth_call`` results (hex) of ``calls`` at the latest block, as one JSON-RPC batch."""
        raw = batch_eth_call(self.w3, [(fn.address, data) for fn, data in calls])
        for (fn, _data), result in zip(calls, raw, strict=True):
            if result is None:
                raise LedgerError(f"eth_call to {fn.address} failed during the clearing reads")
        return raw  # type: ignore[return-value]

    def interval_state(self, interval_id: int) -> tuple[str, int, int, bool]:
        state = self._rpc(
            "reading an interval", lambda: self.market.functions.intervalOf(interval_id).call()
        )
        # lastTradeId, batchCount, approvedCount, expectedBatches, settledBatches, settled,
        # reclaimed, shortPriceBps, longPriceBps
        last, batches, approved, settled = state[0], state[1], state[2], state[5]
        return "0x" + bytes(last).hex(), int(batches), int(approved), bool(settled)

    def head(self) -> int:
        return int(self._rpc("reading the head", lambda: self.w3.eth.block_number))

    def rollback(self) -> int | None:
        rollback = self._rpc("checking the head", self._heads.check)
        return None if rollback is None else int(rollback.fork_block)

    def gate_closure(self, interval_id: int) -> int:
        """The chain's gate closure of an interval: ``recordTrades`` is refused after it."""
        if self._gate_lead is None:
            self._gate_lead = int(
                self._rpc(
                    "reading the gate lead", lambda: self.market.functions.gateLeadSeconds().call()
                )
            )
        return max(0, interval_id * self.deployment.interval_seconds - self._gate_lead)

    def batch_recorded(self, interval_id: int, last_trade_id: str) -> bool:
        last, batches, _approved, _settled = self.interval_state(interval_id)
        return batches > 0 and int(last, 16) >= int(last_trade_id, 16)

    # ----------------------------------------------------------- transactions
    def _record_call(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[ChainTrade],
        evidence_hash: str,
        signature: str,
    ) -> EncodedCall:
        """``recordTrades`` calldata from the one encoder (``backend.chain.batches``)."""
        candidates = [
            CandidateTrade(
                t.sell, t.buy, _compact(t.sell_signature), _compact(t.buy_signature),
                t.energy_wh, t.price_per_kwh, t.verdict,
            )
            for t in trades
        ]  # fmt: skip
        orders, rows = batches.record_args(candidates)
        evidence, sig = bytes.fromhex(evidence_hash[2:]), bytes.fromhex(signature[2:])
        data = batches.record_trades_calldata(
            interval_id, batch_index, batch_count, orders, rows, evidence, sig
        )
        return EncodedCall(self.w3, self.market_address, "0x" + data.hex())

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
        def send() -> Any:
            fn = self._record_call(
                interval_id, batch_index, batch_count, trades, evidence_hash, signature
            )
            if gas is not None:
                return self.operator.transact(fn, gas)
            return self.operator.transact(fn, bounded=True)

        try:
            receipt = self._rpc("recordTrades", send)
        except ChainUnavailableError as exc:
            if isinstance(exc.__cause__, TransactionRevertedError):
                raise BatchRevertedError(
                    f"recordTrades reverted: {exc.__cause__}"
                ) from exc.__cause__
            raise
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        ok = receipt["status"] == 1
        self._receipts[tx_hash] = Receipt(
            tx_hash, int(receipt["blockNumber"]), ok, int(receipt["gasUsed"])
        )
        return tx_hash

    def estimate_record_gas(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[ChainTrade],
        evidence_hash: str,
        signature: str,
    ) -> int:
        fn = self._record_call(
            interval_id, batch_index, batch_count, trades, evidence_hash, signature
        )
        try:
            return fn.estimate_gas({"from": self.operator.address})
        except ContractLogicError as exc:
            data = revert_data(exc)
            why = self.operator.decoder.describe(data) if data else str(exc.message or exc)
            raise BatchRevertedError(f"recordTrades would revert: {why}") from None
        except Exception as exc:
            text = str(exc).lower()
            if "gas" in text and any(w in text for w in ("exceed", "out of gas", "allowance")):
                raise BatchTooLargeError(
                    f"recordTrades of {len(trades)} trades does not fit in a block "
                    f"({self.block_gas_limit()} gas): {exc}"
                ) from None
            raise ChainUnavailableError(f"estimating recordTrades failed: {exc}") from exc

    def block_gas_limit(self) -> int:
        block = self._rpc("reading the latest block", lambda: self.w3.eth.get_block("latest"))
        return int(block["gasLimit"])

    def batch_transaction(self, interval_id: int, batch_index: int) -> Receipt | None:
        def fetch() -> Receipt | None:
            logs = self.market.events.BatchRecorded.get_logs(
                argument_filters={"intervalId": interval_id}, from_block=self.deployment.block
            )
            for log in logs:
                if int(log["args"]["batchIndex"]) == batch_index:
                    tx = "0x" + bytes(log["transactionHash"]).hex()
                    receipt = self.w3.eth.get_transaction_receipt(log["transactionHash"])
                    return Receipt(tx, int(log["blockNumber"]), True, int(receipt["gasUsed"]))
            return None

        return self._rpc("reading BatchRecorded logs", fetch)

    def wait(self, tx_hash: str, timeout_s: float = 60.0) -> Receipt:
        hit = self._receipts.pop(tx_hash, None)
        if hit is not None:
            return hit
        r = self._rpc(
            "waiting for a receipt",
            lambda: self.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=timeout_s),
        )
        return Receipt(tx_hash, int(r["blockNumber"]), r["status"] == 1, int(r["gasUsed"]))

    def connect(
        self, wallet: str, meter: str, bus_id: int, max_export_w: int, max_import_w: int
    ) -> str:
        fn = self.registry.functions.connect(
            checksum(wallet),
            checksum(meter),
            bus_id,
            max_export_w,
            max_import_w,
        )

        return self._registry_transact(
            "connecting a participant",
            fn,
            lambda exc: _registry_refusal(exc.error_name, checksum(wallet), checksum(meter)),
        )

    def _registry_transact(
        self,
        what: str,
        fn: Any,
        refusal_of: Callable[[TransactionRevertedError], MarketError | None],
    ) -> str:
        """Send ``fn`` with the grid operator key; a revert the registry explains becomes that
        refusal (``refusal_of``), anything else is raised as it is. Returns the tx hash."""

        def send() -> Any:
            try:
                return self.grid_operator.transact(fn)
            except TransactionRevertedError as exc:
                refusal = refusal_of(exc)
                if refusal is None:
                    raise
                raise refusal from exc

        receipt = self._rpc(what, send)
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        self._receipts[tx_hash] = Receipt(
            tx_hash, int(receipt["blockNumber"]), receipt["status"] == 1
        )
        return tx_hash

    # ------------------------------------------------------------------ flexibility
    def remedy_cap(self, wallet: str, interval_id: int) -> int:
        cap = self._rpc(
            "reading a remedy cap",
            lambda: self._remedy_cap_at.call(self.w3, checksum(wallet), interval_id),
        )
        return int(cap)

    def _record_activations_call(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> Any:
        """The ``recordActivations`` call both the send and the estimate make."""
        return self.flexibility.functions.recordActivations(
            interval_id,
            batch_index,
            bytes(activations),
            bytes.fromhex(evidence_hash[2:]),
            bytes.fromhex(signature[2:]),
        )

    def record_activations(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> str:
        fn = self._record_activations_call(
            interval_id, batch_index, activations, evidence_hash, signature
        )
        return self._flex_transact("recordActivations", fn)

    def estimate_record_activations_gas(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> int:
        fn = self._record_activations_call(
            interval_id, batch_index, activations, evidence_hash, signature
        )
        try:
            return int(fn.estimate_gas({"from": self.operator.address}))
        except ContractLogicError as exc:
            data = revert_data(exc)
            why = self.operator.decoder.describe(data) if data else str(exc.message or exc)
            raise BatchRevertedError(f"recordActivations would revert: {why}") from None
        except Exception as exc:
            raise ChainUnavailableError(f"estimating recordActivations failed: {exc}") from exc

    def activation_batch_state(self, interval_id: int, batch_index: int) -> int:
        _commitment, state = self._rpc(
            "reading an activation batch",
            lambda: self.flexibility.functions.batchOf(interval_id, batch_index).call(),
        )
        return int(state)

    def activation_outcomes(
        self, interval_id: int, batch_index: int, activations: bytes
    ) -> dict[str, Any]:
        """What closed the batch (``ActivationBatchClosed``): its transaction and per activation
        id its (metered W, delivered W, paid, refunded) - the event's deliveries in batch order,
        the payments by the contract's rule (``flex.payments``) from the recorded
        ``activations``."""
        acts_in = flex.unpack(activations)
        dom = flex.domain(self.chain_id, self.flex_address)

        def read() -> dict[str, Any]:
            ev = self.flexibility.events
            closed = [
                e
                for e in ev.ActivationBatchClosed.get_logs(
                    from_block=self.deployment.block,
                    argument_filters={"intervalId": interval_id},
                )
                if int(e["args"]["batchIndex"]) == batch_index
            ]
            if not closed:
                return {}
            args = closed[-1]["args"]
            tx = closed[-1]["transactionHash"]
            out: dict[str, Any] = {"tx_hash": "0x" + bytes(tx).hex().removeprefix("0x")}
            reclaimed = bool(args["reclaimed"])
            out["activations"] = flex.outcomes(
                dom, acts_in, None if reclaimed else bytes(args["deliveries"])
            )
            out["reclaimed"] = reclaimed
            return out

        return self._rpc("reading an activation batch's settlement", read)

    def settle_activations(self, interval_id: int, batch_index: int, activations: bytes) -> str:
        fn = self.flexibility.functions.settleActivations(
            interval_id, batch_index, flex.records(activations)
        )
        return self._flex_transact("settleActivations", fn)

    def reclaim_activations(self, interval_id: int, batch_index: int, activations: bytes) -> str:
        fn = self.flexibility.functions.reclaimActivations(
            interval_id, batch_index, flex.records(activations)
        )
        return self._flex_transact("reclaimActivations", fn)

    def _flex_transact(self, what: str, fn: Any) -> str:
        """Send a FlexibilityMarket call with the operator key; a revert raises
        ``BatchRevertedError`` with the decoded reason. Returns the tx hash."""
        try:
            receipt = self._rpc(what, lambda: self.operator.transact(fn, bounded=True))
        except ChainUnavailableError as exc:
            if isinstance(exc.__cause__, TransactionRevertedError):
                raise BatchRevertedError(f"{what} reverted: {exc.__cause__}") from exc.__cause__
            raise
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        self._receipts[tx_hash] = Receipt(
            tx_hash, int(receipt["blockNumber"]), receipt["status"] == 1, int(receipt["gasUsed"])
        )
        return tx_hash

    def device(self, device: str) -> Device | None:
        key = checksum(device)
        owner, bus_id, kind, active, min_w, max_w, capacity_wh = self._rpc(
            "reading a device", lambda: self.registry.functions.deviceOf(key).call()
        )
        if int(owner, 16) == 0:
            return None
        return Device(
            key, checksum(owner), int(bus_id), int(kind), bool(active),
            int(min_w), int(max_w), int(capacity_wh),
        )  # fmt: skip

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
        device, owner = checksum(device), checksum(owner)
        fn = self.registry.functions.registerDevice(
            device, owner, bus_id, kind, min_w, max_w, capacity_wh
        )

        return self._registry_transact(
            "registering a device", fn, lambda exc: _device_refusal(exc, device, owner)
        )

    def interval_settlement(self, interval_id: int) -> IntervalSettlement | None:
        _last, _batches, _approved, settled = self.interval_state(interval_id)
        if not settled:
            return None

        def fetch() -> IntervalSettlement:
            # every settlement page (BatchesSettled), and a reclaim of what was left (nothing
            # delivered, nothing paid: the escrow went back to the buyer); the last page's
            # imbalance events
            out: dict[str, tuple[int, int, str | None]] = {}
            imbalance: IntervalImbalance | None = None
            where = {
                "argument_filters": {"intervalId": interval_id},
                "from_block": self.deployment.block,
            }
            pages = self.market.events.BatchesSettled.get_logs(**where)
            reclaims = self.market.events.IntervalReclaimed.get_logs(**where)
            for log in [*pages, *reclaims]:
                receipt = self.w3.eth.get_transaction_receipt(log["transactionHash"])
                tx = "0x" + bytes(log["transactionHash"]).hex()
                for ev in self.market.events.TradeSettled().process_receipt(
                    receipt, errors=DISCARD
                ):
                    a = ev["args"]
                    out["0x" + bytes(a["tradeId"]).hex()] = (
                        int(a["deliveredWh"]),
                        int(a["paid"]),
                        tx,
                    )
                for ev in self.market.events.EscrowReclaimed().process_receipt(
                    receipt, errors=DISCARD
                ):
                    out["0x" + bytes(ev["args"]["tradeId"]).hex()] = (0, 0, tx)
                imbalance = imbalance or settled_imbalance(self.market, receipt, interval_id)
            return IntervalSettlement(out, imbalance)

        return self._rpc("reading settlements", fetch)

    def health(self) -> dict[str, Any]:
        try:
            block = self.w3.eth.get_block("latest")
            return {
                "reachable": True,
                "chain_id": int(self.w3.eth.chain_id),
                "latest_block": int(block["number"]),
                "block_timestamp": int(block["timestamp"]),
                "contracts": dict(self.deployment.contracts),
            }
        except Exception as exc:
            return {
                "reachable": False,
                "error": str(exc),
                "chain_id": self.chain_id,
                "contracts": dict(self.deployment.contracts),
            }
