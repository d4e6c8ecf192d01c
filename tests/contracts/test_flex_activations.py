"""FlexibilityMarket on a real Anvil chain: activations recorded only under the validator's
FlexAttestation, the provider's FlexOffer checked on chain, remedy caps and the DSO budget,
funds locked in EnergyMarket exactly, settlement on the device's metered delivery (full, partial,
none; up and down), replay refused, reclaim, and token conservation across both contracts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import brownie
import pytest
from conftest import (
    DELAY_S,
    ERRORS,
    EVIDENCE,
    FAR,
    GATE_LEAD_S,
    INTERVAL_S,
    LONG_BPS,
    PRICE,
    SHORT_BPS,
    DeployedLedger,
    err,
    ev,
    norm,
)
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import keccak

from backend.chain import batches, eip712, flex
from backend.chain.protocol import FLEX_DOWN, FLEX_UP, ZERO_ADDRESS

BATTERY, HEAT_PUMP = 1, 3
FLEX_PRICE = 200_000  # base units per kWh
BUDGET = 10**7  # DSO budget per interval
TRADE_WH = 2_000


def device_key(i: int) -> str:
    return "0x" + keccak(text=f"tegrid device {i}").hex()


class Flex:
    """The deployed FlexibilityMarket, a provider (S2) with a battery and a heat pump, and helpers
    that build, attest, record and settle batches through backend.chain.flex."""

    def __init__(self, ledger: DeployedLedger, fm: Any) -> None:
        self.ledger, self.fm = ledger, fm
        self.dom = flex.domain(ledger.chain_id, fm.address)
        a = ledger.a
        self.provider = a[6]
        self.provider_key = ledger.trader_keys[a[6].address]
        self.battery_key, self.heat_pump_key = device_key(1), device_key(2)
        self.battery = Account.from_key(self.battery_key).address
        self.heat_pump = Account.from_key(self.heat_pump_key).address
        self.recorded: dict[int, list[bytes]] = {}

    def offer(self, interval: int, device: str | None = None, **over: Any) -> dict[str, Any]:
        msg = {
            "provider": self.provider.address,
            "device": device or self.battery,
            "intervalId": interval,
            "direction": FLEX_UP,
            "powerW": 4_000,
            "baselineW": 0,
            "pricePerKWh": FLEX_PRICE,
            "nonce": 1,
            "expiry": FAR,
        }
        msg.update(over)
        return msg

    def dso(
        self, offer: dict[str, Any], activated_w: int, key: str | None = None
    ) -> flex.Activation:
        cost = flex.cost(activated_w, offer["pricePerKWh"], INTERVAL_S)
        sig = flex.sign_offer(key or self.provider_key, self.dom, offer)
        return flex.Activation(offer, sig, activated_w, self.ledger.balancing.address, cost)

    def rescue(
        self, offer: dict[str, Any], activated_w: int, trade_id: bytes, seller: Any, buyer: Any
    ) -> flex.Activation:
        cost = flex.cost(activated_w, offer["pricePerKWh"], INTERVAL_S)
        caps = [
            flex.remedy_cap(self.fm.remedyCapAt(w, offer["intervalId"]), TRADE_WH)
            for w in (seller, buyer)
        ]
        split = flex.remedy_split(cost, caps[0], caps[1]) or (cost // 2, cost - cost // 2)
        sig = flex.sign_offer(self.provider_key, self.dom, offer)
        return flex.Activation(
            offer, sig, activated_w, seller.address, split[0], trade_id, TRADE_WH,
            buyer.address, split[1],
        )  # fmt: skip

    def packed(self, acts: list[flex.Activation]) -> bytes:
        return flex.pack_batch(self.dom, acts)

    def attest(self, interval: int, packed: bytes, index: int = 0, key: str | None = None) -> bytes:
        return flex.attest(
            key or self.ledger.validator_key, self.dom, interval, index, packed, EVIDENCE
        )

    def record(
        self,
        interval: int,
        acts: list[flex.Activation] | bytes,
        key: str | None = None,
        index: int | None = None,
    ) -> Any:
        packed = acts if isinstance(acts, bytes) else self.packed(acts)
        index = len(self.recorded.get(interval, [])) if index is None else index
        sig = self.attest(interval, packed, index, key)
        tx = self.fm.recordActivations(
            interval, index, packed, EVIDENCE, sig, {"from": self.ledger.operator}
        )
        self.recorded.setdefault(interval, []).append(packed)
        return tx

    def device_reading(self, key: str, interval: int, imp: int, exp: int) -> bytes:
        return batches.signed_reading(
            key, self.ledger.chain_id, self.ledger.readings.address,
            Account.from_key(key).address, interval, imp, exp,
        )  # fmt: skip

    def submit_device(self, interval: int, readings: list[bytes]) -> Any:
        return self.ledger.readings.submitDeviceReadings(
            interval, b"".join(readings), {"from": self.ledger.oracle}
        )

    def records(self, interval: int, index: int = 0) -> bytes:
        """The activation records of a recorded batch (what settle and reclaim take)."""
        return flex.records(self.recorded[interval][index])

    def settle(self, interval: int, index: int = 0) -> Any:
        return self.fm.settleActivations(
            interval, index, self.records(interval, index), {"from": self.ledger.a[0]}
        )

    def total_in_market(self) -> int:
        """Every account's available + locked in EnergyMarket (the registered ones, the balancing
        account, the provider): tokens held must equal it."""
        total = 0
        for acct in self.ledger.a[:10]:
            total += sum(self.ledger.market.balanceOf(acct))
        return total


@pytest.fixture(scope="module")
def fx(ledger: DeployedLedger, FlexibilityMarket: Any) -> Flex:
    fm = FlexibilityMarket.deploy(
        ledger.market, ledger.registry, ledger.readings, {"from": ledger.admin}
    )
    ledger.market.attachFlexibility(fm, {"from": ledger.admin})
    for item in fm.abi:
        if item["type"] == "error":
            ERRORS[item["name"]] = item
    f = Flex(ledger, fm)
    bus = int(ledger.registry.participantOf(f.provider)[2])
    dso = {"from": ledger.dso}
    ledger.registry.registerDevice(f.battery, f.provider, bus, BATTERY, -5_000, 5_000, 13_500, dso)
    ledger.registry.registerDevice(f.heat_pump, f.provider, bus, HEAT_PUMP, -3_000, 0, 0, dso)
    fm.setDsoBudget(BUDGET, dso)
    return f


@pytest.fixture
def iv(fx: Flex, parts: Any) -> int:
    fx.recorded = {}
    # + 3: a remedy cap set in the test applies from current + 2 or + 3 (`setRemedyCap`)
    return fx.ledger.current_interval() + 3


def _trade(ledger: DeployedLedger, parts: Any, interval: int, nonce: int = 1) -> bytes:
    """One recorded trade S1 -> B1 of TRADE_WH at PRICE; returns its id."""
    sell = ledger.order(parts.S1, 0, interval, TRADE_WH, PRICE, nonce)
    buy = ledger.order(parts.B1, 1, interval, TRADE_WH, PRICE, nonce)
    t = ledger.trade(sell, buy, TRADE_WH)
    ledger.record(interval, [t])
    return ledger.tid(t)


# ------------------------------------------------------------------ the bank hook


def test_bank_hook_only_attached_flexibility(fx: Flex, parts: Any) -> None:
    m = fx.ledger.market
    assert m.flexibility() == fx.fm.address
    with brownie.reverts(err("MarketNotFlexibility", parts.S1.address)):
        m.flexLock(parts.S1, 1, {"from": parts.S1})
    with brownie.reverts(err("MarketNotFlexibility", parts.S1.address)):
        m.flexRelease(bytes(96), {"from": parts.S1})
    with brownie.reverts(err("MarketFlexibilityAttached", fx.fm.address)):
        m.attachFlexibility(parts.S1, {"from": fx.ledger.admin})
    with brownie.reverts(err("MarketNotAdmin", parts.S1.address)):
        m.attachFlexibility(parts.S1, {"from": parts.S1})


# ------------------------------------------------------------------ settings


def _cap_from(fx: Flex, tx: Any) -> int:
    """The first interval a cap set by ``tx`` applies to: the first whose gate closes more than
    one interval after the transaction's block."""
    at = brownie.chain[tx.block_number].timestamp
    first = (at + INTERVAL_S) // INTERVAL_S + 1
    while fx.ledger.market.gateClosure(first) <= at + INTERVAL_S:
        first += 1
    return first


