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
