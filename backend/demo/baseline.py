"""The report's baseline: each interval's order book cleared again by the greedy merit order
(``backend.market.auction``) on the demo's own validator (same network, same limits), so the
report can show the welfare the optimal clearing gained over it.

The book is the interval's orders as the API lists them (cancelled ones left out), each at its
trader's bus, in the order the API accepted them (its ``createdAt``: the market's time priority).
"""

from __future__ import annotations

from typing import Any

from backend.demo.clients import check_response
from backend.market.auction import BookOrder, Clearing
from backend.market.grid_port import GridPortAdapter
from grid.validator import GridValidator

PAGE = 1000


def interval_book(http: Any, interval_id: int, bus_of: dict[str, int]) -> list[BookOrder]:
    """The interval's orders (every page of ``GET /orders``) as the clearing's book."""
    rows: list[dict[str, Any]] = []
    while True:
        params = {"interval": interval_id, "limit": PAGE, "offset": len(rows)}
        page: list[dict[str, Any]] = check_response(  # type: ignore[assignment]
            http.get("/orders", params=params), "GET /orders"
        )
        rows += page
        if len(page) < PAGE:
            break
    rows = sorted((o for o in rows if o["status"] != "cancelled"), key=lambda o: o["createdAt"])
    return [
        BookOrder(
            o["hash"],
            o["trader"],
            int(o["side"]),
            int(o["energyWh"]),
            int(o["pricePerKWh"]),
            o["counterparty"],
            seq,
            bus_of[o["trader"]],
        )
        for seq, o in enumerate(rows)
    ]


def greedy_clearing(
    http: Any,
    validator: GridValidator,
    interval_id: int,
    interval_seconds: int,
    bus_of: dict[str, int],
    islanded: bool = False,
) -> Clearing:
    """The interval's book cleared by the greedy merit order against ``validator`` (in the
    interval's grid mode)."""
    port = GridPortAdapter(
        validator.network_name, interval_seconds, validator=validator, clearing="greedy"
    )
    port.set_mode(interval_id, islanded)
    return port.clear(interval_id, interval_book(http, interval_id, bus_of))
