"""The market API against a real Anvil, the deployed contracts and the real Neural Grid."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from web3 import Web3

from backend.api.app import create_app
from backend.api.schemas import OrderOut
from backend.chain import protocol
from backend.chain.contracts import contract_at
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now, set_time
from backend.devtools.devstack import start_dev_stack
from backend.devtools.server import ServerHandle, start_in_thread
from backend.market.factory import build_market
from backend.settings import ANVIL_KEYS
from grid import GridValidator, Trade

ZERO = "0x" + "00" * 20


def sign_order(template: dict[str, Any], key: str, **fields: Any) -> dict[str, Any]:
    msg = {"trader": Account.from_key(key).address, "counterparty": ZERO, **fields}
    sig = Account.sign_typed_data(key, full_message={**template, "message": msg}).signature.hex()
    return {"message": msg, "signature": "0x" + sig.removeprefix("0x")}


def wait_http(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not become healthy")


pytestmark = pytest.mark.e2e
K = ANVIL_KEYS
NONCES = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("market-e2e")
    with AnvilProcess() as anvil:
        # the grid's base state follows the hour of day: pin the chain clock to 12:00 UTC tomorrow
        # so the far-end voltage rise of the veto test does not depend on when the suite runs
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        set_time(w3, (chain_now(w3) // 86400 + 1) * 86400 + 12 * 3600)
        settings = dev_settings(tmp, anvil.url)
        dev = start_dev_stack(settings)
        market = build_market(settings)
        app = create_app(market, dev=True, scheduler=False)
        server: ServerHandle = start_in_thread(app)
        client = httpx.Client(base_url=server.url, timeout=120)
        try:
            yield {"client": client, "market": market, "dev": dev, "settings": settings}
        finally:
            client.close()
            server.stop()
            market.store.close()


AHEAD = itertools.count(3)


def _interval(stack: dict[str, Any], ahead: int | None = None) -> int:
    """A fresh future interval per call (each test clears its own)."""
    step = next(AHEAD) if ahead is None else ahead
    return int(stack["client"].get("/intervals/current").json()["id"]) + step


def _order(
    stack: dict[str, Any], key: str, side: int, wh: int, price: int, interval: int, **extra: Any
) -> dict[str, Any]:
    template = stack["client"].get("/orders/eip712").json()
    fields = {
        "side": side,
        "intervalId": interval,
        "energyWh": wh,
        "pricePerKWh": price,
        "nonce": next(NONCES),
        "expiry": interval * 900 + 7200,
        **extra,
    }
    return sign_order(template, key, **fields)


def test_post_order_signed_from_template_is_recorded_on_chain(stack: dict[str, Any]) -> None:
    c, market = stack["client"], stack["market"]
    iv = _interval(stack)
    sell = _order(stack, K[1], 0, 2000, 200_000, iv)
    buy = _order(stack, K[2], 1, 2000, 300_000, iv)
    for o in (sell, buy):
        r = c.post("/orders", json=o)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "open"
        # the accept path's hand-built 201 body equals the OrderOut a later GET gives
        assert r.json() == c.get(f"/orders/{r.json()['hash']}").json()
        assert list(r.json()) == list(OrderOut.model_fields)
    r = c.post(f"/intervals/{iv}/close")
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    assert r.json()["clearingPrice"] == "250000"
    # read back from the chain, not the database
    w3 = market.ledger.w3  # type: ignore[attr-defined]
    contract = contract_at(w3, "EnergyMarket", market.ledger.market_address)
    last, batches, approved, expected, _paged, settled, *_rest = contract.functions.intervalOf(
        iv
    ).call()
    assert (batches, approved, expected, settled) == (1, 1, 1, False)
    for o in (sell, buy):
        filled, cancelled = contract.functions.filledOf(
            o["message"]["trader"], o["message"]["nonce"]
        ).call()
        assert (filled, cancelled) == (2000, False)
    _avail, locked = contract.functions.balanceOf(Account.from_key(K[2]).address).call()
    assert locked >= 2000 * 250_000 // 1000
    trades = c.get("/trades", params={"interval": iv}).json()
    assert len(trades) == 1 and trades[0]["id"] == "0x" + bytes(last).hex()
    assert trades[0]["status"] == "recorded" and trades[0]["txHash"]


def test_get_trade_by_id_names_its_orders_and_matches_the_chain(stack: dict[str, Any]) -> None:
    c, market = stack["client"], stack["market"]
    iv = _interval(stack)
    sell = _order(stack, K[3], 0, 1500, 200_000, iv)
    buy = _order(stack, K[4], 1, 1500, 300_000, iv)
    for o in (sell, buy):
        assert c.post("/orders", json=o).status_code == 201
    assert c.post(f"/intervals/{iv}/close").json()["status"] == "recorded"
    (listed,) = c.get("/trades", params={"interval": iv}).json()
    r = c.get(f"/trades/{listed['id']}")
    assert (r.status_code, r.json()) == (200, listed)
    assert c.get("/trades/0x" + listed["id"][2:].upper()).json() == listed
    # the id hashes the two signed orders, which the API names
    assert protocol.trade_id_hex(listed["sellOrder"], listed["buyOrder"]) == listed["id"]
    for side, order in (("sellOrder", sell), ("buyOrder", buy)):
        got = c.get(f"/orders/{listed[side]}").json()
        assert (got["trader"], got["nonce"]) == (
            order["message"]["trader"],
            str(order["message"]["nonce"]),
        )
    # the chain's TradeRecorded, found by its indexed seller, says the same
    contract = contract_at(market.ledger.w3, "EnergyMarket", market.ledger.market_address)  # type: ignore[attr-defined]
    logs = contract.events.TradeRecorded.get_logs(
        argument_filters={"seller": sell["message"]["trader"]}, from_block=0
    )
    (ours,) = [
        lg["args"] for lg in logs if "0x" + bytes(lg["args"]["tradeId"]).hex() == listed["id"]
    ]
    assert (ours["buyer"], ours["intervalId"], ours["energyWh"], ours["pricePerKWh"]) == (
        buy["message"]["trader"],
        iv,
        1500,
        int(listed["pricePerKWh"]),
    )
    unknown = "0x" + "11" * 32
    r = c.get(f"/trades/{unknown}")
    assert (r.status_code, r.json()) == (
        404,
        {"detail": {"code": "NOT_FOUND", "message": f"no trade {unknown}"}},
    )
    for bad in ("0x1234", "0x" + "g" * 64, "11" * 33, "0x" + "11" * 33):
        r = c.get(f"/trades/{bad}")
        assert (r.status_code, r.json()["detail"]["code"]) == (422, "INVALID_REQUEST"), bad


def test_close_without_wait_answers_cleared_and_records_in_the_background(
    stack: dict[str, Any],
) -> None:
    c, market = stack["client"], stack["market"]
    first, second = _interval(stack), _interval(stack)
    for iv in (first, second):
        for o in (_order(stack, K[1], 0, 1000, 100, iv), _order(stack, K[2], 1, 1000, 300, iv)):
            assert c.post("/orders", json=o).status_code == 201
    for iv in (first, second):  # the second clears while the first batch may still be sent
        r = c.post(f"/intervals/{iv}/close", params={"wait": "false"})
        assert r.status_code == 200 and r.json()["status"] in ("cleared", "recorded"), r.text
        assert r.json()["approvedCount"] == 1
    w3 = market.ledger.w3  # type: ignore[attr-defined]
    contract = contract_at(w3, "EnergyMarket", market.ledger.market_address)
    deadline = time.monotonic() + 30
    for iv in (first, second):
        while c.get(f"/intervals/{iv}").json()["status"] != "recorded":
            assert time.monotonic() < deadline, f"interval {iv} not recorded"
            time.sleep(0.05)
        _last, batches, approved, *_rest = contract.functions.intervalOf(iv).call()
        assert (batches, approved) == (1, 1)


def test_post_order_refusals_are_exact(stack: dict[str, Any]) -> None:
    c = stack["client"]
    iv = _interval(stack)
    good = _order(stack, K[3], 0, 1000, 100, iv)
    tampered = {**good, "message": {**good["message"], "energyWh": 1001}}
    r = c.post("/orders", json=tampered)
    assert (r.status_code, r.json()["detail"]["code"]) == (401, "BAD_SIGNATURE")
    template = c.get("/orders/eip712").json()
    other_chain = {**template, "domain": {**template["domain"], "chainId": 1}}
    wrong = sign_order(other_chain, K[3], **{**good["message"], "nonce": 777})
    r = c.post("/orders", json=wrong)
    assert (r.status_code, r.json()["detail"]["code"]) == (401, "BAD_SIGNATURE")
    r = c.post("/orders", json={**wrong, "domain": other_chain["domain"]})
    assert (r.status_code, r.json()["detail"]["code"]) == (400, "WRONG_DOMAIN")
    assert c.post("/orders", json=good).status_code == 201
    r = c.post("/orders", json=good)
    assert (r.status_code, r.json()["detail"]["code"]) == (409, "NONCE_USED")
    expired = _order(stack, K[3], 0, 1000, 100, iv, expiry=1_000_000)
    r = c.post("/orders", json=expired)
    assert (r.status_code, r.json()["detail"]["code"]) == (422, "ORDER_EXPIRED")
    stranger = "0x" + "42" * 32
    r = c.post("/orders", json=_order(stack, stranger, 0, 1000, 100, iv))
    assert (r.status_code, r.json()["detail"]["code"]) == (403, "UNKNOWN_TRADER")
    r = c.post("/orders", json=_order(stack, K[3], 0, 60_000, 100, iv))  # 200 kW x 0.25 h = 50 kWh
    assert (r.status_code, r.json()["detail"]["code"]) == (422, "OVER_CONNECTION_LIMIT")
    r = c.post("/orders", json=_order(stack, K[3], 1, 50_000, 10**20, iv))
    assert (r.status_code, r.json()["detail"]["code"]) == (402, "INSUFFICIENT_DEPOSIT")
    r = c.post("/orders", json=_order(stack, K[3], 0, 1000, 100, _interval(stack, 0)))
    assert (r.status_code, r.json()["detail"]["code"]) == (409, "INTERVAL_CLOSED")


@contextlib.contextmanager
def greedy_clearing(market: Any) -> Iterator[None]:
    """The market's grid port clears in merit order with whole-pair vetoes (TEGRID_CLEARING=greedy)
    for the block."""
    port = market.grid
    port.clearing = "greedy"
    try:
        yield
    finally:
        port.clearing = "optimal"


def test_optimal_clearing_fills_the_far_offer_in_part(stack: dict[str, Any]) -> None:
    """The book of the veto test below, cleared optimally: the far offer is filled as far as the
    voltage allows (no veto), the near one in full, and the interval says how it was cleared."""
    c = stack["client"]
    iv = _interval(stack)
    far = _order(stack, K[9], 0, 25_000, 100_000, iv)
    near = _order(stack, K[5], 0, 25_000, 150_000, iv)
    buy = _order(stack, K[6], 1, 40_000, 300_000, iv)
    for o in (far, near, buy):
        assert c.post("/orders", json=o).status_code == 201
    r = c.post(f"/intervals/{iv}/close").json()
    assert r["status"] == "recorded" and r["vetoedCount"] == 0 and r["clearingMethod"] == "optimal"
    trades = {t["seller"]: t for t in c.get("/trades", params={"interval": iv}).json()}
    part = trades[Account.from_key(K[9]).address]
    full = trades[Account.from_key(K[5]).address]
    assert part["approved"] and full["approved"]
    assert 0 < part["energyWh"] < 25_000 and 0 < full["energyWh"] <= 25_000
    assert part["energyWh"] + full["energyWh"] <= 40_000
    # welfare: (bid - ask) x kWh of both trades, in token base units
    assert (
        int(r["welfare"])
        == ((300_000 - 100_000) * part["energyWh"] + (300_000 - 150_000) * full["energyWh"]) // 1000
    )


def test_vetoed_trade_is_recorded_with_reason_and_volume_moves_on(stack: dict[str, Any]) -> None:
    c, market = stack["client"], stack["market"]
    buses = {p["wallet"]: p["bus"] for p in stack["dev"].participants}
    iv = _interval(stack)
    # 100 kW exported at the far end of the feeder (participant 9) raises its voltage too high
    far = _order(stack, K[9], 0, 25_000, 100_000, iv)
    near = _order(stack, K[5], 0, 25_000, 150_000, iv)
    buy = _order(stack, K[6], 1, 25_000, 300_000, iv)
    for o in (far, near, buy):
        assert c.post("/orders", json=o).status_code == 201
    with greedy_clearing(market):
        r = c.post(f"/intervals/{iv}/close").json()
    assert r["clearingMethod"] == "greedy"
    assert r["status"] == "recorded" and r["vetoedCount"] == 1 and r["approvedCount"] == 1
    trades = {t["seller"]: t for t in c.get("/trades", params={"interval": iv}).json()}
    vetoed = trades[Account.from_key(K[9]).address]
    assert (
        vetoed["approved"] is False
        and vetoed["reason"] == "VOLTAGE_HIGH"
        and vetoed["verdict"] == 1
    )
    moved = trades[Account.from_key(K[5]).address]
    assert moved["approved"] is True and moved["energyWh"] == 25_000
    # the veto's binding constraint, as a validator of our own computes it for the final list
    # (merit order: the far offer first, vetoed, then the near one)
    fresh = GridValidator("cigre_lv").validate(
        [Trade(t["id"], t["sellerBus"], t["buyerBus"], t["energyWh"] / 0.25 / 1000)
         for t in (vetoed, moved)],
        interval=iv,
    ).verdicts  # fmt: skip
    assert (vetoed["element"], vetoed["vetoValue"], vetoed["vetoLimit"]) == (
        fresh[0].element, fresh[0].value, fresh[0].limit
    )  # fmt: skip
    assert fresh[0].limit == 1.10 and vetoed["vetoValue"] > 1.10
    assert (moved["vetoValue"], moved["vetoLimit"]) == (None, None)
    assert moved["sellerBus"] == buses[Account.from_key(K[5]).address]
    w3 = market.ledger.w3  # type: ignore[attr-defined]
    contract = contract_at(w3, "EnergyMarket", market.ledger.market_address)
    logs = contract.events.TradeVetoed.get_logs(from_block=0)
    assert any(
        "0x" + bytes(lg["args"]["tradeId"]).hex() == vetoed["id"] and lg["args"]["reason"] == 1
        for lg in logs
    )
    assert (
        contract.functions.filledOf(Account.from_key(K[9]).address, far["message"]["nonce"]).call()[
            0
        ]
        == 0
    )


def test_cancel_participants_grid_status_and_events(stack: dict[str, Any]) -> None:
    c, market = stack["client"], stack["market"]
    iv = _interval(stack)
    o = _order(stack, K[4], 0, 1000, 100, iv)
    h = c.post("/orders", json=o).json()["hash"]
    tpl = c.get("/orders/eip712", params={"primaryType": "Cancel"}).json()
    msg = {"trader": o["message"]["trader"], "orderHash": h}
    bad = Account.sign_typed_data(K[5], full_message={**tpl, "message": msg}).signature.hex()
    r = c.post(f"/orders/{h}/cancel", json={"signature": "0x" + bad.removeprefix("0x")})
    assert (r.status_code, r.json()["detail"]["code"]) == (401, "BAD_SIGNATURE")
    sig = Account.sign_typed_data(K[4], full_message={**tpl, "message": msg}).signature.hex()
    r = c.post(f"/orders/{h}/cancel", json={"signature": "0x" + sig.removeprefix("0x")})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # plug-and-play connection of a new wallet
    wallet = Account.create()
    meter = Account.create()
    ctpl = c.get("/participants/eip712").json()
    bus = market.grid.load_buses()[3]  # type: ignore[union-attr]
    now = market.ledger.now()
    cmsg = {
        "wallet": wallet.address,
        "meter": meter.address,
        "busId": bus,
        "maxExportW": 5000,
        "maxImportW": 5000,
        "nonce": 1,
        "expiry": now + 3600,
    }
    csig = Account.sign_typed_data(
        wallet.key, full_message={**ctpl, "message": cmsg}
    ).signature.hex()
    r = c.post("/participants", json={"message": cmsg, "signature": "0x" + csig.removeprefix("0x")})
    assert r.status_code == 201, r.text
    assert r.json()["registered"] and r.json()["busId"] == bus
    too_big = {**cmsg, "wallet": Account.create().address, "maxExportW": 4_000_000_000}
    r = c.post(
        "/participants", json={"message": too_big, "signature": "0x" + csig.removeprefix("0x")}
    )
    assert (r.status_code, r.json()["detail"]["code"]) == (401, "BAD_SIGNATURE")
    w2 = Account.create()
    big = {
        **cmsg,
        "wallet": w2.address,
        "meter": Account.create().address,
        "maxExportW": 4_000_000_000,
    }
    bsig = Account.sign_typed_data(w2.key, full_message={**ctpl, "message": big}).signature.hex()
    r = c.post("/participants", json={"message": big, "signature": "0x" + bsig.removeprefix("0x")})
    assert (r.status_code, r.json()["detail"]["code"]) == (422, "HOSTING_CAPACITY")
    st = c.get("/grid/status", params={"interval": iv}).json()
    assert st["converged"] and len(st["vm_pu"]) == len(st["buses"])
    health = c.get("/health").json()
    assert health["chain"]["chain_id"] == 31337 and health["database"]["reachable"]
    assert set(health["contracts"]) >= {"EnergyMarket", "ParticipantRegistry"}
    # the event stream replays recent events after Last-Event-ID
    with c.stream("GET", "/events", headers={"Last-Event-ID": "0"}, timeout=10) as s:
        kinds = []
        for line in s.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
            if {"order", "cancel", "participant"} <= set(kinds):
                break
    assert {"order", "cancel", "participant"} <= set(kinds)


def test_register_meter_of_another_participant_gives_409_naming_meter(
    stack: dict[str, Any],
) -> None:
    """The registry reverts ``RegistryMeterInUse(meter)``: a 409 naming the meter, not a 503,
    and nothing registered."""
    c, market = stack["client"], stack["market"]
    taken = stack["dev"].participants[0]["meter"]
    wallet = Account.create()
    ctpl = c.get("/participants/eip712").json()
    cmsg = {
        "wallet": wallet.address,
        "meter": taken,
        "busId": market.grid.load_buses()[2],  # type: ignore[union-attr]
        "maxExportW": 1000,
        "maxImportW": 1000,
        "nonce": 1,
        "expiry": market.ledger.now() + 3600,
    }
    sig = Account.sign_typed_data(wallet.key, full_message={**ctpl, "message": cmsg}).signature
    r = c.post(
        "/participants", json={"message": cmsg, "signature": "0x" + sig.hex().removeprefix("0x")}
    )
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == {
        "code": "METER_IN_USE",
        "message": f"the meter {taken} is already registered to another participant",
        "field": "meter",
    }
    assert c.get(f"/participants/{wallet.address}").json()["registered"] is False


def test_clearing_reads_batch_equals_single_calls(stack: dict[str, Any]) -> None:
    """The clearing's JSON-RPC batch (participants, nonces, deposits, debts) reads what one call
    per key reads, a nonce cancelled on chain included."""
    from backend.chain.client import ChainClient

    market = stack["market"]
    ledger = market.ledger
    trader = ChainClient(stack["settings"].rpc_url, K[6])
    nonce = next(NONCES) + 10_000
    trader.transact(ledger.market.functions.cancelNonce(nonce))
    wallets = [Account.from_key(k).address for k in K[1:8]] + [Account.create().address]
    nonces = [(w, nonce) for w in wallets] + [(wallets[0], 1)]
    reads = ledger.clearing_reads(wallets, nonces, wallets[:4])
    assert reads.participants == {w: ledger.participant(w) for w in wallets}
    assert reads.participants[wallets[-1]] is None and reads.participants[wallets[0]] is not None
    assert reads.cancelled == frozenset(k for k in nonces if ledger.nonce_cancelled(*k))
    assert (Account.from_key(K[6]).address, nonce) in reads.cancelled
    assert reads.balances == {w: ledger.available_balance(w) for w in wallets[:4]}
    assert reads.debts == {w: ledger.debt_of(w) for w in wallets} == {w: 0 for w in wallets}
