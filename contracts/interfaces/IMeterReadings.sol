// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Device-signed meter readings
/// @notice The oracle submits readings in batches; each reading carries its meter's own EIP-712 signature
/// (domain "tegrid MeterReadings", version "1") over
/// `Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)`.
/// One reading per participant per interval. Bad items of a batch are skipped with `ReadingRejected`;
/// a batch for an interval that has not ended reverts.
interface IMeterReadings {
    /// @notice One reading as submitted. The interval is the batch's. The signature is in EIP-2098 compact
    /// form (r, vs = yParity << 255 | s), 64 bytes instead of 65.
    struct SignedReading {
        address meter;
        uint64 importWh;
        uint64 exportWh;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice Reason codes of `ReadingRejected`.
    /// 1 BAD_SIGNATURE: the signature does not recover to `meter`.
    /// 2 UNKNOWN_METER: the meter is not registered.
    /// 3 INACTIVE: the meter's participant is deactivated.
    /// 4 CONFLICTING: a different reading for this participant and interval is already in.
    /// 5 VALUE_TOO_LARGE: importWh or exportWh above 2^31 - 1 (storage packs 4 readings per slot).

    /// @notice The caller lacks ORACLE_ROLE (in the registry).
    error MeterReadingsNotOracle(address caller);
    /// @notice Readings for an interval that has not ended yet.
    error MeterReadingsIntervalNotEnded(uint64 intervalId, uint256 endsAt);
    /// @notice Interval length of zero at deployment.
    error MeterReadingsInvalidInterval();

    /// @notice A reading was accepted.
    event ReadingSubmitted(address indexed meter, uint64 indexed intervalId, uint64 importWh, uint64 exportWh);
    /// @notice A reading of a batch was skipped; `reason` is one of the codes above.
    event ReadingRejected(address indexed meter, uint64 indexed intervalId, uint8 reason);

    /// @notice EIP-712 type hash of `Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)`.
    function READING_TYPEHASH() external view returns (bytes32);

    /// @notice Interval length in seconds (intervalId = floor(timestamp / intervalSeconds)).
    function intervalSeconds() external view returns (uint64);

    /// @notice Submit device-signed readings of one ended interval (ORACLE_ROLE). Identical resubmissions are
    /// ignored silently; other bad items emit `ReadingRejected` and are skipped.
    /// @param intervalId The interval every reading of the batch is for.
    /// @param readings The signed readings.
    /// @return accepted Number of readings stored by this call.
    function submitReadings(uint64 intervalId, SignedReading[] calldata readings) external returns (uint256 accepted);

    /// @notice The reading of a meter's participant for an interval.
    /// @param meter A meter key (its current participant is looked up).
    /// @param intervalId The interval.
    function readingOf(address meter, uint64 intervalId)
        external
        view
        returns (uint64 importWh, uint64 exportWh, bool present);

    /// @notice Readings of several participants (by registry index) for one interval, as used by settlement.
    /// @param intervalId The interval.
    /// @param indices Participant indices.
    function readingsOf(uint64 intervalId, uint32[] calldata indices)
        external
        view
        returns (uint64[] memory importWh, uint64[] memory exportWh, bool[] memory present);

    /// @notice EIP-712 digest a meter signs for a reading.
    function readingDigest(address meter, uint64 intervalId, uint64 importWh, uint64 exportWh)
        external
        view
        returns (bytes32);
}
