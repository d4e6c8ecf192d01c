// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
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
    uint256 internal constant READING_SIZE = 100;
    uint256 internal constant ACCEPTED_SIZE = 28;
    uint256 internal constant LANES = 4;
    uint256 internal constant LANE_BITS = 48;
    uint64 internal constant MAX_WH = (1 << 23) - 1;
    uint256 internal constant LANE_MASK = (1 << 48) - 1;
    uint256 internal constant PRESENT = 1 << 47;

    IParticipantRegistry public immutable registry;
    /// @inheritdoc IMeterReadings
    uint64 public immutable intervalSeconds;
    /// @inheritdoc IMeterReadings
    uint64 public immutable readingWindowIntervals;

    // A ring of `readingWindowIntervals` intervals: slot (intervalId % window, index / 4) holds the interval
    // it belongs to (bits 192..255) and four readings, lane index % 4 at bits 48 * lane: present (bit 47) |
    // importWh (23..45) | exportWh (0..22). A slot is reused window intervals later (lanes of the older
    // interval dropped), so in steady state a batch writes a non-zero slot (2,100 + 2,900 gas) per four
    // readings instead of a fresh one (22,100). Trade-offs: readings older than the window are overwritten
    // by newer ones and are no longer readable (submissions for them are rejected), and a reading's values
    // are limited to MAX_WH = 2^23 - 1 = 8,388,607 Wh per interval (33.5 MW average over 15 minutes, far
    // above an LV/MV prosumer connection; larger values are rejected with VALUE_TOO_LARGE).
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
    /// @dev Packed calldata, one registry call for the batch's meters (packed 20-byte keys in, one word
    /// each out), then one assembly loop: digest, ecrecover precompile (EIP-2098, low s), the checks, the
    /// ring lane. A ring slot is read and written once per run of readings sharing it (oracle batches come
    /// sorted by participant). One `ReadingsSubmitted` event describes the batch's accepted readings
    /// (28 bytes each) instead of an event per reading: a LOG costs 375 per topic plus 8 per data byte, so a
    /// per-reading LOG3 with two words of data was 2,012 gas and an accepted entry now costs 224; consumers
    /// decode it with backend/chain/batches.py (`unpack_accepted`).
    function submitReadings(uint64 intervalId, bytes calldata readings) external returns (uint256 accepted) {
        if (!registry.hasRole(ORACLE_ROLE, msg.sender)) revert MeterReadingsNotOracle(msg.sender);
        if (readings.length % READING_SIZE != 0) revert MeterReadingsMalformedCalldata(readings.length);
        uint256 endsAt = (uint256(intervalId) + 1) * intervalSeconds;
        if (block.timestamp < endsAt) revert MeterReadingsIntervalNotEnded(intervalId, endsAt);
        uint256 current = block.timestamp / intervalSeconds;
        if (uint256(intervalId) + readingWindowIntervals <= current) {
            revert MeterReadingsIntervalTooOld(intervalId, uint64(current - readingWindowIntervals + 1));
        }
        uint256 base;
        assembly ("memory-safe") {
            base := readings.offset
        }
        uint256 n = readings.length / READING_SIZE;
        uint256[] memory records = _meterRecords(base, n);
        uint256[] memory ctx = new uint256[](10);
        (ctx[0], ctx[1], ctx[2]) = (uint256(READING_TYPEHASH), uint256(_domainSeparatorV4()), intervalId);
        ctx[3] = (uint256(intervalId) % readingWindowIntervals) << 32;
        ctx[4] = uint256(ReadingRejected.selector);
        ctx[5] = type(uint256).max; // no ring slot loaded yet
        bytes memory log = new bytes(n * ACCEPTED_SIZE + 32);
        assembly ("memory-safe") {
            mstore(add(ctx, 0x140), add(log, 0x20)) // ctx[9]: where the next accepted entry goes
        }
        accepted = _submitAll(base, n, records, ctx);
        assembly ("memory-safe") {
            mstore(log, mul(accepted, ACCEPTED_SIZE))
            mstore(add(add(log, 0x20), mul(accepted, ACCEPTED_SIZE)), 0) // zero padding
        }
        if (accepted != 0) emit ReadingsSubmitted(intervalId, log);
    }

    /// @dev The per-reading loop. Reasons as in {IMeterReadings}; 255 = identical resubmission (silent).
    /// ctx words: typeHash, domain, intervalId, ring position << 32, the rejection topic, then the ring
    /// slot being filled: key, storage slot, value as stored, value; then the accepted-entry pointer.
    function _submitAll(uint256 base, uint256 n, uint256[] memory records, uint256[] memory ctx)
        private
        returns (uint256 accepted)
    {
        assembly ("memory-safe") {
            let m := mload(0x40) // scratch, never allocated
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                let rp := add(base, mul(i, 100))
                let meter := shr(96, calldataload(rp))
                let importWh := shr(192, calldataload(add(rp, 20)))
                let exportWh := shr(192, calldataload(add(rp, 28)))
                let reason := 1 // BAD_SIGNATURE unless the signature recovers to meter
                {
                    let digest
                    {
                        mstore(m, mload(add(ctx, 0x20)))
                        mstore(add(m, 0x20), meter)
                        mstore(add(m, 0x40), mload(add(ctx, 0x60)))
                        mstore(add(m, 0x60), importWh)
                        mstore(add(m, 0x80), exportWh)
                        let structHash := keccak256(m, 0xa0)
                        mstore(m, hex"1901")
                        mstore(add(m, 0x02), mload(add(ctx, 0x40)))
                        mstore(add(m, 0x22), structHash)
                        digest := keccak256(m, 0x42)
                    }
                    let vs := calldataload(add(rp, 68))
                    let s := and(vs, 0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff)
                    if iszero(gt(s, 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0)) {
                        mstore(m, digest)
                        mstore(add(m, 0x20), add(shr(255, vs), 27))
                        mstore(add(m, 0x40), calldataload(add(rp, 36)))
                        mstore(add(m, 0x60), s)
                        if staticcall(gas(), 1, m, 0x80, m, 0x20) {
                            if returndatasize() {
                                if and(eq(mload(m), meter), iszero(iszero(meter))) { reason := 0 }
                            }
                        }
                    }
                }
                let record := mload(add(records, shl(5, add(i, 1))))
                if iszero(reason) {
                    reason := 2 // UNKNOWN_METER
                    if and(record, shl(33, 1)) {
                        reason := 3 // INACTIVE
                        if and(record, shl(32, 1)) {
                            reason := 5 // VALUE_TOO_LARGE: one of the two above 2^23 - 1
                            if iszero(gt(or(importWh, exportWh), 0x7fffff)) { reason := 0 }
                        }
                    }
                }
                if iszero(reason) {
                    let index := and(record, 0xffffffff)
                    let key := or(mload(add(ctx, 0x80)), shr(2, index))
                    if iszero(eq(key, mload(add(ctx, 0xc0)))) {
                        if iszero(eq(mload(add(ctx, 0x120)), mload(add(ctx, 0x100)))) {
                            sstore(mload(add(ctx, 0xe0)), mload(add(ctx, 0x120)))
                        }
                        mstore(0x00, key)
                        mstore(0x20, _ring.slot)
                        let slot := keccak256(0x00, 0x40)
                        mstore(add(ctx, 0xc0), key)
                        mstore(add(ctx, 0xe0), slot)
                        let stored := sload(slot)
                        mstore(add(ctx, 0x100), stored)
                        // a slot still holding an older interval (window intervals back) starts empty
                        let iv := mload(add(ctx, 0x60))
                        switch eq(shr(192, stored), iv)
                        case 1 { mstore(add(ctx, 0x120), stored) }
                        default { mstore(add(ctx, 0x120), shl(192, iv)) }
                    }
                    let word := mload(add(ctx, 0x120))
                    let shift := mul(and(index, 3), 48)
                    let lane := and(shr(shift, word), 0xffffffffffff)
                    let newLane := or(or(shl(47, 1), shl(23, importWh)), exportWh)
                    switch lane
                    case 0 { mstore(add(ctx, 0x120), or(word, shl(shift, newLane))) }
                    default {
                        reason := 4 // CONFLICTING
                        if eq(lane, newLane) { reason := 255 }
                    }
                }
                switch reason
                case 0 {
                    accepted := add(accepted, 1)
                    // accepted entry: meter (20) | importWh (4) | exportWh (4); the next one overwrites the tail
                    let out := mload(add(ctx, 0x140))
                    mstore(out, or(shl(96, meter), or(shl(64, importWh), shl(32, exportWh))))
                    mstore(add(ctx, 0x140), add(out, 28))
                }
                case 255 {}
                default {
                    mstore(m, reason)
                    log3(m, 0x20, mload(add(ctx, 0xa0)), meter, mload(add(ctx, 0x60)))
                }
            }
            if iszero(eq(mload(add(ctx, 0x120)), mload(add(ctx, 0x100)))) {
                sstore(mload(add(ctx, 0xe0)), mload(add(ctx, 0x120)))
            }
        }
    }

    /// @dev One registry call for every meter of the batch (the keys packed, 20 bytes each).
    function _meterRecords(uint256 base, uint256 n) private view returns (uint256[] memory) {
        bytes memory meters = new bytes(n * 20 + 12);
        assembly ("memory-safe") {
            let q := add(meters, 0x20)
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                // 32 bytes from the reading's start: the meter, then bytes the next key overwrites
                mstore(add(q, mul(i, 20)), calldataload(add(base, mul(i, 100))))
            }
            mstore(meters, mul(n, 20))
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
                uint256 lane = (word >> ((index % LANES) * LANE_BITS)) & LANE_MASK;
                if (lane & PRESENT == 0) continue;
                metered[i] = (1 << 128) | ((lane & MAX_WH) << 64) | ((lane >> 23) & MAX_WH);
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
        uint256 lane = (word >> ((index % LANES) * LANE_BITS)) & LANE_MASK;
        return (uint64((lane >> 23) & MAX_WH), uint64(lane & MAX_WH), lane & PRESENT != 0);
    }
}
