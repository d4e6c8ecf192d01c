"""One settings object, read from ``TEGRID_*`` environment variables; defaults run on a laptop."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from backend.errors import ConfigError
from backend.paths import REPO_ROOT

# Anvil's default dev accounts (mnemonic "test test ... junk"): public test keys, no real money.
ANVIL_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TEGRID_{name}", default)


def _int_env(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"TEGRID_{name} must be an integer, got {raw!r}") from None


def _float_env(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"TEGRID_{name} must be a number, got {raw!r}") from None


# The validator's voltage band (pu of each bus's nominal voltage) must hold the nominal voltage
# and stay within what a distribution grid's power flow means: vm_min in [0.5, 1.0), vm_max in
# (1.0, 1.5].
VM_PU_BOUNDS = (0.5, 1.5)
# Ways an interval can be cleared (``Settings.clearing``).
CLEARING_METHODS = ("optimal", "greedy")


def check_voltage_band(vm_min_pu: float, vm_max_pu: float, names: tuple[str, str]) -> None:
    """``ConfigError`` naming the setting as the user wrote it (``names``) unless
    ``0.5 <= vm_min_pu < 1.0 < vm_max_pu <= 1.5``."""
    low, high = VM_PU_BOUNDS
    if not (math.isfinite(vm_min_pu) and low <= vm_min_pu < 1.0):
        raise ConfigError(f"{names[0]} must be in [{low}, 1.0) pu, got {vm_min_pu}")
    if not (math.isfinite(vm_max_pu) and 1.0 < vm_max_pu <= high):
        raise ConfigError(f"{names[1]} must be in (1.0, {high}] pu, got {vm_max_pu}")


# EnergyMarket's bounds on the imbalance prices, basis points of an interval's clearing price
# (MarketInvalidImbalancePrices outside them). Defined here, where the settings are checked, and
# re-exported by backend.chain.protocol, whose test pins them against the contract.
BPS = 10_000
MIN_SHORT_PRICE_BPS = BPS
MAX_SHORT_PRICE_BPS = 10 * BPS
MAX_LONG_PRICE_BPS = BPS


def check_imbalance_prices(short_bps: int, long_bps: int) -> None:
    """The market's bounds: short within 1x-10x the clearing price, long within 0-1x."""
    low, high, long_high = MIN_SHORT_PRICE_BPS, MAX_SHORT_PRICE_BPS, MAX_LONG_PRICE_BPS
    if not low <= short_bps <= high:
        raise ConfigError(
            f"TEGRID_IMBALANCE_SHORT_PRICE_BPS must be in [{low}, {high}], got {short_bps}"
        )
    if not 0 <= long_bps <= long_high:
        raise ConfigError(
            f"TEGRID_IMBALANCE_LONG_PRICE_BPS must be in [0, {long_high}], got {long_bps}"
        )


