"""The market ledger encodes calls with eth_abi directly; the bytes must be web3's."""

from __future__ import annotations

from eth_utils import to_checksum_address
from web3 import Web3

from backend.chain.contracts import contract_at
from backend.market.chain_ledger import _Fn, _signed

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
        assert _Fn(contract, name).data(*args) == web3_data
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
    order = _signed(msg, "0x" + "11" * 32 + "22" * 32 + "1b")
    fn = _Fn(market, "recordTrades")
    if len(fn.inputs) == 5:
        args2: tuple[object, ...] = (
            5, [order, order], [(0, 1, 1000, 123, 0), (1, 0, 5, 6, 3)], b"\x01" * 32, b"\x02" * 65
        )  # fmt: skip
    else:
        args2 = (5, [(order, order, 1000, 123, 0)], b"\x01" * 32, b"\x02" * 65)
    web3_data = market.functions.recordTrades(*args2)._encode_transaction_data()
    assert fn.data(*args2) == web3_data


def test_decode_unwraps_a_single_output_like_web3() -> None:
    registry = contract_at(Web3(), "ParticipantRegistry", "0x" + "22" * 20)
    fn = _Fn(registry, "participantOf")
    import eth_abi

    raw = eth_abi.encode(fn.outputs, [(A, 3, 17, True, 5000, 6000)])
    assert fn.decode("0x" + raw.hex()) == (A.lower(), 3, 17, True, 5000, 6000)
