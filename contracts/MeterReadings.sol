// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {CompactSignature} from "./libraries/CompactSignature.sol";
import {IMeterReadings} from "./interfaces/IMeterReadings.sol";
import {IParticipantRegistry} from "./interfaces/IParticipantRegistry.sol";

/// @title MeterReadings
/// @notice Device-signed interval readings. See {IMeterReadings}.
contract MeterReadings is EIP712, IMeterReadings {
    /// @inheritdoc IMeterReadings
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)");
    /// @notice How long readings are kept at least; the ring holds ceil(RETENTION / interval) intervals.
    uint256 public constant RETENTION_SECONDS = 6 hours;

    bytes32 internal constant ORACLE_ROLE = keccak256("ORACLE_ROLE");
    uint8 internal constant BAD_SIGNATURE = 1;
    uint8 internal constant UNKNOWN_METER = 2;
    uint8 internal constant INACTIVE = 3;
    uint8 internal constant CONFLICTING = 4;
    uint8 internal constant VALUE_TOO_LARGE = 5;
    uint8 internal constant IDENTICAL = type(uint8).max;
    uint256 internal constant READING_SIZE = 100;
    uint256 internal constant LANES = 3;
    uint64 internal constant MAX_WH = (1 << 31) - 1;
    uint256 internal constant LANE_MASK = type(uint64).max;
    uint256 internal constant PRESENT = 1 << 63;

    IParticipantRegistry public immutable registry;
    /// @inheritdoc IMeterReadings
    uint64 public immutable intervalSeconds;
    /// @inheritdoc IMeterReadings
    uint64 public immutable readingWindowIntervals;

    // A ring of `readingWindowIntervals` intervals: slot (intervalId % window, index / 3) holds the interval
    // it belongs to (bits 192..255) and three readings, lane index % 3 at bits 64 * lane: present (bit 63) |
    // importWh (32..62) | exportWh (0..31). A slot is reused window intervals later (lanes of the older
    // interval dropped), so in steady state a batch writes a non-zero slot (5,000 gas) per three readings
    // instead of a fresh one (22,100 gas per four). Trade-off: readings older than the window are
    // overwritten by newer ones and are no longer readable; submissions for them are rejected.
    mapping(uint256 ringKey => uint256 slot) private _ring;

    /// @param registry_ The participant registry (roles, meters).
    /// @param intervalSeconds_ Interval length in seconds.
    constructor(IParticipantRegistry registry_, uint64 intervalSeconds_) EIP712("tegrid MeterReadings", "1") {
        if (intervalSeconds_ == 0) revert MeterReadingsInvalidInterval();
        registry = registry_;
        intervalSeconds = intervalSeconds_;
        uint256 window = (RETENTION_SECONDS + intervalSeconds_ - 1) / intervalSeconds_;
        readingWindowIntervals = uint64(window < 4 ? 4 : window);
    }

    /// @inheritdoc IMeterReadings
    function submitReadings(uint64 intervalId, bytes calldata readings) external returns (uint256 accepted) {
        if (!registry.hasRole(ORACLE_ROLE, msg.sender)) revert MeterReadingsNotOracle(msg.sender);
        if (readings.length % READING_SIZE != 0) revert MeterReadingsMalformedCalldata(readings.length);
        uint256 endsAt = (uint256(intervalId) + 1) * intervalSeconds;
        if (block.timestamp < endsAt) revert MeterReadingsIntervalNotEnded(intervalId, endsAt);
        uint256 current = block.timestamp / intervalSeconds;
        if (uint256(intervalId) + readingWindowIntervals <= current) {
            revert MeterReadingsIntervalTooOld(intervalId, uint64(current - readingWindowIntervals + 1));
        }
        uint256 n = readings.length / READING_SIZE;
        uint256 base;
        assembly ("memory-safe") {
            base := readings.offset
        }
        uint256[] memory records = _meterRecords(base, n);
        bytes32 domain = _domainSeparatorV4();
        uint256 ring = (uint256(intervalId) % readingWindowIntervals) << 32;
        unchecked {
            for (uint256 i = 0; i < n; ++i) {
                uint256 record;
                assembly ("memory-safe") {
                    record := mload(add(records, shl(5, add(i, 1))))
                }
                if (_submitOne(ring, intervalId, base + i * READING_SIZE, record, domain)) ++accepted;
            }
        }
    }

    /// @dev One reading: stored and announced, rejected with its reason, or ignored when identical.
    function _submitOne(uint256 ring, uint64 intervalId, uint256 rp, uint256 record, bytes32 domain)
        private
        returns (bool)
    {
        unchecked {
            uint8 reason = _store(ring, intervalId, rp, record, _digest(domain, intervalId, rp));
            (address meter, uint256 importWh, uint256 exportWh) = _fields(rp);
            if (reason == 0) {
                emit ReadingSubmitted(meter, intervalId, uint64(importWh), uint64(exportWh));
                return true;
            }
            if (reason != IDENTICAL) emit ReadingRejected(meter, intervalId, reason);
            return false;
        }
    }

    /// @dev One registry call for every meter of the batch.
    function _meterRecords(uint256 base, uint256 n) private view returns (uint256[] memory) {
        unchecked {
            address[] memory meters = new address[](n);
            for (uint256 i = 0; i < n; ++i) {
                (meters[i],,) = _fields(base + i * READING_SIZE);
            }
            return registry.meterStatesOf(meters);
        }
    }

    /// @dev Returns 0 when stored, a reason code when rejected, IDENTICAL for an identical resubmission.
    function _store(uint256 ring, uint64 intervalId, uint256 rp, uint256 record, bytes32 digest)
        private
        returns (uint8)
    {
        unchecked {
            (address meter, uint256 importWh, uint256 exportWh) = _fields(rp);
            bytes32 r;
            bytes32 vs;
            assembly ("memory-safe") {
                r := calldataload(add(rp, 36))
                vs := calldataload(add(rp, 68))
            }
            address signer = CompactSignature.recover(digest, r, vs);
            if (signer == address(0) || signer != meter) return BAD_SIGNATURE;
            if (record & (1 << 33) == 0) return UNKNOWN_METER;
            if (record & (1 << 32) == 0) return INACTIVE;
            if (importWh > MAX_WH || exportWh > MAX_WH) return VALUE_TOO_LARGE;
            uint256 index = record & type(uint32).max;
            uint256 key = ring | (index / LANES);
            uint256 shift = (index % LANES) * 64;
            uint256 word = _ring[key];
            if (word >> 192 != intervalId) word = uint256(intervalId) << 192; // an older interval's slot
            uint256 lane = (word >> shift) & LANE_MASK;
            uint256 newLane = PRESENT | (importWh << 32) | exportWh;
            if (lane != 0) return lane == newLane ? IDENTICAL : CONFLICTING;
            _ring[key] = word | (newLane << shift);
            return 0;
        }
    }

    /// @dev meter (20) | importWh (8) | exportWh (8) of the packed reading at calldata position rp.
    function _fields(uint256 rp) private pure returns (address meter, uint256 importWh, uint256 exportWh) {
        assembly ("memory-safe") {
            meter := shr(96, calldataload(rp))
            importWh := shr(192, calldataload(add(rp, 20)))
            exportWh := shr(192, calldataload(add(rp, 28)))
        }
    }

    function _digest(bytes32 domain, uint64 intervalId, uint256 rp)
        private
        pure
        returns (bytes32 digest)
    {
        bytes32 typeHash = READING_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typeHash)
            mstore(add(m, 0x20), shr(96, calldataload(rp)))
            mstore(add(m, 0x40), intervalId)
            mstore(add(m, 0x60), shr(192, calldataload(add(rp, 20))))
            mstore(add(m, 0x80), shr(192, calldataload(add(rp, 28))))
            let structHash := keccak256(m, 0xa0)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), domain)
            mstore(add(m, 0x22), structHash)
            digest := keccak256(m, 0x42)
        }
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

    /// @inheritdoc IMeterReadings
    function packReading(address meter, uint64 importWh, uint64 exportWh, bytes32 r, bytes32 vs)
        external
        pure
        returns (bytes memory)
    {
        return abi.encodePacked(meter, importWh, exportWh, r, vs);
    }

    function _lane(uint64 intervalId, uint32 index) private view returns (uint64, uint64, bool) {
        uint256 word = _ring[((uint256(intervalId) % readingWindowIntervals) << 32) | (index / LANES)];
        if (word >> 192 != intervalId) return (0, 0, false); // never written, or reused by a later interval
        uint256 lane = (word >> ((index % LANES) * 64)) & LANE_MASK;
        return (uint64((lane >> 32) & MAX_WH), uint64(lane & type(uint32).max), lane & PRESENT != 0);
    }
}
