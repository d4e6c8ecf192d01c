"""What ``tegrid`` commands print: the shared console, and on failure one readable line on stderr
with an exit code. Sub-commands import from here, never from ``backend.cli.main`` (which imports
them)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr (never wrapped) and exit with ``code``."""
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
