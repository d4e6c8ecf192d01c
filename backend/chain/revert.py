"""Revert data decoded: custom errors (and Solidity's ``Error``/``Panic``) by their 4-byte
selectors into readable ``Name(arg, ...)`` messages, and the raw revert data of a web3
``ContractLogicError`` from Anvil or Ganache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_abi_to_4byte_selector, to_bytes

_BUILTIN_ERRORS: list[dict[str, Any]] = [
    {"type": "error", "name": "Error", "inputs": [{"name": "message", "type": "string"}]},
    {"type": "error", "name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]},
]


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
