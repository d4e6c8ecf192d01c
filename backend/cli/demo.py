"""``tegrid demo``: a community day through every real component, with a report.

Ports and voltage limits are read as text and checked here, so that a bad value - from the
command line or from its environment variable - ends in one line naming where it came from,
before anything starts. The demo itself (web3, pandapower) is imported inside the command:
``tegrid --help`` must start without them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from backend.cli.output import fail
from backend.demo.config import DemoError, check_port
from backend.errors import TegridError
from backend.settings import check_voltage_band

PORT_ENV = {
    "api_port": "TEGRID_DEMO_API_PORT",
    "chain_port": "TEGRID_DEMO_CHAIN_PORT",
    "broker_port": "TEGRID_DEMO_BROKER_PORT",
}
PU_ENV = {"vm_min": "TEGRID_VM_MIN_PU", "vm_max": "TEGRID_VM_MAX_PU"}


def _source(ctx: typer.Context, param: str, env: str) -> str:
    """How the user gave ``param``: its option, or the environment variable."""
    option = "--" + param.replace("_", "-")
    # by name: typer brings its own copy of click, whose ParameterSource is another class
    source = ctx.get_parameter_source(param)
    if getattr(source, "name", None) == "ENVIRONMENT":
        return f"{env} (for {option})"
    return option


def _port(ctx: typer.Context, param: str, text: str) -> int:
    name = _source(ctx, param, PORT_ENV[param])
    try:
        port = int(text.strip())
    except ValueError:
        fail(f"{name} must be a port number, got {text!r}")
    try:
        check_port(port, name)
    except DemoError as exc:
        fail(str(exc))
    return port


def _band(ctx: typer.Context, vm_min: str, vm_max: str) -> tuple[float, float]:
    """The voltage band (pu), checked by the rule ``tegrid serve`` applies to its settings."""
    names = (_source(ctx, "vm_min", PU_ENV["vm_min"]), _source(ctx, "vm_max", PU_ENV["vm_max"]))
    values = []
    for name, text in zip(names, (vm_min, vm_max), strict=True):
        try:
            values.append(float(text.strip()))
        except ValueError:
            fail(f"{name} must be a voltage in pu, got {text!r}")
    try:
        check_voltage_band(values[0], values[1], names)
    except TegridError as exc:
        fail(str(exc))
    return values[0], values[1]


PORT_HELP = {
    "api_port": "the market API's port",
    "chain_port": "Anvil's port",
    "broker_port": "Mosquitto's port",
}


def _port_option(what: str) -> Any:
    return typer.Option(
        "0",
        metavar="PORT",
        envvar=PORT_ENV[what],
        help=f"{PORT_HELP[what]} on 127.0.0.1 (0: a free one)",
    )


def demo(
    ctx: typer.Context,
    network: str = typer.Option(
        "cigre_lv", metavar="NETWORK", help="grid: a named network, SimBench code or JSON file"
    ),
    prosumers: int = typer.Option(16, min=2, max=500, help="members of the community"),
    hours: float = typer.Option(
        4.0, min=0.25, max=24.0, metavar="HOURS", help="length of the simulated day"
    ),
    interval_minutes: int = typer.Option(
        15, min=1, max=60, metavar="MINUTES", help="delivery interval length"
    ),
    seed: int = typer.Option(7, help="random seed (community, orders, deviations)"),
    start_hour: float = typer.Option(
        10.0, min=0.0, max=23.75, metavar="HOUR", help="first interval, hour of day (UTC)"
    ),
    broker: str = typer.Option(
        "auto", metavar="KIND", help="auto (mosquitto if installed) | mosquitto | inprocess"
    ),
    reports: Path = typer.Option(
        Path("reports"), metavar="DIR", help="folder for reports/<timestamp>/"
    ),
    api_port: str = _port_option("api_port"),
    chain_port: str = _port_option("chain_port"),
    broker_port: str = _port_option("broker_port"),
    vm_min: str = typer.Option(
        "0.90", metavar="PU", envvar=PU_ENV["vm_min"],
        help="the Neural Grid's lower voltage limit, in [0.5, 1.0)",
    ),
    vm_max: str = typer.Option(
        "1.10", metavar="PU", envvar=PU_ENV["vm_max"],
        help="the Neural Grid's upper voltage limit, in (1.0, 1.5]",
    ),
    islanded: bool = typer.Option(
        False, "--islanded",
        help="the grid operator switches the grid to islanded (setGridMode) before the second "
        "interval; needs grid-forming units: --network village_island",
    ),
    flexibility: bool = typer.Option(
        True, "--flexibility/--no-flexibility",
        help="members' devices offer flexibility that rescues refused trades (needs Mosquitto)",
    ),
    remedy_consent: float = typer.Option(
        0.75, min=0.0, max=1.0, metavar="SHARE",
        help="share of the members who set a remedy cap (pay for flexibility that rescues "
        "their vetoed trades)",
    ),
) -> None:  # fmt: skip
    """Bring up chain, API, broker, oracle, meters, keeper, dispatcher and devices; trade,
    validate, rescue vetoed trades with flexibility, meter and settle a day; print the checks and
    write reports/<timestamp>/ (report.html, PNG plots, figures.json, summary.json)."""
    # lazy: the demo and the grid package load pandapower (~3 s), not for `tegrid --help`
    from backend.demo.run import Demo, DemoConfig, print_summary  # noqa: PLC0415
    from grid.errors import GridError  # noqa: PLC0415

    console = Console()
    given = {"api_port": api_port, "chain_port": chain_port, "broker_port": broker_port}
    ports = {name: _port(ctx, name, text) for name, text in given.items()}
    vm_min_pu, vm_max_pu = _band(ctx, vm_min, vm_max)
    config = DemoConfig(
        network=network, prosumers=prosumers, hours=hours, interval_minutes=interval_minutes,
        seed=seed, start_hour=start_hour, broker=broker, reports_dir=reports.resolve(),
        vm_min_pu=vm_min_pu, vm_max_pu=vm_max_pu, islanded=islanded,
        remedy_consent_share=remedy_consent, flexibility=flexibility, **ports,
    )  # fmt: skip
    try:
        summary, folder = Demo(config, console).run()
    except (TegridError, GridError) as exc:  # e.g. an unknown network name
        fail(str(exc))
    print_summary(summary, folder, console)
    raise typer.Exit(0 if all(summary["checks"].values()) else 1)
