"""Errors of the oracle package: root :class:`OracleError`. An unreachable chain is
:class:`backend.chain.errors.ChainUnavailableError`, as everywhere."""

from __future__ import annotations

from backend.errors import TegridError


class OracleError(TegridError):
    """Root of the errors raised by ``backend.oracle``."""


class BatchRefusedError(OracleError, RuntimeError):
    """The whole batch would revert (``reason`` is the decoded custom error, e.g.
    MeterReadingsIntervalNotEnded).
    """

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
