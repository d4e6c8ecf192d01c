"""`brownie console` attached to a running tegrid chain, driven as a user would: `make
console-network` registers `tegrid-local` at TEGRID_RPC_URL, the console attaches (it does not
launch a chain of its own), `from scripts.console import *` loads the deployed contracts and the
helpers act on the real chain."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from backend.chain import batches
from backend.chain.client import ChainClient, EncodedCall
from backend.chain.contracts import contract_at
from backend.chain.deploy import deploy_from_settings
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now
from backend.devtools.participants import provision
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS, Settings

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def _record_a_trade(settings: Settings, deployment: Any) -> tuple[str, dict[str, Any], Any]:
    """Accounts 4 (seller) and 5 (buyer) registered and funded, one trade of theirs recorded for
    an interval ahead; returns its id and what ``trade`` and ``decode_trade_id`` must say."""
    seller_key, buyer_key = ANVIL_KEYS[4], ANVIL_KEYS[5]
    provision(settings, deployment, keys=(seller_key, buyer_key), buses=[5, 6])
    client = ChainClient(settings.rpc_url, settings.market_operator_key)
    market = deployment.address("EnergyMarket")
    cid = client.chain_id
    iv = chain_now(client.w3) // settings.interval_seconds + 2
    seller, buyer = Account.from_key(seller_key).address, Account.from_key(buyer_key).address
    sell = {"trader": seller, "side": 0, "intervalId": iv, "energyWh": 2000,
            "pricePerKWh": 100_000, "nonce": 7, "expiry": 2**40, "counterparty": None}  # fmt: skip
    buy = dict(sell, trader=buyer, side=1, pricePerKWh=200_000, nonce=9)
    t = batches.CandidateTrade(
        sell, buy, batches.sign_order(seller_key, cid, market, sell),
        batches.sign_order(buyer_key, cid, market, buy), 2000, 150_000,
    )  # fmt: skip
    evidence = keccak(b"console evidence")
    sig = batches.attest(settings.validator_key, cid, market, iv, [t], evidence)
    data = batches.record_trades_calldata(iv, 0, 1, *batches.record_args([t]), evidence, sig)
    receipt = client.transact(EncodedCall(client.w3, market, "0x" + data.hex()), bounded=True)
    tx = "0x" + bytes(receipt["transactionHash"]).hex()
    tid = "0x" + t.trade_id(cid, market).hex()
    recorded = {"tradeId": tid, "status": "unsettled", "intervalId": iv, "batchIndex": 0,
                "recordedIn": tx, "seller": seller, "buyer": buyer, "energyWh": 2000,
                "pricePerKWh": 150_000, "escrow": 300_000}  # fmt: skip
    sell_hash, buy_hash = t.order_hashes(cid, market)
    zero = "0x" + "00" * 20
    orders = {
        "tradeId": tid,
        "sellOrder": {"hash": "0x" + sell_hash.hex(), **sell, "counterparty": zero},
        "buyOrder": {"hash": "0x" + buy_hash.hex(), **buy, "counterparty": zero},
        "energyWh": 2000,
        "pricePerKWh": 150_000,
        "verdict": 0,
        "recordedIn": tx,
    }
    return tid, recorded, orders


def test_brownie_console_attaches_and_the_helpers_act_on_the_chain(tmp_path: Path) -> None:
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(
            Settings(), rpc_url=anvil.url, deployment_file=tmp_path / "deployment.json"
        )
        deployment = deploy_from_settings(settings)
        tid, trade_fields, orders = _record_a_trade(settings, deployment)
        env = dict(
            os.environ,
            TEGRID_RPC_URL=anvil.url,
            TEGRID_DEPLOYMENT_FILE=str(settings.deployment_file),
            PATH=f"{BIN}{os.pathsep}{REPO_ROOT / 'node_modules' / '.bin'}{os.pathsep}"
            + os.environ.get("PATH", ""),
            SOLCX_BINARY_PATH=str(REPO_ROOT / ".solcx"),
        )
        subprocess.run(
            ["make", "-s", "console-network"], cwd=REPO_ROOT, env=env, check=True, timeout=120
        )
        meter = Account.from_key("0x" + "5" * 64).address
        session = "\n".join(
            [
                "from scripts.console import *",
                'print("ATTACHED", web3.eth.block_number > 0, market.address)',
                'print("DEPOSIT", deposit(accounts[3], 5000))',
                f'print("REGISTER", register(accounts[3], "{meter}", 7, 5000, 7000).status)',
                'print("STATE", tuple(registry.stateOf(accounts[3])))',
                'print("GATE", interval(2000000)["gateClosure"])',
                'print("TRADE", trade("0x" + "11" * 32)["status"])',
                "import json",
                f'print("RECORDED", json.dumps(trade("{tid}")))',
                f'print("ORDERS", json.dumps(decode_trade_id("{tid}")))',
                'print("MINE", json.dumps(trades_of(accounts[4])))',
                'print("THEIRS", json.dumps(trades_of(accounts[5])))',
                'print("PRICES", set_imbalance_prices(20_000, 4_000).status,'
                " tuple(market.imbalancePrices()))",
                'print("DEBT", debt(accounts[5]))',
                'print("IMBALANCE", imbalance(2000000)["status"])',
                'print("FIELDS", interval(2000000)["shortPriceBps"])',
            ]
        )
        out = subprocess.run(
            [str(BIN / "brownie"), "console", "--network", "tegrid-local"],
            cwd=REPO_ROOT, env=env, input=session + "\n", capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        text = ANSI.sub("", out.stdout.replace("\r", ""))
        printed = [ln.split(" ", 1) for ln in text.splitlines() if ln[:1].isupper() and " " in ln]
        lines = {word: rest for word, rest in printed}
        assert "Attached to local RPC client" in text, text[-2000:]
        assert lines.get("ATTACHED") == f"True {deployment.address('EnergyMarket')}", text[-2000:]
        assert lines["DEPOSIT"] == "(5000, 0)"
        assert lines["REGISTER"] == "1"
        assert lines["STATE"] == "(True, 3)"  # after the two participants of the trade
        assert lines["GATE"] == str(2000000 * 900)
        assert lines["TRADE"] == "unknown to this market"
        assert json.loads(lines["RECORDED"]) == trade_fields
        assert json.loads(lines["ORDERS"]) == orders
        assert json.loads(lines["MINE"]) == {"sold": [tid], "bought": []}
        assert json.loads(lines["THEIRS"]) == {"sold": [], "bought": [tid]}
        assert lines["PRICES"] == "1 (20000, 4000)"  # accounts[0] is the dev grid operator
        assert lines["DEBT"] == "0"
        assert lines["IMBALANCE"] == "no imbalance settled (not settled yet, or reclaimed)"
        assert lines["FIELDS"] == "0"  # an interval with no batch took no prices yet
        # the console's transactions are on the chain the services use
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        market = contract_at(w3, "EnergyMarket", deployment.address("EnergyMarket"))
        account3 = w3.eth.accounts[3]
        assert tuple(market.functions.balanceOf(account3).call()) == (5000, 0)
