"""ParticipantRegistry devices: registration by the grid operator, every refusal with its exact
custom error, deactivation, and the one-key-one-role rule against wallets and meters."""

from typing import Any

import brownie
from conftest import err
from eth_account import Account

from backend.chain import protocol

ZERO = "0x0000000000000000000000000000000000000000"
BATTERY, EV, HEAT_PUMP, PV, GENSET = 1, 2, 3, 4, 5


def _bus(ledger: Any, wallet: Any) -> int:
    return int(ledger.registry.participantOf(wallet)[2])


def test_register_device_stores_record_and_emits(ledger: Any, parts: Any) -> None:
    device = Account.create().address
    bus = _bus(ledger, parts.S1)
    tx = ledger.registry.registerDevice(
        device, parts.S1, bus, BATTERY, -5000, 4000, 13_500, {"from": ledger.dso}
    )
    ev = tx.events["DeviceRegistered"]
    assert (ev["device"], ev["owner"], ev["busId"], ev["kind"]) == (device, parts.S1, bus, 1)
    assert (ev["minW"], ev["maxW"], ev["capacityWh"]) == (-5000, 4000, 13_500)
    assert tuple(ledger.registry.deviceOf(device)) == (
        parts.S1, bus, BATTERY, True, -5000, 4000, 13_500
    )  # fmt: skip
    # measured 82,990: 21k base, two fresh slots (2 x 22.1k), five cold reads (role, owner, the
    # device key as device, wallet and meter), the event
    assert tx.gas_used <= 85_000
    pv = Account.create().address
    ledger.registry.registerDevice(pv, parts.S1, bus, PV, 0, 3000, 0, {"from": ledger.dso})
    assert tuple(ledger.registry.deviceOf(pv)) == (parts.S1, bus, PV, True, 0, 3000, 0)


def test_device_of_unknown_is_zero(ledger: Any) -> None:
    assert tuple(ledger.registry.deviceOf(Account.create().address)) == (ZERO, 0, 0, False, 0, 0, 0)


def test_device_states_of_layout(ledger: Any, parts: Any) -> None:
    """deviceStatesOf's word per packed key: the device's first slot as stored (owner | kind |
    active | minW | maxW, DeviceState.sol) and bit 248 for an active owner; zero when unknown."""
    reg, dso = ledger.registry, {"from": ledger.dso}
    battery, ev, unknown = (Account.create().address for _ in range(3))
    bus = _bus(ledger, parts.S1)
    reg.registerDevice(battery, parts.S1, bus, BATTERY, -5_000, 4_000, 13_500, dso)
    reg.registerDevice(ev, parts.S1, bus, EV, -11_000, 0, 0, dso)
    reg.deactivateDevice(ev, dso)

    def word(
        owner: str, kind: int, active: bool, min_w: int, max_w: int, owner_active: bool
    ) -> int:
        return (
            int(owner, 16) | kind << 160 | int(active) << 168 | (min_w % 2**32) << 176
            | (max_w % 2**32) << 208 | int(owner_active) << 248
        )  # fmt: skip

    keys = b"".join(bytes.fromhex(k[2:]) for k in (battery, ev, unknown))
    assert list(reg.deviceStatesOf(keys)) == [
        word(parts.S1.address, BATTERY, True, -5_000, 4_000, True),
        word(parts.S1.address, EV, False, -11_000, 0, True),
        0,
    ]
    reg.deactivate(parts.S1, dso)
    assert reg.deviceStatesOf(keys[:20])[0] == word(
        parts.S1.address, BATTERY, True, -5_000, 4_000, False
    )
    with brownie.reverts(err("RegistryMalformedDevices", 21)):
        reg.deviceStatesOf(keys[:21])


def test_register_device_not_grid_operator_reverts(ledger: Any, parts: Any) -> None:
    role = ledger.registry.GRID_OPERATOR_ROLE()
    with brownie.reverts(err("AccessControlUnauthorizedAccount", parts.S1.address, role)):
        ledger.registry.registerDevice(
            Account.create().address, parts.S1, _bus(ledger, parts.S1), PV, 0, 1, 0,
            {"from": parts.S1},
        )  # fmt: skip


