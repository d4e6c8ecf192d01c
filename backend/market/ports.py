"""What the market needs from the chain and from the grid, as protocols (adapters live beside them:
``backend.market.chain_ledger`` over web3 and the deployed contracts, ``backend.market.grid_port``
over ``grid.GridValidator``; tests use in-memory fakes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from backend.chain.imbalance import IntervalImbalance
from backend.market.activations import FlexInput
from backend.market.auction import BookOrder, Candidate, Clearing, Decision


@dataclass(frozen=True)
class Participant:
    wallet: str
    meter: str
    bus_id: int
    max_export_w: int
    max_import_w: int
    active: bool
    index: int = 0


@dataclass(frozen=True)
class Device:
    """A registered controllable device (``ParticipantRegistry.deviceOf``). Power is signed:
    positive W inject, negative W consume."""

    device: str
    owner: str
    bus_id: int
    kind: int  # protocol.DEVICE_KINDS
    active: bool
    min_w: int
    max_w: int
    capacity_wh: int


@dataclass(frozen=True)
class ChainTrade:
    """One trade of a batch as ``EnergyMarket.recordTrades`` takes it (orders with their
    signatures)."""

    trade_id: str
    sell: dict[str, Any]  # the signed Order message (ints and addresses)
    sell_signature: str
    buy: dict[str, Any]
    buy_signature: str
    energy_wh: int
    price_per_kwh: int
    verdict: int


@dataclass(frozen=True)
class ClearingReads:
    """What ``_eligible`` needs from the chain for one clearing, read in one go: participants by
    wallet (None when not registered), the cancelled (trader, nonce) pairs among those asked,
    available deposits by wallet and the debts of every wallet asked."""

    participants: dict[str, Participant | None]
    cancelled: frozenset[tuple[str, int]]
    balances: dict[str, int]
    debts: dict[str, int]  # by wallet, every wallet asked (owing traders' orders cannot record)


@dataclass(frozen=True)
class IntervalSettlement:
    """What settled an interval: trade id -> (delivered Wh, paid, settle or reclaim tx hash), and
    its imbalance (None when it was reclaimed: no imbalance is settled then)."""

    trades: dict[str, tuple[int, int, str | None]]
    imbalance: IntervalImbalance | None = None


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block_number: int
    ok: bool
    gas_used: int = 0


class SocReport(Protocol):
    """A battery's latest state of charge as its device reported it (signed by the device key)."""

    @property
    def soc_wh(self) -> int: ...
    @property
    def at(self) -> int: ...  # the device's clock, unix seconds


class SocSource(Protocol):
    """Where the market reads the devices' reported states of charge (the dispatcher's control
    store, which keeps each battery's latest signed report)."""

    def soc(self, device: str) -> SocReport | None: ...


