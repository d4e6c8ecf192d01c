"""Grid mode switches to the grid-forming devices: each ``GridModeChanged`` of the registry
becomes one ``ModeAction`` per active grid-forming device (battery, genset), dispatched, stored
and resent until acknowledged exactly like a flexibility activation's control action.

The dispatcher watches the registry's events rather than the market telling it: the switch is
the grid operator's act on chain, and the devices must hear of it whether or not the market runs
(the market only reads the mode when it clears an interval). Each action's id is derived from the
event and the device (``mode_action_id``), so a restarted dispatcher that scans the chain again
from the deployment block stores nothing twice; a switch whose actions would already have expired
(``ttl_s`` after it) is not sent at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from backend.chain.protocol import DEVICE_BATTERY
from backend.chain.registry import DeviceRegistry, GridModeLog
from backend.iot.control import StateOfCharge, mode_action_id
from backend.iot.control_store import ControlTarget

MODE_ACTION_TTL_S = 3600  # a device that was offline longer hears of the switch from the market
REORG_MARGIN_BLOCKS = 12  # scanned again each step: a switch a rollback moved is found again


class ModeSource(Protocol):
    """Where the dispatcher learns of grid mode switches to send to the devices."""

    def pending_modes(self, chain_now: int) -> list[ControlTarget]:
        """Mode actions not yet expired at ``chain_now`` (handing one over twice is harmless)."""
        ...


class RegistryModes:
    """``GridModeChanged`` events of the registry, from ``from_block`` on, as mode actions to every
    grid-forming device active when the switch is found. ``effectiveInterval`` is the first
    interval that starts after the switch (the first whole interval the island runs)."""

    def __init__(
        self,
        log: GridModeLog,
        interval_seconds: int,
        from_block: int = 0,
        ttl_s: int = MODE_ACTION_TTL_S,
    ) -> None:
        self.log = log
        self.interval_seconds = interval_seconds
        self.ttl_s = ttl_s
        self._next_block = from_block
        self._start = from_block

    def pending_modes(self, chain_now: int) -> list[ControlTarget]:
        head = self.log.head()
        start = max(self._start, self._next_block - REORG_MARGIN_BLOCKS)
        if head < start:
            return []
        changes = [c for c in self.log.changes(start, head) if c.since + self.ttl_s > chain_now]
        self._next_block = head + 1
        if not changes:
            return []
        units = self.log.grid_forming(self._start, head)
        return [
            ControlTarget.for_mode(
                mode_action_id(c.tx_hash, c.log_index, unit.device), unit.device, c.mode,
                c.since // self.interval_seconds + 1, c.since + self.ttl_s,
            )
            for c in changes
            for unit in units
        ]  # fmt: skip


def battery_reports(registry: DeviceRegistry) -> Callable[[StateOfCharge], str | None]:
    """The dispatcher's check of a state of charge report against the registry: its device an
    active battery, the value within its capacity (None: keep it; else why not). Each answer is
    the registry's at the time of the report (one ``deviceOf`` call; reports come once an interval
    per battery)."""

    def check(report: StateOfCharge) -> str | None:
        record = registry.devices([report.device])[report.device]
        if record.owner is None or not record.active or record.kind != DEVICE_BATTERY:
            return f"{report.device} is not an active battery in the registry"
        if report.soc_wh > record.capacity_wh:
            return f"{report.soc_wh} Wh is above the battery's capacity of {record.capacity_wh} Wh"
        return None

    return check
