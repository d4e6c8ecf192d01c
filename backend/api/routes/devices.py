"""Devices: plug-and-play registration of controllable devices (signed by the owner wallet and by
the device key), the registry's view of them."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from backend.api.deps import MarketDep
from backend.api.schemas import (
    Address,
    DeviceIn,
    DeviceOut,
    ErrorResponse,
    TypedDataTemplate,
)
from backend.chain import protocol
from backend.chain.address import checksum
from backend.iot.control_store import ControlStore
from backend.market.models import DeviceRow
from backend.market.ports import Device, SocReport

router = APIRouter(prefix="/devices", tags=["devices"])
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 422, 503)
}


@router.get("/eip712", response_model=TypedDataTemplate)
def device_template(market: MarketDep) -> dict[str, Any]:
    """Typed-data template of ``DeviceRegistration`` (domain "tegrid ParticipantRegistry" v1):
    the owner wallet and the device key both sign the same message."""
    return market.template("DeviceRegistration")


def device_out(record: Device, row: DeviceRow | None, soc: SocReport | None = None) -> DeviceOut:
    return DeviceOut(
        device=record.device,
        owner=record.owner,
        busId=record.bus_id,
        kind=record.kind,
        kindName=protocol.DEVICE_KINDS.get(record.kind, "unknown"),
        active=record.active,
        minW=record.min_w,
        maxW=record.max_w,
        capacityWh=record.capacity_wh,
        hostingExportW=row.hosting_export_w if row else None,
        hostingImportW=row.hosting_import_w if row else None,
        txHash=row.tx_hash if row else None,
        stateOfChargeWh=soc.soc_wh if soc else None,
        stateOfChargeAt=soc.at if soc else None,
    )


@router.post("", status_code=201, response_model=DeviceOut, responses=ERRORS)
async def register_device(body: DeviceIn, market: MarketDep) -> DeviceOut:
    """Register a device: both signatures over the message, the owner active and at the bus,
    the limits within the owner's connection, the Neural Grid's hosting capacity at the bus for
    the device's export and import; then the grid operator key registers it on chain. Refusals
    name the field: BAD_SIGNATURE (401), ORDER_EXPIRED, INVALID_ORDER, WRONG_BUS,
    OVER_CONNECTION_LIMIT, HOSTING_CAPACITY, UNKNOWN_BUS (422), UNKNOWN_TRADER, TRADER_INACTIVE
    (403), DEVICE_IN_USE (409)."""

    def register() -> DeviceOut:
        market.register_device(body.message.model_dump(), body.signature, body.deviceSignature)
        return device_out(*market.devices.get(body.message.device))

    return await asyncio.to_thread(register)


@router.get("", response_model=list[DeviceOut])
async def list_devices(
    market: MarketDep,
    owner: Address | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> list[DeviceOut]:
    """Devices registered through this API (of ``owner`` when given), with the registry's
    current record of each."""

    def listing() -> list[DeviceOut]:
        rows = market.store.list_devices(checksum(owner) if owner else None, limit, offset)
        out = []
        for row in rows:
            record = market.ledger.device(row.device)
            if record is not None:
                out.append(device_out(record, row))
        return out

    return await asyncio.to_thread(listing)


@router.get("/{address}", response_model=DeviceOut, responses=ERRORS)
async def get_device(address: Address, market: MarketDep, request: Request) -> DeviceOut:
    """The registry's record of a device key (404 NOT_FOUND when it is not registered) and, for
    a battery, its latest reported state of charge (``stateOfChargeWh``, ``stateOfChargeAt``;
    null without a report or without the dispatcher's store)."""
    control: ControlStore | None = getattr(request.app.state, "control", None)

    def view() -> DeviceOut:
        record, row = market.devices.get(address)
        return device_out(record, row, control.soc(record.device) if control else None)

    return await asyncio.to_thread(view)
