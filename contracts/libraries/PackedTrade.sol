// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UINT8_SHIFT, UINT16_SHIFT, UINT64_SHIFT, UINT128_SHIFT} from "./PackedField.sol";

// The 29-byte packed trade of `recordTrades` (see {IEnergyMarket}, docs/packed-calldata.md):
// sellOrder (2) | buyOrder (2) | energyWh (8) | pricePerKWh (16) | verdict (1). Byte offsets:
uint256 constant TRADE_SELL_ORDER_OFFSET = 0;
uint256 constant TRADE_BUY_ORDER_OFFSET = 2;
uint256 constant TRADE_ENERGY_WH_OFFSET = 4;
uint256 constant TRADE_PRICE_PER_KWH_OFFSET = 12;
uint256 constant TRADE_VERDICT_OFFSET = 28;
uint256 constant TRADE_SIZE = 29;

/// @dev The calldata position of one packed trade.
type PackedTrade is uint256;

using PackedTradeLibrary for PackedTrade global;

/// @title Typed reads of a packed trade in calldata
/// @notice Each getter loads the word at its field's offset and shifts the field's width down.
library PackedTradeLibrary {
    /// @dev Trade `index` of the packed trades starting at calldata position `base`.
    function at(uint256 base, uint256 index) internal pure returns (PackedTrade) {
        unchecked {
            return PackedTrade.wrap(base + index * TRADE_SIZE);
        }
    }

    /// @dev Index of the sell order among the batch's packed orders.
    function sellOrder(PackedTrade t) internal pure returns (uint16 v) {
        assembly ("memory-safe") {
            v := shr(UINT16_SHIFT, calldataload(add(t, TRADE_SELL_ORDER_OFFSET)))
        }
    }

    /// @dev Index of the buy order among the batch's packed orders.
    function buyOrder(PackedTrade t) internal pure returns (uint16 v) {
        assembly ("memory-safe") {
            v := shr(UINT16_SHIFT, calldataload(add(t, TRADE_BUY_ORDER_OFFSET)))
        }
    }

    function energyWh(PackedTrade t) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(t, TRADE_ENERGY_WH_OFFSET)))
        }
    }

    /// @dev The clearing price in token base units per kWh.
    function pricePerKWh(PackedTrade t) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(t, TRADE_PRICE_PER_KWH_OFFSET)))
        }
    }

    /// @dev The validator's verdict: 0 approved, any other value a veto (codes in {IEnergyMarket}).
    function verdict(PackedTrade t) internal pure returns (uint8 v) {
        assembly ("memory-safe") {
            v := shr(UINT8_SHIFT, calldataload(add(t, TRADE_VERDICT_OFFSET)))
        }
    }
}
