"""Participants: plug-and-play connection requests signed by the wallet, and the registry view."""

from __future__ import annotations

import asyncio
from typing import Any

from eth_utils import to_checksum_address
from fastapi import APIRouter

from backend.api.deps import MarketDep
from backend.api.schemas import (
    Address,
    ConnectionIn,
    ErrorResponse,
    ParticipantOut,
    TypedDataTemplate,
)

router = APIRouter(prefix="/participants", tags=["participants"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 409, 422, 503)
}


@router.get("/eip712", response_model=TypedDataTemplate)
def connection_template(market: MarketDep) -> dict[str, Any]:
    """Typed-data template of ``ConnectionRequest`` (domain "tegrid ParticipantRegistry" v1)."""
    return market.template("ConnectionRequest")


@router.post("", status_code=201, response_model=ParticipantOut, responses=ERRORS)
async def request_connection(body: ConnectionIn, market: MarketDep) -> ParticipantOut:
    """The Neural Grid checks the hosting capacity at the bus; the grid operator key registers the
    participant on chain, or the request is refused with the reason (HOSTING_CAPACITY,
    UNKNOWN_BUS...)."""
    await asyncio.to_thread(market.request_connection, body.message.model_dump(), body.signature)
    return _participant(market, body.message.wallet)


@router.get("/{address}", response_model=ParticipantOut)
def get_participant(address: Address, market: MarketDep) -> ParticipantOut:
    return _participant(market, address)


def _participant(market: Any, address: str) -> ParticipantOut:
    wallet = to_checksum_address(address)
    p = market.participant(wallet, fresh=True)
    req = market.store.get_connection(wallet)
    request = None
    if req is not None:
        request = {
            "status": req.status,
            "reason": req.reason,
            "busId": req.bus_id,
            "hostingCapacityW": req.hosting_capacity_w,
            "txHash": req.tx_hash,
        }
    return ParticipantOut(
        wallet=wallet,
        registered=p is not None,
        active=bool(p and p.active),
        meter=p.meter if p else None,
        busId=p.bus_id if p else None,
        maxExportW=p.max_export_w if p else None,
        maxImportW=p.max_import_w if p else None,
        index=p.index if p else None,
        request=request,
        availableBalance=market.available_balance(wallet, fresh=True) if p else None,
        reservedByOrders=market.reserved(wallet) if p else None,
    )
