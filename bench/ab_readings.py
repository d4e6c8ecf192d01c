"""A/B of the meters' path between two builds of the contracts, on one chain.

    python -m bench.ab_readings BASE_BUILD_DIR [NEW_BUILD_DIR]

One Anvil, one registry with 100 connected meters, ``MeterReadings`` deployed from each build
directory (brownie's ``build/contracts``; NEW defaults to this checkout's), and the same 100
readings (signed for each contract's own domain) submitted to both: prints each call's gas and
its zero calldata bytes (4 gas each instead of 16, the signatures differ), as JSON. A base build:
``git archive <commit> contracts brownie-config.yaml | tar -x -C DIR``, ``mkdir DIR/tests``,
``ln -s $PWD/node_modules DIR/`` and ``brownie compile`` in DIR (docs/benchmarks.md, #17).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eth_account import Account
from eth_utils import keccak, to_checksum_address

from backend.chain import batches
from backend.chain.client import ChainClient
from backend.chain.contracts import build_dir, contract_at, load_artifact
from backend.devtools.anvil import start_anvil
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900


def run(base: Path, new: Path, n_meters: int = 100) -> dict[str, dict[str, int]]:
    """Gas of one ``submitReadings`` of ``n_meters`` first readings on each build."""
    anvil = start_anvil()
    try:
        c = ChainClient(anvil.url, ANVIL_KEYS[0])
        registry_address, _ = c.deploy(load_artifact("ParticipantRegistry"), c.address)
        registry = contract_at(c.w3, "ParticipantRegistry", registry_address)
        for role in (registry.functions.GRID_OPERATOR_ROLE(), registry.functions.ORACLE_ROLE()):
            c.transact(registry.functions.grantRole(role.call(), c.address))
        keys = ["0x" + keccak(text=f"ab meter {i}").hex() for i in range(n_meters)]
        for i, key in enumerate(keys):
            meter = Account.from_key(key).address
            c.transact(registry.functions.connect(Account.create().address, meter, i + 1, 1, 1))
        interval = int(c.w3.eth.get_block("latest")["timestamp"]) // INTERVAL_S - 1
        out: dict[str, dict[str, int]] = {}
        for name, directory in (("base", base), ("new", new)):
            artifact = load_artifact("MeterReadings", directory)
            address, _ = c.deploy(artifact, registry_address, INTERVAL_S)
            readings = c.w3.eth.contract(address=to_checksum_address(address), abi=artifact.abi)
            data = batches.readings_arg(
                batches.signed_reading(
                    k, c.chain_id, address, Account.from_key(k).address, interval, 7, 9
                )
                for k in keys
            )
            receipt = c.transact(readings.functions.submitReadings(interval, data))
            out[name] = {"gas": int(receipt["gasUsed"]), "zero_calldata_bytes": data.count(0)}
        return out
    finally:
        anvil.stop()


def main() -> None:
    base = Path(sys.argv[1])
    new = Path(sys.argv[2]) if len(sys.argv) > 2 else build_dir()
    print(json.dumps(run(base, new)))


if __name__ == "__main__":
    main()
