"""When a receipt counts as final, and how a sender waits for one without hanging.

Every component that sends or reads its own work back from the chain uses these helpers, so one
setting (``TEGRID_CONFIRMATIONS``) decides for all of them: a receipt is final once its block has
``confirmations`` blocks on top of it and is still the chain's block at that height (0: mined is
final, fine on Anvil). A chain can still roll back below that (Anvil restarted from an older state
file); :mod:`backend.chain.heads` notices it and the components re-check their recent work.

:func:`wait_for_receipt` also notices the two ways a transaction can never be mined after a
rollback, instead of waiting out the whole timeout: its nonce lies beyond the sender's count on the
chain (a gap the node will not fill), or the node no longer knows it at all.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from hexbytes import HexBytes
from web3.exceptions import TransactionNotFound
from web3.types import RPCEndpoint, TxReceipt

from backend.chain.errors import NonceGapError, TransactionDroppedError, TransactionTimeoutError
from backend.errors import ConfigError

log = logging.getLogger("tegrid.chain")

# A gap or an unknown transaction must persist this long before it counts: another process sending
# from the same key fills a transient gap within milliseconds; a node may take a moment to index.
STUCK_GRACE_S = 1.0


def configured_confirmations() -> int:
    """``TEGRID_CONFIRMATIONS`` (default 0): the one place every component reads it from."""
    raw = os.environ.get("TEGRID_CONFIRMATIONS", "0")
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"TEGRID_CONFIRMATIONS must be an integer, got {raw!r}") from None
    if value < 0:
        raise ConfigError("TEGRID_CONFIRMATIONS must be >= 0")
    return value


def configured_receipt_timeout_s() -> float:
    """``TEGRID_RECEIPT_TIMEOUT_SECONDS`` (default 120): how long a sender waits for a receipt."""
    raw = os.environ.get("TEGRID_RECEIPT_TIMEOUT_SECONDS", "120")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"TEGRID_RECEIPT_TIMEOUT_SECONDS must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError("TEGRID_RECEIPT_TIMEOUT_SECONDS must be positive")
    return value


def final_block(head: int, confirmations: int) -> int:
    """The highest block number that counts as final with the chain head at ``head``."""
    return head - confirmations


def is_final(block_number: int, head: int, confirmations: int) -> bool:
    return block_number <= final_block(head, confirmations)


def _hex(tx_hash: Any) -> str:
    return HexBytes(tx_hash).to_0x_hex()


def wait_for_receipt(
    w3: Any,
    tx_hash: Any,
    *,
    timeout_s: float,
    confirmations: int = 0,
    sender: str | None = None,
    nonce: int | None = None,
    poll_s: float = 0.05,
) -> TxReceipt:
    """The receipt of ``tx_hash`` once final.

    Raises :class:`NonceGapError` when the transaction's nonce stays above the sender's pending
    count on the chain, :class:`TransactionDroppedError` when the node stops knowing the
    transaction (both after :data:`STUCK_GRACE_S`), :class:`TransactionTimeoutError` at
    ``timeout_s``. ``sender``/``nonce`` default to the transaction's own."""
    deadline = time.monotonic() + timeout_s
    stuck_since: float | None = None
    next_check = time.monotonic() + STUCK_GRACE_S / 2
    while True:
        try:
            receipt: TxReceipt | None = w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            receipt = None
        if receipt is not None and receipt.get("blockNumber") is not None:
            if confirmations == 0:
                return receipt
            number = int(receipt["blockNumber"])
            if is_final(number, int(w3.eth.block_number), confirmations):
                block = w3.eth.get_block(number)
                if bytes(block["hash"]) == bytes(receipt["blockHash"]):
                    return receipt
                # the receipt's block was replaced: wait for the transaction to be mined again
        now = time.monotonic()
        if receipt is None and now >= next_check:
            next_check = now + STUCK_GRACE_S / 2
            stuck = _stuck(w3, tx_hash, sender, nonce)
            if stuck is None:
                stuck_since = None
            elif stuck_since is None:
                stuck_since = now
            elif now - stuck_since >= STUCK_GRACE_S:
                raise stuck
        if now >= deadline:
            raise TransactionTimeoutError(
                f"transaction {_hex(tx_hash)} not mined (or not final) within {timeout_s:g} s"
            )
        time.sleep(poll_s)


def _stuck(
    w3: Any, tx_hash: Any, sender: str | None, nonce: int | None
) -> TransactionTimeoutError | None:
    """Why ``tx_hash`` cannot be mined now, or None when it still can."""
    try:
        tx = w3.eth.get_transaction(tx_hash)
    except TransactionNotFound:
        return TransactionDroppedError(f"transaction {_hex(tx_hash)} is unknown to the node")
    if tx.get("blockNumber") is not None:
        return None  # mined meanwhile; the receipt follows
    sender = sender or str(tx["from"])
    nonce = int(tx["nonce"]) if nonce is None else nonce
    count = int(w3.eth.get_transaction_count(sender, "pending"))
    if nonce > count:
        return NonceGapError(
            f"transaction {_hex(tx_hash)} has nonce {nonce} but {sender} is at {count} on chain",
            tx_nonce=nonce,
            chain_nonce=count,
        )
    return None


def drop_pooled(w3: Any, tx_hash: Any, sender: str) -> bool:
    """Remove a transaction stuck behind a nonce gap from the node's pool, so it cannot run later
    when the sender's nonces catch up (it would execute a second time). Development nodes only
    (Anvil: ``anvil_dropTransaction``, which misses queued transactions, then
    ``anvil_removePoolTransactions`` of the sender); True when the node no longer holds it."""
    for method, params in (
        ("anvil_dropTransaction", [_hex(tx_hash)]),
        ("anvil_removePoolTransactions", [sender]),
    ):
        try:
            w3.provider.make_request(RPCEndpoint(method), params)
        except Exception as exc:  # not a development node, or it is down
            log.debug("%s failed: %s", method, exc)
        try:
            w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return True
        except Exception:
            return False
    return False