def test_set_remedy_cap_by_participant_emits(fx: Flex, parts: Any) -> None:
    assert fx.fm.remedyCapOf(parts.S1) == 0
    tx = fx.fm.setRemedyCap(50_000, {"from": parts.S1})
    start = _cap_from(fx, tx)
    assert ev(tx, "RemedyCapSet") == [parts.S1.address, 50_000, start]
    assert fx.fm.remedyCapOf(parts.S1) == 50_000
    assert [fx.fm.remedyCapAt(parts.S1, i) for i in (start - 2, start - 1, start, start + 9)] == [
        0, 0, 50_000, 50_000,
    ]  # fmt: skip


def test_remedy_cap_change_spares_intervals_that_may_be_cleared(fx: Flex, parts: Any) -> None:
    """Consent cannot be withdrawn (nor the split changed) for an interval whose book may already
    be closed: a change applies from the first interval whose gate closes more than one interval
    away; the intervals before keep the cap they had."""
    first = fx.fm.setRemedyCap(50_000, {"from": parts.S1})
    start = _cap_from(fx, first)
    brownie.chain.sleep(INTERVAL_S * 2)  # `start` is now the next interval, maybe being cleared
    second = fx.fm.setRemedyCap(0, {"from": parts.S1})
    later = _cap_from(fx, second)
    assert later >= start + 2 and ev(second, "RemedyCapSet") == [parts.S1.address, 0, later]
    # every interval whose gate is still open and before `later` keeps 50,000 (earlier ones are
    # past their gate: nothing of theirs is recorded any more)
    still_open = fx.ledger.current_interval() + 1
    assert still_open < later and start <= still_open
    caps = [fx.fm.remedyCapAt(parts.S1, i) for i in range(still_open, later + 2)]
    assert caps == [50_000] * (later - still_open) + [0, 0]
    assert fx.fm.remedyCapOf(parts.S1) == 0
    with brownie.reverts(err("FlexRemedyCapTooLarge", 2**96)):
        fx.fm.setRemedyCap(2**96, {"from": parts.S1})
    fx.fm.setRemedyCap(2**96 - 1, {"from": parts.S1})


def test_set_dso_budget_only_grid_operator(fx: Flex, parts: Any) -> None:
    with brownie.reverts(err("FlexNotGridOperator", parts.S1.address)):
        fx.fm.setDsoBudget(1, {"from": parts.S1})
    tx = fx.fm.setDsoBudget(777, {"from": fx.ledger.dso})
    assert ev(tx, "DsoBudgetSet") == [777] and fx.fm.dsoBudget() == 777


