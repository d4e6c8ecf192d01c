"""``tegrid grid ...``: Neural Grid commands - base-state check, trade validation, hosting
capacity, verify.

Bad input (unknown network, unreadable or malformed trades file, bad limits) prints one line on
stderr and exits with code 2. With ``--json`` stdout carries only JSON.

The ``grid`` package (pandapower, about 2.5 s of CPU to import) is imported inside the commands,
never at module level, so that ``tegrid --help`` and every other command start quickly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from backend.cli.base import App
from backend.cli.output import fail

if TYPE_CHECKING:
    from collections.abc import Sequence

    from grid.results import ValidationResult
    from grid.validator import GridValidator
    from grid.verdicts import Activation, Trade

app = App(
    help="Neural Grid: power flow checks, trade validation, hosting capacity.", no_args_is_help=True
)

# The trades file, as `grid.tradeio.load_trades` reads it; shown in --help of validate and verify.
TRADES_FORMAT = (
    "JSON list of trades in priority order, each "
    '{"id": "t1", "seller_bus": 24, "buyer_bus": 35, "p_kw": 2.5}: '
    "id a non-empty string, buses pandapower bus indices, p_kw >= 0 "
    "(the seller bus injects p_kw extra, the buyer bus withdraws it)"
)

NetworkOpt = Annotated[
    str,
    typer.Option(
        "--network",
        "-n",
        metavar="NETWORK",
        help="cigre_lv, case33bw, kerber_dorfnetz, kerber_vorstadt, case_ieee30, "
        "example_multivoltage, village_island, a SimBench code or a pandapower JSON path",
    ),
]
IntervalOpt = Annotated[
    int | None,
    typer.Option(
        "--interval",
        min=0,
        max=2**64 - 1,
        metavar="INTERVAL",
        show_default=False,
        help="interval index as on chain, floor(unix_time / interval_seconds); "
        "default: the network's own loads and generation",
    ),
]
SecondsOpt = Annotated[
    int, typer.Option("--interval-seconds", min=1, metavar="SECONDS", help="interval length")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON only")]
VmMinOpt = Annotated[float, typer.Option("--vm-min", metavar="PU", help="lower voltage limit")]
VmMaxOpt = Annotated[float, typer.Option("--vm-max", metavar="PU", help="upper voltage limit")]
LineOpt = Annotated[
    float, typer.Option("--max-line-loading", metavar="PERCENT", help="line loading limit")
]
TrafoOpt = Annotated[
    float,
    typer.Option("--max-trafo-loading", metavar="PERCENT", help="transformer loading limit"),
]
IslandedOpt = Annotated[
    bool,
    typer.Option(
        "--islanded",
        help="validate with no external grid: the network's grid-forming units balance it "
        "(village_island has them); vetoes the island cannot balance as ISLAND_BALANCE",
    ),
]
UnitsOpt = Annotated[
    Path | None,
    typer.Option(
        "--units",
        metavar="FILE",
        help="with --islanded: the grid-forming units instead of the network's own, a JSON list "
        'of {"name", "kind": "battery"|"genset", "bus", "min_kw", "max_kw", "capacity_kwh", '
        '"soc_kwh", "device", "soc_interval"} (the market\'s registered devices with their '
        "reported state of charge, as its islanded evidence holds them)",
    ),
]
TradesOpt = Annotated[
    Path, typer.Option("--trades", "-t", metavar="FILE", help=TRADES_FORMAT, show_default=False)
]
# The activations file, as `grid.tradeio.load_activations` reads it.
ACTIVATIONS_FORMAT = (
    "JSON list of flexibility activations, each "
    '{"id": "0xab..", "bus": 24, "p_kw": -3.0, "before": "t1"}: p_kw signed (positive '
    "injects, negative consumes); applied right before the trade named in before (optional), "
    "else before every trade, as one set"
)
ActivationsOpt = Annotated[
    Path | None,
    typer.Option("--activations", "-a", metavar="FILE", help=ACTIVATIONS_FORMAT),
]


def _validator(
    network: str,
    vm_min: float = 0.90,
    vm_max: float = 1.10,
    line: float = 100.0,
    trafo: float = 100.0,
    units: Path | None = None,
) -> GridValidator:
    # lazy: the grid package loads pandapower (~3 s), not for `tegrid --help` (module docstring)
    from grid.errors import GridError  # noqa: PLC0415
    from grid.island import units_from_docs  # noqa: PLC0415
    from grid.validator import GridValidator  # noqa: PLC0415
    from grid.verdicts import Limits  # noqa: PLC0415

    try:
        limits = Limits(vm_min, vm_max, line, trafo)
    except ValueError as exc:
        fail(f"bad limits: {exc}")
    island = None
    if units is not None:
        try:
            docs = json.loads(units.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"cannot read units {str(units)!r}: {exc.__class__.__name__}")
        if not isinstance(docs, list) or not all(isinstance(u, dict) for u in docs):
            fail(f"units {str(units)!r}: expected a JSON list of objects")
        try:
            island = units_from_docs(docs)
        except GridError as exc:
            fail(f"units {str(units)!r}: {exc}")
    try:
        return GridValidator(network, limits=limits, island=island)
    except GridError as exc:
        fail(str(exc))


def _validate(
    validator: GridValidator,
    trades: list[Trade],
    interval: int | None,
    interval_seconds: int,
    islanded: bool,
    activations: Sequence[Activation] = (),
) -> ValidationResult:
    # lazy: the grid package loads pandapower (~3 s), not for `tegrid --help` (module docstring)
    from grid.errors import GridError  # noqa: PLC0415

    try:
        return validator.validate(
            trades, interval, interval_seconds, activations, islanded=islanded
        )
    except GridError as exc:  # e.g. --islanded on a network without grid-forming units
        fail(str(exc))


def _echo_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2))


@app.command()
def check(
    network: NetworkOpt = "cigre_lv",
    interval: IntervalOpt = None,
    interval_seconds: SecondsOpt = 900,
    islanded: IslandedOpt = False,
    units: UnitsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Base-state power flow: voltage extremes, losses, maximum loadings; ``--islanded`` adds
    the island's operation (``island_*``: state of charge, master unit's power and limits,
    dispatch, PV curtailed, balanced).

    A network whose line ratings are placeholders (e.g. case33bw's ``max_i_ka`` 99999) gets a
    ``warning:`` line on stderr - their loading limits cannot bind - and, with ``--json``, the
    same sentences under ``warnings`` and those lines under ``placeholder_lines``."""
    # lazy: the grid package loads pandapower (~3 s), not for `tegrid --help` (module docstring)
    from grid.errors import GridError  # noqa: PLC0415

    validator = _validator(network, units=units)
    try:
        summary = validator.base_state(interval, interval_seconds, islanded=islanded).to_dict()
        if islanded:
            island = validator.island_state(interval, interval_seconds).to_dict()
            summary.update({f"island_{k}": v for k, v in island.items()})
    except GridError as exc:  # --islanded on a network without grid-forming units
        fail(str(exc))
    facts = validator.facts
    for warning in facts.warnings:
        Console(stderr=True).print(f"warning: {warning}", highlight=False, soft_wrap=True)
    if as_json:
        _echo_json(
            {
                **summary,
                "placeholder_lines": facts.placeholder_lines,
                "warnings": facts.warnings,
            }
        )
        return
    table = Table(title=f"base state of {network}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def validate(
    trades: TradesOpt,
    network: NetworkOpt = "cigre_lv",
    interval: IntervalOpt = None,
    interval_seconds: SecondsOpt = 900,
    vm_min: VmMinOpt = 0.90,
    vm_max: VmMaxOpt = 1.10,
    max_line_loading: LineOpt = 100.0,
    max_trafo_loading: TrafoOpt = 100.0,
    activations: ActivationsOpt = None,
    islanded: IslandedOpt = False,
    units: UnitsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verdicts for a trade list in priority order, with the evidence hash."""
    trade_list = _load(trades)
    activation_list = _load_activations(activations)
    validator = _validator(network, vm_min, vm_max, max_line_loading, max_trafo_loading, units)
    result = _validate(validator, trade_list, interval, interval_seconds, islanded, activation_list)
    payload = result.to_dict()
    if as_json:
        _echo_json(payload)
        return
    table = Table(title=f"verdicts on {network}")
    for column in ("id", "approved", "reason", "element", "value", "limit"):
        table.add_column(column)
    for verdict in [*result.activation_verdicts, *result.verdicts]:
        row = verdict.to_dict()
        table.add_row(
            *(
                str(row[c]) if row[c] is not None else ""
                for c in ("id", "approved", "reason", "element", "value", "limit")
            )
        )
    console = Console()
    console.print(table)
    console.print(f"evidence {result.evidence_hash}", highlight=False)


@app.command("hosting-capacity")
def hosting_capacity(
    bus: Annotated[int, typer.Option("--bus", "-b", metavar="BUS", help="pandapower bus index")],
    network: NetworkOpt = "cigre_lv",
    interval: IntervalOpt = None,
    interval_seconds: SecondsOpt = 900,
    vm_min: VmMinOpt = 0.90,
    vm_max: VmMaxOpt = 1.10,
    max_line_loading: LineOpt = 100.0,
    max_trafo_loading: TrafoOpt = 100.0,
    as_json: JsonOpt = False,
) -> None:
    """Largest export and import at a bus before a limit binds, with the binding constraint.

    For each direction: the largest extra power (kW) the bus can inject or withdraw with every
    limit held, and the limit that binds just beyond it - the element, the value it reaches there
    (voltage in pu, loading in %) and that limit."""
    # lazy: the grid package loads pandapower (~3 s), not for `tegrid --help` (module docstring)
    from grid.errors import GridError  # noqa: PLC0415

    validator = _validator(network, vm_min, vm_max, max_line_loading, max_trafo_loading)
    try:
        capacity = validator.hosting_capacity(bus, interval, interval_seconds)
    except GridError as exc:
        fail(str(exc))
    payload = capacity.to_dict()
    if as_json:
        _echo_json(payload)
        return
    table = Table(
        title=f"hosting capacity at bus {bus} of {network}",
        caption="max power: the most the bus can export or import with every limit held; "
        "just beyond it the binding limit is crossed at the element shown",
    )
    for column in ("direction", "max power", "binding limit", "at", "value just beyond", "limit"):
        table.add_column(column, justify="right" if column in _NUMERIC_COLUMNS else "left")
    for direction, limit in (("export", capacity.max_export), ("import", capacity.max_import)):
        if limit.reason is None:
            table.add_row(direction, f"{limit.p_kw:.2f} kW", "none up to the search ceiling")
            continue
        unit = _UNITS.get(limit.reason.name, "")
        table.add_row(
            direction,
            f"{limit.p_kw:.2f} kW",
            limit.reason.name,
            limit.element,
            _quantity(limit.value, unit),
            _quantity(limit.limit, unit),
        )
    Console().print(table)


_NUMERIC_COLUMNS = ("max power", "value just beyond", "limit")
# What the value and limit of a binding constraint measure, by reason.
_UNITS = {
    "VOLTAGE_HIGH": "pu",
    "VOLTAGE_LOW": "pu",
    "LINE_OVERLOAD": "%",
    "TRAFO_OVERLOAD": "%",
    "NOT_CONVERGED": "pu",  # with a value: the bus voltage of an implausible solution
    "ISLAND_BALANCE": "kW",  # the grid-forming unit's power and its limit
}


def _quantity(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "pu":
        return f"{value:.6f} pu"
    return f"{value:.2f} {unit}".rstrip()


@app.command()
def verify(
    trades: TradesOpt,
    network: NetworkOpt = "cigre_lv",
    interval: IntervalOpt = None,
    interval_seconds: SecondsOpt = 900,
    vm_min: VmMinOpt = 0.90,
    vm_max: VmMaxOpt = 1.10,
    max_line_loading: LineOpt = 100.0,
    max_trafo_loading: TrafoOpt = 100.0,
    evidence: Annotated[
        str | None,
        typer.Option("--evidence", metavar="0xHASH", help="claimed evidence hash (0x hex)"),
    ] = None,
    islanded: IslandedOpt = False,
    units: UnitsOpt = None,
    claimed: Annotated[
        Path | None,
        typer.Option(
            "--verdicts",
            metavar="FILE",
            help="claimed result: the JSON printed by `tegrid grid validate --json`",
        ),
    ] = None,
    activations: ActivationsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute verdicts and evidence from the same inputs; exit 0 on match, 1 on mismatch."""
    if evidence is None and claimed is None:
        fail("give --evidence 0x... and/or --verdicts FILE")
    claimed_verdicts: list[object] | None = None
    if claimed is not None:
        try:
            document = json.loads(claimed.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"cannot read claimed verdicts {str(claimed)!r}: {exc.__class__.__name__}")
        if not isinstance(document, dict) or not isinstance(document.get("verdicts"), list):
            fail(
                f"claimed verdicts {str(claimed)!r}: "
                "expected the JSON of `tegrid grid validate --json`"
            )
        claimed_verdicts = [*(document.get("activation_verdicts") or []), *document["verdicts"]]
        if evidence is None and isinstance(document.get("evidence_hash"), str):
            evidence = document["evidence_hash"]
    trade_list = _load(trades)
    activation_list = _load_activations(activations)
    validator = _validator(network, vm_min, vm_max, max_line_loading, max_trafo_loading, units)
    result = _validate(validator, trade_list, interval, interval_seconds, islanded, activation_list)
    problems: list[str] = []
    if evidence is not None and evidence.lower() != result.evidence_hash:
        problems.append(f"evidence hash {evidence} != recomputed {result.evidence_hash}")
    if claimed_verdicts is not None:
        ours = [
            (v.id, v.approved, v.reason.name)
            for v in [*result.activation_verdicts, *result.verdicts]
        ]
        theirs = [
            (c.get("id"), c.get("approved"), c.get("reason")) if isinstance(c, dict) else c
            for c in claimed_verdicts
        ]
        if len(theirs) != len(ours):
            problems.append(
                f"{len(theirs)} claimed verdicts for {len(ours)} trades and activations"
            )
        for mine, other in zip(ours, theirs, strict=False):
            if mine != other:
                problems.append(f"verdict {mine[0]!r}: claimed {other}, recomputed {mine[1:]}")
    match = not problems
    payload = {
        "match": match,
        "evidence_hash": result.evidence_hash,
        "claimed_evidence_hash": evidence,
        "mismatches": problems,
    }
    if as_json:
        _echo_json(payload)
    else:
        console = Console()
        console.print("[green]match[/]" if match else "[red]mismatch[/]")
        for problem in problems:
            console.print(f"  {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if match else 1)


def _load(path: Path) -> list[Trade]:
    # lazy: the grid package loads pandapower (~3 s), not for `tegrid --help` (module docstring)
    from grid.errors import GridError  # noqa: PLC0415
    from grid.tradeio import load_trades  # noqa: PLC0415

    try:
        return load_trades(path)
    except GridError as exc:
        fail(str(exc))


def _load_activations(path: Path | None) -> list[Activation]:
    if path is None:
        return []
    # lazy: the grid package loads pandapower (~3 s), not for `tegrid --help` (module docstring)
    from grid.errors import GridError  # noqa: PLC0415
    from grid.tradeio import load_activations  # noqa: PLC0415

    try:
        return load_activations(path)
    except GridError as exc:
        fail(str(exc))
