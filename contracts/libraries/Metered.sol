// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// One participant's reading as `IMeterReadings.meteredOf` returns it and settlement reads it:
// present (bit 128) | exportWh (bits 64..127) | importWh (bits 0..63); zero when absent.
uint256 constant METERED_WH_MASK = type(uint64).max;
uint256 constant METERED_EXPORT_WH_SHIFT = 64;
uint256 constant METERED_PRESENT = 1 << 128;

/// @title The `meteredOf` word, shared by MeterReadings (writer) and EnergyMarket (reader)
library Metered {
    function pack(uint256 importWh_, uint256 exportWh_) internal pure returns (uint256) {
        return METERED_PRESENT | (exportWh_ << METERED_EXPORT_WH_SHIFT) | importWh_;
    }

    function importWh(uint256 metered) internal pure returns (uint256) {
        return metered & METERED_WH_MASK;
    }

    function exportWh(uint256 metered) internal pure returns (uint256) {
        return (metered >> METERED_EXPORT_WH_SHIFT) & METERED_WH_MASK;
    }

    function isPresent(uint256 metered) internal pure returns (bool) {
        return metered & METERED_PRESENT != 0;
    }
}
