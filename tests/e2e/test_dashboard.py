"""The live dashboard in a real browser (Debian's Chromium, headless, driven by Playwright) against
a real ``tegrid serve --dev`` process: its own Anvil, contracts, funded dev participants, the
Neural Grid on the default network, the settlement keeper.

The tests share one server and run in file order: the last one moves chain time forward."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from eip1193 import TestWallet  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account

from backend.net import free_port
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("TEGRID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
ZERO = "0x" + "00" * 20
NETWORK = "cigre_lv"
TIMEOUT_MS = 30_000
ORACLE_KEY = ANVIL_KEYS[8]
CHAIN_NAME = "tegrid e2e"
ANVIL_CHAIN_ID = 31337
MAINNET = 1


SERVER_FILES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tegrid serve --dev`` on free ports, every state file in a temporary folder."""
    tmp: Path = tmp_path_factory.mktemp("dashboard-e2e")
    api_port, rpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "TEGRID_RPC_URL": f"http://127.0.0.1:{rpc_port}",
        "TEGRID_DATABASE_URL": f"sqlite:///{tmp / 'tegrid.db'}",
        "TEGRID_ORACLE_DATABASE_URL": f"sqlite:///{tmp / 'oracle.db'}",
        "TEGRID_DEPLOYMENT_FILE": str(tmp / "deployment.json"),
        "TEGRID_CHAIN_STATE_FILE": str(tmp / "anvil-state.json"),
        "TEGRID_BROKER_URL": f"mqtt://127.0.0.1:{free_port()}",
        "TEGRID_NETWORK": NETWORK,
        "TEGRID_API_PORT": str(api_port),
        # readings are relayed with a key of their own, so the test never races the server's
        # operator nonce (account 8 places no orders here)
        "TEGRID_ORACLE_KEY": ORACLE_KEY,
        # what the dashboard asks a wallet to add: another spelling of the same endpoint
        "TEGRID_PUBLIC_RPC_URL": f"http://localhost:{rpc_port}",
        "TEGRID_CHAIN_NAME": CHAIN_NAME,
        # Merit-order clearing: the veto test needs a pair the grid refuses whole (the optimal
        # clearing would fill it in part); how the dashboard draws trades does not depend on it.
        "TEGRID_CLEARING": "greedy",
    }
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli.main", "serve", "--dev", "--port", str(api_port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                log_text = (tmp / "serve.log").read_text()[-2000:]
                raise RuntimeError(f"tegrid serve exited: {log_text}")
            try:
                if httpx.get(url + "/health", timeout=2).json().get("ok"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no healthy API: {(tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        SERVER_FILES["deployment"] = tmp / "deployment.json"
        SERVER_FILES["rpc"] = env["TEGRID_RPC_URL"]
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: serve and its Anvil
                proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1500, "height": 1250})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, url: str) -> Any:
        self.page.goto(url + "/")
        self.page.wait_for_selector("body[data-ready='1']")
        return self.page


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    try:
        yield p
    finally:
        p.context.close()


NONCE = iter(range(int(time.time() * 1000), 2**62))


def signed_order(
    url: str,
    key: str,
    side: int,
    energy_wh: int,
    price: int,
    interval: int,
    counterparty: str = ZERO,
) -> dict[str, Any]:
    template = httpx.get(url + "/orders/eip712").json()
    message = {
        "trader": Account.from_key(key).address,
        "side": side,
        "intervalId": interval,
        "energyWh": energy_wh,
        "pricePerKWh": price,
        "nonce": next(NONCE),
        "expiry": interval * 900 + 86_400,
        "counterparty": counterparty,
    }
    sig = Account.sign_typed_data(key, full_message={**template, "message": message}).signature
    return {"message": message, "signature": "0x" + sig.hex().removeprefix("0x")}


def open_interval(url: str, ahead: int) -> int:
    """An interval whose gate is still open (``ahead`` >= 2 intervals after the current one)."""
    return int(httpx.get(url + "/intervals/current").json()["id"]) + ahead


def test_topology_without_geodata_gets_a_radial_layout() -> None:
    """Kerber Dorfnetz carries no coordinates: a tree from the slack bus, one point per bus."""
    from backend.api.routes.dashboard import topology_of
    from grid.networks import load_network

    net = load_network("kerber_dorfnetz")
    topo = topology_of(net, "kerber_dorfnetz")
    assert topo["layout"] == "radial"
    assert len(topo["buses"]) == len(net.bus)
    points = {(b["x"], b["y"]) for b in topo["buses"]}
    assert len(points) == len(net.bus)
    slack = next(b for b in topo["buses"] if b["slack"])
    assert slack["y"] == 0.0 and min(b["y"] for b in topo["buses"]) == 0.0
    assert len(topo["lines"]) == len(net.line) and len(topo["trafos"]) == len(net.trafo)


def test_dashboard_loads_with_one_node_per_bus(server: str, tab: Page) -> None:
    from grid.networks import load_network

    foreign: list[str] = []  # the page works offline: nothing but the API's own origin

    def route(r: Any) -> None:
        if r.request.url.startswith(server):
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    tab.page.route("**/*", route)
    page = tab.open(server)
    n_buses = len(load_network(NETWORK).bus)
    topology = httpx.get(server + "/grid/topology").json()
    assert len(topology["buses"]) == n_buses
    assert page.locator("#grid-map circle.bus").count() == n_buses
    assert page.locator("#grid-map line.line").count() == len(topology["lines"])
    assert page.locator("#grid-map g.trafo").count() == len(topology["trafos"])
    # buses are coloured from the interval's power flow, and hovering shows the numbers
    page.wait_for_function(
        "document.querySelector('#grid-map circle.bus[data-bus=\"5\"]').style.fill !== ''"
    )
    page.hover("#grid-map circle.bus[data-bus='5']")
    tip = page.locator("#tooltip")
    assert "bus 5" in tip.inner_text() and " pu" in tip.inner_text()
    slanted = page.evaluate(
        "[...document.querySelectorAll('#grid-map line.line')].find("
        "l => { const b = l.getBoundingClientRect(); return b.width > 3 && b.height > 3; })"
        ".dataset.line"
    )
    page.hover(f"#grid-map line.line[data-line='{slanted}']")
    assert "loading" in tip.inner_text() and "%" in tip.inner_text()
    assert page.locator("#stream").get_attribute("data-state") == "open"
    assert foreign == []
    assert tab.errors == []


