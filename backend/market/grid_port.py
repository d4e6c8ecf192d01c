"""The market's view of the Neural Grid, over ``grid.GridValidator`` (seller bus -> buyer bus,
``p_kw = energy_wh / interval_hours / 1000``). Validations are serialized: the validator caches
state."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from backend.chain import protocol
from backend.market.activations import FlexInput, PlannedActivation
from backend.market.auction import BookOrder, Candidate, Clearing, Decision, clear
from backend.market.optimal import OptimizationError, clear_optimal
from backend.market.remedy import island_service, remedy
from backend.settings import CLEARING_METHODS
from grid.island import IslandError, islanded_net, units_from_docs
from grid.operating import OperatingPoint
from grid.validator import GridValidator
from grid.verdicts import Activation, Limits, Trade, Verdict

log = logging.getLogger("tegrid.market")

_TRADES: dict[tuple[str, str, int, int, int, int], Any] = {}
_TRADES_MAX = 200_000
ISLANDED_KEPT = 1024  # intervals remembered as islanded (the oldest forgotten first)


def _trade(c: Candidate, interval_seconds: int) -> Any:
    """The validator's ``Trade`` for a candidate, memoized: a clearing sends the same pairs round
    after round, and the same objects let the validator match a prefix it has seen by identity
    (and the trade id, a keccak, is computed once)."""
    key = (c.sell.hash, c.buy.hash, c.energy_wh, c.sell.bus, c.buy.bus, interval_seconds)
    hit = _TRADES.get(key)
    if hit is None:
        if len(_TRADES) >= _TRADES_MAX:
            _TRADES.clear()
        p_kw = c.energy_wh / (interval_seconds / 3600) / 1000
        hit = _TRADES[key] = Trade(
            protocol.trade_id_hex(c.sell.hash, c.buy.hash), int(c.sell.bus), int(c.buy.bus), p_kw
        )
    return hit


def _decision(v: Verdict) -> Decision:
    return Decision(int(v.reason), v.reason.name, v.element, v.value, v.limit)


class GridPortAdapter:
    def __init__(
        self,
        network: str,
        interval_seconds: int,
        validator: Any | None = None,
        limits: dict[str, float] | None = None,
        clearing: str = "optimal",
    ) -> None:
        """``limits``: ``grid.verdicts.Limits`` fields for a validator built here (default
        limits otherwise); ``clearing``: "optimal" or "greedy" (``CLEARING_METHODS``)."""
        if clearing not in CLEARING_METHODS:
            raise ValueError(
                f"clearing must be one of {', '.join(CLEARING_METHODS)}, got {clearing!r}"
            )
        self.clearing = clearing
        self.network = network
        self.interval_seconds = interval_seconds
        self.validator = (
            validator
            if validator is not None
            else GridValidator(network, limits=Limits(**(limits or {})))
        )
        self._lock = threading.Lock()
        # Intervals to validate islanded (``set_mode``; the clearing reads the chain's mode at
        # gate closure). Hosting capacity, status and the optimal clearing's operating points
        # stay grid-connected (docs/architecture.md, "Modes").
        self._islanded: set[int] = set()

    def set_mode(
        self, interval_id: int, islanded: bool, units: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """``units``: the interval's grid-forming units (the registry's devices); units the
        network cannot run islanded with (a bus outside the island, limits the model refuses)
        are logged and the network's own units used instead."""
        island = None
        if islanded and units:
            try:
                island = units_from_docs(units)
                islanded_net(self.validator.net, island)  # every unit's bus in the island
            except IslandError as exc:
                log.warning(
                    "interval %d: the registered grid-forming units cannot run the island (%s); "
                    "validating with the network's own", interval_id, exc,
                )  # fmt: skip
                island = None
        with self._lock:
            if islanded:
                self._islanded.add(interval_id)
                if len(self._islanded) > ISLANDED_KEPT:
                    self._islanded.discard(min(self._islanded))
                self.validator.set_island(interval_id, island)
            else:
                self._islanded.discard(interval_id)

    def _trades(self, batch: Sequence[Candidate]) -> list[Any]:
        return [_trade(c, self.interval_seconds) for c in batch]

    def validate(
        self,
        interval_id: int,
        batch: Sequence[Candidate],
        activations: Sequence[Activation] = (),
    ) -> tuple[list[Decision], str]:
        """One decision per candidate and the evidence hash; ``activations`` (grid view of the
        interval's flexibility activations) are applied first (``GridValidator.validate``) -
        use ``validate_activations`` to see their own verdicts."""
        decisions, _, evidence = self.validate_activations(interval_id, batch, activations)
        return decisions, evidence

    def validate_activations(
        self,
        interval_id: int,
        batch: Sequence[Candidate],
        activations: Sequence[Activation],
    ) -> tuple[list[Decision], list[Decision], str]:
        """Decisions for the candidates, decisions for the activations (in their order), and
        the evidence hash covering both."""
        with self._lock:
            result = self.validator.validate(
                self._trades(batch),
                interval=interval_id,
                interval_seconds=self.interval_seconds,
                activations=activations,
                islanded=interval_id in self._islanded,
            )
        return (
            [_decision(v) for v in result.verdicts],
            [_decision(v) for v in result.activation_verdicts],
            str(result.evidence_hash),
        )

    def clear(
        self, interval_id: int, book: Sequence[BookOrder], flex: FlexInput | None = None
    ) -> Clearing:
        """The optimal clearing (``backend.market.optimal``), or the greedy merit order when so
        configured or when a program fails (``Clearing.method`` says which and why); then, with
        ``flex`` offers, the remedies (``backend.market.remedy``: DSO service, rescued trades,
        ``Clearing.activations``)."""
        # Islanded, the DSO service runs first: an island short of its own base state would
        # veto every trade, so its activations are bought before the trades are judged.
        bought: list[PlannedActivation] = []
        if flex is not None and flex.offers and interval_id in self._islanded:
            try:
                bought, stats = island_service(
                    flex,
                    functools.partial(self.remedy_point, interval_id),
                    functools.partial(self.validate_activations, interval_id),
                    self.interval_seconds,
                    self.validator.limits,
                )
            except OptimizationError as exc:
                log.warning("interval %s: island service failed (%s)", interval_id, exc)
            else:
                log.info("interval %s: island service %s", interval_id, stats)
        validate = functools.partial(
            self.validate, interval_id, activations=[a.grid() for a in bought]
        )
        if self.clearing == "greedy":
            result = clear(book, validate)
        else:
            try:
                result = clear_optimal(
                    book,
                    validate,
                    functools.partial(self.operating_point, interval_id),
                    self.interval_seconds,
                    leftover=flex is not None and bool(flex.offers),
                )
            except OptimizationError as exc:
                log.warning(
                    "interval %s: optimal clearing failed (%s); greedy clearing", interval_id, exc
                )
                result = clear(book, validate)
                result.method = f"greedy (fallback: {exc})"
        result.activations = list(bought)
        if flex is None or not flex.offers:
            return result
        try:
            remedied, stats = remedy(
                result,
                flex,
                functools.partial(self.remedy_point, interval_id),
                functools.partial(self.validate_activations, interval_id),
                self.interval_seconds,
                self.validator.limits,
                bought,
            )
        except OptimizationError as exc:
            log.warning("interval %s: remedy search failed (%s); no activations", interval_id, exc)
            return result
        log.info("interval %s: remedies %s", interval_id, stats)
        return remedied

    def operating_point(
        self, interval_id: int, injections_kw: Mapping[int, float], buses: Sequence[int]
    ) -> OperatingPoint | None:
        with self._lock:
            return self.validator.operating_point(
                injections_kw, buses, interval=interval_id, interval_seconds=self.interval_seconds
            )

    def remedy_point(
        self, interval_id: int, injections_kw: Mapping[int, float], buses: Sequence[int]
    ) -> OperatingPoint | None:
        """``operating_point`` in the interval's mode: islanded, the island's state with the
        master's power (the remedy search's; the optimal clearing's stay grid-connected)."""
        with self._lock:
            return self.validator.operating_point(
                injections_kw,
                buses,
                interval=interval_id,
                interval_seconds=self.interval_seconds,
                islanded=interval_id in self._islanded,
            )

    def prepare(self, interval_id: int) -> None:
        """The interval's base state (a power flow and its model, ~30 ms on kerber_vorstadt),
        cached by the validator for the interval's validations."""
        with self._lock:
            self.validator.base_state(interval_id, self.interval_seconds)

    def hosting_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int:
        with self._lock:
            cap = self.validator.hosting_capacity(
                bus_id, interval=interval_id, interval_seconds=self.interval_seconds
            )
        return int(cap.max_export.p_kw * 1000)

    def import_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int:
        with self._lock:
            cap = self.validator.hosting_capacity(
                bus_id, interval=interval_id, interval_seconds=self.interval_seconds
            )
        return int(cap.max_import.p_kw * 1000)

    def status(
        self,
        interval_id: int,
        approved: Sequence[Candidate],
        activations: Sequence[Activation] = (),
    ) -> dict[str, Any]:
        with self._lock:
            st = self.validator.grid_status(
                self._trades(approved),
                interval=interval_id,
                interval_seconds=self.interval_seconds,
                activations=activations,
                islanded=interval_id in self._islanded,
            )
        out: dict[str, Any] = st.to_dict()
        return out

    def load_buses(self) -> list[int]:
        return list(self.validator.load_buses())
