"""Chain time on a development chain (Anvil's ``evm_*`` calls): read it, move it, end an interval.

For the e2e tests, the demo, the benchmarks and ``tegrid chain advance``.
"""

from __future__ import annotations

from typing import Any

from web3 import Web3

from backend.errors import ToolchainError


def rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in response:
        raise ToolchainError(f"{method} failed: {response['error']}")
    return response.get("result")


def chain_now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def set_time(w3: Web3, timestamp: int) -> None:
    """Mine a block at ``timestamp`` (which must be later than the latest block)."""
    rpc(w3, "evm_setNextBlockTimestamp", [timestamp])
    rpc(w3, "evm_mine", [])


def end_interval(w3: Web3, interval_id: int, interval_seconds: int) -> None:
    """Move chain time to the end of ``interval_id`` (if it is not already past)."""
    end = (interval_id + 1) * interval_seconds
    if chain_now(w3) < end:
        set_time(w3, end)


def current_interval(w3: Web3, interval_seconds: int) -> int:
    return int(w3.eth.get_block("pending")["timestamp"]) // interval_seconds


# JSON-RPC "method not found": what a chain without the dev methods answers.
METHOD_NOT_FOUND = -32601


def advance_to(w3: Web3, timestamp: int) -> int:
    """Mine one block at ``timestamp`` (not earlier than the latest block) and return its time.

    Anvil takes ``evm_setNextBlockTimestamp`` and mines at exactly ``timestamp``; Ganache, which
    lacks it, moves by ``evm_increaseTime`` (the block lands on ``timestamp`` or a second or so
    later, as its clock runs on). A chain with neither, or a ``timestamp`` in the chain's past,
    raises ``ToolchainError`` with one readable line."""
    latest = chain_now(w3)
    if timestamp < latest:
        raise ToolchainError(
            f"timestamp {timestamp} is in the past: the latest block is at {latest}"
        )
    if timestamp == latest:
        return latest
    response = w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])  # type: ignore[arg-type]
    if "error" in response:
        if not _not_found(response["error"]):
            raise ToolchainError(f"evm_setNextBlockTimestamp failed: {response['error']}")
        response = w3.provider.make_request("evm_increaseTime", [timestamp - latest])  # type: ignore[arg-type]
        if "error" in response:
            if _not_found(response["error"]):
                raise ToolchainError(
                    "this chain cannot move its clock (no evm_setNextBlockTimestamp or "
                    "evm_increaseTime): a development chain (Anvil, Ganache) is needed"
                )
            raise ToolchainError(f"evm_increaseTime failed: {response['error']}")
    rpc(w3, "evm_mine", [])
    return chain_now(w3)


def _not_found(error: Any) -> bool:
    if isinstance(error, dict):
        code, message = error.get("code"), str(error.get("message", ""))
    else:
        code, message = None, str(error)
    return (
        code == METHOD_NOT_FOUND
        or "not found" in message
        or "not supported" in message
        or ("does not exist" in message)
    )
