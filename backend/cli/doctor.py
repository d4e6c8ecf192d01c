"""``tegrid doctor``: is this machine ready for tegrid? Each check names what is missing."""

from __future__ import annotations

import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata

from rich.console import Console
from rich.table import Table

from backend.chain import compiler
from backend.chain.heads import HeadWatcher
from backend.net import url_reachable
from backend.paths import NODE_BIN
from backend.settings import Settings

PACKAGES = (
    "eth-brownie",
    "web3",
    "py-solc-x",
    "pandapower",
    "numpy",
    "fastapi",
    "coincurve",
    "paho-mqtt",
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    essential: bool = True
    warning: bool = False  # not ok, but nothing is missing: show "warn", not "absent"


def _tool_version(exe: str, *args: str) -> str | None:
    path = shutil.which(exe, path=f"{NODE_BIN}:{shutil.os.environ.get('PATH', '')}")  # type: ignore[attr-defined]
    if not path:
        return None
    try:
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    py = platform.python_version()
    checks.append(
        Check("python", py.startswith("3.11"), py, "install Python 3.11 (pyenv install 3.11)")
    )
    for name in PACKAGES:
        try:
            checks.append(Check(name, True, metadata.version(name)))
        except metadata.PackageNotFoundError:
            checks.append(Check(name, False, "not installed", "run `make setup`"))
    info = compiler.compiler_info()
    if info is None:
        checks.append(
            Check("solc", False, f"{compiler.pinned_version()} not installed", "run `make setup`")
        )
    else:
        reported = compiler.executable_version(info.path)
        checks.append(
            Check(
                "solc",
                reported == info.version,
                f"{reported or 'does not run'} ({info.kind}, {info.path})",
                "run `make setup` (needs node and `npm ci`)",
            )
        )
    anvil = _tool_version("anvil", "--version")
    checks.append(
        Check("anvil", anvil is not None, anvil or "not found", "run `npm ci` (@foundry-rs/anvil)")
    )
    rpc_ok = url_reachable(settings.rpc_url, 8545, timeout_s=1.0)
    checks.append(
        Check(
            "chain",
            rpc_ok,
            f"{settings.rpc_url} {'reachable' if rpc_ok else 'not reachable'}",
            "start one with `tegrid chain start` (or set TEGRID_RPC_URL)",
            essential=False,
        )
    )
    if rpc_ok:
        checks.append(chain_head_check(settings))
    broker_ok = url_reachable(settings.broker_url, 1883, timeout_s=1.0)
    checks.append(
        Check(
            "mqtt broker",
            broker_ok,
            f"{settings.broker_url} {'reachable' if broker_ok else 'not reachable'}",
            "apt-get install mosquitto && mosquitto -d (or set TEGRID_BROKER_URL); "
            "the demo falls back to an in-process transport",
            essential=False,
        )
    )
    return checks


ROLLBACK_RECENT_S = 3600.0  # a rollback noticed within this long is reported


def chain_head_check(settings: Settings) -> Check:
    """Has the chain head gone backwards? Compares the chain with the head the tegrid processes
    (oracle, keeper, earlier doctor runs) last saw (``TEGRID_CHAIN_HEAD_FILE``) and lists the
    rollbacks they noticed in the last hour."""
    # lazy: web3 (~0.5 s), not for `tegrid --help`
    from web3 import Web3  # noqa: PLC0415

    hint = (
        "the chain lost blocks (Anvil restarted from an older --state file, or a reorg): the "
        "oracle and the keeper re-check their work; check recorded batches"
    )
    watcher = HeadWatcher(
        Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 3})),
        state_file=settings.chain_head_file,
    )
    try:
        watcher.check(force=True)
    except Exception as exc:
        return Check("chain head", False, f"cannot read the head: {exc}", essential=False)
    recent = [r for r in watcher.rollbacks if time.time() - r.detected_at < ROLLBACK_RECENT_S]
    if recent:
        detail = recent[-1].describe()
        if len(recent) > 1:
            detail += f" ({len(recent)} rollbacks in the last hour)"
        return Check("chain head", False, detail, hint, essential=False, warning=True)
    return Check("chain head", True, f"block {watcher.head}, no rollback seen")


def report(checks: list[Check], console: Console) -> bool:
    table = Table(title="tegrid doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("hint")
    for c in checks:
        status = (
            "[green]ok[/]"
            if c.ok
            else "[red]missing[/]"
            if c.essential
            else "[yellow]warn[/]"
            if c.warning
            else "[yellow]absent[/]"
        )
        table.add_row(c.name, status, c.detail, "" if c.ok else c.hint)
    console.print(table)
    return all(c.ok for c in checks if c.essential)
