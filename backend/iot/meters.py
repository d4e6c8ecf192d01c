"""Simulated smart meters: each has its own key, measures per-interval import/export and signs it.

Energy comes from the same daily shapes the grid uses (``grid.profiles``: household/commercial load,
PV) plus the owner's traded position, with configurable deviations: under-delivery (a seller exports
less than it sold), missing readings (never sent) and late readings (sent some intervals later).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from eth_keys.exceptions import ValidationError as KeyValidationError
from eth_utils import keccak
from eth_utils.exceptions import ValidationError

from backend.iot.errors import IotError
from backend.iot.schema import Announcement, SignedReading, announce_topic, readings_topic
from backend.iot.signing import Reading, ReadingDomain, address_of, sign_reading
from backend.iot.transport import Transport

DEV_METER_SEED = "tegrid dev meter"
DEV_WALLET_SEED = "tegrid dev wallet"


def dev_wallet_key(index: int) -> str:
    """Deterministic private key of the wallet that owns development meter ``index`` (test keys)."""
    return "0x" + keccak(text=f"{DEV_WALLET_SEED} {index}").hex()


def dev_meter_key(index: int) -> str:
    """Deterministic private key of development meter ``index`` (public test keys: never for real
    value).
    """
    return "0x" + keccak(text=f"{DEV_METER_SEED} {index}").hex()


@dataclass(frozen=True)
class MeterSpec:
    """One meter: its key, the bus it sits on and the peak sizes of what is behind it."""

    key: str
    bus: int | str
    load_peak_kw: float = 4.0
    pv_peak_kw: float = 0.0
    commercial: bool = False
    wallet: str = ""  # the participant (trading wallet) that owns the meter, when known
    address: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        try:
            addr = address_of(self.key)
        except (ValueError, TypeError, ValidationError, KeyValidationError) as exc:
            raise IotError(f"bad meter key: {exc}") from None
        object.__setattr__(self, "address", addr)


def dev_meters(count: int, buses: list[int | str] | None = None) -> list[MeterSpec]:
    """``count`` development meters; every second one has rooftop PV (a prosumer), spread over
    ``buses``.
    """
    if count < 0:
        raise IotError("meter count must be >= 0")
    bus_list: list[int | str] = list(buses) if buses else list(range(1, count + 1))
    return [
        MeterSpec(
            dev_meter_key(i),
            bus_list[i % len(bus_list)],
            load_peak_kw=3.0 + (i % 5),
            pv_peak_kw=6.0 + (i % 3) * 2.0 if i % 2 == 0 else 0.0,
            wallet=address_of(dev_wallet_key(i)),
        )
        for i in range(count)
    ]


def load_meter_file(path: Path) -> list[MeterSpec]:
    """Read meters from JSON: a list of ``{"key": "0x..", "bus": 3}`` with optional
    ``load_peak_kw``, ``pv_peak_kw``, ``commercial`` and ``wallet`` (the owner's address)."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise IotError(f"cannot read meter file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise IotError(f"meter file {path} is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise IotError(f"meter file {path} must hold a JSON list of meters")
    specs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or "bus" not in item:
            raise IotError(f"meter file {path}: entry {i} needs a string 'key' and a 'bus'")
        try:
            specs.append(
                MeterSpec(
                    item["key"],
                    item["bus"],
                    float(item.get("load_peak_kw", 4.0)),
                    float(item.get("pv_peak_kw", 0.0)),
                    bool(item.get("commercial", False)),
                    str(item.get("wallet", "")),
                )
            )
        except (TypeError, ValueError) as exc:
            raise IotError(f"meter file {path}: entry {i}: {exc}") from None
    return specs


@dataclass(frozen=True)
class Deviations:
    """How far meters stray from the plan. Fractions are in [0, 1]; ``late_intervals`` >= 1."""

    under_delivery: float = 0.0  # share of a seller's traded export that is not delivered
    missing: float = 0.0  # probability that a reading is never sent
    late: float = 0.0  # probability that a reading is sent ``late_intervals`` intervals later
    late_intervals: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("under_delivery", "missing", "late"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise IotError(f"{name} must be between 0 and 1, got {value}")
        if self.late_intervals < 1:
            raise IotError("late_intervals must be >= 1")


def _profiles() -> tuple[
    Callable[[int, int], float],
    Callable[[float], float],
    Callable[[float], float],
    Callable[[float], float],
]:
    # lazy: grid.profiles imports pandapower (~3 s); meter processes given exact readings
    # (overrides) and the key helpers (dev_meter_key, dev_meters) never need it
    from grid import profiles  # noqa: PLC0415

    return profiles.hour_of_day, profiles.household, profiles.commercial, profiles.pv


def physical_energy_wh(
    spec: MeterSpec, interval_id: int, interval_seconds: int
) -> tuple[float, float]:
    """(load, PV generation) in Wh over the interval, from the grid's daily shapes."""
    hour_of_day, household, commercial, pv = _profiles()
    hour = hour_of_day(interval_id, interval_seconds)
    hours = interval_seconds / 3600.0
    load_kw = spec.load_peak_kw * (commercial(hour) if spec.commercial else household(hour))
    return load_kw * hours * 1000.0, spec.pv_peak_kw * pv(hour) * hours * 1000.0


class Position(NamedTuple):
    """What a meter's owner traded for one interval, in Wh: sold (to export) and bought (to
    import)."""

    sold_wh: int = 0
    bought_wh: int = 0


def metered_energy_wh(
    spec: MeterSpec,
    interval_id: int,
    interval_seconds: int,
    *,
    sold_wh: int = 0,
    bought_wh: int = 0,
    under_delivery: float = 0.0,
) -> tuple[int, int]:
    """(import, export) in Wh: the household's own balance (load minus PV: a deficit is imported,
    a surplus exported) with the traded energy on top - what the owner sold is exported (less the
    ``under_delivery`` share withheld), what it bought is imported. A seller whose own load
    exceeds its PV still exports what it sold (its battery or flexible generation runs for the
    trade), and a buyer with a PV surplus still imports what it bought; what the household's own
    balance adds is its imbalance when it trades in the interval.
    """
    load_wh, pv_wh = physical_energy_wh(spec, interval_id, interval_seconds)
    own_wh = load_wh - pv_wh
    export_wh = round(max(-own_wh, 0.0)) + delivered_wh(sold_wh, under_delivery)
    return round(max(own_wh, 0.0)) + bought_wh, export_wh


def delivered_wh(sold_wh: int, under_delivery: float) -> int:
    """How much of ``sold_wh`` a seller exports when it withholds the ``under_delivery`` share."""
    return round(sold_wh * (1.0 - under_delivery))


@dataclass
class PublishStats:
    published: int = 0
    missing: int = 0
    deferred: int = 0
    late_published: int = 0


class MeterSimulator:
    """Publishes signed readings (and announcements) for a set of meters over a :class:`Transport`.

    ``positions`` maps ``(meter address, interval)`` to the owner's :class:`Position` (sold and
    bought Wh); ``overrides`` maps the same key to an exact ``(import_wh, export_wh)`` and wins
    over the profile (tests, demo).
    """

    def __init__(
        self,
        meters: Iterable[MeterSpec],
        domain: ReadingDomain,
        transport: Transport,
        interval_seconds: int,
        deviations: Deviations | None = None,
        positions: dict[tuple[str, int], Position] | None = None,
        overrides: dict[tuple[str, int], tuple[int, int]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.meters = list(meters)
        self.domain = domain
        self.separator = domain.separator()
        self.transport = transport
        self.interval_seconds = interval_seconds
        self.deviations = deviations or Deviations()
        self.positions = positions if positions is not None else {}
        self.overrides = overrides if overrides is not None else {}
        self._rng = random.Random(self.deviations.seed)
        self._late: dict[int, list[SignedReading]] = {}
        self._clock = clock

    def announce_all(self) -> int:
        for spec in self.meters:
            self.announce(spec)
        return len(self.meters)

    def announce(self, spec: MeterSpec) -> None:
        msg = Announcement(spec.address, spec.bus, self._now())
        self.transport.publish(announce_topic(spec.address), msg.to_json(), qos=1)

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    def reading_for(self, spec: MeterSpec, interval_id: int) -> Reading:
        key = (spec.address, interval_id)
        if key in self.overrides:
            import_wh, export_wh = self.overrides[key]
        else:
            position = self.positions.get(key, Position())
            import_wh, export_wh = metered_energy_wh(
                spec,
                interval_id,
                self.interval_seconds,
                sold_wh=position.sold_wh,
                bought_wh=position.bought_wh,
                under_delivery=self.deviations.under_delivery,
            )
        return Reading(spec.address, interval_id, import_wh, export_wh)

    def sign(self, spec: MeterSpec, reading: Reading) -> SignedReading:
        return SignedReading(reading, sign_reading(spec.key, self.separator, reading), self._now())

    def publish_signed(self, signed: SignedReading) -> None:
        stamped = SignedReading(signed.reading, signed.signature, self._now())
        self.transport.publish(readings_topic(signed.reading.meter), stamped.to_json(), qos=1)

    def publish_interval(self, interval_id: int) -> PublishStats:
        """Readings for ``interval_id`` (just ended), plus late ones now due."""
        stats = PublishStats()
        for signed in self._late.pop(interval_id, []):
            self.publish_signed(signed)
            stats.late_published += 1
        dev = self.deviations
        for spec in self.meters:
            if dev.missing and self._rng.random() < dev.missing:
                stats.missing += 1
                continue
            signed = self.sign(spec, self.reading_for(spec, interval_id))
            if dev.late and self._rng.random() < dev.late:
                self._late.setdefault(interval_id + dev.late_intervals, []).append(signed)
                stats.deferred += 1
                continue
            self.publish_signed(signed)
            stats.published += 1
        return stats

    def publish_remaining_late(self) -> int:
        """Send every still-deferred reading now (end of a run)."""
        count = 0
        for due in sorted(self._late):
            for signed in self._late.pop(due):
                self.publish_signed(signed)
                count += 1
        return count

    def meter_table(self) -> list[dict[str, Any]]:
        return [
            {"address": m.address, "bus": m.bus, "pv_peak_kw": m.pv_peak_kw} for m in self.meters
        ]