def test_dashboard_shows_cleared_trades_and_veto_without_reload(server: str, tab: Page) -> None:
    page = tab.open(server)
    page.evaluate("window.__sameDocument = 42")
    iv = open_interval(server, 2)
    k = ANVIL_KEYS
    addr = [Account.from_key(key).address for key in k]
    orders = [
        # a big bilateral transfer from the first load bus to the far end of another feeder:
        # the Neural Grid vetoes it (CIGRE LV: the receiving end's voltage sags below 0.90 pu)
        signed_order(server, k[0], 0, 40_000, 100_000, iv, counterparty=addr[9]),
        signed_order(server, k[9], 1, 40_000, 100_000, iv, counterparty=addr[0]),
        # two small auction trades between neighbours that pass
        signed_order(server, k[1], 0, 5_000, 90_000, iv),
        signed_order(server, k[2], 1, 5_000, 120_000, iv),
        signed_order(server, k[3], 0, 3_000, 95_000, iv),
        signed_order(server, k[4], 1, 2_000, 110_000, iv),
    ]
    for o in orders:
        r = httpx.post(server + "/orders", json=o)
        assert r.status_code == 201, r.text
    # the page follows the event stream to the interval and draws its book
    page.wait_for_function(f"document.querySelector('#iv-label').textContent.includes('{iv}')")
    page.wait_for_function("document.querySelectorAll('#book path.curve').length === 2")

    r = httpx.post(f"{server}/intervals/{iv}/close", timeout=120)
    assert r.status_code == 200, r.text
    trades = httpx.get(f"{server}/trades?interval={iv}").json()
    vetoed = [t for t in trades if not t["approved"]]
    approved = [t for t in trades if t["approved"]]
    assert len(vetoed) == 1 and vetoed[0]["energyWh"] == 40_000, trades
    assert len(approved) == 2, trades
    veto = vetoed[0]
    assert veto["reason"] and veto["element"], veto

    rows = page.locator("#trades-table tbody tr[data-trade]")
    rows.nth(len(trades) - 1).wait_for()
    assert rows.count() == len(trades)
    veto_row = page.locator(f"#trades-table tr[data-trade='{veto['id']}']")
    text = veto_row.inner_text()
    assert veto_row.get_attribute("class") == "vetoed"
    assert f"vetoed: {veto['reason']}" in text and veto["element"] in text
    for t in approved:
        row = page.locator(f"#trades-table tr[data-trade='{t['id']}']")
        assert "approved" in row.inner_text()
    # the map marks the element that would have broken, and draws each trade
    page.locator(f"#grid-map .veto-ring[data-element='{veto['element']}']").wait_for()
    assert page.locator("#grid-map path.trade.vetoed").count() == 1
    assert page.locator("#grid-map path.trade.approved").count() == 2
    page.wait_for_function(
        "document.querySelector('#interval-stats').textContent.includes('vetoed')"
        " && !document.querySelector('#book .clearing.indicative')"
    )
    page.locator("#settlement-table tbody tr:not(.empty)").nth(3).wait_for()
    assert page.evaluate("window.__sameDocument") == 42  # updated live, not reloaded

    ARTIFACTS.mkdir(exist_ok=True)
    page.hover(f"#grid-map circle.bus[data-bus='{veto['buyerBus']}']")
    assert f"bus {veto['buyerBus']}" in page.locator("#tooltip").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert tab.errors == []


def _wallet(key: str, chain_id: int = ANVIL_CHAIN_ID, **kw: Any) -> TestWallet:
    return TestWallet(key, SERVER_FILES["rpc"], chain_id, **kw)


def test_wallet_signs_order_through_page(server: str, tab: Page) -> None:
    wallet = _wallet(ANVIL_KEYS[5])
    wallet.install(tab.page)
    signed, address = wallet.signed, wallet.address
    page = tab.open(server)
    page.click("#wallet-connect")
    page.wait_for_function(
        f"document.querySelector('#wallet-account')?.textContent === '{address}'"
    )
    status = page.locator("#wallet-status").inner_text()
    assert "bus" in status and "available" in status and "null" not in status
    iv = open_interval(server, 3)
    page.select_option("#order-form select[name='side']", "buy")
    page.fill("#order-form input[name='energyKwh']", "1.5")
    page.fill("#order-form input[name='priceToken']", "0.12")
    page.fill("#order-form input[name='intervalId']", str(iv))
    page.click("#order-submit")
    page.locator("#order-result.accepted").wait_for()
    order_hash = page.locator("#order-hash").inner_text()

    listed = httpx.get(f"{server}/orders", params={"trader": address, "interval": iv}).json()
    mine = [o for o in listed if o["hash"] == order_hash]
    assert len(mine) == 1, listed
    assert (mine[0]["side"], mine[0]["energyWh"], mine[0]["pricePerKWh"]) == (1, 1500, "120000")
    # the wallet was asked to sign exactly the API's template, with our order as the message
    template = httpx.get(server + "/orders/eip712").json()
    assert len(signed) == 1
    assert {k: signed[0][k] for k in template} == template
    assert signed[0]["message"]["trader"] == address
    assert wallet.calls == []  # already on the market's chain: no switch asked

    assert tab.errors == []
    # a refusal is shown with the API's code and message: 60 kWh in 15 min is over 200 kW
    page.fill("#order-form input[name='energyKwh']", "60")
    page.click("#order-submit")
    page.locator("#order-result.refused").wait_for()
    assert page.locator("#refusal-code").inner_text() == "OVER_CONNECTION_LIMIT"
    assert "exceeds the import limit" in page.locator("#order-result").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".wallet-card").screenshot(path=str(ARTIFACTS / "dashboard-wallet.png"))
    # the browser logs the refused request itself; the page adds nothing else
    assert [e for e in tab.errors if "status of 422" not in e] == []


