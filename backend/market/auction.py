"""Network-aware clearing of one interval at gate closure. Pure: no database, no chain.

1. **Bilateral first.** A sell and a buy whose orders name each other (``counterparty``) and
   whose limits cross (bid >= ask) trade at the midpoint of the two limits (rounded down),
   earliest orders first. An order that names a counterparty never trades with anybody else.
2. **Uniform-price double auction** for the anonymous orders (``counterparty`` = 0): sells in
   ascending price, buys in descending price (ties: earlier accepted first), matched greedily
   while bid >= ask, no self-trades. The **clearing price** is the midpoint of the marginal pair -
   the last (highest) ask and the last (lowest) bid that trade in the unconstrained auction -
   rounded down to a token base unit. Every auction trade pays that uniform price (it lies inside
   every traded pair's limits).
3. **Network-aware.** Candidate trades go to the grid validator in merit order (bilateral first,
   then the auction in matching order). At the first veto the pair is blocked, the candidates
   after it are dropped, and the remaining volume (the vetoed seller's and buyer's included) is
   paired again in merit order after the trades already decided, until a round has no veto or no
   pair can be formed. A pair that only became possible after a veto may lie outside the uniform
   price; it pays the clearing price clipped into its own [ask, bid]. A veto is for the whole pair
   (no partial volume).

The batch order (bilateral, then the auction rounds) is the priority order the validator saw, so
one validation of the whole final batch gives exactly the verdicts and the evidence hash that go
on chain (the chain then wants the trades sorted by trade id; the attestation lists them so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

SELL = 0
BUY = 1
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_ROUNDS = 64


@dataclass(frozen=True)
class BookOrder:
    """An order as the auction sees it. ``seq`` is the acceptance order (time priority)."""

    hash: str
    trader: str
    side: int
    energy_wh: int
    price_per_kwh: int
    counterparty: str
    seq: int
    bus: int

    @property
    def bilateral(self) -> bool:
        return self.counterparty.lower() != ZERO_ADDRESS


@dataclass(frozen=True)
class Candidate:
    sell: BookOrder
    buy: BookOrder
    energy_wh: int
    price_per_kwh: int
    kind: str  # "bilateral" | "auction"


@dataclass(frozen=True)
class Decision:
    """The validator's answer for one candidate: ``reason_code`` 0 means approved."""

    reason_code: int
    reason: str = "APPROVED"
    element: str = ""

    @property
    def approved(self) -> bool:
        return self.reason_code == 0


# The validator sees the whole batch in priority order and answers one decision per candidate, plus
# an evidence hash (hex) over its inputs and verdicts.
Validate = Callable[[Sequence[Candidate]], tuple[list[Decision], str]]


@dataclass
class Clearing:
    """The outcome: every candidate in batch order with its decision."""

    clearing_price: int | None
    trades: list[tuple[Candidate, Decision]] = field(default_factory=list)
    evidence_hash: str = "0x" + "00" * 32
    offered_wh: int = 0
    bid_wh: int = 0

    @property
    def approved(self) -> list[Candidate]:
        return [c for c, d in self.trades if d.approved]

    @property
    def traded_wh(self) -> int:
        return sum(c.energy_wh for c in self.approved)

    @property
    def vetoed_wh(self) -> int:
        return sum(c.energy_wh for c, d in self.trades if not d.approved)

    def fills(self) -> dict[str, int]:
        """Approved energy per order hash."""
        out: dict[str, int] = {}
        for c in self.approved:
            out[c.sell.hash] = out.get(c.sell.hash, 0) + c.energy_wh
            out[c.buy.hash] = out.get(c.buy.hash, 0) + c.energy_wh
        return out


def _sell_key(o: BookOrder) -> tuple[int, int]:
    return (o.price_per_kwh, o.seq)


def _buy_key(o: BookOrder) -> tuple[int, int]:
    return (-o.price_per_kwh, o.seq)


