"""The API's errors and the one table that turns every domain error into an HTTP answer.

Domain exceptions say what went wrong; :data:`HTTP_ERRORS` says how the API answers it: status and
a stable machine ``code`` (``{"detail": {"code": ..., "message": ...}}``). An error takes the entry
of its nearest listed class (``type(exc).__mro__``). A market error naming a specific refusal
(``reason``, e.g. ``GATE_NOT_REACHED``) answers with that as its code.
"""

from __future__ import annotations

from backend.chain.errors import (
    AmountError,
    ChainUnavailableError,
    InsufficientTokensError,
    LedgerError,
)
from backend.errors import CompileError, ConfigError, TegridError, ToolchainError
from backend.iot.control_store import ControlStoreError
from backend.iot.errors import IotError, MessageError, TransportError
from backend.keeper.errors import KeeperError
from backend.market.errors import (
    AccountOwingError,
    AlreadyConnectedError,
    BadSignatureError,
    BatchRevertedError,
    BatchTooLargeError,
    ConflictError,
    ConnectionRequestRefusedError,
    DeviceInactiveError,
    DeviceInUseError,
    GridUnavailableError,
    InsufficientDepositError,
    IntervalClosedError,
    InvalidOrderError,
    MarketError,
    MeterInUseError,
    NonceUsedError,
    NotDeviceOwnerError,
    NotFoundError,
    OrderExpiredError,
    OrderRejectedError,
    OutOfDeviceLimitsError,
    OverConnectionLimitError,
    StateOfChargeError,
    StoreError,
    TooManyOrdersError,
    TraderInactiveError,
    UnknownDeviceError,
    UnknownTraderError,
    WrongBusError,
    WrongDomainError,
)
from backend.oracle.errors import BatchRefusedError, OracleError
from grid.errors import (
    BaseStateError,
    GridError,
    NetworkFileError,
    TradeInputError,
    UnknownNetworkError,
)


class ApiError(TegridError):
    """Root of the errors the API raises itself."""


class BodyRefusedError(ApiError, ValueError):
    """A body broke one of the request-body limits; ``status`` and ``code`` go into the problem
    (refused by the middleware, before any route)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


HTTP_ERRORS: dict[type[BaseException], tuple[int, str]] = {
    # market
    MarketError: (400, "MARKET_ERROR"),
    OrderRejectedError: (422, "MARKET_ERROR"),
    BadSignatureError: (401, "BAD_SIGNATURE"),
    WrongDomainError: (400, "WRONG_DOMAIN"),
    UnknownTraderError: (403, "UNKNOWN_TRADER"),
    TraderInactiveError: (403, "TRADER_INACTIVE"),
    OrderExpiredError: (422, "ORDER_EXPIRED"),
    IntervalClosedError: (409, "INTERVAL_CLOSED"),
    NonceUsedError: (409, "NONCE_USED"),
    OverConnectionLimitError: (422, "OVER_CONNECTION_LIMIT"),
    InsufficientDepositError: (402, "INSUFFICIENT_DEPOSIT"),
    AccountOwingError: (402, "ACCOUNT_OWING"),
    TooManyOrdersError: (422, "TOO_MANY_ORDERS"),
    InvalidOrderError: (422, "INVALID_ORDER"),
    ConnectionRequestRefusedError: (422, "CONNECTION_REFUSED"),
    UnknownDeviceError: (422, "UNKNOWN_DEVICE"),
    DeviceInactiveError: (403, "DEVICE_INACTIVE"),
    NotDeviceOwnerError: (403, "NOT_DEVICE_OWNER"),
    OutOfDeviceLimitsError: (422, "OUT_OF_DEVICE_LIMITS"),
    StateOfChargeError: (422, "STATE_OF_CHARGE"),
    WrongBusError: (422, "WRONG_BUS"),
    NotFoundError: (404, "NOT_FOUND"),
    ConflictError: (409, "CONFLICT"),
    AlreadyConnectedError: (409, "ALREADY_CONNECTED"),
    MeterInUseError: (409, "METER_IN_USE"),
    DeviceInUseError: (409, "DEVICE_IN_USE"),
    GridUnavailableError: (503, "GRID_UNAVAILABLE"),
    BatchRevertedError: (409, "BATCH_REVERTED"),
    BatchTooLargeError: (409, "BATCH_TOO_LARGE"),
    StoreError: (503, "STORE_ERROR"),
    # chain
    ChainUnavailableError: (503, "LEDGER_UNAVAILABLE"),
    LedgerError: (503, "LEDGER_ERROR"),
    AmountError: (422, "INVALID_AMOUNT"),
    InsufficientTokensError: (409, "INSUFFICIENT_TOKENS"),
    # grid
    GridError: (422, "GRID_GRID"),
    UnknownNetworkError: (422, "GRID_UNKNOWNNETWORK"),
    NetworkFileError: (422, "GRID_NETWORKFILE"),
    TradeInputError: (422, "GRID_TRADEINPUT"),
    BaseStateError: (422, "GRID_BASESTATE"),
    # oracle, iot, keeper
    OracleError: (400, "ORACLE"),
    BatchRefusedError: (400, "BATCHREFUSED"),
    IotError: (400, "IOT"),
    ControlStoreError: (503, "CONTROL_STORE_ERROR"),
    MessageError: (400, "MESSAGE"),
    TransportError: (400, "TRANSPORT"),
    KeeperError: (400, "KEEPER"),
    # shared
    TegridError: (400, "TEGRID"),
    ConfigError: (400, "CONFIG"),
    ToolchainError: (400, "TOOLCHAIN"),
    CompileError: (400, "COMPILE"),
}


def status_and_code(exc: BaseException) -> tuple[int, str]:
    """(status, code) of a domain error: its nearest class in :data:`HTTP_ERRORS`."""
    for cls in type(exc).__mro__:
        hit = HTTP_ERRORS.get(cls)
        if hit is not None:
            status, code = hit
            reason = getattr(exc, "reason", None) if isinstance(exc, MarketError) else None
            return status, reason or code
    return 400, "BAD_REQUEST"
