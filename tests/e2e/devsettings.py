"""Settings of a dev stack in a test's own folder on a test's own Anvil (shared by e2e suites)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from backend.settings import Settings


def dev_settings(tmp: Path, rpc_url: str) -> Settings:
    return dataclasses.replace(
        Settings(),
        rpc_url=rpc_url,
        deployment_file=tmp / "deployment.json",
        chain_state_file=tmp / "anvil-state.json",
        database_url=f"sqlite:///{tmp / 'book.db'}",
    )
