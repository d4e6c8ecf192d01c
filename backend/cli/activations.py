"""Where ``tegrid dispatcher`` takes its activations from in production: the market's records
(imported lazily by the command: SQLAlchemy and the market's store are not for ``--help``)."""

from __future__ import annotations

from backend.iot.control_store import ControlTarget
from backend.market.store import Store as MarketStore


class MarketActivations:
    """The dispatcher's source in production: the market's activation records (``activations``
    table of the market's store, ``TEGRID_DATABASE_URL``) of intervals whose batch is on chain,
    the last ``lookback`` intervals up to the one asked. Each carries its device's whole target
    for the interval (the clearing's ``device_setpoints``); the action expires when the interval
    ends. Handing one over again is harmless (the control store keeps the first)."""

    def __init__(self, store: MarketStore, interval_seconds: int, lookback: int = 8) -> None:
        self.store = store
        self.interval_seconds = interval_seconds
        self.lookback = lookback

    def pending_activations(self, interval_id: int) -> list[ControlTarget]:
        rows = self.store.dispatchable_activations(interval_id - self.lookback, interval_id)
        return [
            ControlTarget(
                bytes.fromhex(r.id[2:]), r.device, r.interval_id, r.setpoint_w,
                (r.interval_id + 1) * self.interval_seconds,
            )
            for r in rows
        ]  # fmt: skip
