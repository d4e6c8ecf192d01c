"""Settling FlexibilityMarket's activation batches (docs/architecture.md, "Flexibility activations
on chain").

The keeper needs the packed bytes a batch was recorded with (``settleActivations`` takes their
activation records, checked against the batch's commitment): it finds each
``ActivationBatchRecorded`` event, reads the ``recordActivations`` transaction's calldata and keeps
the ``activations`` argument once the keccak256 of its records (``flex.commitment``) equals the
event's commitment. A recorded batch is settled from its interval's end once
every device of it has its own reading in ``MeterReadings`` (``readingOf``), or at EnergyMarket's
``settlementDeadline`` without them (a missing reading delivers nothing); from ``reclaimAfter`` on
it is reclaimed (every share back to its payers). ``batchOf`` is asked right before sending, so a
batch another keeper closed is not sent again.
"""

from __future__ import annotations

import logging
from typing import Any

from web3.exceptions import Web3RPCError

from backend.chain import finality, flex
from backend.chain.client import ChainClient
from backend.chain.contracts import Deployment, contract_at
from backend.chain.errors import LedgerError

log = logging.getLogger("tegrid.keeper")

RECORDED = 1  # FlexibilityMarket.BatchState.Recorded
LOG_CHUNK_BLOCKS = 5_000


class ActivationKeeper:
    """``run_once``: scan new activation batches, then settle or reclaim what is due; returns the
    (interval, batch index) pairs closed in this round."""

    def __init__(
        self, client: ChainClient, deployment: Deployment, from_block: int | None = None
    ) -> None:
        self.client = client
        self.w3 = client.w3
        self.flexibility = contract_at(
            self.w3, "FlexibilityMarket", deployment.address("FlexibilityMarket")
        )
        self.market = contract_at(self.w3, "EnergyMarket", deployment.address("EnergyMarket"))
        self.readings = contract_at(self.w3, "MeterReadings", deployment.address("MeterReadings"))
        self.interval_seconds = int(deployment.interval_seconds)
        self._next_block = deployment.block if from_block is None else from_block
        self.open: dict[tuple[int, int], bytes] = {}  # recorded, not closed: packed activations
        self.settled: list[tuple[int, int]] = []
        self.reclaimed: list[tuple[int, int]] = []

    def scan(self) -> None:
        """Take up the batches recorded since the last scan (up to the last final block)."""
        latest = finality.final_block(int(self.w3.eth.block_number), self.client.confirmations)
        event = self.flexibility.events.ActivationBatchRecorded
        while self._next_block <= latest:
            to_block = min(latest, self._next_block + LOG_CHUNK_BLOCKS - 1)
            for entry in event.get_logs(from_block=self._next_block, to_block=to_block):
                self._take(entry)
            self._next_block = to_block + 1

    def rewind(self, block: int) -> None:
        """A rollback changed the blocks from ``block`` on: scan them again (a batch recorded
        again after it is taken up anew; one the chain lost is dropped by ``batchOf``)."""
        self._next_block = min(self._next_block, block)

    def _take(self, entry: Any) -> None:
        args = entry["args"]
        key = (int(args["intervalId"]), int(args["batchIndex"]))
        tx = self.w3.eth.get_transaction(entry["transactionHash"])
        _fn, params = self.flexibility.decode_function_input(tx["input"])
        packed = bytes(params["activations"])
        if flex.commitment(packed) != bytes(args["commitment"]):
            log.error("activation batch %s: calldata does not match its commitment", key)
            return
        self.open[key] = packed

    def run_once(self) -> list[tuple[int, int]]:
        self.scan()
        now = int(self.w3.eth.get_block("pending")["timestamp"])
        done: list[tuple[int, int]] = []
        for (interval_id, index), packed in sorted(self.open.items()):
            try:
                _commitment, state = self.flexibility.functions.batchOf(interval_id, index).call()
                if int(state) != RECORDED:  # closed by someone else
                    del self.open[(interval_id, index)]
                    continue
                if now >= int(self.market.functions.reclaimAfter(interval_id).call()):
                    fn = self.flexibility.functions.reclaimActivations(
                        interval_id, index, flex.records(packed)
                    )
                    receipt = self.client.transact(fn)
                    self.reclaimed.append((interval_id, index))
                    log.warning(
                        "activation batch %d/%d not settled by reclaimAfter: shares returned "
                        "(%d gas)", interval_id, index, receipt["gasUsed"],
                    )  # fmt: skip
                elif self._due(interval_id, packed, now):
                    fn = self.flexibility.functions.settleActivations(
                        interval_id, index, flex.records(packed)
                    )
                    receipt = self.client.transact(fn)
                    self.settled.append((interval_id, index))
                    log.info(
                        "settled activation batch %d/%d (%d gas)",
                        interval_id, index, receipt["gasUsed"],
                    )  # fmt: skip
                else:
                    continue
            except (LedgerError, Web3RPCError) as exc:
                log.warning("closing activation batch %d/%d failed: %s", interval_id, index, exc)
                continue
            del self.open[(interval_id, index)]
            done.append((interval_id, index))
        return done

    def _due(self, interval_id: int, packed: bytes, now: int) -> bool:
        """From the interval's end: every device's reading in, or the settlement deadline."""
        if now < (interval_id + 1) * self.interval_seconds:
            return False
        devices = sorted({a.offer["device"] for a in flex.unpack(packed)})
        read = self.readings.functions.readingOf
        if all(bool(read(d, interval_id).call()[2]) for d in devices):
            return True
        return now >= int(self.market.functions.settlementDeadline(interval_id).call())
