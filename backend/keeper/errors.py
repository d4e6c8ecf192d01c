"""Errors of the keeper package: root :class:`KeeperError`."""

from __future__ import annotations

from backend.errors import TegridError


class KeeperError(TegridError, RuntimeError):
    """The keeper could not rebuild or settle an interval."""
