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
    /// @notice Packed meter keys (`meterStatesOf`) whose length is not a multiple of 20 bytes.
    /// @param length The length of `meters` in bytes.
    error RegistryMalformedMeters(uint256 length);

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
