"""Module-scoped deployments of the ledger contracts, snapshot/revert per test, and helpers that
build signed orders, trades, attestations and readings through backend.chain (the backend's own)."""

from __future__ import annotations

import contextlib
import os
import socket
from types import SimpleNamespace
from typing import Any

import brownie
import pytest
from brownie.exceptions import decode_typed_error
from brownie.network.transaction import TransactionReceipt
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from web3.exceptions import TimeExhausted

from backend.chain import batches, eip712
from backend.chain.batches import CandidateTrade
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900
DELAY_S = 3600
GATE_LEAD_S = 60  # the chain's gate closure: an interval's batches up to its start minus this
PRICE = 123_457  # token base units (6 decimals) per kWh
DEPOSIT = 10**12
EVIDENCE = keccak(b"grid evidence")
FAR = 2**40  # an expiry far in the future
SHORT_BPS = 15_000  # imbalance prices the market is deployed with: 1.5x and 0.5x the clearing price
LONG_BPS = 5_000
BALANCING_DEPOSIT = 10**9  # the balancing account's own funds (1,000 tokens)


def err(name: str, *args: Any) -> str:
    """brownie's revert_msg for custom error ``name(args)``: selector and arguments, exactly."""
    abi = ERRORS[name]
    types = [i["type"] for i in abi["inputs"]]
    selector = keccak(text=f"{name}({','.join(types)})")[:4]
    return decode_typed_error("0x" + (selector + encode(types, list(args))).hex())


ERRORS: dict[str, dict[str, Any]] = {}


def _await_receipt_first() -> None:
    """Anvil (1.7) mines a sent transaction in a background task and makes the sender's new nonce
    visible a moment before the receipt: measured 25 of 3,000 transfers had the nonce advanced
    and no receipt when asked right after sending, 134 had no receipt yet. brownie's confirmation
    loop reads the nonce, then the receipt, and calls the transaction dropped when the nonce moved
    without a receipt (``TransactionError: Tx dropped without known replacement`` - what ended an
    earlier long stateful run after ~35,000 steps); with no receipt yet it sleeps a whole second
    (4.6 % of the long run's transactions). Waiting for the receipt itself (5 ms polls) before
    brownie's loop removes both; a transaction that really never mines still ends in brownie's own
    check."""
    original = TransactionReceipt._await_confirmation
    if getattr(original, "_receipt_first", False):
        return

    def await_confirmation(self: Any, block_number: Any = None, required_confs: int = 1) -> None:
        with contextlib.suppress(TimeExhausted):
            brownie.web3.eth.wait_for_transaction_receipt(self.txid, timeout=30, poll_latency=0.005)
        original(self, block_number, required_confs)

    await_confirmation._receipt_first = True  # type: ignore[attr-defined]
    TransactionReceipt._await_confirmation = await_confirmation  # type: ignore[method-assign]


_await_receipt_first()


def meter_key(i: int) -> str:
    return "0x" + keccak(text=f"tegrid meter {i}").hex()


