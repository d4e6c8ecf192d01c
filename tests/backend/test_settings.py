"""Settings handed to another process through ``TEGRID_*`` variables come back unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from backend.errors import ConfigError
from backend.settings import ANVIL_KEYS, Settings


def test_to_env_round_trips_through_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dataclasses.replace(
        Settings(),
        rpc_url="http://127.0.0.1:9999",
        chain_id=1337,
        oracle_key=ANVIL_KEYS[4],
        broker_url="mqtt://127.0.0.1:18830",
        interval_seconds=300,
        deployment_file=Path("/tmp/tegrid-test/deployment.json"),
        api_port=8123,
        vm_min_pu=0.93,
        vm_max_pu=1.07,
    )
    env = settings.to_env()
    assert env["TEGRID_CHAIN_ID"] == "1337"
    assert env["TEGRID_DEPLOYMENT_FILE"] == "/tmp/tegrid-test/deployment.json"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env() == settings


def test_from_env_reads_the_api_body_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEGRID_API_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("TEGRID_API_MAX_JSON_DEPTH", "8")
    monkeypatch.setenv("TEGRID_API_MAX_INT_DIGITS", "40")
    s = Settings.from_env()
    assert (s.api_max_body_bytes, s.api_max_json_depth, s.api_max_int_digits) == (4096, 8, 40)


@pytest.mark.parametrize(
    "name", ["API_MAX_BODY_BYTES", "API_MAX_JSON_DEPTH", "API_MAX_INT_DIGITS", "INTERVAL_SECONDS"]
)
def test_from_env_refuses_a_limit_that_is_not_positive(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(f"TEGRID_{name}", "0")
    with pytest.raises(ConfigError, match=f"^TEGRID_{name} must be positive$"):
        Settings.from_env()


def test_from_env_reads_the_voltage_band(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEGRID_VM_MIN_PU", "0.95")
    monkeypatch.setenv("TEGRID_VM_MAX_PU", "1.05")
    s = Settings.from_env()
    assert (s.vm_min_pu, s.vm_max_pu) == (0.95, 1.05)
    assert s.grid_limits == {"vm_min_pu": 0.95, "vm_max_pu": 1.05}
    assert Settings().grid_limits == {"vm_min_pu": 0.90, "vm_max_pu": 1.10}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("VM_MIN_PU", "low", "TEGRID_VM_MIN_PU must be a number, got 'low'"),
        ("VM_MIN_PU", "1.0", "TEGRID_VM_MIN_PU must be in [0.5, 1.0) pu, got 1.0"),
        ("VM_MIN_PU", "0.4", "TEGRID_VM_MIN_PU must be in [0.5, 1.0) pu, got 0.4"),
        ("VM_MIN_PU", "nan", "TEGRID_VM_MIN_PU must be in [0.5, 1.0) pu, got nan"),
        ("VM_MAX_PU", "0.99", "TEGRID_VM_MAX_PU must be in (1.0, 1.5] pu, got 0.99"),
        ("VM_MAX_PU", "inf", "TEGRID_VM_MAX_PU must be in (1.0, 1.5] pu, got inf"),
    ],
)
def test_from_env_refuses_a_bad_voltage_band(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"TEGRID_{name}", value)
    with pytest.raises(ConfigError) as err:
        Settings.from_env()
    assert str(err.value) == message
