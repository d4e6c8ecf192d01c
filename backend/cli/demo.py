"""``tegrid demo``: a community day through every real component, with a report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from backend.cli.output import fail
from backend.errors import TegridError


def demo(
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
) -> None:
    """Bring up chain, API, broker, oracle, meters and keeper; trade, validate, meter and settle a
    day; print the checks and write reports/<timestamp>/ (report.html, PNG plots, summary.json)."""
    # lazy: the demo and the grid package load pandapower (~3 s), not for `tegrid --help`
    from backend.demo.run import Demo, DemoConfig, print_summary  # noqa: PLC0415
    from grid.errors import GridError  # noqa: PLC0415

    console = Console()
    config = DemoConfig(
        network=network, prosumers=prosumers, hours=hours, interval_minutes=interval_minutes,
        seed=seed, start_hour=start_hour, broker=broker, reports_dir=reports.resolve(),
    )  # fmt: skip
    try:
        summary, folder = Demo(config, console).run()
    except (TegridError, GridError) as exc:  # e.g. an unknown network name
        fail(str(exc))
    print_summary(summary, folder, console)
    raise typer.Exit(0 if all(summary["checks"].values()) else 1)