# ------------------------------------------------------------------ recording


def test_record_dso_activation_locks_cost_exactly(fx: Flex, iv: int) -> None:
    bal = fx.ledger.balancing
    before = fx.ledger.market.balanceOf(bal)
    act = fx.dso(fx.offer(iv), 2_000)
    # 2,000 W for 900 s = 500 Wh at 200,000 per kWh
    assert act.share0 == 100_000
    tx = fx.record(iv, [act])
    after = fx.ledger.market.balanceOf(bal)
    assert (after[0], after[1]) == (before[0] - 100_000, before[1] + 100_000)
    packed = fx.recorded[iv][0]
    # the commitment: keccak256 of the activation record (121 bytes), the contract's and Python's
    record = (
        bytes.fromhex(fx.battery[2:]) + bytes([FLEX_UP]) + (0).to_bytes(4, "big")
        + (2_000).to_bytes(4, "big") + bytes.fromhex(fx.provider.address[2:])
        + bytes.fromhex(bal.address[2:]) + (100_000).to_bytes(16, "big") + bytes(20 + 16)
    )  # fmt: skip
    assert act.record() == record and len(record) == flex.RECORD_SIZE
    assert norm(fx.fm.recordsOf(packed)) == record == flex.records(packed)
    assert ev(tx, "ActivationBatchRecorded") == [iv, 0, keccak(record), 1, EVIDENCE]
    assert flex.commitment(packed) == keccak(record)
    assert norm(fx.fm.batchOf(iv, 0)) == [keccak(record), 1]
    assert list(tx.events.keys()) == ["ActivationBatchRecorded"]  # one event per batch
    book = fx.fm.intervalBookOf(iv)
    assert (bytes(book[0]), bytes(book[1]), book[2], book[3], book[4]) == (
        act.offer_hash(fx.dom), bytes(32), 2_000, 100_000, 1
    )  # fmt: skip
    assert norm(fx.fm.offerHash(*act.offer.values())) == act.offer_hash(fx.dom)
    assert fx.fm.costOf(2_000, FLEX_PRICE) == 100_000


def test_record_needs_market_operator(fx: Flex, iv: int, parts: Any) -> None:
    packed = fx.packed([fx.dso(fx.offer(iv), 1_000)])
    with brownie.reverts(err("FlexNotOperator", parts.S1.address)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, fx.attest(iv, packed), {"from": parts.S1})


def test_record_forged_attestation_reverts_with_signer(fx: Flex, iv: int, parts: Any) -> None:
    packed = fx.packed([fx.dso(fx.offer(iv), 1_000)])
    other = fx.ledger.trader_keys[parts.S1.address]
    sig = fx.attest(iv, packed, key=other)
    op = {"from": fx.ledger.operator}
    with brownie.reverts(err("FlexInvalidValidatorSignature", parts.S1.address)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, sig, op)
    # a changed value (activatedW 1,000 -> 1,001) under the validator's signature of the original
    good = fx.attest(iv, packed)
    changed = bytearray(packed)
    changed[180] ^= 1  # last byte of activatedW (bytes 177..180)
    assert int.from_bytes(changed[177:181], "big") == 1_001
    digest = eip712.flex_attestation_hash(fx.dom, iv, 0, bytes(changed), EVIDENCE)
    signer = eip712.recover(digest, good)
    with brownie.reverts(err("FlexInvalidValidatorSignature", signer)):
        fx.fm.recordActivations(iv, 0, bytes(changed), EVIDENCE, good, op)
    # another evidence hash, another batch position
    with brownie.reverts(err("FlexInvalidValidatorSignature", eip712.recover(
        eip712.flex_attestation_hash(fx.dom, iv, 0, packed, keccak(b"other")), good
    ))):  # fmt: skip
        fx.fm.recordActivations(iv, 0, packed, keccak(b"other"), good, op)
    with brownie.reverts(err("FlexBatchOutOfSequence", iv, 0, 1)):
        fx.fm.recordActivations(iv, 1, packed, EVIDENCE, fx.attest(iv, packed, 1), op)


def test_record_malformed_and_after_gate_reverts(fx: Flex, iv: int) -> None:
    packed = fx.packed([fx.dso(fx.offer(iv), 1_000)])
    op = {"from": fx.ledger.operator}
    with brownie.reverts(err("FlexMalformedCalldata", len(packed) - 1)):
        fx.fm.recordActivations(iv, 0, packed[:-1], EVIDENCE, fx.attest(iv, packed[:-1]), op)
    fx.ledger.end_interval(iv - 1)
    closure = fx.ledger.market.gateClosure(iv)
    with brownie.reverts(err("FlexGateClosed", iv, closure)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, fx.attest(iv, packed), op)


