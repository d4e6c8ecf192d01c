"""ParticipantRegistry: plug-and-play connection, meter rotation, (de)activation, lookups, roles."""

from typing import Any

import brownie
from conftest import err
from eth_account import Account

ZERO = "0x0000000000000000000000000000000000000000"


def test_connect_stores_participant_and_meter(ledger: Any, accounts: Any) -> None:
    meter = Account.create().address
    tx = ledger.registry.connect(accounts[9], meter, 42, 11_000, 22_000, {"from": ledger.dso})
    ev = tx.events["ParticipantConnected"]
    assert (ev["wallet"], ev["meter"], ev["index"], ev["busId"]) == (accounts[9], meter, 5, 42)
    assert (ev["maxExportW"], ev["maxImportW"]) == (11_000, 22_000)
    assert tuple(ledger.registry.participantOf(accounts[9])) == (meter, 5, 42, True, 11_000, 22_000)
    assert ledger.registry.walletOfMeter(meter) == accounts[9]
    assert tuple(ledger.registry.meterRecordOf(meter)) == (accounts[9], 5, True)
    assert ledger.registry.isActive(accounts[9])
    assert tuple(ledger.registry.stateOf(accounts[9])) == (True, 5)
    assert ledger.registry.participantCount() == 5


def test_connect_not_grid_operator_reverts(ledger: Any, accounts: Any) -> None:
    role = ledger.registry.GRID_OPERATOR_ROLE()
    with brownie.reverts(err("AccessControlUnauthorizedAccount", accounts[9].address, role)):
        ledger.registry.connect(accounts[9], accounts[8], 1, 1, 1, {"from": accounts[9]})


def test_connect_zero_address_reverts(ledger: Any, accounts: Any) -> None:
    with brownie.reverts(err("RegistryZeroAddress")):
        ledger.registry.connect(ZERO, accounts[8], 1, 1, 1, {"from": ledger.dso})
    with brownie.reverts(err("RegistryZeroAddress")):
        ledger.registry.connect(accounts[9], ZERO, 1, 1, 1, {"from": ledger.dso})


def test_connect_twice_reverts(ledger: Any, parts: Any) -> None:
    with brownie.reverts(err("RegistryAlreadyConnected", parts.S1.address)):
        ledger.registry.connect(parts.S1, Account.create().address, 1, 1, 1, {"from": ledger.dso})


def test_connect_meter_in_use_reverts(ledger: Any, parts: Any) -> None:
    meter = ledger.meter_of(parts.S1)
    with brownie.reverts(err("RegistryMeterInUse", meter)):
        ledger.registry.connect(parts.X, meter, 1, 1, 1, {"from": ledger.dso})


def test_rotate_meter_moves_lookup(ledger: Any, parts: Any) -> None:
    old = ledger.meter_of(parts.S1)
    new = Account.create().address
    tx = ledger.registry.rotateMeter(parts.S1, new, {"from": ledger.dso})
    ev = tx.events["MeterRotated"]
    assert (ev["wallet"], ev["oldMeter"], ev["newMeter"]) == (parts.S1, old, new)
    assert ledger.registry.participantOf(parts.S1)[0] == new
    assert ledger.registry.walletOfMeter(new) == parts.S1
    assert ledger.registry.walletOfMeter(old) == ZERO
    assert tuple(ledger.registry.meterRecordOf(new)) == (
        parts.S1,
        ledger.index[parts.S1.address],
        True,
    )


def test_rotate_meter_errors(ledger: Any, parts: Any) -> None:
    with brownie.reverts(err("RegistryZeroAddress")):
        ledger.registry.rotateMeter(parts.S1, ZERO, {"from": ledger.dso})
    with brownie.reverts(err("RegistryUnknownParticipant", parts.X.address)):
        ledger.registry.rotateMeter(parts.X, Account.create().address, {"from": ledger.dso})
    in_use = ledger.meter_of(parts.S2)
    with brownie.reverts(err("RegistryMeterInUse", in_use)):
        ledger.registry.rotateMeter(parts.S1, in_use, {"from": ledger.dso})
    role = ledger.registry.GRID_OPERATOR_ROLE()
    with brownie.reverts(err("AccessControlUnauthorizedAccount", parts.S1.address, role)):
        ledger.registry.rotateMeter(parts.S1, Account.create().address, {"from": parts.S1})


