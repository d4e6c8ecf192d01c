"""``ChainClient``: a web3 HTTP connection with local key signing, nonce management, receipts
with retries, and custom-error reverts decoded into readable ``Name(args)`` messages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import eth_abi
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector, to_bytes
from eth_utils.abi import get_abi_input_types, get_abi_output_types
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import RPCEndpoint, TxParams, TxReceipt

from backend.chain import finality
from backend.chain.contracts import Artifact, error_abis
from backend.chain.errors import (
    ChainUnavailableError,
    LedgerError,
    NonceGapError,
    TransactionDroppedError,
    TransactionRevertedError,
    TransactionTimeoutError,
)
from backend.settings import Settings

log = logging.getLogger("tegrid.chain")

_BUILTIN_ERRORS: list[dict[str, Any]] = [
    {"type": "error", "name": "Error", "inputs": [{"name": "message", "type": "string"}]},
    {"type": "error", "name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]},
]


def cache_chain_id(w3: Any) -> None:
    """Let the provider cache ``eth_chainId`` (and nothing else): web3's validation middleware
    asks for the chain id before every ``eth_call``, ``eth_estimateGas`` and transaction, a round
    trip each; the chain id of an endpoint does not change."""
    provider = w3.provider
    provider.cacheable_requests = {RPCEndpoint("eth_chainId")}
    provider.cache_allowed_requests = True


class ErrorDecoder:
    """Maps 4-byte selectors of custom errors to their names and argument types."""

    def __init__(self, abis: Sequence[dict[str, Any]]) -> None:
        self._by_selector: dict[bytes, dict[str, Any]] = {}
        for item in [*_BUILTIN_ERRORS, *abis]:
            selector = function_abi_to_4byte_selector(item)  # type: ignore[arg-type]
            self._by_selector[bytes(selector)] = item

    def decode(self, data: bytes) -> tuple[str, tuple[Any, ...]] | None:
        """(name, args) of revert data, or None when the selector is unknown."""
        if len(data) < 4:
            return None
        item = self._by_selector.get(bytes(data[:4]))
        if item is None:
            return None
        types = [
            i["type"] if i["type"] != "tuple" else _tuple_type(i) for i in item.get("inputs", [])
        ]
        try:
            args = tuple(abi_decode(types, bytes(data[4:])))
        except Exception:
            return None
        return str(item["name"]), args

    def describe(self, data: bytes) -> str:
        """Readable ``Name(arg, ...)`` of revert data (hex when unknown)."""
        decoded = self.decode(data)
        if decoded is None:
            return f"revert 0x{bytes(data).hex()}" if data else "revert (no data)"
        name, args = decoded
        return f"{name}({', '.join(_fmt(a) for a in args)})"


def _tuple_type(item: dict[str, Any]) -> str:
    return "(" + ",".join(c["type"] for c in item["components"]) + ")"


def _fmt(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def revert_data(exc: BaseException) -> bytes:
    """Raw revert data from a web3 ContractLogicError (Anvil: hex string; Ganache: dict)."""
    data: Any = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = (
            data.get("data")
            or data.get("result")
            or next(
                (v.get("return") for v in data.values() if isinstance(v, dict) and "return" in v),
                None,
            )
        )
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return to_bytes(hexstr=data)
        except ValueError:
            return b""
    return b""


class AbiFunction:
    """One contract function encoded and decoded with eth_abi directly. web3's ``ContractFunction``
    runs every argument through its ABI normalizers (~3 ms per small call; ~0.6 s for the calldata
    of a 150-trade ``recordTrades``, done twice: estimate and send); the bytes are the same."""

    def __init__(self, contract: Any, name: str) -> None:
        item = next(
            i for i in contract.abi if i.get("type") == "function" and i.get("name") == name
        )
        self.address = str(contract.address)
        self.inputs = get_abi_input_types(item)
        self.outputs = get_abi_output_types(item)
        self.selector = bytes(function_abi_to_4byte_selector(item))
        # One 32-byte word per argument and per output (addresses, uintN, bool, bytes32): the
        # clearing's hundreds of reads are encoded and decoded by hand, without eth_abi's codecs.
        self._static_in = all(_word_type(t) for t in self.inputs)
        # a single struct of such fields (e.g. ``participantOf``) is laid out the same, inline
        self._struct_out: list[str] | None = None
        if len(self.outputs) == 1 and self.outputs[0][:1] == "(" and self.outputs[0][-1:] == ")":
            fields = self.outputs[0][1:-1].split(",")
            if all(_word_type(t) for t in fields):
                self._struct_out = fields
        self._static_out = all(_word_type(t) for t in self.outputs)

    def data(self, *args: Any) -> str:
        if self._static_in and len(args) == len(self.inputs):
            words = [_encode_word(t, a) for t, a in zip(self.inputs, args, strict=True)]
            if all(w is not None for w in words):
                return "0x" + self.selector.hex() + "".join(words)  # type: ignore[arg-type]
        return "0x" + (self.selector + eth_abi.encode(self.inputs, args)).hex()

    def decode(self, result: str | bytes) -> Any:
        """The return value as web3 gives it: the value itself for one output, else a tuple."""
        raw = bytes.fromhex(result[2:]) if isinstance(result, str) else bytes(result)
        if self._static_out and len(raw) == 32 * len(self.outputs):
            out = _decode_words(self.outputs, raw)
        elif self._struct_out is not None and len(raw) == 32 * len(self._struct_out):
            out = (_decode_words(self._struct_out, raw),)
        else:
            out = tuple(eth_abi.decode(self.outputs, raw))
        return out[0] if len(out) == 1 else out

    def call(self, w3: Any, *args: Any) -> Any:
        """``eth_call`` at the latest block, decoded."""
        return self.decode(w3.eth.call({"to": self.address, "data": self.data(*args)}))


def batch_eth_call(w3: Any, calls: Sequence[tuple[str, str]]) -> list[str | None]:
    """Results (hex) of raw ``eth_call``s ``(to, data)`` at the latest block, sent as one
    JSON-RPC batch (one HTTP round trip instead of one per call; web3's contract-call machinery
    costs ~2.5 ms per call, a batched raw call ~0.05 ms). None where the node answered that call
    with an error (e.g. a revert). A provider or node that takes no batches gets one call each.
    Connection errors propagate (the caller knows what it was reading)."""
    requests_ = [
        (RPCEndpoint("eth_call"), [{"to": to, "data": data}, "latest"]) for to, data in calls
    ]
    responses: Any = None
    make_batch = getattr(w3.provider, "make_batch_request", None)
    if make_batch is not None:
        try:
            responses = make_batch(requests_)
        except OSError:  # requests' connection errors and timeouts are OSErrors too
            raise
        except Exception:  # a node that refuses batches
            responses = None
    if isinstance(responses, list) and len(responses) == len(requests_):
        return [
            str(r["result"]) if isinstance(r, dict) and isinstance(r.get("result"), str) else None
            for r in responses
        ]
    out: list[str | None] = []
    for to, data in calls:
        try:
            out.append("0x" + bytes(w3.eth.call({"to": to, "data": data})).hex())
        except (ContractLogicError, Web3RPCError, ValueError):
            out.append(None)
    return out


def _word_type(abi_type: str) -> bool:
    return abi_type in ("address", "bool", "bytes32") or (
        abi_type.startswith("uint") and abi_type[4:].isdigit()
    )


def _encode_word(abi_type: str, value: Any) -> str | None:
    """The hex of one static argument's word; None where eth_abi should decide (and complain)."""
    if abi_type == "address":
        if not (isinstance(value, str) and len(value) == 42 and value[:2] in ("0x", "0X")):
            return None
        try:
            int(value[2:], 16)
        except ValueError:
            return None
        return "0" * 24 + value[2:].lower()
    if abi_type == "bytes32":
        return bytes(value).hex() if isinstance(value, bytes) and len(value) == 32 else None
    if abi_type == "bool":
        return format(int(value), "064x") if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return format(value, "064x") if 0 <= value < 1 << int(abi_type[4:]) else None