# ----------------------------------------------------------------------------- book figures
def _cancel(url: str, key: str, order_hash: str) -> None:
    template = httpx.get(url + "/orders/eip712", params={"primaryType": "Cancel"}).json()
    message = {"trader": Account.from_key(key).address, "orderHash": order_hash}
    sig = Account.sign_typed_data(key, full_message={**template, "message": message}).signature
    r = httpx.post(
        f"{url}/orders/{order_hash}/cancel", json={"signature": "0x" + sig.hex().removeprefix("0x")}
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text


BOOK_FIGURES = """() => {
  const ends = (cls) => {
    const path = document.querySelector(`#book path.curve.${cls}`);
    const xs = path.getAttribute("d").match(/[ML]([\\d.]+),/g).map((m) => Number(m.slice(1, -1)));
    return { wh: path.dataset.totalWh, start: xs[0], end: Math.max(...xs) };
  };
  const stat = (k) => document.querySelector(`#interval-stats dd[data-stat='${k}']`).textContent;
  return {
    offered: stat("offered"), bid: stat("bid"), supply: ends("supply"), demand: ends("demand"),
  };
}"""


def test_book_figures_are_the_ends_of_the_curves_drawn(server: str, tab: Page) -> None:
    """The open interval's text used the clearing's volumes (0 until the gate closes) beside
    curves drawn from the orders: both now come from the orders as the chart draws them."""
    iv = open_interval(server, 6)
    k = ANVIL_KEYS
    addr = [Account.from_key(key).address for key in k]
    orders = [
        signed_order(server, k[1], 0, 3_000, 90_000, iv),
        signed_order(server, k[3], 0, 2_500, 95_000, iv),
        signed_order(server, k[2], 1, 4_000, 120_000, iv),
        signed_order(server, k[4], 0, 1_000, 100_000, iv, counterparty=addr[5]),
        signed_order(server, k[5], 1, 1_000, 100_000, iv, counterparty=addr[4]),
        signed_order(server, k[6], 0, 7_000, 80_000, iv),  # cancelled below
    ]
    hashes = []
    for o in orders:
        r = httpx.post(server + "/orders", json=o)
        assert r.status_code == 201, r.text
        hashes.append(r.json()["hash"])
    _cancel(server, k[6], hashes[-1])
    assert httpx.get(f"{server}/intervals/{iv}").json()["offeredWh"] == 0  # what the text said

    page = tab.page
    page.goto(f"{server}/#interval={iv}")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("document.querySelectorAll('#book path.curve').length === 2")
    expected_text = {"offered": "5.5 kWh + 1 kWh bilateral", "bid": "4 kWh + 1 kWh bilateral"}

    def check() -> None:
        got = page.evaluate(BOOK_FIGURES)
        assert {k: got[k] for k in ("offered", "bid")} == expected_text
        assert (got["supply"]["wh"], got["demand"]["wh"]) == ("5500", "4000")
        # the curves end where the text says: their drawn lengths stand as 5.5 to 4 kWh
        supply_len = got["supply"]["end"] - got["supply"]["start"]
        demand_len = got["demand"]["end"] - got["demand"]["start"]
        assert supply_len / demand_len == pytest.approx(5_500 / 4_000, rel=1e-9)

    check()
    # cleared, the API's offeredWh counts the bilateral sell; the page tells the book it draws
    r = httpx.post(f"{server}/intervals/{iv}/close", timeout=120)
    assert r.status_code == 200 and r.json()["offeredWh"] == 6_500, r.text
    page.wait_for_function(
        "!['open', '…'].includes(document.querySelector('#iv-status').textContent)"
    )
    check()
    assert tab.errors == []


# ----------------------------------------------------------------------------- wallet: chain
def _switch() -> dict[str, Any]:
    return {"method": "wallet_switchEthereumChain", "params": [{"chainId": hex(ANVIL_CHAIN_ID)}]}


def test_wallet_on_another_chain_is_switched_after_adding_it(server: str, tab: Page) -> None:
    """A wallet on mainnet that does not know the dev chain: switch (4902), add, switch."""
    wallet = _wallet(ANVIL_KEYS[3], chain_id=MAINNET)
    wallet.install(tab.page)
    page = tab.open(server)
    page.click("#wallet-connect")
    page.locator("#wallet-chain[data-ok='true']").wait_for()

    add_chain = {
        "chainId": "0x7a69",
        "chainName": CHAIN_NAME,
        "rpcUrls": [f"http://localhost:{urlparse(SERVER_FILES['rpc']).port}"],
        "nativeCurrency": {"name": "Ether", "symbol": "ETH", "decimals": 18},
    }
    assert wallet.calls == [
        _switch(),
        {"method": "wallet_addEthereumChain", "params": [add_chain]},
        _switch(),
    ]
    assert httpx.get(server + "/contracts").json()["addChain"] == add_chain
    assert wallet.chain_id == ANVIL_CHAIN_ID
    assert page.locator("#wallet-chain").inner_text() == f"wallet on chain 31337 ({CHAIN_NAME})"

    # on the market's chain, an order is signed and accepted
    iv = open_interval(server, 5)
    page.select_option("#order-form select[name='side']", "sell")
    page.fill("#order-form input[name='energyKwh']", "2")
    page.fill("#order-form input[name='priceToken']", "0.09")
    page.fill("#order-form input[name='intervalId']", str(iv))
    page.click("#order-submit")
    page.locator("#order-result.accepted").wait_for()
    order = httpx.get(f"{server}/orders/{page.locator('#order-hash').inner_text()}").json()
    assert (order["trader"], order["side"], order["energyWh"], order["pricePerKWh"]) == (
        wallet.address,
        0,
        2_000,
        "90000",
    )
    assert [t["domain"]["chainId"] for t in wallet.signed] == [ANVIL_CHAIN_ID]
    assert tab.errors == []


def test_wallet_declining_the_switch_keeps_signing_off(server: str, tab: Page) -> None:
    wallet = _wallet(
        ANVIL_KEYS[3], chain_id=MAINNET, known_chains={ANVIL_CHAIN_ID}, refuse_switch=True
    )
    wallet.install(tab.page)
    page = tab.open(server)
    page.click("#wallet-connect")
    page.locator("#chain-message").wait_for()
    assert page.locator("#chain-message").inner_text() == (
        f"you declined to switch the wallet to chain 31337 ({CHAIN_NAME}); signing stays off "
        "until the wallet is on it"
    )
    assert wallet.calls == [_switch()]
    assert page.locator("#order-submit").is_disabled()
    # a submit that gets through anyway (Enter in a field) asks the wallet for nothing
    page.evaluate("document.querySelector('#order-form').requestSubmit()")
    page.wait_for_timeout(300)
    assert wallet.signed == [] and page.locator("#order-result").inner_text() == ""

    # asked again, the user agrees; the wallet knows the chain, so nothing is added
    wallet.refuse_switch = False
    page.click("#chain-switch")
    page.locator("#wallet-chain[data-ok='true']").wait_for()
    assert wallet.calls == [_switch(), _switch()]
    assert page.locator("#order-submit").is_enabled()

    # the user moves the wallet back to mainnet in the wallet: the page notices and signs nothing
    wallet.user_switches_to(page, MAINNET)
    page.locator("#chain-message").wait_for()
    assert page.locator("#chain-message").inner_text() == (
        "the wallet moved to chain 1; the market is on 31337: signing is off"
    )
    assert page.locator("#order-submit").is_disabled()
    assert wallet.calls == [_switch(), _switch()]
    assert tab.errors == []


# ----------------------------------------------------------------------------- wallet: connection
CONNECT_BUS = 41  # a CIGRE LV load bus no dev participant sits on; hosting capacity ~150 kW


def test_unregistered_wallet_asks_for_a_grid_connection(server: str, tab: Page) -> None:
    wallet = _wallet("0x" + Account.create().key.hex().removeprefix("0x"))
    meter = Account.create().address
    wallet.install(tab.page)
    page = tab.open(server)
    page.click("#wallet-connect")
    page.locator("#connect-section").wait_for()
    assert "not a registered participant" in page.locator("#wallet-status").inner_text()
    assert page.locator("#deposit-section").is_hidden()

    form = "#connect-form"
    page.select_option(f"{form} select[name='busId']", str(CONNECT_BUS))
    page.fill(f"{form} input[name='meter']", "0x1234")
    page.fill(f"{form} input[name='maxExportKw']", "3.5")
    page.fill(f"{form} input[name='maxImportKw']", "7.25")
    page.click("#connect-submit")
    page.locator("#connect-result.refused").wait_for()
    assert page.locator("#connect-result").inner_text() == (
        'INVALID_INPUT: meter "0x1234" is not an address (0x and 40 hex digits)'
    )
    assert wallet.signed == []  # refused before the wallet was asked

    # more export than the grid can host there: the Neural Grid refuses, nothing is registered
    page.fill(f"{form} input[name='meter']", meter)
    page.fill(f"{form} input[name='maxExportKw']", "500")
    page.click("#connect-submit")
    page.wait_for_function(
        "document.querySelector('#connect-result .code')?.textContent === 'HOSTING_CAPACITY'"
    )
    assert (
        page.locator("#connect-result")
        .inner_text()
        .startswith(f"HOSTING_CAPACITY: the hosting capacity at bus {CONNECT_BUS} is ")
    )
    p = httpx.get(f"{server}/participants/{wallet.address}").json()
    assert (p["registered"], p["request"]["status"]) == (False, "refused")

    page.fill(f"{form} input[name='maxExportKw']", "3.5")
    page.click("#connect-submit")
    page.locator("#connect-result.accepted").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".wallet-card").screenshot(path=str(ARTIFACTS / "dashboard-connection.png"))
    p = httpx.get(f"{server}/participants/{wallet.address}").json()
    assert {
        k: p[k] for k in ("registered", "active", "meter", "busId", "maxExportW", "maxImportW")
    } == {
        "registered": True,
        "active": True,
        "meter": meter,
        "busId": CONNECT_BUS,
        "maxExportW": 3_500,
        "maxImportW": 7_250,
    }
    assert p["request"]["status"] == "registered"
    assert p["request"]["txHash"] == page.locator("#connect-tx").inner_text()
    registry = _contract("ParticipantRegistry")
    got_meter, index, bus, active, export_w, import_w = registry.functions.participantOf(
        wallet.address
    ).call()
    assert (got_meter, bus, active, export_w, import_w) == (meter, CONNECT_BUS, True, 3_500, 7_250)
    assert index > 0
    # the wallet signed the API's ConnectionRequest template with exactly these values
    template = httpx.get(server + "/participants/eip712").json()
    request = wallet.signed[-1]
    assert len(wallet.signed) == 2 and {k: request[k] for k in template} == template
    assert {k: v for k, v in request["message"].items() if k not in ("nonce", "expiry")} == {
        "wallet": wallet.address,
        "meter": meter,
        "busId": CONNECT_BUS,
        "maxExportW": 3_500,
        "maxImportW": 7_250,
    }
    # a registered wallet is offered the deposit instead
    page.locator("#deposit-section").wait_for()
    assert page.locator("#connect-section").is_hidden()
    assert page.locator("#funds dd[data-fund='available']").inner_text() == "0 TEGT"
    assert wallet.calls == []
    # the browser logs the two refused requests (422) itself; the page adds nothing else
    assert [e for e in tab.errors if "status of 422" not in e] == []


