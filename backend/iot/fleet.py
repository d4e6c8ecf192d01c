"""A fleet of simulated meters that follows the registry and the market (``tegrid meters
simulate``).

- **The registry decides who a meter is.** Before publishing, each meter is looked up in the
  ``ParticipantRegistry``: its participant (wallet) replaces the one the simulator was started
  with, and a development meter (no bus stated) takes the bus of its participant's connection
  point, so its announcement carries the registry's bus. A meter that is not registered, whose
  participant is inactive, or whose stated bus (a meters file) disagrees with the registry is
  reported in one line - when first seen and whenever it changes; a stated bus is announced as
  stated, so the oracle reports the disagreement as well.
- **Meters follow the market.** For every interval it meters, the fleet reads that interval's
  trades from the market API (``GET /trades?interval=N``) and meters each approved trade that is
  on chain (status recorded or settled) on top of the household profile: the seller's export
  includes what it sold (less the under-delivery share), the buyer's import what it bought
  (:func:`backend.iot.meters.metered_energy_wh`). Settlement then pays what was traded.

  The API rather than the chain's events: the simulator stands for households whose devices
  follow the trades they made through the market, and the market's trade list is one request per
  interval by interval id, where the chain holds an interval's trades only as event logs of its
  ``recordTrades`` transactions (rebuilt and checked against the batch commitments by the keeper).
  A trade the API lists as recorded is one whose batch receipt the market has seen on chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from backend.chain.address import checksum
from backend.chain.registry import MeterOwner
from backend.iot.errors import IotError
from backend.iot.meters import MeterSimulator, Position, PublishStats, delivered_wh

# Trades the chain holds: their batch is recorded (and maybe settled already).
ON_CHAIN_STATUSES = frozenset({"recorded", "settled"})


def positions_from_trades(
    trades: Iterable[Mapping[str, Any]], meter_of: Mapping[str, str], interval_id: int
) -> dict[tuple[str, int], Position]:
    """``(meter, interval) -> Position`` of the approved, on-chain trades of ``interval_id``
    whose seller or buyer owns one of the meters (``meter_of``: wallet -> meter address)."""
    sold: dict[str, int] = {}
    bought: dict[str, int] = {}
    for t in trades:
        if int(t["intervalId"]) != interval_id or not t["approved"]:
            continue
        if t["status"] not in ON_CHAIN_STATUSES:
            continue
        energy_wh = int(t["energyWh"])
        seller, buyer = meter_of.get(checksum(t["seller"])), meter_of.get(checksum(t["buyer"]))
        if seller is not None:
            sold[seller] = sold.get(seller, 0) + energy_wh
        if buyer is not None:
            bought[buyer] = bought.get(buyer, 0) + energy_wh
    return {
        (meter, interval_id): Position(sold.get(meter, 0), bought.get(meter, 0))
        for meter in sorted(sold.keys() | bought.keys())
    }


class MarketTrades:
    """The market API's trades of one interval (``GET /trades?interval=N``)."""

    def __init__(self, api_url: str, timeout_s: float = 10.0) -> None:
        self.url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)

    def of_interval(self, interval_id: int) -> list[dict[str, Any]]:
        where = f"the trades of interval {interval_id} from {self.url}"
        try:
            response = self._client.get("/trades", params={"interval": interval_id})
        except httpx.HTTPError as exc:
            raise IotError(
                f"cannot read {where}: {exc or exc.__class__.__name__} (is `tegrid serve` "
                "running there?)"
            ) from None
        if response.status_code != 200:
            raise IotError(f"cannot read {where}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise IotError(f"cannot read {where}: the answer is not JSON") from None
        if not isinstance(body, list):
            raise IotError(f"cannot read {where}: the answer is not a list of trades")
        return body

    def close(self) -> None:
        self._client.close()


@dataclass
class IntervalReport:
    """What the fleet published for one interval, and which meters carried trades."""

    interval_id: int
    stats: PublishStats
    traded: dict[str, Position] = field(default_factory=dict)  # meter -> position

    def line(self, under_delivery: float = 0.0) -> str:
        s = self.stats
        text = (
            f"interval {self.interval_id}: {s.published + s.late_published} readings published "
            f"({s.missing} missing, {s.deferred} held back to send late)"
        )
        parts = []
        for meter, pos in self.traded.items():
            if pos.sold_wh:
                delivered = delivered_wh(pos.sold_wh, under_delivery)
                parts.append(f"{meter} sold {pos.sold_wh} Wh, exports {delivered} Wh of it")
            if pos.bought_wh:
                parts.append(f"{meter} bought {pos.bought_wh} Wh, imports it")
        return text + ("; traded: " + "; ".join(parts) if parts else "; no trades")


class MeterFleet:
    """The simulator's meters kept in step with the registry (``owners``: meter addresses ->
    :class:`MeterOwner`) and, when ``trades`` is given (interval -> the API's trade list), with
    the market. ``say`` receives each report line; ``stated_buses``: the meters' buses were given
    by the user (a meters file): a different registry bus is reported, and the stated one kept."""

    def __init__(
        self,
        sim: MeterSimulator,
        owners: Callable[[Sequence[str]], dict[str, MeterOwner]],
        trades: Callable[[int], list[dict[str, Any]]] | None,
        say: Callable[[str], None],
        stated_buses: bool = False,
    ) -> None:
        self.sim = sim
        self.owners = owners
        self.trades = trades
        self.say = say
        self.stated_buses = stated_buses
        self.stated = {spec.address: spec.bus for spec in sim.meters}
        self.known: dict[str, MeterOwner] = {}
        self._backed: int | None = None  # meters of active participants at the last look

    def sync_registry(self) -> dict[str, MeterOwner]:
        """Look every meter up; take the registry's wallet and bus; report what changed."""
        owners = self.owners([spec.address for spec in self.sim.meters])
        backed = sum(1 for o in owners.values() if o.registered and o.active)
        if backed != self._backed:
            self._backed = backed
            self.say(
                f"registry: {backed} of {len(self.sim.meters)} meters belong to active "
                "participants (their buses and wallets come from the registry)"
            )
        specs = []
        for spec in self.sim.meters:
            owner = owners.get(spec.address) or MeterOwner(spec.address)
            stated = self.stated[spec.address] if self.stated_buses else None
            if self.known.get(spec.address) != owner:
                problem = owner.problem(stated)
                if problem is not None:
                    self.say(f"warning: {problem.message}")
            if owner.wallet is not None and owner.bus_id is not None:
                # a bus the user stated is the meter's own claim: announced as it is (the oracle
                # reports the disagreement too); otherwise the meter is where the registry says
                bus = spec.bus if self.stated_buses else owner.bus_id
                spec = dataclasses.replace(spec, bus=bus, wallet=owner.wallet)
            specs.append(spec)
        self.sim.meters = specs
        self.known = owners
        return owners

    def publish(self, interval_id: int) -> IntervalReport:
        """The readings of ``interval_id`` (which has ended), with each owner's trades metered."""
        traded: dict[tuple[str, int], Position] = {}
        if self.trades is not None:
            meter_of = {
                spec.wallet: spec.address
                for spec in self.sim.meters
                if self.known.get(spec.address, MeterOwner(spec.address)).registered
            }
            traded = positions_from_trades(self.trades(interval_id), meter_of, interval_id)
        self.sim.positions.update(traded)
        try:
            stats = self.sim.publish_interval(interval_id)
        finally:
            for key in traded:  # signed now (late ones too): no longer needed
                self.sim.positions.pop(key, None)
        return IntervalReport(interval_id, stats, {meter: p for (meter, _i), p in traded.items()})
