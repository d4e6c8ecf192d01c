// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// secp256k1 n / 2: the largest s a signature may have (file-level, so assembly elsewhere can use it)
uint256 constant HALF_N = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
// vs without its top bit (yParity): s
uint256 constant S_MASK = 0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff;

/// @title EIP-2098 compact signatures through the ecrecover precompile
/// @notice The hot loops verify one signature per order or reading; calling the precompile directly on
/// (r, vs) read from packed calldata skips OpenZeppelin ECDSA's bytes handling. Same rules as
/// `ECDSA.tryRecover(hash, r, vs)`: s in the lower half of the curve order (no malleable copies),
/// zero for any failure.
library CompactSignature {

    /// @dev The signer of `digest` (r, vs = yParity << 255 | s), or zero when the signature is invalid.
    function recover(bytes32 digest, bytes32 r, bytes32 vs) internal view returns (address signer) {
        assembly ("memory-safe") {
            let s := and(vs, S_MASK)
            if iszero(gt(s, HALF_N)) {
                let m := mload(0x40)
                mstore(m, digest)
                mstore(add(m, 0x20), add(shr(255, vs), 27))
                mstore(add(m, 0x40), r)
                mstore(add(m, 0x60), s)
                if staticcall(gas(), 1, m, 0x80, 0x00, 0x20) {
                    if returndatasize() { signer := mload(0x00) }
                }
            }
        }
    }
}
