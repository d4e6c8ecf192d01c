"""A trade as a wallet finds it: TradeRecorded's topics (tradeId, seller, buyer) filtered with
eth_getLogs, the tradeOf view (record checked against the batch commitment, state from the
interval's bookkeeping) before and after settlement and reclaim, and backend.chain.trades reading
both on the real chain."""

from typing import Any

import brownie
from conftest import DELAY_S, PRICE, DeployedLedger, err, norm
from eth_abi import encode
from test_market import _pair, _read, _three_batches

from backend.chain import eip712, protocol, trades
from backend.chain.protocol import TradeState


def _topic(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _web3_market(ledger: DeployedLedger) -> Any:
    return brownie.web3.eth.contract(address=ledger.market.address, abi=ledger.market.abi)


def _index_of(ledger: DeployedLedger) -> Any:
    return lambda wallet: ledger.index[wallet]


def _trade_of(ledger: DeployedLedger, tid: bytes, iv: int, batch: int) -> list[Any]:
    records = b"".join(ledger.records[iv][batch])
    return norm(ledger.market.tradeOf(tid, iv, batch, records))  # type: ignore[no-any-return]


def test_trade_recorded_topics_are_trade_id_seller_buyer(
    ledger: DeployedLedger, parts: Any
) -> None:
    iv = ledger.current_interval() + 2
    batch = ledger.sort(
        [
            _pair(ledger, parts.S1, parts.B1, iv, 1000),
            _pair(ledger, parts.S2, parts.B2, iv, 700),
            _pair(ledger, parts.S1, parts.B2, iv, 400, s_nonce=2, b_nonce=2),
        ]
    )
    tx = ledger.record(iv, batch)
    later = _pair(ledger, parts.S2, parts.B1, iv + 1, 300, s_nonce=3, b_nonce=3)
    ledger.record(iv + 1, [later])
    logs = [
        lg
        for lg in brownie.web3.eth.get_transaction_receipt(tx.txid)["logs"]
        if bytes(lg["topics"][0]) == protocol.TRADE_RECORDED
    ]
    assert len(logs) == 3
    for lg, t in zip(logs, batch, strict=True):
        assert [bytes(x) for x in lg["topics"]] == [
            protocol.TRADE_RECORDED,
            ledger.tid(t),
            _topic(t.sell["trader"]),
            _topic(t.buy["trader"]),
        ]
        assert bytes(lg["data"]) == encode(
            ["uint64", "uint64", "uint128"], [iv, t.energy_wh, PRICE]
        )
    # a wallet's filters, as web3 builds them from the indexed arguments
    event = _web3_market(ledger).events.TradeRecorded
    first = tx.block_number

    def found(role: str, wallet: Any) -> list[tuple[bytes, int, int]]:
        got = event.get_logs(argument_filters={role: wallet.address}, from_block=first)
        return [(bytes(e.args.tradeId), e.args.intervalId, e.args.energyWh) for e in got]

    assert found("seller", parts.S1) == [
        (ledger.tid(t), iv, t.energy_wh) for t in batch if t.sell["trader"] == parts.S1.address
    ]
    assert found("buyer", parts.B1) == [
        (ledger.tid(t), iv, t.energy_wh) for t in batch if t.buy["trader"] == parts.B1.address
    ] + [(ledger.tid(later), iv + 1, 300)]
    assert found("seller", parts.X) == []
    # the raw filter a wallet sends: topic 3 = the buyer
    raw = brownie.web3.eth.get_logs(
        {
            "address": ledger.market.address,
            "fromBlock": first,
            "topics": [protocol.TRADE_RECORDED, None, None, _topic(parts.B2.address)],  # type: ignore[list-item]
        }
    )
    assert [bytes(lg["topics"][1]) for lg in raw] == [
        ledger.tid(t) for t in batch if t.buy["trader"] == parts.B2.address
    ]


def test_trade_of_before_and_after_settlement(ledger: DeployedLedger, parts: Any) -> None:
    iv = ledger.current_interval() + 2
    t = _pair(ledger, parts.S1, parts.B1, iv)  # 1000 Wh at PRICE: escrow 123,457
    tid = ledger.tid(t)
    recorded = ledger.record(iv, [t])
    S1, B1 = parts.S1.address, parts.B1.address
    assert _trade_of(ledger, tid, iv, 0) == [iv, 0, S1, B1, 1000, PRICE, 123_457, 0]
    w3, market = brownie.web3, _web3_market(ledger)
    before = trades.find_trade(w3, market, _index_of(ledger), tid, 0)
    assert before == trades.TradeOnChain(
        "0x" + tid.hex(), "unsettled", iv, 0, recorded.txid, S1, B1, 1000, PRICE, 123_457
    )
    _read(ledger, iv, {parts.S1: (0, 600), parts.B1: (1000, 0)})  # the seller delivers 60 %:
    settled = ledger.settle(iv)
    assert _trade_of(ledger, tid, iv, 0) == [iv, 0, S1, B1, 1000, PRICE, 123_457, 1]
    assert TradeState(1) is TradeState.SETTLED
    after = trades.find_trade(w3, market, _index_of(ledger), tid, 0)
    assert after == trades.TradeOnChain(
        "0x" + tid.hex(), "settled", iv, 0, recorded.txid, S1, B1, 1000, PRICE, 123_457,
        delivered_wh=1000, paid=123_457, refunded=0, settled_tx=settled.txid,
    )  # fmt: skip  # the trade settles firm; the 400 Wh short are the seller's imbalance
    # the whole life of the trade: one eth_getLogs on topic 1
    life = trades.trade_logs(w3, ledger.market.address, tid, 0)
    assert [bytes(lg["topics"][0]) for lg in life] == [
        protocol.TRADE_RECORDED,
        protocol.TRADE_SETTLED,
    ]


def test_trade_of_after_pages_and_reclaim(ledger: DeployedLedger, parts: Any) -> None:
    """Batch 0 settled in a page stays Settled; batches 1 and 2, reclaimed after reclaimAfter,
    read Reclaimed; settledBatches keeps the pages paid."""
    iv = ledger.current_interval() + 2
    batch = _three_batches(ledger, parts, iv)  # one 300 Wh trade per batch, escrow 37,038 each
    _read(
        ledger, iv, {parts.S1: (0, 600), parts.S2: (0, 300), parts.B1: (300, 0), parts.B2: (600, 0)}
    )
    ledger.settle(iv, page_end=1)
    states = [_trade_of(ledger, ledger.tid(t), iv, b)[-1] for b, t in enumerate(batch)]
    assert states == [TradeState.SETTLED, TradeState.UNSETTLED, TradeState.UNSETTLED]
    ledger.end_interval(iv, 2 * DELAY_S)
    rest = [b"".join(r) for r in ledger.records[iv][1:]]
    reclaim = ledger.market.reclaim(iv, rest, {"from": parts.X})
    assert norm(ledger.market.intervalOf(iv))[4:] == [1, True, True, 15_000, 5_000]
    states = [_trade_of(ledger, ledger.tid(t), iv, b)[-1] for b, t in enumerate(batch)]
    assert states == [TradeState.SETTLED, TradeState.RECLAIMED, TradeState.RECLAIMED]
    t = batch[2]
    market = _web3_market(ledger)
    found = trades.find_trade(brownie.web3, market, _index_of(ledger), ledger.tid(t), 0)
    assert found is not None
    assert (found.status, found.batch_index, found.escrow) == ("reclaimed", 2, 37_038)
    assert (found.delivered_wh, found.paid, found.refunded) == (0, 0, 37_038)
    assert found.settled_tx == reclaim.txid


def test_trade_of_unknown_vetoed_or_unproven_reverts(ledger: DeployedLedger, parts: Any) -> None:
    iv = ledger.current_interval() + 2
    approved = _pair(ledger, parts.S1, parts.B1, iv)
    vetoed = _pair(ledger, parts.S2, parts.B2, iv, verdict=3)
    ledger.record(iv, [approved, vetoed], count=2)
    records = b"".join(ledger.records[iv][0])
    tid, vid, unknown = ledger.tid(approved), ledger.tid(vetoed), b"\x11" * 32
    market = ledger.market
    with brownie.reverts(err("MarketTradeNotInBatch", unknown, iv, 0)):
        market.tradeOf(unknown, iv, 0, records)
    with brownie.reverts(err("MarketTradeNotInBatch", vid, iv, 0)):
        market.tradeOf(vid, iv, 0, records)  # vetoes are announced, never committed
    tampered = records[:80] + (999).to_bytes(8, "big") + records[88:]
    with brownie.reverts(err("MarketBatchCommitmentMismatch", iv, 0)):
        market.tradeOf(tid, iv, 0, tampered)
    with brownie.reverts(err("MarketBatchCommitmentMismatch", iv, 1)):
        market.tradeOf(tid, iv, 1, records)  # batch 1 is not recorded (yet)
    with brownie.reverts(err("MarketBatchCommitmentMismatch", iv + 1, 0)):
        market.tradeOf(tid, iv + 1, 0, records)
    with brownie.reverts(err("MarketMalformedCalldata", 2, 103)):
        market.tradeOf(tid, iv, 0, records[:-1])
    w3, contract = brownie.web3, _web3_market(ledger)
    assert trades.find_trade(w3, contract, _index_of(ledger), unknown, 0) is None
    found = trades.find_trade(w3, contract, _index_of(ledger), vid, 0)
    assert found is not None
    assert (found.status, found.reason) == ("vetoed", 3)
    assert (found.interval_id, found.batch_index) == (iv, 0)
    assert found.seller is None and found.escrow is None


def test_find_orders_of_a_trade_id(ledger: DeployedLedger, parts: Any) -> None:
    """A trade id hashes both order hashes; the orders are in the recordTrades calldata."""
    iv = ledger.current_interval() + 2
    approved = _pair(ledger, parts.S1, parts.B1, iv, 800)
    vetoed = _pair(ledger, parts.S2, parts.B2, iv, 500, verdict=2)
    tx = ledger.record(iv, [approved, vetoed])
    cid, mkt = ledger.chain_id, ledger.market.address
    for t in (approved, vetoed):
        found = trades.find_orders(brownie.web3, mkt, cid, ledger.tid(t), 0)
        assert found is not None
        orders, recorded_in = found
        assert recorded_in == tx.txid
        assert orders.sell == eip712.order_message(t.sell)
        assert orders.buy == eip712.order_message(t.buy)
        sell_t, buy_t = eip712.order_tuple(orders.sell), eip712.order_tuple(orders.buy)
        assert orders.sell_hash == norm(ledger.market.orderHash(sell_t))
        assert orders.buy_hash == norm(ledger.market.orderHash(buy_t))
        assert norm(ledger.market.tradeIdOf(sell_t, buy_t)) == ledger.tid(t)
        assert (orders.energy_wh, orders.price_per_kwh, orders.verdict) == (
            t.energy_wh,
            PRICE,
            t.verdict,
        )
    assert trades.find_orders(brownie.web3, mkt, cid, b"\x11" * 32, 0) is None
