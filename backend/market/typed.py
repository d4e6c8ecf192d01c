"""EIP-712 typed data the market signs and verifies: orders, cancellations and connection requests.

The ``Order`` struct and the domain ("tegrid EnergyMarket", version "1", chain id, market address)
are exactly what ``EnergyMarket`` verifies on chain, so a wallet signing the template from
``GET /orders/eip712`` (``eth_signTypedData_v4``, eth-account, ``cast wallet sign --data``) signs
what the contract checks. ``Cancel`` and ``ConnectionRequest`` are checked off chain only (by this
backend).

The hashing and recovery are :mod:`backend.chain.eip712`'s fast path (one for the whole backend);
this module names the market's domains and turns its errors into the market's: a malformed message
is :class:`InvalidOrderError`, a bad signature :class:`BadSignatureError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from backend.chain import eip712
from backend.chain.errors import SignatureError, TypedDataError
from backend.chain.protocol import (
    DOMAIN_VERSION,
    FLEX_DOMAIN_NAME,
    MARKET_DOMAIN_NAME,
    REGISTRY_DOMAIN_NAME,
)
from backend.market.errors import BadSignatureError, InvalidOrderError

P = ParamSpec("P")
R = TypeVar("R")


def _market_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SignatureError as exc:
            raise BadSignatureError(str(exc)) from None
        except TypedDataError as exc:
            raise InvalidOrderError(str(exc)) from None

    return call


class Domain(eip712.Domain):
    """:class:`backend.chain.eip712.Domain` raising the market's errors."""

    @_market_errors
    def digest(self, primary_type: str, message: Mapping[str, Any]) -> bytes:
        return super().digest(primary_type, message)


def market_domain(chain_id: int, market_address: str) -> Domain:
    return Domain(MARKET_DOMAIN_NAME, DOMAIN_VERSION, chain_id, market_address)


def registry_domain(chain_id: int, registry_address: str) -> Domain:
    return Domain(REGISTRY_DOMAIN_NAME, DOMAIN_VERSION, chain_id, registry_address)


def flex_domain(chain_id: int, flex_address: str) -> Domain:
    """FlexibilityMarket's domain: flexibility offers and their cancellations are signed in it."""
    return Domain(FLEX_DOMAIN_NAME, DOMAIN_VERSION, chain_id, flex_address)


address_bytes = _market_errors(eip712.address_bytes)
bytes32 = _market_errors(eip712.bytes32)
split_signature = _market_errors(eip712.split_signature)
canonical_signature = _market_errors(eip712.canonical_signature)
recover = _market_errors(eip712.recover)


def require_signer(
    digest: bytes,
    signature: str,
    expected: str,
    role: str,
    subject: str = "signature",
    field: str | None = None,
) -> None:
    """``signature`` over ``digest`` must recover to ``expected`` (the ``role``: trader,
    provider, owner, device); else ``BadSignatureError`` naming both addresses (and ``field``,
    where the body has several signatures)."""
    try:
        signer = recover(digest, signature)
    except BadSignatureError as exc:
        if field is None:
            raise
        raise BadSignatureError(str(exc), field=field) from None
    if signer != expected:
        raise BadSignatureError(
            f"{subject} recovers to {signer}, not the {role} {expected} "
            "(tampered message, another chain id or another contract)",
            field=field,
        )
