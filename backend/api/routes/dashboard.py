"""The live dashboard: the page at ``/`` and its static files, plus the two read-only views it needs
that the other routers do not give: the network drawing (``GET /grid/topology``) and the meter
readings recorded on chain for an interval (``GET /dashboard/readings``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from backend.api.deps import MarketDep
from backend.api.schemas import MAX_SAFE_INTEGER
from backend.chain import batches
from backend.chain.errors import ChainUnavailableError
from backend.market.errors import ConflictError, NotFoundError
from grid.networks import bus_geodata

router = APIRouter(tags=["dashboard"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
NO_CACHE = {"Cache-Control": "no-cache"}
READINGS_LOOKBACK_BLOCKS = 50_000


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html", media_type=MEDIA_TYPES[".html"], headers=NO_CACHE
    )


@router.get("/static/{name}", include_in_schema=False)
def static_file(
    name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]+\.(js|css|svg)$")],
) -> FileResponse:
    """Flat folder, names checked by pattern, so no path can leave ``STATIC_DIR``."""
    path = STATIC_DIR / name
    if not path.is_file():
        raise NotFoundError(f"no static file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=NO_CACHE)


# ----------------------------------------------------------------------------- topology
def _geo_layout(net: Any) -> dict[int, tuple[float, float]] | None:
    """Coordinates of every bus from the network's geodata, or None when any bus has none."""
    coords = bus_geodata(net)
    if not coords or any(int(b) not in coords for b in net.bus.index):
        return None
    return coords


def _edges(net: Any) -> list[tuple[int, int]]:
    edges = [(int(r.from_bus), int(r.to_bus)) for r in net.line.itertuples()]
    edges += [(int(r.hv_bus), int(r.lv_bus)) for r in net.trafo.itertuples()]
    if "trafo3w" in net and len(net.trafo3w):
        for r in net.trafo3w.itertuples():
            edges += [(int(r.hv_bus), int(r.mv_bus)), (int(r.hv_bus), int(r.lv_bus))]
    if "switch" in net and len(net.switch):
        for r in net.switch[net.switch.et == "b"].itertuples():
            edges.append((int(r.bus), int(r.element)))
    return edges


