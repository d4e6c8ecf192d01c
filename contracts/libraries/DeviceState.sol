// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// The registry's answer word for a device key (`deviceStatesOf`, see {IParticipantRegistry}): the device's
// first storage slot as stored (ParticipantRegistry's DeviceRecord, Solidity's packing in declaration
// order: owner (bits 0..159; zero: unknown device) | kind (160..167) | active (168..175) | minW (int32,
// 176..207) | maxW (int32, 208..239)) with bit 248 set when the owner is an active participant.
uint256 constant DEVICE_KIND_SHIFT = 160;
uint256 constant DEVICE_ACTIVE_SHIFT = 168;
uint256 constant DEVICE_MIN_W_SHIFT = 176;
uint256 constant DEVICE_MAX_W_SHIFT = 208;
uint256 constant DEVICE_OWNER_ACTIVE = 1 << 248;
// `deviceStatesOf` takes the device keys packed, 20 bytes (an address) each.
uint256 constant DEVICE_KEY_SIZE = 20;

/// @title The registry's device state word, shared by ParticipantRegistry (writer) and FlexibilityMarket
library DeviceState {
    function owner(uint256 state) internal pure returns (address) {
        return address(uint160(state));
    }

    function ownerActive(uint256 state) internal pure returns (bool) {
        return state & DEVICE_OWNER_ACTIVE != 0;
    }

    function active(uint256 state) internal pure returns (bool) {
        return (state >> DEVICE_ACTIVE_SHIFT) & 0xff != 0;
    }

    function minW(uint256 state) internal pure returns (int32) {
        return int32(uint32(state >> DEVICE_MIN_W_SHIFT));
    }

    function maxW(uint256 state) internal pure returns (int32) {
        return int32(uint32(state >> DEVICE_MAX_W_SHIFT));
    }
}