class MarketLedger(Protocol):
    """The chain as the market sees it."""

    chain_id: int
    market_address: str
    registry_address: str
    flex_address: str  # FlexibilityMarket: the FlexOffer's and FlexAttestation's EIP-712 domain

    def now(self) -> int:
        """The chain's clock (unix seconds), estimated without a round trip when possible."""
        ...

    def head(self) -> int:
        """The chain's latest block number."""
        ...

    def rollback(self) -> int | None:
        """The first block that may have changed when the chain went back since the last call
        (a rollback or reorg), else None."""
        ...

    def gate_closure(self, interval_id: int) -> int:
        """The chain's gate closure of an interval (unix seconds): no batch lands after it."""
        ...

    def grid_mode(self) -> int:
        """The registry's grid mode now: 0 grid-connected, 1 islanded (``setGridMode``)."""
        ...

    def grid_forming_devices(self) -> list[Device]:
        """The registry's active grid-forming devices (batteries and gensets), in registration
        order."""
        ...

    def participant(self, wallet: str) -> Participant | None: ...

    def available_balance(self, wallet: str) -> int: ...

    def nonce_cancelled(self, trader: str, nonce: int) -> bool: ...

    def clearing_reads(
        self,
        wallets: Sequence[str],
        nonces: Sequence[tuple[str, int]],
        balance_wallets: Sequence[str],
    ) -> ClearingReads:
        """``participant``, ``nonce_cancelled`` and ``available_balance`` for many keys at once
        (one JSON-RPC batch on a chain instead of a round trip each)."""
        ...

    def batch_recorded(self, interval_id: int, last_trade_id: str) -> bool:
        """Whether the interval already has a batch ending with ``last_trade_id`` on chain."""
        ...

    def record_trades(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[ChainTrade],
        evidence_hash: str,
        signature: str,
        gas: int | None = None,
    ) -> str:
        """Send ``recordTrades`` with ``gas`` (from :meth:`estimate_record_gas`); returns the
        transaction hash (``wait`` gives its receipt). A mined revert raises
        ``BatchRevertedError``."""
        ...

    def estimate_record_gas(
        self,
        interval_id: int,
        batch_index: int,
        batch_count: int,
        trades: Sequence[ChainTrade],
        evidence_hash: str,
        signature: str,
    ) -> int:
        """Gas ``recordTrades`` of this batch needs now (``eth_estimateGas``); raises
        ``BatchRevertedError`` with the decoded reason when it would revert (nothing is mined), and
        ``BatchTooLargeError`` when it does not fit in a block."""
        ...

    def block_gas_limit(self) -> int:
        """The gas limit of the latest block."""
        ...

    def batch_transaction(self, interval_id: int, batch_index: int) -> Receipt | None:
        """The transaction that recorded batch ``batch_index`` of the interval (from its
        ``BatchRecorded`` log), None when there is none."""
        ...

    def wait(self, tx_hash: str, timeout_s: float = 60.0) -> Receipt: ...

    def interval_settlement(self, interval_id: int) -> IntervalSettlement | None:
        """None until settled; then its trades' settlement and its imbalance."""
        ...

    def debt_of(self, wallet: str) -> int:
        """What ``wallet`` owes the balancing account (``EnergyMarket.debtOf``), base units."""
        ...

    def connect(
        self, wallet: str, meter: str, bus_id: int, max_export_w: int, max_import_w: int
    ) -> str:
        """Register a participant with the grid operator key; returns the transaction hash."""
        ...

    def device(self, device: str) -> Device | None:
        """The registry's record of a device key, None when it is not registered."""
        ...

    def register_device(
        self,
        device: str,
        owner: str,
        bus_id: int,
        kind: int,
        min_w: int,
        max_w: int,
        capacity_wh: int,
    ) -> str:
        """Register a device with the grid operator key; returns the transaction hash. A key in
        use raises ``DeviceInUseError``, the owner's bus mismatch ``WrongBusError``."""
        ...

    def remedy_cap(self, wallet: str, interval_id: int) -> int:
        """``FlexibilityMarket.remedyCapAt``: base units per kWh of a rescued trade of the
        interval the wallet pays at most (0: its trades are never rescued). A cap change applies
        from an interval whose gate is more than one interval away, so what the clearing reads
        here is what recording checks."""
        ...

    def record_activations(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> str:
        """Send ``recordActivations`` of a packed batch (``backend.chain.flex.pack_batch``) with
        the validator's FlexAttestation ``signature``; returns the transaction hash. A revert
        raises ``BatchRevertedError`` with the decoded reason."""
        ...

    def estimate_record_activations_gas(
        self,
        interval_id: int,
        batch_index: int,
        activations: bytes,
        evidence_hash: str,
        signature: str,
    ) -> int:
        """Gas ``recordActivations`` of this batch needs now; raises ``BatchRevertedError`` with
        the decoded reason when it would revert (nothing is mined)."""
        ...

    def activation_batch_state(self, interval_id: int, batch_index: int) -> int:
        """``FlexibilityMarket.batchOf``'s state: 0 none, 1 recorded, 2 settled, 3 reclaimed."""
        ...

    def activation_outcomes(
        self, interval_id: int, batch_index: int, activations: bytes
    ) -> dict[str, Any]:
        """{} while the batch is open; then ``tx_hash``, ``reclaimed`` and ``activations``:
        activation id -> (metered W, delivered W, paid, refunded) as the chain's closing event
        says of the batch's packed ``activations``."""
        ...

    def settle_activations(self, interval_id: int, batch_index: int, activations: bytes) -> str:
        """Send ``settleActivations`` of a recorded batch (its packed activations: the records the
        batch committed to are sent, ``flex.records``)."""
        ...

    def reclaim_activations(self, interval_id: int, batch_index: int, activations: bytes) -> str:
        """Send ``reclaimActivations`` of a recorded, unsettled batch after ``reclaimAfter``."""
        ...

    def balancing_account(self) -> str:
        """The account that pays the DSO service's activations
        (``EnergyMarket.balancingAccount``)."""
        ...

    def health(self) -> dict[str, Any]: ...


class GridPort(Protocol):
    """The Neural Grid as the market sees it."""

    def validate(
        self, interval_id: int, batch: Sequence[Candidate]
    ) -> tuple[list[Decision], str]: ...

    def hosting_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int: ...

    def import_capacity_w(self, bus_id: int, interval_id: int | None = None) -> int:
        """The hosting capacity for import (consumption) at the bus, W."""
        ...

    def status(self, interval_id: int, approved: Sequence[Candidate]) -> dict[str, Any]: ...

    def load_buses(self) -> list[int]: ...

    def clear(
        self, interval_id: int, book: Sequence[BookOrder], flex: FlexInput | None = None
    ) -> Clearing:
        """The whole clearing of ``book`` (``auction.clear``) against this grid's validator,
        with remedies from ``flex``'s offers (``backend.market.remedy``)."""
        ...

    def set_mode(
        self, interval_id: int, islanded: bool, units: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """Validate ``interval_id`` islanded (or grid-connected, the default) from now on;
        ``units``: its grid-forming units (``grid.island.GridFormingUnit`` fields, e.g. the
        registry's devices; None: the network's own)."""
        ...

    def prepare(self, interval_id: int) -> None:
        """Compute what validating ``interval_id`` needs (its base state) ahead of time."""
