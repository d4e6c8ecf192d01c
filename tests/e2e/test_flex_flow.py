"""#17's parts as one flow on a real Anvil with the real Neural Grid (cigre_lv, greedy clearing):
a trade the grid vetoes is rescued by a battery's signed flexibility offer; both parties set their
remedy caps on chain with their own transactions; at gate closure the market records the trade on
EnergyMarket and then the activation on FlexibilityMarket (the validator's FlexAttestation with
the clearing's evidence hash), and the payers' shares are locked in EnergyMarket."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from eth_utils import keccak

from backend.chain import flex, protocol
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.devtools.anvil import AnvilProcess
from backend.devtools.devstack import ensure_deployment
from backend.devtools.participants import provision
from backend.market.factory import build_market
from backend.market.models import BatchState, IntervalStatus
from backend.market.service import Market

pytestmark = pytest.mark.e2e

SELLER_KEY, BUYER_KEY, PROVIDER_KEY = ("0x" + keccak(text=f"flexflow {n}").hex() for n in "sbp")
SELLER, BUYER, PROVIDER = (
    Account.from_key(k).address for k in (SELLER_KEY, BUYER_KEY, PROVIDER_KEY)
)
DEVICE_KEY = "0x" + keccak(text="flexflow battery").hex()
DEVICE = Account.from_key(DEVICE_KEY).address
CAP_PER_KWH = 20


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("flexflow")
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(
            dev_settings(tmp, anvil.url), clearing="greedy", grid_process=False
        )
        deployment = ensure_deployment(settings)
        admin = ChainClient(anvil.url, settings.admin_key)
        w3 = admin.w3
        for wallet in (SELLER, BUYER, PROVIDER):
            w3.provider.make_request("anvil_setBalance", [wallet, hex(10**21)])  # type: ignore[arg-type]
        provision(settings, deployment, (SELLER_KEY, BUYER_KEY, PROVIDER_KEY), buses=[24, 2, 16])
        flexibility = contract_at(w3, "FlexibilityMarket", deployment.address("FlexibilityMarket"))
        # each party sets its own remedy cap, with its own transaction
        for key in (SELLER_KEY, BUYER_KEY):
            ChainClient(anvil.url, key).transact(flexibility.functions.setRemedyCap(CAP_PER_KWH))
        market = build_market(settings)
        market.ledger.register_device(DEVICE, PROVIDER, 16, 1, -60_000, 60_000, 120_000)
        energy = contract_at(w3, "EnergyMarket", deployment.address("EnergyMarket"))
        yield {
            "settings": settings, "market": market, "w3": w3, "flex": flexibility,
            "energy": energy, "url": anvil.url,
        }  # fmt: skip
        market.store.close()


def _sign(market: Market, primary: str, key: str, msg: dict[str, Any]) -> str:
    doc = {**market.template(primary), "message": msg}
    return "0x" + Account.sign_typed_data(key, full_message=doc).signature.hex().removeprefix("0x")


def _evening(market: Market) -> int:
    """The first interval at 20:00 at least two ahead (the residential evening peak)."""
    iv = market.current_interval() + 2
    return iv + (80 - iv) % 96


def _rescue(market: Market, iv: int, nonce: int) -> tuple[str, str]:
    """A 40 kWh trade the grid vetoes and the battery's offer that rescues it; (trade id, offer
    hash)."""
    hashes = []
    for key, side, price in ((SELLER_KEY, protocol.SELL, 100), (BUYER_KEY, protocol.BUY, 300)):
        msg = {"trader": Account.from_key(key).address, "side": side, "intervalId": iv,
               "energyWh": 40_000, "pricePerKWh": price, "nonce": nonce,
               "expiry": iv * 900 + 3600, "counterparty": protocol.ZERO_ADDRESS}  # fmt: skip
        hashes.append(market.submit_order(msg, _sign(market, "Order", key, msg)).hash)
    offer = {"provider": PROVIDER, "device": DEVICE, "intervalId": iv, "direction": 0,
             "powerW": 60_000, "baselineW": 0, "pricePerKWh": 50, "nonce": nonce,
             "expiry": iv * 900 + 3600}  # fmt: skip
    row = market.submit_flex(offer, _sign(market, "FlexOffer", PROVIDER_KEY, offer))
    return protocol.trade_id_hex(*hashes), row.hash


def test_rescue_is_recorded_on_both_contracts(chain: dict[str, Any]) -> None:
    m: Market = chain["market"]
    energy, flexibility = chain["energy"], chain["flex"]
    iv = _evening(m)
    locked_before = {w: energy.functions.balanceOf(w).call()[1] for w in (SELLER, BUYER)}
    trade_id, offer_hash = _rescue(m, iv, 1)
    assert m.close_interval(iv, force=True).status == IntervalStatus.RECORDED
    [trade] = m.store.trades(iv)
    assert (trade.id, trade.verdict) == (trade_id, 0)
    [act] = m.store.activations(iv)
    activation_id = protocol.activation_id_hex(offer_hash, trade_id)
    assert (act.id, act.activated_w, act.cost) == (activation_id, 35_214, "440")
    [tb] = m.store.batches(iv)
    [fb] = m.store.activation_batches(iv)
    assert (tb.state, fb.state, fb.evidence_hash, fb.last_error) == (
        BatchState.RECORDED, BatchState.RECORDED, tb.evidence_hash, None
    )  # fmt: skip
    commitment, state = flexibility.functions.batchOf(iv, 0).call()
    assert (state, "0x" + bytes(commitment).hex()) == (1, "0x" + keccak(hexstr=fb.packed).hex())
    [log] = flexibility.events.ActivationRecorded.get_logs(from_block=fb.block_number)
    assert ("0x" + bytes(log["args"]["activationId"]).hex(), log["args"]["activatedW"]) == (
        activation_id, 35_214
    )  # fmt: skip
    # the trade's escrow (buyer) and each party's share of the rescue (220 each) are locked
    escrow = protocol.escrow_of(40_000, int(trade.price_per_kwh))
    assert escrow == 8_000  # 40 kWh at the auction price 200
    locked = {w: energy.functions.balanceOf(w).call()[1] for w in (SELLER, BUYER)}
    assert locked[SELLER] - locked_before[SELLER] == 220
    assert locked[BUYER] - locked_before[BUYER] == 220 + escrow
    [chain_act] = flex.unpack(bytes.fromhex(fb.packed[2:]))
    assert (chain_act.payer0, chain_act.share0, chain_act.payer1, chain_act.share1) == (
        SELLER, 220, BUYER, 220
    )  # fmt: skip


def test_refused_activation_batch_is_reported_with_the_decoded_reason(
    chain: dict[str, Any],
) -> None:
    """The buyer lowers its cap to 0 after the clearing: the chain refuses the batch
    (FlexSharesMismatch: the split it requires changed), the trade stays recorded, the
    activation batch is failed with the contract's error and retried later; nothing of it is
    locked."""
    m: Market = chain["market"]
    energy = chain["energy"]
    iv = _evening(m) + 96
    _rescue(m, iv, 2)
    buyer = ChainClient(chain["url"], BUYER_KEY)
    with m.clearing.lock:
        assert m.intake.close_for_orders(iv)
        m.clearing.clear(iv)
    buyer.transact(chain["flex"].functions.setRemedyCap(0))
    seller_locked = energy.functions.balanceOf(SELLER).call()[1]
    try:
        assert not m.recorder.record_batch(iv)
        [tb] = m.store.batches(iv)
        [fb] = m.store.activation_batches(iv)
        assert tb.state == BatchState.RECORDED
        assert (fb.state, fb.attempts, fb.tx_hash) == (BatchState.FAILED, 1, None)
        # the seller's cap (20 x 40 kWh = 800) now covers the whole 440: the chain wants that
        # split, not the clearing's 220/220
        [act] = m.store.activations(iv)
        assert fb.last_error == (
            f"recordActivations would revert: FlexSharesMismatch({act.id}, 440, 0)"
        )
        assert fb.next_attempt_at is not None
        assert chain["flex"].functions.batchOf(iv, 0).call()[1] == 0
        assert energy.functions.balanceOf(SELLER).call()[1] == seller_locked
        with m.clearing.lock:
            assert m.interval(iv).status == IntervalStatus.RECORDED
    finally:
        buyer.transact(chain["flex"].functions.setRemedyCap(CAP_PER_KWH))
    # with the cap back the next attempt records it
    assert m.recorder.record_activation_batches(iv)
    assert m.store.activation_batches(iv)[0].state == BatchState.RECORDED