# ----------------------------------------------------------------------------- wallet: deposit
def _contract(name: str) -> Any:
    from web3 import Web3

    from backend.chain.contracts import contract_at, load_deployment

    deployment = load_deployment(SERVER_FILES["deployment"])
    w3 = Web3(Web3.HTTPProvider(SERVER_FILES["rpc"]))
    return contract_at(w3, name, deployment.address(name))


def _new_participant(url: str, bus: int) -> str:
    """A fresh wallet registered through the API's signed connection request, with 1 ETH for gas
    and 50 tokens of its own (withdrawn from account 8's dev deposit and sent over)."""
    from backend.chain.client import ChainClient

    key = "0x" + Account.create().key.hex().removeprefix("0x")
    wallet = Account.from_key(key).address
    template = httpx.get(url + "/participants/eip712").json()
    message = {
        "wallet": wallet,
        "meter": Account.create().address,
        "busId": bus,
        "maxExportW": 50_000,
        "maxImportW": 50_000,
        "nonce": 1,
        "expiry": 2**40,
    }
    sig = Account.sign_typed_data(key, full_message={**template, "message": message}).signature
    r = httpx.post(
        url + "/participants",
        json={"message": message, "signature": "0x" + sig.hex().removeprefix("0x")},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    funder = ChainClient(SERVER_FILES["rpc"], ORACLE_KEY)
    market, token = _contract("EnergyMarket"), _contract("EnergyToken")
    funder.transact(market.functions.withdraw(50_000_000))
    funder.transact(token.functions.transfer(wallet, 50_000_000))
    httpx.post(
        SERVER_FILES["rpc"],
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "anvil_setBalance",
            "params": [wallet, hex(10**18)],
        },
    ).raise_for_status()
    return key


