// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ADDRESS_SHIFT, UINT8_SHIFT, UINT32_SHIFT, UINT128_SHIFT} from "./PackedField.sol";
import {PackedActivation} from "./PackedActivation.sol";

// The 121-byte activation record: what `recordActivations` commits to of each activation and
// `settleActivations` / `reclaimActivations` take again (see {IFlexibilityMarket}, docs/packed-calldata.md),
// only what paying on delivery needs - the offer's signature, price and nonce were checked at recording:
// device (20) | direction (1) | baselineW (4, int32) | activatedW (4) | provider (20) | payer0 (20) |
// share0 (16) | payer1 (20) | share1 (16). Byte offsets:
uint256 constant REC_DEVICE_OFFSET = 0;
uint256 constant REC_DIRECTION_OFFSET = 20;
uint256 constant REC_BASELINE_W_OFFSET = 21;
uint256 constant REC_ACTIVATED_W_OFFSET = 25;
uint256 constant REC_PROVIDER_OFFSET = 29;
uint256 constant REC_PAYER0_OFFSET = 49;
uint256 constant REC_SHARE0_OFFSET = 69;
uint256 constant REC_PAYER1_OFFSET = 85;
uint256 constant REC_SHARE1_OFFSET = 105;
uint256 constant ACTIVATION_RECORD_SIZE = 121;
// The word written at REC_DIRECTION_OFFSET: direction (bits 248..255) | baselineW (216..247) |
// activatedW (184..215).
uint256 constant REC_BASELINE_W_SHIFT = 216;
uint256 constant REC_ACTIVATED_W_SHIFT = 184;
/// @dev What `store` may write past a record's end (its last word starts at REC_SHARE1_OFFSET).
uint256 constant REC_STORE_SLACK = REC_SHARE1_OFFSET + 32 - ACTIVATION_RECORD_SIZE;

/// @dev The calldata position of one activation record.
type ActivationRecord is uint256;

using ActivationRecordLibrary for ActivationRecord global;

/// @title Typed reads (calldata) and the write (memory) of an activation record
library ActivationRecordLibrary {
    /// @dev Record `index` of the records starting at calldata position `base`.
    function at(uint256 base, uint256 index) internal pure returns (ActivationRecord) {
        unchecked {
            return ActivationRecord.wrap(base + index * ACTIVATION_RECORD_SIZE);
        }
    }

    function device(ActivationRecord r) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(r, REC_DEVICE_OFFSET)))
        }
    }

    /// @dev 0 up, 1 down (checked at recording).
    function direction(ActivationRecord r) internal pure returns (uint8 v) {
        assembly ("memory-safe") {
            v := shr(UINT8_SHIFT, calldataload(add(r, REC_DIRECTION_OFFSET)))
        }
    }

    /// @dev Signed: SAR keeps the sign of the 32-bit two's complement field.
    function baselineW(ActivationRecord r) internal pure returns (int32 v) {
        assembly ("memory-safe") {
            v := sar(UINT32_SHIFT, calldataload(add(r, REC_BASELINE_W_OFFSET)))
        }
    }

    function activatedW(ActivationRecord r) internal pure returns (uint32 v) {
        assembly ("memory-safe") {
            v := shr(UINT32_SHIFT, calldataload(add(r, REC_ACTIVATED_W_OFFSET)))
        }
    }

    function provider(ActivationRecord r) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(r, REC_PROVIDER_OFFSET)))
        }
    }

    function payer0(ActivationRecord r) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(r, REC_PAYER0_OFFSET)))
        }
    }

    function share0(ActivationRecord r) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(r, REC_SHARE0_OFFSET)))
        }
    }

    function payer1(ActivationRecord r) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(r, REC_PAYER1_OFFSET)))
        }
    }

    function share1(ActivationRecord r) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(r, REC_SHARE1_OFFSET)))
        }
    }

    /// @dev Writes the record of packed activation `a` (calldata) at memory position `out`: fields in
    /// ascending order, each word over the previous one's tail; the last ends REC_STORE_SLACK bytes past
    /// the record (the caller's buffer has them).
    function store(uint256 out, PackedActivation a) internal pure {
        (address device_, uint256 direction_, int256 baselineW_, uint256 activatedW_) =
            (a.device(), a.direction(), a.baselineW(), a.activatedW());
        (address provider_, address payer0_, uint256 share0_, address payer1_, uint256 share1_) =
            (a.provider(), a.payer0(), a.share0(), a.payer1(), a.share1());
        assembly ("memory-safe") {
            mstore(add(out, REC_DEVICE_OFFSET), shl(ADDRESS_SHIFT, device_))
            mstore(
                add(out, REC_DIRECTION_OFFSET),
                or(
                    shl(UINT8_SHIFT, direction_),
                    or(
                        shl(REC_BASELINE_W_SHIFT, and(baselineW_, 0xffffffff)),
                        shl(REC_ACTIVATED_W_SHIFT, activatedW_)
                    )
                )
            )
            mstore(add(out, REC_PROVIDER_OFFSET), shl(ADDRESS_SHIFT, provider_))
            mstore(add(out, REC_PAYER0_OFFSET), shl(ADDRESS_SHIFT, payer0_))
            mstore(add(out, REC_SHARE0_OFFSET), shl(UINT128_SHIFT, share0_))
            mstore(add(out, REC_PAYER1_OFFSET), shl(ADDRESS_SHIFT, payer1_))
            mstore(add(out, REC_SHARE1_OFFSET), shl(UINT128_SHIFT, share1_))
        }
    }
}
