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
   then the auction in matching order), in rounds. A round sends the batch decided so far plus the
   fresh candidates in one call. Every vetoed fresh pair is blocked (a veto is for the whole pair,
   no partial volume), the batch is kept up to and including the round's *last* veto, the approved
   candidates after it are dropped, and the remaining volume (the vetoed sellers' and buyers'
   included) is paired again in merit order after the trades already decided, until a round has no
   veto or no pair can be formed. A pair that only became possible after a veto may lie outside the
   uniform price; it pays the clearing price clipped into its own [ask, bid]. A pair already in the
   batch is never paired again (its trade id is taken).

   Each round sends the whole batch, vetoed candidates included, so a round's list is the previous
   round's list up to its last veto plus the fresh candidates: the validator resumes from the
   prefix it has already decided (its work grows with the fresh candidates, not with the batch),
   and the last round's list is the final batch itself, so its answer is the attestation (no
   separate final call). The validator is prefix-deterministic (a trade is approved iff the base
   state plus the approved trades before it stay feasible), so appending candidates never changes
   the verdicts of the ones before them: every verdict kept from a round is the one the final
   validation gives, and the clearing takes a handful of validator calls instead of one per
   veto. With at most one veto per round the outcome is exactly the one of re-pairing after every
   single veto. With several vetoes in a round it can differ: the approved candidates *between*
   two vetoes of a round keep their volume, so the volume those vetoes free is offered to the
   pairs after them in merit order instead of displacing them (per-veto re-pairing would have
   paired it first, possibly with a buyer or seller those candidates used up). Should the
   validator ever answer differently for an unchanged prefix, the batch is cut after the first
   changed verdict and paired again from there, so no order is ever filled beyond its volume
   (past the round cap the batch is cut before the changed verdict instead, so it shrinks until
   the validator repeats itself).

