"""Meters and devices as the ``ParticipantRegistry`` knows them: the participant (wallet) a meter
key belongs to, the grid bus of its connection point and whether it is active; a device's record;
whether a key holds the grid operator role (who may sign control actions); the grid mode switches
and the grid-forming devices (``GridModeLog``).

The one place where a meter's announced bus is compared with the registry's: the oracle checks
the announcements it relays, the meter simulator the meters it runs (``MeterOwner.problem``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import requests
from eth_utils import keccak

from backend.chain.abi import AbiFunction, batch_eth_call
from backend.chain.address import checksum
from backend.chain.contracts import contract_at
from backend.chain.errors import ChainUnavailableError, LedgerError
from backend.chain.protocol import GRID_FORMING_KINDS

GRID_OPERATOR_ROLE = keccak(text="GRID_OPERATOR_ROLE")


@dataclass(frozen=True)
class DeviceRecord:
    """``ParticipantRegistry.deviceOf``: ``owner`` None for an unknown key. Power is signed W
    (positive inject); ``capacity_wh`` only for a battery."""

    device: str
    owner: str | None
    bus_id: int
    kind: int
    active: bool
    min_w: int
    max_w: int
    capacity_wh: int


class RegistryProblem(NamedTuple):
    """A meter the registry does not back as it stands: ``reason`` is a stable label
    (unregistered, inactive, bus_mismatch), ``message`` one sentence for the log."""

    reason: str
    message: str


@dataclass(frozen=True)
class MeterOwner:
    """What the registry says about one meter key (``wallet`` None: no participant has it)."""

    meter: str
    wallet: str | None = None
    bus_id: int | None = None
    active: bool = False

    @property
    def registered(self) -> bool:
        return self.wallet is not None

    def problem(self, announced_bus: int | str | None = None) -> RegistryProblem | None:
        """Why readings of this meter would be refused, or why the bus it announces
        (``announced_bus``; None: none announced) is not the registry's; None when all is well."""
        if self.wallet is None:
            return RegistryProblem(
                "unregistered",
                f"meter {self.meter} is not registered: no participant has this meter key, so "
                "MeterReadings refuses its readings",
            )
        if not self.active:
            return RegistryProblem(
                "inactive",
                f"meter {self.meter} belongs to participant {self.wallet}, which is inactive: "
                "MeterReadings refuses its readings",
            )
        if announced_bus is not None and str(announced_bus) != str(self.bus_id):
            return RegistryProblem(
                "bus_mismatch",
                f"meter {self.meter} announces bus {announced_bus}, but the registry connects "
                f"its participant {self.wallet} at bus {self.bus_id}: the registry's bus counts",
            )
        return None


class MeterRegistry:
    """Reads of one ``ParticipantRegistry``: many meters in two JSON-RPC round trips
    (``meterRecordOf`` of every meter, then ``participantOf`` of their wallets)."""

    def __init__(self, w3: Any, registry_address: str) -> None:
        self.w3 = w3
        registry = contract_at(w3, "ParticipantRegistry", registry_address)
        self._meter_record = AbiFunction(registry, "meterRecordOf")
        self._participant_of = AbiFunction(registry, "participantOf")

    def owners(self, meters: Sequence[str]) -> dict[str, MeterOwner]:
        """The registry's record of each meter, by checksummed meter address. Raises
        ``ChainUnavailableError`` when the node does not answer, ``LedgerError`` when it
        answers a read with an error (not a registry at that address)."""
        keys = [checksum(m) for m in meters]
        records = self._calls(self._meter_record, keys)
        wallets: dict[str, str] = {}
        for meter, (wallet, _index, _active) in zip(keys, records, strict=True):
            if int(wallet, 16) != 0:
                wallets[meter] = checksum(wallet)
        unique = sorted(set(wallets.values()))
        participants = dict(zip(unique, self._calls(self._participant_of, unique), strict=True))
        out: dict[str, MeterOwner] = {}
        for meter in keys:
            wallet = wallets.get(meter)
            if wallet is None:
                out[meter] = MeterOwner(meter)
                continue
            p = participants[wallet]  # (meter, index, busId, active, maxExportW, maxImportW)
            out[meter] = MeterOwner(meter, wallet, int(p[2]), bool(p[3]))
        return out

    def _calls(self, fn: AbiFunction, args: Sequence[Any]) -> list[Any]:
        if not args:
            return []
        try:
            raw = batch_eth_call(
                self.w3,
                [(fn.address, fn.data(*a) if isinstance(a, tuple) else fn.data(a)) for a in args],
            )
        except (requests.ConnectionError, requests.Timeout, ConnectionError, OSError) as exc:
            raise ChainUnavailableError(f"chain unreachable reading the registry: {exc}") from None
        out = []
        for result in raw:
            if result is None or result == "0x":
                raise LedgerError(f"no ParticipantRegistry answers at {fn.address}")
            out.append(fn.decode(result))
        return out


