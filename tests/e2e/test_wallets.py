"""Orders signed by the wallet libraries users sign with - ethers 6, viem 2 and MetaMask's
@metamask/eth-sig-util (npm, pinned in package.json) - against a real Anvil, the deployed
contracts and the real API: the template is fetched over HTTP in the shape each library wants
(``GET /orders/eip712?for=ethers|viem``, the plain one for eth_signTypedData_v4), the node
scripts in ``tests/wallets/`` sign it exactly as the README shows, and the order goes through
``POST /orders`` to a trade recorded on chain.

The order values travel in the API's JSON types (prices and nonces as decimal strings, the rest
as numbers); the nonces are above 2^53 on purpose."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from web3 import Web3

from backend.api.app import create_app
from backend.chain import protocol
from backend.chain.contracts import contract_at
from backend.chain.eip712 import order_tuple
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now, set_time
from backend.devtools.devstack import start_dev_stack
from backend.devtools.server import start_in_thread
from backend.market.factory import build_market
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e

K = ANVIL_KEYS
ZERO = "0x" + "00" * 20
SCRIPTS = REPO_ROOT / "tests" / "wallets"
# script name -> the template shape it signs (GET /orders/eip712?for=...)
LIBRARIES = {"ethers": "ethers", "viem": "viem", "ethsigutil": "eth_signTypedData_v4"}
NONCES = itertools.count(2**63 + 1)  # uint64 nonces past 2^53: decimal strings in JSON


def sign_with(library: str, template: dict[str, Any], order: dict[str, Any], key: str) -> Any:
    """Run ``tests/wallets/sign_<library>.mjs`` on the template, the order and the key."""
    node = shutil.which("node")
    assert node, "node is not on PATH (make setup needs Node.js 20)"
    payload = json.dumps({"template": template, "order": order, "privateKey": key})
    done = subprocess.run(
        [node, str(SCRIPTS / f"sign_{library}.mjs")],
        input=payload,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, f"sign_{library}.mjs failed: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("wallets-e2e")
    with AnvilProcess() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        set_time(w3, (chain_now(w3) // 86400 + 1) * 86400 + 12 * 3600)  # noon: no voltage veto
        settings = dev_settings(tmp, anvil.url)
        start_dev_stack(settings)
        market = build_market(settings)
        server = start_in_thread(create_app(market, dev=True, scheduler=False))
        client = httpx.Client(base_url=server.url, timeout=120)
        contract = contract_at(w3, "EnergyMarket", market.ledger.market_address)
        try:
            yield {"client": client, "market": market, "contract": contract}
        finally:
            client.close()
            server.stop()
            market.store.close()


AHEAD = itertools.count(1)


def _interval(stack: dict[str, Any]) -> int:
    """A fresh interval that still takes orders (each test trades in its own)."""
    return int(stack["client"].get("/intervals/next-open").json()["id"]) + next(AHEAD)


def _order(key: str, side: int, energy_wh: int, price: int, interval: int) -> dict[str, Any]:
    """The Order message in the API's JSON types."""
    return {
        "trader": Account.from_key(key).address,
        "side": side,
        "intervalId": interval,
        "energyWh": energy_wh,
        "pricePerKWh": str(price),
        "nonce": str(next(NONCES)),
        "expiry": interval * 900 + 86_400,
        "counterparty": ZERO,
    }


def _template(stack: dict[str, Any], library: str) -> dict[str, Any]:
    r = stack["client"].get("/orders/eip712", params={"for": LIBRARIES[library]})
    assert r.status_code == 200, r.text
    template: dict[str, Any] = r.json()
    return template