def test_record_offer_checks_exact(fx: Flex, iv: int, parts: Any) -> None:
    reg, dso = fx.ledger.registry, {"from": fx.ledger.dso}

    def reverts(act: flex.Activation, expected: str) -> None:
        packed = fx.packed([act])
        with brownie.reverts(expected):
            fx.fm.recordActivations(
                iv, 0, packed, EVIDENCE, fx.attest(iv, packed), {"from": fx.ledger.operator}
            )

    # signed by someone else than the provider
    act = fx.dso(fx.offer(iv), 1_000, key=fx.ledger.trader_keys[parts.S1.address])
    reverts(act, err("FlexInvalidOfferSignature", act.offer_hash(fx.dom), fx.provider.address))
    # another interval, expired, no direction
    act = fx.dso(fx.offer(iv + 1), 1_000)
    reverts(act, err("FlexOfferIntervalMismatch", act.offer_hash(fx.dom), iv + 1))
    expired = fx.ledger.now() - 1
    act = fx.dso(fx.offer(iv, expiry=expired), 1_000)
    reverts(act, err("FlexOfferExpired", act.offer_hash(fx.dom), expired))
    act = fx.dso(fx.offer(iv, direction=2), 1_000)
    reverts(act, err("FlexInvalidDirection", act.offer_hash(fx.dom), 2))
    # outside the device's limits: up from 2,000 W by 4,000 W = 6,000 > 5,000; baseline below -5,000
    reverts(
        fx.dso(fx.offer(iv, baselineW=2_000), 1_000),
        err("FlexOutsideDeviceLimits", fx.battery, 6_000),
    )
    reverts(fx.dso(fx.offer(iv, baselineW=-6_000, direction=FLEX_UP, powerW=1), 1),
            err("FlexOutsideDeviceLimits", fx.battery, -6_000))  # fmt: skip
    # a device of someone else, an unknown device, zero activation, over the offer's power
    reverts(
        fx.dso(fx.offer(iv, device=parts.S1.address), 1_000),
        err("FlexDeviceNotOwned", parts.S1.address, ZERO_ADDRESS),
    )
    act = fx.dso(fx.offer(iv), 0)
    reverts(act, err("FlexZeroActivation", act.activation_id(fx.dom)))
    act = fx.dso(fx.offer(iv), 4_001)
    reverts(act, err("FlexOfferOverActivated", act.offer_hash(fx.dom), 4_001, 4_000))
    # deactivated device, then inactive provider
    reg.deactivateDevice(fx.heat_pump, dso)
    reverts(fx.dso(fx.offer(iv, device=fx.heat_pump, baselineW=-3_000, powerW=1_000), 1_000),
            err("FlexDeviceInactive", fx.heat_pump))  # fmt: skip
    reg.deactivate(fx.provider, dso)
    reverts(fx.dso(fx.offer(iv), 1_000), err("FlexProviderInactive", fx.provider.address))


def test_record_dso_payers_and_budget(fx: Flex, iv: int, parts: Any) -> None:
    def reverts(act: flex.Activation, expected: str) -> None:
        packed = fx.packed([act])
        with brownie.reverts(expected):
            fx.fm.recordActivations(
                iv, 0, packed, EVIDENCE, fx.attest(iv, packed), {"from": fx.ledger.operator}
            )

    act = fx.dso(fx.offer(iv), 1_000)  # cost 50,000
    aid = act.activation_id(fx.dom)
    reverts(
        replace(act, payer0=parts.S1.address),
        err("FlexWrongPayers", aid, parts.S1.address, ZERO_ADDRESS),
    )
    reverts(replace(act, share0=49_999), err("FlexSharesMismatch", aid, 50_000, 0))
    fx.fm.setDsoBudget(49_999, {"from": fx.ledger.dso})
    reverts(act, err("FlexDsoBudgetExceeded", iv, 50_000, 49_999))
    # the budget is per interval: two batches together
    fx.fm.setDsoBudget(60_000, {"from": fx.ledger.dso})
    fx.record(iv, [act])
    # another offer whose hash sorts after the first (batches ascend by offer hash)
    nonce = next(
        n
        for n in range(2, 100)
        if flex.offer_hash(fx.dom, fx.offer(iv, nonce=n)) > act.offer_hash(fx.dom)
    )
    second = fx.dso(fx.offer(iv, nonce=nonce), 1_000)
    packed = fx.packed([second])
    with brownie.reverts(err("FlexDsoBudgetExceeded", iv, 100_000, 60_000)):
        fx.fm.recordActivations(
            iv, 1, packed, EVIDENCE, fx.attest(iv, packed, 1), {"from": fx.ledger.operator}
        )


def test_record_order_and_offer_sum_across_batches(fx: Flex, iv: int) -> None:
    offer = fx.offer(iv)
    a1 = fx.dso(offer, 3_000)
    fx.record(iv, [a1])
    # the same activation again (same offer, same trade id): out of order
    packed = fx.packed([a1])
    op = {"from": fx.ledger.operator}
    with brownie.reverts(err("FlexActivationOutOfOrder", a1.activation_id(fx.dom))):
        fx.fm.recordActivations(iv, 1, packed, EVIDENCE, fx.attest(iv, packed, 1), op)
    # the same offer in the next batch (a higher trade id): 3,000 + 1,001 W > powerW 4,000
    more = replace(a1, activated_w=1_001, trade_id=b"\xff" * 32)
    packed = fx.packed([more])
    with brownie.reverts(err("FlexOfferOverActivated", a1.offer_hash(fx.dom), 4_001, 4_000)):
        fx.fm.recordActivations(iv, 1, packed, EVIDENCE, fx.attest(iv, packed, 1), op)


def test_record_insufficient_funds_names_payer(fx: Flex, iv: int) -> None:
    bal = fx.ledger.balancing
    available = fx.ledger.market.balanceOf(bal)[0]
    fx.fm.setDsoBudget(2**127, {"from": fx.ledger.dso})
    price = (available + 1) * 1000 // 1000 + 1  # 1 kWh (4,000 W x 900 s) costs more than available
    act = fx.dso(fx.offer(iv, pricePerKWh=price), 4_000)
    packed = fx.packed([act])
    with brownie.reverts(err("MarketInsufficientBalance", bal.address, available, act.share0)):
        fx.fm.recordActivations(
            iv, 0, packed, EVIDENCE, fx.attest(iv, packed), {"from": fx.ledger.operator}
        )


