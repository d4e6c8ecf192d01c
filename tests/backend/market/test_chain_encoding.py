"""The market ledger and backend.chain.batches encode calls directly; the bytes must be web3's."""

from __future__ import annotations

import pytest
from eth_utils import to_checksum_address
from web3 import Web3

from backend.chain import batches
from backend.chain.batches import CandidateTrade
from backend.chain.client import AbiFunction
from backend.chain.contracts import contract_at
from backend.market.chain_ledger import _compact

A = to_checksum_address("0x" + "ab" * 20)


def test_reads_and_record_trades_encode_like_web3() -> None:
    w3 = Web3()
    market = contract_at(w3, "EnergyMarket", "0x" + "11" * 20)
    registry = contract_at(w3, "ParticipantRegistry", "0x" + "22" * 20)
    for contract, name, args in (
        (registry, "participantOf", (A,)),
        (market, "filledOf", (A, 7)),
        (market, "balanceOf", (A,)),
    ):
        web3_data = getattr(contract.functions, name)(*args)._encode_transaction_data()
        assert AbiFunction(contract, name).data(*args) == web3_data
    msg = {
        "trader": A,
        "side": 0,
        "intervalId": 5,
        "energyWh": 1000,
        "pricePerKWh": 123,
        "nonce": 9,
        "expiry": 10**9,
        "counterparty": "0x" + "00" * 20,
    }
    sig = _compact("0x" + "11" * 32 + "22" * 32 + "1b")
    buy = dict(msg, side=1, nonce=10)
    t = CandidateTrade(msg, buy, sig, sig, 1000, 123, 3)
    orders, rows = batches.record_args([t, t])
    assert (len(orders), len(rows)) == (2 * 153, 2 * 29)  # each order once, each trade 29 bytes
    args = (5, 1, 3, orders, rows, b"\x01" * 32, b"\x02" * 65)
    web3_data = market.functions.recordTrades(*args)._encode_transaction_data()
    assert "0x" + batches.record_trades_calldata(*args).hex() == web3_data
    readings = contract_at(w3, "MeterReadings", "0x" + "33" * 20)
    packed = [batches.pack_reading(A, 1, 2, b"\x03" * 32, b"\x04" * 32)] * 2
    web3_data = readings.functions.submitReadings(7, b"".join(packed))._encode_transaction_data()
    assert "0x" + batches.submit_readings_calldata(7, packed).hex() == web3_data
    rec = t.record(31337, "0x" + "11" * 20, 1, 2)
    assert batches.unpack_record(rec)[1:] == (A, A, 1, 2, 1000, 123)
    settle_args = batches.settle_args([[rec]])
    web3_data = market.functions.settle(9, *settle_args, 1)._encode_transaction_data()
    assert "0x" + batches.settle_calldata(9, [[rec]]).hex() == web3_data
    web3_data = market.functions.reclaim(9, [rec])._encode_transaction_data()
    assert "0x" + batches.reclaim_calldata(9, [[rec]]).hex() == web3_data


def test_decode_unwraps_a_single_output_like_web3() -> None:
    registry = contract_at(Web3(), "ParticipantRegistry", "0x" + "22" * 20)
    fn = AbiFunction(registry, "participantOf")
    import eth_abi

    raw = eth_abi.encode(fn.outputs, [(A, 3, 17, True, 5000, 6000)])
    assert fn.decode("0x" + raw.hex()) == (A.lower(), 3, 17, True, 5000, 6000)


def test_readings_submitted_event_decodes() -> None:
    """The batch event's ABI and its packed ``accepted`` bytes (meter | importWh | exportWh)."""
    from eth_abi import decode, encode
    from eth_utils import keccak

    from backend.oracle.web3_ledger import READINGS_SUBMITTED_TOPIC

    readings = contract_at(Web3(), "MeterReadings", "0x" + "33" * 20)
    (abi,) = [e for e in readings.abi if e.get("name") == "ReadingsSubmitted"]
    signature = "ReadingsSubmitted(" + ",".join(i["type"] for i in abi["inputs"]) + ")"
    assert signature == batches.READINGS_SUBMITTED_SIGNATURE
    assert keccak(text=signature) == READINGS_SUBMITTED_TOPIC
    B = to_checksum_address("0x" + "cd" * 20)
    accepted = a_bytes = bytes.fromhex(A[2:]) + (2**23 - 1).to_bytes(4, "big") + bytes(4)
    accepted += bytes.fromhex(B[2:]) + (0).to_bytes(4, "big") + (1500).to_bytes(4, "big")
    data = encode(["bytes"], [accepted])
    assert batches.unpack_accepted(decode(["bytes"], data)[0]) == [(A, 2**23 - 1, 0), (B, 0, 1500)]
    logs = [{"args": {"intervalId": 7, "accepted": a_bytes}}]
    assert batches.accepted_from_logs(logs) == [(7, (A, 2**23 - 1, 0), logs[0])]
    assert batches.unpack_accepted(b"") == []
    with pytest.raises(ValueError):
        batches.unpack_accepted(accepted[:-1])


