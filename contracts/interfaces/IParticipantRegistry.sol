// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

/// @title Participant registry of the tegrid ledger
/// @notice Roles of the system (admin, grid operator, validator, oracle, market operator) and the plug-and-play
/// register of prosumers: wallet -> meter key, grid bus, connection limits, active flag; meter -> wallet.
interface IParticipantRegistry is IAccessControl {
    /// @notice A connected prosumer. Slot 0 holds what the hot paths read (meter, index, bus, active);
    /// slot 1 the connection limits, read off-chain by the grid validator only.
    struct Participant {
        address meter; // device key that signs meter readings
        uint32 index; // dense 1-based participant number, fixed for life; MeterReadings packs by it
        uint32 busId; // grid bus the connection point is on
        bool active; // only active participants trade and report
        uint32 maxExportW; // connection limit, export
        uint32 maxImportW; // connection limit, import
    }

    /// @notice What a reading needs to know about its meter, in one storage slot.
    struct MeterRecord {
        address wallet; // participant the meter belongs to (zero: unknown meter)
        uint32 index; // the participant's index
        bool active; // the participant's active flag (kept in step with Participant.active)
    }

    /// @notice A controllable device (battery, EV charger, heat pump, PV inverter, genset) behind a participant's
    /// connection. Its key signs what the device reports and acknowledges, like a meter key. Power is
    /// signed: positive W inject into the grid, negative W consume. Two slots: owner, bus, kind, active
    /// and minW share slot 0 (what an offer check reads); maxW and capacityWh slot 1.
    struct Device {
        address owner; // participant the device belongs to (zero: unknown device)
        uint32 busId; // grid bus (the owner's connection point)
        uint8 kind; // 1 battery, 2 EV charger, 3 heat pump, 4 PV inverter, 5 genset (1 and 5 can form an island)
        bool active; // only active devices offer flexibility
        int32 minW; // lowest power the device can run at (negative: consumption)
        int32 maxW; // highest power (positive: injection)
        uint64 capacityWh; // usable energy of a battery; 0 for the other kinds
    }

    /// @notice A zero address was given for a wallet or a meter.
    error RegistryZeroAddress();
    /// @notice The wallet is already connected.
    /// @param wallet The wallet.
    error RegistryAlreadyConnected(address wallet);
    /// @notice The meter key is already registered to a participant.
    /// @param meter The meter key.
    error RegistryMeterInUse(address meter);
    /// @notice The wallet is not a registered participant.
    /// @param wallet The wallet.
    error RegistryUnknownParticipant(address wallet);
    /// @notice The participant is already inactive.
    /// @param wallet The participant.
    error RegistryParticipantInactive(address wallet);
    /// @notice The participant is already active.
    /// @param wallet The participant.
    error RegistryParticipantActive(address wallet);
    /// @notice Packed device keys (`deviceStatesOf`) whose length is not a multiple of 20 bytes.
    error RegistryMalformedDevices(uint256 length);
    /// @notice Packed meter keys (`meterStatesOf`) whose length is not a multiple of 20 bytes.
    /// @param length The length of `meters` in bytes.
    error RegistryMalformedMeters(uint256 length);

    /// @notice A device kind outside 1 (battery) .. 5 (genset).
    /// @param kind The kind given.
    error RegistryUnknownDeviceKind(uint8 kind);
    /// @notice A device's lowest power is above its highest, or a genset's is negative (it cannot consume).
    /// @param minW The lowest power given.
    /// @param maxW The highest power given.
    error RegistryDeviceLimits(int32 minW, int32 maxW);
    /// @notice A battery without an energy capacity, or another kind with one.
    /// @param kind The device kind.
    /// @param capacityWh The capacity given.
    error RegistryDeviceCapacity(uint8 kind, uint64 capacityWh);
    /// @notice The owner of a device is not a registered, active participant.
    /// @param owner The owner given.
    error RegistryOwnerNotActive(address owner);
    /// @notice A device must sit at its owner's connection point.
    /// @param busId The bus given.
    /// @param ownerBusId The owner's bus.
    error RegistryDeviceBus(uint32 busId, uint32 ownerBusId);
    /// @notice The key is already a device, a participant's wallet or a meter key: one key, one role.
    /// @param key The key.
    error RegistryKeyInUse(address key);
    /// @notice The device is not registered.
    /// @param device The device key.
    error RegistryUnknownDevice(address device);
    /// @notice The device is already inactive.
    /// @param device The device key.
    error RegistryDeviceInactive(address device);

