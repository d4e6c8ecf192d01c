// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {IMeterReadings} from "./interfaces/IMeterReadings.sol";
import {IParticipantRegistry} from "./interfaces/IParticipantRegistry.sol";
import {HALF_N, S_MASK} from "./libraries/CompactSignature.sol";
import {Metered} from "./libraries/Metered.sol";
import {ADDRESS_SHIFT, UINT64_SHIFT, UINT128_SHIFT} from "./libraries/PackedField.sol";
import {
    ACCEPTED_EXPORT_WH_SHIFT,
    ACCEPTED_IMPORT_WH_SHIFT,
    ACCEPTED_SIZE,
    ACCEPTED_WH_MASK,
    READING_EXPORT_WH_OFFSET,
    READING_IMPORT_WH_OFFSET,
    READING_METER_OFFSET,
    READING_PAIR_IMPORT_WH_SHIFT,
    READING_PAIR_WH_MASK,
    READING_R_OFFSET,
    READING_SIZE,
    READING_VS_OFFSET
} from "./libraries/PackedReading.sol";
import {
    METER_KEY_SIZE, REGISTRY_ACTIVE, REGISTRY_INDEX_MASK, REGISTRY_REGISTERED
} from "./libraries/RegistryState.sol";

/// @title MeterReadings
/// @notice Device-signed interval readings. See {IMeterReadings}.
contract MeterReadings is EIP712, IMeterReadings {
    /// @inheritdoc IMeterReadings
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(address meter,uint64 intervalId,uint64 importWh,uint64 exportWh)");
    /// @notice How long readings are kept at least; the ring holds ceil(RETENTION / interval) intervals.
    uint256 public constant RETENTION_SECONDS = 6 hours;

    bytes32 internal constant ORACLE_ROLE = keccak256("ORACLE_ROLE");
    // Reason codes of ReadingRejected (see IMeterReadings); 0 accepted, RESUBMITTED an identical
    // resubmission (skipped without an event): codes 1..LAST_REJECTION are announced.
    uint256 internal constant BAD_SIGNATURE = 1;
    uint256 internal constant UNKNOWN_METER = 2;
    uint256 internal constant INACTIVE = 3;
    uint256 internal constant CONFLICTING = 4;
    uint256 internal constant VALUE_TOO_LARGE = 5;
    uint256 internal constant LAST_REJECTION = 254;
    uint256 internal constant RESUBMITTED = 255;
    // Ring lanes (see _ring): LANES per slot, LANE_BITS each: present (bit 47) | importWh (bits 23..45) |
    // exportWh (bits 0..22).
    uint256 internal constant LANES = 4;
    uint256 internal constant LANE_BITS = 48;
    uint64 internal constant MAX_WH = (1 << 23) - 1;
    uint256 internal constant LANE_MASK = (1 << 48) - 1;
    uint256 internal constant PRESENT = 1 << 47;
    uint256 internal constant LANE_IMPORT_WH_SHIFT = 23;
    // The ring slot's interval (bits 192..255)
    uint256 internal constant SLOT_INTERVAL_SHIFT = 192;
    // A (importWh, exportWh) pair (see PackedReading) with either value above MAX_WH: bits 23..63 of each half
    // secp256k1's group order (the device path's low-s check; see _deviceReason)
    uint256 internal constant SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;
    uint256 internal constant DEVICE_PRESENT = 1 << 191;
    uint256 internal constant DEVICE_WH_MASK = (1 << 46) - 1;
    uint256 internal constant PAIR_OVER_MAX_WH = 0xffffffffff800000ffffffffff800000;

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
    // Device readings (flexibility delivery), one slot per device and ring position: the interval (bits
    // 192..255) | present (bit 191) | importWh (bits 23..45) | exportWh (bits 0..22). Apart from _ring
    // so the meters' path stays as it was; a flag and mask of their own, because a constant the meters'
    // loop uses (PRESENT) used here too is computed there instead of pushed (+6 gas per reading).
    mapping(address device => mapping(uint256 ringPosition => uint256 slot)) private _deviceRing;

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
    /// each out, both without ABI copies), then one assembly loop: digest, ecrecover precompile (EIP-2098,
    /// low s), the checks, the ring lane. A ring slot is read and written once per run of readings sharing
    /// it (oracle batches come sorted by participant). One `ReadingsSubmitted` event describes the batch's
    /// accepted readings (28 bytes each) instead of an event per reading: a LOG costs 375 per topic plus 8
    /// per data byte, so a per-reading LOG3 with two words of data was 2,012 gas and an accepted entry now
    /// costs 224; consumers decode it with backend/chain/batches.py (`unpack_accepted`).
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
        // Memory, from the free pointer h (all of it allocated below):
        // h+0x000 struct hash input: typeHash, meter, intervalId, importWh, exportWh
        // h+0x0c0 digest input: 0x1901, domain separator, struct hash (0x42 bytes)
        // h+0x120 ecrecover input: digest, v, r, s
        // h+0x1a0 ring slot being filled: storage slot, value as stored; h+0x1e0 ring position << 32;
        // h+0x200 ReadingRejected topic; h+0x220 ring key of the slot being filled; h+0x240 the registry
        // records (n words); then the event data.
        uint256 h;
        assembly ("memory-safe") {
            h := mload(0x40)
        }
        _fetchRecords(h + 0x240, base, n);
        uint256 evt = h + 0x240 + n * 32;
        assembly ("memory-safe") {
            mstore(0x40, add(evt, add(0x60, mul(n, ACCEPTED_SIZE))))
        }
        _initScratch(h, intervalId);
        accepted = _submitAll(h, base, base + n * READING_SIZE, evt + 0x40);
        bytes32 topic = ReadingsSubmitted.selector;
        assembly ("memory-safe") {
            if accepted {
                let len := mul(accepted, ACCEPTED_SIZE)
                mstore(evt, 0x20)
                mstore(add(evt, 0x20), len)
                mstore(add(add(evt, 0x40), len), 0) // zero padding
                log2(evt, add(0x40, and(add(len, 31), not(31))), topic, intervalId)
            }
        }
    }

    /// @inheritdoc IMeterReadings
    function submitDeviceReadings(uint64 intervalId, bytes calldata readings) external returns (uint256 accepted) {
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
        for (uint256 rp = base; rp < base + readings.length; rp += READING_SIZE) {
            (address device, uint64 importWh, uint64 exportWh) = _readingAt(rp);
            uint256 reason = _deviceReason(device, intervalId, importWh, exportWh, rp);
            if (reason == 0) reason = _storeDevice(device, intervalId, importWh, exportWh);
            if (reason == 0) ++accepted;
            if (reason != 0 && reason != RESUBMITTED) emit ReadingRejected(device, intervalId, uint8(reason));
        }
    }

    /// @dev Stores a device's reading (0), or says why not: CONFLICTING, RESUBMITTED (identical).
    function _storeDevice(address device, uint64 intervalId, uint64 importWh, uint64 exportWh)
        private
        returns (uint256)
    {
        mapping(uint256 => uint256) storage ring = _deviceRing[device];
        uint256 position = uint256(intervalId) % readingWindowIntervals;
        uint256 word = ring[position];
        uint256 wh = (uint256(importWh) << LANE_IMPORT_WH_SHIFT) | exportWh;
        if (word >> SLOT_INTERVAL_SHIFT == intervalId && word & DEVICE_PRESENT != 0) {
            return word & DEVICE_WH_MASK == wh ? RESUBMITTED : CONFLICTING;
        }
        ring[position] = (uint256(intervalId) << SLOT_INTERVAL_SHIFT) | DEVICE_PRESENT | wh;
        emit DeviceReadingSubmitted(device, intervalId, importWh, exportWh);
        return 0;
    }

    function _readingAt(uint256 rp) private pure returns (address device, uint64 importWh, uint64 exportWh) {
        assembly ("memory-safe") {
            device := shr(ADDRESS_SHIFT, calldataload(add(rp, READING_METER_OFFSET)))
            importWh := shr(UINT64_SHIFT, calldataload(add(rp, READING_IMPORT_WH_OFFSET)))
            exportWh := shr(UINT64_SHIFT, calldataload(add(rp, READING_EXPORT_WH_OFFSET)))
        }
    }

    /// @dev 0 when the device's reading at `rp` may be stored, else its rejection code (as for meters).
    function _deviceReason(address device, uint64 intervalId, uint64 importWh, uint64 exportWh, uint256 rp)
        private
        view
        returns (uint256)
    {
        bytes32 digest =
            _hashTypedDataV4(keccak256(abi.encode(READING_TYPEHASH, device, intervalId, importWh, exportWh)));
        bytes32 r;
        uint256 vs;
        assembly ("memory-safe") {
            r := calldataload(add(rp, READING_R_OFFSET))
            vs := calldataload(add(rp, READING_VS_OFFSET))
        }
        // EIP-2098 as in the meters' loop, but without its HALF_N literal: a second use of it makes
        // the optimizer compute the constant (2^255 - x) instead of pushing it, which cost the
        // meters' loop ~18 gas per reading (measured). s > n / 2 <=> s > n - s (n odd).
        uint256 s = (vs << 1) >> 1;
        if (s > SECP256K1_N - s) return BAD_SIGNATURE;
        if (ecrecover(digest, uint8(27 + (vs >> 255)), r, bytes32(s)) != device) return BAD_SIGNATURE;
        IParticipantRegistry.Device memory d = registry.deviceOf(device);
        if (d.owner == address(0)) return UNKNOWN_METER;
        if (!d.active || !registry.isActive(d.owner)) return INACTIVE;
        if (importWh > MAX_WH || exportWh > MAX_WH) return VALUE_TOO_LARGE;
        return 0;
    }

    /// @dev Fixed words of the loop's scratch memory at `h` (layout in `submitReadings`).
    function _initScratch(uint256 h, uint64 intervalId) private view {
        bytes32 typeHash = READING_TYPEHASH;
        bytes32 domain = _domainSeparatorV4();
        bytes32 rejected = ReadingRejected.selector;
        uint256 ringPosition = (uint256(intervalId) % readingWindowIntervals) << 32;
        assembly ("memory-safe") {
            mstore(h, typeHash)
            mstore(add(h, 0x40), intervalId)
            mstore(add(h, 0xc0), hex"1901")
            mstore(add(h, 0xc2), domain)
            mstore(add(h, 0x1a0), 0)
            mstore(add(h, 0x1c0), 0)
            mstore(add(h, 0x1e0), ringPosition)
            mstore(add(h, 0x200), rejected)
            mstore(add(h, 0x220), not(0)) // no ring slot loaded yet
        }
    }

    /// @dev The per-reading loop over the readings from `rp` to `last`, accepted entries written from
    /// `out`. Reasons as in {IMeterReadings}; 255 = identical resubmission (silent).
    function _submitAll(uint256 h, uint256 rp, uint256 last, uint256 out) private returns (uint256 accepted) {
        assembly ("memory-safe") {
            let recp := add(h, 0x240)
            let value := 0
            for {} lt(rp, last) {
                rp := add(rp, READING_SIZE)
                recp := add(recp, 0x20)
            } {
                let meter := shr(ADDRESS_SHIFT, calldataload(add(rp, READING_METER_OFFSET)))
                let wh := shr(UINT128_SHIFT, calldataload(add(rp, READING_IMPORT_WH_OFFSET))) // importWh | exportWh
                mstore(add(h, 0x20), meter)
                mstore(add(h, 0x60), shr(READING_PAIR_IMPORT_WH_SHIFT, wh))
                mstore(add(h, 0x80), and(wh, READING_PAIR_WH_MASK))
                mstore(add(h, 0xe2), keccak256(h, 0xa0))
                mstore(add(h, 0x120), keccak256(add(h, 0xc0), 0x42))
                let reason := BAD_SIGNATURE // unless the signature recovers to meter
                {
                    let vs := calldataload(add(rp, READING_VS_OFFSET))
                    let s := and(vs, S_MASK)
                    mstore(0x00, not(0)) // never a recovered address (the precompile writes nothing on failure)
                    if iszero(gt(s, HALF_N)) {
                        mstore(add(h, 0x140), add(shr(255, vs), 27))
                        mstore(add(h, 0x160), calldataload(add(rp, READING_R_OFFSET)))
                        mstore(add(h, 0x180), s)
                        pop(staticcall(gas(), 1, add(h, 0x120), 0x80, 0x00, 0x20))
                    }
                }
                let record := mload(recp)
                if eq(mload(0x00), meter) {
                    reason := UNKNOWN_METER
                    if and(record, REGISTRY_REGISTERED) {
                        reason := INACTIVE
                        if and(record, REGISTRY_ACTIVE) {
                            reason := VALUE_TOO_LARGE
                            if iszero(and(wh, PAIR_OVER_MAX_WH)) { reason := 0 }
                        }
                    }
                }
                if iszero(reason) {
                    let index := and(record, REGISTRY_INDEX_MASK)
                    {
                        let k := or(mload(add(h, 0x1e0)), shr(2, index))
                        if iszero(eq(k, mload(add(h, 0x220)))) {
                            if iszero(eq(value, mload(add(h, 0x1c0)))) { sstore(mload(add(h, 0x1a0)), value) }
                            mstore(add(h, 0x220), k)
                            mstore(0x00, k)
                            mstore(0x20, _ring.slot)
                            let slot := keccak256(0x00, 0x40)
                            mstore(add(h, 0x1a0), slot)
                            value := sload(slot)
                            mstore(add(h, 0x1c0), value)
                            // a slot still holding an older interval (window intervals back) starts empty
                            let iv := mload(add(h, 0x40))
                            if iszero(eq(shr(SLOT_INTERVAL_SHIFT, value), iv)) { value := shl(SLOT_INTERVAL_SHIFT, iv) }
                        }
                    }
                    let shift := mul(and(index, 3), LANE_BITS) // index % LANES
                    let lane := and(shr(shift, value), LANE_MASK)
                    // present (bit 47) | importWh (23..45) | exportWh (0..22)
                    let newLane := or(or(PRESENT, shl(LANE_IMPORT_WH_SHIFT, shr(READING_PAIR_IMPORT_WH_SHIFT, wh))), and(wh, MAX_WH))
                    switch lane
                    case 0 {
                        value := or(value, shl(shift, newLane))
                        accepted := add(accepted, 1)
                        // entry: meter (20) | importWh (4) | exportWh (4); the next one overwrites the tail
                        mstore(
                            out,
                            or(
                                shl(ADDRESS_SHIFT, meter),
                                or(
                                    shl(ACCEPTED_IMPORT_WH_SHIFT, shr(READING_PAIR_IMPORT_WH_SHIFT, wh)),
                                    shl(ACCEPTED_EXPORT_WH_SHIFT, and(wh, ACCEPTED_WH_MASK))
                                )
                            )
                        )
                        out := add(out, ACCEPTED_SIZE)
                    }
                    default {
                        reason := CONFLICTING
                        if eq(lane, newLane) { reason := RESUBMITTED }
                    }
                }
                if lt(sub(reason, 1), LAST_REJECTION) {
                    mstore(0x00, reason)
                    log3(0x00, 0x20, mload(add(h, 0x200)), meter, mload(add(h, 0x40)))
                }
            }
            if iszero(eq(value, mload(add(h, 0x1c0)))) { sstore(mload(add(h, 0x1a0)), value) }
        }
    }

    /// @dev One registry call for every meter of the batch (the keys packed, 20 bytes each); the answer's
    /// words are copied to `records` straight from the return data (a short answer makes RETURNDATACOPY
    /// revert; the registry is the deployment's own, immutable).
    function _fetchRecords(uint256 records, uint256 base, uint256 n) private view {
        address reg = address(registry);
        bytes4 selector = IParticipantRegistry.meterStatesOf.selector;
        assembly ("memory-safe") {
            // call data from `records`: selector | 0x20 | length | keys (each 32-byte write is overwritten
            // by the next key but its first 20 bytes; the unpadded tail is never read)
            mstore(records, selector)
            mstore(add(records, 0x04), 0x20)
            mstore(add(records, 0x24), mul(n, METER_KEY_SIZE))
            let q := add(records, 0x44)
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                mstore(add(q, mul(i, METER_KEY_SIZE)), calldataload(add(add(base, mul(i, READING_SIZE)), READING_METER_OFFSET)))
            }
            if iszero(staticcall(gas(), reg, records, add(0x44, mul(n, METER_KEY_SIZE)), 0x00, 0x00)) {
                returndatacopy(0x00, 0x00, returndatasize())
                revert(0x00, returndatasize())
            }
            returndatacopy(records, 0x40, shl(5, n))
        }
    }

    /// @inheritdoc IMeterReadings
    function readingOf(address meter, uint64 intervalId)
        external
        view
        returns (uint64 importWh, uint64 exportWh, bool present)
    {
        uint32 index = registry.meterRecordOf(meter).index;
        if (index != 0) return _lane(intervalId, index);
        return deviceReadingOf(meter, intervalId); // a device key (or an unknown one: nothing stored)
    }

    /// @inheritdoc IMeterReadings
    function deviceReadingsOf(bytes calldata devices, uint64 intervalId)
        external
        view
        returns (uint256[] memory got)
    {
        if (devices.length % 20 != 0) revert MeterReadingsMalformedCalldata(devices.length);
        got = new uint256[](devices.length / 20);
        for (uint256 i = 0; i < got.length; ++i) {
            address device;
            assembly ("memory-safe") {
                device := shr(96, calldataload(add(devices.offset, mul(i, 20))))
            }
            (uint64 importWh, uint64 exportWh, bool present) = deviceReadingOf(device, intervalId);
            got[i] = (present ? 1 << 128 : 0) | uint256(importWh) << 64 | exportWh;
        }
    }

    /// @inheritdoc IMeterReadings
    function deviceReadingOf(address device, uint64 intervalId)
        public
        view
        returns (uint64 importWh, uint64 exportWh, bool present)
    {
        uint256 word = _deviceRing[device][uint256(intervalId) % readingWindowIntervals];
        if (word >> SLOT_INTERVAL_SHIFT != intervalId || word & DEVICE_PRESENT == 0) return (0, 0, false);
        return (uint64((word >> LANE_IMPORT_WH_SHIFT) & MAX_WH), uint64(word & MAX_WH), true);
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
                uint256 lane = _laneAt(intervalId, ring, indices[i]);
                if (lane & PRESENT == 0) continue;
                metered[i] = Metered.pack((lane >> LANE_IMPORT_WH_SHIFT) & MAX_WH, lane & MAX_WH);
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
        uint256 lane = _laneAt(intervalId, (uint256(intervalId) % readingWindowIntervals) << 32, index);
        return (uint64((lane >> LANE_IMPORT_WH_SHIFT) & MAX_WH), uint64(lane & MAX_WH), lane & PRESENT != 0);
    }

    /// @dev The lane of participant `index` in interval `intervalId` (`ring`: the interval's ring row
    /// shifted into place); zero when the slot was never written or a later interval reused it.
    function _laneAt(uint64 intervalId, uint256 ring, uint256 index) private view returns (uint256) {
        unchecked {
            uint256 word = _ring[ring | (index / LANES)];
            if (word >> SLOT_INTERVAL_SHIFT != intervalId) return 0;
            return (word >> ((index % LANES) * LANE_BITS)) & LANE_MASK;
        }
    }
}
