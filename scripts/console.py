"""The deployed tegrid contracts and a few helpers, for `brownie console` on a running chain.

    make console                      # registers `tegrid-local` at TEGRID_RPC_URL and attaches
    >>> from scripts.console import *
    >>> market.balanceOf(accounts[1])
    >>> register(accounts[1], meter="0x...", bus=12, max_export_w=5000, max_import_w=7000)
    >>> deposit(accounts[1], 10**9)
    >>> trade("0x<tradeId>")           # recorded (tradeOf: state on chain) or vetoed; settlement
    >>> decode_trade_id("0x<tradeId>") # the two signed orders the id hashes, from recordTrades
    >>> trades_of(accounts[5])         # the wallet's sales and purchases (indexed seller / buyer)
    >>> interval(1996100)              # intervalOf with its field names and the timeline
    >>> imbalance(1996100)             # every party's positions, deviation and imbalance payment
    >>> debt(accounts[5])              # what an account owes the balancing account
    >>> set_imbalance_prices(15_000, 5_000)  # the grid operator's short and long prices (bps)
    >>> flexibility.setRemedyCap(20_000, {"from": accounts[5]})  # <= 20,000/kWh per rescue
    >>> flexibility.remedyCapAt(accounts[5], 1996100)  # in force for an interval (set: 2 ahead)

`brownie run scripts/console.py` prints where the contracts are. The addresses come from
TEGRID_DEPLOYMENT_FILE (`tegrid chain deploy`, `tegrid serve --dev` or `tegrid demo` write it).
"""

from __future__ import annotations

from typing import Any

from brownie import (  # type: ignore[attr-defined]
    EnergyMarket,
    EnergyToken,
    FlexibilityMarket,
    MeterReadings,
    ParticipantRegistry,
    accounts,
    network,
    web3,
)

from backend.chain import eip712, trades
from backend.chain import imbalance as imbalances
from backend.chain.contracts import load_deployment
from backend.settings import Settings

deployment = load_deployment(Settings.from_env().deployment_file)
if web3.eth.chain_id != deployment.chain_id:
    raise SystemExit(
        f"the console is on chain {web3.eth.chain_id}, the deployment file is for chain "
        f"{deployment.chain_id}: attach with `make console` (TEGRID_RPC_URL) or set "
        "TEGRID_DEPLOYMENT_FILE"
    )
# brownie's default gas price is 0, below the base fee of a chain started by `tegrid chain start`
network.gas_price("auto")
token = EnergyToken.at(deployment.address("EnergyToken"))
registry = ParticipantRegistry.at(deployment.address("ParticipantRegistry"))
readings = MeterReadings.at(deployment.address("MeterReadings"))
market = EnergyMarket.at(deployment.address("EnergyMarket"))
# activations of flexibility offers (remedyCapOf/At, setRemedyCap, intervalBookOf, batchOf)
flexibility = FlexibilityMarket.at(deployment.address("FlexibilityMarket"))

INTERVAL_FIELDS = (
    "lastTradeId", "batchCount", "approvedCount", "expectedBatches", "settledBatches", "settled",
    "reclaimed", "shortPriceBps", "longPriceBps",
)  # fmt: skip


def register(
    wallet: Any,
    meter: str,
    bus: int,
    max_export_w: int,
    max_import_w: int,
    grid_operator: Any = None,
) -> Any:
    """Connect ``wallet`` with its meter key's address at ``bus`` (GRID_OPERATOR_ROLE; the dev
    deployment gives it to accounts[0]). Returns the transaction."""
    sender = grid_operator or accounts[0]
    return registry.connect(wallet, meter, bus, max_export_w, max_import_w, {"from": sender})


def deposit(account: Any, amount: int, mint: bool = True) -> tuple[int, int]:
    """Put ``amount`` token base units into ``account``'s market balance (minting them first on a
    dev token when ``mint``); returns (available, locked)."""
    if mint:
        token.mint(account, amount, {"from": accounts[0]})
    token.approve(market, amount, {"from": account})
    market.deposit(amount, {"from": account})
    return tuple(market.balanceOf(account))  # type: ignore[return-value]


# snake_case fields of backend.chain's answers as the contracts name them
_NAMES = {"price_per_kwh": "pricePerKWh", "recorded_tx": "recordedIn", "settled_tx": "settledIn"}


def _solidity_names(fields: dict[str, Any]) -> dict[str, Any]:
    def name(key: str) -> str:
        head, *rest = key.split("_")
        return _NAMES.get(key, head + "".join(w.title() for w in rest))

    return {name(k): v for k, v in fields.items() if v is not None}


def _index_of(wallet: str) -> int:
    return int(registry.stateOf(wallet)[1])


