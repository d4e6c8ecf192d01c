"""Health: chain id, latest block, contract addresses, broker and database reachability, and
whether the chain head went backwards (``chain.head``: the rollbacks noticed since start)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter, Request

from backend.api.deps import ApiOptions, MarketDep, OptionsDep
from backend.api.schemas import HealthOut
from backend.chain.heads import HeadWatcher
from backend.market.service import Market

router = APIRouter(tags=["health"])


def broker_reachable(url: str, timeout_s: float = 0.3) -> dict[str, Any]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return {"url": url, "reachable": True}
    except OSError as exc:
        return {"url": url, "reachable": False, "error": str(exc)}


def head_watcher(request: Request, market: Market) -> HeadWatcher | None:
    """The API's chain-head watcher (one per app, on ``app.state.head_watcher``; the market
    recorder can ``subscribe`` to it). None on a ledger without a chain (the in-memory one)."""
    watcher: HeadWatcher | None = getattr(request.app.state, "head_watcher", None)
    w3 = getattr(market.ledger, "w3", None)
    if watcher is None and w3 is not None:
        watcher = request.app.state.head_watcher = HeadWatcher(w3)
    return watcher


def chain_head(watcher: HeadWatcher | None) -> dict[str, Any] | None:
    if watcher is None:
        return None
    try:
        watcher.check(force=True)
    except Exception as exc:
        return {**watcher.report(), "error": str(exc)}
    return watcher.report()


@router.get("/health", response_model=HealthOut)
async def health(request: Request, market: MarketDep, options: OptionsDep) -> HealthOut:
    chain, db_ok, broker, head = await asyncio.gather(
        asyncio.to_thread(market.ledger.health),
        asyncio.to_thread(market.store.ping),
        asyncio.to_thread(broker_reachable, options.broker_url),
        asyncio.to_thread(chain_head, head_watcher(request, market)),
    )
    if head is not None:
        chain["head"] = head
        chain["rolled_back"] = bool(head["rollbacks"])
    contracts = {str(k): str(v) for k, v in chain.pop("contracts", {}).items()}
    url = market.store.url
    return HealthOut(
        ok=bool(chain.get("reachable")) and db_ok,
        chain=chain,
        contracts=contracts,
        database={"reachable": db_ok, "backend": url.split(":", 1)[0]},
        broker=broker,
        market={
            "dev": options.dev,
            "intervalSeconds": market.config.interval_seconds,
            "gateLeadSeconds": market.config.gate_lead_seconds,
            "currentInterval": market.current_interval() if chain.get("reachable") else None,
            "eventSubscribers": market.events.subscriber_count,
        },
    )


# EIP-3085 wants 18 decimals for the native currency; every EVM development chain pays gas in ether.
NATIVE_CURRENCY = {"name": "Ether", "symbol": "ETH", "decimals": 18}


def add_chain_parameters(chain_id: int, options: ApiOptions) -> dict[str, Any]:
    """The chain as ``wallet_addEthereumChain`` (EIP-3085) takes it, from the API's settings
    (``TEGRID_PUBLIC_RPC_URL``, ``TEGRID_CHAIN_NAME``)."""
    return {
        "chainId": hex(chain_id),
        "chainName": options.chain_name,
        "rpcUrls": [options.public_rpc_url],
        "nativeCurrency": NATIVE_CURRENCY,
    }


@router.get("/contracts")
def contracts(market: MarketDep, options: OptionsDep) -> dict[str, Any]:
    """Chain id, contract addresses, the market's EIP-712 domain, and ``addChain``: what a wallet
    that does not know the chain is asked to add (``wallet_addEthereumChain`` parameters)."""
    led: Any = market.ledger
    dep = getattr(led, "deployment", None)
    addresses = (
        dict(dep.contracts)
        if dep is not None
        else {
            "EnergyMarket": market.ledger.market_address,
            "ParticipantRegistry": market.ledger.registry_address,
        }
    )
    return {
        "chainId": market.ledger.chain_id,
        "contracts": addresses,
        "eip712Domain": market.domain.as_dict(),
        "addChain": add_chain_parameters(market.ledger.chain_id, options),
    }
