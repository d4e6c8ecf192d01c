"""Networks by name, SimBench code or pandapower JSON path, and a fingerprint of their element
tables."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import random
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import simbench

from grid.errors import NetworkFileError, UnknownNetworkError

DEFAULT_NETWORK = "cigre_lv"

_NAMED: dict[str, Callable[[], pp.pandapowerNet]] = {
    "cigre_lv": pn.create_cigre_network_lv,
    "case33bw": pn.case33bw,
    "kerber_dorfnetz": pn.create_kerber_dorfnetz,
    "kerber_vorstadt": pn.create_kerber_vorstadtnetz_kabel_1,
    # generators (PV buses), transmission-level voltages
    "case_ieee30": pn.case_ieee30,
    # 380/110/20/0.4 kV with a three-winding transformer, an impedance and extended wards
    "example_multivoltage": pn.example_multivoltage,
    # a remote village: Kerber's "Dorfnetz" with a powerhouse (battery, genset) at its LV busbar;
    # islanded, it runs disconnected at its transformer (grid.island.NAMED_ISLANDS)
    "village_island": pn.create_kerber_dorfnetz,
}
NETWORK_NAMES: tuple[str, ...] = tuple(_NAMED)

_SIMBENCH_CODE = re.compile(r"^\d-[A-Za-z0-9]+-[A-Za-z0-9]+--\d-(sw|no_sw)$")

ACCEPTED = (
    f"accepted: {', '.join(NETWORK_NAMES)}, a SimBench code (e.g. 1-LV-rural1--0-sw) "
    "or the path of a pandapower JSON file"
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence pandapower/simbench warnings, logging and prints (stdout must stay clean JSON)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


NAMED_SEED = 0


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's global ``random`` seeded for the duration, then restored.

    pandapower's Kerber "Vorstadtnetz" builders pick each branch-out cable type with
    ``random.random()``: unseeded, every process would build a different network (other ratings,
    another fingerprint, other verdicts)."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def load_network(name_or_path: str) -> pp.pandapowerNet:
    """Return a fresh pandapower network for a known name, a SimBench code or a JSON file path.

    Raises ``UnknownNetworkError`` (a ``ValueError``) listing what is accepted, or
    ``NetworkFileError``
    for a file that exists but is not a pandapower network.
    """
    name = str(name_or_path).strip()
    if name in _NAMED:
        with quiet(), _seeded(NAMED_SEED):
            return _NAMED[name]()
    if _SIMBENCH_CODE.match(name):
        return _load_simbench(name)
    path = Path(name)
    if path.suffix.lower() == ".json" or path.is_file():
        return _load_json(path)
    raise UnknownNetworkError(f"unknown network {name!r}; {ACCEPTED}")


def _load_simbench(code: str) -> pp.pandapowerNet:
    try:
        with quiet():
            net = simbench.get_simbench_net(code)
    except Exception as exc:
        raise UnknownNetworkError(f"unknown SimBench code {code!r}; {ACCEPTED}") from exc
    if not isinstance(net, pp.pandapowerNet) or len(net.bus) == 0:
        raise UnknownNetworkError(f"unknown SimBench code {code!r}; {ACCEPTED}")
    return net


def _load_json(path: Path) -> pp.pandapowerNet:
    if not path.is_file():
        raise UnknownNetworkError(f"network file {str(path)!r} does not exist; {ACCEPTED}")
    try:
        with quiet():
            net = pp.from_json(str(path))
    except Exception as exc:
        raise NetworkFileError(
            f"cannot read {str(path)!r} as a pandapower network ({type(exc).__name__}); {ACCEPTED}"
        ) from exc
    if not isinstance(net, pp.pandapowerNet) or len(net.bus) == 0 or len(net.ext_grid) == 0:
        raise NetworkFileError(
            f"{str(path)!r} holds no pandapower network with buses and an ext_grid"
        )
    return net


FINGERPRINT_TABLES = (
    "bus",
    "line",
    "trafo",
    "trafo3w",
    "switch",
    "ext_grid",
    "gen",
    "sgen",
    "load",
    "shunt",
    "impedance",
    "ward",
    "xward",
    "storage",
)


def _canonical_value(value: object) -> object:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return None if not np.isfinite(number) else float(f"{number:.10g}")
    return str(value)


def network_tables(net: pp.pandapowerNet) -> dict[str, object]:
    """Canonical, JSON-ready element tables: numeric and boolean columns, rows by index, sorted
    columns."""
    tables: dict[str, object] = {}
    for table in FINGERPRINT_TABLES:
        if table not in net or len(net[table]) == 0:
            continue
        frame = net[table].sort_index()
        columns = sorted(
            str(c)
            for c in frame.columns
            if frame[c].dtype.kind in "biuf" and not str(c).startswith("geo")
        )
        rows = [
            [int(idx), *(_canonical_value(frame.at[idx, c]) for c in columns)]
            for idx in frame.index
        ]
        tables[table] = {"columns": columns, "rows": rows}
    return tables


def network_fingerprint(net: pp.pandapowerNet) -> str:
    """sha256 (0x-hex) of the canonical element tables: same physics, same fingerprint."""
    blob = json.dumps(network_tables(net), sort_keys=True, separators=(",", ":"))
    return "0x" + hashlib.sha256(blob.encode()).hexdigest()


# A line rating at or above this is no rating but a placeholder ("unlimited"): the thickest
# distribution cables and overhead lines carry about 1-2 kA (pandapower's standard types end at
# 1.2 kA); case33bw, from a load-flow case without ratings, carries 99999 kA on every line.
PLACEHOLDER_MAX_I_KA = 10.0
# ... on a distribution network: every bus at or below this voltage (IEC medium voltage ends at
# 36 kV). Transmission lines are not judged by this rule.
DISTRIBUTION_MAX_KV = 36.0


def placeholder_line_ratings(net: pp.pandapowerNet) -> list[int]:
    """In-service lines of a distribution network whose ``max_i_ka`` is a placeholder
    (``>= PLACEHOLDER_MAX_I_KA``): their loading stays near 0 % and can never bind."""
    if len(net.line) == 0 or float(net.bus.vn_kv.max()) > DISTRIBUTION_MAX_KV:
        return []
    lines = net.line[net.line.in_service]
    return sorted(int(i) for i in lines.index[lines.max_i_ka >= PLACEHOLDER_MAX_I_KA])


def placeholder_warning(name: str, net: pp.pandapowerNet, lines: list[int]) -> str | None:
    """One sentence for the placeholder ratings of ``lines`` (None when there are none)."""
    if not lines:
        return None
    in_service = int(net.line.in_service.sum())
    ratings = sorted({float(net.line.at[i, "max_i_ka"]) for i in lines})
    shown = ", ".join(f"{r:g}" for r in ratings[:3]) + (", ..." if len(ratings) > 3 else "")
    return (
        f"{name}: {len(lines)} of {in_service} lines have placeholder thermal ratings "
        f"(max_i_ka {shown} kA, at or above {PLACEHOLDER_MAX_I_KA:g} kA on a distribution "
        "network): their loading can never bind, so no line overload can be found there"
    )


def bus_geodata(net: pp.pandapowerNet) -> dict[int, tuple[float, float]]:
    """Bus coordinates ``{bus: (x, y)}`` for drawing, from the ``geo`` column or legacy
    ``bus_geodata``."""
    coords: dict[int, tuple[float, float]] = {}
    if "geo" in net.bus.columns:
        for idx, geo in net.bus["geo"].items():
            if not isinstance(geo, str) or not geo:
                continue
            try:
                point = json.loads(geo).get("coordinates")
            except (ValueError, AttributeError):
                continue
            if isinstance(point, list) and len(point) == 2:
                coords[int(idx)] = (float(point[0]), float(point[1]))
    if not coords and "bus_geodata" in net and len(net.bus_geodata):
        for idx, row in net.bus_geodata.iterrows():
            coords[int(idx)] = (float(row["x"]), float(row["y"]))
    return coords