def test_record_locks_a_run_of_one_payer_at_once(fx: Flex, iv: int) -> None:
    """Two DSO activations the balancing account can pay one by one but not together: the batch
    is refused naming their sum (consecutive shares of one payer are locked in one call)."""
    bal = fx.ledger.balancing
    available = fx.ledger.market.balanceOf(bal)[0]
    fx.fm.setDsoBudget(2**127, {"from": fx.ledger.dso})
    price = available * 1000 // 1_000 * 2 // 3  # 1 kWh (4,000 W) costs 2/3 of what it holds
    acts = [fx.dso(fx.offer(iv, pricePerKWh=price, nonce=n), 4_000) for n in (1, 2)]
    assert acts[0].share0 <= available < 2 * acts[0].share0
    packed = fx.packed(acts)
    with brownie.reverts(
        err("MarketInsufficientBalance", bal.address, available, 2 * acts[0].share0)
    ):
        fx.fm.recordActivations(
            iv, 0, packed, EVIDENCE, fx.attest(iv, packed), {"from": fx.ledger.operator}
        )


def test_rescue_needs_trades_caps_and_exact_split(fx: Flex, iv: int, parts: Any) -> None:
    offer = fx.offer(iv)
    fake_trade = keccak(b"no trade yet")
    act = fx.rescue(offer, 2_000, fake_trade, parts.S1, parts.B1)  # cost 100,000
    op = {"from": fx.ledger.operator}
    packed = fx.packed([act])
    with brownie.reverts(err("FlexTradesNotRecorded", iv)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, fx.attest(iv, packed), op)
    tid = _trade(fx.ledger, parts, iv)
    aid = flex.activation_id(act.offer_hash(fx.dom), tid)
    act = fx.rescue(offer, 2_000, tid, parts.S1, parts.B1)
    packed = fx.packed([act])
    # default caps 0: never pays
    with brownie.reverts(err("FlexRemedyCapExceeded", aid, 100_000, 0)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, fx.attest(iv, packed), op)
    # seller's cap 20,000 per kWh x 2 kWh = 40,000 binds; the buyer pays the other 60,000
    fx.fm.setRemedyCap(20_000, {"from": parts.S1})
    fx.fm.setRemedyCap(40_000, {"from": parts.B1})
    assert flex.remedy_split(100_000, 40_000, 80_000) == (40_000, 60_000)
    wrong = replace(act, share0=50_000, share1=50_000)
    packed = fx.packed([wrong])
    with brownie.reverts(err("FlexSharesMismatch", aid, 40_000, 60_000)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, fx.attest(iv, packed), op)
    same = replace(act, payer1=parts.S1.address)
    packed = fx.packed([same])
    with brownie.reverts(err("FlexWrongPayers", aid, parts.S1.address, parts.S1.address)):
        fx.fm.recordActivations(iv, 0, packed, EVIDENCE, fx.attest(iv, packed), op)
    act = fx.rescue(offer, 2_000, tid, parts.S1, parts.B1)
    assert (act.share0, act.share1) == (40_000, 60_000)
    s_before, b_before = fx.ledger.market.balanceOf(parts.S1), fx.ledger.market.balanceOf(parts.B1)
    tx = fx.record(iv, [act])
    assert ev(tx, "ActivationBatchRecorded")[2] == keccak(act.record())
    s_after, b_after = fx.ledger.market.balanceOf(parts.S1), fx.ledger.market.balanceOf(parts.B1)
    assert (s_after[0], s_after[1]) == (s_before[0] - 40_000, s_before[1] + 40_000)
    assert (b_after[0], b_after[1]) == (b_before[0] - 60_000, b_before[1] + 60_000)


def test_rescue_share_of_a_payer_without_funds_is_advanced(fx: Flex, iv: int, parts: Any) -> None:
    """A payer whose balance went (withdrawn, or owed on imbalance) after its trade was cleared
    cannot leave the rescued trade without its remedy: the balancing account advances the share,
    the payer owes it (its later orders are refused until it pays)."""
    led, m = fx.ledger, fx.ledger.market
    later = iv + 8  # its trade recorded now, its activations after S1 came to owe
    tid = _trade(led, parts, later, nonce=2)
    _trade(led, parts, iv)
    m.withdraw(m.balanceOf(parts.S1)[0], {"from": parts.S1})
    led.end_interval(iv, int(m.settlementDelaySeconds()))
    led.settle(iv)  # no readings: S1 delivered none of its 2,000 Wh, short at 1.5 x the price
    paid = TRADE_WH * PRICE // 1000
    short = -(-TRADE_WH * 15_000 * PRICE // 10**7)
    debt = short - paid
    assert m.debtOf(parts.S1) == debt == 123_457
    fx.fm.setRemedyCap(10**6, {"from": parts.S1})
    fx.fm.setRemedyCap(10**6, {"from": parts.B1})
    act = fx.rescue(fx.offer(later), 2_000, tid, parts.S1, parts.B1)
    assert (act.share0, act.share1) == (50_000, 50_000)
    total = fx.total_in_market()
    bal0, s0 = m.balanceOf(led.balancing), m.balanceOf(parts.S1)
    assert s0[0] == 0
    tx = fx.record(later, [act])
    assert ev(tx, "FlexShareAdvanced") == [parts.S1.address, 50_000]
    assert m.debtOf(parts.S1) == debt + 50_000
    assert tuple(m.balanceOf(parts.S1)) == (0, s0[1] + 50_000)
    assert m.balanceOf(led.balancing)[0] == bal0[0] - 50_000
    assert fx.total_in_market() == total == led.token.balanceOf(m)


# ------------------------------------------------------------------ settlement


def _settle_one(fx: Flex, iv: int, act: flex.Activation, reading: tuple[int, int] | None) -> Any:
    fx.record(iv, [act])
    fx.ledger.end_interval(iv)
    if reading is not None:
        fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, *reading)])
    else:
        fx.ledger.end_interval(iv, int(fx.ledger.market.settlementDelaySeconds()))
    return fx.settle(iv)