@dataclass(frozen=True)
class Settings:
    """Everything a tegrid process is configured with. Build with :meth:`from_env`."""

    rpc_url: str = "http://127.0.0.1:8545"
    chain_id: int = 31337
    # What the dashboard asks a wallet to add (wallet_addEthereumChain) when it does not know the
    # chain: the JSON-RPC URL browsers can reach (empty: rpc_url) and a name to show for it.
    public_rpc_url: str = ""
    chain_name: str = "tegrid"
    # Role keys: hex private key, or path to an eth-account keystore (TEGRID_KEYSTORE_PASSWORD).
    # Every process that sends transactions has an account of its own by default - the API (admin,
    # market operator, validator, grid operator: account 0), the oracle (9), the keeper (7) - so
    # no two processes ever race for one account's nonce.
    admin_key: str = ANVIL_KEYS[0]
    market_operator_key: str = ANVIL_KEYS[0]
    validator_key: str = ANVIL_KEYS[0]
    grid_operator_key: str = ANVIL_KEYS[0]
    oracle_key: str = ANVIL_KEYS[9]
    # settles intervals (EnergyMarket.settle takes no role: any account with gas)
    keeper_key: str = ANVIL_KEYS[7]
    keystore_password: str = ""
    database_url: str = f"sqlite:///{REPO_ROOT / '.tegrid' / 'tegrid.db'}"
    oracle_database_url: str = f"sqlite:///{REPO_ROOT / '.tegrid' / 'oracle.db'}"
    # The dispatcher's control actions and acks (tegrid dispatcher writes, the API reads).
    control_database_url: str = f"sqlite:///{REPO_ROOT / '.tegrid' / 'control.db'}"
    # The dispatcher publishes an unacknowledged control action again after this many seconds.
    control_retry_seconds: float = 5.0
    broker_url: str = "mqtt://127.0.0.1:1883"
    network: str = "cigre_lv"
    # The Neural Grid's voltage band (pu); loadings keep the validator's 100 % limits.
    vm_min_pu: float = 0.90
    vm_max_pu: float = 1.10
    # The Neural Grid (clearing rounds and validation) in a worker process of the API's own.
    grid_process: bool = False
    # How an interval is cleared: "optimal" (welfare-maximizing within the grid's limits,
    # backend.market.optimal) or "greedy" (merit order with whole-pair vetoes, its fallback).
    clearing: str = "optimal"
    interval_seconds: int = 900
    # Imbalance prices the market is deployed with, basis points of an interval's clearing price:
    # short (paid by a party the grid supplied) in [10,000, 100,000], long (paid to a party whose
    # surplus the grid absorbed) in [0, 10,000]; the grid operator changes them on chain later.
    imbalance_short_price_bps: int = 15_000
    imbalance_long_price_bps: int = 5_000
    deployment_file: Path = field(default=REPO_ROOT / ".tegrid" / "deployment.json")
    chain_state_file: Path = field(default=REPO_ROOT / ".tegrid" / "anvil-state.json")
    # Bounded work per interval: live orders one trader may have for one interval.
    max_orders_per_trader_interval: int = 64
    # The DSO service's budget per interval in tokens (decimal, e.g. "2.5"): flexibility the
    # grid operator's balancing account buys when the base state breaks a limit; 0 = off.
    dso_flex_budget: str = "0"
    # Finality: blocks on top of a receipt's block before it counts as final (0: mined is final,
    # fine on Anvil); receipts not seen within receipt_timeout_seconds resync the sender's nonce.
    confirmations: int = 0
    receipt_timeout_seconds: int = 120
    # Last chain head seen (and rollbacks noticed) by the CLI processes, for `tegrid doctor`.
    chain_head_file: Path = field(default=REPO_ROOT / ".tegrid" / "chain-head.json")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Request bodies, checked before any parsing: size (413), JSON nesting depth and integer
    # literal length (422; a uint256 has 78 digits).
    api_max_body_bytes: int = 1 << 20
    api_max_json_depth: int = 32
    api_max_int_digits: int = 78

    @classmethod
    def from_env(cls) -> Settings:
        """Read ``TEGRID_<FIELD>`` for every field; unset ones keep their defaults."""
        base = cls()
        values: dict[str, object] = {}
        for f in fields(cls):
            key = f.name.upper()
            current = getattr(base, f.name)
            if isinstance(current, bool):
                values[f.name] = _env(key, "1" if current else "0") not in ("0", "false", "")
            elif isinstance(current, float):
                values[f.name] = _float_env(key, current)
            elif isinstance(current, int):
                values[f.name] = _int_env(key, current)
            elif isinstance(current, Path):
                values[f.name] = Path(_env(key, str(current)))
            else:
                values[f.name] = _env(key, str(current))
        settings = cls(**values)  # type: ignore[arg-type]
        for name in ("interval_seconds", "api_max_body_bytes", "api_max_json_depth",
                     "api_max_int_digits"):  # fmt: skip
            if getattr(settings, name) <= 0:
                raise ConfigError(f"TEGRID_{name.upper()} must be positive")
        if settings.confirmations < 0:
            raise ConfigError("TEGRID_CONFIRMATIONS must be >= 0")
        if settings.receipt_timeout_seconds <= 0:
            raise ConfigError("TEGRID_RECEIPT_TIMEOUT_SECONDS must be positive")
        if settings.clearing not in CLEARING_METHODS:
            raise ConfigError(
                f"TEGRID_CLEARING must be one of {', '.join(CLEARING_METHODS)}, "
                f"got {settings.clearing!r}"
            )
        check_imbalance_prices(
            settings.imbalance_short_price_bps, settings.imbalance_long_price_bps
        )
        check_voltage_band(
            settings.vm_min_pu, settings.vm_max_pu, ("TEGRID_VM_MIN_PU", "TEGRID_VM_MAX_PU")
        )
        return settings

    @property
    def grid_limits(self) -> dict[str, float]:
        """The ``grid.verdicts.Limits`` fields these settings set (the voltage band)."""
        return {"vm_min_pu": self.vm_min_pu, "vm_max_pu": self.vm_max_pu}

    @property
    def api_url(self) -> str:
        """Where clients reach ``tegrid serve`` (``api_host``:``api_port``; a wildcard bind
        address is reached on the loopback)."""
        host = self.api_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.api_port}"

    def to_env(self) -> dict[str, str]:
        """The ``TEGRID_*`` variables that make :meth:`from_env` in another process give these
        settings (how the demo hands its stack to the services it starts as processes)."""
        return {
            f"TEGRID_{f.name.upper()}": (
                ("1" if value else "0") if isinstance(value, bool) else str(value)
            )
            for f in fields(self)
            for value in (getattr(self, f.name),)
        }