def test_register_device_refusals_are_exact(ledger: Any, parts: Any) -> None:
    dso, s1 = {"from": ledger.dso}, parts.S1
    bus = _bus(ledger, s1)
    dev = Account.create().address
    cases = [
        ((ZERO, s1, bus, PV, 0, 1, 0), err("RegistryZeroAddress")),
        ((dev, ZERO, bus, PV, 0, 1, 0), err("RegistryZeroAddress")),
        ((dev, s1, bus, 0, 0, 1, 0), err("RegistryUnknownDeviceKind", 0)),
        ((dev, s1, bus, 6, 0, 1, 0), err("RegistryUnknownDeviceKind", 6)),
        ((dev, s1, bus, GENSET, -1, 160_000, 0), err("RegistryDeviceLimits", -1, 160_000)),
        ((dev, s1, bus, GENSET, 0, 1, 5_000), err("RegistryDeviceCapacity", GENSET, 5_000)),
        ((dev, s1, bus, HEAT_PUMP, -100, -200, 0), err("RegistryDeviceLimits", -100, -200)),
        ((dev, s1, bus, BATTERY, -1, 1, 0), err("RegistryDeviceCapacity", BATTERY, 0)),
        ((dev, s1, bus, EV, -1, 0, 40_000), err("RegistryDeviceCapacity", EV, 40_000)),
        ((dev, parts.X, bus, PV, 0, 1, 0), err("RegistryOwnerNotActive", parts.X.address)),
        ((dev, s1, bus + 1, PV, 0, 1, 0), err("RegistryDeviceBus", bus + 1, bus)),
        ((parts.S2, s1, bus, PV, 0, 1, 0), err("RegistryKeyInUse", parts.S2.address)),
        ((ledger.meter_of(parts.B1), s1, bus, PV, 0, 1, 0),
         err("RegistryKeyInUse", ledger.meter_of(parts.B1))),
    ]  # fmt: skip
    for args, reason in cases:
        with brownie.reverts(reason):
            ledger.registry.registerDevice(*args, dso)
    assert ledger.registry.deviceOf(dev)[0] == ZERO
    ledger.registry.registerDevice(dev, s1, bus, PV, 0, 1, 0, dso)
    with brownie.reverts(err("RegistryKeyInUse", dev)):
        ledger.registry.registerDevice(dev, parts.S2, _bus(ledger, parts.S2), PV, 0, 1, 0, dso)
    ledger.registry.deactivate(parts.S2, dso)
    with brownie.reverts(err("RegistryOwnerNotActive", parts.S2.address)):
        ledger.registry.registerDevice(
            Account.create().address, parts.S2, _bus(ledger, parts.S2), PV, 0, 1, 0, dso
        )


def test_device_key_cannot_become_wallet_or_meter(ledger: Any, parts: Any) -> None:
    dso = {"from": ledger.dso}
    dev = Account.create().address
    ledger.registry.registerDevice(dev, parts.S1, _bus(ledger, parts.S1), PV, 0, 1, 0, dso)
    with brownie.reverts(err("RegistryKeyInUse", dev)):
        ledger.registry.connect(dev, Account.create().address, 1, 1, 1, dso)
    with brownie.reverts(err("RegistryKeyInUse", dev)):
        ledger.registry.connect(parts.X, dev, 1, 1, 1, dso)
    with brownie.reverts(err("RegistryKeyInUse", dev)):
        ledger.registry.rotateMeter(parts.S1, dev, dso)


def test_deactivate_device(ledger: Any, parts: Any) -> None:
    dso = {"from": ledger.dso}
    dev = Account.create().address
    bus = _bus(ledger, parts.S1)
    ledger.registry.registerDevice(dev, parts.S1, bus, EV, -11_000, 0, 0, dso)
    role = ledger.registry.GRID_OPERATOR_ROLE()
    with brownie.reverts(err("AccessControlUnauthorizedAccount", parts.S1.address, role)):
        ledger.registry.deactivateDevice(dev, {"from": parts.S1})
    tx = ledger.registry.deactivateDevice(dev, dso)
    ev = tx.events["DeviceDeactivated"]
    assert (ev["device"], ev["owner"]) == (dev, parts.S1)
    assert tuple(ledger.registry.deviceOf(dev)) == (parts.S1, bus, EV, False, -11_000, 0, 0)
    with brownie.reverts(err("RegistryDeviceInactive", dev)):
        ledger.registry.deactivateDevice(dev, dso)
    other = Account.create().address
    with brownie.reverts(err("RegistryUnknownDevice", other)):
        ledger.registry.deactivateDevice(other, dso)
    # the key stays taken: no second registration after deactivation
    with brownie.reverts(err("RegistryKeyInUse", dev)):
        ledger.registry.registerDevice(dev, parts.S1, bus, EV, -11_000, 0, 0, dso)


def test_every_backend_kind_registers(ledger: Any, parts: Any) -> None:
    """``protocol.DEVICE_KINDS`` is exactly what the registry takes, a capacity for the battery
    (``protocol.DEVICE_BATTERY``) only."""
    bus = _bus(ledger, parts.S1)
    for kind in protocol.DEVICE_KINDS:
        capacity = 5000 if kind == protocol.DEVICE_BATTERY else 0
        min_w = 0 if kind == protocol.DEVICE_GENSET else -1
        dev = Account.create().address
        ledger.registry.registerDevice(
            dev, parts.S1, bus, kind, min_w, 1, capacity, {"from": ledger.dso}
        )
        assert ledger.registry.deviceOf(dev)[2] == kind
    assert (min(protocol.DEVICE_KINDS), max(protocol.DEVICE_KINDS)) == (1, 5)
    assert {protocol.DEVICE_BATTERY, protocol.DEVICE_GENSET} == protocol.GRID_FORMING_KINDS


def test_register_genset_stores_record(ledger: Any, parts: Any) -> None:
    """A genset (kind 5): minimum stable load >= 0, no capacity; registration gas as a battery's."""
    genset = Account.create().address
    bus = _bus(ledger, parts.S1)
    tx = ledger.registry.registerDevice(
        genset, parts.S1, bus, GENSET, 48_000, 160_000, 0, {"from": ledger.dso}
    )
    ev = tx.events["DeviceRegistered"]
    assert (ev["kind"], ev["minW"], ev["maxW"], ev["capacityWh"]) == (GENSET, 48_000, 160_000, 0)
    assert tuple(ledger.registry.deviceOf(genset)) == (
        parts.S1, bus, GENSET, True, 48_000, 160_000, 0
    )  # fmt: skip
    assert tx.gas_used <= 85_000