@pytest.mark.parametrize(
    ("direction", "baseline", "reading", "delivered", "paid"),
    [
        # up 2,000 W from 0: exports 500 Wh in 900 s = 2,000 W, all delivered
        (FLEX_UP, 0, (0, 500), 2_000, 100_000),
        # up: 250 Wh = 1,000 W, half delivered
        (FLEX_UP, 0, (0, 250), 1_000, 50_000),
        # up: more than activated counts as activated
        (FLEX_UP, 0, (0, 1_000), 2_000, 100_000),
        # down from 0 W: imports 300 Wh = -1,200 W, 1,200 of 2,000 delivered
        (FLEX_DOWN, 0, (300, 0), 1_200, 60_000),
        # down, moved the wrong way: nothing
        (FLEX_DOWN, 0, (0, 100), 0, 0),
        # down from 1,000 W to -1,000 W: imports 250 Wh exactly
        (FLEX_DOWN, 1_000, (250, 0), 2_000, 100_000),
        # no reading at the deadline: nothing delivered
        (FLEX_UP, 0, None, 0, 0),
    ],
)
def test_settle_pays_metered_delivery(
    fx: Flex, iv: int, direction: int, baseline: int, reading: Any, delivered: int, paid: int
) -> None:
    m = fx.ledger.market
    bal, prov = fx.ledger.balancing, fx.provider
    total = fx.total_in_market()
    b0, p0 = m.balanceOf(bal), m.balanceOf(prov)
    act = fx.dso(fx.offer(iv, direction=direction, baselineW=baseline), 2_000)
    tx = _settle_one(fx, iv, act, reading)
    metered = 0 if reading is None else flex.metered_w(*reading, INTERVAL_S)
    assert (
        flex.delivered_w(direction, baseline, 2_000, None if reading is None else metered)
        == delivered
    )
    # per activation meteredW (int64) | deliveredW (uint32)
    deliveries = (metered % 2**64).to_bytes(8, "big") + delivered.to_bytes(4, "big")
    assert ev(tx, "ActivationBatchClosed") == [iv, 0, False, deliveries]
    assert flex.deliveries(deliveries, 1) == [(metered, delivered)]
    assert flex.payments(100_000, 0, 2_000, delivered) == (paid, 0)
    b1, p1 = m.balanceOf(bal), m.balanceOf(prov)
    assert (b1[0], b1[1]) == (b0[0] - paid, b0[1])
    assert (p1[0], p1[1]) == (p0[0] + paid, p0[1])
    assert fx.total_in_market() == total == fx.ledger.token.balanceOf(m)
    assert tuple(fx.fm.batchOf(iv, 0))[1] == 2


def test_settle_rescue_pays_pro_rata_from_both(fx: Flex, iv: int, parts: Any) -> None:
    tid = _trade(fx.ledger, parts, iv)
    fx.fm.setRemedyCap(20_000, {"from": parts.S1})
    fx.fm.setRemedyCap(40_000, {"from": parts.B1})
    act = fx.rescue(fx.offer(iv), 2_000, tid, parts.S1, parts.B1)  # 40,000 + 60,000
    m = fx.ledger.market
    s0, b0, p0 = m.balanceOf(parts.S1), m.balanceOf(parts.B1), m.balanceOf(fx.provider)
    fx.record(iv, [act])
    fx.ledger.end_interval(iv)
    fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, 0, 166)])  # 664 W of 2,000
    tx = fx.settle(iv)
    paid = 100_000 * 664 // 2_000  # 33,200
    from_seller = 40_000 * paid // 100_000  # 13,280
    assert flex.payments(40_000, 60_000, 2_000, 664) == (from_seller, paid - from_seller)
    assert flex.deliveries(ev(tx, "ActivationBatchClosed")[3], 1) == [(664, 664)]
    s1, b1, p1 = m.balanceOf(parts.S1), m.balanceOf(parts.B1), m.balanceOf(fx.provider)
    assert (s1[0] - s0[0], s1[1] - s0[1]) == (-from_seller, 0)
    assert (b1[0] - b0[0], b1[1] - b0[1]) == (-(paid - from_seller), 0)
    assert p1[0] - p0[0] == paid


def test_settle_timing_and_replay(fx: Flex, iv: int) -> None:
    act = fx.dso(fx.offer(iv), 2_000)
    fx.record(iv, [act])
    records = fx.records(iv)
    end = (iv + 1) * INTERVAL_S
    with brownie.reverts(err("FlexSettlementNotReady", iv, end)):
        fx.settle(iv)
    fx.ledger.end_interval(iv)
    deadline = fx.ledger.market.settlementDeadline(iv)
    with brownie.reverts(err("FlexSettlementNotReady", iv, deadline)):
        fx.settle(iv)  # no device reading yet, deadline not passed
    with brownie.reverts(err("FlexBatchCommitmentMismatch", iv, 0)):
        fx.fm.settleActivations(iv, 0, records[:-1] + b"\x01", {"from": fx.ledger.a[0]})
    with brownie.reverts(err("FlexBatchCommitmentMismatch", iv, 0)):  # the packed activations
        fx.fm.settleActivations(iv, 0, fx.recorded[iv][0], {"from": fx.ledger.a[0]})
    fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, 0, 500)])
    fx.settle(iv)
    with brownie.reverts(err("FlexBatchNotOpen", iv, 0, 2)):
        fx.settle(iv)
    with brownie.reverts(err("FlexBatchNotOpen", iv, 1, 0)):
        fx.fm.settleActivations(iv, 1, records, {"from": fx.ledger.a[0]})


