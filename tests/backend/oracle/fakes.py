"""In-memory stand-in for MeterReadings + ParticipantRegistry, following the contract's rules."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from backend.chain.errors import ChainUnavailableError
from backend.chain.heads import Rollback
from backend.chain.protocol import MAX_READING_WH
from backend.chain.registry import MeterOwner
from backend.iot.signing import Reading, ReadingDomain, recover_signer
from backend.oracle.errors import BatchRefusedError
from backend.oracle.ledger import BatchReceipt, MeterState


def wallet_of(meter: str) -> str:
    """The (made-up) participant a registered fake meter belongs to."""
    return "0x" + meter[2:][::-1]


class FakeLedger:
    def __init__(self, interval_seconds: int = 900, now: int = 10_000_000) -> None:
        self._domain = ReadingDomain(31337, "0x" + "cd" * 20)
        self.sep = self._domain.separator()
        self.interval = interval_seconds
        self.now = now
        self.meters: dict[str, bool] = {}  # meter -> active
        self.devices: dict[str, bool] = {}  # registered device key -> active
        self.kinds: list[tuple[bool, list[str]]] = []  # per prepared batch: device?, its keys
        self.buses: dict[str, int] = {}  # meter -> its participant's bus (registered meters)
        self.stored: dict[tuple[str, int], tuple[int, int]] = {}
        self.accept_events: list[tuple[str, int]] = []
        self.sent: list[tuple[str, int]] = []  # every reading that reached the node, per send
        self.mempool: dict[str, tuple[int, list[tuple[Reading, bytes]]]] = {}
        self.receipts: dict[str, BatchReceipt] = {}
        self.down = False
        self.drop_next_send = False  # the node "loses" the next raw tx
        self.crash_after_send = False  # raise ChainUnavailableError after the tx was mined
        self._n = itertools.count(1)
        self.block = 0

    def _check(self) -> None:
        if self.down:
            raise ChainUnavailableError("fake chain down")

    def domain(self) -> ReadingDomain:
        return self._domain

    def interval_seconds(self) -> int:
        return self.interval

    def chain_time(self) -> int:
        self._check()
        return self.now

    def meter_state(self, meter: str) -> MeterState:
        self._check()
        if meter in self.devices:
            return MeterState(True, self.devices[meter], device=True)
        return MeterState(meter in self.meters, self.meters.get(meter, False))

    def meter_states(self, meters: Sequence[str]) -> dict[str, MeterState]:
        return {m: self.meter_state(m) for m in meters}

    def meter_owners(self, meters: Sequence[str]) -> dict[str, MeterOwner]:
        self._check()
        return {
            m: MeterOwner(m, wallet_of(m), self.buses.get(m, 0), self.meters[m])
            if m in self.meters
            else MeterOwner(m)
            for m in meters
        }

    def prepare_batch(
        self,
        interval_id: int,
        items: Sequence[tuple[Reading, bytes]],
        check: bool = False,
        device: bool = False,
    ) -> tuple[str, bytes]:
        self._check()
        if self.now < (interval_id + 1) * self.interval:
            raise BatchRefusedError("MeterReadingsIntervalNotEnded", retryable=True)
        tx = f"0x{next(self._n):064x}"
        self.mempool[tx] = (interval_id, list(items))
        self.kinds.append((device, [r.meter for r, _sig in items]))
        return tx, tx.encode()

    def send_raw(self, raw_tx: bytes) -> None:
        self._check()
        tx = raw_tx.decode()
        interval_id, items = self.mempool.pop(tx)
        self.sent.extend((r.meter, interval_id) for r, _sig in items)
        if self.drop_next_send:
            self.drop_next_send = False
            return
        self.block += 1
        receipt = BatchReceipt(tx, 1, self.block, 21000 + 30000 * len(items))
        for reading, sig in items:
            key = (reading.meter, interval_id)
            if recover_signer(self.sep, reading, sig) != reading.meter:
                receipt.rejected[reading.meter] = "bad_signature"
            elif reading.meter not in self.meters and reading.meter not in self.devices:
                receipt.rejected[reading.meter] = "unregistered"
            elif not {**self.meters, **self.devices}[reading.meter]:
                receipt.rejected[reading.meter] = "inactive"
            elif max(reading.import_wh, reading.export_wh) > MAX_READING_WH:
                receipt.rejected[reading.meter] = "value_too_large"
            elif key in self.stored:
                if self.stored[key] != (reading.import_wh, reading.export_wh):
                    receipt.rejected[reading.meter] = "conflicting"
            else:
                self.stored[key] = (reading.import_wh, reading.export_wh)
                self.accept_events.append(key)
                receipt.accepted.add(reading.meter)
        self.receipts[tx] = receipt
        if self.crash_after_send:
            self.crash_after_send = False
            self.down = True
            raise ChainUnavailableError("connection reset after send")

    def receipt(self, tx_hash: str, timeout_s: float) -> BatchReceipt | None:
        self._check()
        return self.receipts.get(tx_hash)

    def reading_of(self, meter: str, interval_id: int) -> tuple[int, int, bool]:
        self._check()
        if (meter, interval_id) in self.stored:
            return (*self.stored[(meter, interval_id)], True)
        return 0, 0, False

    def readings_of(self, keys: Sequence[tuple[str, int]]) -> list[tuple[int, int, bool]]:
        return [self.reading_of(meter, interval_id) for meter, interval_id in keys]

    def check_head(self, force: bool = False) -> Rollback | None:
        self._check()
        return None

    def mined_block(self, tx_hash: str) -> int | None:
        self._check()
        receipt = self.receipts.get(tx_hash)
        return receipt.block_number if receipt is not None else None

    def reset_nonce(self) -> None:
        return None
