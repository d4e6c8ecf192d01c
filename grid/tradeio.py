"""Reading trade lists: JSON ``[{"id": str, "seller_bus": int, "buyer_bus": int, "p_kw": float},
...]``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from grid.errors import TradeInputError
from grid.verdicts import Trade

FIELDS = ("id", "seller_bus", "buyer_bus", "p_kw")


def parse_trades(data: object) -> list[Trade]:
    """Check the shape and types of a decoded trade list; one clear ``TradeInputError`` otherwise.

    A zero power is left to the validator (verdict ``INVALID_TRADE``), unknown buses too
    (``UNKNOWN_BUS``), and equal seller and buyer buses are a valid trade (approved without a
    power flow); a negative, non-numeric or non-finite power is malformed input."""
    if not isinstance(data, list):
        raise TradeInputError("expected a JSON list of trades")
    trades: list[Trade] = []
    for n, item in enumerate(data):
        where = f"trade #{n}"
        if not isinstance(item, dict):
            raise TradeInputError(f"{where}: expected an object with {', '.join(FIELDS)}")
        missing = [k for k in FIELDS if k not in item]
        if missing:
            raise TradeInputError(f"{where}: missing {', '.join(missing)}")
        tid = item["id"]
        if not isinstance(tid, str) or not tid:
            raise TradeInputError(f"{where}: id must be a non-empty string, got {tid!r}")
        where = f"trade {tid!r}"
        buses = []
        for key in ("seller_bus", "buyer_bus"):
            bus = item[key]
            if isinstance(bus, bool) or not isinstance(bus, int):
                raise TradeInputError(f"{where}: {key} must be an integer bus index, got {bus!r}")
            buses.append(bus)
        p_kw = item["p_kw"]
        if isinstance(p_kw, bool) or not isinstance(p_kw, int | float) or not math.isfinite(p_kw):
            raise TradeInputError(f"{where}: p_kw must be a number, got {p_kw!r}")
        if p_kw < 0:
            raise TradeInputError(f"{where}: p_kw must not be negative, got {p_kw!r}")
        trades.append(Trade(tid, buses[0], buses[1], float(p_kw)))
    return trades


def load_trades(path: str | Path) -> list[Trade]:
    """Read and check a trades file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TradeInputError(
            f"cannot read trades file {str(path)!r}: {exc.__class__.__name__}"
        ) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TradeInputError(f"trades file {str(path)!r} is not valid JSON ({exc})") from exc
    try:
        return parse_trades(data)
    except TradeInputError as exc:
        raise TradeInputError(f"trades file {str(path)!r}: {exc}") from exc
