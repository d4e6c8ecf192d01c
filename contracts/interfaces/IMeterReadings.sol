// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Device-signed meter readings
/// @notice The oracle submits readings in batches; each reading carries its meter's own EIP-712 signature
/// (domain "tegrid MeterReadings", version "1") over
/// `Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)`.
/// One reading per participant per interval. Bad items of a batch are skipped with `ReadingRejected`;
/// a batch for an interval that has not ended reverts.
///
/// Packed calldata of `submitReadings` (big-endian, no padding; `packReading` builds one, and
/// backend/chain/batches.py is the Python encoder): 100 bytes per reading,
/// meter (20) | importWh (8) | exportWh (8) | r (32) | vs (32) - the meter's signature in EIP-2098 compact form
/// (vs = yParity << 255 | s, s in the lower half of the curve order). The interval is the batch's.
/// A length that is not a multiple of 100 reverts with `MeterReadingsMalformedCalldata(length)`.
/// Offsets and sizes are named in contracts/libraries/PackedReading.sol (docs/packed-calldata.md).
///
/// Readings window: readings are kept in a ring of `readingWindowIntervals` intervals (at least
/// RETENTION_SECONDS = 6 hours, at least 4 intervals); a batch for an interval older than the window
/// reverts with `MeterReadingsIntervalTooOld`, and an interval's readings are overwritten once a later
/// interval reuses its ring position, so `readingOf`/`readingsOf` only answer within the window. The market
/// requires its settlement delay to be at most half the window, and the keeper settles at the deadline.
/// Trade-off: a reused slot costs 5,000 gas per four readings instead of 22,100 for a fresh slot, at the
/// price of history: readings older than the window are only in the `ReadingsSubmitted` events (and the
/// transactions' calldata), and an interval settled later than the window counts overwritten readings as
/// missing. Four readings per slot limit importWh and exportWh to 2^23 - 1 = 8,388,607 Wh per interval
/// (33.5 MW average over a 15-minute interval, far above any LV/MV prosumer connection).
///
/// Events: one `ReadingsSubmitted(intervalId, accepted)` per batch with at least one accepted reading
/// (the batch's state change; a per-reading event cost 2,012 gas, more than a sixth of a reading), each
/// entry 28 bytes: meter (20) | importWh (4) | exportWh (4), big-endian, in calldata order;
/// backend/chain/batches.py `unpack_accepted` decodes it. Rejections stay one `ReadingRejected` each.
interface IMeterReadings {
    /// @notice Reason codes of `ReadingRejected`.
    /// 1 BAD_SIGNATURE: the signature does not recover to `meter`.
    /// 2 UNKNOWN_METER: the meter is not registered.
    /// 3 INACTIVE: the meter's participant is deactivated.
    /// 4 CONFLICTING: a different reading for this participant and interval is already in.
    /// 5 VALUE_TOO_LARGE: importWh or exportWh above 2^23 - 1 (storage packs 4 readings per slot).
    /// (MeterReadings names them: BAD_SIGNATURE .. VALUE_TOO_LARGE; an identical resubmission is skipped
    /// without an event.)

    /// @notice The caller lacks ORACLE_ROLE (in the registry).
    /// @param caller The caller.
    error MeterReadingsNotOracle(address caller);
    /// @notice Readings for an interval that has not ended yet.
    /// @param intervalId The batch's interval.
    /// @param endsAt When it ends (unix time).
    error MeterReadingsIntervalNotEnded(uint64 intervalId, uint256 endsAt);
    /// @notice Readings for an interval older than the readings window.
    /// @param intervalId The batch's interval.
    /// @param oldestIntervalId The oldest interval still accepted.
    error MeterReadingsIntervalTooOld(uint64 intervalId, uint64 oldestIntervalId);
    /// @notice Packed readings whose length is not a multiple of 100 bytes.
    /// @param length The length of `readings` in bytes.
    error MeterReadingsMalformedCalldata(uint256 length);
    /// @notice Interval length of zero at deployment.
    error MeterReadingsInvalidInterval();