def norm(value: Any) -> Any:
    """brownie event/return values as plain Python: bytes32 -> bytes, Wei -> int, address -> str."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        if value.startswith("0x") and len(value) == 66:
            return bytes.fromhex(value[2:])
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    return value


def ev(tx: Any, name: str, i: int = 0) -> list[Any]:
    """Values of the i-th event ``name`` of a transaction, normalised with :func:`norm`."""
    return [norm(v) for v in tx.events[name][i].values()]


class DeployedLedger:
    """The deployed contracts and the accounts playing each role."""

    def __init__(self, a: Any, token: Any, registry: Any, readings: Any, market: Any) -> None:
        self.a = a
        self.token, self.registry, self.readings, self.market = token, registry, readings, market
        self.admin, self.dso, self.validator, self.oracle, self.operator = (
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
        )
        self.validator_key = ANVIL_KEYS[2]
        self.trader_keys = {a[i].address: ANVIL_KEYS[i] for i in range(5, 10)}
        self.meters: dict[str, str] = {}  # wallet -> meter key
        self.chain_id = brownie.chain.id
        self.index: dict[str, int] = {}
        self.records: dict[int, list[list[bytes]]] = {}
        self.counts: dict[int, int] = {}  # interval -> attested batch count

    # ----------------------------------------------------------------- participants
    def connect(self, wallet: Any, i: int) -> None:
        key = meter_key(i)
        self.meters[wallet.address] = key
        self.registry.connect(
            wallet, Account.from_key(key).address, 10 + i, 5000, 7000, {"from": self.dso}
        )
        self.index[wallet.address] = self.registry.stateOf(wallet)[1]

    def meter_of(self, wallet: Any) -> str:
        return str(Account.from_key(self.meters[wallet.address]).address)

    # ----------------------------------------------------------------- time
    def now(self) -> int:
        return int(brownie.web3.eth.get_block("latest")["timestamp"])

    def current_interval(self) -> int:
        return self.now() // INTERVAL_S

    def end_interval(self, interval: int, extra: int = 0) -> None:
        """Move chain time past the end of ``interval`` (+ ``extra`` seconds)."""
        target = (interval + 1) * INTERVAL_S + extra
        while self.now() < target:
            rpc = brownie.web3.provider.make_request
            rpc("evm_increaseTime", [target - self.now() + 1])  # type: ignore[arg-type]
            rpc("evm_mine", [])  # type: ignore[arg-type]

    # ----------------------------------------------------------------- orders and trades
    def order(
        self,
        trader: Any,
        side: int,
        interval: int,
        energy: int,
        price: int,
        nonce: int,
        expiry: int = FAR,
        counterparty: str | None = None,
    ) -> dict[str, Any]:
        return {
            "trader": trader.address,
            "side": side,
            "intervalId": interval,
            "energyWh": energy,
            "pricePerKWh": price,
            "nonce": nonce,
            "expiry": expiry,
            "counterparty": counterparty,
        }

    def sign(
        self,
        order: dict[str, Any],
        key: str | None = None,
        chain_id: int | None = None,
        market: str | None = None,
    ) -> tuple[bytes, bytes]:
        return batches.sign_order(
            key or self.trader_keys[order["trader"]],
            chain_id or self.chain_id,
            market or self.market.address,
            order,
        )

    def trade(
        self,
        sell: dict[str, Any],
        buy: dict[str, Any],
        energy: int,
        price: int = PRICE,
        verdict: int = 0,
    ) -> CandidateTrade:
        return CandidateTrade(sell, buy, self.sign(sell), self.sign(buy), energy, price, verdict)

    def tid(self, t: CandidateTrade) -> bytes:
        return t.trade_id(self.chain_id, self.market.address)

    def sort(self, trades: list[CandidateTrade]) -> list[CandidateTrade]:
        return batches.sort_by_trade_id(trades, self.chain_id, self.market.address)

    def attest(
        self,
        interval: int,
        trades: list[CandidateTrade],
        key: str | None = None,
        index: int = 0,
        count: int = 1,
    ) -> bytes:
        return batches.attest(
            key or self.validator_key,
            self.chain_id,
            self.market.address,
            interval,
            trades,
            EVIDENCE,
            index,
            count,
        )

    def record(
        self,
        interval: int,
        trades: list[CandidateTrade],
        *,
        sort: bool = True,
        key: str | None = None,
        sender: Any = None,
        index: int | None = None,
        count: int | None = None,
    ) -> Any:
        """Record ``trades`` as the interval's next batch (``index``: batches recorded so far) of
        ``count`` (default: the count of the interval's first batch, else 1)."""
        trades = self.sort(trades) if sort else trades
        index = len(self.records.get(interval, [])) if index is None else index
        count = self.counts.get(interval, 1) if count is None else count
        sig = self.attest(interval, trades, key, index, count)
        orders, rows = self.args(trades)
        tx = self.market.recordTrades(
            interval, index, count, orders, rows, EVIDENCE, sig, {"from": sender or self.operator}
        )
        recs = [self.rec(t) for t in trades if t.verdict == 0]
        self.records.setdefault(interval, []).append(recs)
        self.counts.setdefault(interval, count)
        return tx

    def args(self, trades: list[CandidateTrade]) -> tuple[bytes, bytes]:
        """(orders, trades) arguments of recordTrades (packed)."""
        return batches.record_args(trades)

    def rec(self, t: CandidateTrade) -> bytes:
        return t.record(
            self.chain_id,
            self.market.address,
            self.index[t.sell["trader"]],
            self.index[t.buy["trader"]],
        )

    # ----------------------------------------------------------------- readings and settlement
    def reading(
        self,
        wallet: Any,
        interval: int,
        imp: int,
        exp: int,
        key: str | None = None,
        chain_id: int | None = None,
        contract: str | None = None,
    ) -> bytes:
        return batches.signed_reading(
            key or self.meters[wallet.address],
            chain_id or self.chain_id,
            contract or self.readings.address,
            self.meter_of(wallet),
            interval,
            imp,
            exp,
        )

    def submit(self, interval: int, readings: list[bytes]) -> Any:
        return self.readings.submitReadings(
            interval, batches.readings_arg(readings), {"from": self.oracle}
        )

    def settle_args(self, interval: int) -> tuple[list[bytes], bytes, bytes]:
        """(batches, parties, positions) arguments of settle (packed)."""
        return batches.settle_args(self.records.get(interval, []))

    def settle(self, interval: int, sender: Any = None, page_end: int | None = None) -> Any:
        bs, parties, positions = self.settle_args(interval)
        end = len(bs) if page_end is None else page_end
        return self.market.settle(
            interval, bs, parties, positions, end, {"from": sender or self.a[0]}
        )

    def balance(self, wallet: Any) -> tuple[int, int]:
        return tuple(self.market.balanceOf(wallet))  # type: ignore[return-value]

    @property
    def balancing(self) -> Any:
        """The balancing account (the grid operator's)."""
        return self.dso


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pytest_configure(config: Any) -> None:
    """The suite needs a chain of its own. brownie attaches to whatever listens on a development
    network's port, so two runs of ``--network tegrid-anvil`` would share one Anvil and revert each
    other's snapshots (transactions "dropped", balances jumping back under the stateful model). When
    the port is taken, launch our Anvil on a free port instead (brownie connects only after
    collection). ``TEGRID_ATTACH_CHAIN=1`` keeps brownie's attach behaviour."""
    from brownie._config import CONFIG

    if os.environ.get("TEGRID_ATTACH_CHAIN") == "1":
        return
    try:
        name = (config.getoption("--network") or [None])[0]
    except ValueError:  # plain pytest, no brownie plugin
        return
    net = CONFIG.networks.get(name or CONFIG.settings["networks"]["default"])
    if not net or "cmd" not in net or "127.0.0.1" not in net.get("host", ""):
        return
    settings = net.setdefault("cmd_settings", {})
    port = settings.get("port")
    if port and _port_taken(int(port)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        print(f"\nport {port} is another run's chain; launching ours on {free}")
        settings["port"] = free


@pytest.fixture(scope="session", autouse=True)
def gas_price() -> None:
    """Ganache 7 (London fee rules) never mines brownie's default gasPrice-0 transactions."""
    brownie.network.gas_price("auto")


@pytest.fixture(scope="module")
def ledger(
    accounts: Any, EnergyToken: Any, ParticipantRegistry: Any, MeterReadings: Any, EnergyMarket: Any
) -> DeployedLedger:
    admin = accounts[0]
    token = EnergyToken.deploy(admin, {"from": admin})
    registry = ParticipantRegistry.deploy(admin, {"from": admin})
    readings = MeterReadings.deploy(registry, INTERVAL_S, {"from": admin})
    # the grid operator (accounts[1]) holds the balancing account
    market = EnergyMarket.deploy(
        token, registry, readings, DELAY_S, GATE_LEAD_S, accounts[1], SHORT_BPS, LONG_BPS,
        {"from": admin},
    )  # fmt: skip
    for c in (registry, readings, market, token):
        for item in c.abi:
            if item["type"] == "error":
                ERRORS[item["name"]] = item
    registry.grantRole(registry.GRID_OPERATOR_ROLE(), accounts[1], {"from": admin})
    registry.grantRole(registry.VALIDATOR_ROLE(), accounts[2], {"from": admin})
    registry.grantRole(registry.ORACLE_ROLE(), accounts[3], {"from": admin})
    registry.grantRole(registry.MARKET_OPERATOR_ROLE(), accounts[4], {"from": admin})
    led = DeployedLedger(accounts, token, registry, readings, market)
    for i in range(5, 9):  # accounts[9] stays unregistered
        led.connect(accounts[i], i)
        token.mint(accounts[i], DEPOSIT, {"from": admin})
        token.approve(market, 2**256 - 1, {"from": accounts[i]})
        market.deposit(DEPOSIT // 2, {"from": accounts[i]})
    for holder in (accounts[9], accounts[1]):  # the outsider, the balancing account
        token.mint(holder, DEPOSIT, {"from": admin})
        token.approve(market, 2**256 - 1, {"from": holder})
    market.deposit(BALANCING_DEPOSIT, {"from": accounts[1]})
    return led


@pytest.fixture(autouse=True)
def isolation(fn_isolation: Any) -> None:
    pass


@pytest.fixture
def parts(ledger: DeployedLedger) -> SimpleNamespace:
    ledger.records, ledger.counts = {}, {}  # the chain was reverted: forget earlier batches
    """The four registered traders S1, S2 (sellers) and B1, B2 (buyers), and the outsider X."""
    a = ledger.a
    return SimpleNamespace(S1=a[5], S2=a[6], B1=a[7], B2=a[8], X=a[9])


__all__ = [
    "BALANCING_DEPOSIT",
    "DELAY_S",
    "DEPOSIT",
    "EVIDENCE",
    "FAR",
    "GATE_LEAD_S",
    "INTERVAL_S",
    "LONG_BPS",
    "PRICE",
    "SHORT_BPS",
    "DeployedLedger",
    "eip712",
    "err",
    "ev",
    "norm",
]
