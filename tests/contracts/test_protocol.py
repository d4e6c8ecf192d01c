"""backend.chain.protocol against the compiled contracts: every shared value, read from a view, an
event or the ABI of the deployed contracts."""

from typing import Any

import brownie
from conftest import PRICE, err, norm

from backend.chain import batches, eip712, protocol
from backend.chain.protocol import ReadingRejection


def _abi_enum(contract: Any, function: str, arg: str) -> str:
    (item,) = [i for i in contract.abi if i.get("name") == function]
    (comp,) = [c for c in item["inputs"][0]["components"] if c["name"] == arg]
    return str(comp["internalType"])


def test_sides_match_the_order_struct(ledger: Any, parts: Any) -> None:
    assert _abi_enum(ledger.market, "orderHash", "side") == "uint8"
    iv = ledger.current_interval() + 2
    for side in (protocol.SELL, protocol.BUY):
        order = ledger.order(parts.S1, side, iv, 1000, 100_000, 1)
        packed = bytes(
            ledger.market.packOrder(eip712.order_tuple(order), b"\x01" * 32, b"\x02" * 32)
        )
        assert packed[20] == side  # trader 20 | side 1 | ...


def test_trade_id_and_escrow_match_the_views(ledger: Any, parts: Any) -> None:
    iv = ledger.current_interval() + 2
    sell = ledger.order(parts.S1, protocol.SELL, iv, 1000, 100_000, 1)
    buy = ledger.order(parts.B1, protocol.BUY, iv, 1000, 200_000, 1)
    s_hash = norm(ledger.market.orderHash(eip712.order_tuple(sell)))
    b_hash = norm(ledger.market.orderHash(eip712.order_tuple(buy)))
    on_chain = norm(ledger.market.tradeIdOf(eip712.order_tuple(sell), eip712.order_tuple(buy)))
    assert on_chain == protocol.trade_id(s_hash, b_hash)
    assert protocol.trade_id_hex("0x" + s_hash.hex(), "0x" + b_hash.hex()) == "0x" + on_chain.hex()
    for energy_wh, price in [(1, 1), (1000, PRICE), (999, 7), (2**40, 2**60 + 3)]:
        assert ledger.market.escrowOf(energy_wh, price) == protocol.escrow_of(energy_wh, price)


def test_order_record_size_matches_pack_order(ledger: Any, parts: Any) -> None:
    iv = ledger.current_interval() + 2
    order = ledger.order(parts.S1, protocol.SELL, iv, 1000, 100_000, 1)
    packed = ledger.market.packOrder(eip712.order_tuple(order), b"\x01" * 32, b"\x02" * 32)
    assert len(bytes(packed)) == protocol.ORDER_SIZE


def test_reading_rejections_and_max_reading_wh_as_emitted(ledger: Any, parts: Any) -> None:
    i = ledger.current_interval()
    ledger.end_interval(i)
    ledger.registry.deactivate(parts.B2, {"from": ledger.dso})
    good = ledger.reading(parts.S1, i, 1, 2)
    tampered = good[:28] + (3).to_bytes(8, "big") + good[36:]
    stranger = "0x" + "77" * 32
    unknown = batches.signed_reading(
        stranger, ledger.chain_id, ledger.readings.address, eip712.address_of(stranger), i, 1, 2
    )
    tx = ledger.submit(
        i,
        [
            tampered,
            unknown,
            ledger.reading(parts.B2, i, 1, 2),
            ledger.reading(parts.S2, i, protocol.MAX_READING_WH + 1, 0),
            ledger.reading(parts.B1, i, protocol.MAX_READING_WH, protocol.MAX_READING_WH),
        ],
    )
    assert [e["reason"] for e in tx.events["ReadingRejected"]] == [
        ReadingRejection.BAD_SIGNATURE,
        ReadingRejection.UNREGISTERED,
        ReadingRejection.INACTIVE,
        ReadingRejection.VALUE_TOO_LARGE,
    ]
    (submitted,) = tx.events["ReadingsSubmitted"]
    assert len(bytes(submitted["accepted"])) == protocol.ACCEPTED_SIZE  # B1's reading alone
    tx = ledger.submit(i, [ledger.reading(parts.B1, i, 5, 5)])
    assert [e["reason"] for e in tx.events["ReadingRejected"]] == [ReadingRejection.CONFLICTING]
    assert [protocol.rejection_label(c) for c in range(1, 7)] == [
        "bad_signature",
        "unregistered",
        "inactive",
        "conflicting",
        "value_too_large",
        "rejected_6",
    ]