def test_registered_wallet_deposits_exact_amount_and_can_then_buy(server: str, tab: Page) -> None:
    key = _new_participant(server, CONNECT_BUS + 1)
    wallet = _wallet(key)
    market, token = _contract("EnergyMarket"), _contract("EnergyToken")
    wallet.install(tab.page)
    page = tab.open(server)
    page.click("#wallet-connect")
    funds = "#funds dd[data-fund='{}']"
    page.locator(funds.format("walletBalance")).wait_for()
    assert page.locator(funds.format("walletBalance")).inner_text() == "50 TEGT"
    assert page.locator(funds.format("available")).inner_text() == "0 TEGT"

    # a buy needs escrow: refused before the deposit
    iv = open_interval(server, 7)
    page.select_option("#order-form select[name='side']", "buy")
    page.fill("#order-form input[name='energyKwh']", "2")
    page.fill("#order-form input[name='priceToken']", "0.5")
    page.fill("#order-form input[name='intervalId']", str(iv))
    page.click("#order-submit")
    page.locator("#order-result.refused").wait_for()
    assert page.locator("#refusal-code").inner_text() == "INSUFFICIENT_DEPOSIT"

    # amounts are checked (exactly, as decimals) before the wallet is asked for anything
    for amount, refusal in (
        ("1.0000001", "INVALID_AMOUNT: amount 1.0000001 has more than the token's 6 decimals"),
        (
            "1e3",
            "INVALID_AMOUNT: amount '1e3' is not a decimal number of tokens (digits, "
            "optionally '.' and more digits)",
        ),
        (
            "50.000001",
            "INSUFFICIENT_TOKENS: the wallet holds 50 TEGT, less than the 50.000001 "
            "TEGT to deposit",
        ),
    ):
        page.fill("#deposit-form input[name='amount']", amount)
        page.click("#deposit-submit")
        page.wait_for_function(
            "(t) => document.querySelector('#deposit-result.refused')?.textContent === t",
            arg=refusal,
        )
    assert wallet.sent == []

    page.fill("#deposit-form input[name='amount']", "12.345678")
    page.click("#deposit-submit")
    page.locator("#deposit-done").wait_for()
    assert page.locator("#deposit-done").inner_text() == "deposited 12.345678 TEGT"
    units = 12_345_678
    assert market.functions.balanceOf(wallet.address).call() == [units, 0]
    assert token.functions.balanceOf(wallet.address).call() == 50_000_000 - units
    assert token.functions.allowance(wallet.address, market.address).call() == 0
    # approve of exactly the amount, then deposit: the two calls the wallet signed and sent
    assert [(t["to"], t["data"]) for t in wallet.sent] == [
        (token.address, token.encode_abi("approve", args=[market.address, units])),
        (market.address, market.encode_abi("deposit", args=[units])),
    ]
    page.wait_for_function(
        "(sel) => document.querySelector(sel).textContent === '12.345678 TEGT'",
        arg=funds.format("available"),
    )
    assert page.locator(funds.format("walletBalance")).inner_text() == "37.654322 TEGT"
    assert page.locator(funds.format("locked")).inner_text() == "0 TEGT"
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".wallet-card").screenshot(path=str(ARTIFACTS / "dashboard-deposit.png"))

    # the same buy is accepted now (2 kWh at 0.5 token/kWh escrows 1 token)
    page.click("#order-submit")
    page.locator("#order-result.accepted").wait_for()
    order = httpx.get(f"{server}/orders/{page.locator('#order-hash').inner_text()}").json()
    assert (order["trader"], order["side"], order["energyWh"], order["status"]) == (
        wallet.address,
        1,
        2_000,
        "open",
    )
    assert wallet.calls == []
    assert [
        e
        for e in tab.errors
        if "status of 402" not in e and "status of 422" not in e and "status of 409" not in e
    ] == []


