"""`tegrid doctor` exits 0 on a set-up machine and names a missing piece when one is hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TEGRID = Path(sys.executable).with_name("tegrid")


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TEGRID), "doctor"], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_doctor_set_up_machine_exits_zero() -> None:
    result = _doctor(dict(os.environ, COLUMNS="200"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0.8.28" in result.stdout
    assert "anvil Version: 1.7.1" in result.stdout


def test_doctor_missing_compiler_is_named(tmp_path: Path) -> None:
    env = dict(os.environ, COLUMNS="200", SOLCX_BINARY_PATH=str(tmp_path / "empty"))
    result = _doctor(env)
    assert result.returncode == 1
    line = next(
        line for line in result.stdout.splitlines() if "solc" in line and "py-solc-x" not in line
    )
    assert "missing" in line
    assert "0.8.28 not installed" in line
    assert "make setup" in line
