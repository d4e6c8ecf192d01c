// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ADDRESS_SHIFT, UINT16_SHIFT, UINT32_SHIFT, UINT64_SHIFT, UINT128_SHIFT} from "./PackedField.sol";

// The 104-byte trade record of an approved trade: what a batch commits to and `settle`/`reclaim` take
// again (see {IEnergyMarket}, docs/packed-calldata.md): tradeId (32) | seller (20) | buyer (20) |
// sellerIndex (4) | buyerIndex (4) | energyWh (8) | pricePerKWh (16). Byte offsets:
uint256 constant RECORD_TRADE_ID_OFFSET = 0;
uint256 constant RECORD_SELLER_OFFSET = 32;
uint256 constant RECORD_BUYER_OFFSET = 52;
uint256 constant RECORD_SELLER_INDEX_OFFSET = 72;
uint256 constant RECORD_BUYER_INDEX_OFFSET = 76;
uint256 constant RECORD_ENERGY_WH_OFFSET = 80;
uint256 constant RECORD_PRICE_PER_KWH_OFFSET = 88;
uint256 constant RECORD_SIZE = 104;

// The record's last word (read at RECORD_SELLER_INDEX_OFFSET, the record's last 32 bytes): sellerIndex
// (bits 224..255) | buyerIndex (192..223) | energyWh (128..191) | pricePerKWh (0..127).
uint256 constant RECORD_SELLER_INDEX_SHIFT = 224;
uint256 constant RECORD_BUYER_INDEX_SHIFT = 192;
uint256 constant RECORD_ENERGY_WH_SHIFT = 128;

// The other packed arguments of `settle`: parties, 20 bytes (an address) each; positions, 2 bytes (a
// uint16 position in parties) each, the seller's then the buyer's for every record.
uint256 constant PARTY_SIZE = 20;
uint256 constant POSITION_SIZE = 2;
uint256 constant POSITIONS_PER_RECORD = 2;
/// @dev Bytes of one record's positions: POSITIONS_PER_RECORD * POSITION_SIZE.
uint256 constant RECORD_POSITIONS_SIZE = 2 * 2;

/// @dev The calldata position of one trade record.
type TradeRecord is uint256;

using TradeRecordLibrary for TradeRecord global;

/// @title Typed reads (calldata) and the write (memory) of a trade record
library TradeRecordLibrary {
    function tradeId(TradeRecord r) internal pure returns (bytes32 v) {
        assembly ("memory-safe") {
            v := calldataload(add(r, RECORD_TRADE_ID_OFFSET))
        }
    }

    function seller(TradeRecord r) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(r, RECORD_SELLER_OFFSET)))
        }
    }

    function buyer(TradeRecord r) internal pure returns (address v) {
        assembly ("memory-safe") {
            v := shr(ADDRESS_SHIFT, calldataload(add(r, RECORD_BUYER_OFFSET)))
        }
    }

    /// @dev The seller's registry participant index.
    function sellerIndex(TradeRecord r) internal pure returns (uint32 v) {
        assembly ("memory-safe") {
            v := shr(UINT32_SHIFT, calldataload(add(r, RECORD_SELLER_INDEX_OFFSET)))
        }
    }

    /// @dev The buyer's registry participant index.
    function buyerIndex(TradeRecord r) internal pure returns (uint32 v) {
        assembly ("memory-safe") {
            v := shr(UINT32_SHIFT, calldataload(add(r, RECORD_BUYER_INDEX_OFFSET)))
        }
    }

    function energyWh(TradeRecord r) internal pure returns (uint64 v) {
        assembly ("memory-safe") {
            v := shr(UINT64_SHIFT, calldataload(add(r, RECORD_ENERGY_WH_OFFSET)))
        }
    }

    function pricePerKWh(TradeRecord r) internal pure returns (uint128 v) {
        assembly ("memory-safe") {
            v := shr(UINT128_SHIFT, calldataload(add(r, RECORD_PRICE_PER_KWH_OFFSET)))
        }
    }

    /// @dev Writes a record at memory position `out` (the caller's buffer, at least RECORD_SIZE bytes from
    /// `out`): fields in ascending order, each word written over the previous one's tail, the last
    /// (sellerIndex .. pricePerKWh, 32 bytes) ending exactly at `out + RECORD_SIZE`.
    function store(
        uint256 out,
        bytes32 id,
        address seller_,
        address buyer_,
        uint256 sellerIndex_,
        uint256 buyerIndex_,
        uint256 energyWh_,
        uint256 pricePerKWh_
    ) internal pure {
        assembly ("memory-safe") {
            mstore(add(out, RECORD_TRADE_ID_OFFSET), id)
            mstore(add(out, RECORD_SELLER_OFFSET), shl(ADDRESS_SHIFT, seller_))
            mstore(add(out, RECORD_BUYER_OFFSET), shl(ADDRESS_SHIFT, buyer_))
            mstore(
                add(out, RECORD_SELLER_INDEX_OFFSET),
                or(
                    or(shl(RECORD_SELLER_INDEX_SHIFT, sellerIndex_), shl(RECORD_BUYER_INDEX_SHIFT, buyerIndex_)),
                    or(shl(RECORD_ENERGY_WH_SHIFT, energyWh_), pricePerKWh_)
                )
            )
        }
    }
}

/// @dev Position `index` (a uint16) of the packed positions starting at calldata position `base`.
function positionAt(uint256 base, uint256 index) pure returns (uint256 v) {
    assembly ("memory-safe") {
        v := shr(UINT16_SHIFT, calldataload(add(base, mul(index, POSITION_SIZE))))
    }
}

/// @dev Party `index` of the packed 20-byte addresses starting at calldata position `base`.
function partyAt(uint256 base, uint256 index) pure returns (address v) {
    assembly ("memory-safe") {
        v := shr(ADDRESS_SHIFT, calldataload(add(base, mul(index, PARTY_SIZE))))
    }
}
