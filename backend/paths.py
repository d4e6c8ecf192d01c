"""Where the project's files are: the repository root and the folders the tools use."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_BIN = REPO_ROOT / "node_modules" / ".bin"
BUILD_DIR = REPO_ROOT / "build"
BROWNIE_CONFIG = REPO_ROOT / "brownie-config.yaml"