def test_readings_and_settlement_arrive_live(server: str, tab: Page) -> None:
    """Runs last: moves chain time past its interval so meters can report and the keeper settle."""
    from backend.chain.contracts import load_deployment
    from backend.devtools.clock import end_interval
    from backend.iot.meters import dev_meter_key
    from backend.iot.signing import Reading, sign_reading
    from backend.oracle.web3_ledger import Web3Ledger

    page = tab.open(server)
    page.evaluate("window.__sameDocument = 7")
    iv = open_interval(server, 4)
    seller, buyer = 6, 7
    for o in (
        signed_order(server, ANVIL_KEYS[seller], 0, 4_000, 100_000, iv),
        signed_order(server, ANVIL_KEYS[buyer], 1, 4_000, 100_000, iv),
    ):
        assert httpx.post(server + "/orders", json=o).status_code == 201
    r = httpx.post(f"{server}/intervals/{iv}/close", timeout=120)
    assert r.status_code == 200 and r.json()["approvedCount"] == 1, r.text
    (trade,) = httpx.get(f"{server}/trades?interval={iv}").json()
    # the page follows the live interval: this interval's approved row appears without reload
    page.locator(f'#trades-table tr.approved[data-trade="{trade["id"]}"]').wait_for()
    assert page.locator("#readings li.empty").count() == 1

    deployment = load_deployment(SERVER_FILES["deployment"])
    ledger = Web3Ledger(SERVER_FILES["rpc"], ORACLE_KEY, deployment)
    end_interval(ledger.w3, iv, 900)
    separator = ledger.domain().separator()
    items = []
    for index, import_wh, export_wh in ((seller, 0, 4_000), (buyer, 3_000, 0)):
        wallet = Account.from_key(ANVIL_KEYS[index]).address
        meter = httpx.get(f"{server}/participants/{wallet}").json()["meter"]
        reading = Reading(meter, iv, import_wh, export_wh)
        items.append((reading, sign_reading(dev_meter_key(index), separator, reading)))
    tx_hash, raw = ledger.prepare_batch(iv, items)
    ledger.send_raw(raw)
    receipt = ledger.receipt(tx_hash, 30)
    assert receipt is not None and receipt.status == 1

    # the keeper settles once both readings are in; the page hears it on the event stream
    page.locator("#readings li:not(.empty)").nth(1).wait_for(timeout=60_000)
    readings_text = page.locator("#readings").inner_text()
    assert "export 4 kWh" in readings_text and "import 3 kWh" in readings_text
    # trades settle firm: 4 kWh at 0.1 token/kWh are paid though the buyer took 3 (its 1 kWh
    # long is imbalance, settled with the balancing account)
    rows = page.locator("#settlement-table tbody tr")
    page.wait_for_function(
        "document.querySelector('#settlement-table').textContent.includes('+0.4')", timeout=60_000
    )
    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert any("4 / 4" in t and "+0.4" in t for t in texts), texts
    assert any("4 / 4" in t and "\N{MINUS SIGN}0.4" in t for t in texts), texts
    trades = httpx.get(f"{server}/trades?interval={iv}").json()
    assert [(t["deliveredWh"], t["paid"]) for t in trades] == [(4_000, "400000")]
    # the buyer's 1 kWh long at 0.5 x 0.1 token/kWh: 0.05 token from the balancing account
    imbalance = httpx.get(f"{server}/intervals/{iv}").json()["imbalance"]
    parties = {p["account"]: p for p in imbalance["participants"]}
    buyer_wallet = Account.from_key(ANVIL_KEYS[buyer]).address
    assert (parties[buyer_wallet]["deviationWh"], parties[buyer_wallet]["received"]) == (
        1_000, "50000",
    )  # fmt: skip
    # the imbalance table: contracted vs metered, the buyer's 1 kWh long paid at the long price
    page.locator(f'#imbalance-table tr[data-account="{buyer_wallet}"]').wait_for()
    seller_wallet = Account.from_key(ANVIL_KEYS[seller]).address
    cells = {
        w: page.locator(f'#imbalance-table tr[data-account="{w}"] td').all_inner_texts()
        for w in (seller_wallet, buyer_wallet)
    }
    assert cells == {
        seller_wallet: [f"{seller_wallet[:6]}…{seller_wallet[-4:]}", "+4", "+4", "0", "—", "—"],
        buyer_wallet: [f"{buyer_wallet[:6]}…{buyer_wallet[-4:]}", "\N{MINUS SIGN}4",
                       "\N{MINUS SIGN}3", "+1 (long)", "receives 0.05", "—"],
    }  # fmt: skip
    assert page.locator("#imbalance-meta").inner_text() == (
        "· P 0.1 token/kWh · short 1.5 \N{MULTIPLICATION SIGN} P = 0.15 · long 0.5 "
        "\N{MULTIPLICATION SIGN} P = 0.05 token/kWh"
        " · collected 0 · paid out 0.05"
    )
    assert page.locator("#iv-mode").inner_text() == "grid-connected"
    assert page.evaluate("window.__sameDocument") == 7
    page.screenshot(path=str(ARTIFACTS / "dashboard-settled.png"), full_page=True)
    assert tab.errors == []


def test_api_docs_render_without_internet(server: str, tab: Page) -> None:
    """/docs loads Swagger UI from the API itself: every request the page makes stays on the
    server's origin (anything else is refused here, as on a machine without internet) and the
    operations are drawn."""
    foreign: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(server):
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    page = tab.page
    page.route("**/*", route)
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=TIMEOUT_MS)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/orders" in paths and "/intervals/next-open" in paths
    assert foreign == []


# ---------------------------------------------------------------- the active Neural Grid (#17)
# A rescue needs a vetoed trade that an offer relieves and parties with remedy caps: built as
# tests/backend/market/test_remedy_market.py builds it (in-memory ledger, the real Neural Grid on
# cigre_lv, the real market's clearing), served by the real app in a uvicorn thread with a real
# control store, and watched by the real browser while it happens.
REMEDY_KEYS = ANVIL_KEYS[1:4]
REMEDY_DEVICE_KEY = "0x" + "5a" * 32
OPERATOR_KEY = ANVIL_KEYS[0]


@contextlib.contextmanager
def _memory_stack(tmp: Path, network: str, ledger: Any) -> Iterator[dict[str, Any]]:
    """The real market on ``ledger`` (in memory) and ``network``'s Neural Grid, served by the
    real app in a uvicorn thread with a real control store."""
    from backend.api.app import create_app
    from backend.devtools.server import start_in_thread
    from backend.iot.control_store import ControlStore
    from backend.market.grid_port import GridPortAdapter
    from backend.market.service import Market, MarketConfig
    from backend.market.store import Store

    grid = GridPortAdapter(network, 900, clearing="greedy")
    market = Market(
        Store(f"sqlite:///{tmp / 'book.db'}"), ledger, grid, ANVIL_KEYS[9],
        MarketConfig(interval_seconds=900),
    )  # fmt: skip
    control = ControlStore(f"sqlite:///{tmp / 'control.db'}")
    app = create_app(market, scheduler=False, control_store=control, control_poll_seconds=0.05)
    handle = start_in_thread(app)
    try:
        yield {"url": handle.url, "market": market, "control": control}
    finally:
        handle.stop()
        control.close()
        market.store.close()


