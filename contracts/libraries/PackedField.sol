// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// Packed calldata is big-endian with no padding, so a field of `width` bits at byte offset `o` is the top
// `width` bits of the word CALLDATALOAD reads at `o`. The distance between a field at the top of a word
// (as calldata holds it) and at the bottom (as a value) is 256 - width bits: the getters of the packed-record
// libraries read a field with one CALLDATALOAD and a right shift by it (no mask), and writers shift left
// by it. File-level, so that assembly anywhere can use them.

/// @dev 256 - 160: a 20-byte address.
uint256 constant ADDRESS_SHIFT = 256 - 160;
/// @dev 256 - 8: a uint8.
uint256 constant UINT8_SHIFT = 256 - 8;
/// @dev 256 - 16: a uint16.
uint256 constant UINT16_SHIFT = 256 - 16;
/// @dev 256 - 32: a uint32.
uint256 constant UINT32_SHIFT = 256 - 32;
/// @dev 256 - 64: a uint64.
uint256 constant UINT64_SHIFT = 256 - 64;
/// @dev 256 - 128: a uint128.
uint256 constant UINT128_SHIFT = 256 - 128;
