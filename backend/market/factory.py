"""Build a market from the settings: store (Settings.database_url), chain ledger (deployment file,
market-operator and grid-operator keys), Neural Grid (Settings.network, its voltage band
Settings.vm_min_pu / vm_max_pu), validator key."""

from __future__ import annotations

import json
from pathlib import Path

from eth_account import Account

from backend.chain import protocol
from backend.chain.client import ChainClient
from backend.chain.contracts import load_deployment
from backend.chain.errors import AmountError
from backend.chain.funds import token_units
from backend.errors import ConfigError
from backend.market.chain_ledger import ChainLedger
from backend.market.events import EventBus
from backend.market.grid_port import GridPortAdapter
from backend.market.grid_process import GridProcess
from backend.market.ports import GridPort
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import Settings


def load_key(value: str, password: str = "") -> str:
    """A hex private key, or the path of an eth-account keystore file (decrypted with
    ``password``)."""
    if value.startswith("0x") and len(value) == 66:
        return value
    path = Path(value)
    if path.is_file():
        try:
            return "0x" + bytes(Account.decrypt(json.loads(path.read_text()), password)).hex()
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"cannot decrypt keystore {path}: {exc}") from None
    if len(value) == 64:
        return "0x" + value
    raise ConfigError("a key must be 0x + 64 hex digits or the path of a keystore file")


def dso_budget_units(tokens: str) -> int:
    """``TEGRID_DSO_FLEX_BUDGET`` (tokens, decimal) in base units; "0" is off."""
    if tokens.strip() in ("0", ""):
        return 0
    try:
        return token_units(tokens.strip(), protocol.TOKEN_DECIMALS)
    except AmountError as exc:
        raise ConfigError(f"TEGRID_DSO_FLEX_BUDGET: {exc}") from None


def build_market(
    settings: Settings,
    events: EventBus | None = None,
    *,
    with_grid: bool = True,
    config: MarketConfig | None = None,
) -> Market:
    deployment = load_deployment(settings.deployment_file)
    pw = settings.keystore_password
    operator_key = load_key(settings.market_operator_key, pw)
    grid_key = load_key(settings.grid_operator_key, pw)
    operator = ChainClient(settings.rpc_url, operator_key)
    # one client per key: each keeps its own nonce
    grid_operator = (
        operator if grid_key == operator_key else ChainClient(settings.rpc_url, grid_key)
    )
    ledger = ChainLedger(deployment, operator, grid_operator)
    grid: GridPort | None = None
    if with_grid and settings.grid_process:
        grid = GridProcess(
            settings.network, deployment.interval_seconds, settings.grid_limits, settings.clearing
        )
    elif with_grid:
        grid = GridPortAdapter(
            settings.network,
            deployment.interval_seconds,
            limits=settings.grid_limits,
            clearing=settings.clearing,
        )
    cfg = config or MarketConfig(
        interval_seconds=deployment.interval_seconds,
        max_orders_per_trader_interval=settings.max_orders_per_trader_interval,
        dso_flex_budget=dso_budget_units(settings.dso_flex_budget),
    )
    return Market(
        Store(settings.database_url),
        ledger,
        grid,
        load_key(settings.validator_key, pw),
        cfg,
        events,
    )
