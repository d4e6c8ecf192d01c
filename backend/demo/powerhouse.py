"""The islanded demo's grid-forming units as registered devices: the network's own units (the
village's battery and genset, ``grid.island``) registered in the ``ParticipantRegistry`` behind a
powerhouse participant at their bus, a simulated device for each (``DeviceFleet``) and a
dispatcher (``Dispatcher`` with ``RegistryModes``) that sends them the signed mode action when the
grid operator switches to islanded. The market then validates the islanded intervals with these
registered devices (``Clearer.island_units``): the same limits, capacity and state of charge at
the start of the day (half full, the village's own) as the network's definition, so the island's
numbers are the same; what changes is where they come from.

The dispatcher writes to the settings' control store, which the API reads (``GET
/control/actions``, ``control`` events). The devices publish no readings or state of charge here:
the demo's meters and checks stay as they are, and the validator's day walk gives the state of
charge."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_utils import keccak

from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import Deployment, contract_at
from backend.chain.protocol import DEVICE_BATTERY, DEVICE_GENSET
from backend.chain.registry import GridModeLog
from backend.iot.control import registry_domain
from backend.iot.control_store import ACKNOWLEDGED, FINAL, ControlStore
from backend.iot.devices import DeviceFleet, DeviceSpec
from backend.iot.dispatcher import Dispatcher, StoreActivations
from backend.iot.modes import RegistryModes
from backend.iot.signing import ReadingDomain
from backend.iot.transport import InProcessTransport, MqttTransport
from grid.island import Island

SEED = "tegrid demo powerhouse"


def _key(label: str) -> str:
    return "0x" + keccak(text=f"{SEED} {label}").hex()


@dataclass
class Powerhouse:
    """The registered units' simulated devices and the dispatcher that tells them the mode."""

    specs: list[tuple[str, DeviceSpec]]  # (unit name, device)
    fleet: DeviceFleet
    dispatcher: Dispatcher
    store: ControlStore

    def switch_acks(self, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Dispatch the mode actions of the latest switch and wait until every device answered
        (or ``timeout_s``): one entry per device, its action's state and the ack's values."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.dispatcher.step()
            rows = {r.device: r for r in self.store.actions() if r.kind == "mode"}
            latest = {
                spec.address: rows.get(spec.address) for _name, spec in self.specs
            }  # one switch per device in this demo run
            if all(r is not None and r.state in FINAL for r in latest.values()):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out = []
        for name, spec in self.specs:
            row = latest.get(spec.address)
            out.append({
                "unit": name, "device": spec.address, "kind": "battery"
                if spec.kind == DEVICE_BATTERY else "genset",
                "state": None if row is None else row.state,
                "acked": row is not None and row.state == ACKNOWLEDGED,
                "appliedW": None if row is None else row.applied_w,
                "effectiveInterval": None if row is None else row.interval_id,
            })  # fmt: skip
        return out


def start_powerhouse(
    rpc_url: str,
    deployment: Deployment,
    operator_key: str,
    island: Island,
    transport: MqttTransport | InProcessTransport,
    control_database_url: str,
    interval_seconds: int,
    on_stop: Callable[[Callable[[], Any]], None],
    say: Callable[[str], None] = lambda _line: None,
) -> Powerhouse:
    """Register the powerhouse participant and ``island``'s units as devices, start their
    simulated devices and the dispatcher (their stops handed to ``on_stop``, in start order)."""
    client = ChainClient(rpc_url, operator_key)
    registry_address = deployment.address("ParticipantRegistry")
    registry = contract_at(client.w3, "ParticipantRegistry", registry_address)
    bus = int(island.forming.bus)
    wallet, meter = Account.from_key(_key("wallet")).address, Account.from_key(_key("meter"))
    export_w = int(sum(max(u.max_kw, 0.0) for u in island.units) * 1000)
    import_w = int(sum(max(-u.min_kw, 0.0) for u in island.units) * 1000)
    client.transact(registry.functions.connect(wallet, meter.address, bus, export_w, import_w))
    specs: list[tuple[str, DeviceSpec]] = []
    for unit in island.units:
        kind = DEVICE_BATTERY if unit.kind == "battery" else DEVICE_GENSET
        capacity_wh = int(unit.capacity_kwh * 1000)
        spec = DeviceSpec(
            _key(unit.name), kind=kind, min_w=int(unit.min_kw * 1000),
            max_w=int(unit.max_kw * 1000), capacity_wh=capacity_wh,
            soc_wh=int(unit.soc_kwh * 1000),
        )  # fmt: skip
        client.transact(registry.functions.registerDevice(
            spec.address, wallet, int(unit.bus), kind, spec.min_w, spec.max_w, capacity_wh
        ))  # fmt: skip
        specs.append((unit.name, spec))
        say(f"powerhouse: {unit.kind} {unit.name} registered as device {spec.address}")
    w3 = client.w3
    log = GridModeLog(w3, registry_address)
    domain = registry_domain(deployment.chain_id, registry_address)

    def transport_of(client_id: str, persistent: bool = False) -> Any:
        if isinstance(transport, InProcessTransport):
            return InProcessTransport(transport.broker, client_id, clean_session=not persistent)
        return MqttTransport(transport.url, client_id, clean_session=not persistent,
                             manual_ack=persistent)  # fmt: skip

    devices_transport = transport_of("tegrid-demo-powerhouse")
    fleet = DeviceFleet(
        [spec for _n, spec in specs], domain,
        ReadingDomain(deployment.chain_id, deployment.address("MeterReadings")),
        devices_transport, interval_seconds, log.is_grid_operator, log.devices,
        lambda: chain_time(w3), say,
    )  # fmt: skip
    fleet.sync_registry()
    fleet.start()
    devices_transport.connect()
    on_stop(devices_transport.close)
    store = ControlStore(control_database_url)
    on_stop(store.close)
    dispatcher_transport = transport_of("tegrid-demo-dispatcher", persistent=True)
    dispatcher = Dispatcher(
        store, StoreActivations(store), dispatcher_transport, domain, operator_key,
        interval_seconds, lambda: chain_time(w3), retry_s=1.0, say=say,
        modes=RegistryModes(log, interval_seconds, from_block=deployment.block),
    )  # fmt: skip
    dispatcher.start()
    dispatcher_transport.connect()
    on_stop(dispatcher_transport.close)
    on_stop(dispatcher.stop)
    return Powerhouse(specs, fleet, dispatcher, store)