    /// @notice Readings of a batch were accepted (stored); `accepted` packs them, 28 bytes each:
    /// meter (20) | importWh (4) | exportWh (4). Identical resubmissions are not in it.
    event ReadingsSubmitted(uint64 indexed intervalId, bytes accepted);
    /// @notice A device's reading was accepted (`submitDeviceReadings`): the device's own power, the
    /// delivery of its flexibility activations.
    event DeviceReadingSubmitted(address indexed device, uint64 indexed intervalId, uint64 importWh, uint64 exportWh);
    /// @notice A reading of a batch was skipped; `reason` is one of the codes above.
    event ReadingRejected(address indexed meter, uint64 indexed intervalId, uint8 reason);

    /// @notice EIP-712 type hash of `Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)`.
    function READING_TYPEHASH() external view returns (bytes32);

    /// @notice Interval length in seconds (intervalId = floor(timestamp / intervalSeconds)).
    function intervalSeconds() external view returns (uint64);

    /// @notice Number of intervals the ring keeps (see the readings window above).
    function readingWindowIntervals() external view returns (uint64);

    /// @notice Submit device-signed readings of one ended interval (ORACLE_ROLE). Identical resubmissions are
    /// ignored silently; other bad items emit `ReadingRejected` and are skipped.
    /// @param intervalId The interval every reading of the batch is for.
    /// @param readings The signed readings, packed (100 bytes each, see above).
    /// @return accepted Number of readings stored by this call.
    function submitReadings(uint64 intervalId, bytes calldata readings) external returns (uint256 accepted);

    /// @notice Submit device-signed readings of one ended interval (ORACLE_ROLE): the meters' 100-byte format
    /// and `Reading` typed data with the device key in `meter`, signed by a registered device whose device
    /// and owner are active (`deviceOf` in the registry). Same window, value limit, rejection codes
    /// (UNKNOWN_METER: not a registered device) and one reading per device per interval; each accepted
    /// reading emits `DeviceReadingSubmitted`. Apart from `submitReadings`, whose gas it leaves as it was.
    /// @return accepted Number of readings stored by this call.
    function submitDeviceReadings(uint64 intervalId, bytes calldata readings) external returns (uint256 accepted);

    /// @notice The reading of a meter's participant, or of a device, for an interval.
    /// @param meter A meter key (its current participant is looked up) or a device key.
    /// @param intervalId The interval.
    function readingOf(address meter, uint64 intervalId)
        external
        view
        returns (uint64 importWh, uint64 exportWh, bool present);

    /// @notice Devices' own readings for an interval in one call (FlexibilityMarket's settlement of a
    /// batch): per device one word, present (bit 128) | importWh (bits 64..127) | exportWh (bits 0..63)
    /// (`deviceReadingOf`'s answer).
    /// @param devices Device keys packed, 20 bytes each (`MeterReadingsMalformedCalldata` otherwise).
    function deviceReadingsOf(bytes calldata devices, uint64 intervalId)
        external
        view
        returns (uint256[] memory readings);

    /// @notice A device's own reading (`submitDeviceReadings`) for an interval, without the meter
    /// lookup `readingOf` does first.
    function deviceReadingOf(address device, uint64 intervalId)
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

    /// @notice The 100-byte packed form of a signed reading (for console users).
    function packReading(address meter, uint64 importWh, uint64 exportWh, bytes32 r, bytes32 vs)
        external
        pure
        returns (bytes memory);

    /// @notice Readings of several participants for one interval in one word each, as settlement reads
    /// them: present (bit 128) | exportWh (bits 64..127) | importWh (bits 0..63); zero when absent.
    /// @param intervalId The interval.
    /// @param indices Participant indices.
    function meteredOf(uint64 intervalId, uint32[] calldata indices) external view returns (uint256[] memory metered);

    /// @notice EIP-712 digest a meter signs for a reading.
    function readingDigest(address meter, uint64 intervalId, uint64 importWh, uint64 exportWh)
        external
        view
        returns (bytes32);
}
