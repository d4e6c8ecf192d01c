"""The remedy search inside the market (in-memory ledger, the store on SQLite and - with
TEGRID_TEST_DATABASE_URL - PostgreSQL, the real Neural Grid on cigre_lv): a signed flexibility
offer rescues a vetoed trade at gate closure; the activation is stored with the clearing, the
offer marked activated, the events published, ``GET /flex/activations`` and the interval view
list it; an undone clearing gives the offer back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.chain import flex, protocol
from backend.cli.activations import MarketActivations
from backend.iot.control import ControlAck, registry_domain
from backend.iot.control_store import ControlStore, ControlTarget
from backend.market.grid_port import GridPortAdapter
from backend.market.memory import MemoryLedger
from backend.market.models import FlexStatus, IntervalStatus
from backend.market.service import Market, MarketConfig
from backend.market.store import Store
from backend.settings import ANVIL_KEYS

from .conftest import VALIDATOR_KEY

K = ANVIL_KEYS
SELLER, BUYER, PROVIDER = (Account.from_key(k).address for k in K[1:4])
DEVICE_KEY = "0x" + "5a" * 32
DEVICE = Account.from_key(DEVICE_KEY).address
OPERATOR = Account.from_key(K[0]).address


@pytest.fixture(scope="module")
def grid() -> GridPortAdapter:
    return GridPortAdapter("cigre_lv", 900, clearing="greedy")


@pytest.fixture
def remedy_market(store: Store, grid: GridPortAdapter) -> Market:
    ledger = MemoryLedger()
    for wallet, bus in ((SELLER, 24), (BUYER, 2), (PROVIDER, 16)):
        ledger.add_participant(wallet, bus, 200_000, 200_000, deposit=100_000)
    ledger.register_device(DEVICE, PROVIDER, 16, 1, -60_000, 60_000, 120_000)
    ledger.remedy_caps = {SELLER: 20, BUYER: 20}
    return Market(store, ledger, grid, VALIDATOR_KEY, MarketConfig(interval_seconds=900))


def _sign(market: Market, primary: str, key: str, msg: dict[str, Any]) -> str:
    doc = {**market.template(primary), "message": msg}
    return "0x" + Account.sign_typed_data(key, full_message=doc).signature.hex().removeprefix("0x")


def _evening(market: Market) -> int:
    """The first open interval at 20:00 (the profiles' residential evening peak)."""
    iv = market.current_interval() + 2
    return iv + (80 - iv) % 96


def test_clearing_rescues_a_vetoed_trade_with_a_signed_offer(
    remedy_market: Market, tmp_path: Path
) -> None:
    m = remedy_market
    iv = _evening(m)
    hashes = []
    for n, (key, side, price) in enumerate(((K[1], protocol.SELL, 100), (K[2], protocol.BUY, 300))):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": n + 1,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        hashes.append(m.submit_order(msg, _sign(m, "Order", key, msg)).hash)
    offer = {"provider": PROVIDER, "device": DEVICE, "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": 1,
             "expiry": iv * 900 + 3600}  # fmt: skip
    offer_row = m.submit_flex(offer, _sign(m, "FlexOffer", K[3], offer))
    after = m.events.recent()[-1].id
    assert m.close_interval(iv, force=True).status == IntervalStatus.RECORDED
    trade_id = protocol.trade_id_hex(*hashes)
    [trade] = m.store.trades(iv)
    assert (trade.id, trade.verdict, trade.energy_wh) == (trade_id, 0, 40_000)
    [act] = m.store.activations(iv)
    activation_id = protocol.activation_id_hex(offer_row.hash, trade_id)
    assert (act.id, act.offer_hash, act.bus_id, act.activated_w, act.setpoint_w) == (
        activation_id, offer_row.hash, 16, 35_212, 35_212
    )  # fmt: skip
    assert (act.trade_id, act.energy_wh, act.cost) == (trade_id, 8_803, "440")
    assert act.payers == f'[["{SELLER}", "220"], ["{BUYER}", "220"]]'
    # recorded on FlexibilityMarket after the trade batch: one batch, attested with the
    # clearing's evidence hash, the payers' shares locked
    [fb] = m.store.activation_batches(iv)
    [tb] = m.store.batches(iv)
    assert (fb.batch_index, fb.batch_count, fb.state, fb.evidence_hash, fb.attempts) == (
        0, 1, "recorded", tb.evidence_hash, 1
    )  # fmt: skip
    assert fb.activation_ids == f'["{activation_id}"]'
    packed, state = m.ledger.activation_batches[(iv, 0)]  # type: ignore[attr-defined]
    assert (packed.hex(), state) == (fb.packed[2:], "recorded")
    [chain_act] = flex.unpack(packed)
    assert (chain_act.activated_w, chain_act.payer0, chain_act.share0, chain_act.payer1,
            chain_act.share1, chain_act.trade_energy_wh) == (
        35_212, SELLER, 220, BUYER, 220, 40_000)  # fmt: skip
    assert "0x" + chain_act.trade_id.hex() == trade_id
    assert m.ledger.locked[SELLER] == 220  # type: ignore[attr-defined]
    stored = m.store.get_flex_offer(offer_row.hash)
    assert stored is not None and (stored.status, stored.remaining_w) == (
        FlexStatus.ACTIVATED, 60_000 - 35_212
    )  # fmt: skip
    events = [(e.kind, e.data) for e in m.events.recent(after)]
    assert ("activation", {"activationId": activation_id, "offerHash": offer_row.hash,
            "provider": PROVIDER, "device": DEVICE, "busId": 16, "direction": 0,
            "activatedW": 35_212, "setpointW": 35_212, "tradeId": trade_id,
            "cost": "440"}) in events  # fmt: skip
    # The API: GET /flex/activations?interval= and the interval view.
    with TestClient(create_app(m, scheduler=False)) as client:
        listed = client.get("/flex/activations", params={"interval": iv})
        assert listed.status_code == 200
        assert [(a["id"], a["activatedW"], a["cost"], a["payers"]) for a in listed.json()] == [
            (activation_id, 35_212, "440",
             [{"account": SELLER, "share": "220"}, {"account": BUYER, "share": "220"}])
        ]  # fmt: skip
        view = client.get(f"/intervals/{iv}").json()
        assert [a["id"] for a in view["activations"]] == [activation_id]
        [vb] = view["activationBatches"]
        assert (vb["state"], vb["activationIds"], vb["evidenceHash"], vb["reason"]) == (
            "recorded", [activation_id], tb.evidence_hash, None
        )  # fmt: skip
        assert client.get("/flex/activations", params={"interval": iv + 1}).json() == []
        for bad in ({}, {"interval": -1}, {"interval": "x"}, {"interval": 2**53}):
            r = client.get("/flex/activations", params=bad)
            assert (r.status_code, r.json()["detail"]["code"]) == (422, "INVALID_REQUEST"), bad
            assert r.json()["detail"]["message"].startswith("interval: "), bad
        assert client.get(f"/flex/{offer_row.hash}").json()["remainingW"] == 60_000 - 35_212
    # the keeper settles it on the device's reading (20 kW of 35.214 delivered): the market
    # marks the batch settled with the provider's payment and the payers' refund
    m.ledger.device_metered_w[(DEVICE, iv)] = 20_000  # type: ignore[attr-defined]
    m.ledger.settle_activations(iv, 0, packed)
    m.follow_settlements()
    [fb] = m.store.activation_batches(iv)
    assert (fb.state, fb.settle_tx_hash) == (
        "settled", m.ledger.activation_closed[(iv, 0)]["tx_hash"]  # type: ignore[attr-defined]
    )  # fmt: skip
    with TestClient(create_app(m, scheduler=False)) as client:
        [settled] = client.get("/flex/activations", params={"interval": iv}).json()
        # paid floor(440 x 20000 / 35212) = 249, the rest of the 440 back to the payers
        assert (settled["meteredW"], settled["deliveredW"], settled["paid"],
                settled["refunded"]) == (20_000, 20_000, "249", "191")  # fmt: skip
        assert client.get(f"/intervals/{iv}").json()["activationBatches"][0]["state"] == "settled"
    assert m.ledger.locked[SELLER] == 0  # type: ignore[attr-defined]
    # the dispatcher's source: the recorded interval's activation as a control target, expiring
    # at the interval's end
    source = MarketActivations(m.store, 900)
    assert source.pending_activations(iv) == [
        ControlTarget(bytes.fromhex(activation_id[2:]), DEVICE, iv, 35_212, (iv + 1) * 900)
    ]
    assert source.pending_activations(iv - 1) == []
    assert MarketActivations(m.store, 900, lookback=0).pending_activations(iv + 9) == []
    # dispatched and acknowledged: GET /flex/activations shows the action and the device's ack
    controls = ControlStore(f"sqlite:///{tmp_path / 'control.db'}")
    controls.add(source.pending_activations(iv))
    domain = registry_domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    [sent] = controls.sign_pending(lambda a: a.sign(K[0], domain), OPERATOR, 1_000.0)
    ack = ControlAck(sent.action.activation_id, DEVICE, 0, 35_212, iv * 900 + 5)
    assert controls.record_acks([ack.sign(DEVICE_KEY, domain)], now=1_001.0) == ["acknowledged"]
    with TestClient(create_app(m, scheduler=False, control_store=controls)) as client:
        [listed] = client.get("/flex/activations", params={"interval": iv}).json()
    control = listed["control"]
    assert (control["kind"], control["activationId"], control["state"], control["setpointW"],
            control["signer"], control["attempts"]) == (
        "control", activation_id, "acknowledged", "35212", OPERATOR, 1)  # fmt: skip
    assert (control["ack"]["status"], control["ack"]["appliedW"], control["ack"]["receivedAt"]) == (
        0, "35212", 1_001.0
    )  # fmt: skip
    controls.close()


def test_undo_clearing_gives_the_offer_back(remedy_market: Market) -> None:
    m = remedy_market
    iv = _evening(m)
    for n, (key, side, price) in enumerate(((K[1], protocol.SELL, 100), (K[2], protocol.BUY, 300))):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": n + 1,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        m.submit_order(msg, _sign(m, "Order", key, msg))
    offer = {"provider": PROVIDER, "device": DEVICE, "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": 1,
             "expiry": iv * 900 + 3600}  # fmt: skip
    row = m.submit_flex(offer, _sign(m, "FlexOffer", K[3], offer))
    # Closed and cleared, nothing sent yet (no recorder: the clearing can be taken back).
    with m.clearing.lock:
        assert m.intake.close_for_orders(iv)
        m.clearing.clear(iv)
    assert m.interval(iv).status == IntervalStatus.CLEARED
    assert len(m.store.activations(iv)) == 1
    # a clearing that can still be taken back is not dispatched to devices
    assert MarketActivations(m.store, 900).pending_activations(iv) == []
    assert m.store.undo_clearing(iv)
    assert m.store.activations(iv) == []
    back = m.store.get_flex_offer(row.hash)
    assert back is not None and (back.status, back.remaining_w) == (FlexStatus.OPEN, None)


def test_activation_batch_sent_before_a_crash_is_found_on_chain(remedy_market: Market) -> None:
    """A crash after ``sent`` was stored and the transaction landed, before its receipt was:
    recovery asks the chain (``batchOf``) and marks it recorded without sending it again."""
    m = remedy_market
    iv = _evening(m)
    for n, (key, side, price) in enumerate(((K[1], protocol.SELL, 100), (K[2], protocol.BUY, 300))):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": n + 1,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        m.submit_order(msg, _sign(m, "Order", key, msg))
    offer = {"provider": PROVIDER, "device": DEVICE, "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": 1,
             "expiry": iv * 900 + 3600}  # fmt: skip
    m.submit_flex(offer, _sign(m, "FlexOffer", K[3], offer))
    assert m.close_interval(iv, force=True).status == IntervalStatus.RECORDED
    # what the crashed process left: ``sent`` stored, the transaction on chain, no receipt
    m.store.update_activation_batch(iv, 0, state="sent", tx_hash=None, block_number=None)
    on_chain = dict(m.ledger.activation_batches)  # type: ignore[attr-defined]
    assert iv in m.recorder.recover()
    [fb] = m.store.activation_batches(iv)
    assert (fb.state, fb.attempts, fb.last_error) == ("recorded", 1, None)
    # not sent again (a second send would be FlexBatchOutOfSequence on chain)
    assert m.ledger.activation_batches == on_chain  # type: ignore[attr-defined]
    assert m.ledger.locked[SELLER] == 220  # type: ignore[attr-defined]


def test_activation_batch_lost_in_a_rollback_is_recorded_again(remedy_market: Market) -> None:
    """A rollback below the block that recorded the activation batch, which the chain then no
    longer has: pending again, recorded again with the same signature."""
    m = remedy_market
    ledger: Any = m.ledger
    iv = _evening(m)
    for n, (key, side, price) in enumerate(((K[1], protocol.SELL, 100), (K[2], protocol.BUY, 300))):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": n + 1,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        m.submit_order(msg, _sign(m, "Order", key, msg))
    offer = {"provider": PROVIDER, "device": DEVICE, "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": 1,
             "expiry": iv * 900 + 3600}  # fmt: skip
    m.submit_flex(offer, _sign(m, "FlexOffer", K[3], offer))
    assert m.close_interval(iv, force=True).status == IntervalStatus.RECORDED
    [fb] = m.store.activation_batches(iv)
    assert fb.block_number is not None
    # the chain forgets the batch (and the shares it locked)
    del ledger.activation_batches[(iv, 0)]
    for wallet in (SELLER, BUYER):
        ledger.locked[wallet] -= 220
        ledger.available[wallet] += 220
    assert m.recorder.reconcile(since_block=fb.block_number) == []  # the trades stayed
    [lost] = m.store.activation_batches(iv)
    assert lost.state == "pending" and lost.last_error is not None
    assert lost.last_error.endswith("no longer on chain (head 1): recorded again")
    assert m.recorder.record_batch(iv)
    [again] = m.store.activation_batches(iv)
    assert (again.state, again.attestation_signature) == ("recorded", fb.attestation_signature)
    assert ledger.activation_batches[(iv, 0)] == (bytes.fromhex(fb.packed[2:]), "recorded")
    assert ledger.locked[SELLER] == 220
