"""Errors of the market package. Each carries a stable machine ``code`` and an HTTP-ish ``status``;
the API layer alone turns them into responses (``{"detail": {"code": ..., "message": ...}}``)."""

from __future__ import annotations

from backend.errors import TegridError


class MarketError(TegridError):
    """Root of every error the market raises on purpose."""

    code = "MARKET_ERROR"
    status = 400
    field: str | None = None  # the request field the error is about, when it is one

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if field is not None:
            self.field = field

    @property
    def message(self) -> str:
        return str(self)


class OrderRejected(MarketError, ValueError):
    """An order (or cancellation, or connection request) is refused; ``code`` says why."""

    status = 422


class BadSignature(OrderRejected):
    code = "BAD_SIGNATURE"
    status = 401


class WrongDomain(OrderRejected):
    code = "WRONG_DOMAIN"
    status = 400


class UnknownTrader(OrderRejected):
    code = "UNKNOWN_TRADER"
    status = 403


class TraderInactive(OrderRejected):
    code = "TRADER_INACTIVE"
    status = 403


class OrderExpired(OrderRejected):
    code = "ORDER_EXPIRED"
    status = 422


class IntervalClosed(OrderRejected):
    code = "INTERVAL_CLOSED"
    status = 409


class NonceUsed(OrderRejected):
    code = "NONCE_USED"
    status = 409


class OverConnectionLimit(OrderRejected):
    code = "OVER_CONNECTION_LIMIT"
    status = 422


class InsufficientDeposit(OrderRejected):
    code = "INSUFFICIENT_DEPOSIT"
    status = 402


class TooManyOrders(OrderRejected):
    """The trader already has as many live orders for the interval as one trader may (bounded
    work per interval: no participant can make an interval unrecordable)."""

    code = "TOO_MANY_ORDERS"
    status = 422


class InvalidOrder(OrderRejected):
    code = "INVALID_ORDER"
    status = 422


class NotFound(MarketError, LookupError):
    code = "NOT_FOUND"
    status = 404


class Conflict(MarketError):
    """The request is well formed but the state forbids it (e.g. closing an interval twice)."""

    code = "CONFLICT"
    status = 409


class AlreadyConnected(Conflict):
    """The wallet of a connection request is already a participant (registry:
    ``RegistryAlreadyConnected``)."""

    code = "ALREADY_CONNECTED"
    field = "wallet"


class MeterInUse(Conflict):
    """The meter key of a connection request is registered to another participant (registry:
    ``RegistryMeterInUse``)."""

    code = "METER_IN_USE"
    field = "meter"


class ConnectionRefused(OrderRejected):
    """A plug-and-play connection request is refused (hosting capacity, bus, limits)."""

    code = "CONNECTION_REFUSED"
    status = 422


class LedgerUnavailable(MarketError, ConnectionError):
    """The chain could not be reached or refused a transaction in a way the caller cannot fix."""

    code = "LEDGER_UNAVAILABLE"
    status = 503


class GridUnavailable(MarketError):
    """The Neural Grid's worker process died and could not be started again: the interval stays
    closed and uncleared (closing it again retries the clearing)."""

    code = "GRID_UNAVAILABLE"
    status = 503


class BatchReverted(MarketError):
    """The chain refuses a batch (``recordTrades`` reverts, found by an estimate or mined); the
    message holds the decoded custom error."""

    code = "BATCH_REVERTED"
    status = 409


class BatchTooLarge(BatchReverted):
    """A batch needs more gas than a block holds."""

    code = "BATCH_TOO_LARGE"