def radial_layout(
    buses: list[int], edges: list[tuple[int, int]], roots: list[int]
) -> dict[int, tuple[float, float]]:
    """A tidy tree drawing from the slack bus (breadth-first spanning tree): depth down the page,
    leaves side by side, each parent centred over its children. Meshed links are drawn but do not
    shape the tree; islands are laid out after the main tree."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    children: dict[int, list[int]] = defaultdict(list)
    depth: dict[int, int] = {}
    order: list[int] = []
    for root in [*roots, *buses]:
        if root in depth:
            continue
        depth[root] = 0
        order.append(root)
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for nxt in sorted(neighbours[node]):
                if nxt not in depth:
                    depth[nxt] = depth[node] + 1
                    children[node].append(nxt)
                    order.append(nxt)
                    queue.append(nxt)
    x: dict[int, float] = {}
    next_leaf = 0.0
    # leaves left to right in depth-first order, so subtrees stay together
    for top in [b for b in order if depth[b] == 0]:
        stack = [top]
        while stack:
            node = stack.pop()
            if not children[node]:
                x[node] = next_leaf
                next_leaf += 1.0
            stack.extend(reversed(children[node]))
        next_leaf += 1.0
    for node in reversed(order):  # children before parents (reverse breadth-first order)
        kids = children[node]
        if kids:
            x[node] = sum(x[c] for c in kids) / len(kids)
    return {b: (x[b], float(depth[b])) for b in buses}


def topology_of(net: Any, network_name: str) -> dict[str, Any]:
    """Buses with drawing coordinates (y grows down the page), lines and transformers."""
    buses = [int(b) for b in net.bus.index]
    roots = [int(b) for b in net.ext_grid.bus] if len(net.ext_grid) else buses[:1]
    coords = _geo_layout(net)
    layout = "geodata"
    if coords is not None:
        # Draw with the feeding point at the top: flip when the slack sits below the middle.
        ys = sorted(y for _x, y in coords.values())
        if roots and coords[roots[0]][1] > ys[len(ys) // 2]:
            coords = {b: (x, -y) for b, (x, y) in coords.items()}
    else:
        layout = "radial"
        coords = radial_layout(buses, _edges(net), roots)
    load_buses = {int(b) for b in net.load.bus[net.load.in_service]} if len(net.load) else set()
    sgen_buses = {int(b) for b in net.sgen.bus[net.sgen.in_service]} if len(net.sgen) else set()
    out_buses = []
    for b in buses:
        row = net.bus.loc[b]
        out_buses.append(
            {
                "id": b,
                "name": str(row["name"]) if row["name"] is not None else f"bus {b}",
                "vnKv": float(row["vn_kv"]),
                "x": round(float(coords[b][0]), 6),
                "y": round(float(coords[b][1]), 6),
                "inService": bool(row["in_service"]),
                "slack": b in roots,
                "load": b in load_buses,
                "pv": b in sgen_buses,
            }
        )
    lines = [
        {
            "id": int(idx),
            "name": str(r["name"]) if r["name"] is not None else f"line {idx}",
            "fromBus": int(r["from_bus"]),
            "toBus": int(r["to_bus"]),
            "lengthKm": float(r["length_km"]),
            "maxIKa": float(r["max_i_ka"]),
            "inService": bool(r["in_service"]),
        }
        for idx, r in net.line.iterrows()
    ]
    trafos = [
        {
            "id": int(idx),
            "name": str(r["name"]) if r["name"] is not None else f"trafo {idx}",
            "hvBus": int(r["hv_bus"]),
            "lvBus": int(r["lv_bus"]),
            "snMva": float(r["sn_mva"]),
            "inService": bool(r["in_service"]),
        }
        for idx, r in net.trafo.iterrows()
    ]
    return {
        "network": network_name,
        "layout": layout,
        "buses": out_buses,
        "lines": lines,
        "trafos": trafos,
    }


_topology_cache: dict[int, dict[str, Any]] = {}


@router.get("/grid/topology")
async def grid_topology(market: MarketDep) -> dict[str, Any]:
    """The network for drawing: buses (x/y from the geodata, else a radial tree layout from the
    slack bus; y grows down the page), lines and transformers with their end buses."""
    grid: Any = market.grid
    validator = getattr(grid, "validator", None)
    net = getattr(validator, "net", None)
    if grid is None or net is None:
        raise ConflictError("no grid validator is configured", reason="NO_GRID")
    key = id(net)
    if key not in _topology_cache:
        name = str(getattr(validator, "network_name", getattr(grid, "network", "")))
        _topology_cache[key] = await asyncio.to_thread(topology_of, net, name)
    return _topology_cache[key]


# ----------------------------------------------------------------------------- readings
def _readings(ledger: Any, interval_id: int) -> list[dict[str, Any]]:
    contract = getattr(ledger, "readings", None)
    w3 = getattr(ledger, "w3", None)
    if contract is None or w3 is None:
        return []
    latest = int(w3.eth.block_number)
    logs = contract.events.ReadingsSubmitted.get_logs(
        from_block=max(0, latest - READINGS_LOOKBACK_BLOCKS),
        to_block=latest,
        argument_filters={"intervalId": interval_id},
    )
    registry = getattr(ledger, "registry", None)
    wallets: dict[str, str | None] = {}
    out = []
    for iv, reading, log in batches.accepted_from_logs(logs):
        meter = reading.meter
        if meter not in wallets:
            wallet = None
            if registry is not None:
                found = str(registry.functions.walletOfMeter(meter).call())
                wallet = None if int(found, 16) == 0 else found
            wallets[meter] = wallet
        out.append(
            {
                "meter": meter,
                "wallet": wallets[meter],
                "intervalId": iv,
                "importWh": reading.import_wh,
                "exportWh": reading.export_wh,
                "block": int(log["blockNumber"]),
                "txHash": "0x" + bytes(log["transactionHash"]).hex().removeprefix("0x"),
            }
        )
    return out


@router.get("/dashboard/readings")
async def readings(
    market: MarketDep, interval: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER)]
) -> list[dict[str, Any]]:
    """Meter readings accepted on chain (``MeterReadings.ReadingsSubmitted``) for one interval,
    with the wallet each meter belongs to (searches the last 50,000 blocks)."""
    try:
        return await asyncio.to_thread(_readings, market.ledger, interval)
    except Exception as exc:  # web3 raises transport errors of many kinds
        raise ChainUnavailableError(f"reading the meter readings failed: {exc}") from exc