    /// @notice A grid mode other than 0 (grid-connected) or 1 (islanded).
    /// @param mode The mode given.
    error RegistryUnknownGridMode(uint8 mode);
    /// @notice The grid is already in this mode (a switch must change something).
    /// @param mode The mode given.
    error RegistryGridModeUnchanged(uint8 mode);

    /// @notice The grid operator connected a participant.
    event ParticipantConnected(
        address indexed wallet, address indexed meter, uint32 index, uint32 busId, uint32 maxExportW, uint32 maxImportW
    );
    /// @notice The grid operator replaced a participant's meter key.
    event MeterRotated(address indexed wallet, address indexed oldMeter, address indexed newMeter);
    /// @notice The grid operator deactivated a participant.
    event ParticipantDeactivated(address indexed wallet);
    /// @notice The grid operator reactivated a participant.
    event ParticipantReactivated(address indexed wallet);

    /// @notice The grid operator registered a controllable device of a participant.
    event DeviceRegistered(
        address indexed device,
        address indexed owner,
        uint32 busId,
        uint8 kind,
        int32 minW,
        int32 maxW,
        uint64 capacityWh
    );
    /// @notice The grid operator deactivated a device (for good: its key cannot be registered again).
    event DeviceDeactivated(address indexed device, address indexed owner);

    /// @notice The grid operator switched the grid's operating mode.
    /// @param mode The new mode: 0 grid-connected, 1 islanded (no external grid; grid-forming units balance it).
    /// @param previous The mode before.
    /// @param since Block timestamp from which the new mode is in force.
    event GridModeChanged(uint8 indexed mode, uint8 previous, uint64 since);

    /// @notice Role of the distribution system operator: connects, rotates, (de)activates participants.
    function GRID_OPERATOR_ROLE() external view returns (bytes32);
    /// @notice Role of the grid validator key ("Neural Grid") that signs trade attestations.
    function VALIDATOR_ROLE() external view returns (bytes32);
    /// @notice Role of the oracle that submits device-signed meter readings.
    function ORACLE_ROLE() external view returns (bytes32);
    /// @notice Role of the market operator that records trade batches.
    function MARKET_OPERATOR_ROLE() external view returns (bytes32);

    /// @notice Approve a connection request in one call: the wallet becomes an active participant.
    /// @param wallet The participant's trading wallet.
    /// @param meter The meter's device key (signs readings).
    /// @param busId The grid bus of the connection point.
    /// @param maxExportW Maximum export power in W.
    /// @param maxImportW Maximum import power in W.
    /// @return index The participant's dense index (1-based).
    function connect(address wallet, address meter, uint32 busId, uint32 maxExportW, uint32 maxImportW)
        external
        returns (uint32 index);

    /// @notice Replace a participant's meter key (the old key can no longer sign readings).
    /// @param wallet The participant.
    /// @param newMeter The new device key.
    function rotateMeter(address wallet, address newMeter) external;

    /// @notice Deactivate a participant: it can neither trade nor report readings until reactivated.
    /// @param wallet The participant.
    function deactivate(address wallet) external;

    /// @notice Reactivate a deactivated participant.
    /// @param wallet The participant.
    function reactivate(address wallet) external;

