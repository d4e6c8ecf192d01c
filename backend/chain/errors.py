"""Errors of the chain layer: root :class:`LedgerError`; subclasses also inherit the builtin."""

from __future__ import annotations

from backend.errors import TegridError


class LedgerError(TegridError):
    """Root of every error the chain client raises on purpose."""


class ChainUnavailableError(LedgerError, ConnectionError):
    """The JSON-RPC endpoint cannot be reached."""


class TypedDataError(LedgerError, ValueError):
    """A typed-data message does not fit its EIP-712 struct (missing field, value out of range,
    malformed address or bytes32)."""


class SignatureError(TypedDataError):
    """A signature is malformed, malleable (high s) or recovers to no key."""


class DeploymentNotFoundError(LedgerError, FileNotFoundError):
    """No deployment file, or it names another chain / lacks a contract."""


class ArtifactNotFoundError(LedgerError, FileNotFoundError):
    """A compiled artifact (build/contracts/<Name>.json) is missing: run `brownie compile`."""


class TransactionRevertedError(LedgerError, RuntimeError):
    """A transaction or call reverted; ``error_name``/``error_args`` hold the custom error."""

    def __init__(
        self, message: str, error_name: str | None = None, error_args: tuple[object, ...] = ()
    ) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args
        self.gas_exhausted = False  # mined and reverted having used all its gas (out of gas)


class TransactionTimeoutError(LedgerError, TimeoutError):
    """A transaction was not mined in time."""


class NonceGapError(TransactionTimeoutError):
    """A sent transaction waits behind a nonce the chain has not reached (the chain rolled back
    below the sender's cached nonce): it can never be mined as things stand."""

    def __init__(self, message: str, tx_nonce: int, chain_nonce: int) -> None:
        super().__init__(message)
        self.tx_nonce = tx_nonce
        self.chain_nonce = chain_nonce


class TransactionDroppedError(TransactionTimeoutError):
    """A sent transaction is neither mined nor known to the node any more (lost in a restart or
    rollback of the chain): sending it again cannot execute it twice."""


class AmountError(LedgerError, ValueError):
    """A token amount typed by a person is not a positive decimal with at most the token's
    decimals (or is more than a market balance can hold)."""


class InsufficientTokensError(LedgerError, ValueError):
    """The wallet holds fewer tokens than it asks to deposit."""
