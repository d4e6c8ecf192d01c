"""``tegrid ... --help`` as a user reads it: no Python type labels, file formats spelled out, and
start-up without the grid package (pandapower)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from backend.cli.main import app

runner = CliRunner()
TYPE_LABEL = re.compile(r"<(bool|str|int|float|path|text|file|directory|uuid|datetime)\b[^>]*>")


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    # typer's own click (typer._click): groups are the commands with sub-commands
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


ALL_COMMANDS = _command_paths(typer.main.get_command(app))


def _help(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_command_tree_covers_every_group() -> None:
    assert {p for p in ALL_COMMANDS if len(p) == 1} >= {
        ("serve",),
        ("oracle",),
        ("keeper",),
        ("meters",),
        ("grid",),
        ("chain",),
        ("doctor",),
    }
    assert ("chain", "advance") in ALL_COMMANDS


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "tegrid")
def test_help_shows_no_python_type_labels(path: tuple[str, ...]) -> None:
    text = _help(*path)
    assert TYPE_LABEL.search(text) is None, text


def test_help_labels_name_units_and_formats() -> None:
    serve = _help("serve")
    assert re.search(r"--port\s+PORT \[1<=x<=65535\]", serve)
    assert re.search(r"--tick\s+SECONDS", serve)
    assert re.search(r"--keeper\s+--no-keeper\s+run the settlement keeper", serve)
    oracle = _help("oracle")
    assert re.search(r"--database-url\s+URL\s+Queue database, sqlite:///path", oracle)
    assert re.search(r"--deployment\s+FILE", _help("keeper"))


@pytest.mark.parametrize("command", ["validate", "verify"])
def test_grid_help_documents_the_trades_file(command: str) -> None:
    text = " ".join(_help("grid", command).split())
    assert '{"id": "t1", "seller_bus": 24, "buyer_bus": 35, "p_kw": 2.5}' in text
    assert "priority order" in text


def test_meters_help_documents_the_meters_file() -> None:
    text = " ".join(_help("meters", "simulate").split())
    assert '{"key": "0x<32-byte device key>", "bus": 3}' in text


def test_startup_imports_neither_pandapower_nor_web3() -> None:
    """What keeps ``tegrid --help`` fast: pandapower alone costs 2.5 s of CPU to import."""
    code = (
        "import sys\n"
        "from backend.cli.main import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('pandapower', 'grid', 'web3', 'uvicorn', 'fastapi',"
        " 'eth_account', 'sqlalchemy', 'solcx', 'paho') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "HEAVY []" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://tegrid:s3cret@db:5432/tegrid", "postgresql://tegrid:***@db:5432/tegrid"),
        ("sqlite:////tmp/oracle.db", "sqlite:////tmp/oracle.db"),
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
    ],
)
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    from backend.cli.output import redact

    assert redact(url) == shown
