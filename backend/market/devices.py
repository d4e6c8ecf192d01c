"""Controllable devices (battery, EV charger, heat pump, PV inverter, genset) join through the
plug-and-play path, as connections do: the owner's wallet signs a ``DeviceRegistration`` and the
device key signs the same typed data (proof of possession), the Neural Grid checks the hosting
capacity at the bus for the device's export and import, and the grid operator key registers it in
``ParticipantRegistry``.

Every check that can fail is made before the transaction, so a refused request changes nothing;
the registry repeats the ones it can (kind, limits, capacity, owner active, owner's bus, one key
one role) and a race lost between the two is answered with the same error."""

from __future__ import annotations

from typing import Any

from backend.chain import protocol
from backend.chain.address import checksum
from backend.market import typed
from backend.market.connections import RegistryDesk
from backend.market.errors import (
    ConflictError,
    ConnectionRequestRefusedError,
    DeviceInUseError,
    InvalidOrderError,
    NotFoundError,
    OrderExpiredError,
    OverConnectionLimitError,
    WrongBusError,
)
from backend.market.models import DeviceRow
from backend.market.ports import Device


class Devices(RegistryDesk):
    def register(
        self, message: dict[str, Any], owner_signature: str, device_signature: str
    ) -> DeviceRow:
        """Check and register a device; raises a ``MarketError`` subclass naming the field at
        fault, before anything is sent, for every bad input."""
        msg = dict(message)
        for key in ("owner", "device"):
            typed.address_bytes(msg.get(key), key)
            msg[key] = checksum(msg[key])
        owner, device = msg["owner"], msg["device"]
        digest = self.registry_domain.digest("DeviceRegistration", msg)
        for key, signature, who, role in (
            ("signature", owner_signature, owner, "owner"),
            ("deviceSignature", device_signature, device, "device"),
        ):
            typed.require_signer(digest, signature, who, role, subject=key, field=key)
        now = self.ledger.now()
        if msg["expiry"] <= now:
            raise OrderExpiredError(
                f"the request expired at {msg['expiry']}; the chain time is {now}", field="expiry"
            )
        kind, min_w, max_w, capacity_wh = msg["kind"], msg["minW"], msg["maxW"], msg["capacityWh"]
        _check_device_values(device, kind, min_w, max_w, capacity_wh)
        participant = self.intake.active_participant(owner, fresh=True, field="owner")
        if msg["busId"] != participant.bus_id:
            raise WrongBusError(
                f"the device must sit at its owner's connection point, bus {participant.bus_id},"
                f" not bus {msg['busId']}"
            )
        if max_w > participant.max_export_w:
            raise OverConnectionLimitError(
                f"maxW {max_w} W exceeds the owner's export limit of {participant.max_export_w} W",
                field="maxW",
            )
        if -min_w > participant.max_import_w:
            raise OverConnectionLimitError(
                f"minW {min_w} W exceeds the owner's import limit of {participant.max_import_w} W",
                field="minW",
            )
        if (
            self.ledger.device(device) is not None
            or self.intake.participant(device, fresh=True) is not None
        ):
            raise DeviceInUseError(f"the key {device} is already a device, a wallet or a meter key")
        export_cap, import_cap = self._hosting(msg["busId"], max_w, min_w)
        tx_hash = self.ledger.register_device(
            device, owner, msg["busId"], kind, min_w, max_w, capacity_wh
        )
        if not self.ledger.wait(tx_hash).ok:
            raise ConflictError(
                f"the registry refused the device (transaction {tx_hash} reverted)",
                reason="REGISTRY_REFUSED",
            )
        self.store.save_device(
            {
                "device": device,
                "owner": owner,
                "bus_id": msg["busId"],
                "kind": kind,
                "min_w": min_w,
                "max_w": max_w,
                "capacity_wh": capacity_wh,
                "hosting_export_w": export_cap,
                "hosting_import_w": import_cap,
                "tx_hash": tx_hash,
            }
        )
        self.events.publish(
            "device",
            {"device": device, "owner": owner, "busId": msg["busId"], "kind": kind,
             "status": "registered"},
        )  # fmt: skip
        row = self.store.get_device(device)
        assert row is not None
        return row

    def _hosting(self, bus_id: int, max_w: int, min_w: int) -> tuple[int | None, int | None]:
        """The Neural Grid's hosting capacity at the bus for the device's export (maxW > 0) and
        import (minW < 0); 422 HOSTING_CAPACITY with both numbers when one is exceeded."""
        if self.grid is None:
            return None, None
        if bus_id not in self.grid.load_buses():
            raise ConnectionRequestRefusedError(
                f"bus {bus_id} is not a connectable bus of the grid",
                reason="UNKNOWN_BUS",
                field="busId",
            )
        export_cap = self.grid.hosting_capacity_w(bus_id) if max_w > 0 else None
        if export_cap is not None and max_w > export_cap:
            raise ConnectionRequestRefusedError(
                f"the hosting capacity at bus {bus_id} is {export_cap} W of export, less than "
                f"the device's maxW of {max_w} W",
                reason="HOSTING_CAPACITY",
                field="maxW",
            )
        import_cap = self.grid.import_capacity_w(bus_id) if min_w < 0 else None
        if import_cap is not None and -min_w > import_cap:
            raise ConnectionRequestRefusedError(
                f"the hosting capacity at bus {bus_id} is {import_cap} W of import, less than "
                f"the device's {-min_w} W of consumption (minW {min_w} W)",
                reason="HOSTING_CAPACITY",
                field="minW",
            )
        return export_cap, import_cap

    def device(self, device: str) -> tuple[Device | None, DeviceRow | None]:
        """The registry's record (fresh) and the registration row of a device key."""
        key = checksum(device)
        return self.ledger.device(key), self.store.get_device(key)

    def get(self, device: str) -> tuple[Device, DeviceRow | None]:
        record, row = self.device(device)
        if record is None:
            raise NotFoundError(f"no device {checksum(device)}")
        return record, row


def _check_device_values(device: str, kind: int, min_w: int, max_w: int, capacity_wh: int) -> None:
    """The registry's rules on a device's values, checked before any transaction."""
    if device == protocol.ZERO_ADDRESS:
        raise InvalidOrderError("the device key must be a non-zero address", field="device")
    if kind not in protocol.DEVICE_KINDS:
        raise InvalidOrderError(
            "kind must be 1 (battery), 2 (EV charger), 3 (heat pump), 4 (PV inverter) "
            "or 5 (genset)",
            field="kind",
        )
    if min_w > max_w:
        raise InvalidOrderError(f"minW {min_w} W is above maxW {max_w} W", field="minW")
    if kind == protocol.DEVICE_GENSET and min_w < 0:
        raise InvalidOrderError(
            f"a genset cannot consume: minW {min_w} W must be >= 0", field="minW"
        )
    if kind == protocol.DEVICE_BATTERY and capacity_wh == 0:
        raise InvalidOrderError("a battery needs its capacityWh (> 0)", field="capacityWh")
    if kind != protocol.DEVICE_BATTERY and capacity_wh != 0:
        raise InvalidOrderError(
            "capacityWh is for batteries only: 0 for the other kinds", field="capacityWh"
        )
