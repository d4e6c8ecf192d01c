"""Participants on a development chain: register meters in bulk (pipelined ``connect`` calls) and
provision the dev accounts (registered on distinct load buses, deposits funded).

For ``tegrid meters``, the dev stack, the demo, the benchmarks and the e2e tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account import Account
from web3 import Web3

from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.errors import ToolchainError
from backend.iot.meters import dev_meter_key
from backend.settings import ANVIL_KEYS, Settings
from grid.validator import GridValidator

DEV_DEPOSIT = 1_000_000 * 10**6  # one million tokens (6 decimals) per participant
DEV_LIMIT_W = 200_000


def send_pipelined(
    w3: Web3, private_key: str, calls: Sequence[tuple[str, bytes]], gas: int = 500_000
) -> list[Any]:
    """Sign and send ``(to, calldata)`` transactions back to back, then wait for all receipts.

    Raises ToolchainError if any reverts. For setup work on development chains (hundreds of meters).
    """
    account = Account.from_key(private_key)
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    chain_id = w3.eth.chain_id
    gas_price = w3.eth.gas_price
    hashes = []
    for i, (to, data) in enumerate(calls):
        tx = {
            "to": to, "data": data, "nonce": nonce + i, "gas": gas, "gasPrice": gas_price,
            "chainId": chain_id,
        }  # fmt: skip
        signed = account.sign_transaction(tx)
        hashes.append(w3.eth.send_raw_transaction(signed.raw_transaction))
    receipts = [
        w3.eth.wait_for_transaction_receipt(h, timeout=120, poll_latency=0.01) for h in hashes
    ]
    bad = [r for r in receipts if r["status"] != 1]
    if bad:
        raise ToolchainError(f"{len(bad)} of {len(receipts)} setup transactions reverted")
    return receipts


def register_participants(
    w3: Web3,
    registry_address: str,
    grid_operator_key: str,
    participants: Sequence[tuple[str, str, int]],
    max_export_w: int = 100_000,
    max_import_w: int = 100_000,
) -> None:
    """``registry.connect(wallet, meter, bus, ...)`` for each ``(wallet, meter, bus)``."""
    registry = contract_at(w3, "ParticipantRegistry", registry_address)
    calls = []
    for wallet, meter, bus in participants:
        fn = registry.functions.connect(wallet, meter, int(bus), max_export_w, max_import_w)
        calls.append((registry.address, bytes.fromhex(fn._encode_transaction_data()[2:])))
    send_pipelined(w3, grid_operator_key, calls)


def provision(
    settings: Settings,
    deployment: Any,
    keys: tuple[str, ...] = ANVIL_KEYS,
    buses: list[int] | None = None,
    deposit: int = DEV_DEPOSIT,
    limit_w: int = DEV_LIMIT_W,
) -> list[dict[str, Any]]:
    """Register ``keys`` as participants on distinct load buses, deposits funded (idempotent)."""
    if buses is None:
        buses = GridValidator(settings.network).load_buses()
    clients: dict[str, ChainClient] = {}

    def client(key: str) -> ChainClient:
        # One client per key: ChainClient keeps its own nonce, so two for one key would collide.
        if key.lower() not in clients:
            clients[key.lower()] = ChainClient(settings.rpc_url, key)
        return clients[key.lower()]

    admin = client(settings.admin_key)
    grid_op = client(settings.grid_operator_key)
    registry = contract_at(
        admin.w3, "ParticipantRegistry", deployment.address("ParticipantRegistry")
    )
    market = contract_at(admin.w3, "EnergyMarket", deployment.address("EnergyMarket"))
    token = contract_at(admin.w3, "EnergyToken", deployment.address("EnergyToken"))
    out = []
    for i, key in enumerate(keys):
        wallet = Account.from_key(key).address
        meter = Account.from_key(dev_meter_key(i)).address
        bus = int(buses[i % len(buses)])
        p = registry.functions.participantOf(wallet).call()
        if int(p[1]) == 0:
            grid_op.transact(registry.functions.connect(wallet, meter, bus, limit_w, limit_w))
        else:
            meter, bus = p[0], int(p[2])
        available, _locked = market.functions.balanceOf(wallet).call()
        if available < deposit // 2:
            admin.transact(token.functions.mint(wallet, deposit))
            trader = client(key)
            trader.transact(token.functions.approve(market.address, deposit))
            trader.transact(market.functions.deposit(deposit))
        out.append(
            {"index": i, "wallet": wallet, "meter": meter, "meterKey": dev_meter_key(i), "bus": bus}
        )
    return out


def register_devices(
    w3: Web3,
    registry_address: str,
    grid_operator_key: str,
    devices: Sequence[tuple[str, str, int, int, int, int, int]],
) -> None:
    """``registry.registerDevice(device, owner, bus, kind, minW, maxW, capacityWh)`` for each
    tuple in that order (the owners must be active participants at that bus)."""
    registry = contract_at(w3, "ParticipantRegistry", registry_address)
    calls = []
    for device, owner, bus, kind, min_w, max_w, capacity_wh in devices:
        fn = registry.functions.registerDevice(
            device, owner, int(bus), kind, min_w, max_w, capacity_wh
        )
        calls.append((registry.address, bytes.fromhex(fn._encode_transaction_data()[2:])))
    send_pipelined(w3, grid_operator_key, calls)
