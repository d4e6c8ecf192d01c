"""User mistakes on the service commands end in one readable line on stderr and exit code 2 - no
traceback (a narrow terminal must not wrap the line either)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TEGRID = Path(sys.executable).with_name("tegrid")


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        COLUMNS="40",
        TEGRID_DEPLOYMENT_FILE=str(tmp_path / "none" / "deployment.json"),
        TEGRID_DATABASE_URL=f"sqlite:///{tmp_path / 'tegrid.db'}",
    )
    return subprocess.run(
        [str(TEGRID), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--network", "nope", "--broker", "inprocess", "--reports", "{tmp}"],
         "error: unknown network 'nope'; accepted: cigre_lv"),
        (["serve"], "deployment.json not found: run `tegrid chain deploy`"),
        (["oracle"], "deployment.json not found: run `tegrid chain deploy`"),
        (["keeper"], "deployment.json not found: run `tegrid chain deploy`"),
        (["dispatcher"], "deployment.json not found: run `tegrid chain deploy`"),
        (["devices", "simulate"], "deployment.json not found: run `tegrid chain deploy`"),
        (["devices", "simulate", "--count", "2", "--ignore", "3"],
         "--ignore 3 is more than --count 2"),
    ],
)  # fmt: skip
def test_service_commands_fail_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = _run([a.replace("{tmp}", str(tmp_path)) for a in args], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_dispatcher_status_without_a_store_says_so(tmp_path: Path) -> None:
    result = _run(
        ["dispatcher", "status", "--database-url", f"sqlite:///{tmp_path}/x.db"], tmp_path
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: no control store at sqlite:///{tmp_path}/x.db")
    assert not (tmp_path / "x.db").exists()


def test_serve_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    result = _run(["serve", "--port", "99999"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "65535" in result.stderr


def test_serve_refuses_a_network_the_validator_does_not_model(tmp_path: Path) -> None:
    import pandapower as pp
    import pandapower.networks as pn

    net = pn.case33bw()
    pp.create_svc(net, 17, x_l_ohm=1.0, x_cvar_ohm=-10.0, set_vm_pu=1.0,
                  thyristor_firing_angle_degree=130.0)  # fmt: skip
    path = tmp_path / "svc.json"
    pp.to_json(net, str(path))
    env = dict(os.environ, COLUMNS="40", TEGRID_NETWORK=str(path))
    result = subprocess.run(
        [str(TEGRID), "serve"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: network {str(path)!r} has in-service elements the Neural Grid validator does "
        "not model: 1 svc (static var compensator); take them out of service or use another "
        "network"
    ]
