"""``tegrid grid ...``: Neural Grid commands (placeholder until the grid commands land)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Neural Grid: power flow checks, trade validation, hosting capacity.", no_args_is_help=True)
