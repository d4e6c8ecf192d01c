"""Chain time on a development chain (Anvil's ``evm_*`` calls): read it, move it, end an interval.

For the e2e tests, the demo and the benchmarks.
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
