"""`brownie console` attached to a running tegrid chain, driven as a user would: `make
console-network` registers `tegrid-local` at TEGRID_RPC_URL, the console attaches (it does not
launch a chain of its own), `from scripts.console import *` loads the deployed contracts and the
helpers act on the real chain."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from backend.chain.contracts import contract_at
from backend.chain.deploy import deploy_from_settings
from backend.devtools.anvil import AnvilProcess
from backend.paths import REPO_ROOT
from backend.settings import Settings

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def test_brownie_console_attaches_and_the_helpers_act_on_the_chain(tmp_path: Path) -> None:
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(
            Settings(), rpc_url=anvil.url, deployment_file=tmp_path / "deployment.json"
        )
        deployment = deploy_from_settings(settings)
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
        assert lines["STATE"] == "(True, 1)"
        assert lines["GATE"] == str(2000000 * 900)
        assert lines["TRADE"] == "unknown to this market"
        # the console's transactions are on the chain the services use
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        market = contract_at(w3, "EnergyMarket", deployment.address("EnergyMarket"))
        account3 = w3.eth.accounts[3]
        assert tuple(market.functions.balanceOf(account3).call()) == (5000, 0)
