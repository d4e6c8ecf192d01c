"""The development stack behind ``tegrid serve --dev``, usable in-process too (demo, tests, bench).

- a local Anvil: reused when ``Settings.rpc_url`` answers, else started with its state kept in
  ``Settings.chain_state_file``;
- the contracts: reused when the deployment file matches the chain and has code, else deployed
  (``backend.chain.deploy``);
- the ten Anvil default accounts (``ANVIL_KEYS``) registered as participants on distinct load
  buses of ``Settings.network``, each with the deterministic dev meter key
  ``backend.iot.meters.dev_meter_key(i)`` and a funded deposit in ``EnergyMarket`` (tokens minted
  by the admin key): ``backend.devtools.participants.provision``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from eth_utils import to_checksum_address
from web3 import Web3

from backend.chain.contracts import load_deployment
from backend.chain.deploy import deploy_from_settings
from backend.chain.errors import LedgerError
from backend.devtools.anvil import AnvilProcess
from backend.devtools.participants import provision
from backend.net import url_reachable
from backend.settings import ANVIL_KEYS, Settings

log = logging.getLogger("tegrid.devstack")


@dataclass
class DevStack:
    settings: Settings
    deployment: Any
    anvil: AnvilProcess | None = None  # the Anvil process we started (None when reused)
    participants: list[dict[str, Any]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the Anvil we started (it dumps its state file on the way out)."""
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None


def ensure_chain(settings: Settings) -> AnvilProcess | None:
    """Reuse the chain at ``rpc_url`` or start Anvil there; returns the process we started."""
    if url_reachable(settings.rpc_url, 8545):
        return None
    settings.chain_state_file.parent.mkdir(parents=True, exist_ok=True)
    port = urlparse(settings.rpc_url).port or 8545
    return AnvilProcess(port=port, state_file=settings.chain_state_file).start()


def ensure_deployment(settings: Settings) -> Any:
    """The deployment in ``settings.deployment_file`` if live on this chain, else a new one."""
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url))
    try:
        dep = load_deployment(settings.deployment_file)
        if dep.chain_id == int(w3.eth.chain_id) and all(
            len(w3.eth.get_code(to_checksum_address(addr))) > 0 for addr in dep.contracts.values()
        ):
            return dep
    except LedgerError:
        pass
    log.info("deploying the contracts to %s", settings.rpc_url)
    return deploy_from_settings(settings)


def start_dev_stack(settings: Settings, participants: int = 10) -> DevStack:
    """Chain, contracts and funded participants, ready for ``build_market(settings)``."""
    anvil = ensure_chain(settings)
    try:
        deployment = ensure_deployment(settings)
        people = provision(settings, deployment, ANVIL_KEYS[:participants])
    except Exception:
        if anvil is not None:
            anvil.stop()
        raise
    return DevStack(settings, deployment, anvil, people)