def _decode_words(types: Sequence[str], raw: bytes) -> tuple[Any, ...]:
    return tuple(_decode_word(t, raw[32 * i : 32 * i + 32]) for i, t in enumerate(types))


def _decode_word(abi_type: str, word: bytes) -> Any:
    if abi_type == "address":
        return "0x" + word[12:].hex()  # as eth_abi decodes it (lower case)
    if abi_type == "bool":
        return word != bytes(32)
    if abi_type == "bytes32":
        return word
    return int.from_bytes(word, "big")


class EncodedCall:
    """Already-encoded calldata in the shape ``ChainClient.transact`` takes (``estimate_gas`` and
    ``build_transaction``), so the client's gas, nonce, retry and revert decoding all apply."""

    def __init__(self, w3: Any, to: str, data: str) -> None:
        self.w3, self.to, self.data = w3, to, data

    def estimate_gas(self, tx: dict[str, Any]) -> int:
        return int(self.w3.eth.estimate_gas({**tx, "to": self.to, "data": self.data}))

    def build_transaction(self, tx: dict[str, Any]) -> dict[str, Any]:
        return {"value": 0, **tx, "to": self.to, "data": self.data}


class GasBounds:
    """Learned gas limits for batch calls, so a batch is sent without ``eth_estimateGas`` (which
    Anvil answers by executing the call about ten times in a binary search).

    Per (contract, selector) it keeps the highest gas per calldata byte seen in an estimate or a
    receipt; the bound of a new call is that rate times its calldata length, with ``headroom`` and
    ``slack`` on top. Small batches have the higher rate (fixed costs), so the maximum errs high.
    The first call of a shape is estimated; a bounded call that runs out of gas is estimated and
    sent again (``ChainClient.transact``)."""

    def __init__(self, headroom: float = 1.5, slack: int = 60_000) -> None:
        self.headroom = headroom
        self.slack = slack
        self._rate: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(to: str, data: str) -> tuple[tuple[str, str], int]:
        """((contract, selector), calldata bytes) of hex calldata."""
        return (to.lower(), data[:10]), max(1, (len(data) - 2) // 2)

    def learn(self, key: tuple[str, str], size: int, gas: int) -> None:
        with self._lock:
            self._rate[key] = max(self._rate.get(key, 0.0), gas / size)

    def bound(self, key: tuple[str, str], size: int) -> int | None:
        rate = self._rate.get(key)
        if rate is None:
            return None
        # never below the intrinsic gas (21,000 + at most 16 per calldata byte): a node refuses that
        return max(int(rate * size * self.headroom) + self.slack, 21_000 + 16 * size)


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
