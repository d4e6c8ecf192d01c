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
from collections.abc import Sequence
from typing import Any

from eth_typing import HexStr
from eth_utils import to_checksum_address
from web3.logs import DISCARD

from backend.chain.client import ChainClient
from backend.chain.contracts import Deployment, contract_at
from backend.chain.eip712 import to_compact
from backend.chain.errors import LedgerError
from backend.market.errors import LedgerUnavailable
from backend.market.ports import ChainTrade, Participant, Receipt


def _order_tuple(m: dict[str, Any]) -> tuple[Any, ...]:
    return (
        to_checksum_address(m["trader"]),
        int(m["side"]),
        int(m["intervalId"]),
        int(m["energyWh"]),
        int(m["pricePerKWh"]),
        int(m["nonce"]),
        int(m["expiry"]),
        to_checksum_address(m["counterparty"]),
    )


def _signed(m: dict[str, Any], signature: str) -> tuple[Any, ...]:
    r, vs = to_compact(bytes.fromhex(signature[2:]))
    return (_order_tuple(m), r, vs)


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
        self._clock_ttl_s = clock_ttl_s
        self._clock_lock = threading.Lock()
        self._block_ts = 0
        self._skew = 0.0
        self._fetched = 0.0
        self._receipts: dict[str, Receipt] = {}

    def _rpc(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except LedgerError as exc:
            raise LedgerUnavailable(f"{what}: {exc}") from exc
        except Exception as exc:  # web3 raises a zoo of transport/value errors
            raise LedgerUnavailable(f"{what} failed: {exc}") from exc

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
            lambda: self.registry.functions.participantOf(to_checksum_address(wallet)).call(),
        )
        meter, index, bus_id, active, max_export_w, max_import_w = p
        if int(index) == 0:
            return None
        return Participant(
            to_checksum_address(wallet),
            str(meter),
            int(bus_id),
            int(max_export_w),
            int(max_import_w),
            bool(active),
            int(index),
        )

    def available_balance(self, wallet: str) -> int:
        available, _locked = self._rpc(
            "reading a balance",
            lambda: self.market.functions.balanceOf(to_checksum_address(wallet)).call(),
        )
        return int(available)

    def nonce_cancelled(self, trader: str, nonce: int) -> bool:
        _filled, cancelled = self._rpc(
            "reading a nonce", lambda: self.market.functions.filledOf(trader, nonce).call()
        )
        return bool(cancelled)

    def interval_state(self, interval_id: int) -> tuple[str, int, int, bool]:
        last, batches, approved, settled = self._rpc(
            "reading an interval", lambda: self.market.functions.intervalOf(interval_id).call()
        )
        return "0x" + bytes(last).hex(), int(batches), int(approved), bool(settled)

    def batch_recorded(self, interval_id: int, last_trade_id: str) -> bool:
        last, batches, _approved, _settled = self.interval_state(interval_id)
        return batches > 0 and int(last, 16) >= int(last_trade_id, 16)

    # ----------------------------------------------------------- transactions
    def _indexed_orders(self) -> bool:
        """Whether ``recordTrades`` takes a deduplicated order list plus trades by index (the newer
        ABI) rather than trades carrying both signed orders."""
        abi: list[dict[str, Any]] = list(self.market.abi)  # type: ignore[arg-type]
        for item in abi:
            if item.get("type") == "function" and item.get("name") == "recordTrades":
                return len(item.get("inputs", [])) == 5
        return False

    def _record_call(
        self, interval_id: int, trades: Sequence[ChainTrade], evidence_hash: str, signature: str
    ) -> Any:
        evidence, sig = bytes.fromhex(evidence_hash[2:]), bytes.fromhex(signature[2:])
        if not self._indexed_orders():
            rows = [
                (_signed(t.sell, t.sell_signature), _signed(t.buy, t.buy_signature), t.energy_wh,
                 t.price_per_kwh, t.verdict)
                for t in trades
            ]  # fmt: skip
            return self.market.functions.recordTrades(interval_id, rows, evidence, sig)
        orders: list[tuple[Any, ...]] = []
        index: dict[tuple[str, int], int] = {}

        def slot(m: dict[str, Any], signature_hex: str) -> int:
            key = (str(m["trader"]).lower(), int(m["nonce"]))
            if key not in index:
                index[key] = len(orders)
                orders.append(_signed(m, signature_hex))
            return index[key]

        rows2 = [
            (slot(t.sell, t.sell_signature), slot(t.buy, t.buy_signature), t.energy_wh,
             t.price_per_kwh, t.verdict)
            for t in trades
        ]  # fmt: skip
        return self.market.functions.recordTrades(interval_id, orders, rows2, evidence, sig)

    def record_trades(
        self, interval_id: int, trades: Sequence[ChainTrade], evidence_hash: str, signature: str
    ) -> str:
        def send() -> Any:
            fn = self._record_call(interval_id, trades, evidence_hash, signature)
            return self._transact(self.operator, fn)

        receipt = self._rpc("recordTrades", send)
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        ok = receipt["status"] == 1
        self._receipts[tx_hash] = Receipt(tx_hash, int(receipt["blockNumber"]), ok)
        return tx_hash

    @staticmethod
    def _transact(client: ChainClient, fn: Any) -> Any:
        """``client.transact``, retried once after a nonce clash (another sender with the key)."""
        try:
            return client.transact(fn)
        except Exception as exc:
            if "nonce" not in str(exc).lower():
                raise
            client.reset_nonce()
            return client.transact(fn)

    def wait(self, tx_hash: str, timeout_s: float = 60.0) -> Receipt:
        hit = self._receipts.pop(tx_hash, None)
        if hit is not None:
            return hit
        r = self._rpc(
            "waiting for a receipt",
            lambda: self.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=timeout_s),
        )
        return Receipt(tx_hash, int(r["blockNumber"]), r["status"] == 1)

    def connect(
        self, wallet: str, meter: str, bus_id: int, max_export_w: int, max_import_w: int
    ) -> str:
        fn = self.registry.functions.connect(
            to_checksum_address(wallet),
            to_checksum_address(meter),
            bus_id,
            max_export_w,
            max_import_w,
        )
        receipt = self._rpc(
            "connecting a participant", lambda: self._transact(self.grid_operator, fn)
        )
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        self._receipts[tx_hash] = Receipt(
            tx_hash, int(receipt["blockNumber"]), receipt["status"] == 1
        )
        return tx_hash

    def interval_settlement(
        self, interval_id: int
    ) -> dict[str, tuple[int, int, str | None]] | None:
        _last, _batches, _approved, settled = self.interval_state(interval_id)
        if not settled:
            return None

        def fetch() -> dict[str, tuple[int, int, str | None]]:
            out: dict[str, tuple[int, int, str | None]] = {}
            logs = self.market.events.IntervalSettled.get_logs(
                argument_filters={"intervalId": interval_id}, from_block=self.deployment.block
            )
            for log in logs:
                receipt = self.w3.eth.get_transaction_receipt(log["transactionHash"])
                tx = "0x" + bytes(log["transactionHash"]).hex()
                events = self.market.events.TradeSettled().process_receipt(receipt, errors=DISCARD)
                for ev in events:
                    a = ev["args"]
                    out["0x" + bytes(a["tradeId"]).hex()] = (
                        int(a["deliveredWh"]),
                        int(a["paid"]),
                        tx,
                    )
            return out

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
