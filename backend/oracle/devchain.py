"""Development-chain helpers used by the benchmark, the e2e tests and the demo: an Anvil process of
our own, chain time travel, fast (pipelined) participant registration.

The launching itself is ``backend.chain.anvil.start_anvil``; this adds restart on the same port.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account
from web3 import Web3

from backend.chain.anvil import AnvilProcess as ChainAnvil
from backend.chain.anvil import start_anvil
from backend.errors import ToolchainError
from backend.net import free_port


class AnvilProcess:
    """A restartable Anvil on one port (``backend.chain.anvil.start_anvil`` does the launching);
    ``state_file`` keeps the chain across a stop and a start, as the outage tests need."""

    def __init__(
        self,
        port: int | None = None,
        state_file: Path | None = None,
        state_interval_s: int = 1,
    ) -> None:
        self.port = port or free_port()
        self.state_file = state_file
        self.state_interval_s = state_interval_s
        self._handle: ChainAnvil | None = None
        fd, log_name = tempfile.mkstemp(prefix="tegrid-anvil-", suffix=".log")
        os.close(fd)
        self._log_path = Path(log_name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._handle.process if self._handle is not None else None

    def start(self, timeout_s: float = 20.0) -> AnvilProcess:
        self._handle = start_anvil(
            self.port,
            state_file=self.state_file,
            state_interval_s=self.state_interval_s,
            timeout_s=timeout_s,
            log_file=self._log_path,
            extra_args=("--base-fee", "0", "--silent"),
        )
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM): anvil dumps its state file on the way out."""
        if self._handle is not None:
            self._handle.stop()
        self._handle = None

    def kill(self) -> None:
        """SIGKILL: no state dump on the way out, the state file keeps its last periodic dump (a
        restart comes back behind, as after a crash)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._handle = None

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
        self._log_path.unlink(missing_ok=True)


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


def send_pipelined(
    w3: Web3, private_key: str, calls: Sequence[tuple[str, bytes]], gas: int = 500_000
) -> list[Any]:
    """Sign and send ``(to, calldata)`` transactions back to back, then wait for all receipts.

    Raises ToolchainError if any reverts. For setup work on development chains (hundreds of meters).
    """
    account = Account.from_key(private_key)
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    chain_id = w3.eth.chain_id
    gas_price = w3.eth.gas_price
    hashes = []
    for i, (to, data) in enumerate(calls):
        tx = {
            "to": to, "data": data, "nonce": nonce + i, "gas": gas, "gasPrice": gas_price,
            "chainId": chain_id,
        }  # fmt: skip
        signed = account.sign_transaction(tx)
        hashes.append(w3.eth.send_raw_transaction(signed.raw_transaction))
    receipts = [
        w3.eth.wait_for_transaction_receipt(h, timeout=120, poll_latency=0.01) for h in hashes
    ]
    bad = [r for r in receipts if r["status"] != 1]
    if bad:
        raise ToolchainError(f"{len(bad)} of {len(receipts)} setup transactions reverted")
    return receipts


def register_participants(
    w3: Web3,
    registry_address: str,
    grid_operator_key: str,
    participants: Sequence[tuple[str, str, int]],
    max_export_w: int = 100_000,
    max_import_w: int = 100_000,
) -> None:
    """``registry.connect(wallet, meter, bus, ...)`` for each ``(wallet, meter, bus)``."""
    from backend.chain.contracts import contract_at

    registry = contract_at(w3, "ParticipantRegistry", registry_address)
    calls = []
    for wallet, meter, bus in participants:
        fn = registry.functions.connect(wallet, meter, int(bus), max_export_w, max_import_w)
        calls.append((registry.address, bytes.fromhex(fn._encode_transaction_data()[2:])))
    send_pipelined(w3, grid_operator_key, calls)
