"""Entry point of the ``tegrid`` command line."""

from __future__ import annotations

import typer

from backend.cli import bench, chain, grid, serve
from backend.cli import demo as demo_cli
from backend.cli import devices as devices_cli
from backend.cli import dispatcher as dispatcher_cli
from backend.cli import doctor as doctor_mod
from backend.cli import keeper as keeper_cli
from backend.cli import market as market_cli
from backend.cli import meters as meters_cli
from backend.cli import oracle as oracle_cli
from backend.cli.base import App
from backend.cli.output import console, fail
from backend.errors import TegridError
from backend.settings import Settings

app = App(
    name="tegrid",
    help="Peer-to-peer energy trading on a distribution grid: chain, market, meters, Neural Grid.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def doctor() -> None:
    """Report versions, the compiler, Anvil and whether chain and broker are reachable."""
    try:
        settings = Settings.from_env()
    except TegridError as exc:
        fail(str(exc))
    ok = doctor_mod.report(doctor_mod.run_checks(settings), console)
    raise typer.Exit(0 if ok else 1)


# Sub-apps live beside this file, one per concern; they never import this module.
app.command(name="serve")(serve.serve)
app.command(name="demo")(demo_cli.demo)
app.add_typer(grid.app, name="grid")
app.add_typer(chain.app, name="chain")
app.add_typer(bench.app, name="bench")
app.add_typer(meters_cli.app, name="meters")
app.add_typer(oracle_cli.app, name="oracle")
app.add_typer(devices_cli.app, name="devices")
app.add_typer(dispatcher_cli.app, name="dispatcher")
app.add_typer(keeper_cli.app, name="keeper")
app.add_typer(market_cli.app, name="market")

if __name__ == "__main__":
    app()