class DeviceRegistry(MeterRegistry):
    """Device records and grid operator role checks, batched like the meters' reads."""

    def __init__(self, w3: Any, registry_address: str) -> None:
        super().__init__(w3, registry_address)
        registry = contract_at(w3, "ParticipantRegistry", registry_address)
        self._device_of = AbiFunction(registry, "deviceOf")
        self._has_role = AbiFunction(registry, "hasRole")

    def devices(self, devices: Sequence[str]) -> dict[str, DeviceRecord]:
        """The registry's record of each device key, by checksummed address (one round trip)."""
        keys = [checksum(d) for d in devices]
        out: dict[str, DeviceRecord] = {}
        for key, rec in zip(keys, self._calls(self._device_of, keys), strict=True):
            owner, bus_id, kind, active, min_w, max_w, capacity_wh = rec
            out[key] = DeviceRecord(
                key, checksum(owner) if int(owner, 16) else None, int(bus_id), int(kind),
                bool(active), int(min_w), int(max_w), int(capacity_wh),
            )  # fmt: skip
        return out

    def is_grid_operator(self, account: str) -> bool:
        """Whether ``account`` holds ``GRID_OPERATOR_ROLE`` now."""
        return bool(self._calls(self._has_role, [(GRID_OPERATOR_ROLE, checksum(account))])[0])


@dataclass(frozen=True)
class ModeChange:
    """One ``GridModeChanged`` event: the new mode, the one before, when it came into force (block
    time) and where the event is (transaction hash, log index, block)."""

    mode: int
    previous: int
    since: int
    tx_hash: bytes
    log_index: int
    block: int


class GridModeLog(DeviceRegistry):
    """The registry's mode switches and its grid-forming devices (kinds 1 battery and 5 genset),
    read from its events: ``GridModeChanged`` and ``DeviceRegistered`` (the registry keeps no list
    of devices; a deactivated one is filtered by ``deviceOf``)."""

    def __init__(self, w3: Any, registry_address: str) -> None:
        super().__init__(w3, registry_address)
        self.registry = contract_at(w3, "ParticipantRegistry", registry_address)

    def head(self) -> int:
        try:
            return int(self.w3.eth.block_number)
        except (requests.ConnectionError, requests.Timeout, ConnectionError, OSError) as exc:
            raise ChainUnavailableError(f"chain unreachable: {exc}") from None

    def changes(self, from_block: int, to_block: int) -> list[ModeChange]:
        """The mode switches in ``[from_block, to_block]``, oldest first."""
        out = [
            ModeChange(
                int(e["args"]["mode"]), int(e["args"]["previous"]), int(e["args"]["since"]),
                bytes(e["transactionHash"]), int(e["logIndex"]), int(e["blockNumber"]),
            )
            for e in self._logs("GridModeChanged", from_block, to_block)
        ]  # fmt: skip
        return sorted(out, key=lambda c: (c.block, c.log_index))

    def grid_forming(
        self, from_block: int = 0, to_block: int | str = "latest"
    ) -> list[DeviceRecord]:
        """The active grid-forming devices registered in ``[from_block, to_block]`` (from the
        deployment's block: all of them), in registration order."""
        keys: list[str] = []
        for e in self._logs("DeviceRegistered", from_block, to_block):
            if int(e["args"]["kind"]) in GRID_FORMING_KINDS:
                keys.append(checksum(e["args"]["device"]))
        records = self.devices(keys)
        return [r for key in keys if (r := records[key]).active and r.owner is not None]

    def _logs(self, event: str, from_block: int, to_block: int | str) -> list[Any]:
        try:
            return list(
                getattr(self.registry.events, event).get_logs(
                    from_block=from_block, to_block=to_block
                )
            )
        except (requests.ConnectionError, requests.Timeout, ConnectionError, OSError) as exc:
            raise ChainUnavailableError(
                f"chain unreachable reading registry events: {exc}"
            ) from None
