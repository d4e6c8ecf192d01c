"""EnergyMarket: balances, cancellation, recording (signatures, attestation, escrow), settlement."""

from typing import Any

import brownie
import pytest
from conftest import (
    BALANCING_DEPOSIT,
    DELAY_S,
    DEPOSIT,
    EVIDENCE,
    GATE_LEAD_S,
    INTERVAL_S,
    PRICE,
    DeployedLedger,
    err,
    ev,
    norm,
)
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from backend.chain import batches, eip712
from backend.chain.batches import CandidateTrade
from backend.chain.protocol import BUY, SELL


@pytest.fixture
def iv(ledger: DeployedLedger) -> int:
    """A delivery interval whose gate closure is at least 14 minutes away (batches for it and for
    the interval after it can still be recorded)."""
    return ledger.current_interval() + 2


def _pair(
    ledger: DeployedLedger,
    seller: Any,
    buyer: Any,
    iv: int,
    energy: int = 1000,
    *,
    s_nonce: int = 1,
    b_nonce: int = 1,
    price: int = PRICE,
    verdict: int = 0,
    s_energy: int | None = None,
    b_energy: int | None = None,
) -> CandidateTrade:
    sell = ledger.order(seller, SELL, iv, s_energy or energy, 100_000, s_nonce)
    buy = ledger.order(buyer, BUY, iv, b_energy or energy, 200_000, b_nonce)
    return ledger.trade(sell, buy, energy, price, verdict)


# ---------------------------------------------------------------------------- balances


def test_deposit_and_withdraw(ledger: DeployedLedger, parts: Any) -> None:
    tx = ledger.market.deposit(1_000, {"from": parts.X})
    assert ev(tx, "Deposited") == [parts.X.address, 1_000]
    assert ledger.balance(parts.X) == (1_000, 0)
    tx = ledger.market.withdraw(400, {"from": parts.X})
    assert ev(tx, "Withdrawn") == [parts.X.address, 400]
    assert ledger.balance(parts.X) == (600, 0)
    assert ledger.token.balanceOf(parts.X) == DEPOSIT - 600


def test_deposit_and_withdraw_errors(ledger: DeployedLedger, parts: Any) -> None:
    with brownie.reverts(err("MarketZeroAmount")):
        ledger.market.deposit(0, {"from": parts.X})
    with brownie.reverts(err("MarketAmountTooLarge", 2**128)):
        ledger.market.deposit(2**128, {"from": parts.X})
    with brownie.reverts(err("MarketZeroAmount")):
        ledger.market.withdraw(0, {"from": parts.X})
    with brownie.reverts(err("MarketInsufficientBalance", parts.S1.address, DEPOSIT // 2, DEPOSIT)):
        ledger.market.withdraw(DEPOSIT, {"from": parts.S1})


def test_cancel_nonce(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    tx = ledger.market.cancelNonce(7, {"from": parts.S1})
    assert ev(tx, "NonceCancelled") == [parts.S1.address, 7]
    assert tuple(ledger.market.filledOf(parts.S1, 7)) == (0, True)
    assert tuple(ledger.market.filledOf(parts.S1, 6)) == (0, False)
    with brownie.reverts(err("MarketNonceAlreadyCancelled", parts.S1.address, 7)):
        ledger.market.cancelNonce(7, {"from": parts.S1})
    with brownie.reverts(err("MarketOrderCancelled", parts.S1.address, 7)):
        ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv, s_nonce=7)])


# ---------------------------------------------------------------------------- recording


