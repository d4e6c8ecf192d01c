"""Settings handed to another process through ``TEGRID_*`` variables come back unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

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
    )
    env = settings.to_env()
    assert env["TEGRID_CHAIN_ID"] == "1337"
    assert env["TEGRID_DEPLOYMENT_FILE"] == "/tmp/tegrid-test/deployment.json"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env() == settings
