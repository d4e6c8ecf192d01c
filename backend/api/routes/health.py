"""Health: chain id, latest block, contract addresses, broker and database reachability."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter

from backend.api.deps import MarketDep, OptionsDep
from backend.api.schemas import HealthOut

router = APIRouter(tags=["health"])


def broker_reachable(url: str, timeout_s: float = 0.3) -> dict[str, Any]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return {"url": url, "reachable": True}
    except OSError as exc:
        return {"url": url, "reachable": False, "error": str(exc)}


@router.get("/health", response_model=HealthOut)
async def health(market: MarketDep, options: OptionsDep) -> HealthOut:
    chain, db_ok, broker = await asyncio.gather(
        asyncio.to_thread(market.ledger.health),
        asyncio.to_thread(market.store.ping),
        asyncio.to_thread(broker_reachable, options.broker_url),
    )
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


@router.get("/contracts")
def contracts(market: MarketDep) -> dict[str, Any]:
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
    }
