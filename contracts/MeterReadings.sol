// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {IMeterReadings} from "./interfaces/IMeterReadings.sol";
import {IParticipantRegistry} from "./interfaces/IParticipantRegistry.sol";

/// @title MeterReadings
/// @notice Device-signed interval readings. See {IMeterReadings}.
contract MeterReadings is EIP712, IMeterReadings {
    /// @inheritdoc IMeterReadings
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)");

    uint8 internal constant BAD_SIGNATURE = 1;
    uint8 internal constant UNKNOWN_METER = 2;
    uint8 internal constant INACTIVE = 3;
    uint8 internal constant CONFLICTING = 4;
    uint8 internal constant VALUE_TOO_LARGE = 5;
    uint64 internal constant MAX_WH = (1 << 31) - 1;
    uint256 internal constant LANE_MASK = type(uint64).max;
    uint256 internal constant PRESENT = 1 << 63;

    IParticipantRegistry public immutable registry;
    /// @inheritdoc IMeterReadings
    uint64 public immutable intervalSeconds;

    // Four readings per slot, keyed by participant index: lane (index % 4) of slot (index / 4) holds
    // present (bit 63) | importWh (bits 32..62) | exportWh (bits 0..31). A batch of readings for one interval
    // writes each fresh slot once at 22,100 gas and the other three lanes at warm-slot prices.
    mapping(uint64 intervalId => mapping(uint256 group => uint256 lanes)) private _readings;

    /// @param registry_ The participant registry (roles, meters).
    /// @param intervalSeconds_ Interval length in seconds.
    constructor(IParticipantRegistry registry_, uint64 intervalSeconds_) EIP712("tegrid MeterReadings", "1") {
        if (intervalSeconds_ == 0) revert MeterReadingsInvalidInterval();
        registry = registry_;
        intervalSeconds = intervalSeconds_;
    }

    /// @inheritdoc IMeterReadings
    function submitReadings(uint64 intervalId, SignedReading[] calldata readings) external returns (uint256 accepted) {
        if (!registry.hasRole(registry.ORACLE_ROLE(), msg.sender)) revert MeterReadingsNotOracle(msg.sender);
        uint256 endsAt = (uint256(intervalId) + 1) * intervalSeconds;
        if (block.timestamp < endsAt) revert MeterReadingsIntervalNotEnded(intervalId, endsAt);
        mapping(uint256 => uint256) storage slots = _readings[intervalId];
        for (uint256 i = 0; i < readings.length; ++i) {
            SignedReading calldata rd = readings[i];
            uint8 reason = _store(slots, intervalId, rd);
            if (reason == 0) {
                ++accepted;
                emit ReadingSubmitted(rd.meter, intervalId, rd.importWh, rd.exportWh);
            } else if (reason != type(uint8).max) {
                emit ReadingRejected(rd.meter, intervalId, reason);
            }
        }
    }

    /// @dev Returns 0 when stored, a reason code when rejected, 255 for an identical resubmission.
    function _store(mapping(uint256 => uint256) storage slots, uint64 intervalId, SignedReading calldata rd)
        private
        returns (uint8)
    {
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(READING_TYPEHASH, rd.meter, intervalId, rd.importWh, rd.exportWh))
        );
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, rd.r, rd.vs);
        if (err != ECDSA.RecoverError.NoError || signer != rd.meter) return BAD_SIGNATURE;
        IParticipantRegistry.MeterRecord memory m = registry.meterRecordOf(rd.meter);
        if (m.wallet == address(0)) return UNKNOWN_METER;
        if (!m.active) return INACTIVE;
        if (rd.importWh > MAX_WH || rd.exportWh > MAX_WH) return VALUE_TOO_LARGE;
        uint256 group = m.index >> 2;
        uint256 shift = (uint256(m.index) & 3) * 64;
        uint256 word = slots[group];
        uint256 lane = (word >> shift) & LANE_MASK;
        uint256 newLane = PRESENT | (uint256(rd.importWh) << 32) | uint256(rd.exportWh);
        if (lane != 0) return lane == newLane ? type(uint8).max : CONFLICTING;
        slots[group] = word | (newLane << shift);
        return 0;
    }

    /// @inheritdoc IMeterReadings
    function readingOf(address meter, uint64 intervalId)
        external
        view
        returns (uint64 importWh, uint64 exportWh, bool present)
    {
        uint32 index = registry.meterRecordOf(meter).index;
        if (index == 0) return (0, 0, false);
        return _lane(intervalId, index);
    }

    /// @inheritdoc IMeterReadings
    function readingsOf(uint64 intervalId, uint32[] calldata indices)
        external
        view
        returns (uint64[] memory importWh, uint64[] memory exportWh, bool[] memory present)
    {
        uint256 n = indices.length;
        importWh = new uint64[](n);
        exportWh = new uint64[](n);
        present = new bool[](n);
        for (uint256 i = 0; i < n; ++i) {
            (importWh[i], exportWh[i], present[i]) = _lane(intervalId, indices[i]);
        }
    }

    /// @inheritdoc IMeterReadings
    function readingDigest(address meter, uint64 intervalId, uint64 importWh, uint64 exportWh)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(READING_TYPEHASH, meter, intervalId, importWh, exportWh)));
    }

    function _lane(uint64 intervalId, uint32 index) private view returns (uint64, uint64, bool) {
        uint256 lane = (_readings[intervalId][index >> 2] >> ((uint256(index) & 3) * 64)) & LANE_MASK;
        return (uint64((lane >> 32) & MAX_WH), uint64(lane & type(uint32).max), lane & PRESENT != 0);
    }
}