    /// @notice Register a controllable device of an active participant at the participant's bus.
    /// @param device The device's own key (neither a wallet, a meter nor another device).
    /// @param owner The participant that owns the device.
    /// @param busId The grid bus; must be the owner's.
    /// @param kind 1 battery, 2 EV charger, 3 heat pump, 4 PV inverter, 5 diesel genset. Batteries and gensets
    /// are the grid-forming kinds: islanded, the active ones on the island's buses balance it.
    /// @param minW Lowest power in W (negative: consumption).
    /// @param maxW Highest power in W (positive: injection); at least minW.
    /// @param capacityWh Usable energy of a battery (required, > 0); 0 for the other kinds.
    function registerDevice(
        address device,
        address owner,
        uint32 busId,
        uint8 kind,
        int32 minW,
        int32 maxW,
        uint64 capacityWh
    ) external;

    /// @notice Deactivate a device: it offers no flexibility any more. Its key stays taken.
    /// @param device The device key.
    function deactivateDevice(address device) external;

    /// @notice Switch the grid's operating mode (grid operator only). The Neural Grid validates each
    /// interval in the mode in force at its gate closure.
    /// @param mode 0 grid-connected, 1 islanded; anything else reverts `RegistryUnknownGridMode`, the mode
    /// already in force `RegistryGridModeUnchanged`.
    function setGridMode(uint8 mode) external;

    /// @notice The grid's operating mode and the block timestamp it has been in force since (0: never
    /// switched, grid-connected since deployment).
    function gridMode() external view returns (uint8 mode, uint64 since);

    /// @notice The record of a device key (all zero when unknown).
    /// @param device The device key.
    function deviceOf(address device) external view returns (Device memory);

    /// @notice What an offer checks of its device, for many devices in one call (FlexibilityMarket: a
    /// batch's): per device one word (contracts/libraries/DeviceState.sol): owner (bits 0..159; zero:
    /// unknown device) | kind (160..167) | active (168..175) | minW (int32, 176..207) | maxW (int32,
    /// 208..239) | bit 248: the owner is an active participant - two storage slots each, the device's
    /// first and its owner's.
    /// @param devices Device keys packed, 20 bytes each (`RegistryMalformedDevices` otherwise).
    function deviceStatesOf(bytes calldata devices) external view returns (uint256[] memory states);

    /// @notice The participant record of a wallet (all zero when unknown).
    /// @param wallet The participant.
    function participantOf(address wallet) external view returns (Participant memory);

    /// @notice The wallet a meter belongs to (zero when unknown).
    /// @param meter The meter key.
    function walletOfMeter(address meter) external view returns (address);

    /// @notice The record of a meter key: wallet, participant index, active flag.
    /// @param meter The meter key.
    function meterRecordOf(address meter) external view returns (MeterRecord memory);

    /// @notice Whether a wallet is a registered, active participant.
    /// @param wallet The participant.
    function isActive(address wallet) external view returns (bool);

    /// @notice Active flag and index of a wallet in one call (index 0: not registered).
    /// @param wallet The participant.
    function stateOf(address wallet) external view returns (bool active, uint32 index);

    /// @notice `stateOf` of several wallets in one call, as the market reads a batch's traders.
    /// @param wallets The wallets.
    /// @return states One word per wallet: index (bits 0..31) | active (bit 32).
    function statesOf(address[] calldata wallets) external view returns (uint256[] memory states);

    /// @notice `meterRecordOf` of several meter keys in one call, as MeterReadings reads a batch.
    /// @param meters The meter keys packed, 20 bytes each (no ABI padding; cheaper to build and decode than
    /// an address[]). A length that is not a multiple of 20 reverts with `RegistryMalformedMeters(length)`.
    /// @return records One word per meter: index (bits 0..31) | active (bit 32) | registered (bit 33).
    function meterStatesOf(bytes calldata meters) external view returns (uint256[] memory records);

    /// @notice Number of participants ever connected (the highest index).
    function participantCount() external view returns (uint32);
}