def _bilateral_pairs(
    sells: list[BookOrder],
    buys: list[BookOrder],
    left: dict[str, int],
    blocked: set[tuple[str, str]],
) -> list[Candidate]:
    out: list[Candidate] = []
    for s in sorted((o for o in sells if o.bilateral), key=lambda o: o.seq):
        for b in sorted((o for o in buys if o.bilateral), key=lambda o: o.seq):
            if left[s.hash] <= 0:
                break
            if (
                left[b.hash] <= 0
                or (s.hash, b.hash) in blocked
                or s.counterparty.lower() != b.trader.lower()
                or b.counterparty.lower() != s.trader.lower()
                or b.price_per_kwh < s.price_per_kwh
            ):
                continue
            q = min(left[s.hash], left[b.hash])
            left[s.hash] -= q
            left[b.hash] -= q
            out.append(Candidate(s, b, q, (s.price_per_kwh + b.price_per_kwh) // 2, "bilateral"))
    return out


def _auction_pairs(
    sells: list[BookOrder],
    buys: list[BookOrder],
    left: dict[str, int],
    blocked: set[tuple[str, str]],
) -> list[tuple[BookOrder, BookOrder, int]]:
    out: list[tuple[BookOrder, BookOrder, int]] = []
    asks = sorted((o for o in sells if not o.bilateral), key=_sell_key)
    bids = sorted((o for o in buys if not o.bilateral), key=_buy_key)
    for s in asks:
        for b in bids:
            if left[s.hash] <= 0:
                break
            if b.price_per_kwh < s.price_per_kwh:
                break  # bids are descending: no later bid crosses this ask
            if (
                left[b.hash] <= 0
                or (s.hash, b.hash) in blocked
                or s.trader.lower() == b.trader.lower()
            ):
                continue
            q = min(left[s.hash], left[b.hash])
            left[s.hash] -= q
            left[b.hash] -= q
            out.append((s, b, q))
    return out


def uniform_price(orders: Sequence[BookOrder]) -> int | None:
    """The clearing price of the unconstrained anonymous auction (None when no bid crosses an
    ask)."""
    sells = [o for o in orders if o.side == SELL]
    buys = [o for o in orders if o.side == BUY]
    left = {o.hash: o.energy_wh for o in orders}
    pairs = _auction_pairs(sells, buys, left, set())
    if not pairs:
        return None
    s, b, _ = pairs[-1]
    return (s.price_per_kwh + b.price_per_kwh) // 2


def clear(orders: Sequence[BookOrder], validate: Validate | None = None) -> Clearing:
    """Clear one interval's orders; ``validate`` None approves everything (no grid)."""
    sells = [o for o in orders if o.side == SELL and o.energy_wh > 0]
    buys = [o for o in orders if o.side == BUY and o.energy_wh > 0]
    price = uniform_price(sells + buys)
    result = Clearing(
        clearing_price=price,
        offered_wh=sum(o.energy_wh for o in sells),
        bid_wh=sum(o.energy_wh for o in buys),
    )
    blocked: set[tuple[str, str]] = set()
    batch: list[Candidate] = []
    decisions: list[Decision] = []
    evidence = result.evidence_hash
    validated: list[Candidate] = []
    for _round in range(MAX_ROUNDS):
        # Remaining volume = order volume minus what the batch so far has approved.
        left = {o.hash: o.energy_wh for o in sells + buys}
        for c, d in zip(batch, decisions, strict=True):
            if d.approved:
                left[c.sell.hash] -= c.energy_wh
                left[c.buy.hash] -= c.energy_wh
        fresh = _bilateral_pairs(sells, buys, left, blocked)
        for s, b, q in _auction_pairs(sells, buys, left, blocked):
            p = price if price is not None else (s.price_per_kwh + b.price_per_kwh) // 2
            p = min(max(p, s.price_per_kwh), b.price_per_kwh)
            fresh.append(Candidate(s, b, q, p, "auction"))
        if not fresh:
            break
        start = len(batch)
        batch.extend(fresh)
        if validate is None:
            decisions = [Decision(0)] * len(batch)
            break
        decisions, evidence = validate(batch)
        validated = list(batch)
        if len(decisions) != len(batch):
            raise ValueError("the validator returned a different number of verdicts than trades")
        veto = next((i for i in range(start, len(batch)) if not decisions[i].approved), None)
        if veto is None:
            break
        # Pairs after the first veto assumed its volume was taken: drop them and pair again.
        blocked.add((batch[veto].sell.hash, batch[veto].buy.hash))
        del batch[veto + 1 :]
        del decisions[veto + 1 :]
    if validate is not None and batch and validated != batch:
        decisions, evidence = validate(batch)
    result.trades = list(zip(batch, decisions, strict=True))
    result.evidence_hash = evidence
    return result