def test_reclaim_returns_locked_shares(fx: Flex, iv: int) -> None:
    m = fx.ledger.market
    bal = fx.ledger.balancing
    before = m.balanceOf(bal)
    act = fx.dso(fx.offer(iv), 2_000)
    fx.record(iv, [act])
    reclaim_after = m.reclaimAfter(iv)
    with brownie.reverts(err("FlexReclaimNotReady", iv, reclaim_after)):
        fx.fm.reclaimActivations(iv, 0, fx.records(iv), {"from": fx.ledger.a[0]})
    fx.ledger.end_interval(iv, reclaim_after - (iv + 1) * INTERVAL_S)
    with brownie.reverts(err("FlexSettlementExpired", iv, reclaim_after)):
        fx.settle(iv)
    tx = fx.fm.reclaimActivations(iv, 0, fx.records(iv), {"from": fx.ledger.a[0]})
    assert ev(tx, "ActivationBatchClosed")[:3] == [iv, 0, True]
    # no deliveries (brownie shows empty bytes as 0x00: the log's own data says empty)
    assert abi_decode(["uint32", "bool", "bytes"], bytes(tx.logs[-1]["data"])) == (0, True, b"")
    assert tuple(m.balanceOf(bal)) == tuple(before)
    with brownie.reverts(err("FlexBatchNotOpen", iv, 0, 3)):
        fx.fm.reclaimActivations(iv, 0, fx.records(iv), {"from": fx.ledger.a[0]})


def test_one_offer_serves_several_activations(fx: Flex, iv: int, parts: Any) -> None:
    """A DSO activation and a rescue of the same offer in one batch: 1,500 + 2,500 = powerW."""
    tid = _trade(fx.ledger, parts, iv)
    fx.fm.setRemedyCap(10**6, {"from": parts.S1})
    fx.fm.setRemedyCap(10**6, {"from": parts.B1})
    offer = fx.offer(iv)
    acts = [fx.dso(offer, 1_500), fx.rescue(offer, 2_500, tid, parts.S1, parts.B1)]
    tx = fx.record(iv, acts)
    ordered = sorted(acts, key=lambda a: flex.sort_key(fx.dom, a))
    assert ev(tx, "ActivationBatchRecorded")[2:4] == [
        keccak(b"".join(a.record() for a in ordered)),
        2,
    ]
    assert fx.fm.intervalBookOf(iv)[2] == 4_000


def test_settle_batch_pays_each_account_once(fx: Flex, iv: int, parts: Any) -> None:
    """Three activations of one provider in one batch (two offers of its battery, one of its heat
    pump; two paid by the balancing account, one a rescue paid by S1 and B1): every payer and the
    provider get their exact sums from the batch's one release, and no token is made or lost."""
    tid = _trade(fx.ledger, parts, iv)
    fx.fm.setRemedyCap(10**6, {"from": parts.S1})
    fx.fm.setRemedyCap(10**6, {"from": parts.B1})
    m, bal, prov = fx.ledger.market, fx.ledger.balancing, fx.provider
    acts = [
        fx.dso(fx.offer(iv), 2_000),  # 500 Wh: 100,000
        fx.rescue(fx.offer(iv, nonce=2), 1_000, tid, parts.S1, parts.B1),  # 50,000: 25,000 each
        fx.dso(fx.offer(iv, device=fx.heat_pump, baselineW=-3_000, powerW=1_000), 1_000),  # 50,000
    ]
    assert [(a.share0, a.share1) for a in acts] == [(100_000, 0), (25_000, 25_000), (50_000, 0)]
    who = (bal, parts.S1, parts.B1, prov)
    before = [tuple(m.balanceOf(w)) for w in who]
    total = fx.total_in_market()
    fx.record(iv, acts)
    locked = [tuple(m.balanceOf(w)) for w in who]
    assert [(a[0] - b[0], a[1] - b[1]) for a, b in zip(locked, before, strict=True)] == [
        (-150_000, 150_000), (-25_000, 25_000), (-25_000, 25_000), (0, 0)
    ]  # fmt: skip
    fx.ledger.end_interval(iv)
    # the battery exports 250 Wh (1,000 W): half of the first offer, all of the second; the heat
    # pump imports 500 Wh (-2,000 W, 1,000 W up from its -3,000 W baseline): all of it
    fx.submit_device(
        iv,
        [
            fx.device_reading(fx.battery_key, iv, 0, 250),
            fx.device_reading(fx.heat_pump_key, iv, 500, 0),
        ],
    )
    tx = fx.settle(iv)
    after = [tuple(m.balanceOf(w)) for w in who]
    # balancing: pays 50,000 + 50,000, gets 50,000 back; S1 and B1 pay 25,000 each; the provider
    # gets 150,000; nothing stays locked
    assert [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)] == [
        (-100_000, 0), (-25_000, 0), (-25_000, 0), (150_000, 0)
    ]  # fmt: skip
    assert fx.total_in_market() == total == fx.ledger.token.balanceOf(m)
    ordered = flex.unpack(fx.recorded[iv][0])
    delivered = {fx.battery: 1_000, fx.heat_pump: -2_000}
    assert flex.deliveries(ev(tx, "ActivationBatchClosed")[3], 3) == [
        (delivered[a.offer["device"]], min(a.activated_w, 1_000)) for a in ordered
    ]
    assert list(tx.events.keys()) == ["ActivationBatchClosed"]