def test_hand_coded_words_match_eth_abi() -> None:
    """Static reads are encoded and decoded without eth_abi's codecs: same bytes, same values."""
    import eth_abi

    w3 = Web3()
    market = contract_at(w3, "EnergyMarket", "0x" + "11" * 20)
    registry = contract_at(w3, "ParticipantRegistry", "0x" + "22" * 20)
    for contract, name, values in (
        (registry, "participantOf", [(A, 3, 17, True, 5000, 6000)]),
        (registry, "stateOf", [False, 2**32 - 1]),
        (market, "filledOf", [2**64 - 1, True]),
        (market, "balanceOf", [0, 12345]),
        (market, "settlementDeadline", [2**63]),
    ):
        fn = AbiFunction(contract, name)
        raw = eth_abi.encode(fn.outputs, values)
        expected = tuple(eth_abi.decode(fn.outputs, raw))
        assert fn.decode(raw) == (expected[0] if len(expected) == 1 else expected)
    fn = AbiFunction(market, "filledOf")
    top = 2**64 - 1
    assert fn.data(A, top) == market.functions.filledOf(A, top)._encode_transaction_data()
    with pytest.raises(eth_abi.exceptions.EncodingError):  # out of range: eth_abi refuses
        fn.data(A, 2**64)


def test_record_trades_calldata_decodes_back_to_orders_and_trade_ids() -> None:
    """The decoders invert the encoders, and a trade id leads back to its two signed orders."""
    from backend.chain import eip712, protocol
    from backend.settings import ANVIL_KEYS

    cid, market = 31337, to_checksum_address("0x" + "11" * 20)
    keys = ANVIL_KEYS[1:4]
    traders = [eip712.address_of(k) for k in keys]
    sell = {"trader": traders[0], "side": 0, "intervalId": 5, "energyWh": 3000,
            "pricePerKWh": 100, "nonce": 1, "expiry": 10**9, "counterparty": None}  # fmt: skip
    buys = [dict(sell, trader=traders[i], side=1, pricePerKWh=300, nonce=i) for i in (1, 2)]

    def signed(order: dict[str, object], key: str) -> tuple[bytes, bytes]:
        return batches.sign_order(key, cid, market, order)

    trades = batches.sort_by_trade_id(
        [
            CandidateTrade(
                sell, buys[0], signed(sell, keys[0]), signed(buys[0], keys[1]), 1000, 200
            ),
            CandidateTrade(
                sell, buys[1], signed(sell, keys[0]), signed(buys[1], keys[2]), 500, 250, 4
            ),
        ],
        cid,
        market,
    )
    orders, rows = batches.record_args(trades)
    data = batches.record_trades_calldata(5, 1, 2, orders, rows, b"\x01" * 32, b"\x02" * 65)
    call = batches.decode_record_trades_calldata(data)
    assert call == (5, 1, 2, orders, rows, b"\x01" * 32, b"\x02" * 65)
    assert batches.unpack_order(orders[:153]) == (eip712.order_message(sell), trades[0].sell_sig)
    for i, t in enumerate(trades):  # the shared sell order is order 0, each buy order follows
        row = (0, i + 1, t.energy_wh, t.price_per_kwh, t.verdict)
        assert batches.unpack_trade(rows[29 * i : 29 * (i + 1)]) == row
    for t in trades:
        found = batches.orders_of_trade(call, cid, market, t.trade_id(cid, market))
        assert found is not None
        sell_hash, buy_hash = t.order_hashes(cid, market)  # eth-account's typed-data hashing
        assert (found.sell_hash, found.buy_hash) == (sell_hash, buy_hash)
        assert (found.sell, found.buy) == (
            eip712.order_message(t.sell),
            eip712.order_message(t.buy),
        )
        assert (found.energy_wh, found.price_per_kwh, found.verdict) == (
            t.energy_wh,
            t.price_per_kwh,
            t.verdict,
        )
        assert protocol.trade_id(found.sell_hash, found.buy_hash) == found.trade_id
    assert batches.orders_of_trade(call, cid, market, b"\x11" * 32) is None
    with pytest.raises(ValueError, match="not the calldata of recordTrades"):
        batches.decode_record_trades_calldata(batches.reclaim_calldata(5, []))
    with pytest.raises(ValueError, match="a packed order is 153 bytes, not 152"):
        batches.unpack_order(orders[:152])
    with pytest.raises(ValueError, match="a packed trade is 29 bytes, not 30"):
        batches.unpack_trade(rows[:30])


def test_trade_recorded_log_decodes_like_web3() -> None:
    """backend.chain.trades reads a raw TradeRecorded log as web3 does from the compiled ABI."""
    from eth_abi import encode

    from backend.chain import protocol, trades

    market = contract_at(Web3(), "EnergyMarket", "0x" + "11" * 20)
    seller, buyer = A, to_checksum_address("0x" + "cd" * 20)
    log = {
        "address": market.address,
        "topics": [
            protocol.TRADE_RECORDED,
            b"\x07" * 32,
            bytes(12) + bytes.fromhex(seller[2:]),
            bytes(12) + bytes.fromhex(buyer[2:]),
        ],
        "data": encode(["uint64", "uint64", "uint128"], [1996200, 2500, 2**100 + 1]),
        "blockNumber": 12,
        "logIndex": 3,
        "transactionHash": b"\x09" * 32,
        "transactionIndex": 0,
        "blockHash": b"\x0a" * 32,
        "removed": False,
    }
    args = market.events.TradeRecorded().process_log(log)["args"]
    decoded = trades.decode_trade_recorded(log)
    assert decoded == (
        bytes(args["tradeId"]),
        args["seller"],
        args["buyer"],
        args["intervalId"],
        args["energyWh"],
        args["pricePerKWh"],
    )
    assert decoded == (b"\x07" * 32, seller, buyer, 1996200, 2500, 2**100 + 1)
    with pytest.raises(ValueError, match="not a TradeRecorded log"):
        trades.decode_trade_recorded(dict(log, topics=log["topics"][:3]))