The batch order (bilateral, then the auction rounds) is the priority order the validator saw, so
one validation of the whole final batch gives exactly the verdicts and the evidence hash that go
on chain (the chain then wants the trades sorted by trade id; the attestation lists them so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backend.chain.protocol import BUY, SELL, ZERO_ADDRESS
from backend.market.activations import PlannedActivation

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
    """The validator's answer for one candidate: ``reason_code`` 0 means approved. A veto names
    its binding constraint: the ``element``, the ``value`` it would reach (pu for voltages,
    percent for loadings) and its ``limit`` (None where there is no number, e.g. a flow that
    does not converge)."""

    reason_code: int
    reason: str = "APPROVED"
    element: str = ""
    value: float | None = None
    limit: float | None = None

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
    # "greedy" (this module), "optimal" (``backend.market.optimal``) or "greedy (fallback: why)".
    method: str = "greedy"
    # Flexibility activations bought with the clearing (``backend.market.remedy``): rescues of
    # vetoed trades and the DSO service; the evidence hash covers them.
    activations: list[PlannedActivation] = field(default_factory=list)
    # Pairs the optimal clearing's merit-order top-up tried and the grid refused, left out of
    # ``trades`` (the batch records no more vetoes than the optimal rounds made): the remedy
    # search's candidates besides the vetoed trades; one it rescues joins the list.
    refused: list[tuple[Candidate, Decision]] = field(default_factory=list)

    @property
    def approved(self) -> list[Candidate]:
        return [c for c, d in self.trades if d.approved]

    @property
    def traded_wh(self) -> int:
        return sum(c.energy_wh for c in self.approved)

    @property
    def vetoed_wh(self) -> int:
        return sum(c.energy_wh for c, d in self.trades if not d.approved)

    @property
    def welfare(self) -> int:
        """Sum over the approved trades of (bid - ask) x kWh, in token base units (rounded
        down)."""
        return (
            sum((c.buy.price_per_kwh - c.sell.price_per_kwh) * c.energy_wh for c in self.approved)
            // 1000
        )

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
    head = 0  # bids before it are used up (they go in order: the front empties first)
    for s in asks:
        while head < len(bids) and left[bids[head].hash] <= 0:
            head += 1
        for b in bids[head:]:
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


def _pair_key(c: Candidate) -> tuple[str, str]:
    return (c.sell.hash, c.buy.hash)


def _fresh_candidates(
    sells: list[BookOrder],
    buys: list[BookOrder],
    price: int | None,
    decided: Sequence[Candidate],
    verdicts: Sequence[Decision],
    blocked: set[tuple[str, str]],
) -> list[Candidate]:
    """Merit-order pairs of the volume the decided batch leaves (approved trades use volume,
    vetoed ones do not), never repeating a blocked pair or a pair already in the batch."""
    left = {o.hash: o.energy_wh for o in sells}
    left.update((o.hash, o.energy_wh) for o in buys)
    for c, d in zip(decided, verdicts, strict=True):
        if d.approved:  # (a batch continued from elsewhere may hold orders not in this book)
            for h in (c.sell.hash, c.buy.hash):
                if h in left:
                    left[h] -= c.energy_wh
    taken = blocked | {_pair_key(c) for c in decided}
    fresh = _bilateral_pairs(sells, buys, left, taken)
    for s, b, q in _auction_pairs(sells, buys, left, taken):
        p = price if price is not None else (s.price_per_kwh + b.price_per_kwh) // 2
        p = min(max(p, s.price_per_kwh), b.price_per_kwh)
        fresh.append(Candidate(s, b, q, p, "auction"))
    return fresh


def clear(
    orders: Sequence[BookOrder],
    validate: Validate | None = None,
    decided: Sequence[tuple[Candidate, Decision]] = (),
    max_rounds: int = MAX_ROUNDS,
) -> Clearing:
    """Clear one interval's orders; ``validate`` None approves everything (no grid).
    ``decided``: a batch decided before (another clearing's trades with their verdicts), which
    this one continues - the volume it left is paired in merit order after it; ``max_rounds``
    bounds the pairing rounds."""
    sells = [o for o in orders if o.side == SELL and o.energy_wh > 0]
    buys = [o for o in orders if o.side == BUY and o.energy_wh > 0]
    price = uniform_price(sells + buys)
    result = Clearing(
        clearing_price=price,
        offered_wh=sum(o.energy_wh for o in sells),
        bid_wh=sum(o.energy_wh for o in buys),
    )
    blocked: set[tuple[str, str]] = set()
    # The decided part of the batch and the verdicts it was paired on.
    batch: list[Candidate] = [c for c, _ in decided]
    verdicts: list[Decision] = [d for _, d in decided]
    evidence = result.evidence_hash

    def check(trades: list[Candidate]) -> tuple[list[Decision], str]:
        assert validate is not None
        got, digest = validate(trades)
        if len(got) != len(trades):
            raise ValueError("the validator returned a different number of verdicts than trades")
        return got, digest

    rounds = 0
    while True:
        fresh: list[Candidate] = []
        if rounds < max_rounds:  # past the cap, only the decided batch is validated as it stands
            fresh = _fresh_candidates(sells, buys, price, batch, verdicts, blocked)
        rounds += 1
        candidates = batch + fresh
        if not candidates:
            break
        if validate is None:
            batch, verdicts = candidates, [Decision(0)] * len(candidates)
            break
        start = len(batch)
        # The whole list, vetoed trades included: each round's list extends the previous one's
        # prefix up to its last veto, so the validator resumes there (a prefix it has seen) and
        # the last round's list is the final batch itself (no separate final check).
        got, digest = check(candidates)
        decisions = list(got)
        changed = next(
            (i for i in range(start) if decisions[i].approved != verdicts[i].approved), None
        )
        if changed is not None:
            # Not the verdict of the same prefix before: the pairs after it assumed the old one.
            # Keep the batch up to that trade (its volume was paired on what precedes it) and
            # pair again from there; past the round cap without it, so the batch shrinks until
            # the validator repeats itself.
            keep = changed + 1 if rounds < max_rounds else changed
            batch, verdicts = candidates[:keep], decisions[:keep]
            continue
        vetoes = [i for i in range(start, len(candidates)) if not decisions[i].approved]
        if not vetoes:
            batch, verdicts, evidence = candidates, decisions, digest
            break
        blocked.update(_pair_key(candidates[i]) for i in vetoes)
        # Approved pairs after the round's last veto assumed its volume was taken: drop them
        # and pair again (the vetoed volume goes to the next feasible pairs).
        batch, verdicts = candidates[: vetoes[-1] + 1], decisions[: vetoes[-1] + 1]
    result.trades = list(zip(batch, verdicts, strict=True))
    result.evidence_hash = evidence
    return result
