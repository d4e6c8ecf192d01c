"""Contract bindings: ABIs and bytecode from brownie's build/contracts, addresses from the
deployment file.

Deployment file (JSON, ``Settings.deployment_file``)::

    {"chain_id": 31337, "block": 12, "interval_seconds": 900, "settlement_delay_seconds": 3600,
     "contracts": {"EnergyToken": "0x..", "ParticipantRegistry": "0x..", "MeterReadings": "0x..",
                   "EnergyMarket": "0x..", "FlexibilityMarket": "0x.."}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract

from backend.chain.errors import ArtifactNotFoundError, DeploymentNotFoundError
from backend.paths import BUILD_DIR

CONTRACT_NAMES: tuple[str, ...] = (
    "EnergyToken",
    "ParticipantRegistry",
    "MeterReadings",
    "EnergyMarket",
    "FlexibilityMarket",
)


@dataclass(frozen=True)
class Artifact:
    """ABI and creation bytecode of one compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@dataclass
class Deployment:
    """Where the contracts of one chain are, and the time parameters they were deployed with."""

    chain_id: int
    contracts: dict[str, str] = field(default_factory=dict)
    interval_seconds: int = 900
    settlement_delay_seconds: int = 3600
    gate_lead_seconds: int = 0
    block: int = 0

    def address(self, name: str) -> str:
        try:
            return self.contracts[name]
        except KeyError:
            raise DeploymentNotFoundError(f"deployment has no {name}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def build_dir() -> Path:
    return BUILD_DIR / "contracts"


@lru_cache(maxsize=32)
def _load_artifact(path: str) -> Artifact:
    data = json.loads(Path(path).read_text())
    return Artifact(
        name=str(data["contractName"]),
        abi=list(data["abi"]),
        bytecode=str(data.get("bytecode", "")),
    )


def load_artifact(name: str, directory: Path | None = None) -> Artifact:
    """The artifact of ``name`` (brownie's ``build/contracts/<name>.json``)."""
    path = (directory or build_dir()) / f"{name}.json"
    if not path.exists():
        raise ArtifactNotFoundError(f"{path} not found: run `brownie compile`")
    return _load_artifact(str(path))


def load_abi(name: str, directory: Path | None = None) -> list[dict[str, Any]]:
    return load_artifact(name, directory).abi


def error_abis(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every custom error of the tegrid contracts (and the OpenZeppelin ones they inherit)."""
    seen: dict[str, dict[str, Any]] = {}
    for name in CONTRACT_NAMES:
        try:
            abi = load_abi(name, directory)
        except ArtifactNotFoundError:
            continue
        for item in abi:
            if item.get("type") == "error":
                sig = item["name"] + "(" + ",".join(i["type"] for i in item.get("inputs", [])) + ")"
                seen.setdefault(sig, item)
    return list(seen.values())


def load_deployment(path: Path) -> Deployment:
    """Read a deployment file."""
    if not path.exists():
        raise DeploymentNotFoundError(f"{path} not found: run `tegrid chain deploy`")
    data = json.loads(path.read_text())
    return Deployment(
        chain_id=int(data["chain_id"]),
        contracts={k: to_checksum_address(v) for k, v in data["contracts"].items()},
        interval_seconds=int(data.get("interval_seconds", 900)),
        settlement_delay_seconds=int(data.get("settlement_delay_seconds", 3600)),
        gate_lead_seconds=int(data.get("gate_lead_seconds", 0)),
        block=int(data.get("block", 0)),
    )


def save_deployment(deployment: Deployment, path: Path) -> None:
    """Write a deployment file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(deployment.to_json() + "\n")
    tmp.replace(path)


def contract_at(w3: Web3, name: str, address: str, directory: Path | None = None) -> Contract:
    """A web3 contract object for ``name`` at ``address``."""
    return w3.eth.contract(address=to_checksum_address(address), abi=load_abi(name, directory))


def deployed_contracts(w3: Web3, deployment: Deployment) -> dict[str, Contract]:
    """All contracts of a deployment; refuses a deployment made on another chain."""
    chain_id = int(w3.eth.chain_id)
    if chain_id != deployment.chain_id:
        raise DeploymentNotFoundError(
            f"deployment is for chain {deployment.chain_id}, the node is chain {chain_id}"
        )
    return {name: contract_at(w3, name, addr) for name, addr in deployment.contracts.items()}
