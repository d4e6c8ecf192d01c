"""The market's view of the Neural Grid, over ``grid.GridValidator`` (seller bus -> buyer bus,
``p_kw = energy_wh / interval_hours / 1000``). Validations are serialized: the validator caches
state."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from backend.market.auction import Candidate, Decision

_TRADE_IDS: dict[tuple[str, str], str] = {}
_TRADE_IDS_MAX = 200_000


def _trade_id(c: Candidate) -> str:
    """The trade id (a keccak) of a candidate, memoized: a clearing sends the same pairs to the
    validator round after round."""
    key = (c.sell.hash, c.buy.hash)
    hit = _TRADE_IDS.get(key)
    if hit is None:
        from backend.market.service import trade_id_of

        if len(_TRADE_IDS) >= _TRADE_IDS_MAX:
            _TRADE_IDS.clear()
        hit = _TRADE_IDS[key] = trade_id_of(*key)
    return hit


class GridPortAdapter:
    def __init__(self, network: str, interval_seconds: int, validator: Any | None = None) -> None:
        from grid.validator import GridValidator

        self.network = network
        self.interval_seconds = interval_seconds
        self.validator = validator if validator is not None else GridValidator(network)
        self._lock = threading.Lock()

    def _trades(self, batch: Sequence[Candidate]) -> list[Any]:
        from grid.verdicts import Trade

        hours = self.interval_seconds / 3600
        return [
            Trade(_trade_id(c), int(c.sell.bus), int(c.buy.bus), c.energy_wh / hours / 1000)
            for c in batch
        ]

    def validate(self, interval_id: int, batch: Sequence[Candidate]) -> tuple[list[Decision], str]:
        with self._lock:
            result = self.validator.validate(
                self._trades(batch), interval=interval_id, interval_seconds=self.interval_seconds
            )
        decisions = [Decision(int(v.reason), v.reason.name, v.element) for v in result.verdicts]
        return decisions, str(result.evidence_hash)

    def hosting_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int:
        with self._lock:
            cap = self.validator.hosting_capacity(
                bus_id, interval=interval_id, interval_seconds=self.interval_seconds
            )
        return int(cap.max_export.p_kw * 1000)

    def status(self, interval_id: int, approved: Sequence[Candidate]) -> dict[str, Any]:
        with self._lock:
            st = self.validator.grid_status(
                self._trades(approved), interval=interval_id, interval_seconds=self.interval_seconds
            )
        out: dict[str, Any] = st.to_dict()
        return out

    def load_buses(self) -> list[int]:
        return list(self.validator.load_buses())
