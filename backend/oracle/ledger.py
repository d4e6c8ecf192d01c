"""What the oracle needs from the chain, as a small interface; the web3 implementation is in
:mod:`backend.oracle.web3_ledger`. Keeping the daemon behind this seam lets its logic be tested
without a chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from backend.chain.heads import Rollback
from backend.chain.registry import MeterOwner
from backend.iot.signing import Reading, ReadingDomain


@dataclass(frozen=True)
class MeterState:
    registered: bool
    active: bool
    device: bool = False  # a registered device key (its readings go to submitDeviceReadings)


@dataclass
class BatchReceipt:
    tx_hash: str
    status: int
    block_number: int
    gas_used: int
    accepted: set[str] = field(default_factory=set)  # meters in the ReadingsSubmitted event
    rejected: dict[str, str] = field(default_factory=dict)  # meter -> reason label


class ReadingsLedger(Protocol):
    """Methods raise :class:`backend.chain.errors.ChainUnavailableError` when the node does not
    answer."""

    def domain(self) -> ReadingDomain: ...

    def interval_seconds(self) -> int: ...

    def chain_time(self) -> int:
        """Timestamp the next block will have at least (what ``block.timestamp`` will compare
        against).
        """
        ...

    def meter_state(self, meter: str) -> MeterState: ...

    def meter_states(self, meters: Sequence[str]) -> dict[str, MeterState]:
        """Many at once (one round trip); meters missing from the answer are unknown."""
        ...

    def meter_owners(self, meters: Sequence[str]) -> dict[str, MeterOwner]:
        """Participant, bus and active flag of each meter (announcements are checked against
        them)."""
        ...

    def prepare_batch(
        self,
        interval_id: int,
        items: Sequence[tuple[Reading, bytes]],
        check: bool = False,
        device: bool = False,
    ) -> tuple[str, bytes]:
        """Sign the transaction (``device``: ``submitDeviceReadings`` of device-signed readings);
        returns (tx hash, raw tx). BatchRefusedError if it would revert."""
        ...

    def send_raw(self, raw_tx: bytes) -> None: ...

    def receipt(self, tx_hash: str, timeout_s: float) -> BatchReceipt | None:
        """The parsed receipt, or None when the transaction is unknown to the node."""
        ...

    def reading_of(self, meter: str, interval_id: int) -> tuple[int, int, bool]: ...

    def readings_of(self, keys: Sequence[tuple[str, int]]) -> list[tuple[int, int, bool]]:
        """``reading_of`` of many (meter, interval) pairs (one round trip)."""
        ...

    def check_head(self, force: bool = False) -> Rollback | None:
        """A rollback of the chain noticed since the last look (:mod:`backend.chain.heads`)."""
        ...

    def mined_block(self, tx_hash: str) -> int | None:
        """Block of ``tx_hash`` on the chain as it is now; None when not (or no longer) mined."""
        ...

    def reset_nonce(self) -> None: ...
