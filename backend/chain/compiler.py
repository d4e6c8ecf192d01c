"""The Solidity compiler tegrid uses, made visible to py-solc-x and brownie.

py-solc-x (and brownie through it) treats any executable named ``solc-v<version>`` in the folder
``SOLCX_BINARY_PATH`` as an installed compiler and only ever runs ``--version`` and
``--standard-json``. When no native solc of the pinned version exists, :func:`ensure_compiler`
puts a launcher there for ``solcjs_shim.js`` (solcjs, the official compiler built to WebAssembly,
from npm). A native compiler already in that folder, or on PATH with the right version, is used
as is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from backend.errors import CompileError, ToolchainError
from backend.paths import BROWNIE_CONFIG, REPO_ROOT

SHIM_SCRIPT = Path(__file__).with_name("solcjs_shim.js")
SHIM_MARKER = "# tegrid solcjs launcher"
DEFAULT_SOLCX_DIR = REPO_ROOT / ".solcx"
DOTENV_PATH = REPO_ROOT / ".env"
_VERSION_RE = re.compile(r"Version:\s*(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class CompilerInfo:
    """The compiler py-solc-x will run for the pinned version."""

    version: str
    path: Path
    kind: str  # "native" or "solcjs"


def compiler_settings() -> dict[str, Any]:
    """The ``compiler`` section of brownie-config.yaml (the one place versions are pinned)."""
    data = yaml.safe_load(BROWNIE_CONFIG.read_text()) or {}
    return dict(data.get("compiler", {}))


def pinned_version() -> str:
    """The solc version pinned in brownie-config.yaml."""
    return str(compiler_settings()["solc"]["version"])


def evm_version() -> str:
    return str(compiler_settings().get("evm_version", "shanghai"))


def solcx_dir() -> Path:
    """The folder py-solc-x searches: ``SOLCX_BINARY_PATH``, else the project's ``.solcx``."""
    return Path(os.environ.get("SOLCX_BINARY_PATH") or DEFAULT_SOLCX_DIR)


def _is_shim(path: Path) -> bool:
    try:
        return SHIM_MARKER in path.read_text(errors="ignore")[:400]
    except OSError:
        return False


def executable_version(path: Path | str) -> str | None:
    """The ``X.Y.Z`` a solc executable reports, or None when it cannot be run."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(out)
    return match.group(1) if match else None


def _launcher_text() -> str:
    node = shutil.which("node") or "node"
    return f'#!/bin/sh\n{SHIM_MARKER}\nexec "{node}" "{SHIM_SCRIPT}" "$@"\n'


def ensure_compiler(version: str | None = None) -> CompilerInfo:
    """Make the pinned compiler available to py-solc-x; idempotent, quick when nothing changed."""
    version = version or pinned_version()
    folder = solcx_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"solc-v{version}"
    if target.exists() and not _is_shim(target):
        return CompilerInfo(version, target, "native")
    on_path = shutil.which("solc")
    if on_path and executable_version(on_path) == version:
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(on_path)
        return CompilerInfo(version, target, "native")
    text = _launcher_text()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if executable_version(target) != version:
        raise ToolchainError(
            f"solcjs from npm does not report version {version}; run `npm ci` "
            "(package.json pins the same solc version as brownie-config.yaml)"
        )
    _write_dotenv(folder)
    return CompilerInfo(version, target, "solcjs")


def _write_dotenv(folder: Path) -> None:
    """brownie loads .env (brownie-config.yaml `dotenv`): `brownie compile` finds the folder too."""
    line = f"SOLCX_BINARY_PATH={folder}\n"
    if not DOTENV_PATH.exists() or DOTENV_PATH.read_text() != line:
        DOTENV_PATH.write_text(line)


def compiler_info() -> CompilerInfo | None:
    """What py-solc-x would run for the pinned version, without changing anything."""
    version = pinned_version()
    target = solcx_dir() / f"solc-v{version}"
    if not target.exists():
        return None
    return CompilerInfo(version, target, "solcjs" if _is_shim(target) else "native")


def compile_standard(
    input_json: dict[str, Any], allow_paths: list[str] | None = None
) -> dict[str, Any]:
    """Compile standard JSON with the pinned compiler through py-solc-x.

    Compiler errors (severity ``error``) raise :class:`CompileError` with solc's formatted message.
    """
    # lazy: py-solc-x imports requests (~0.1-0.3 s); `tegrid --help` and `tegrid doctor` load
    # this module for ensure_compiler/compiler_info only
    import solcx  # noqa: PLC0415
    from solcx.exceptions import SolcError  # noqa: PLC0415

    info = ensure_compiler()
    os.environ["SOLCX_BINARY_PATH"] = str(info.path.parent)
    try:
        output: dict[str, Any] = solcx.compile_standard(
            input_json,
            solc_version=info.version,
            allow_paths=allow_paths or [str(REPO_ROOT)],
            base_path=str(REPO_ROOT),
        )
    except SolcError as exc:
        raise CompileError(_solc_error_text(exc)) from None
    return output


def _solc_error_text(exc: Exception) -> str:
    stdout = getattr(exc, "stdout_data", "") or ""
    try:
        errors = json.loads(stdout).get("errors", [])
    except (json.JSONDecodeError, AttributeError):
        return str(getattr(exc, "message", exc))
    formatted = [
        e.get("formattedMessage") or e.get("message", "")
        for e in errors
        if e.get("severity") == "error"
    ]
    return "\n".join(formatted) or str(getattr(exc, "message", exc))


if __name__ == "__main__":
    info = ensure_compiler()
    print(f"solc {info.version} ({info.kind}) at {info.path}")
