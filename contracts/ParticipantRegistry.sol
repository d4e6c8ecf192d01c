// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IParticipantRegistry} from "./interfaces/IParticipantRegistry.sol";
import {DEVICE_KEY_SIZE, DEVICE_OWNER_ACTIVE} from "./libraries/DeviceState.sol";
import {ADDRESS_SHIFT} from "./libraries/PackedField.sol";
import {
    METER_KEY_SIZE,
    REGISTRY_ACTIVE_SHIFT,
    REGISTRY_INDEX_MASK,
    REGISTRY_REGISTERED,
    RegistryState
} from "./libraries/RegistryState.sol";

/// @title ParticipantRegistry
/// @notice Roles and prosumer connections of tegrid. See {IParticipantRegistry}.
contract ParticipantRegistry is AccessControl, IParticipantRegistry {
    /// @inheritdoc IParticipantRegistry
    bytes32 public constant GRID_OPERATOR_ROLE = keccak256("GRID_OPERATOR_ROLE");
    /// @inheritdoc IParticipantRegistry
    bytes32 public constant VALIDATOR_ROLE = keccak256("VALIDATOR_ROLE");
    /// @inheritdoc IParticipantRegistry
    bytes32 public constant ORACLE_ROLE = keccak256("ORACLE_ROLE");
    /// @inheritdoc IParticipantRegistry
    bytes32 public constant MARKET_OPERATOR_ROLE = keccak256("MARKET_OPERATOR_ROLE");

    // Two slots per participant: slot 0 (meter, index, busId, active) is what trades read; slot 1 the limits.
    mapping(address wallet => Participant) private _participants;
    // One slot per meter (wallet, index, active) so a reading costs one registry SLOAD.
    mapping(address meter => MeterRecord) private _meters;
    uint32 private _count;
    // A device as stored: what offers and readings check (owner, kind, active, limits) in slot 0, the
    // bus and capacity in slot 1 (Device, the view's struct, keeps its field order for callers).
    // deviceStatesOf returns slot 0 whole (contracts/libraries/DeviceState.sol reads it); test_device_states_of_layout pins it.
    struct DeviceRecord {
        address owner;
        uint8 kind;
        bool active;
        int32 minW;
        int32 maxW;
        uint32 busId;
        uint64 capacityWh;
    }

    mapping(address device => DeviceRecord) private _devices;

    // The operating mode and when it came into force: one slot (uint8 + uint64), read together by gridMode.
    uint8 private _gridMode;
    uint64 private _gridModeSince;

    uint8 private constant DEVICE_BATTERY = 1;
    uint8 private constant DEVICE_GENSET = 5;
    uint8 private constant GRID_MODE_MAX = 1; // 0 grid-connected, 1 islanded
    uint8 private constant DEVICE_KIND_MAX = 5;

    // MeterRecord as stored (one slot, Solidity's packing in declaration order): wallet (bits 0..159) |
    // index (160..191) | active (192..199). meterStatesOf reads the slot whole; test_meter_states_of_packed_keys pins it.
    uint256 private constant METER_RECORD_WALLET_MASK = (1 << 160) - 1;
    uint256 private constant METER_RECORD_INDEX_SHIFT = 160;
    uint256 private constant METER_RECORD_ACTIVE_SHIFT = 192;
    uint256 private constant METER_RECORD_ACTIVE_MASK = 0xff;

    /// @param admin Receives DEFAULT_ADMIN_ROLE (grants the other roles).
    constructor(address admin) {
        if (admin == address(0)) revert RegistryZeroAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @inheritdoc IParticipantRegistry
    function connect(address wallet, address meter, uint32 busId, uint32 maxExportW, uint32 maxImportW)
        external
        onlyRole(GRID_OPERATOR_ROLE)
        returns (uint32 index)
    {
        if (wallet == address(0) || meter == address(0)) revert RegistryZeroAddress();
        if (_participants[wallet].index != 0) revert RegistryAlreadyConnected(wallet);
        if (_meters[meter].wallet != address(0)) revert RegistryMeterInUse(meter);
        if (_devices[wallet].owner != address(0)) revert RegistryKeyInUse(wallet);
        if (_devices[meter].owner != address(0)) revert RegistryKeyInUse(meter);
        index = ++_count;
        _participants[wallet] = Participant(meter, index, busId, true, maxExportW, maxImportW);
        _meters[meter] = MeterRecord(wallet, index, true);
        emit ParticipantConnected(wallet, meter, index, busId, maxExportW, maxImportW);
    }

    /// @inheritdoc IParticipantRegistry
    function rotateMeter(address wallet, address newMeter) external onlyRole(GRID_OPERATOR_ROLE) {
        if (newMeter == address(0)) revert RegistryZeroAddress();
        Participant storage p = _participants[wallet];
        if (p.index == 0) revert RegistryUnknownParticipant(wallet);
        if (_meters[newMeter].wallet != address(0)) revert RegistryMeterInUse(newMeter);
        if (_devices[newMeter].owner != address(0)) revert RegistryKeyInUse(newMeter);
        address oldMeter = p.meter;
        delete _meters[oldMeter];
        p.meter = newMeter;
        _meters[newMeter] = MeterRecord(wallet, p.index, p.active);
        emit MeterRotated(wallet, oldMeter, newMeter);
    }

    /// @inheritdoc IParticipantRegistry
    function deactivate(address wallet) external onlyRole(GRID_OPERATOR_ROLE) {
        Participant storage p = _participants[wallet];
        if (p.index == 0) revert RegistryUnknownParticipant(wallet);
        if (!p.active) revert RegistryParticipantInactive(wallet);
        p.active = false;
        _meters[p.meter].active = false;
        emit ParticipantDeactivated(wallet);
    }

    /// @inheritdoc IParticipantRegistry
    function reactivate(address wallet) external onlyRole(GRID_OPERATOR_ROLE) {
        Participant storage p = _participants[wallet];
        if (p.index == 0) revert RegistryUnknownParticipant(wallet);
        if (p.active) revert RegistryParticipantActive(wallet);
        p.active = true;
        _meters[p.meter].active = true;
        emit ParticipantReactivated(wallet);
    }

    /// @inheritdoc IParticipantRegistry
    function registerDevice(
        address device,
        address owner,
        uint32 busId,
        uint8 kind,
        int32 minW,
        int32 maxW,
        uint64 capacityWh
    ) external onlyRole(GRID_OPERATOR_ROLE) {
        if (device == address(0) || owner == address(0)) revert RegistryZeroAddress();
        if (kind == 0 || kind > DEVICE_KIND_MAX) revert RegistryUnknownDeviceKind(kind);
        if (minW > maxW || (kind == DEVICE_GENSET && minW < 0)) revert RegistryDeviceLimits(minW, maxW);
        if ((kind == DEVICE_BATTERY) != (capacityWh != 0)) revert RegistryDeviceCapacity(kind, capacityWh);
        Participant storage p = _participants[owner];
        if (!p.active) revert RegistryOwnerNotActive(owner);
        if (busId != p.busId) revert RegistryDeviceBus(busId, p.busId);
        if (
            _devices[device].owner != address(0) || _participants[device].index != 0
                || _meters[device].wallet != address(0)
        ) revert RegistryKeyInUse(device);
        _devices[device] = DeviceRecord(owner, kind, true, minW, maxW, busId, capacityWh);
        emit DeviceRegistered(device, owner, busId, kind, minW, maxW, capacityWh);
    }

    /// @inheritdoc IParticipantRegistry
    function deactivateDevice(address device) external onlyRole(GRID_OPERATOR_ROLE) {
        DeviceRecord storage d = _devices[device];
        if (d.owner == address(0)) revert RegistryUnknownDevice(device);
        if (!d.active) revert RegistryDeviceInactive(device);
        d.active = false;
        emit DeviceDeactivated(device, d.owner);
    }

    /// @inheritdoc IParticipantRegistry
    function setGridMode(uint8 mode) external onlyRole(GRID_OPERATOR_ROLE) {
        if (mode > GRID_MODE_MAX) revert RegistryUnknownGridMode(mode);
        uint8 previous = _gridMode;
        if (mode == previous) revert RegistryGridModeUnchanged(mode);
        uint64 since = uint64(block.timestamp);
        (_gridMode, _gridModeSince) = (mode, since);
        emit GridModeChanged(mode, previous, since);
    }

    /// @inheritdoc IParticipantRegistry
    function gridMode() external view returns (uint8 mode, uint64 since) {
        return (_gridMode, _gridModeSince);
    }

    /// @inheritdoc IParticipantRegistry
    function deviceOf(address device) external view returns (Device memory) {
        DeviceRecord storage d = _devices[device];
        return Device(d.owner, d.busId, d.kind, d.active, d.minW, d.maxW, d.capacityWh);
    }

    /// @inheritdoc IParticipantRegistry
    function deviceStatesOf(bytes calldata devices) external view returns (uint256[] memory states) {
        if (devices.length % DEVICE_KEY_SIZE != 0) revert RegistryMalformedDevices(devices.length);
        states = new uint256[](devices.length / DEVICE_KEY_SIZE);
        for (uint256 i = 0; i < states.length; ++i) {
            address device;
            assembly ("memory-safe") {
                device := shr(ADDRESS_SHIFT, calldataload(add(devices.offset, mul(i, DEVICE_KEY_SIZE))))
            }
            DeviceRecord storage d = _devices[device];
            uint256 word;
            assembly ("memory-safe") {
                word := sload(d.slot) // slot 0 whole: the layout DeviceState reads
            }
            address owner = address(uint160(word));
            states[i] = _participants[owner].active ? word | DEVICE_OWNER_ACTIVE : word;
        }
    }

    /// @inheritdoc IParticipantRegistry
    function participantOf(address wallet) external view returns (Participant memory) {
        return _participants[wallet];
    }

    /// @inheritdoc IParticipantRegistry
    function walletOfMeter(address meter) external view returns (address) {
        return _meters[meter].wallet;
    }

    /// @inheritdoc IParticipantRegistry
    function meterRecordOf(address meter) external view returns (MeterRecord memory) {
        return _meters[meter];
    }

    /// @inheritdoc IParticipantRegistry
    function isActive(address wallet) external view returns (bool) {
        return _participants[wallet].active;
    }

    /// @inheritdoc IParticipantRegistry
    function stateOf(address wallet) external view returns (bool active, uint32 index) {
        Participant storage p = _participants[wallet];
        return (p.active, p.index);
    }

    /// @inheritdoc IParticipantRegistry
    function statesOf(address[] calldata wallets) external view returns (uint256[] memory states) {
        states = new uint256[](wallets.length);
        for (uint256 i = 0; i < wallets.length; ++i) {
            Participant storage p = _participants[wallets[i]];
            states[i] = RegistryState.pack(p.index, p.active);
        }
    }

    /// @inheritdoc IParticipantRegistry
    /// @dev One keccak and one SLOAD per meter in an assembly loop (MeterRecord: wallet bits 0..159,
    /// index 160..191, active 192..199), the answer returned from where it was built (no ABI copy).
    function meterStatesOf(bytes calldata meters) external view returns (uint256[] memory) {
        if (meters.length % METER_KEY_SIZE != 0) revert RegistryMalformedMeters(meters.length);
        assembly ("memory-safe") {
            let n := div(meters.length, METER_KEY_SIZE)
            let out := mload(0x40)
            mstore(out, 0x20)
            mstore(add(out, 0x20), n)
            mstore(0x20, _meters.slot)
            let p := meters.offset
            let w := add(out, 0x40)
            for { let end := add(p, mul(n, METER_KEY_SIZE)) } lt(p, end) { p := add(p, METER_KEY_SIZE) } {
                mstore(0x00, shr(ADDRESS_SHIFT, calldataload(p)))
                let word := sload(keccak256(0x00, 0x40))
                // index | active | registered (see RegistryState); zero for an unknown key
                let state := 0
                if and(word, METER_RECORD_WALLET_MASK) {
                    state := or(
                        or(
                            and(shr(METER_RECORD_INDEX_SHIFT, word), REGISTRY_INDEX_MASK),
                            shl(REGISTRY_ACTIVE_SHIFT, and(shr(METER_RECORD_ACTIVE_SHIFT, word), METER_RECORD_ACTIVE_MASK))
                        ),
                        REGISTRY_REGISTERED
                    )
                }
                mstore(w, state)
                w := add(w, 0x20)
            }
            return(out, sub(w, out))
        }
    }

    /// @inheritdoc IParticipantRegistry
    function participantCount() external view returns (uint32) {
        return _count;
    }
}