def test_flex_release_moves_only_balanced_sums(
    ledger: DeployedLedger, parts: Any, EnergyMarket: Any
) -> None:
    """EnergyMarket's own check of a release (a FlexibilityMarket bug cannot make tokens): a bank
    attached to a plain account, which locks and then releases through it directly."""
    led, hook = ledger, parts.S2
    m = EnergyMarket.deploy(
        led.token, led.registry, led.readings, DELAY_S, GATE_LEAD_S, led.a[1], SHORT_BPS, LONG_BPS,
        {"from": led.admin},
    )  # fmt: skip
    m.attachFlexibility(hook, {"from": led.admin})
    led.token.approve(m, 2**256 - 1, {"from": parts.S1})
    m.deposit(1_000, {"from": parts.S1})
    m.flexLock(parts.S1, 600, {"from": hook})
    assert tuple(m.balanceOf(parts.S1)) == (400, 600)

    def moves(*entries: tuple[Any, int, int]) -> bytes:
        return b"".join(
            bytes(12) + bytes.fromhex(str(a)[2:]) + u.to_bytes(32, "big") + c.to_bytes(32, "big")
            for a, u, c in entries
        )

    with brownie.reverts(err("MarketFlexUnbalanced", 600, 601)):
        m.flexRelease(moves((parts.S1, 600, 100), (parts.B1, 0, 501)), {"from": hook})
    with brownie.reverts("Integer overflow"):  # unlocking more than is locked: panic 0x11
        m.flexRelease(moves((parts.S1, 601, 1), (parts.B1, 0, 600)), {"from": hook})
    m.flexRelease(
        moves((parts.S1, 450, 50), (parts.B1, 0, 300), (parts.B1, 0, 100)), {"from": hook}
    )
    assert tuple(m.balanceOf(parts.S1)) == (450, 150)
    assert tuple(m.balanceOf(parts.B1)) == (400, 0)
    assert led.token.balanceOf(m) == 1_000


def test_records_of_matches_python(fx: Flex, iv: int, parts: Any) -> None:
    acts = [
        fx.dso(fx.offer(iv, direction=FLEX_DOWN, baselineW=-1_000), 1_500),
        replace(fx.dso(fx.offer(iv, nonce=3), 2_000), payer1=parts.B1.address, share1=7),
    ]
    packed = fx.packed(acts)
    assert norm(fx.fm.recordsOf(packed)) == flex.records(packed)
    assert len(flex.records(packed)) == 2 * flex.RECORD_SIZE
    with brownie.reverts(err("FlexMalformedCalldata", len(packed) - 1)):
        fx.fm.recordsOf(packed[:-1])


# ------------------------------------------------------------------ device readings


def test_device_reading_stored_and_read(fx: Flex, iv: int) -> None:
    fx.ledger.end_interval(iv)
    tx = fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, 12, 345)])
    assert ev(tx, "DeviceReadingSubmitted") == [fx.battery, iv, 12, 345]
    assert tuple(fx.ledger.readings.readingOf(fx.battery, iv)) == (12, 345, True)
    assert tuple(fx.ledger.readings.readingOf(fx.battery, iv - 1)) == (0, 0, False)
    # several devices in one call (settlement's): present (bit 128) | importWh << 64 | exportWh
    keys = bytes.fromhex(fx.battery[2:]) + bytes.fromhex(fx.heat_pump[2:])
    assert list(fx.ledger.readings.deviceReadingsOf(keys, iv)) == [1 << 128 | 12 << 64 | 345, 0]
    with brownie.reverts(err("MeterReadingsMalformedCalldata", 39)):
        fx.ledger.readings.deviceReadingsOf(keys[:-1], iv)
    # identical again: silent; different: conflicting (4)
    tx = fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, 12, 345)])
    assert "ReadingRejected" not in tx.events and tx.return_value == 0
    tx = fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, 12, 346)])
    assert ev(tx, "ReadingRejected") == [fx.battery, iv, 4]


def test_device_reading_rejections(fx: Flex, iv: int) -> None:
    fx.ledger.end_interval(iv)
    stranger = device_key(99)
    tx = fx.submit_device(iv, [fx.device_reading(stranger, iv, 1, 2)])
    assert ev(tx, "ReadingRejected") == [Account.from_key(stranger).address, iv, 2]
    forged = bytearray(fx.device_reading(fx.battery_key, iv, 1, 2))
    forged[27] ^= 1  # importWh changed after signing
    tx = fx.submit_device(iv, [bytes(forged)])
    assert ev(tx, "ReadingRejected") == [fx.battery, iv, 1]
    fx.ledger.registry.deactivateDevice(fx.battery, {"from": fx.ledger.dso})
    tx = fx.submit_device(iv, [fx.device_reading(fx.battery_key, iv, 1, 2)])
    assert ev(tx, "ReadingRejected") == [fx.battery, iv, 3]
    with brownie.reverts(err("MeterReadingsNotOracle", fx.provider.address)):
        fx.ledger.readings.submitDeviceReadings(iv, b"", {"from": fx.provider})
