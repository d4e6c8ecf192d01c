"""eth-hash runs on pysha3's C keccak in every tegrid process (``backend/__init__.py``), with the
same digests as the reference backend."""

import subprocess
import sys

from eth_hash.auto import keccak
from eth_hash.backends.pycryptodome import CryptodomeBackend

import backend  # noqa: F401 - the import sets ETH_HASH_BACKEND

EMPTY = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"  # keccak256("")


def test_a_fresh_process_hashes_with_pysha3() -> None:
    code = (
        "import backend\n"
        "from eth_hash.auto import keccak\n"
        "print(keccak(b'').hex(), type(keccak.hasher.__self__).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [EMPTY, "PySha3Backend"]


def test_same_digests_as_pycryptodome() -> None:
    reference = CryptodomeBackend()
    for data in (b"", b"tegrid", bytes(range(256)) * 5):
        assert keccak(data) == reference.keccak256(data)
