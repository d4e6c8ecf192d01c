"""Typed dependencies: routes ask for ``MarketDep`` etc.; tests swap them via
``app.dependency_overrides``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from backend.chain.errors import ChainUnavailableError
from backend.iot.control_store import ControlStore, ControlStoreError
from backend.market.events import EventBus
from backend.market.service import Market


@dataclass
class ApiOptions:
    dev: bool = False
    broker_url: str = "mqtt://127.0.0.1:1883"
    # The chain as wallets are told to add it (GET /contracts): its public JSON-RPC URL and name.
    public_rpc_url: str = "http://127.0.0.1:8545"
    chain_name: str = "tegrid"


# Coroutines, so FastAPI resolves them on the event loop instead of a worker-thread round trip.
async def get_market(request: Request) -> Market:
    market: Market | None = getattr(request.app.state, "market", None)
    if market is None:
        raise ChainUnavailableError("the market is not ready yet (chain or deployment missing)")
    return market


async def get_events(request: Request) -> EventBus:
    bus: EventBus = request.app.state.events
    return bus


async def get_control(request: Request) -> ControlStore:
    store: ControlStore | None = getattr(request.app.state, "control", None)
    if store is None:
        raise ControlStoreError("the control store is not open yet")
    return store


async def get_options(request: Request) -> ApiOptions:
    opts: ApiOptions = request.app.state.options
    return opts


MarketDep = Annotated[Market, Depends(get_market)]
EventsDep = Annotated[EventBus, Depends(get_events)]
ControlDep = Annotated[ControlStore, Depends(get_control)]
OptionsDep = Annotated[ApiOptions, Depends(get_options)]
