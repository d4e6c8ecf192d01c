"""The one deployment implementation: web3, any RPC URL, brownie's compiled artifacts.

``scripts/deploy.py`` (brownie) and ``tegrid chain deploy`` both call :func:`deploy_all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from backend.chain.client import ChainClient
from backend.chain.contracts import Deployment, contract_at, load_artifact, save_deployment
from backend.settings import Settings

DEFAULT_SETTLEMENT_DELAY_SECONDS = 3600
# The chain's gate closure: no batch of an interval is recorded after its start minus this lead. The
# market closes its order book earlier (``MarketConfig.gate_lead_seconds``) so that clearing and
# recording fit before it.
DEFAULT_GATE_LEAD_SECONDS = 0
# Imbalance prices in basis points of an interval's clearing price (Settings.imbalance_*_price_bps).
DEFAULT_SHORT_PRICE_BPS = 15_000
DEFAULT_LONG_PRICE_BPS = 5_000


@dataclass(frozen=True)
class RoleHolders:
    """Addresses that receive the registry roles (the deployer keeps DEFAULT_ADMIN_ROLE)."""

    grid_operator: str
    validator: str
    oracle: str
    market_operator: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RoleHolders:
        def addr(key: str) -> str:
            return str(Account.from_key(key).address)

        return cls(
            grid_operator=addr(settings.grid_operator_key),
            validator=addr(settings.validator_key),
            oracle=addr(settings.oracle_key),
            market_operator=addr(settings.market_operator_key),
        )


def deploy_all(
    client: ChainClient,
    roles: RoleHolders,
    *,
    interval_seconds: int = 900,
    settlement_delay_seconds: int = DEFAULT_SETTLEMENT_DELAY_SECONDS,
    gate_lead_seconds: int = DEFAULT_GATE_LEAD_SECONDS,
    token_address: str | None = None,
    deployment_file: Path | None = None,
    balancing_account: str | None = None,
    short_price_bps: int = DEFAULT_SHORT_PRICE_BPS,
    long_price_bps: int = DEFAULT_LONG_PRICE_BPS,
) -> Deployment:
    """Deploy token (unless ``token_address``), registry, readings, market and flexibility market
    (attached to the market, the only caller of its bank hook); grant the roles.

    The client's account becomes the registry admin and the token minter. The market settles
    imbalance against ``balancing_account`` (default: the grid operator's address) at the given
    prices. When ``deployment_file`` is given the result is written there.
    """
    contracts: dict[str, str] = {}
    if token_address is None:
        token_address, _ = client.deploy(load_artifact("EnergyToken"), client.address)
    contracts["EnergyToken"] = token_address
    registry_address, _ = client.deploy(load_artifact("ParticipantRegistry"), client.address)
    contracts["ParticipantRegistry"] = registry_address
    readings_address, _ = client.deploy(
        load_artifact("MeterReadings"), registry_address, interval_seconds
    )
    contracts["MeterReadings"] = readings_address
    market_address, receipt = client.deploy(
        load_artifact("EnergyMarket"),
        token_address,
        registry_address,
        readings_address,
        settlement_delay_seconds,
        gate_lead_seconds,
        balancing_account or roles.grid_operator,
        short_price_bps,
        long_price_bps,
    )
    contracts["EnergyMarket"] = market_address
    flex_address, _ = client.deploy(
        load_artifact("FlexibilityMarket"), market_address, registry_address, readings_address
    )
    contracts["FlexibilityMarket"] = flex_address
    market = contract_at(client.w3, "EnergyMarket", market_address)
    receipt = client.transact(market.functions.attachFlexibility(flex_address))

    registry = contract_at(client.w3, "ParticipantRegistry", registry_address)
    grants = [
        (registry.functions.GRID_OPERATOR_ROLE().call(), roles.grid_operator),
        (registry.functions.VALIDATOR_ROLE().call(), roles.validator),
        (registry.functions.ORACLE_ROLE().call(), roles.oracle),
        (registry.functions.MARKET_OPERATOR_ROLE().call(), roles.market_operator),
    ]
    last_block = int(receipt["blockNumber"])
    for role, holder in grants:
        r = client.transact(registry.functions.grantRole(role, holder))
        last_block = int(r["blockNumber"])
    deployment = Deployment(
        chain_id=client.chain_id,
        contracts=contracts,
        interval_seconds=interval_seconds,
        settlement_delay_seconds=settlement_delay_seconds,
        gate_lead_seconds=gate_lead_seconds,
        block=last_block,
    )
    if deployment_file is not None:
        save_deployment(deployment, deployment_file)
    return deployment


def deploy_from_settings(
    settings: Settings,
    *,
    settlement_delay_seconds: int = DEFAULT_SETTLEMENT_DELAY_SECONDS,
    write: bool = True,
) -> Deployment:
    """Deploy with the settings' admin and role keys to ``settings.rpc_url``; write the file."""
    client = ChainClient.from_settings(settings)
    return deploy_all(
        client,
        RoleHolders.from_settings(settings),
        interval_seconds=settings.interval_seconds,
        settlement_delay_seconds=settlement_delay_seconds,
        deployment_file=settings.deployment_file if write else None,
        short_price_bps=settings.imbalance_short_price_bps,
        long_price_bps=settings.imbalance_long_price_bps,
    )
