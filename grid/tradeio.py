"""Reading trade lists: JSON ``[{"id": str, "seller_bus": int, "buyer_bus": int, "p_kw": float},
...]``, and activation lists: ``[{"id": str, "bus": int, "p_kw": float, "before": str}, ...]``
(``p_kw`` signed: positive injects; ``before`` optional, the trade it is applied with)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from grid.errors import TradeInputError
from grid.verdicts import Activation, Trade

FIELDS = ("id", "seller_bus", "buyer_bus", "p_kw")
ACTIVATION_FIELDS = ("id", "bus", "p_kw")


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


def parse_activations(data: object) -> list[Activation]:
    """Check the shape and types of a decoded activation list; one clear ``TradeInputError``
    otherwise. Unknown buses and zero powers are left to the validator, as for trades."""
    if not isinstance(data, list):
        raise TradeInputError("expected a JSON list of activations")
    out: list[Activation] = []
    for n, item in enumerate(data):
        where = f"activation #{n}"
        if not isinstance(item, dict):
            raise TradeInputError(
                f"{where}: expected an object with {', '.join(ACTIVATION_FIELDS)}"
            )
        missing = [k for k in ACTIVATION_FIELDS if k not in item]
        if missing:
            raise TradeInputError(f"{where}: missing {', '.join(missing)}")
        aid, bus, p_kw = item["id"], item["bus"], item["p_kw"]
        if not isinstance(aid, str) or not aid:
            raise TradeInputError(f"{where}: id must be a non-empty string, got {aid!r}")
        where = f"activation {aid!r}"
        if isinstance(bus, bool) or not isinstance(bus, int):
            raise TradeInputError(f"{where}: bus must be an integer bus index, got {bus!r}")
        if isinstance(p_kw, bool) or not isinstance(p_kw, int | float) or not math.isfinite(p_kw):
            raise TradeInputError(f"{where}: p_kw must be a number, got {p_kw!r}")
        before = item.get("before", "")
        if not isinstance(before, str):
            raise TradeInputError(f"{where}: before must be a trade id (string), got {before!r}")
        out.append(Activation(aid, bus, float(p_kw), before))
    return out


def load_activations(path: str | Path) -> list[Activation]:
    """Read and check an activations file."""
    data = _read_json(path, "activations")
    try:
        return parse_activations(data)
    except TradeInputError as exc:
        raise TradeInputError(f"activations file {str(path)!r}: {exc}") from exc


def _read_json(path: str | Path, what: str) -> object:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TradeInputError(
            f"cannot read {what} file {str(path)!r}: {exc.__class__.__name__}"
        ) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TradeInputError(f"{what} file {str(path)!r} is not valid JSON ({exc})") from exc


def load_trades(path: str | Path) -> list[Trade]:
    """Read and check a trades file."""
    data = _read_json(path, "trades")
    try:
        return parse_trades(data)
    except TradeInputError as exc:
        raise TradeInputError(f"trades file {str(path)!r}: {exc}") from exc