def test_approved_verdict_is_grid_reason_approved() -> None:
    from grid.verdicts import Reason

    assert protocol.APPROVED == Reason.APPROVED == 0
    assert all(0 <= r < 256 for r in Reason)  # uint8 verdicts in the attestation


def test_market_event_signatures_and_indexed_fields_match_the_abi(ledger: Any) -> None:
    events = {
        f"{e['name']}({','.join(i['type'] for i in e['inputs'])})": [
            i["name"] for i in e["inputs"] if i["indexed"]
        ]
        for e in ledger.market.abi
        if e["type"] == "event"
    }
    indexed = {
        protocol.TRADE_RECORDED_EVENT: ["tradeId", "seller", "buyer"],
        protocol.TRADE_VETOED_EVENT: ["tradeId"],
        protocol.TRADE_SETTLED_EVENT: ["tradeId"],
        protocol.ESCROW_RECLAIMED_EVENT: ["tradeId", "buyer"],
        protocol.BATCH_RECORDED_EVENT: ["intervalId"],
        protocol.INTERVAL_SETTLED_EVENT: ["intervalId"],
        protocol.INTERVAL_RECLAIMED_EVENT: ["intervalId"],
        protocol.IMBALANCE_SETTLED_EVENT: ["intervalId", "account"],
        protocol.INTERVAL_IMBALANCE_SETTLED_EVENT: ["intervalId"],
    }
    assert {sig: events.get(sig) for sig in indexed} == indexed


def test_trade_state_is_the_enum_of_trade_of(ledger: Any) -> None:
    (item,) = [i for i in ledger.market.abi if i.get("name") == "tradeOf"]
    (state,) = [c for c in item["outputs"][0]["components"] if c["name"] == "state"]
    assert (state["type"], state["internalType"]) == ("uint8", "enum IEnergyMarket.TradeState")
    assert [(s.name, s.value, s.label) for s in protocol.TradeState] == [
        ("UNSETTLED", 0, "unsettled"),
        ("SETTLED", 1, "settled"),
        ("RECLAIMED", 2, "reclaimed"),
    ]


def test_token_decimals_match_the_token(ledger: Any) -> None:
    assert ledger.token.decimals() == protocol.TOKEN_DECIMALS == 6
    assert 10 ** ledger.token.decimals() == protocol.TOKEN_UNIT


def test_imbalance_price_bounds_are_the_market_bounds(ledger: Any) -> None:
    """The bounds protocol.py states are exactly where setImbalancePrices starts refusing."""
    market, dso = ledger.market, ledger.dso
    lo, hi, long_hi = (
        protocol.MIN_SHORT_PRICE_BPS,
        protocol.MAX_SHORT_PRICE_BPS,
        protocol.MAX_LONG_PRICE_BPS,
    )
    for short, long_ in ((lo, 0), (hi, long_hi)):
        market.setImbalancePrices(short, long_, {"from": dso})
        assert tuple(market.imbalancePrices()) == (short, long_)
    for short, long_ in ((lo - 1, 0), (hi + 1, 0), (lo, long_hi + 1)):
        with brownie.reverts(err("MarketInvalidImbalancePrices", short, long_)):
            market.setImbalancePrices(short, long_, {"from": dso})
