"""The market's side of FlexibilityMarket against a real Anvil: ``deploy_all`` deploys and attaches
it, ``ChainLedger`` records a batch packed by ``backend.chain.flex`` under the validator's
FlexAttestation, reads remedy caps, settles on the device's reading and reclaims; a refused batch
is a ``BatchRevertedError`` naming the contract's error. The memory fake follows the same rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from backend.chain import batches, flex
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now, end_interval, set_time
from backend.market.chain_ledger import ChainLedger
from backend.market.errors import BatchRevertedError
from backend.market.memory import MemoryLedger
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900
PRICE = 200_000
EVIDENCE = keccak(b"flex evidence")
K = ANVIL_KEYS
ADMIN, GRID_OP, VALIDATOR, ORACLE, OPERATOR, PROVIDER = (Account.from_key(k) for k in K[:6])
DEVICE = Account.from_key("0x" + keccak(text="tegrid e2e battery").hex())
FUNDS = 10**9


@pytest.fixture(scope="module")
def chain() -> Iterator[dict[str, Any]]:
    with AnvilProcess() as anvil:
        admin = ChainClient(anvil.url, K[0])
        roles = RoleHolders(GRID_OP.address, VALIDATOR.address, ORACLE.address, OPERATOR.address)
        dep = deploy_all(admin, roles, interval_seconds=INTERVAL_S)
        grid_op = ChainClient(anvil.url, K[1])
        ledger = ChainLedger(dep, ChainClient(anvil.url, K[4]), grid_op)
        w3 = admin.w3
        set_time(w3, (chain_now(w3) // 86400 + 1) * 86400)
        meter = Account.create()
        ledger.connect(PROVIDER.address, meter.address, 3, 10_000, 10_000)
        ledger.register_device(DEVICE.address, PROVIDER.address, 3, 1, -5_000, 5_000, 10_000)
        token = contract_at(w3, "EnergyToken", dep.address("EnergyToken"))
        market = contract_at(w3, "EnergyMarket", dep.address("EnergyMarket"))
        admin.transact(token.functions.mint(GRID_OP.address, FUNDS))
        grid_op.transact(token.functions.approve(market.address, FUNDS))
        grid_op.transact(market.functions.deposit(FUNDS))
        grid_op.transact(ledger.flexibility.functions.setDsoBudget(10**8))
        yield {"ledger": ledger, "market": market, "w3": w3, "url": anvil.url, "dep": dep}


def _batch(ledger: Any, interval: int, activated_w: int) -> tuple[bytes, str, flex.Activation]:
    dom = flex.domain(ledger.chain_id, ledger.flex_address)
    offer = {
        "provider": PROVIDER.address, "device": DEVICE.address, "intervalId": interval,
        "direction": 0, "powerW": 3_000, "baselineW": -1_000, "pricePerKWh": PRICE,
        "nonce": 7, "expiry": 2**40,
    }  # fmt: skip
    cost = flex.cost(activated_w, PRICE, INTERVAL_S)
    act = flex.Activation(
        offer, flex.sign_offer(K[5], dom, offer), activated_w, GRID_OP.address, cost
    )
    packed = flex.pack_batch(dom, [act])
    assert flex.unpack(packed) == [act]
    sig = flex.attest(K[2], dom, interval, 0, packed, EVIDENCE)
    return packed, "0x" + sig.hex(), act


def test_deploy_attaches_flexibility_market(chain: dict[str, Any]) -> None:
    ledger = chain["ledger"]
    assert chain["market"].functions.flexibility().call() == ledger.flex_address
    assert chain["dep"].address("FlexibilityMarket") == ledger.flex_address
    now = chain_now(chain["w3"]) // INTERVAL_S
    assert ledger.remedy_cap(PROVIDER.address, now + 3) == 0
    provider = ChainClient(chain["url"], K[5])
    provider.transact(ledger.flexibility.functions.setRemedyCap(12_345))
    # from an interval whose gate closes more than one interval away: never the one being cleared
    assert ledger.remedy_cap(PROVIDER.address, now + 1) == 0
    assert ledger.remedy_cap(PROVIDER.address, now + 3) == 12_345


def test_record_settle_through_the_ledger(chain: dict[str, Any]) -> None:
    ledger, market, w3 = chain["ledger"], chain["market"], chain["w3"]
    iv = chain_now(w3) // INTERVAL_S + 2
    packed, sig, act = _batch(ledger, iv, 2_000)
    assert act.share0 == 100_000  # 500 Wh at 200,000 per kWh
    before = market.functions.balanceOf(GRID_OP.address).call()
    with pytest.raises(BatchRevertedError, match="FlexInvalidValidatorSignature"):
        ledger.record_activations(iv, 0, packed, "0x" + EVIDENCE.hex(), "0x" + bytes(65).hex())
    tx = ledger.record_activations(iv, 0, packed, "0x" + EVIDENCE.hex(), sig)
    assert ledger.wait(tx).ok
    locked = market.functions.balanceOf(GRID_OP.address).call()
    assert locked == [before[0] - 100_000, before[1] + 100_000]
    # the battery ran at -1,000 + 1,500 W: 125 Wh exported in 900 s (500 W)
    end_interval(w3, iv, INTERVAL_S)
    reading = batches.signed_reading(
        DEVICE.key, ledger.chain_id, ledger.readings.address, DEVICE.address, iv, 0, 125
    )
    ChainClient(chain["url"], K[3]).transact(
        ledger.readings.functions.submitDeviceReadings(iv, reading)
    )
    ledger.settle_activations(iv, 0, packed)
    paid = 100_000 * 1_500 // 2_000
    assert flex.delivered_w(0, -1_000, 2_000, flex.metered_w(0, 125, INTERVAL_S)) == 1_500
    assert market.functions.balanceOf(GRID_OP.address).call() == [before[0] - paid, before[1]]
    assert market.functions.balanceOf(PROVIDER.address).call()[0] == paid
    # the closing event's deliveries, mapped back to the activation and its payment
    out = ledger.activation_outcomes(iv, 0, packed)
    assert out["reclaimed"] is False
    dom = flex.domain(ledger.chain_id, ledger.flex_address)
    assert out["activations"] == {"0x" + act.activation_id(dom).hex(): (500, 1_500, paid, 25_000)}
    with pytest.raises(BatchRevertedError, match="FlexBatchNotOpen"):
        ledger.settle_activations(iv, 0, packed)


def test_memory_ledger_follows_the_same_rules() -> None:
    ledger = MemoryLedger()
    ledger.available[GRID_OP.address] = 1_000_000
    iv = ledger.now() // INTERVAL_S + 2
    packed, sig, _act = _batch(ledger, iv, 2_000)
    ledger.record_activations(iv, 0, packed, "0x" + EVIDENCE.hex(), sig)
    assert (ledger.available[GRID_OP.address], ledger.locked[GRID_OP.address]) == (900_000, 100_000)
    ledger.device_metered_w[(DEVICE.address, iv)] = 500
    ledger.settle_activations(iv, 0, packed)
    assert ledger.available[GRID_OP.address] == 925_000
    assert ledger.available[PROVIDER.address] == 75_000
    with pytest.raises(BatchRevertedError, match="FlexBatchNotOpen"):
        ledger.reclaim_activations(iv, 0, packed)
