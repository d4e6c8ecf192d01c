"""``ChainClient``: a web3 HTTP connection with local key signing, nonce management, receipts
with retries, and custom-error reverts decoded into readable ``Name(args)`` messages
(``backend.chain.revert``); calldata from ``backend.chain.abi``, learnt gas limits from
``backend.chain.gas``."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import RPCEndpoint, TxParams, TxReceipt

from backend.chain import finality
from backend.chain.abi import AbiFunction, EncodedCall, batch_eth_call
from backend.chain.contracts import Artifact, error_abis
from backend.chain.errors import (
    ChainUnavailableError,
    LedgerError,
    NonceGapError,
    TransactionDroppedError,
    TransactionRevertedError,
    TransactionTimeoutError,
)
from backend.chain.gas import GasBounds
from backend.chain.revert import ErrorDecoder, revert_data
from backend.settings import Settings

# The codec, the gas bounds and the revert decoding live in their own modules; other packages
# import them from here too.
__all__ = [
    "AbiFunction",
    "ChainClient",
    "EncodedCall",
    "ErrorDecoder",
    "GasBounds",
    "batch_eth_call",
    "cache_chain_id",
    "chain_time",
    "revert_data",
]

log = logging.getLogger("tegrid.chain")


def cache_chain_id(w3: Any) -> None:
    """Let the provider cache ``eth_chainId`` (and nothing else): web3's validation middleware
    asks for the chain id before every ``eth_call``, ``eth_estimateGas`` and transaction, a round
    trip each; the chain id of an endpoint does not change."""
    provider = w3.provider
    provider.cacheable_requests = {RPCEndpoint("eth_chainId")}
    provider.cache_allowed_requests = True


def chain_time(w3: Any) -> int:
    """The time ``block.timestamp`` will at least have in the next block: max(latest, pending).
    Anvil reloaded from a state file reports a pending timestamp from the wall clock, behind a
    chain that was moved forward in time, so the latest block counts too."""
    pending = w3.eth.get_block("pending")
    latest = w3.eth.get_block("latest")
    return max(int(pending["timestamp"]), int(latest["timestamp"]))


class ChainClock:
    """Chain time without a round trip per question: :func:`chain_time` read at most every
    ``refresh_s`` seconds, advanced by the local monotonic clock in between (a dev chain moved
    forward in time is seen within ``refresh_s``). For devices checking many messages a second."""

    def __init__(self, w3: Any, refresh_s: float = 0.5) -> None:
        self.w3 = w3
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._base: tuple[int, float] | None = None

    def __call__(self) -> float:
        with self._lock:
            mono = time.monotonic()
            if self._base is None or mono - self._base[1] >= self.refresh_s:
                self._base = (chain_time(self.w3), mono)
            return self._base[0] + (mono - self._base[1])


class ChainClient:
    """One signing account on one JSON-RPC endpoint.

    ``confirmations`` and ``receipt_timeout_s`` default to ``TEGRID_CONFIRMATIONS`` and
    ``TEGRID_RECEIPT_TIMEOUT_SECONDS`` (:mod:`backend.chain.finality`): a receipt is returned once
    final, and a transaction that cannot or did not get mined resyncs the cached nonce."""

    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        *,
        receipt_timeout_s: float | None = None,
        retries: int = 3,
        request_timeout_s: float = 60.0,
        confirmations: int | None = None,
    ) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout_s}))
        cache_chain_id(self.w3)
        self.account: LocalAccount = Account.from_key(private_key)
        self.receipt_timeout_s = (
            finality.configured_receipt_timeout_s()
            if receipt_timeout_s is None
            else receipt_timeout_s
        )
        self.confirmations = (
            finality.configured_confirmations() if confirmations is None else confirmations
        )
        self.nonce_resyncs = 0  # times the cached nonce was found wrong and read from the chain
        self.retries = retries
        self.decoder = ErrorDecoder(error_abis())
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None
        self._gas_limit: int | None = None
        self.gas_bounds = GasBounds()

    @classmethod
    def from_settings(cls, settings: Settings, private_key: str | None = None) -> ChainClient:
        return cls(
            settings.rpc_url,
            private_key or settings.admin_key,
            receipt_timeout_s=settings.receipt_timeout_seconds,
            confirmations=settings.confirmations,
        )

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            try:
                self._chain_id = int(self.w3.eth.chain_id)
            except Exception as exc:
                raise ChainUnavailableError(f"cannot reach the chain: {exc}") from exc
        return self._chain_id

    def is_connected(self) -> bool:
        try:
            return bool(self.w3.is_connected())
        except Exception:
            return False

    # -------------------------------------------------------------- nonces

    def _take_nonce(self) -> int:
        with self._lock:
            if self._nonce is None:
                self._nonce = int(
                    self.w3.eth.get_transaction_count(self.account.address, "pending")
                )
            nonce = self._nonce
            self._nonce += 1
            return nonce

    def reset_nonce(self) -> None:
        """Forget the local nonce; the next transaction asks the node again."""
        with self._lock:
            self._nonce = None

    def _resync_nonce(self, why: str) -> None:
        self.nonce_resyncs += 1
        log.warning("resyncing the nonce of %s from the chain: %s", self.address, why)
        self.reset_nonce()

    # -------------------------------------------------------------- calls and transactions

    def call(self, fn: ContractFunction) -> Any:
        """eth_call a contract function; custom-error reverts raise TransactionRevertedError."""
        try:
            return fn.call({"from": self.account.address})
        except ContractLogicError as exc:
            raise self._reverted(exc) from None

    def transact(
        self, fn: ContractFunction | EncodedCall, gas: int | None = None, *, bounded: bool = False
    ) -> TxReceipt:
        """Send a contract function call and wait for its receipt.

        ``bounded`` (for an :class:`EncodedCall` without ``gas``): the gas limit comes from
        :class:`GasBounds` instead of ``eth_estimateGas`` once the call's shape has been estimated
        once; a bounded call that runs out of gas is estimated and sent again. A bounded call that
        reverts is mined (its nonce used) and raises TransactionRevertedError as any other."""
        if not bounded or gas is not None or not isinstance(fn, EncodedCall):
            return self.send_tx(fn.build_transaction(self._base_tx(gas, fn)))  # type: ignore[arg-type]
        key, size = self.gas_bounds.key(fn.to, fn.data)
        bound = self.gas_bounds.bound(key, size)
        if bound is not None:
            bound = min(bound, self._block_gas_limit())
            tx = fn.build_transaction(self._base_tx(bound, fn))  # type: ignore[arg-type]
            try:
                receipt = self.send_tx(tx)  # type: ignore[arg-type]
            except TransactionRevertedError as exc:
                if not exc.gas_exhausted:
                    raise
                log.info("bounded gas %d ran out; estimating", bound)
            except LedgerError as exc:  # refused before mining (e.g. "intrinsic gas too low")
                if "gas" not in str(exc).lower():
                    raise
                log.info("bounded gas %d refused (%s); estimating", bound, exc)
            else:
                self.gas_bounds.learn(key, size, int(receipt["gasUsed"]))
                return receipt
        tx = fn.build_transaction(self._base_tx(None, fn))  # type: ignore[arg-type]
        self.gas_bounds.learn(key, size, int(tx["gas"]))
        # (the receipt's gasUsed never exceeds the estimate just learnt: nothing more to learn)
        return self.send_tx(tx)  # type: ignore[arg-type]

    def deploy(
        self, artifact: Artifact, *args: Any, gas: int | None = None
    ) -> tuple[str, TxReceipt]:
        """Deploy ``artifact`` with constructor ``args``; returns (address, receipt)."""
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        ctor = factory.constructor(*args)
        tx = ctor.build_transaction(self._base_tx(gas, ctor))
        receipt = self.send_tx(tx)
        address = receipt["contractAddress"]
        if address is None:
            raise LedgerError(f"deployment of {artifact.name} returned no address")
        return str(address), receipt

    def _base_tx(self, gas: int | None, fn: Any) -> TxParams:
        tx: TxParams = {
            "from": self.account.address,
            "chainId": self.chain_id,
            "gasPrice": self.w3.eth.gas_price,
        }
        if gas is None:
            try:
                estimate = fn.estimate_gas({"from": self.account.address})
            except ContractLogicError as exc:
                raise self._reverted(exc) from None
            gas = min(int(estimate * 1.2) + 10_000, self._block_gas_limit())
        tx["gas"] = gas
        return tx

    def _block_gas_limit(self) -> int:
        if self._gas_limit is None:
            self._gas_limit = int(self.w3.eth.get_block("latest")["gasLimit"])
        return self._gas_limit

    def send_tx(self, tx: TxParams) -> TxReceipt:
        """Sign ``tx`` locally (nonce filled in), send it, await the receipt; retry transients.

        A nonce the node refuses (another process sends from the same key, as the dev defaults'
        account 0 does) resyncs the local nonce from the node and sends again, up to ``retries``
        times. So does a transaction that can never be mined after the chain rolled back (its
        nonce beyond the chain's count - it is removed from a development node's pool first, so
        it cannot run later as well - or unknown to the node). A transaction not mined within
        ``receipt_timeout_s`` resyncs the nonce and raises TransactionTimeoutError."""
        last_exc: Exception | None = None
        for attempt in range(self.retries + 1):
            tx = dict(tx)  # type: ignore[assignment]
            tx["nonce"] = self._take_nonce()  # type: ignore[typeddict-item]
            signed = self.account.sign_transaction(tx)  # type: ignore[arg-type]
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except ContractLogicError as exc:
                self.reset_nonce()
                raise self._reverted(exc) from None
            except (ConnectionError, OSError) as exc:
                self.reset_nonce()
                last_exc = exc
                time.sleep(0.2 * (attempt + 1))
                continue
            except (ValueError, Web3RPCError) as exc:  # node refused: nonce too low / known
                last_exc = exc
                if "nonce" in str(exc).lower() or "known" in str(exc).lower():
                    self._resync_nonce(f"node refused nonce {tx['nonce']}: {exc}")
                    continue
                self.reset_nonce()
                raise LedgerError(f"transaction refused: {exc}") from exc
            try:
                receipt = finality.wait_for_receipt(
                    self.w3,
                    tx_hash,
                    timeout_s=self.receipt_timeout_s,
                    confirmations=self.confirmations,
                    sender=self.address,
                    nonce=int(tx["nonce"]),
                )
            except NonceGapError as exc:
                last_exc = exc
                dropped = finality.drop_pooled(self.w3, tx_hash, self.address)
                self._resync_nonce(str(exc))
                if dropped:
                    continue
                raise
            except TransactionDroppedError as exc:
                last_exc = exc
                self._resync_nonce(str(exc))
                continue
            except TransactionTimeoutError as exc:
                self._resync_nonce(str(exc))
                raise
            if receipt["status"] != 1:
                failed = self._failed(tx, receipt)
                failed.gas_exhausted = int(receipt["gasUsed"]) >= int(tx.get("gas", 0) or 0)
                raise failed
            return receipt
        raise ChainUnavailableError(
            f"transaction not sent after {self.retries + 1} attempts: {last_exc}"
        )

    def _failed(self, tx: TxParams, receipt: TxReceipt) -> TransactionRevertedError:
        """Replay a mined-but-reverted transaction as a call to recover its revert reason."""
        call: TxParams = {
            k: v for k, v in tx.items() if k in ("from", "to", "data", "value", "gas")
        }  # type: ignore[assignment]
        try:
            self.w3.eth.call(call, receipt["blockNumber"] - 1)
        except ContractLogicError as exc:
            return self._reverted(exc)
        except Exception:
            pass
        return TransactionRevertedError(f"transaction {receipt['transactionHash'].hex()} reverted")

    def _reverted(self, exc: ContractLogicError) -> TransactionRevertedError:
        data = revert_data(exc)
        decoded = self.decoder.decode(data)
        if decoded is None:
            return TransactionRevertedError(str(exc.message or exc))
        name, args = decoded
        return TransactionRevertedError(
            self.decoder.describe(data), error_name=name, error_args=args
        )
