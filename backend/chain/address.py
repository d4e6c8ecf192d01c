"""EIP-55 checksummed addresses, cached.

The hot paths (the market's order intake, the oracle's reading checks, the keeper's settlement
records) see the same few thousand traders and meters again and again; ``to_checksum_address``
hashes every time (~10 us), a cache hit costs a dictionary lookup."""

from __future__ import annotations

from functools import lru_cache

from eth_utils import to_checksum_address


@lru_cache(maxsize=100_000)
def checksum(address: str | bytes) -> str:
    """EIP-55 form of ``address`` (hex in any case with 0x, or its 20 bytes); raises ValueError
    when it is no address."""
    return str(to_checksum_address(address))
