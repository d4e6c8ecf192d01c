"""``tegrid demo``: a community day through every real component, with a report.

Ports and voltage limits are read as text and checked here, so that a bad value - from the
command line or from its environment variable - ends in one line naming where it came from."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from click.core import ParameterSource
from rich.console import Console

from backend.cli.output import fail
from backend.errors import TegridError

PORT_ENV = {
    "api_port": "TEGRID_DEMO_API_PORT",
    "chain_port": "TEGRID_DEMO_CHAIN_PORT",
    "broker_port": "TEGRID_DEMO_BROKER_PORT",
}
PU_ENV = {"vm_min": "TEGRID_VM_MIN_PU", "vm_max": "TEGRID_VM_MAX_PU"}


def _source(ctx: typer.Context, param: str, env: str) -> str:
    """How the user gave ``param``: its option, or the environment variable."""
    option = "--" + param.replace("_", "-")
    if ctx.get_parameter_source(param) is ParameterSource.ENVIRONMENT:
        return f"{env} (for {option})"
    return option


def _port(ctx: typer.Context, param: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        fail(f"{_source(ctx, param, PORT_ENV[param])} must be a port number, got {text!r}")


def _pu(ctx: typer.Context, param: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        fail(f"{_source(ctx, param, PU_ENV[param])} must be a voltage in pu, got {text!r}")
    return value


PORT_HELP = {
    "api_port": "the market API's port",
    "chain_port": "Anvil's port",
    "broker_port": "Mosquitto's port",
}


def _port_option(what: str) -> str:
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
) -> None:  # fmt: skip
    """Bring up chain, API, broker, oracle, meters and keeper; trade, validate, meter and settle a
    day; print the checks and write reports/<timestamp>/ (report.html, PNG plots, figures.json,
    summary.json)."""
    from backend.demo.run import Demo, DemoConfig, print_summary
    from grid.errors import GridError

    console = Console()
    given = {"api_port": api_port, "chain_port": chain_port, "broker_port": broker_port}
    ports = {name: _port(ctx, name, text) for name, text in given.items()}
    config = DemoConfig(
        network=network, prosumers=prosumers, hours=hours, interval_minutes=interval_minutes,
        seed=seed, start_hour=start_hour, broker=broker, reports_dir=reports.resolve(),
        vm_min_pu=_pu(ctx, "vm_min", vm_min), vm_max_pu=_pu(ctx, "vm_max", vm_max), **ports,
    )  # fmt: skip
    try:
        summary, folder = Demo(config, console).run()
    except (TegridError, GridError) as exc:  # e.g. an unknown network name
        fail(str(exc))
    print_summary(summary, folder, console)
    raise typer.Exit(0 if all(summary["checks"].values()) else 1)