def test_record_trade_locks_escrow(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    tx = ledger.record(iv, [t])
    tid = ledger.tid(t)
    assert ev(tx, "TradeRecorded") == [tid, parts.S1.address, parts.B1.address, iv, 1000, PRICE]
    rec = ledger.rec(t)
    commitment = batches.commitment([rec])
    assert ev(tx, "BatchRecorded") == [iv, 0, commitment, 1, EVIDENCE]
    assert norm(tx.return_value) == commitment
    assert norm(ledger.market.commitmentOf(iv, 0)) == commitment
    assert ledger.balance(parts.B1) == (DEPOSIT // 2 - 123_457, 123_457)
    assert ledger.balance(parts.S1) == (DEPOSIT // 2, 0)
    assert tuple(ledger.market.filledOf(parts.S1, 1)) == (1000, False)
    assert tuple(ledger.market.filledOf(parts.B1, 1)) == (1000, False)
    # lastTradeId, batchCount, approvedCount, expectedBatches, settledBatches, settled, reclaimed
    assert norm(ledger.market.intervalOf(iv)) == [tid, 1, 1, 1, 0, False, False, 15_000, 5_000]


def test_hash_views_match_python_builders(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    cid, mkt = ledger.chain_id, ledger.market.address
    sell_t, buy_t = eip712.order_tuple(t.sell), eip712.order_tuple(t.buy)
    assert norm(ledger.market.orderHash(sell_t)) == eip712.order_hash(cid, mkt, t.sell)
    assert norm(ledger.market.tradeIdOf(sell_t, buy_t)) == ledger.tid(t)
    rows = [
        eip712.AttestedTrade(ledger.tid(t), 1000, PRICE, 3),
        eip712.AttestedTrade(b"\x07" * 32, 5, 9, 0),
    ]
    view = (iv, 1, 3, [r.trade_id for r in rows], [1000, 5], [PRICE, 9], [3, 0], EVIDENCE)
    digest = eip712.attestation_hash(cid, mkt, iv, 1, 3, rows, EVIDENCE)
    assert norm(ledger.market.attestationDigest(view)) == digest
    # the fast encoder and eth-account's generic typed-data encoder agree
    doc = eip712.attestation_typed_data(cid, mkt, iv, 1, 3, rows, EVIDENCE)
    assert eip712.typed_data_hash(doc) == digest
    digest = eip712.reading_hash(cid, ledger.readings.address, parts.S1.address, iv, 1, 2)
    assert norm(ledger.readings.readingDigest(parts.S1, iv, 1, 2)) == digest
    assert ledger.market.escrowOf(1, 1) == 1  # rounded up
    assert ledger.market.escrowOf(1000, PRICE) == 123_457
    assert ledger.market.settlementDeadline(iv) == (iv + 1) * INTERVAL_S + 3600
    assert ledger.market.gateClosure(iv) == iv * INTERVAL_S - GATE_LEAD_S
    assert ledger.market.reclaimAfter(iv) == (iv + 1) * INTERVAL_S + 2 * DELAY_S


def test_vetoed_trade_locks_and_consumes_nothing(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    vetoed = _pair(ledger, parts.S1, parts.B1, iv, verdict=3)
    approved = _pair(ledger, parts.S2, parts.B2, iv)
    tx = ledger.record(iv, [vetoed, approved])
    assert ev(tx, "TradeVetoed") == [ledger.tid(vetoed), 3]
    assert len(tx.events["TradeRecorded"]) == 1
    assert ev(tx, "TradeRecorded")[0] == ledger.tid(approved)
    assert tx.events["BatchRecorded"]["approvedCount"] == 1
    assert ledger.balance(parts.B1) == (DEPOSIT // 2, 0)
    assert tuple(ledger.market.filledOf(parts.S1, 1)) == (0, False)
    assert tuple(ledger.market.filledOf(parts.B1, 1)) == (0, False)


def test_record_same_trade_twice_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv, 400, s_energy=1000, b_energy=1000)
    ledger.record(iv, [t], count=2)
    tid = ledger.tid(t)
    with brownie.reverts(err("MarketTradeOutOfOrder", tid, tid)):
        ledger.record(iv, [t])
    # a vetoed trade cannot come back approved in a later batch either
    vetoed = _pair(ledger, parts.S2, parts.B2, iv + 1, verdict=1)
    ledger.record(iv + 1, [vetoed], count=2)
    vid = ledger.tid(vetoed)
    vetoed.verdict = 0
    with brownie.reverts(err("MarketTradeOutOfOrder", vid, vid)):
        ledger.record(iv + 1, [vetoed])


def test_record_unsorted_batch_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    a, b = ledger.sort(
        [_pair(ledger, parts.S1, parts.B1, iv), _pair(ledger, parts.S2, parts.B2, iv)]
    )
    with brownie.reverts(err("MarketTradeOutOfOrder", ledger.tid(a), ledger.tid(b))):
        ledger.record(iv, [b, a], sort=False)


def test_record_batch_errors(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    with brownie.reverts(err("MarketNotOperator", parts.S1.address)):
        ledger.record(iv, [t], sender=parts.S1)
    sig = ledger.attest(iv, [])
    with brownie.reverts(err("MarketEmptyBatch")):
        ledger.market.recordTrades(iv, 0, 1, b"", b"", EVIDENCE, sig, {"from": ledger.operator})
    orders, _rows = ledger.args([t])
    bad = batches.pack_trade(0, 2, 1000, PRICE, 0)
    with brownie.reverts(err("MarketOrderIndexOutOfRange", 2)):
        ledger.market.recordTrades(iv, 0, 1, orders, bad, EVIDENCE, sig, {"from": ledger.operator})


def test_record_malformed_calldata_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """Packed calldata that is not a whole number of records is refused by name, never misread."""
    t = _pair(ledger, parts.S1, parts.B1, iv)
    sig = ledger.attest(iv, [t])
    orders, rows = ledger.args([t])
    assert (len(orders), len(rows)) == (2 * 153, 29)
    op = ledger.operator
    with brownie.reverts(err("MarketMalformedCalldata", 1, 28)):
        ledger.market.recordTrades(iv, 0, 1, orders, rows[:-1], EVIDENCE, sig, {"from": op})
    with brownie.reverts(err("MarketMalformedCalldata", 1, 30)):
        ledger.market.recordTrades(iv, 0, 1, orders, rows + b"\x00", EVIDENCE, sig, {"from": op})
    with brownie.reverts(err("MarketMalformedCalldata", 0, 305)):
        ledger.market.recordTrades(iv, 0, 1, orders[:-1], rows, EVIDENCE, sig, {"from": op})
    with brownie.reverts(err("MarketMalformedCalldata", 0, 0)):
        ledger.market.recordTrades(iv, 0, 1, b"", rows, EVIDENCE, sig, {"from": op})
    ledger.market.recordTrades(iv, 0, 1, orders, rows, EVIDENCE, sig, {"from": op})


def test_pack_views_match_python_encoder(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    packed = ledger.market.packOrder(eip712.order_tuple(t.sell), *t.sell_sig)
    assert norm(packed) == batches.pack_order(t.sell, t.sell_sig)
    packed = ledger.market.packTrade(3, 4, 1000, PRICE, 2)
    assert norm(packed) == batches.pack_trade(3, 4, 1000, PRICE, 2)
    r = ledger.reading(parts.S1, iv, 5, 6)
    packed = ledger.readings.packReading(r[:20], 5, 6, r[36:68], r[68:100])
    assert norm(packed) == r


def test_attestation_by_non_validator_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    with brownie.reverts(err("MarketInvalidValidatorSignature", parts.S2.address)):
        ledger.record(iv, [t], key=ledger.trader_keys[parts.S2.address])


def test_attestation_tampered_verdict_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv, verdict=2)
    sig = ledger.attest(iv, [t])  # the validator vetoed it ...
    t.verdict = 0  # ... and the operator flips the verdict
    _refused(ledger, iv, [t], sig)
    t.verdict = 2
    _refused(ledger, iv, [t], sig, evidence=keccak(b"other"))


def _refused(
    ledger: DeployedLedger,
    iv: int,
    trades: list[CandidateTrade],
    sig: bytes,
    evidence: bytes = EVIDENCE,
    index: int = 0,
    count: int = 1,
) -> None:
    """recordTrades of ``trades`` under ``sig`` reverts naming the key that signed what was sent."""
    cid, mkt = ledger.chain_id, ledger.market.address
    rows = [t.attested(cid, mkt) for t in trades]
    digest = eip712.attestation_hash(cid, mkt, iv, index, count, rows, evidence)
    recovered = Account._recover_hash(digest, signature=sig)
    assert recovered != ledger.validator.address
    with brownie.reverts(err("MarketInvalidValidatorSignature", recovered)):
        ledger.market.recordTrades(
            iv, index, count, *ledger.args(trades), evidence, sig, {"from": ledger.operator}
        )


def test_attestation_binds_energy_and_price(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """The reported attack: orders of 5,000 Wh, the validator attests the trade at 1,000 Wh; the
    operator may not record it at 5,000 Wh (escrow 5x, paid for energy the grid never checked), at
    less, or at another price within both limits."""
    t = _pair(ledger, parts.S1, parts.B1, iv, 1000, s_energy=5000, b_energy=5000)
    sig = ledger.attest(iv, [t])
    for energy, price in ((5000, PRICE), (500, PRICE), (1000, 150_000), (1000, 100_000)):
        forged = CandidateTrade(t.sell, t.buy, t.sell_sig, t.buy_sig, energy, price)
        _refused(ledger, iv, [forged], sig)
    assert ledger.balance(parts.B1) == (DEPOSIT // 2, 0)
    assert tuple(ledger.market.filledOf(parts.S1, 1)) == (0, False)
    tx = ledger.market.recordTrades(
        iv, 0, 1, *ledger.args([t]), EVIDENCE, sig, {"from": ledger.operator}
    )
    assert ev(tx, "TradeRecorded") == [
        ledger.tid(t),
        parts.S1.address,
        parts.B1.address,
        iv,
        1000,
        PRICE,
    ]
    assert ledger.balance(parts.B1) == (DEPOSIT // 2 - 123_457, 123_457)


def test_attestation_binds_batch_position(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """A batch signed as 1 of 2 is refused as 0 of 2 or 1 of 1; the first batch fixes the count."""
    a, b = ledger.sort(
        [_pair(ledger, parts.S1, parts.B1, iv), _pair(ledger, parts.S2, parts.B2, iv)]
    )
    sig_a = ledger.attest(iv, [a], index=0, count=2)
    sig_b = ledger.attest(iv, [b], index=1, count=2)
    _refused(ledger, iv, [a], sig_a, count=1)
    with brownie.reverts(err("MarketBatchOutOfSequence", iv, 0, 1)):
        ledger.market.recordTrades(
            iv, 1, 2, *ledger.args([b]), EVIDENCE, sig_b, {"from": ledger.operator}
        )
    with brownie.reverts(err("MarketBatchCountInvalid", iv, 0, 0)):
        ledger.market.recordTrades(
            iv, 0, 0, *ledger.args([a]), EVIDENCE, sig_a, {"from": ledger.operator}
        )
    ledger.record(iv, [a], count=2)
    with brownie.reverts(err("MarketBatchCountInvalid", iv, 2, 3)):
        ledger.market.recordTrades(
            iv, 1, 3, *ledger.args([b]), EVIDENCE, sig_b, {"from": ledger.operator}
        )
    _refused(ledger, iv, [b], sig_a, index=1, count=2)  # a's signature does not cover b
    ledger.record(iv, [b])
    assert norm(ledger.market.intervalOf(iv))[1:] == [2, 2, 2, 0, False, False, 15_000, 5_000]


def test_order_field_errors(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    S1, B1 = parts.S1, parts.B1

    def check(
        sell: dict[str, Any],
        buy: dict[str, Any],
        expected: str,
        energy: int = 500,
        price: int = PRICE,
    ) -> None:
        t = ledger.trade(sell, buy, energy, price)
        with brownie.reverts(expected):
            ledger.record(iv, [t])

    ok_sell = ledger.order(S1, SELL, iv, 1000, 100_000, 1)
    ok_buy = ledger.order(B1, BUY, iv, 1000, 200_000, 1)
    tid = lambda s, b: ledger.tid(ledger.trade(s, b, 1))  # noqa: E731
    wrong = dict(ok_sell, side=BUY)
    check(wrong, ok_buy, err("MarketOrderWrongSide", tid(wrong, ok_buy), SELL))
    wrong = dict(ok_buy, side=SELL)
    check(ok_sell, wrong, err("MarketOrderWrongSide", tid(ok_sell, wrong), BUY))
    wrong = dict(ok_sell, intervalId=iv + 1)
    check(wrong, ok_buy, err("MarketOrderIntervalMismatch", tid(wrong, ok_buy), iv + 1))
    expired = dict(ok_buy, expiry=ledger.now() - 1)
    check(ok_sell, expired, err("MarketOrderExpired", B1.address, 1, ledger.now() - 1))
    self_buy = ledger.order(S1, BUY, iv, 1000, 200_000, 2)
    check(ok_sell, self_buy, err("MarketSelfTrade", tid(ok_sell, self_buy)))
    named = dict(ok_sell, counterparty=parts.B2.address)
    check(named, ok_buy, err("MarketCounterpartyMismatch", S1.address, 1, parts.B2.address))
    check(ok_sell, ok_buy, err("MarketPriceOutOfRange", tid(ok_sell, ok_buy), 99_999), price=99_999)
    check(
        ok_sell, ok_buy, err("MarketPriceOutOfRange", tid(ok_sell, ok_buy), 200_001), price=200_001
    )
    check(ok_sell, ok_buy, err("MarketZeroTradeAmount", tid(ok_sell, ok_buy)), energy=0)
    check(ok_sell, ok_buy, err("MarketOrderOverfilled", S1.address, 1, 1000), energy=1001)
    outsider = ledger.order(parts.X, BUY, iv, 1000, 200_000, 1)
    check(ok_sell, outsider, err("MarketParticipantInactive", parts.X.address))


def test_counterparty_named_both_ways_records(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    sell = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1, counterparty=parts.B1.address)
    buy = ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1, counterparty=parts.S1.address)
    tx = ledger.record(iv, [ledger.trade(sell, buy, 1000)])
    assert "TradeRecorded" in tx.events


def test_order_signature_errors(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    sell = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1)
    buy = ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1)
    good = ledger.sign(sell)
    variants = {
        "wrong key": ledger.sign(sell, key=ledger.trader_keys[parts.B1.address]),
        "other chain": ledger.sign(sell, chain_id=ledger.chain_id + 1),
        "other contract": ledger.sign(sell, market=ledger.readings.address),
    }
    for sig in variants.values():
        t = CandidateTrade(sell, buy, sig, ledger.sign(buy), 500, PRICE)
        with brownie.reverts(err("MarketInvalidOrderSignature", parts.S1.address, 1)):
            ledger.record(iv, [t])
    tampered = dict(sell, energyWh=2000)  # signed for 1000 Wh, presented as 2000 Wh
    t = CandidateTrade(tampered, buy, good, ledger.sign(buy), 500, PRICE)
    with brownie.reverts(err("MarketInvalidOrderSignature", parts.S1.address, 1)):
        ledger.record(iv, [t])


def test_deactivated_trader_cannot_trade(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    ledger.registry.deactivate(parts.B1, {"from": ledger.dso})
    with brownie.reverts(err("MarketParticipantInactive", parts.B1.address)):
        ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])


def test_insufficient_balance_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    ledger.market.withdraw(DEPOSIT // 2 - 100_000, {"from": parts.B1})
    with brownie.reverts(err("MarketInsufficientBalance", parts.B1.address, 100_000, 123_457)):
        ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)])


def test_partial_fills_across_batches(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    sell = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1)
    t1 = ledger.trade(sell, ledger.order(parts.B1, BUY, iv, 600, 200_000, 1), 600)
    t2 = ledger.trade(sell, ledger.order(parts.B2, BUY, iv, 600, 200_000, 1), 600)
    first, second = ledger.sort([t1, t2])
    ledger.record(iv, [first], count=2)
    assert tuple(ledger.market.filledOf(parts.S1, 1)) == (600, False)
    with brownie.reverts(err("MarketOrderOverfilled", parts.S1.address, 1, 400)):
        ledger.record(iv, [second])
    second.energy_wh = 400
    ledger.record(iv, [second])
    assert tuple(ledger.market.filledOf(parts.S1, 1)) == (1000, False)
    assert norm(ledger.market.intervalOf(iv))[1:] == [2, 2, 2, 0, False, False, 15_000, 5_000]


# ---------------------------------------------------------------------------- settlement


def _read(ledger: DeployedLedger, iv: int, values: dict[Any, tuple[int, int]]) -> None:
    ledger.end_interval(iv)
    ledger.submit(iv, [ledger.reading(w, iv, imp, exp) for w, (imp, exp) in values.items()])


def _settled(tx: Any) -> dict[bytes, tuple[int, int, int]]:
    evs = tx.events["TradeSettled"]
    return {
        norm(e["tradeId"]): (int(e["deliveredWh"]), int(e["paid"]), int(e["refunded"])) for e in evs
    }


def _conserved(ledger: DeployedLedger, parts: Any) -> None:
    """Every token the market holds is some account's: the traders', the outsider's and the
    balancing account's."""
    wallets = [parts.S1, parts.S2, parts.B1, parts.B2, parts.X, ledger.balancing]
    internal = sum(sum(ledger.balance(w)) for w in wallets)
    assert internal == ledger.token.balanceOf(ledger.market)


def test_settle_full_delivery(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    ledger.record(iv, [t])
    _read(ledger, iv, {parts.S1: (0, 1000), parts.B1: (1000, 0)})
    tx = ledger.settle(iv)  # before the deadline: every reading is in
    assert _settled(tx) == {ledger.tid(t): (1000, 123_457, 0)}
    assert ev(tx, "IntervalSettled") == [iv, 1]
    assert ledger.balance(parts.S1) == (DEPOSIT // 2 + 123_457, 0)
    assert ledger.balance(parts.B1) == (DEPOSIT // 2 - 123_457, 0)
    assert ledger.market.intervalOf(iv)[5] is True
    _conserved(ledger, parts)


def test_settle_firm_with_imbalance_both_directions(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    # S1 sells 1000 Wh to B1 and 500 Wh to B2 (C = +1500) but exports 900: short 600 Wh.
    # B1 imports 1000 of 1000 (balanced); B2 imports 200 of 500 (C = -500, M = -200): long 300 Wh.
    sell = ledger.order(parts.S1, SELL, iv, 1500, 100_000, 1)
    t1 = ledger.trade(sell, ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1), 1000)
    t2 = ledger.trade(sell, ledger.order(parts.B2, BUY, iv, 500, 200_000, 1), 500)
    ledger.record(iv, [t1, t2])
    _read(ledger, iv, {parts.S1: (0, 900), parts.B1: (1000, 0), parts.B2: (200, 0)})
    tx = ledger.settle(iv)
    # Trades settle firm. t1: paid floor(1000 x 123457 / 1000) = 123457 = its escrow.
    # t2: paid floor(500 x 123457 / 1000) = 61728, escrow ceil(61728.5) = 61729: 1 back.
    assert _settled(tx) == {
        ledger.tid(t1): (1000, 123_457, 0),
        ledger.tid(t2): (500, 61_728, 1),
    }
    # clearing price floor((1000 + 500) x 123457 / 1500) = 123457 per kWh;
    # S1 pays ceil(600 x 123457 x 15000 / 10^7) = ceil(111111.3) = 111112;
    # B2 gets floor(300 x 123457 x 5000 / 10^7) = floor(18518.55) = 18518.
    assert ev(tx, "IntervalImbalanceSettled") == [iv, 123_457, 15_000, 5_000, 111_112, 18_518]
    assert {e["account"]: norm(list(e.values())[2:]) for e in tx.events["ImbalanceSettled"]} == {
        parts.S1.address: [1500, 900, -111_112, 0],
        parts.B1.address: [-1000, -1000, 0, 0],
        parts.B2.address: [-500, -200, 18_518, 0],
    }
    assert ledger.balance(parts.S1) == (DEPOSIT // 2 + 123_457 + 61_728 - 111_112, 0)
    assert ledger.balance(parts.B1) == (DEPOSIT // 2 - 123_457, 0)
    assert ledger.balance(parts.B2) == (DEPOSIT // 2 - 61_728 + 18_518, 0)
    assert ledger.balance(ledger.balancing) == (BALANCING_DEPOSIT + 111_112 - 18_518, 0)
    _conserved(ledger, parts)


def test_settle_rounds_payment_down_and_imbalance_up(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    # S2 sells 1000 to B1 and 500 to B2 at 150001 per kWh, exports 1000 (short 500 Wh);
    # B1 imports 5000 (short 4000 Wh), B2 500 (balanced).
    sell = ledger.order(parts.S2, SELL, iv, 1500, 100_000, 1)
    t1 = ledger.trade(sell, ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1), 1000, 150_001)
    t2 = ledger.trade(sell, ledger.order(parts.B2, BUY, iv, 500, 200_000, 1), 500, 150_001)
    ledger.record(iv, [t1, t2])
    _read(ledger, iv, {parts.S2: (0, 1000), parts.B1: (5000, 0), parts.B2: (500, 0)})
    tx = ledger.settle(iv)
    # paid floor(500 x 150001 / 1000) = 75000; escrow ceil(75000.5) = 75001: 1 back to B2
    assert _settled(tx) == {
        ledger.tid(t1): (1000, 150_001, 0),
        ledger.tid(t2): (500, 75_000, 1),
    }
    # S2: ceil(500 x 150001 x 1.5 / 1000) = ceil(112500.75) = 112501;
    # B1: 4000 x 150001 x 1.5 / 1000 = 900006 exactly
    assert ev(tx, "IntervalImbalanceSettled") == [iv, 150_001, 15_000, 5_000, 1_012_507, 0]
    assert ledger.balance(parts.S2) == (DEPOSIT // 2 + 150_001 + 75_000 - 112_501, 0)
    assert ledger.balance(parts.B1) == (DEPOSIT // 2 - 150_001 - 900_006, 0)
    _conserved(ledger, parts)


def test_settle_missing_reading_waits_for_deadline(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    t = _pair(ledger, parts.S1, parts.B1, iv)
    ledger.record(iv, [t])
    _read(ledger, iv, {parts.B1: (1000, 0)})
    deadline = (iv + 1) * INTERVAL_S + 3600
    with brownie.reverts(err("MarketSettlementNotReady", iv, deadline)):
        ledger.settle(iv)
    ledger.end_interval(iv, 3600)
    tx = ledger.settle(iv)
    # the trade is paid; S1's missing reading counts as zero: short its whole 1000 Wh,
    # ceil(1000 x 123457 x 1.5 / 1000) = ceil(185185.5) = 185186
    assert _settled(tx) == {ledger.tid(t): (1000, 123_457, 0)}
    assert ledger.balance(parts.B1) == (DEPOSIT // 2 - 123_457, 0)
    assert ledger.balance(parts.S1) == (DEPOSIT // 2 + 123_457 - 185_186, 0)
    _conserved(ledger, parts)


def test_vetoed_trade_never_settles(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    vetoed = _pair(ledger, parts.S1, parts.B1, iv, verdict=4)
    approved = _pair(ledger, parts.S2, parts.B2, iv)
    ledger.record(iv, [vetoed, approved])
    _read(
        ledger,
        iv,
        {parts.S1: (0, 1000), parts.B1: (1000, 0), parts.S2: (0, 1000), parts.B2: (1000, 0)},
    )
    tx = ledger.settle(iv)
    assert _settled(tx) == {ledger.tid(approved): (1000, 123_457, 0)}
    assert ledger.balance(parts.S1) == (DEPOSIT // 2, 0)
    assert ledger.balance(parts.B1) == (DEPOSIT // 2, 0)
    # the vetoed pair cannot be smuggled into settlement either
    with brownie.reverts(err("MarketIntervalSettled", iv)):
        ledger.settle(iv)


def test_settle_twice_and_record_after_settle_revert(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv, s_nonce=1)])
    _read(ledger, iv, {parts.S1: (0, 1000), parts.B1: (1000, 0)})
    ledger.settle(iv)
    with brownie.reverts(err("MarketIntervalSettled", iv)):
        ledger.settle(iv)
    with brownie.reverts(err("MarketGateClosed", iv, iv * INTERVAL_S - GATE_LEAD_S)):
        ledger.record(iv, [_pair(ledger, parts.S2, parts.B2, iv, s_nonce=9)])


def test_settle_multi_batch(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    trades = ledger.sort(
        [
            _pair(ledger, parts.S1, parts.B1, iv, 300, s_nonce=1, b_nonce=1),
            _pair(ledger, parts.S2, parts.B2, iv, 300, s_nonce=1, b_nonce=1),
            _pair(ledger, parts.S1, parts.B2, iv, 300, s_nonce=2, b_nonce=2),
        ]
    )
    ledger.record(iv, trades[:1], sort=False, count=2)
    ledger.record(iv, trades[1:], sort=False)
    _read(
        ledger, iv, {parts.S1: (0, 600), parts.S2: (0, 300), parts.B1: (300, 0), parts.B2: (600, 0)}
    )
    tx = ledger.settle(iv)
    assert sorted(_settled(tx).values()) == [(300, 37_037, 1)] * 3
    _conserved(ledger, parts)


def test_settle_input_errors(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    with brownie.reverts(err("MarketIntervalNotRecorded", iv)):
        ledger.market.settle(iv, [], b"", b"", 1, {"from": parts.X})
    t = _pair(ledger, parts.S1, parts.B1, iv)
    ledger.record(iv, [t])
    ledger.end_interval(iv, 3600)
    batches_, parties, positions = ledger.settle_args(iv)
    settle = ledger.market.settle
    with brownie.reverts(err("MarketBatchCountMismatch", iv, 1, 0)):
        settle(iv, [], parties, positions, 1, {"from": parts.X})
    rec = batches.unpack_record(batches_[0])
    forged = batches.pack_record(*rec[:5], 999, rec.price_per_kwh)  # claims less energy
    with brownie.reverts(err("MarketBatchCommitmentMismatch", iv, 0)):
        settle(iv, [forged], parties, positions, 1, {"from": parts.X})
    with brownie.reverts(err("MarketMalformedCalldata", 2, 103)):
        settle(iv, [batches_[0][:-1]], parties, positions, 1, {"from": parts.X})
    with brownie.reverts(err("MarketMalformedCalldata", 4, 3)):
        settle(iv, batches_, parties, positions[:3], 1, {"from": parts.X})
    with brownie.reverts(err("MarketPositionsMismatch", 2, 1)):
        settle(iv, batches_, parties, positions[:2], 1, {"from": parts.X})
    with brownie.reverts(err("MarketMalformedCalldata", 3, 39)):
        settle(iv, batches_, parties[:-1], positions, 1, {"from": parts.X})
    swapped = parties[20:] + parties[:20]
    with brownie.reverts(err("MarketPartiesNotSorted", 1)):
        settle(iv, batches_, swapped, positions, 1, {"from": parts.X})
    listed = [to_checksum_address(parties[i : i + 20]) for i in range(0, len(parties), 20)]
    with brownie.reverts(err("MarketPartyMissing", listed[1])):
        settle(iv, batches_, parties[:20], positions, 1, {"from": parts.X})
    with brownie.reverts(err("MarketPartyMissing", parts.S1.address)):
        settle(iv, batches_, parties, positions[2:] + positions[:2], 1, {"from": parts.X})
    extra = sorted([*listed, parts.X.address], key=lambda a: int(a, 16))
    packed_extra = b"".join(bytes.fromhex(a[2:]) for a in extra)
    moved = b"".join(
        extra.index(listed[int.from_bytes(positions[i : i + 2], "big")]).to_bytes(2, "big")
        for i in range(0, len(positions), 2)
    )
    with brownie.reverts(err("MarketPartyUnused", parts.X.address)):
        settle(iv, batches_, packed_extra, moved, 1, {"from": parts.X})
    settle(iv, batches_, parties, positions, 1, {"from": parts.X})


def test_order_in_two_trades_of_one_batch(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    sell = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1)
    t1 = ledger.trade(sell, ledger.order(parts.B1, BUY, iv, 600, 200_000, 1), 600)
    t2 = ledger.trade(sell, ledger.order(parts.B2, BUY, iv, 600, 200_000, 1), 600)
    orders, _ = ledger.args([t1, t2])
    assert len(orders) == 3 * 153  # the shared sell order is sent (and verified) once
    with brownie.reverts(err("MarketOrderOverfilled", parts.S1.address, 1, 400)):
        ledger.record(iv, [t1, t2])
    t2.energy_wh = 400
    tx = ledger.record(iv, [t1, t2])
    assert len(tx.events["TradeRecorded"]) == 2
    assert tuple(ledger.market.filledOf(parts.S1, 1)) == (1000, False)


def test_two_orders_sharing_a_nonce_share_the_fill(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    a = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 5)
    b = ledger.order(parts.S1, SELL, iv, 1000, 90_000, 5)  # same nonce, other price
    t1 = ledger.trade(a, ledger.order(parts.B1, BUY, iv, 700, 200_000, 1), 700)
    t2 = ledger.trade(b, ledger.order(parts.B2, BUY, iv, 700, 200_000, 1), 700)
    first, second = ledger.sort([t1, t2])
    with brownie.reverts(err("MarketOrderOverfilled", parts.S1.address, 5, 300)):
        ledger.record(iv, [first, second])


def test_filled_order_replayed_reverts(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    sell = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1)
    first = ledger.trade(sell, ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1), 1000)
    ledger.record(iv, [first], count=2)
    # the filled order again, against another buyer (a buy nonce that sorts after the first trade)
    nonce = 1
    while True:
        again = ledger.trade(sell, ledger.order(parts.B2, BUY, iv, 1000, 200_000, nonce), 1000)
        if ledger.tid(again) > ledger.tid(first):
            break
        nonce += 1
    with brownie.reverts(err("MarketOrderOverfilled", parts.S1.address, 1, 0)):
        ledger.record(iv, [again])


def test_signature_does_not_cover_other_nonce(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    sell = ledger.order(parts.S1, SELL, iv, 1000, 100_000, 1)
    buy = ledger.order(parts.B1, BUY, iv, 1000, 200_000, 1)
    renonced = dict(sell, nonce=2)  # presented with nonce 2, signed with nonce 1
    t = CandidateTrade(renonced, buy, ledger.sign(sell), ledger.sign(buy), 1000, PRICE)
    with brownie.reverts(err("MarketInvalidOrderSignature", parts.S1.address, 2)):
        ledger.record(iv, [t])


# ---------------------------------------------------------------------------- timeline and pages


def _on_anvil() -> bool:
    return "anvil" in str(brownie.web3.client_version).lower()


def test_gate_closure_boundary(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """A batch lands at the gate closure itself, not one second later. Anvil sets the next
    block's timestamp exactly; Ganache's clock runs on from a mined block, so there the batch
    lands within seconds before the closure and the late one a second after it."""
    closure = iv * INTERVAL_S - GATE_LEAD_S
    rpc = brownie.web3.provider.make_request
    if _on_anvil():
        rpc("evm_setNextBlockTimestamp", [closure])  # type: ignore[arg-type]
    else:
        brownie.chain.mine(timestamp=closure - 5)
    tx = ledger.record(iv, [_pair(ledger, parts.S1, parts.B1, iv)], count=2)
    assert tx.timestamp == closure if _on_anvil() else closure - 5 <= tx.timestamp <= closure
    if _on_anvil():
        rpc("evm_setNextBlockTimestamp", [closure + 1])  # type: ignore[arg-type]
    else:
        brownie.chain.mine(timestamp=closure + 1)
    late = _pair(ledger, parts.S2, parts.B2, iv)
    with brownie.reverts(err("MarketGateClosed", iv, closure)):
        ledger.record(iv, [late])
    assert norm(ledger.market.intervalOf(iv))[1:5] == [1, 1, 2, 0]
    assert ledger.balance(parts.B2) == (DEPOSIT // 2, 0)


def test_settle_waits_for_gate_closure_and_every_batch(
    ledger: DeployedLedger, parts: Any, iv: int
) -> None:
    a, _b = ledger.sort(
        [_pair(ledger, parts.S1, parts.B1, iv), _pair(ledger, parts.S2, parts.B2, iv)]
    )
    ledger.record(iv, [a], count=2)
    closure = iv * INTERVAL_S - GATE_LEAD_S
    with brownie.reverts(err("MarketRecordingOpen", iv, closure)):
        ledger.settle(iv)
    _read(ledger, iv, {parts.S1: (0, 1000), parts.B1: (1000, 0)})
    with brownie.reverts(err("MarketBatchesMissing", iv, 2, 1)):
        ledger.settle(iv)


def _three_batches(ledger: DeployedLedger, parts: Any, iv: int) -> list[CandidateTrade]:
    trades = ledger.sort(
        [
            _pair(ledger, parts.S1, parts.B1, iv, 300, s_nonce=1, b_nonce=1),
            _pair(ledger, parts.S2, parts.B2, iv, 300, s_nonce=1, b_nonce=1),
            _pair(ledger, parts.S1, parts.B2, iv, 300, s_nonce=2, b_nonce=2),
        ]
    )
    for t in trades:
        ledger.record(iv, [t], sort=False, count=3)
    return trades


def test_settle_in_pages(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """Pages of whole batches pay exactly what one settle would: the totals span every batch."""
    trades = _three_batches(ledger, parts, iv)
    # S1 sold 600 and exported 300 (short 300 Wh); the others metered their trades
    _read(
        ledger, iv, {parts.S1: (0, 300), parts.S2: (0, 300), parts.B1: (300, 0), parts.B2: (600, 0)}
    )
    with brownie.reverts(err("MarketPageInvalid", iv, 0, 0)):
        ledger.settle(iv, page_end=0)
    with brownie.reverts(err("MarketPageInvalid", iv, 0, 4)):
        ledger.settle(iv, page_end=4)
    first = ledger.settle(iv, page_end=2)
    assert ev(first, "BatchesSettled") == [iv, 0, 2, 2]
    assert "IntervalSettled" not in first.events
    assert "ImbalanceSettled" not in first.events  # imbalance comes with the last page
    assert norm(ledger.market.intervalOf(iv))[4:7] == [2, False, False]
    with brownie.reverts(err("MarketPageInvalid", iv, 2, 2)):
        ledger.settle(iv, page_end=2)
    second = ledger.settle(iv)
    assert ev(second, "BatchesSettled") == [iv, 2, 3, 1]
    assert ev(second, "IntervalSettled") == [iv, 3]
    paid = {**_settled(first), **_settled(second)}
    assert paid == {ledger.tid(t): (300, 37_037, 1) for t in trades}
    # S1 short 300 Wh for all pages at once: ceil(300 x 123457 x 1.5 / 1000) = ceil(55555.65)
    assert ev(second, "IntervalImbalanceSettled") == [iv, 123_457, 15_000, 5_000, 55_556, 0]
    assert len(second.events["ImbalanceSettled"]) == 4  # one per party
    assert ledger.balance(parts.S1) == (DEPOSIT // 2 + 2 * 37_037 - 55_556, 0)
    assert ledger.balance(parts.S2) == (DEPOSIT // 2 + 37_037, 0)
    _conserved(ledger, parts)
    with brownie.reverts(err("MarketIntervalSettled", iv)):
        ledger.settle(iv)


def test_reclaim_after_deadline(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """An interval whose batches did not all arrive cannot settle; from reclaimAfter on, anyone
    returns every buyer's escrow, once."""
    a, _b = ledger.sort(
        [_pair(ledger, parts.S1, parts.B1, iv), _pair(ledger, parts.S2, parts.B2, iv)]
    )
    ledger.record(iv, [a], count=2)
    start = (iv + 1) * INTERVAL_S + 2 * DELAY_S
    recs = ledger.records[iv]
    with brownie.reverts(err("MarketReclaimNotReady", iv, start)):
        ledger.market.reclaim(iv, [b"".join(r) for r in recs], {"from": parts.X})
    ledger.end_interval(iv, 2 * DELAY_S)
    with brownie.reverts(err("MarketBatchesMissing", iv, 2, 1)):
        ledger.settle(iv)
    with brownie.reverts(err("MarketBatchCountMismatch", iv, 1, 0)):
        ledger.market.reclaim(iv, [], {"from": parts.X})
    tx = ledger.market.reclaim(iv, [b"".join(r) for r in recs], {"from": parts.X})
    buyer = a.buy["trader"]
    assert ev(tx, "EscrowReclaimed") == [ledger.tid(a), buyer, 123_457]
    assert ev(tx, "IntervalReclaimed") == [iv, 0, 1]
    for w in (parts.B1, parts.B2, parts.S1, parts.S2):
        assert ledger.balance(w) == (DEPOSIT // 2, 0)
    assert norm(ledger.market.intervalOf(iv))[4:7] == [0, True, True]  # no batch was paid
    with brownie.reverts(err("MarketIntervalSettled", iv)):
        ledger.market.reclaim(iv, [b"".join(r) for r in recs], {"from": parts.X})
    _conserved(ledger, parts)


def test_reclaim_rest_after_partial_settlement(ledger: DeployedLedger, parts: Any, iv: int) -> None:
    """Pages settled before reclaimAfter stay paid; the rest goes back to the buyers; a settle
    after reclaimAfter is refused."""
    trades = _three_batches(ledger, parts, iv)
    _read(
        ledger, iv, {parts.S1: (0, 600), parts.S2: (0, 300), parts.B1: (300, 0), parts.B2: (600, 0)}
    )
    ledger.settle(iv, page_end=1)
    start = (iv + 1) * INTERVAL_S + 2 * DELAY_S
    ledger.end_interval(iv, 2 * DELAY_S)
    with brownie.reverts(err("MarketSettlementExpired", iv, start)):
        ledger.settle(iv)
    rest = [b"".join(r) for r in ledger.records[iv][1:]]
    with brownie.reverts(err("MarketBatchCommitmentMismatch", iv, 1)):
        ledger.market.reclaim(iv, [b"".join(r) for r in ledger.records[iv][:2]], {"from": parts.X})
    tx = ledger.market.reclaim(iv, rest, {"from": parts.X})
    assert ev(tx, "IntervalReclaimed") == [iv, 1, 2]
    assert {norm(e["tradeId"]) for e in tx.events["EscrowReclaimed"]} == {
        ledger.tid(t) for t in trades[1:]
    }
    assert (
        sum(sum(ledger.balance(w)[1:]) for w in (parts.B1, parts.B2)) == 0
    )  # nothing stays locked
    # a reclaimed interval settles no imbalance (its last page never ran), though S1 was short
    assert "ImbalanceSettled" not in tx.events
    assert ledger.balance(ledger.balancing) == (BALANCING_DEPOSIT, 0)
    _conserved(ledger, parts)
