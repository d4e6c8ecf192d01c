"""Islanded mode: the network runs with no external grid, balanced by its grid-forming units.

What is modelled (a static, steady-state picture of one interval):

- **Disconnection at the transformer:** the external grid and every transformer are taken out of
  service; buses no longer reachable from the island (the MV side) go out of service with them.
- **One grid-forming unit is the AC slack** (``Island.forming``: the first battery, else the first
  unit): its bus holds 1.0 pu and the angle reference, and its real power is whatever balances the
  island - load, PV, trades and losses. This is the master of a master-slave island (a battery
  inverter in isochronous mode with secondary control): in steady state the frequency is back at
  nominal as long as the master stays within its power, so its power limit *is* the island's static
  frequency limit. No frequency value is computed or checked.
- **The other units are dispatched per interval** from the base state and hold that setpoint
  through it (``dispatch``): HOMER's *cycle charging* strategy - a genset runs only when the master
  alone cannot supply the interval's net demand (its power limit or the energy its state of charge
  allows), and then at full power, the surplus charging the battery up to what it can take.
- **The master's limits in an interval:** ``[max(min_kw, -(capacity - soc) / h), min(max_kw,
  soc / h)]`` with ``h`` the interval in hours: power limits and the energy the state of charge
  allows over the interval (no efficiency losses, no reserve).
- **State of charge** starts each UTC day at the unit's ``soc_kwh`` and follows the base states'
  dispatch interval by interval (``soc -= p_kw x h``): a function of the interval alone, so anyone
  recomputes it. Trades change the island's balance only by their losses and are left out of it.

Left out: dynamics (inertia, frequency nadir, protection, start-up of the genset), droop sharing
between several grid-forming units (one slack; the others are dispatched), reactive-power limits
of the units (the slack supplies any reactive power), charge/discharge efficiency. A PV surplus
the master cannot absorb is curtailed in the base state (every PV unit by one factor, as the
inverters' over-frequency power reduction of VDE-AR-N 4105 / IEEE 1547 does) until the master is
``basestate.CURTAIL_HEADROOM_KW`` above its charging limit; a deficit the units cannot cover is not
shed: it is an ``ISLAND_BALANCE`` veto of every trade of the interval.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandapower as pp
import pandapower.topology as top

from grid.errors import GridError
from grid.limits import Violation
from grid.verdicts import Reason

UNIT_KINDS = ("battery", "genset")
GENSET_SGEN_TYPE = "genset"
FORMING_VM_PU = 1.0


class IslandError(GridError, ValueError):
    """An island definition that cannot run (no units, bad limits, a bus not in the network)."""


@dataclass(frozen=True)
class GridFormingUnit:
    """A unit that can balance the island: a battery (``capacity_kwh`` > 0, ``soc_kwh`` its state
    of charge at the start of each day) or a diesel genset (``min_kw`` >= 0). Power in kW, positive
    injects (a battery's ``min_kw`` < 0 is its charging limit)."""

    name: str
    kind: str
    bus: int
    min_kw: float
    max_kw: float
    capacity_kwh: float = 0.0
    soc_kwh: float = 0.0
    # A registered device (ParticipantRegistry): its key, and for a battery with a reported state
    # of charge the interval at whose start ``soc_kwh`` holds (else ``soc_kwh`` is the day's start)
    device: str = ""
    soc_interval: int | None = None

    def __post_init__(self) -> None:
        numbers = (self.min_kw, self.max_kw, self.capacity_kwh, self.soc_kwh)
        if not all(math.isfinite(float(v)) for v in numbers):
            raise IslandError(f"unit {self.name!r}: limits must be finite numbers")
        if self.kind not in UNIT_KINDS:
            raise IslandError(f"unit {self.name!r}: kind must be one of {UNIT_KINDS}")
        if self.min_kw > self.max_kw:
            raise IslandError(f"unit {self.name!r}: min_kw {self.min_kw} > max_kw {self.max_kw}")
        if self.kind == "battery":
            if self.capacity_kwh <= 0 or not 0 <= self.soc_kwh <= self.capacity_kwh:
                raise IslandError(
                    f"unit {self.name!r}: a battery needs capacity_kwh > 0 and "
                    f"0 <= soc_kwh <= capacity_kwh"
                )
        elif self.min_kw < 0 or self.capacity_kwh or self.soc_kwh:
            raise IslandError(f"unit {self.name!r}: a genset has min_kw >= 0 and no capacity")

    @property
    def label(self) -> str:
        """How verdicts name the unit: ``battery village-battery (bus 1)``; a registered device
        (named by its address) as ``battery 0x322b4D..7EB0 (bus 1)``, so the label fits the
        verdict's element (40 characters)."""
        name = self.name
        if len(name) == 42 and name.startswith("0x"):
            name = f"{name[:8]}..{name[-4:]}"
        return f"{self.kind} {name} (bus {self.bus})"

    def doc(self) -> list[object]:
        out: list[object] = [
            self.name,
            self.kind,
            int(self.bus),
            repr(float(self.min_kw)),
            repr(float(self.max_kw)),
            repr(float(self.capacity_kwh)),
            repr(float(self.soc_kwh)),
        ]
        if self.device or self.soc_interval is not None:  # a registered device's unit
            out += [self.device, self.soc_interval]
        return out

    def to_dict(self) -> dict[str, object]:
        """The unit as ``units_from_docs`` reads it back (``tegrid grid ... --units FILE``)."""
        return {
            "name": self.name, "kind": self.kind, "bus": int(self.bus),
            "min_kw": float(self.min_kw), "max_kw": float(self.max_kw),
            "capacity_kwh": float(self.capacity_kwh), "soc_kwh": float(self.soc_kwh),
            "device": self.device, "soc_interval": self.soc_interval,
        }  # fmt: skip


@dataclass(frozen=True)
class Island:
    """The grid-forming units of a network run islanded: at most one battery, the master (AC
    slack; else the first genset is), and gensets dispatched per interval."""

    units: tuple[GridFormingUnit, ...]

    def __post_init__(self) -> None:
        if not self.units:
            raise IslandError("an island needs at least one grid-forming unit")
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise IslandError(f"unit names must be unique, got {names}")
        if any(u.kind == "battery" for u in self.dispatched):
            raise IslandError(
                "one battery at most: it is the master (slack); the others are gensets"
            )

    @property
    def forming(self) -> GridFormingUnit:
        return next((u for u in self.units if u.kind == "battery"), self.units[0])

    @property
    def dispatched(self) -> tuple[GridFormingUnit, ...]:
        forming = self.forming
        return tuple(u for u in self.units if u is not forming)


def islanded_net(net: pp.pandapowerNet, island: Island) -> pp.pandapowerNet:
    """A copy of ``net`` disconnected at its transformers, with the master unit as the slack (an
    ``ext_grid`` at its bus) and each dispatched unit as a static generator (p = 0 until
    ``set_dispatch``)."""
    out = copy.deepcopy(net)
    known = set(int(b) for b in out.bus.index[out.bus.in_service])
    for unit in island.units:
        if int(unit.bus) not in known:
            raise IslandError(f"unit {unit.name!r}: bus {unit.bus} is not an in-service bus")
    out.ext_grid["in_service"] = False
    for table in ("trafo", "trafo3w"):
        if len(out[table]):
            out[table]["in_service"] = False
    forming = island.forming
    pp.create_ext_grid(
        out, int(forming.bus), vm_pu=FORMING_VM_PU, va_degree=0.0, name=f"island {forming.name}"
    )
    for unit in island.dispatched:
        pp.create_sgen(out, int(unit.bus), p_mw=0.0, name=unit.name, type=GENSET_SGEN_TYPE)
    unsupplied = top.unsupplied_buses(out)
    if unsupplied:
        dead = sorted(int(b) for b in unsupplied)
        out.bus.loc[dead, "in_service"] = False
        for table in ("load", "sgen", "shunt", "ward", "xward", "storage", "gen"):
            if len(out[table]):
                out[table].loc[out[table].bus.isin(dead), "in_service"] = False
        if len(out.line):
            cut = out.line.from_bus.isin(dead) | out.line.to_bus.isin(dead)
            out.line.loc[cut, "in_service"] = False
    if int(forming.bus) in unsupplied:  # pragma: no cover - the slack supplies its own bus
        raise IslandError(f"unit {forming.name!r} supplies nothing")
    for unit in island.dispatched:
        if int(unit.bus) in unsupplied:
            raise IslandError(f"unit {unit.name!r}: bus {unit.bus} is not in the island")
    return out


def hours(interval_seconds: int) -> float:
    return interval_seconds / 3600.0


def forming_limits_kw(unit: GridFormingUnit, soc_kwh: float, h: float) -> tuple[float, float]:
    """The master's (lowest, highest) power over an interval of ``h`` hours: its power limits and,
    for a battery, the energy its state of charge allows (discharge) or leaves room for (charge)."""
    if unit.kind != "battery":
        return float(unit.min_kw), float(unit.max_kw)
    low = max(float(unit.min_kw), -(float(unit.capacity_kwh) - soc_kwh) / h)
    high = min(float(unit.max_kw), soc_kwh / h)
    return low, high


def genset_rows(net: pp.pandapowerNet, island: Island) -> list[int]:
    """The sgen rows of the dispatched units, in ``island.dispatched`` order."""
    rows = []
    for unit in island.dispatched:
        match = net.sgen.index[(net.sgen.name == unit.name) & (net.sgen.type == GENSET_SGEN_TYPE)]
        rows.append(int(match[0]))
    return rows


def cycle_charging(island: Island, forming_kw: float, low_kw: float, high_kw: float) -> list[float]:
    """Setpoints (kW) of the dispatched units for an interval whose master would have to give
    ``forming_kw`` alone: none while that is within ``[low_kw, high_kw]``; else each unit in order
    at full power, the last one only as far as the battery can absorb the surplus (never below a
    running unit's ``min_kw``)."""
    units = island.dispatched
    if forming_kw <= high_kw or not units:
        return [0.0] * len(units)
    target = forming_kw - low_kw  # what the gensets may give with the battery charging its most
    out: list[float] = []
    for unit in units:
        p = min(float(unit.max_kw), max(target, 0.0))
        if p > 0:
            p = max(p, float(unit.min_kw))
        out.append(p)
        target -= p
    return out


@dataclass(frozen=True)
class IslandBalance:
    """The master unit's power limits of one interval and the check of an AC state against them."""

    unit: GridFormingUnit
    ref: int  # ppci index of the master's bus
    low_kw: float
    high_kw: float
    tolerance_kw: float = 1e-6
    offset_kw: float = 0.0

    def power_kw(self, Ybus: object, S: np.ndarray, V: np.ndarray, base_mva: float) -> float:
        """The master's real power (kW, + injects) in the AC state ``V`` with bus injections
        ``S`` (pu): what flows out of its bus less what the elements and trades there inject.
        The model's ``S`` holds a solved value at the slack bus, not those elements' injection:
        ``offset_kw`` (from the base state, ``with_base``) carries the difference."""
        k = self.ref
        row = np.asarray(Ybus[k] @ V).ravel()  # type: ignore[index]
        s_bus = V[k] * np.conj(row[0])
        return float((s_bus - S[k]).real) * base_mva * 1000.0 + self.offset_kw

    def with_base(
        self, Ybus: object, S: np.ndarray, V: np.ndarray, base_mva: float, forming_kw: float
    ) -> IslandBalance:
        """This balance with the offset that makes ``power_kw`` of the base state (``S``,
        ``V``) ``forming_kw``, the master's power pandapower solved there."""
        raw = replace(self, offset_kw=0.0).power_kw(Ybus, S, V, base_mva)
        return replace(self, offset_kw=forming_kw - raw)

    def check(self, power_kw: float) -> Violation | None:
        """``ISLAND_BALANCE`` naming the unit, the power it would have to give and its limit."""
        if power_kw > self.high_kw + self.tolerance_kw:
            return Violation(Reason.ISLAND_BALANCE, self.unit.label, power_kw, self.high_kw)
        if power_kw < self.low_kw - self.tolerance_kw:
            return Violation(Reason.ISLAND_BALANCE, self.unit.label, power_kw, self.low_kw)
        return None


@dataclass(frozen=True)
class IslandState:
    """One interval's islanded operation: state of charge at its start, the master's limits and
    power in the base state, the dispatched units' setpoints (``Island.dispatched`` order)."""

    soc_kwh: float
    forming_kw: float
    low_kw: float
    high_kw: float
    dispatch_kw: tuple[float, ...]
    violation: Violation | None
    curtailed_kw: float = 0.0  # PV held back because the master could not absorb it

    def doc(self) -> dict[str, object]:
        return {
            "soc_kwh": repr(round(self.soc_kwh, 9)),
            "forming_limits_kw": [repr(round(self.low_kw, 9)), repr(round(self.high_kw, 9))],
            "dispatch_kw": [repr(round(p, 9)) for p in self.dispatch_kw],
            "curtailed_kw": repr(round(self.curtailed_kw, 9)),
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "soc_kwh": self.soc_kwh,
            "forming_kw": self.forming_kw,
            "low_kw": self.low_kw,
            "high_kw": self.high_kw,
            "dispatch_kw": list(self.dispatch_kw),
            "curtailed_kw": self.curtailed_kw,
            "balanced": self.violation is None,
        }


# The named networks' grid-forming units. village_island: Kerber's Dorfnetz (57 households of
# 6 kW nominal, 342 kW evening peak, ~100 kW at night; the validator's PV at 1.5 x each
# household's load, 513 kW peak) with its powerhouse at the LV busbar (bus 1), where the
# 400 kVA transformer connected it: a 250 kW / 800 kWh battery (charging up to 300 kW), half
# full at midnight, and a 160 kW diesel genset (minimum stable load 48 kW). The night drains the
# battery by the early morning; the genset at full power then cannot carry the village alone.
NAMED_ISLANDS: dict[str, Island] = {
    "village_island": Island(
        (
            GridFormingUnit("village-battery", "battery", 1, -300.0, 250.0, 800.0, 400.0),
            GridFormingUnit("village-genset", "genset", 1, 48.0, 160.0),
        )
    ),
}


def named_island(name: str) -> Island | None:
    """The grid-forming units of a named network (None: it has none)."""
    return NAMED_ISLANDS.get(name)


def island_doc(island: Island) -> list[list[object]]:
    return [u.doc() for u in island.units]


def units_from_docs(units: Sequence[dict[str, object]]) -> Island:
    """An ``Island`` from JSON-like dicts (``GridFormingUnit`` fields)."""
    try:
        return Island(tuple(GridFormingUnit(**u) for u in units))  # type: ignore[arg-type]
    except TypeError as exc:
        raise IslandError(f"bad grid-forming unit: {exc}") from exc
