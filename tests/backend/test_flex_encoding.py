"""backend.chain.flex without a chain: the FlexOffer digest against eth-account's reference
encoder, the packed layout and its inverse, and the contract's integer rules at their edges
(the contract tests compare the same functions with FlexibilityMarket on Anvil)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from backend.chain import eip712, flex
from backend.chain.protocol import FLEX_DOWN, FLEX_UP

KEY = "0x" + "11" * 32
DOM = flex.domain(31337, "0x" + "ab" * 20)
OFFER = {
    "provider": Account.from_key(KEY).address,
    "device": to_checksum_address("0x" + "cd" * 20),
    "intervalId": 1_996_005,
    "direction": FLEX_DOWN,
    "powerW": 3_000,
    "baselineW": -1_500,
    "pricePerKWh": 2**100 + 7,
    "nonce": 2**255 + 1,
    "expiry": 2**40,
}


def test_offer_hash_matches_eth_account_reference() -> None:
    doc = {**DOM.template("FlexOffer"), "message": OFFER}
    assert DOM.as_dict()["name"] == "tegrid FlexibilityMarket"
    signable = encode_typed_data(full_message=doc)
    assert flex.offer_hash(DOM, OFFER) == eip712.typed_data_hash(doc)
    sig = flex.sign_offer(KEY, DOM, OFFER)
    assert Account.recover_message(signable, signature=sig) == OFFER["provider"]


def test_pack_is_293_bytes_and_unpacks_to_the_same_activation() -> None:
    sig = flex.sign_offer(KEY, DOM, OFFER)
    payer0, payer1 = (to_checksum_address("0x" + b * 20) for b in ("01", "02"))
    act = flex.Activation(OFFER, sig, 2_500, payer0, 10, b"\x07" * 32, 4_000, payer1, 11)
    packed = act.pack()
    assert len(packed) == flex.ACTIVATION_SIZE == 293
    assert packed[53:57] == (-1_500 % 2**32).to_bytes(4, "big")  # int32, two's complement
    assert flex.unpack(packed) == [act]
    assert flex.activation_id(act.offer_hash(DOM), b"\x07" * 32) == act.activation_id(DOM)


def test_record_is_121_bytes_of_the_same_fields() -> None:
    sig = flex.sign_offer(KEY, DOM, OFFER)
    payer0, payer1 = (to_checksum_address("0x" + b * 20) for b in ("01", "02"))
    act = flex.Activation(OFFER, sig, 2_500, payer0, 10, b"\x07" * 32, 4_000, payer1, 11)
    record = act.record()
    assert len(record) == flex.RECORD_SIZE == 121
    assert record == (
        bytes.fromhex("cd" * 20) + bytes([FLEX_DOWN]) + (-1_500 % 2**32).to_bytes(4, "big")
        + (2_500).to_bytes(4, "big") + bytes.fromhex(OFFER["provider"][2:])
        + bytes.fromhex("01" * 20) + (10).to_bytes(16, "big")
        + bytes.fromhex("02" * 20) + (11).to_bytes(16, "big")
    )  # fmt: skip
    packed = act.pack() + act.pack()
    assert flex.records(packed) == record + record
    assert flex.commitment(packed) == keccak(record + record)


def test_deliveries_decode_signed_metered_power() -> None:
    data = (-2_000 % 2**64).to_bytes(8, "big") + (0).to_bytes(4, "big")
    data += (1_500).to_bytes(8, "big") + (1_500).to_bytes(4, "big")
    assert flex.deliveries(data, 2) == [(-2_000, 0), (1_500, 1_500)]
    with pytest.raises(ValueError, match="not 3 deliveries"):
        flex.deliveries(data, 3)


def test_cost_and_remedy_split_edges() -> None:
    # 2,000 W x 900 s = 500 Wh; 1 W x 900 s = 0.25 Wh -> 0 Wh, nothing to pay
    assert flex.cost(2_000, 200_000, 900) == 100_000
    assert flex.cost(1, 10**9, 900) == 0
    assert flex.remedy_cap(20_000, 2_000) == 40_000
    assert flex.remedy_split(101, 100, 100) == (50, 51)  # seller floor(cost / 2)
    assert flex.remedy_split(100, 10, 100) == (10, 90)  # the seller's cap binds
    assert flex.remedy_split(100, 100, 10) == (90, 10)  # the buyer's cap binds
    assert flex.remedy_split(100, 49, 50) is None  # together short of the cost: no rescue


def test_metered_and_delivered_power() -> None:
    assert flex.metered_w(0, 500, 900) == 2_000
    assert flex.metered_w(1, 0, 7) == -514  # -514.28 truncated toward zero, as Solidity
    assert flex.delivered_w(FLEX_UP, -1_000, 2_000, 500) == 1_500
    assert flex.delivered_w(FLEX_UP, 0, 2_000, 9_000) == 2_000  # capped at activatedW
    assert flex.delivered_w(FLEX_DOWN, 0, 2_000, 100) == 0  # moved the wrong way
    assert flex.delivered_w(FLEX_DOWN, 0, 2_000, None) == 0  # no reading
    # paid pro rata to the shares, payer1 takes the rounding
    assert flex.payments(40_000, 60_000, 2_000, 664) == (13_280, 19_920)
    assert flex.payments(1, 2, 3, 1) == (0, 1)