@pytest.fixture
def remedy_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from backend.market.memory import MemoryLedger

    seller, buyer, provider = (Account.from_key(k).address for k in REMEDY_KEYS)
    ledger = MemoryLedger()
    for wallet, bus in ((seller, 24), (buyer, 2), (provider, 16)):
        ledger.add_participant(wallet, bus, 200_000, 200_000, deposit=100_000)
    device = Account.from_key(REMEDY_DEVICE_KEY).address
    ledger.register_device(device, provider, 16, 1, -60_000, 60_000, 120_000)
    ledger.remedy_caps = {seller: 20, buyer: 20}
    with _memory_stack(tmp_path, NETWORK, ledger) as stack:
        yield {**stack, "device": device}


def _market_sign(market: Any, primary: str, key: str, msg: dict[str, Any]) -> str:
    doc = {**market.template(primary), "message": msg}
    return "0x" + Account.sign_typed_data(key, full_message=doc).signature.hex().removeprefix("0x")


def test_activation_shown_on_map_panel_and_trade_live(
    remedy_stack: dict[str, Any], tab: Page
) -> None:
    from backend.chain import protocol
    from backend.cli.activations import MarketActivations
    from backend.iot.control import ControlAck, registry_domain

    url, m, control = remedy_stack["url"], remedy_stack["market"], remedy_stack["control"]
    iv = m.current_interval() + 2
    iv += (80 - iv) % 96  # 20:00, the residential evening peak: the pair is vetoed
    page = tab.page
    page.goto(f"{url}/#interval={iv}")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate("window.__sameDocument = 17")
    # before anything is offered: the empty states say what would fill them
    page.locator("#offers-table tr.empty").wait_for()
    empty = {
        "#offers-table tbody": "no flexibility offers for this interval: a registered device's "
        "owner signs one (POST /flex)",
        "#activations-table tbody": "no activations: they appear when the clearing rescues a "
        "vetoed trade with the offers above (or buys a DSO repair)",
        "#activation-list": "no activations in this interval: the clearing buys flexibility only "
        "to rescue a vetoed trade or to repair a limit the base state breaks",
        "#control-table tbody": "no control actions: the dispatcher (tegrid dispatcher) signs one "
        "per activation once the batch is on chain",
        "#imbalance-table tbody": "imbalance is settled with the interval's last settlement page, "
        "once the meters have reported",
    }
    assert {sel: page.locator(sel).inner_text().strip() for sel in empty} == empty
    assert page.locator("#iv-mode").inner_text() == "mode: set at clearing"

    hashes = []
    for n, (key, side, price) in enumerate(
        ((REMEDY_KEYS[0], protocol.SELL, 100), (REMEDY_KEYS[1], protocol.BUY, 300))
    ):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": n + 1,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        hashes.append(m.submit_order(msg, _market_sign(m, "Order", key, msg)).hash)
    offer = {"provider": Account.from_key(REMEDY_KEYS[2]).address,
             "device": remedy_stack["device"], "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": 1,
             "expiry": iv * 900 + 3600}  # fmt: skip
    offer_row = m.submit_flex(offer, _market_sign(m, "FlexOffer", REMEDY_KEYS[2], offer))
    page.locator(f'#offers-table tr[data-offer="{offer_row.hash}"]').wait_for()
    offer_cells = page.locator(f'#offers-table tr[data-offer="{offer_row.hash}"] td')
    assert offer_cells.all_inner_texts() == [
        remedy_stack["device"][:6] + "…" + remedy_stack["device"][-4:],
        "▲ up", "60,000 W", "0 W", "0.00005", "open",
    ]  # fmt: skip

    m.close_interval(iv, force=True)
    trade_id = protocol.trade_id_hex(*hashes)
    activation_id = protocol.activation_id_hex(offer_row.hash, trade_id)
    # live, without reload: the activation at bus 16, up (a triangle pointing up), focusable
    mark = page.locator(f'#grid-map path.act-mark[data-activation="{activation_id}"]')
    mark.wait_for()
    assert (mark.get_attribute("data-bus"), mark.get_attribute("class")) == ("16", "act-mark up")
    expected = (
        f"▲ up 35,212 W at bus 16 · setpoint 35,212 W · device {remedy_stack['device'][:6]}…"
        f"{remedy_stack['device'][-4:]} · rescues trade {trade_id[:6]}…{trade_id[-4:]}"
    )
    assert mark.get_attribute("aria-label") == expected + " · control: not sent yet"
    assert page.locator("#iv-mode").inner_text() == "grid-connected"
    assert httpx.get(f"{url}/intervals/{iv}").json()["gridMode"] == 0
    # the rescued trade: approved, its arc and its row link to the activation
    arc = page.locator(f'#grid-map path.trade[data-trade="{trade_id}"]')
    assert arc.get_attribute("data-activations") == activation_id
    link = page.locator(f'#trades-table tr[data-trade="{trade_id}"] a.rescue-link')
    assert link.inner_text() == "rescued by 1 activation(s)"
    assert link.get_attribute("href") == f"#act-{activation_id}"
    # the panel: the offer activated with what is left, the activation's cost and payers
    page.wait_for_function(
        f"document.querySelector('#offers-table tr[data-offer=\"{offer_row.hash}\"] td:last-child')"
        ".textContent === 'activated · 24,788 W left'"
    )
    seller, buyer = (Account.from_key(k).address for k in REMEDY_KEYS[:2])
    short = lambda a: f"{a[:6]}…{a[-4:]}"  # noqa: E731
    act_cells = page.locator(f'#activations-table tr[data-activation="{activation_id}"] td')
    assert act_cells.all_inner_texts() == [
        "▲ up bus 16", "35,212 W", "35,212 W", "0.00044",
        f"{short(seller)} 0.00022, {short(buyer)} 0.00022", f"rescues trade {short(trade_id)}",
    ]  # fmt: skip

    # the control loop's states arrive on the event stream: pending, sent, acknowledged
    control.add(MarketActivations(m.store, 900).pending_activations(iv))
    row = page.locator(f'#control-table tr[data-action="{activation_id}"]')
    row.wait_for()
    domain = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    control.sign_pending(
        lambda a: a.sign(OPERATOR_KEY, domain), Account.from_key(OPERATOR_KEY).address, time.time()
    )
    page.wait_for_function(
        f"document.querySelector('#control-table tr[data-action=\"{activation_id}\"]')"
        ".dataset.state === 'sent'"
    )
    assert row.locator("td").all_inner_texts() == [
        short(remedy_stack["device"]), "35,212 W", "sent (1 attempt)",
    ]  # fmt: skip
    ack = ControlAck(bytes.fromhex(activation_id[2:]), remedy_stack["device"], 0, 35_212, 1)
    assert control.record_acks([ack.sign(REMEDY_DEVICE_KEY, domain)]) == ["acknowledged"]
    page.wait_for_function(
        f"document.querySelector('#control-table tr[data-action=\"{activation_id}\"]')"
        ".dataset.state === 'acknowledged'"
    )
    assert row.locator("td").nth(2).inner_text() == "acknowledged (applied 35,212 W)"
    assert page.locator("#flex-meta").inner_text() == (
        "· 1 offer(s), 1 activation(s), 1 control action(s) (1 acknowledged)"
    )
    acked = expected + " · control acknowledged (applied 35,212 W)"
    assert page.locator(f"#activation-list li#act-{activation_id}").inner_text() == acked

    # keyboard: Tab reaches the mark on the map; its tooltip shows the numbers while focused
    mark.focus()
    tip = page.locator("#tooltip")
    assert tip.is_visible() and tip.inner_text() == acked
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.activation") == activation_id
    assert page.evaluate("window.__sameDocument") == 17
    page.screenshot(path=str(ARTIFACTS / "dashboard-activation.png"), full_page=True)

    # a refusal: the same rescue one interval later; the device answers state_of_charge
    iv2 = iv + 1
    for n, (key, side, price) in enumerate(
        ((REMEDY_KEYS[0], protocol.SELL, 100), (REMEDY_KEYS[1], protocol.BUY, 300))
    ):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv2,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": n + 3,
               "expiry": iv2 * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        m.submit_order(msg, _market_sign(m, "Order", key, msg))
    offer = {**offer, "intervalId": iv2, "nonce": 2, "expiry": iv2 * 900 + 3600}
    m.submit_flex(offer, _market_sign(m, "FlexOffer", REMEDY_KEYS[2], offer))
    m.close_interval(iv2, force=True)
    [act2] = m.store.activations(iv2)
    page.focus("#iv-next")
    page.keyboard.press("Enter")
    mark2 = page.locator(f'#grid-map path.act-mark[data-activation="{act2.id}"]')
    mark2.wait_for()
    assert page.locator(f'#grid-map path.act-mark[data-activation="{activation_id}"]').count() == 0
    control.add(MarketActivations(m.store, 900).pending_activations(iv2))
    control.sign_pending(
        lambda a: a.sign(OPERATOR_KEY, domain), Account.from_key(OPERATOR_KEY).address, time.time()
    )
    refusal = ControlAck(bytes.fromhex(act2.id[2:]), remedy_stack["device"], 6, 0, 2)
    assert control.record_acks([refusal.sign(REMEDY_DEVICE_KEY, domain)]) == ["refused"]
    page.wait_for_function(
        f"document.querySelector('#control-table tr[data-action=\"{act2.id}\"]')"
        "?.dataset.state === 'refused'"
    )
    cells2 = page.locator(f'#control-table tr[data-action="{act2.id}"] td').all_inner_texts()
    assert cells2[2] == "refused: state_of_charge"
    assert mark2.get_attribute("aria-label").endswith(" · control refused: state_of_charge")
    assert tab.errors == []
    assert tab.errors == []


