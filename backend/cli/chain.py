"""``tegrid chain ...``: start a local chain, deploy the contracts."""

from __future__ import annotations

import typer

app = typer.Typer(help="Local chain and contract deployment.", no_args_is_help=True)
