"""Every daemon says what it connects to - chain, broker, database, deployment - one line each on
stderr, before it starts working: the processes run as the README starts them, on a real Anvil
with the contracts deployed."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backend.chain.contracts import Deployment
from backend.chain.deploy import deploy_from_settings
from backend.devtools.anvil import AnvilProcess, is_up
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.net import free_port
from backend.settings import ANVIL_KEYS, Settings

pytestmark = pytest.mark.e2e
TEGRID = Path(sys.executable).with_name("tegrid")
ORACLE = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"  # ANVIL_KEYS[9], TEGRID_ORACLE_KEY's default
KEEPER = "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955"  # ANVIL_KEYS[7], TEGRID_KEEPER_KEY's default


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Deployment]]:
    folder = tmp_path_factory.mktemp("startup")
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(
            Settings(), rpc_url=anvil.url, deployment_file=folder / "deployment.json"
        )
        deployment = deploy_from_settings(settings)
        env = dict(
            os.environ,
            COLUMNS="60",  # the lines must not wrap on a narrow terminal
            TEGRID_RPC_URL=anvil.url,
            TEGRID_DEPLOYMENT_FILE=str(settings.deployment_file),
            TEGRID_BROKER_URL=f"mqtt://127.0.0.1:{free_port()}",  # nothing listens there
            TEGRID_DATABASE_URL=f"sqlite:///{folder / 'tegrid.db'}",
            TEGRID_ORACLE_DATABASE_URL=f"sqlite:///{folder / 'oracle.db'}",
            TEGRID_CHAIN_HEAD_FILE=str(folder / "chain-head.json"),
            TEGRID_ADMIN_KEY=ANVIL_KEYS[0],
            TEGRID_API_PORT=str(free_port()),  # meters read trades there; nothing listens
        )
        yield env, deployment


def _lines_until(args: list[str], env: dict[str, str], want: int, tmp: Path) -> list[str]:
    """Start ``tegrid <args>``, return its first ``want`` start-up lines, then stop it."""
    log = tmp / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(TEGRID), *args], env=env, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            prefix = f"{args[0]}: "
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith(prefix)]
            if len(lines) >= want or proc.poll() is not None:
                return lines
            time.sleep(0.1)
        raise AssertionError(f"no start-up lines from tegrid {args[0]}: {log.read_text()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _market(env: dict[str, str], deployment: Deployment) -> str:
    return (
        f"{env['TEGRID_DEPLOYMENT_FILE']} (EnergyMarket {deployment.contracts['EnergyMarket']}, "
        f"chain id {deployment.chain_id})"
    )


def test_keeper_says_where_before_its_first_round(
    stack: tuple[dict[str, str], Deployment], tmp_path: Path
) -> None:
    env, deployment = stack
    lines = _lines_until(["keeper", "--poll-seconds", "5"], env, 3, tmp_path)
    assert lines == [
        f"keeper: chain {env['TEGRID_RPC_URL']}, settling as {KEEPER}",
        f"keeper: deployment {_market(env, deployment)}",
        f"keeper: events from block {deployment.block}, a round every 5 s",
    ]


def test_oracle_says_where_before_connecting(
    stack: tuple[dict[str, str], Deployment], tmp_path: Path
) -> None:
    env, deployment = stack
    lines = _lines_until(["oracle"], env, 4, tmp_path)
    assert lines == [
        f"oracle: chain {env['TEGRID_RPC_URL']}, submitting as {ORACLE}",
        f"oracle: broker {env['TEGRID_BROKER_URL']} as client 'tegrid-oracle'",
        f"oracle: database {env['TEGRID_ORACLE_DATABASE_URL']}",
        f"oracle: deployment {_market(env, deployment)}",
    ]
    # the broker does not answer: the oracle then fails in one line of its own
    assert "unreachable" in (tmp_path / "stderr.log").read_text()


def test_meters_say_where_before_publishing(
    stack: tuple[dict[str, str], Deployment], tmp_path: Path
) -> None:
    env, deployment = stack
    lines = _lines_until(["meters", "simulate", "--count", "2"], env, 4, tmp_path)
    assert lines == [
        f"meters: chain {env['TEGRID_RPC_URL']}",
        f"meters: broker {env['TEGRID_BROKER_URL']}",
        f"meters: deployment {_market(env, deployment)}",
        f"meters: market trades from http://127.0.0.1:{env['TEGRID_API_PORT']}",
    ]


def test_serve_says_where_before_serving(
    stack: tuple[dict[str, str], Deployment], tmp_path: Path
) -> None:
    env, deployment = stack
    port = free_port()
    lines = _lines_until(["serve", "--port", str(port), "--no-keeper"], env, 6, tmp_path)
    assert lines == [
        f"serve: chain {env['TEGRID_RPC_URL']}",
        f"serve: deployment {_market(env, deployment)}",
        f"serve: database {env['TEGRID_DATABASE_URL']}",
        f"serve: broker {env['TEGRID_BROKER_URL']} (reported by /health)",
        f"serve: api http://127.0.0.1:{port} (OpenAPI at /docs)",
        "serve: keeper off (--no-keeper): run `tegrid keeper`",
    ]


def test_oracle_without_the_oracle_role_refuses_to_start_in_one_line(
    stack: tuple[dict[str, str], Deployment], tmp_path: Path
) -> None:
    env, deployment = stack
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    with MosquittoBroker() as broker:
        no_role = dict(env, TEGRID_ORACLE_KEY=ANVIL_KEYS[5], TEGRID_BROKER_URL=broker.url)
        done = subprocess.run(
            [str(TEGRID), "oracle"], env=no_role, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: 0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc (TEGRID_ORACLE_KEY) does not hold "
        "ORACLE_ROLE in the ParticipantRegistry "
        f"{deployment.contracts['ParticipantRegistry']}: MeterReadings would refuse every "
        "batch; deploy with this TEGRID_ORACLE_KEY or have the admin grant it the role"
    ]


def test_chain_start_stops_its_anvil_on_sigterm(tmp_path: Path) -> None:
    """Anvil runs in a session of its own: ``kill <tegrid chain start>`` must not orphan it."""
    url = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, TEGRID_RPC_URL=url, TEGRID_CHAIN_STATE_FILE=str(tmp_path / "state.json"))
    log = tmp_path / "chain.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TEGRID), "chain", "start"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    anvil: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 60
        while anvil is None and proc.poll() is None and time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children()
            if children and is_up(url):
                (anvil,) = children
            time.sleep(0.2)
        assert anvil is not None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        anvil.wait(timeout=20)  # gone (psutil.TimeoutExpired otherwise)
        assert not is_up(url)
        assert (tmp_path / "state.json").exists()  # dumped on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if anvil is not None and anvil.is_running():
            anvil.kill()