def _memory_order(market: Any, key: str, side: int, interval: int, nonce: int) -> str:
    from backend.chain import protocol

    msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": interval,
           "energyWh": 1_000, "pricePerKWh": 100, "nonce": nonce,
           "expiry": interval * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
    return str(market.submit_order(msg, _market_sign(market, "Order", key, msg)).hash)


def test_islanded_interval_shows_its_mode_live_and_after_reload(tmp_path: Path, tab: Page) -> None:
    """The registry islanded (#18): village_island's grid-forming units balance the interval; the
    header says so when the clearing event arrives and, after a reload, from the interval view."""
    from backend.market.memory import MemoryLedger

    seller, buyer = (Account.from_key(k).address for k in ANVIL_KEYS[1:3])
    ledger = MemoryLedger()
    ledger.add_participant(seller, 3, 200_000, 200_000, deposit=100_000)
    ledger.add_participant(buyer, 5, 200_000, 200_000, deposit=100_000)
    ledger.grid_mode_now = 1
    with _memory_stack(tmp_path, "village_island", ledger) as stack:
        url, m = stack["url"], stack["market"]
        iv = m.current_interval() + 2
        page = tab.page
        page.goto(f"{url}/#interval={iv}")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#iv-mode").inner_text() == "mode: set at clearing"
        _memory_order(m, ANVIL_KEYS[1], 0, iv, 1)
        _memory_order(m, ANVIL_KEYS[2], 1, iv, 2)
        m.close_interval(iv, force=True)
        page.wait_for_function("document.querySelector('#iv-mode').textContent === 'islanded'")
        assert page.locator("#iv-mode").get_attribute("class") == "mode islanded"
        assert httpx.get(f"{url}/intervals/{iv}").json()["gridMode"] == 1
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function("document.querySelector('#iv-mode').textContent === 'islanded'")
        # an interval this market never cleared: no mode to show
        page.keyboard.press("Tab")  # the header's first control: the previous-interval button
        assert page.evaluate("document.activeElement.id") == "iv-prev"
        page.keyboard.press("Enter")
        page.wait_for_function(
            f"document.querySelector('#iv-label b').textContent === 'interval {iv - 1}'"
        )
        assert page.locator("#iv-mode").inner_text() == "mode: set at clearing"
        assert tab.errors == []
