"""Root exceptions of the backend; only the API and CLI turn them into user-facing errors."""

from __future__ import annotations


class TegridError(Exception):
    """Root of every error tegrid raises on purpose."""


class ConfigError(TegridError, ValueError):
    """A setting (environment variable, file, CLI option) is missing or malformed."""


class ToolchainError(TegridError, RuntimeError):
    """A build tool (compiler, node, anvil) is missing or failed."""


class CompileError(ToolchainError):
    """The Solidity compiler rejected the sources; the message is the compiler's own."""
