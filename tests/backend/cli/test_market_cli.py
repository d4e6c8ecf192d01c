"""``tegrid market ...`` refuses bad input, and an API that does not answer, in one line on
stderr (exit 2: the command line is wrong; exit 1: the market could not be reached or refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.net import free_port
from backend.settings import ANVIL_KEYS

TEGRID = Path(sys.executable).with_name("tegrid")
KEY = ANVIL_KEYS[1]


def _run(args: list[str], tmp_path: Path, port: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEGRID_")}
    env.update(
        COLUMNS="40",  # the error line must not wrap
        TEGRID_API_PORT=str(port or free_port()),  # nothing listens there
        TEGRID_DEPLOYMENT_FILE=str(tmp_path / "deployment.json"),
    )
    (tmp_path / "deployment.json").write_text(
        '{"chain_id": 31337, "block": 1, "interval_seconds": 900, "contracts": {"EnergyMarket": '
        '"0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9"}}'
    )
    return subprocess.run(
        [str(TEGRID), "market", *args], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip


ORDER = ["order", "--key", KEY, "--energy-wh", "1000", "--price", "100000", "--interval", "7"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([*ORDER, "--side", "hold"], 2, "error: --side must be sell or buy, got 'hold'"),
        ([*ORDER, "--side", "sell", "--counterparty", "0x12"], 2,
         "error: --counterparty must be a 0x address, got '0x12'"),
        (["order", "--key", "0x12", "--side", "buy", "--energy-wh", "1", "--price", "1"], 2,
         "error: a key must be 0x + 64 hex digits or the path of a keystore file"),
        ([*ORDER, "--side", "sell"], 1,
         "error: the market refused the sell order: no market API answering at "
         "http://127.0.0.1:{port} (ConnectError): is `tegrid serve` running there?"),
        (["close", "--interval", "7"], 1,
         "error: cannot close interval 7: no market API answering at "
         "http://127.0.0.1:{port} (ConnectError): is `tegrid serve` running there?"),
        (["next-interval"], 1, "error: cannot find the next open interval: no market API "
         "answering at http://127.0.0.1:{port} (ConnectError): is `tegrid serve` running there?"),
    ],
)  # fmt: skip
def test_market_commands_fail_in_one_line(
    args: list[str], code: int, message: str, tmp_path: Path
) -> None:
    port = free_port()
    result = _run(args, tmp_path, port)
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == message.format(port=port)


def test_trades_wait_refuses_a_negative_time(tmp_path: Path) -> None:
    result = _run(["trades", "--interval", "7", "--wait", "-1"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
