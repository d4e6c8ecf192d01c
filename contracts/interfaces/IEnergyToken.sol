// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";

/// @title Settlement token for development chains
/// @notice An ERC-20 with 6 decimals (stablecoin-like); holders of MINTER_ROLE mint.
interface IEnergyToken is IERC20Metadata {
    /// @notice Role allowed to mint.
    function MINTER_ROLE() external view returns (bytes32);

    /// @notice Mint `amount` base units to `to`.
    /// @param to Receiver.
    /// @param amount Amount in base units (6 decimals).
    function mint(address to, uint256 amount) external;
}
