"""The development stack behind ``tegrid serve --dev``, usable in-process too (demo, tests, bench).

- a local Anvil: reused when ``Settings.rpc_url`` answers, else started with its state kept in
  ``Settings.chain_state_file``;
- the contracts: reused when the deployment file matches the chain and has code, else deployed
  (``backend.chain.deploy``);
- the ten Anvil default accounts (``ANVIL_KEYS``) registered as participants on distinct load
  buses of ``Settings.network``, each with the deterministic dev meter key
  ``backend.iot.meters.dev_meter_key(i)`` and a funded deposit in ``EnergyMarket`` (tokens minted
  by the admin key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from eth_account import Account
from eth_utils import keccak, to_checksum_address

from backend.net import url_reachable
from backend.settings import ANVIL_KEYS, Settings

log = logging.getLogger("tegrid.devstack")

DEV_DEPOSIT = 1_000_000 * 10**6  # one million tokens (6 decimals) per participant
DEV_LIMIT_W = 200_000


def dev_meter_key(index: int) -> str:
    """The deterministic meter key of participant ``index`` (the IoT package's when available)."""
    try:
        from backend.iot.meters import dev_meter_key as iot_key

        return iot_key(index)
    except ImportError:  # pragma: no cover - the IoT package is optional here
        return "0x" + keccak(text=f"tegrid dev meter {index}").hex()


@dataclass
class DevStack:
    settings: Settings
    deployment: Any
    anvil: Any | None = None  # the Anvil process we started (None when reused)
    participants: list[dict[str, Any]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the Anvil we started (it dumps its state file on the way out)."""
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None


def ensure_chain(settings: Settings) -> Any | None:
    """Reuse the chain at ``rpc_url`` or start Anvil there; returns the process we started."""
    if url_reachable(settings.rpc_url, 8545):
        return None
    from backend.oracle.devchain import AnvilProcess

    settings.chain_state_file.parent.mkdir(parents=True, exist_ok=True)
    port = urlparse(settings.rpc_url).port or 8545
    return AnvilProcess(port=port, state_file=settings.chain_state_file).start()


def ensure_deployment(settings: Settings) -> Any:
    """The deployment in ``settings.deployment_file`` if live on this chain, else a new one."""
    from web3 import Web3

    from backend.chain.contracts import load_deployment
    from backend.chain.deploy import deploy_from_settings
    from backend.chain.errors import LedgerError

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


def provision(
    settings: Settings,
    deployment: Any,
    keys: tuple[str, ...] = ANVIL_KEYS,
    buses: list[int] | None = None,
    deposit: int = DEV_DEPOSIT,
    limit_w: int = DEV_LIMIT_W,
) -> list[dict[str, Any]]:
    """Register ``keys`` as participants on distinct load buses, deposits funded (idempotent)."""
    from backend.chain.client import ChainClient
    from backend.chain.contracts import contract_at

    if buses is None:
        from grid.validator import GridValidator

        buses = GridValidator(settings.network).load_buses()
    clients: dict[str, ChainClient] = {}

    def client(key: str) -> ChainClient:
        # One client per key: ChainClient keeps its own nonce, so two for one key would collide.
        if key.lower() not in clients:
            clients[key.lower()] = ChainClient(settings.rpc_url, key)
        return clients[key.lower()]

    admin = client(settings.admin_key)
    grid_op = client(settings.grid_operator_key)
    registry = contract_at(
        admin.w3, "ParticipantRegistry", deployment.address("ParticipantRegistry")
    )
    market = contract_at(admin.w3, "EnergyMarket", deployment.address("EnergyMarket"))
    token = contract_at(admin.w3, "EnergyToken", deployment.address("EnergyToken"))
    out = []
    for i, key in enumerate(keys):
        wallet = Account.from_key(key).address
        meter = Account.from_key(dev_meter_key(i)).address
        bus = int(buses[i % len(buses)])
        p = registry.functions.participantOf(wallet).call()
        if int(p[1]) == 0:
            grid_op.transact(registry.functions.connect(wallet, meter, bus, limit_w, limit_w))
        else:
            meter, bus = p[0], int(p[2])
        available, _locked = market.functions.balanceOf(wallet).call()
        if available < deposit // 2:
            admin.transact(token.functions.mint(wallet, deposit))
            trader = client(key)
            trader.transact(token.functions.approve(market.address, deposit))
            trader.transact(market.functions.deposit(deposit))
        out.append(
            {"index": i, "wallet": wallet, "meter": meter, "meterKey": dev_meter_key(i), "bus": bus}
        )
    return out


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
