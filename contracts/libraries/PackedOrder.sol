// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ADDRESS_SHIFT, UINT8_SHIFT, UINT64_SHIFT, UINT128_SHIFT} from "./PackedField.sol";

// The 153-byte packed signed order of `recordTrades` (see {IEnergyMarket}, docs/packed-calldata.md):
// trader (20) | side (1) | intervalId (8) | energyWh (8) | pricePerKWh (16) | nonce (8) | expiry (8) |
// counterparty (20) | r (32) | vs (32). Byte offsets from the start of the order:
uint256 constant ORDER_TRADER_OFFSET = 0;
uint256 constant ORDER_SIDE_OFFSET = 20;
uint256 constant ORDER_INTERVAL_ID_OFFSET = 21;
uint256 constant ORDER_ENERGY_WH_OFFSET = 29;
uint256 constant ORDER_PRICE_PER_KWH_OFFSET = 37;
uint256 constant ORDER_NONCE_OFFSET = 53;
uint256 constant ORDER_EXPIRY_OFFSET = 61;
uint256 constant ORDER_COUNTERPARTY_OFFSET = 69;
uint256 constant ORDER_R_OFFSET = 89;
uint256 constant ORDER_VS_OFFSET = 121;
uint256 constant ORDER_SIZE = 153;

/// @dev The calldata position of one packed signed order.
type PackedOrder is uint256;

using PackedOrderLibrary for PackedOrder global;

/// @title Typed reads of a packed signed order in calldata
/// @notice Each getter loads the word at its field's offset and shifts the field's width down
/// (no masks); the caller guarantees the order lies inside calldata (whole records, checked lengths).
library PackedOrderLibrary {
    /// @dev Order `index` of the packed orders starting at calldata position `base`.
    function at(uint256 base, uint256 index) internal pure returns (PackedOrder) {
        unchecked {
            return PackedOrder.wrap(base + index * ORDER_SIZE);
        }
    }

    function trader(PackedOrder o) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(o, ORDER_TRADER_OFFSET)))
        }
    }

    /// @dev 0 SELL, 1 BUY (other values are no side).
    function side(PackedOrder o) internal pure returns (uint8 v) {
        assembly ("memory-safe") {
            v := shr(UINT8_SHIFT, calldataload(add(o, ORDER_SIDE_OFFSET)))
        }
    }

    function intervalId(PackedOrder o) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(o, ORDER_INTERVAL_ID_OFFSET)))
        }
    }

    function energyWh(PackedOrder o) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(o, ORDER_ENERGY_WH_OFFSET)))
        }
    }

    /// @dev Limit price in token base units per kWh (a seller's minimum, a buyer's maximum).
    function pricePerKWh(PackedOrder o) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(o, ORDER_PRICE_PER_KWH_OFFSET)))
        }
    }

    function nonce(PackedOrder o) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(o, ORDER_NONCE_OFFSET)))
        }
    }

    /// @dev Unix time after which the order is no longer recordable.
    function expiry(PackedOrder o) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(o, ORDER_EXPIRY_OFFSET)))
        }
    }

    /// @dev The only trader the order may match (zero: anyone).
    function counterparty(PackedOrder o) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(o, ORDER_COUNTERPARTY_OFFSET)))
        }
    }

    /// @dev The EIP-2098 compact signature: r and vs = yParity << 255 | s.
    function signature(PackedOrder o) internal pure returns (bytes32 r, bytes32 vs) {
        assembly ("memory-safe") {
            r := calldataload(add(o, ORDER_R_OFFSET))
            vs := calldataload(add(o, ORDER_VS_OFFSET))
        }
    }

    /// @dev EIP-712 struct hash of the order: keccak256(typeHash, the eight Order fields as words), built
    /// in the 0x120 bytes of scratch memory at `buf` (the caller's, already allocated).
    function structHash(PackedOrder o, bytes32 typeHash, uint256 buf) internal pure returns (bytes32 h) {
        assembly ("memory-safe") {
            mstore(buf, typeHash)
            mstore(add(buf, 0x20), shr(ADDRESS_SHIFT, calldataload(add(o, ORDER_TRADER_OFFSET))))
            mstore(add(buf, 0x40), shr(UINT8_SHIFT, calldataload(add(o, ORDER_SIDE_OFFSET))))
            mstore(add(buf, 0x60), shr(UINT64_SHIFT, calldataload(add(o, ORDER_INTERVAL_ID_OFFSET))))
            mstore(add(buf, 0x80), shr(UINT64_SHIFT, calldataload(add(o, ORDER_ENERGY_WH_OFFSET))))
            mstore(add(buf, 0xa0), shr(UINT128_SHIFT, calldataload(add(o, ORDER_PRICE_PER_KWH_OFFSET))))
            mstore(add(buf, 0xc0), shr(UINT64_SHIFT, calldataload(add(o, ORDER_NONCE_OFFSET))))
            mstore(add(buf, 0xe0), shr(UINT64_SHIFT, calldataload(add(o, ORDER_EXPIRY_OFFSET))))
            mstore(add(buf, 0x100), shr(ADDRESS_SHIFT, calldataload(add(o, ORDER_COUNTERPARTY_OFFSET))))
            h := keccak256(buf, 0x120)
        }
    }
}
