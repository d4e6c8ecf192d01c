// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ADDRESS_SHIFT, UINT8_SHIFT, UINT32_SHIFT, UINT64_SHIFT, UINT128_SHIFT} from "./PackedField.sol";

// The 293-byte packed activation of `recordActivations` / `settleActivations` (see {IFlexibilityMarket},
// docs/packed-calldata.md): the provider's signed FlexOffer, then what the validator activated of it.
// provider (20) | device (20) | intervalId (8) | direction (1) | powerW (4) | baselineW (4, int32) |
// pricePerKWh (16) | nonce (32) | expiry (8) | r (32) | vs (32) | activatedW (4) | tradeId (32) |
// tradeEnergyWh (8) | payer0 (20) | share0 (16) | payer1 (20) | share1 (16). Byte offsets:
uint256 constant ACT_PROVIDER_OFFSET = 0;
uint256 constant ACT_DEVICE_OFFSET = 20;
uint256 constant ACT_INTERVAL_ID_OFFSET = 40;
uint256 constant ACT_DIRECTION_OFFSET = 48;
uint256 constant ACT_POWER_W_OFFSET = 49;
uint256 constant ACT_BASELINE_W_OFFSET = 53;
uint256 constant ACT_PRICE_PER_KWH_OFFSET = 57;
uint256 constant ACT_NONCE_OFFSET = 73;
uint256 constant ACT_EXPIRY_OFFSET = 105;
uint256 constant ACT_R_OFFSET = 113;
uint256 constant ACT_VS_OFFSET = 145;
uint256 constant ACT_ACTIVATED_W_OFFSET = 177;
uint256 constant ACT_TRADE_ID_OFFSET = 181;
uint256 constant ACT_TRADE_ENERGY_WH_OFFSET = 213;
uint256 constant ACT_PAYER0_OFFSET = 221;
uint256 constant ACT_SHARE0_OFFSET = 241;
uint256 constant ACT_PAYER1_OFFSET = 257;
uint256 constant ACT_SHARE1_OFFSET = 277;
uint256 constant ACTIVATION_SIZE = 293;

/// @dev The calldata position of one packed activation.
type PackedActivation is uint256;

using PackedActivationLibrary for PackedActivation global;

/// @title Typed reads of a packed activation in calldata
/// @notice Each getter loads the word at its field's offset and shifts the field's width down (no
/// masks); the caller guarantees the record lies inside calldata (whole records, checked lengths).
library PackedActivationLibrary {
    /// @dev Activation `index` of the packed activations starting at calldata position `base`.
    function at(uint256 base, uint256 index) internal pure returns (PackedActivation) {
        unchecked {
            return PackedActivation.wrap(base + index * ACTIVATION_SIZE);
        }
    }

    function provider(PackedActivation a) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(a, ACT_PROVIDER_OFFSET)))
        }
    }

    function device(PackedActivation a) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(a, ACT_DEVICE_OFFSET)))
        }
    }

    function intervalId(PackedActivation a) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(a, ACT_INTERVAL_ID_OFFSET)))
        }
    }

    /// @dev 0 up, 1 down (other values are no direction).
    function direction(PackedActivation a) internal pure returns (uint8 v) {
        assembly ("memory-safe") {
            v := shr(UINT8_SHIFT, calldataload(add(a, ACT_DIRECTION_OFFSET)))
        }
    }

    function powerW(PackedActivation a) internal pure returns (uint32 v) {
        assembly ("memory-safe") {
            v := shr(UINT32_SHIFT, calldataload(add(a, ACT_POWER_W_OFFSET)))
        }
    }

    /// @dev Signed: SAR keeps the sign of the 32-bit two's complement field.
    function baselineW(PackedActivation a) internal pure returns (int32 v) {
        assembly ("memory-safe") {
            v := sar(UINT32_SHIFT, calldataload(add(a, ACT_BASELINE_W_OFFSET)))
        }
    }

    function pricePerKWh(PackedActivation a) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(a, ACT_PRICE_PER_KWH_OFFSET)))
        }
    }

    function nonce(PackedActivation a) internal pure returns (uint256 v) {
        assembly ("memory-safe") {
            v := calldataload(add(a, ACT_NONCE_OFFSET))
        }
    }

    function expiry(PackedActivation a) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(a, ACT_EXPIRY_OFFSET)))
        }
    }

    function r(PackedActivation a) internal pure returns (bytes32 v) {
        assembly ("memory-safe") {
            v := calldataload(add(a, ACT_R_OFFSET))
        }
    }

    function vs(PackedActivation a) internal pure returns (bytes32 v) {
        assembly ("memory-safe") {
            v := calldataload(add(a, ACT_VS_OFFSET))
        }
    }

    function activatedW(PackedActivation a) internal pure returns (uint32 v) {
        assembly ("memory-safe") {
            v := shr(UINT32_SHIFT, calldataload(add(a, ACT_ACTIVATED_W_OFFSET)))
        }
    }

    /// @dev The rescued trade's id; zero for a DSO-service activation.
    function tradeId(PackedActivation a) internal pure returns (bytes32 v) {
        assembly ("memory-safe") {
            v := calldataload(add(a, ACT_TRADE_ID_OFFSET))
        }
    }

    /// @dev The rescued trade's energy (attested); zero for a DSO-service activation.
    function tradeEnergyWh(PackedActivation a) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(a, ACT_TRADE_ENERGY_WH_OFFSET)))
        }
    }

    /// @dev The rescued trade's seller, or the balancing account for a DSO-service activation.
    function payer0(PackedActivation a) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(a, ACT_PAYER0_OFFSET)))
        }
    }

    function share0(PackedActivation a) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(a, ACT_SHARE0_OFFSET)))
        }
    }

    /// @dev The rescued trade's buyer; zero for a DSO-service activation.
    function payer1(PackedActivation a) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(a, ACT_PAYER1_OFFSET)))
        }
    }

    function share1(PackedActivation a) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(a, ACT_SHARE1_OFFSET)))
        }
    }

    /// @dev The FlexOffer's EIP-712 struct hash (the nine static fields, one word each, in `buf`;
    /// baselineW sign-extended as abi.encode does).
    function structHash(PackedActivation a, bytes32 typeHash, uint256 buf) internal pure returns (bytes32 h) {
        assembly ("memory-safe") {
            mstore(buf, typeHash)
            mstore(add(buf, 0x20), shr(ADDRESS_SHIFT, calldataload(add(a, ACT_PROVIDER_OFFSET))))
            mstore(add(buf, 0x40), shr(ADDRESS_SHIFT, calldataload(add(a, ACT_DEVICE_OFFSET))))
            mstore(add(buf, 0x60), shr(UINT64_SHIFT, calldataload(add(a, ACT_INTERVAL_ID_OFFSET))))
            mstore(add(buf, 0x80), shr(UINT8_SHIFT, calldataload(add(a, ACT_DIRECTION_OFFSET))))
            mstore(add(buf, 0xa0), shr(UINT32_SHIFT, calldataload(add(a, ACT_POWER_W_OFFSET))))
            mstore(add(buf, 0xc0), sar(UINT32_SHIFT, calldataload(add(a, ACT_BASELINE_W_OFFSET))))
            mstore(add(buf, 0xe0), shr(UINT128_SHIFT, calldataload(add(a, ACT_PRICE_PER_KWH_OFFSET))))
            mstore(add(buf, 0x100), calldataload(add(a, ACT_NONCE_OFFSET)))
            mstore(add(buf, 0x120), shr(UINT64_SHIFT, calldataload(add(a, ACT_EXPIRY_OFFSET))))
            h := keccak256(buf, 0x140)
        }
    }
}
