"""tegrid backend: chain client, market, oracle, IoT, API and the command line."""

import os

# eth-hash (every keccak of web3, eth-account, eth-utils and backend.chain.eip712) chooses its
# backend at the first hash: pysha3's C keccak (safe-pysha3, pinned) takes ~2.5 us a hash where
# pycryptodome's (eth-hash's first choice) takes ~13 us; a control action and its ack cost ten of
# them. An explicit choice in the environment wins.
os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")
