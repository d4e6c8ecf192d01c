"""What ``tegrid`` commands print: the shared console, and on failure one readable line on stderr
with an exit code. Sub-commands import from here, never from ``backend.cli.main`` (which imports
them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from backend.errors import TegridError
from backend.settings import Settings

if TYPE_CHECKING:  # backend.chain imports web3: not at start-up
    from backend.chain.contracts import Deployment

console = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr (never wrapped) and exit with ``code``."""
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_fail() -> Settings:
    """The settings from the environment, or one ``error:`` line and exit 2 naming the bad one."""
    try:
        return Settings.from_env()
    except TegridError as exc:
        fail(str(exc))


def redact(url: str) -> str:
    """``url`` without the password of its user part (``postgresql://u:***@host/db``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def startup(daemon: str, targets: list[tuple[str, str]]) -> None:
    """Say on stderr what a daemon connects to, one ``<daemon>: <what> <where>`` line each, before
    it starts working (stdout stays free for its ``--json`` output)."""
    err = Console(stderr=True)
    for what, where in targets:
        err.print(f"{daemon}: {what} {where}", highlight=False, soft_wrap=True)


def deployment_line(path: Path, deployment: Deployment) -> str:
    """The deployment a daemon works on: its file, the market's address and its chain id."""
    market = deployment.contracts.get("EnergyMarket", "none")
    return f"{path} (EnergyMarket {market}, chain id {deployment.chain_id})"
