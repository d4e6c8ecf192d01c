"""Errors of the IoT package: root :class:`IotError`; subclasses also inherit the builtin."""

from __future__ import annotations

from backend.errors import TegridError


class IotError(TegridError):
    """Root of the errors raised by ``backend.iot``."""


class MessageError(IotError, ValueError):
    """A meter message is malformed or fails a check; ``reason`` is a short stable label for
    counting.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransportError(IotError, ConnectionError):
    """The broker is unreachable or refused us."""
