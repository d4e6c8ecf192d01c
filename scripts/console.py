"""The deployed tegrid contracts and a few helpers, for `brownie console` on a running chain.

    make console                      # registers `tegrid-local` at TEGRID_RPC_URL and attaches
    >>> from scripts.console import *
    >>> market.balanceOf(accounts[1])
    >>> register(accounts[1], meter="0x...", bus=12, max_export_w=5000, max_import_w=7000)
    >>> deposit(accounts[1], 10**9)
    >>> trade("0x<tradeId>")           # its recording, settlement or reclaim, from the events
    >>> interval(1996100)              # intervalOf with its field names and the timeline

`brownie run scripts/console.py` prints where the contracts are. The addresses come from
TEGRID_DEPLOYMENT_FILE (`tegrid chain deploy`, `tegrid serve --dev` or `tegrid demo` write it).
"""

from __future__ import annotations

from typing import Any

from brownie import (  # type: ignore[attr-defined]
    EnergyMarket,
    EnergyToken,
    MeterReadings,
    ParticipantRegistry,
    accounts,
    network,
    web3,
)

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

INTERVAL_FIELDS = (
    "lastTradeId", "batchCount", "approvedCount", "expectedBatches", "settledBatches", "settled",
    "reclaimed",
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


def _events(name: str, **topics: Any) -> list[Any]:
    event = getattr(web3.eth.contract(address=market.address, abi=market.abi).events, name)
    return list(
        event.get_logs(argument_filters=topics or None, from_block=deployment.block)
    )


def trade(trade_id: str) -> dict[str, Any]:
    """What the chain says of one trade: recorded (seller, buyer, energy, price, interval, tx) or
    vetoed (reason), and settled (delivered, paid, refunded) or reclaimed."""
    tid = bytes.fromhex(trade_id[2:] if trade_id.startswith("0x") else trade_id)
    out: dict[str, Any] = {"tradeId": "0x" + tid.hex()}
    for e in _events("TradeRecorded", tradeId=tid):
        receipt = web3.eth.get_transaction_receipt(e["transactionHash"])
        for log in receipt["logs"]:  # the batch event of the same transaction names the interval
            if log["address"] == market.address and log["topics"][0] == web3.keccak(
                text="BatchRecorded(uint64,uint32,bytes32,uint32,bytes32)"
            ):
                out["intervalId"] = int.from_bytes(bytes(log["topics"][1]), "big")
        out.update(
            status="recorded", seller=e["args"]["seller"], buyer=e["args"]["buyer"],
            energyWh=e["args"]["energyWh"], pricePerKWh=e["args"]["pricePerKWh"],
            escrow=market.escrowOf(e["args"]["energyWh"], e["args"]["pricePerKWh"]),
            recordedIn="0x" + bytes(e["transactionHash"]).hex(),
        )  # fmt: skip
    for e in _events("TradeVetoed", tradeId=tid):
        out.update(status="vetoed", reason=e["args"]["reason"])
    for e in _events("TradeSettled", tradeId=tid):
        out.update(
            status="settled", deliveredWh=e["args"]["deliveredWh"], paid=e["args"]["paid"],
            refunded=e["args"]["refunded"], settledIn="0x" + bytes(e["transactionHash"]).hex(),
        )  # fmt: skip
    for e in _events("EscrowReclaimed", tradeId=tid):
        out.update(status="reclaimed", refunded=e["args"]["refunded"])
    if len(out) == 1:
        out["status"] = "unknown to this market"
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


def main() -> None:
    """``brownie run scripts/console.py``: where the contracts are."""
    for name in ("token", "registry", "readings", "market"):
        print(f"{name:9} {globals()[name].address}")
    print(f"chain {deployment.chain_id}, interval {deployment.interval_seconds} s")
