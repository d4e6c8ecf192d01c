"""A lean ABI codec for contract calls: ``AbiFunction`` encodes and decodes one function with
eth_abi (static one-word arguments and results by hand), ``batch_eth_call`` sends raw
``eth_call``s as one JSON-RPC batch, and ``EncodedCall`` carries already-encoded calldata to
``ChainClient.transact``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import eth_abi
from eth_utils import function_abi_to_4byte_selector
from eth_utils.abi import get_abi_input_types, get_abi_output_types
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import RPCEndpoint


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
