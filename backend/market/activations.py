"""What a flexibility activation is to the market: the offers the remedy search may activate,
the payers' caps and balances, the planned activations (``Clearing.activations``) and the
integer rules for an activation's energy, cost and who pays it (docs/architecture.md, "Remedies
in the clearing")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from backend.chain import protocol
from grid.verdicts import Activation


@dataclass(frozen=True)
class FlexOption:
    """An open flexibility offer as the remedy search sees it (its device's bus from the
    registry; ``power_w`` what is left of it)."""

    hash: str
    provider: str
    device: str
    bus: int
    direction: int  # protocol.FLEX_UP / FLEX_DOWN
    power_w: int
    baseline_w: int
    price_per_kwh: int
    seq: int


@dataclass(frozen=True)
class PayerFunds:
    """A possible payer: its remedy cap (base units per kWh of a rescued trade) and its available
    balance before this interval's escrow."""

    cap_per_kwh: int
    available: int


@dataclass(frozen=True)
class FlexInput:
    """What the remedy search needs beside the book: offers (in sequence), the trade parties'
    caps and balances, and the DSO service's budget and account."""

    offers: tuple[FlexOption, ...] = ()
    payers: Mapping[str, PayerFunds] = field(default_factory=dict)
    balancing_account: str = ""
    dso_budget: int = 0


@dataclass(frozen=True)
class PlannedActivation:
    """One activation of one offer for one purpose (``trade_id``: the rescued trade, or
    bytes32(0) for the DSO service): what the market records and the grid operator dispatches."""

    activation_id: str
    offer_hash: str
    provider: str
    device: str
    bus: int
    direction: int
    activated_w: int
    baseline_w: int
    price_per_kwh: int
    trade_id: str
    energy_wh: int
    cost: int
    payers: tuple[tuple[str, int], ...]  # (wallet, share in base units), seller first

    @property
    def moved_w(self) -> int:
        """The signed power this activation moves its device by (+ more injection)."""
        return self.activated_w if self.direction == protocol.FLEX_UP else -self.activated_w

    @property
    def setpoint_w(self) -> int:
        """Baseline +/- activated power: the device's target when it is its only activation in
        the interval (``device_setpoints`` gives the target of several)."""
        return self.baseline_w + self.moved_w

    def grid(self) -> Activation:
        """The grid's view: an injection of ``activated_w`` in the direction's sign, placed
        before its trade."""
        sign = 1.0 if self.direction == protocol.FLEX_UP else -1.0
        # A rescue's activations are applied right before the rescued trade (the trades before
        # it are judged as the clearing judged them); the DSO service's first, as one set.
        before = "" if self.trade_id == protocol.ZERO_BYTES32 else self.trade_id
        return Activation(
            self.activation_id, int(self.bus), sign * self.activated_w / 1000.0, before
        )


def device_setpoints(activations: Sequence[PlannedActivation]) -> dict[str, int]:
    """Every device's absolute power target for the interval: its baseline moved by the sum of
    all its activations. A control action carries an absolute setpoint that replaces the
    device's earlier one, so each activation of a device has to carry the device's whole target
    (baseline +/- one activation would undo the others; found by the control loop's author).
    ``FlexBook`` takes one offer per device and interval, so a device has one baseline and its
    activations stay within that offer's powerW (within the device's limits)."""
    baselines: dict[str, int] = {}
    moved: dict[str, int] = {}
    for a in activations:
        baselines.setdefault(a.device, a.baseline_w)
        moved[a.device] = moved.get(a.device, 0) + a.moved_w
    return {device: baselines[device] + moved[device] for device in baselines}


def activation_cost(activated_w: int, price_per_kwh: int, interval_seconds: int) -> tuple[int, int]:
    """(energy Wh, cost in base units): ``floor(W x s / 3600)``, ``floor(Wh x price / 1000)``."""
    energy_wh = activated_w * interval_seconds // 3600
    return energy_wh, energy_wh * price_per_kwh // 1000


def split_cost(
    cost: int,
    trade_energy_wh: int,
    seller: PayerFunds,
    buyer: PayerFunds,
    seller_escrow: int = 0,
    buyer_escrow: int = 0,
) -> tuple[int, int] | str:
    """The seller's and the buyer's shares of a remedy's ``cost``, or why they cannot pay
    ("cap" or "funds"). Equal split (seller ``floor(cost / 2)``); a share over its party's cap
    is capped and the other party pays the rest within its own cap. ``*_escrow``: what the
    party's balance already holds for this interval."""
    seller_cap = seller.cap_per_kwh * trade_energy_wh // 1000
    buyer_cap = buyer.cap_per_kwh * trade_energy_wh // 1000
    if cost > seller_cap + buyer_cap:
        return "cap"
    s = cost // 2
    b = cost - s
    if s > seller_cap:
        s, b = seller_cap, cost - seller_cap
    elif b > buyer_cap:
        s, b = cost - buyer_cap, buyer_cap
    if s > seller.available - seller_escrow or b > buyer.available - buyer_escrow:
        return "funds"
    return s, b