def _on_chain_hash(stack: dict[str, Any], order: dict[str, Any]) -> str:
    digest = stack["contract"].functions.orderHash(order_tuple(order)).call()
    return "0x" + bytes(digest).hex()


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_order_signed_by_library_is_accepted_under_the_contracts_order_hash(
    stack: dict[str, Any], library: str
) -> None:
    c = stack["client"]
    order = _order(K[1], 0, 1500, 120_000, _interval(stack))
    signed = sign_with(library, _template(stack, library), order, K[1])
    by_ethers = sign_with("ethers", _template(stack, "ethers"), order, K[1])
    # RFC 6979 signatures are deterministic: every library signs the same digest identically
    assert signed["signature"] == by_ethers["signature"]
    r = c.post("/orders", json={"message": order, "signature": signed["signature"]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["hash"] == by_ethers["hash"] == _on_chain_hash(stack, order)
    assert {k: body[k] for k in order} == order  # the same values in the same JSON types
    assert (body["status"], body["filledWh"]) == ("open", 0)
    assert c.get(f"/orders/{body['hash']}").json() == body


def test_orders_of_three_libraries_trade_on_chain_one_with_a_compact_signature(
    stack: dict[str, Any],
) -> None:
    """A sell signed by eth-sig-util, a buy by viem and a buy by ethers posted in EIP-2098
    compact form (64 bytes) clear into two trades that ``recordTrades`` puts on chain."""
    c, market, contract = stack["client"], stack["market"], stack["contract"]
    iv = _interval(stack)
    sell = _order(K[1], 0, 2000, 100_000, iv)
    buy_viem = _order(K[2], 1, 1000, 300_000, iv)
    buy_ethers = _order(K[3], 1, 1000, 250_000, iv)
    sell_sig = sign_with("ethsigutil", _template(stack, "ethsigutil"), sell, K[1])["signature"]
    viem_sig = sign_with("viem", _template(stack, "viem"), buy_viem, K[2])["signature"]
    by_ethers = sign_with("ethers", _template(stack, "ethers"), buy_ethers, K[3])
    compact = by_ethers["compact"]
    assert re.fullmatch(r"0x[0-9a-f]{128}", compact)  # 64 bytes: r || yParity.s
    hashes = {}
    for order, sig in ((sell, sell_sig), (buy_viem, viem_sig), (buy_ethers, compact)):
        r = c.post("/orders", json={"message": order, "signature": sig})
        assert r.status_code == 201, r.text
        assert r.json()["hash"] == _on_chain_hash(stack, order)
        hashes[order["trader"]] = r.json()["hash"]
    # the store keeps the 65-byte form of the compact signature, the one the chain checks
    assert market.store.get_order(hashes[buy_ethers["trader"]]).signature == by_ethers["signature"]

    r = c.post(f"/intervals/{iv}/close")
    assert r.status_code == 200, r.text
    interval = r.json()
    # uniform price: midpoint of the marginal pair (ask 100000, bid 250000)
    assert (interval["status"], interval["approvedCount"], interval["vetoedCount"]) == (
        "recorded", 2, 0,
    )  # fmt: skip
    assert (interval["clearingPrice"], interval["tradedWh"]) == ("175000", 2000)

    expected_ids = {
        protocol.trade_id_hex(hashes[sell["trader"]], hashes[b["trader"]])
        for b in (buy_viem, buy_ethers)
    }
    trades = c.get("/trades", params={"interval": iv}).json()
    assert {t["id"] for t in trades} == expected_ids
    assert {(t["energyWh"], t["pricePerKWh"], t["status"]) for t in trades} == {
        (1000, "175000", "recorded")
    }
    # read back from the chain, not the API
    _last, batches, approved, _expected, _paged, settled, *_rest = contract.functions.intervalOf(
        iv
    ).call()
    assert (batches, approved, settled) == (1, 2, False)
    recorded = {
        "0x" + bytes(log["args"]["tradeId"]).hex(): log["args"]
        for log in contract.events.TradeRecorded.get_logs(from_block=0)
    }
    for buy in (buy_viem, buy_ethers):
        trade_id = protocol.trade_id_hex(hashes[sell["trader"]], hashes[buy["trader"]])
        args = recorded[trade_id]
        assert (args["seller"], args["buyer"]) == (sell["trader"], buy["trader"])
        assert (args["energyWh"], args["pricePerKWh"]) == (1000, 175_000)
        filled = contract.functions.filledOf(buy["trader"], int(buy["nonce"])).call()
        assert tuple(filled) == (1000, False)
        _available, locked = contract.functions.balanceOf(buy["trader"]).call()
        assert locked >= protocol.escrow_of(1000, 175_000)
    filled = contract.functions.filledOf(sell["trader"], int(sell["nonce"])).call()
    assert tuple(filled) == (2000, False)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_order_signed_by_another_key_is_refused(stack: dict[str, Any], library: str) -> None:
    c = stack["client"]
    order = _order(K[4], 0, 1000, 100_000, _interval(stack))
    signed = sign_with(library, _template(stack, library), order, K[5])  # not the trader's key
    r = c.post("/orders", json={"message": order, "signature": signed["signature"]})
    signer, trader = Account.from_key(K[5]).address, order["trader"]
    assert r.status_code == 401
    assert r.json()["detail"] == {
        "code": "BAD_SIGNATURE",
        "message": f"signature recovers to {signer}, not the trader {trader} "
        "(tampered message, another chain id or another contract)",
    }
    listed = c.get("/orders", params={"trader": trader, "interval": order["intervalId"]})
    assert listed.json() == []


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_order_signed_for_another_chain_is_refused(stack: dict[str, Any], library: str) -> None:
    c = stack["client"]
    template = _template(stack, library)
    ours = template["domain"]
    mainnet = {**template, "domain": {**ours, "chainId": 1}}
    order = _order(K[6], 0, 1000, 100_000, _interval(stack))
    signature = sign_with(library, mainnet, order, K[6])["signature"]
    r = c.post("/orders", json={"message": order, "signature": signature})
    assert (r.status_code, r.json()["detail"]["code"]) == (401, "BAD_SIGNATURE")
    r = c.post(
        "/orders", json={"message": order, "signature": signature, "domain": mainnet["domain"]}
    )
    assert r.status_code == 400
    assert r.json()["detail"] == {
        "code": "WRONG_DOMAIN",
        "message": f"the order is signed for another domain; sign for {ours['name']!r} "
        f"v{ours['version']} on chain 31337 at {ours['verifyingContract']} (GET /orders/eip712)",
    }
    listed = c.get("/orders", params={"trader": order["trader"], "interval": order["intervalId"]})
    assert listed.json() == []


def test_readme_shows_the_signing_code_the_tests_run() -> None:
    """Each script's ``// README: <name>`` ... ``// README: end`` block is in the wallet page the
    README links (docs/wallets.md) verbatim, inside a ``js`` fence."""
    readme = (REPO_ROOT / "docs" / "wallets.md").read_text()
    fences = re.findall(r"```js\n(.*?)```", readme, re.DOTALL)
    for library in LIBRARIES:
        source = (SCRIPTS / f"sign_{library}.mjs").read_text()
        block = re.search(r"// README: [\w-]+\n(.*?)// README: end\n", source, re.DOTALL)
        assert block, f"sign_{library}.mjs has no README block"
        assert any(block.group(1) in fence for fence in fences), f"README lacks {library}'s code"
