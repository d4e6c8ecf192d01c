// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// The 100-byte packed signed reading of `submitReadings` (see {IMeterReadings}, docs/packed-calldata.md):
// meter (20) | importWh (8) | exportWh (8) | r (32) | vs (32). Byte offsets from the start of the reading:
uint256 constant READING_METER_OFFSET = 0;
uint256 constant READING_IMPORT_WH_OFFSET = 20;
uint256 constant READING_EXPORT_WH_OFFSET = 28;
uint256 constant READING_R_OFFSET = 36;
uint256 constant READING_VS_OFFSET = 68;
uint256 constant READING_SIZE = 100;

// MeterReadings reads importWh and exportWh as one 128-bit pair (the 16 bytes at READING_IMPORT_WH_OFFSET,
// shifted down by UINT128_SHIFT): importWh (bits 64..127) | exportWh (bits 0..63).
uint256 constant READING_PAIR_IMPORT_WH_SHIFT = 64;
uint256 constant READING_PAIR_WH_MASK = 0xffffffffffffffff;

// One accepted reading in the `accepted` bytes of `ReadingsSubmitted`: meter (20) | importWh (4) |
// exportWh (4), 28 bytes. Byte offsets, and the shifts that place each field in a word written at the
// entry's start:
uint256 constant ACCEPTED_METER_OFFSET = 0;
uint256 constant ACCEPTED_IMPORT_WH_OFFSET = 20;
uint256 constant ACCEPTED_EXPORT_WH_OFFSET = 24;
uint256 constant ACCEPTED_SIZE = 28;
uint256 constant ACCEPTED_IMPORT_WH_SHIFT = 256 - 8 * (20 + 4);
uint256 constant ACCEPTED_EXPORT_WH_SHIFT = 256 - 8 * (24 + 4);
uint256 constant ACCEPTED_WH_MASK = 0xffffffff;