def test_deactivate_and_reactivate(ledger: Any, parts: Any) -> None:
    meter = ledger.meter_of(parts.S1)
    tx = ledger.registry.deactivate(parts.S1, {"from": ledger.dso})
    assert tx.events["ParticipantDeactivated"]["wallet"] == parts.S1
    assert not ledger.registry.isActive(parts.S1)
    assert ledger.registry.meterRecordOf(meter)[2] is False
    with brownie.reverts(err("RegistryParticipantInactive", parts.S1.address)):
        ledger.registry.deactivate(parts.S1, {"from": ledger.dso})
    tx = ledger.registry.reactivate(parts.S1, {"from": ledger.dso})
    assert tx.events["ParticipantReactivated"]["wallet"] == parts.S1
    assert ledger.registry.isActive(parts.S1)
    assert ledger.registry.meterRecordOf(meter)[2] is True
    with brownie.reverts(err("RegistryParticipantActive", parts.S1.address)):
        ledger.registry.reactivate(parts.S1, {"from": ledger.dso})


def test_deactivate_unknown_reverts(ledger: Any, parts: Any) -> None:
    with brownie.reverts(err("RegistryUnknownParticipant", parts.X.address)):
        ledger.registry.deactivate(parts.X, {"from": ledger.dso})
    with brownie.reverts(err("RegistryUnknownParticipant", parts.X.address)):
        ledger.registry.reactivate(parts.X, {"from": ledger.dso})


def test_rotated_meter_keeps_active_flag(ledger: Any, parts: Any) -> None:
    ledger.registry.deactivate(parts.S1, {"from": ledger.dso})
    new = Account.create().address
    ledger.registry.rotateMeter(parts.S1, new, {"from": ledger.dso})
    assert ledger.registry.meterRecordOf(new)[2] is False


def test_meter_states_of_packed_keys(ledger: Any, parts: Any) -> None:
    s1, b1 = ledger.meter_of(parts.S1), ledger.meter_of(parts.B1)
    ledger.registry.deactivate(parts.B1, {"from": ledger.dso})
    packed = b"".join(bytes.fromhex(m[2:]) for m in (s1, b1, Account.create().address))
    # index | active << 32 | registered << 33; zero for an unknown key
    assert list(ledger.registry.meterStatesOf(packed)) == [
        ledger.index[parts.S1.address] | (1 << 32) | (1 << 33),
        ledger.index[parts.B1.address] | (1 << 33),
        0,
    ]
    assert list(ledger.registry.meterStatesOf(b"")) == []
    with brownie.reverts(err("RegistryMalformedMeters", 41)):
        ledger.registry.meterStatesOf(packed[:41])


def test_grid_mode_starts_grid_connected(ledger: Any) -> None:
    assert tuple(ledger.registry.gridMode()) == (0, 0)


def test_set_grid_mode_islanded_and_back_emits_events(ledger: Any) -> None:
    tx = ledger.registry.setGridMode(1, {"from": ledger.dso})
    at = tx.timestamp
    assert dict(tx.events["GridModeChanged"]) == {"mode": 1, "previous": 0, "since": at}
    assert tuple(ledger.registry.gridMode()) == (1, at)
    back = ledger.registry.setGridMode(0, {"from": ledger.dso})
    assert dict(back.events["GridModeChanged"]) == {
        "mode": 0,
        "previous": 1,
        "since": back.timestamp,
    }
    assert tuple(ledger.registry.gridMode()) == (0, back.timestamp)


def test_set_grid_mode_not_grid_operator_reverts(ledger: Any, accounts: Any, parts: Any) -> None:
    role = ledger.registry.GRID_OPERATOR_ROLE()
    for sender in (parts.S1, ledger.admin, ledger.validator):
        with brownie.reverts(err("AccessControlUnauthorizedAccount", sender.address, role)):
            ledger.registry.setGridMode(1, {"from": sender})
    assert tuple(ledger.registry.gridMode()) == (0, 0)


def test_set_grid_mode_unknown_mode_reverts(ledger: Any) -> None:
    with brownie.reverts(err("RegistryUnknownGridMode", 2)):
        ledger.registry.setGridMode(2, {"from": ledger.dso})
    assert tuple(ledger.registry.gridMode()) == (0, 0)


def test_set_grid_mode_unchanged_reverts(ledger: Any) -> None:
    with brownie.reverts(err("RegistryGridModeUnchanged", 0)):
        ledger.registry.setGridMode(0, {"from": ledger.dso})
    ledger.registry.setGridMode(1, {"from": ledger.dso})
    with brownie.reverts(err("RegistryGridModeUnchanged", 1)):
        ledger.registry.setGridMode(1, {"from": ledger.dso})