def trade(trade_id: str) -> dict[str, Any]:
    """What the chain says of one trade: recorded (interval, batch, seller, buyer, energy, price,
    escrow and its state from the ``tradeOf`` view: unsettled, settled or reclaimed) with what
    settlement delivered and paid, or vetoed (the validator's reason)."""
    tid = eip712.bytes32(trade_id, "trade id")
    found = trades.find_trade(web3, web3.eth.contract(address=market.address, abi=market.abi),
                              _index_of, tid, deployment.block)  # fmt: skip
    if found is None:
        return {"tradeId": "0x" + tid.hex(), "status": "unknown to this market"}
    return _solidity_names(vars(found))


def decode_trade_id(trade_id: str) -> dict[str, Any]:
    """The two signed orders a trade id hashes (tradeId = keccak256(sellOrderHash, buyOrderHash)
    cannot be inverted): found in the calldata of the recordTrades transaction that recorded or
    vetoed the trade, each with its EIP-712 hash (``market.orderHash``)."""
    tid = eip712.bytes32(trade_id, "trade id")
    found = trades.find_orders(web3, market.address, web3.eth.chain_id, tid, deployment.block)
    if found is None:
        return {"tradeId": "0x" + tid.hex(), "status": "unknown to this market"}
    orders, tx = found
    return {
        "tradeId": "0x" + tid.hex(),
        "sellOrder": {"hash": "0x" + orders.sell_hash.hex(), **orders.sell},
        "buyOrder": {"hash": "0x" + orders.buy_hash.hex(), **orders.buy},
        "energyWh": orders.energy_wh,
        "pricePerKWh": orders.price_per_kwh,
        "verdict": orders.verdict,
        "recordedIn": tx,
    }


def trades_of(wallet: Any) -> dict[str, list[str]]:
    """The trade ids a wallet sold and bought: ``TradeRecorded`` logs filtered by the indexed
    seller (topic 2) and buyer (topic 3)."""
    event = web3.eth.contract(address=market.address, abi=market.abi).events.TradeRecorded
    out: dict[str, list[str]] = {}
    for role, key in (("seller", "sold"), ("buyer", "bought")):
        logs = event.get_logs(argument_filters={role: str(wallet)}, from_block=deployment.block)
        out[key] = ["0x" + bytes(e["args"]["tradeId"]).hex() for e in logs]
    return out


def interval(interval_id: int) -> dict[str, Any]:
    """``intervalOf`` with its field names, and the interval's timeline on chain."""
    state = dict(zip(INTERVAL_FIELDS, market.intervalOf(interval_id), strict=True))
    state["lastTradeId"] = "0x" + bytes(state["lastTradeId"]).hex()
    state.update(
        gateClosure=market.gateClosure(interval_id),
        settlementDeadline=market.settlementDeadline(interval_id),
        reclaimAfter=market.reclaimAfter(interval_id),
        chainTime=web3.eth.get_block("latest")["timestamp"],
    )
    return state


def imbalance(interval_id: int) -> dict[str, Any]:
    """The interval's imbalance settlement from its last settle page's events: clearing price
    (energy-weighted, computed on chain), short and long prices, what the balancing account
    collected and paid, and per party its contracted and metered net positions (Wh, sold or
    exported positive), deviation, payment (negative: paid to the balancing account) and what it
    could not pay (its new debt) or was not paid."""
    contract = web3.eth.contract(address=market.address, abi=market.abi)
    found = imbalances.find(web3, contract, interval_id, deployment.block)
    if found is None:
        return {
            "intervalId": interval_id,
            "status": "no imbalance settled (not settled yet, or reclaimed)",
        }
    return {
        "intervalId": interval_id,
        "clearingPricePerKWh": found.clearing_price_per_kwh,
        "shortPriceBps": found.short_price_bps,
        "longPriceBps": found.long_price_bps,
        "collected": found.collected,
        "paidOut": found.paid_out,
        "settledIn": found.tx_hash,
        "parties": {
            p.account: {
                "contractedWh": p.contracted_wh,
                "meteredWh": p.metered_wh,
                "deviationWh": p.deviation_wh,
                "payment": p.payment,
                "shortfall": p.shortfall,
            }
            for p in found.parties
        },
    }


def debt(account: Any) -> int:
    """What ``account`` owes the balancing account (its orders are refused until it is paid)."""
    return int(market.debtOf(account))


def set_imbalance_prices(short_bps: int, long_bps: int, grid_operator: Any = None) -> Any:
    """Set the imbalance prices in basis points of the clearing price (GRID_OPERATOR_ROLE; the dev
    deployment gives it to accounts[0]); intervals whose first batch comes later take them."""
    sender = grid_operator or accounts[0]
    return market.setImbalancePrices(short_bps, long_bps, {"from": sender})


def main() -> None:
    """``brownie run scripts/console.py``: where the contracts are."""
    for name in ("token", "registry", "readings", "market", "flexibility"):
        print(f"{name:11} {globals()[name].address}")
    print(f"chain {deployment.chain_id}, interval {deployment.interval_seconds} s")
