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

    /// @dev A batch while it is submitted: calldata position, the registry's word per meter, the EIP-712
    /// domain, the interval's ring position, and the ring slot being filled (key, value as stored, value).
    struct Cursor {
        uint256 base;
        uint256[] records;
        bytes32 domain;
        uint256 ring;
        uint256 key;
        uint256 stored;
        uint256 word;
    }

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
    /// @dev Packed calldata, one registry call for the batch's meters, the ecrecover precompile, and each
    /// ring slot read and written once per run of readings that share it (oracle batches come sorted by
    /// participant, so three consecutive readings usually do).
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
        Cursor memory c;
        assembly ("memory-safe") {
            mstore(c, readings.offset)
        }
        c.records = _meterRecords(c.base, n);
        c.domain = _domainSeparatorV4();
        c.ring = (uint256(intervalId) % readingWindowIntervals) << 32;
        c.key = type(uint256).max;
        unchecked {
            for (uint256 i = 0; i < n; ++i) {
                if (_submitOne(c, intervalId, i)) ++accepted;
            }
        }
        _flush(c);
    }

    /// @dev One reading: stored and announced, rejected with its reason, or ignored when identical.
    function _submitOne(Cursor memory c, uint64 intervalId, uint256 i) private returns (bool) {
        unchecked {
            uint256 rp = c.base + i * READING_SIZE;
            address meter;
            uint256 importWh;
            uint256 exportWh;
            assembly ("memory-safe") {
                meter := shr(96, calldataload(rp))
                importWh := shr(192, calldataload(add(rp, 20)))
                exportWh := shr(192, calldataload(add(rp, 28)))
            }
            uint8 reason = _check(c, intervalId, rp, i);
            if (reason == 0) reason = _store(c, intervalId, c.records[i] & type(uint32).max, importWh, exportWh);
            if (reason == 0) {
                emit ReadingSubmitted(meter, intervalId, uint64(importWh), uint64(exportWh));
                return true;
            }
            if (reason != IDENTICAL) emit ReadingRejected(meter, intervalId, reason);
            return false;
        }
    }

    /// @dev Signature, registration, active flag and value range of the reading at calldata position rp.
    function _check(Cursor memory c, uint64 intervalId, uint256 rp, uint256 i) private view returns (uint8) {
        bytes32 digest;
        bytes32 r;
        bytes32 vs;
        address meter;
        uint256 values;
        bytes32 typeHash = READING_TYPEHASH;
        bytes32 domain = c.domain;
        assembly ("memory-safe") {
            let m := mload(0x40)
            meter := shr(96, calldataload(rp))
            mstore(m, typeHash)
            mstore(add(m, 0x20), meter)
            mstore(add(m, 0x40), intervalId)
            mstore(add(m, 0x60), shr(192, calldataload(add(rp, 20))))
            mstore(add(m, 0x80), shr(192, calldataload(add(rp, 28))))
            values := or(mload(add(m, 0x60)), mload(add(m, 0x80)))
            let structHash := keccak256(m, 0xa0)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), domain)
            mstore(add(m, 0x22), structHash)
            digest := keccak256(m, 0x42)
            r := calldataload(add(rp, 36))
            vs := calldataload(add(rp, 68))
        }
        address signer = CompactSignature.recover(digest, r, vs);
        if (signer == address(0) || signer != meter) return BAD_SIGNATURE;
        uint256 record = c.records[i];
        if (record & (1 << 33) == 0) return UNKNOWN_METER;
        if (record & (1 << 32) == 0) return INACTIVE;
        if (values > MAX_WH) return VALUE_TOO_LARGE; // the larger of the two has the highest bit
        return 0;
    }

    /// @dev Puts the reading into its ring lane; 0 when stored, CONFLICTING or IDENTICAL otherwise.
    function _store(Cursor memory c, uint64 intervalId, uint256 index, uint256 importWh, uint256 exportWh)
        private
        returns (uint8)
    {
        unchecked {
            uint256 key = c.ring | (index / LANES);
            if (key != c.key) {
                _flush(c);
                uint256 stored = _ring[key];
                c.key = key;
                c.stored = stored;
                // a slot still holding an older interval (window intervals back) starts empty
                c.word = stored >> 192 == intervalId ? stored : uint256(intervalId) << 192;
            }
            uint256 shift = (index % LANES) * 64;
            uint256 lane = (c.word >> shift) & LANE_MASK;
            uint256 newLane = PRESENT | (importWh << 32) | exportWh;
            if (lane != 0) return lane == newLane ? IDENTICAL : CONFLICTING;
            c.word |= newLane << shift;
            return 0;
        }
    }

    /// @dev Writes the cursor's slot back if a reading went into it.
    function _flush(Cursor memory c) private {
        if (c.key != type(uint256).max && c.word != c.stored) _ring[c.key] = c.word;
    }

    /// @dev One registry call for every meter of the batch.
    function _meterRecords(uint256 base, uint256 n) private view returns (uint256[] memory) {
        address[] memory meters = new address[](n);
        assembly ("memory-safe") {
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                mstore(add(meters, shl(5, add(i, 1))), shr(96, calldataload(add(base, mul(i, 100)))))
            }
        }
        return registry.meterStatesOf(meters);
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
    function meteredOf(uint64 intervalId, uint32[] calldata indices) external view returns (uint256[] memory metered) {
        uint256 n = indices.length;
        metered = new uint256[](n);
        uint256 ring = (uint256(intervalId) % readingWindowIntervals) << 32;
        unchecked {
            for (uint256 i = 0; i < n; ++i) {
                uint256 index = indices[i];
                uint256 word = _ring[ring | (index / LANES)];
                if (word >> 192 != intervalId) continue; // never written, or reused by a later interval
                uint256 lane = (word >> ((index % LANES) * 64)) & LANE_MASK;
                if (lane & PRESENT == 0) continue;
                metered[i] = (1 << 128) | ((lane & type(uint32).max) << 64) | ((lane >> 32) & MAX_WH);
            }
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
