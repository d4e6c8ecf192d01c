// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// The registry's answer word for a wallet (`statesOf`) or a meter key (`meterStatesOf`), see
// {IParticipantRegistry}: index (bits 0..31) | active (bit 32) | registered (bit 33, meter keys only; a
// wallet is registered when its index is not zero). File-level, so that assembly anywhere can use them.
uint256 constant REGISTRY_INDEX_MASK = 0xffffffff;
uint256 constant REGISTRY_ACTIVE_SHIFT = 32;
uint256 constant REGISTRY_ACTIVE = 1 << 32;
uint256 constant REGISTRY_REGISTERED = 1 << 33;
// `meterStatesOf` takes the meter keys packed, 20 bytes (an address) each.
uint256 constant METER_KEY_SIZE = 20;

/// @title The registry's state word, shared by ParticipantRegistry (writer) and its readers
library RegistryState {
    /// @dev The `statesOf` word of a participant.
    function pack(uint32 index_, bool active_) internal pure returns (uint256) {
        return uint256(index_) | (active_ ? REGISTRY_ACTIVE : 0);
    }

    /// @dev The participant index (0: not registered).
    function index(uint256 state) internal pure returns (uint32) {
        return uint32(state & REGISTRY_INDEX_MASK);
    }

    function isActive(uint256 state) internal pure returns (bool) {
        return state & REGISTRY_ACTIVE != 0;
    }

    /// @dev Whether a meter key is known (`meterStatesOf` only).
    function isRegistered(uint256 state) internal pure returns (bool) {
        return state & REGISTRY_REGISTERED != 0;
    }
}
