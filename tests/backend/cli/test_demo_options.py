"""``tegrid demo``'s ports and voltage limits: a bad value, from an option or its environment
variable, ends in one readable line naming it, exit code 2, and nothing started or written."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli.main import app

runner = CliRunner()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _demo(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """Run ``tegrid demo``; assert it refused in one line with exit code 2 and wrote nothing."""
    reports = tmp_path / "reports"
    result = runner.invoke(
        app, ["demo", *args, "--reports", str(reports)], env={"COLUMNS": "40", **(env or {})}
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert not reports.exists()
    return errors[0].removeprefix("error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vm-min", "low"], "--vm-min must be a voltage in pu, got 'low'"),
        (["--vm-min", "1.0"], "--vm-min must be in [0.5, 1.0) pu, got 1.0"),
        (["--vm-min", "0.45"], "--vm-min must be in [0.5, 1.0) pu, got 0.45"),
        (["--vm-min", "nan"], "--vm-min must be in [0.5, 1.0) pu, got nan"),
        (["--vm-max", "0.98"], "--vm-max must be in (1.0, 1.5] pu, got 0.98"),
        (["--vm-max", "1.6"], "--vm-max must be in (1.0, 1.5] pu, got 1.6"),
        (["--api-port", "http"], "--api-port must be a port number, got 'http'"),
        (["--chain-port", "80"], "--chain-port must be 0 (a free port) or 1024-65535, got 80"),
        (["--broker-port", "70000"],
         "--broker-port must be 0 (a free port) or 1024-65535, got 70000"),
        (["--api-port", "20817", "--chain-port", "20817"],
         "--api-port and --chain-port are both 20817: give each its own port"),
        (["--broker", "inprocess", "--broker-port", "20818"],
         "--broker-port needs Mosquitto: --broker inprocess listens on no port"),
    ],
)  # fmt: skip
def test_demo_refuses_a_bad_option_in_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    assert _demo(args, tmp_path) == message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEGRID_VM_MAX_PU": "2"},
         "TEGRID_VM_MAX_PU (for --vm-max) must be in (1.0, 1.5] pu, got 2.0"),
        ({"TEGRID_VM_MIN_PU": "0,9"},
         "TEGRID_VM_MIN_PU (for --vm-min) must be a voltage in pu, got '0,9'"),
        ({"TEGRID_DEMO_API_PORT": "-1"},
         "TEGRID_DEMO_API_PORT (for --api-port) must be 0 (a free port) or 1024-65535, got -1"),
    ],
)  # fmt: skip
def test_demo_names_the_environment_variable_a_bad_value_came_from(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    assert _demo([], tmp_path, env) == message


@pytest.mark.parametrize("option", ["--api-port", "--chain-port", "--broker-port"])
def test_demo_refuses_a_port_in_use(option: str, busy_port: int, tmp_path: Path) -> None:
    assert _demo([option, str(busy_port)], tmp_path) == (
        f"{option} {busy_port}: something already listens on 127.0.0.1:{busy_port}"
    )


def test_demo_help_names_ports_and_voltage_limits_with_their_variables() -> None:
    text = " ".join(runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).stdout.split())
    for option, metavar, env in [
        ("--api-port", "PORT", "TEGRID_DEMO_API_PORT"),
        ("--chain-port", "PORT", "TEGRID_DEMO_CHAIN_PORT"),
        ("--broker-port", "PORT", "TEGRID_DEMO_BROKER_PORT"),
        ("--vm-min", "PU", "TEGRID_VM_MIN_PU"),
        ("--vm-max", "PU", "TEGRID_VM_MAX_PU"),
    ]:
        assert f"{option} {metavar}" in text and f"[env var: {env}]" in text
