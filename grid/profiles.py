"""Interval base states: documented daily shapes applied to a network's loads and sgens.

Time of day comes from the interval index alone (UTC): ``t = interval * interval_seconds``, ``hour =
(t mod 86400) / 3600``, taken at the start of the interval. Shapes are per-unit of the element's own
value in the network (its nominal ``p_mw``/``q_mvar``) and linear between the hourly points.

- household load: night trough 0.27, morning bump 0.70 at 07:00, midday 0.50, evening peak 1.00 at
  19:00;
- commercial load (cigre ``Load C*``/``Load I*``, SimBench profiles ``G*``): flat 0.90 from 08:00 to
  18:00, 0.35 otherwise;
- PV (every sgen): ``sin(pi (h - 6) / 14) ** 1.5`` between 06:00 and 20:00, zero at night, peak 1.0
  at 13:00.

Networks without any sgen (cigre_lv, case33bw, the Kerber grids) get one PV sgen per load bus whose
peak is ``PV_PEAK_RATIO`` times that bus's nominal load: at midday PV exceeds the household load
several times, so a weak feeder exports and trades that add export there are vetoed. With no
interval the network's own values are used unchanged (the added PV then injects nothing)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandapower as pp

DEFAULT_INTERVAL_SECONDS = 900
PV_PEAK_RATIO = 1.5
ADDED_PV_NAME = "tegrid PV"

HOUSEHOLD_SHAPE: tuple[float, ...] = (
    0.35,
    0.30,
    0.28,
    0.27,
    0.28,
    0.35,
    0.55,
    0.70,
    0.65,
    0.55,
    0.50,
    0.50,
    0.55,
    0.50,
    0.45,
    0.45,
    0.55,
    0.75,
    0.95,
    1.00,
    0.90,
    0.75,
    0.55,
    0.42,
)
COMMERCIAL_SHAPE: tuple[float, ...] = tuple(0.90 if 8 <= h < 18 else 0.35 for h in range(24))

_COMMERCIAL_NAME = re.compile(r"^Load [CI]\d")


def hour_of_day(interval: int, interval_seconds: int = DEFAULT_INTERVAL_SECONDS) -> float:
    """Hour of day (0 <= h < 24, UTC) at the start of ``interval``."""
    if interval_seconds <= 0:
        raise ValueError("interval_seconds must be positive")
    return (interval * interval_seconds % 86400) / 3600.0


def interval_of(unix_time: float, interval_seconds: int = DEFAULT_INTERVAL_SECONDS) -> int:
    """``floor(unix_time / interval_seconds)``."""
    return math.floor(unix_time / interval_seconds)


def _hourly(shape: tuple[float, ...], hour: float) -> float:
    low = math.floor(hour) % 24
    frac = hour - math.floor(hour)
    return shape[low] * (1.0 - frac) + shape[(low + 1) % 24] * frac


def household(hour: float) -> float:
    return _hourly(HOUSEHOLD_SHAPE, hour)


def commercial(hour: float) -> float:
    return _hourly(COMMERCIAL_SHAPE, hour)


def pv(hour: float) -> float:
    if not 6.0 < hour < 20.0:
        return 0.0
    return math.sin(math.pi * (hour - 6.0) / 14.0) ** 1.5


def is_commercial(name: object, profile: object) -> bool:
    """cigre names ``Load C*``/``Load I*`` and SimBench profiles ``G*`` follow the commercial
    shape."""
    if isinstance(profile, str) and profile.upper().startswith("G"):
        return True
    return isinstance(name, str) and bool(_COMMERCIAL_NAME.match(name))


def add_pv_where_missing(net: pp.pandapowerNet, ratio: float = PV_PEAK_RATIO) -> None:
    """Give a network without sgens one PV sgen per load bus (peak = ``ratio`` x nominal load, p=0
    now)."""
    if len(net.sgen) > 0 or len(net.load) == 0:
        return
    per_bus = net.load[net.load.in_service].groupby("bus")["p_mw"].sum()
    for bus, p_mw in per_bus.items():
        pp.create_sgen(
            net,
            int(bus),
            p_mw=0.0,
            q_mvar=0.0,
            name=ADDED_PV_NAME,
            sn_mva=float(p_mw) * ratio,
            type="PV",
        )


def apply_interval(
    net: pp.pandapowerNet,
    nominal: dict[str, np.ndarray],
    interval: int | None,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
) -> None:
    """Set loads and sgens of ``net`` for ``interval`` from their ``nominal`` values (see module
    doc)."""
    load_p, load_q, sgen_p = nominal["load_p_mw"], nominal["load_q_mvar"], nominal["sgen_p_mw"]
    if interval is None:
        net.load["p_mw"] = load_p
        net.load["q_mvar"] = load_q
        net.sgen["p_mw"] = sgen_p
        return
    hour = hour_of_day(interval, interval_seconds)
    profiles = net.load["profile"] if "profile" in net.load.columns else [None] * len(net.load)
    factors = np.array(
        [
            commercial(hour) if is_commercial(name, profile) else household(hour)
            for name, profile in zip(net.load["name"], profiles, strict=True)
        ],
        dtype=float,
    )
    net.load["p_mw"] = load_p * factors
    net.load["q_mvar"] = load_q * factors
    net.sgen["p_mw"] = nominal["sgen_peak_mw"] * pv(hour)


def nominal_values(net: pp.pandapowerNet) -> dict[str, np.ndarray]:
    """Remember the network's own load/sgen values (and the PV peaks) before any interval is
    applied."""
    sgen_p = net.sgen["p_mw"].to_numpy(dtype=float).copy()
    added = (net.sgen["name"] == ADDED_PV_NAME).to_numpy() if len(net.sgen) else np.zeros(0, bool)
    peak = sgen_p.copy()
    if added.any():
        peak[added] = net.sgen["sn_mva"].to_numpy(dtype=float)[added]
    return {
        "load_p_mw": net.load["p_mw"].to_numpy(dtype=float).copy(),
        "load_q_mvar": net.load["q_mvar"].to_numpy(dtype=float).copy(),
        "sgen_p_mw": sgen_p,
        "sgen_peak_mw": peak,
    }
