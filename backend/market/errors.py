"""Errors of the market package: root :class:`MarketError`; subclasses also inherit the builtin
they replace. They say what went wrong, not how to answer it: the API's table
(``backend/api/errors.py``) gives each its HTTP status and code. ``reason`` names a specific refusal
(e.g. ``GATE_NOT_REACHED``) where one class covers several; ``field`` the request field at fault.
An unreachable chain is :class:`backend.chain.errors.ChainUnavailableError`, as everywhere."""

from __future__ import annotations

from backend.errors import TegridError


class MarketError(TegridError):
    """Root of every error the market raises on purpose."""

    reason: str | None = None  # a specific refusal's stable name, when the class covers several
    field: str | None = None  # the request field the error is about, when it is one

    def __init__(
        self, message: str, *, reason: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if field is not None:
            self.field = field

    @property
    def message(self) -> str:
        return str(self)


class OrderRejectedError(MarketError, ValueError):
    """An order (or cancellation, or connection request) is refused; the subclass says why."""


class BadSignatureError(OrderRejectedError):
    """The signature is malformed or recovers to another address."""


class WrongDomainError(OrderRejectedError):
    """The typed data names another chain, contract or version."""


class UnknownTraderError(OrderRejectedError):
    """The signer is no registered participant."""


class TraderInactiveError(OrderRejectedError):
    """The signer is registered but deactivated."""


class OrderExpiredError(OrderRejectedError):
    """The order's expiry has passed."""


class IntervalClosedError(OrderRejectedError):
    """The interval no longer takes orders."""


class NonceUsedError(OrderRejectedError):
    """The trader used this nonce before."""


class OverConnectionLimitError(OrderRejectedError):
    """The order's power exceeds the participant's connection limit."""


class InsufficientDepositError(OrderRejectedError):
    """The buyer's free deposit does not cover the order's escrow."""


class AccountOwingError(OrderRejectedError):
    """The trader owes imbalance payments to the balancing account (``EnergyMarket.debtOf``):
    the contract refuses its orders until a deposit pays the debt."""

    def __init__(self, message: str, debt: int) -> None:
        super().__init__(message)
        self.debt = debt


class TooManyOrdersError(OrderRejectedError):
    """The trader already has as many live orders for the interval as one trader may (bounded
    work per interval: no participant can make an interval unrecordable)."""


class InvalidOrderError(OrderRejectedError):
    """The message is malformed (missing field, value out of range)."""


class NotFoundError(MarketError, LookupError):
    """No such order, trade, interval or participant."""


class ConflictError(MarketError):
    """The request is well formed but the state forbids it (e.g. closing an interval twice)."""


class AlreadyConnectedError(ConflictError):
    """The wallet of a connection request is already a participant (registry:
    ``RegistryAlreadyConnected``)."""

    field = "wallet"


class MeterInUseError(ConflictError):
    """The meter key of a connection request is registered to another participant (registry:
    ``RegistryMeterInUse``)."""

    field = "meter"


class ConnectionRequestRefusedError(OrderRejectedError):
    """A plug-and-play connection request is refused (hosting capacity, bus, limits)."""


class UnknownDeviceError(OrderRejectedError):
    """The device is not registered."""

    field = "device"


class DeviceInactiveError(OrderRejectedError):
    """The device is registered but deactivated."""

    field = "device"


class NotDeviceOwnerError(OrderRejectedError):
    """The device belongs to another participant than the offer's provider."""

    field = "device"


class OutOfDeviceLimitsError(OrderRejectedError):
    """A flexibility offer's baseline, or baseline moved by its power, leaves the device's
    [minW, maxW]."""


class StateOfChargeError(OrderRejectedError):
    """A battery's flexibility offer asks for more energy than its reported state of charge holds
    (up) or has room for (down)."""


class WrongBusError(OrderRejectedError):
    """A device must sit at its owner's connection point (registry: ``RegistryDeviceBus``)."""

    field = "busId"


class DeviceInUseError(ConflictError):
    """The device key is already a device, a wallet or a meter key (registry:
    ``RegistryKeyInUse``)."""

    field = "device"


class GridUnavailableError(MarketError):
    """The Neural Grid's worker process died and could not be started again: the interval stays
    closed and uncleared (closing it again retries the clearing)."""


class BatchRevertedError(MarketError):
    """The chain refuses a batch (``recordTrades`` reverts, found by an estimate or mined); the
    message holds the decoded custom error."""


class BatchTooLargeError(BatchRevertedError):
    """A batch needs more gas than a block holds."""


class StoreError(MarketError, RuntimeError):
    """The order book's database cannot be used (unreachable, locked, or at an unknown schema)."""
