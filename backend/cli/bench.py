"""``tegrid bench ...``: benchmarks that print measured figures (JSON) beside a baseline from the same run."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Benchmarks: each prints JSON with our figure and a baseline measured in the same run.", no_args_is_help=True)


def _emit(result: dict[str, object]) -> None:
    typer.echo(json.dumps(result, indent=2, sort_keys=False))
