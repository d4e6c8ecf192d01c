"""Gas limits learnt from earlier estimates and receipts, so batch calls skip
``eth_estimateGas``."""

from __future__ import annotations

import threading


class GasBounds:
    """Learned gas limits for batch calls, so a batch is sent without ``eth_estimateGas`` (which
    Anvil answers by executing the call about ten times in a binary search).

    Per (contract, selector) it keeps the highest gas per calldata byte seen in an estimate or a
    receipt; the bound of a new call is that rate times its calldata length, with ``headroom`` and
    ``slack`` on top. Small batches have the higher rate (fixed costs), so the maximum errs high.
    The first call of a shape is estimated; a bounded call that runs out of gas is estimated and
    sent again (``ChainClient.transact``)."""

    def __init__(self, headroom: float = 1.5, slack: int = 60_000) -> None:
        self.headroom = headroom
        self.slack = slack
        self._rate: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(to: str, data: str) -> tuple[tuple[str, str], int]:
        """((contract, selector), calldata bytes) of hex calldata."""
        return (to.lower(), data[:10]), max(1, (len(data) - 2) // 2)

    def learn(self, key: tuple[str, str], size: int, gas: int) -> None:
        with self._lock:
            self._rate[key] = max(self._rate.get(key, 0.0), gas / size)

    def bound(self, key: tuple[str, str], size: int) -> int | None:
        rate = self._rate.get(key)
        if rate is None:
            return None
        # never below the intrinsic gas (21,000 + at most 16 per calldata byte): a node refuses that
        return max(int(rate * size * self.headroom) + self.slack, 21_000 + 16 * size)
