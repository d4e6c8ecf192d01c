"""MeterReadings: device signatures, one reading per participant per interval, batch skipping."""

from typing import Any

import brownie
from conftest import INTERVAL_S, err, meter_key
from eth_account import Account

from backend.chain import batches
from backend.chain.protocol import ReadingRejection

BAD_SIGNATURE, UNKNOWN_METER, INACTIVE, CONFLICTING, VALUE_TOO_LARGE = (
    ReadingRejection.BAD_SIGNATURE,
    ReadingRejection.UNREGISTERED,
    ReadingRejection.INACTIVE,
    ReadingRejection.CONFLICTING,
    ReadingRejection.VALUE_TOO_LARGE,
)


def _ended(ledger: Any) -> int:
    interval = ledger.current_interval()
    ledger.end_interval(interval)
    return interval


def _rejections(tx: Any) -> list[tuple[str, int, int]]:
    if "ReadingRejected" not in tx.events:
        return []
    return [(e["meter"], e["intervalId"], e["reason"]) for e in tx.events["ReadingRejected"]]


def test_submit_readings_stores_values(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    tx = ledger.submit(
        i, [ledger.reading(parts.S1, i, 10, 1500), ledger.reading(parts.B1, i, 900, 0)]
    )
    assert tx.return_value == 2
    # one event per batch; accepted readings packed 28 bytes each (meter | importWh | exportWh)
    (ev,) = tx.events["ReadingsSubmitted"]
    assert ev["intervalId"] == i
    assert bytes(ev["accepted"]) == b"".join(
        bytes.fromhex(meter[2:]) + imp.to_bytes(4, "big") + exp.to_bytes(4, "big")
        for meter, imp, exp in [
            (ledger.meter_of(parts.S1), 10, 1500),
            (ledger.meter_of(parts.B1), 900, 0),
        ]
    )
    assert batches.unpack_accepted(ev["accepted"]) == [
        (ledger.meter_of(parts.S1), 10, 1500),
        (ledger.meter_of(parts.B1), 900, 0),
    ]
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.S1), i)) == (10, 1500, True)
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.B1), i)) == (900, 0, True)
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.S2), i)) == (0, 0, False)
    idx = [ledger.index[w.address] for w in (parts.S1, parts.S2, parts.B1)]
    imp, exp, present = ledger.readings.readingsOf(i, idx)
    assert (list(imp), list(exp), list(present)) == (
        [10, 0, 900],
        [1500, 0, 0],
        [True, False, True],
    )
    # the one-word form settlement reads: present (bit 128) | exportWh << 64 | importWh
    assert list(ledger.readings.meteredOf(i, idx)) == [
        (1 << 128) | (1500 << 64) | 10,
        0,
        (1 << 128) | 900,
    ]


def test_submit_identical_reading_counts_once(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    r = ledger.reading(parts.S1, i, 10, 20)
    ledger.submit(i, [r])
    tx = ledger.submit(i, [r, r])
    assert tx.return_value == 0
    assert "ReadingsSubmitted" not in tx.events and "ReadingRejected" not in tx.events
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.S1), i)) == (10, 20, True)


def test_submit_conflicting_reading_is_skipped(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    ledger.submit(i, [ledger.reading(parts.S1, i, 10, 20)])
    tx = ledger.submit(i, [ledger.reading(parts.S1, i, 11, 20), ledger.reading(parts.S2, i, 1, 2)])
    assert tx.return_value == 1
    assert _rejections(tx) == [(ledger.meter_of(parts.S1), i, CONFLICTING)]
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.S1), i)) == (10, 20, True)
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.S2), i)) == (1, 2, True)


def test_reading_signed_by_unregistered_key_rejected(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    stranger = Account.create()
    own = ledger.reading(parts.S1, i, 1, 2, key=stranger.key)  # S1's meter, wrong key
    unregistered = batches.signed_reading(
        stranger.key, ledger.chain_id, ledger.readings.address, stranger.address, i, 1, 2
    )
    tx = ledger.submit(i, [own, unregistered])
    assert _rejections(tx) == [
        (ledger.meter_of(parts.S1), i, BAD_SIGNATURE),
        (stranger.address, i, UNKNOWN_METER),
    ]
    assert tx.return_value == 0


def test_reading_tampered_and_replayed_rejected(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    good = ledger.reading(parts.S1, i, 5, 6)
    tampered = good[:28] + (6 + 1).to_bytes(8, "big") + good[36:]  # exportWh 6 -> 7
    other_chain = ledger.reading(parts.S1, i, 5, 6, chain_id=ledger.chain_id + 1)
    other_contract = ledger.reading(parts.S1, i, 5, 6, contract=ledger.market.address)
    tx = ledger.submit(i, [tampered, other_chain, other_contract])
    meter = ledger.meter_of(parts.S1)
    assert _rejections(tx) == [(meter, i, BAD_SIGNATURE)] * 3
    # a reading signed for another interval does not verify for this one
    earlier = i - 1
    tx = ledger.submit(i, [ledger.reading(parts.S1, earlier, 5, 6)])
    assert _rejections(tx) == [(meter, i, BAD_SIGNATURE)]
    assert tuple(ledger.readings.readingOf(meter, i)) == (0, 0, False)


def test_reading_of_inactive_participant_rejected(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    ledger.registry.deactivate(parts.S1, {"from": ledger.dso})
    tx = ledger.submit(i, [ledger.reading(parts.S1, i, 5, 6)])
    assert _rejections(tx) == [(ledger.meter_of(parts.S1), i, INACTIVE)]


def test_reading_value_too_large_rejected(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    tx = ledger.submit(
        i,
        [
            ledger.reading(parts.S1, i, 2**23, 0),
            ledger.reading(parts.S2, i, 0, 2**23 - 1),
            ledger.reading(parts.B1, i, 2**23 - 1, 2**64 - 1),
            ledger.reading(parts.B2, i, 2**23 - 1, 2**23 - 1),
        ],
    )
    assert _rejections(tx) == [
        (ledger.meter_of(parts.S1), i, VALUE_TOO_LARGE),
        (ledger.meter_of(parts.B1), i, VALUE_TOO_LARGE),
    ]
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.S2), i)) == (0, 2**23 - 1, True)
    assert tuple(ledger.readings.readingOf(ledger.meter_of(parts.B2), i)) == (
        2**23 - 1,
        2**23 - 1,
        True,
    )


def test_submit_interval_not_ended_reverts(ledger: Any, parts: Any) -> None:
    # the next interval: the current one may end between reading the latest block and mining
    # the submission (a CI run on Ganache crossed 18:30:00 there and the reading was accepted)
    i = ledger.current_interval() + 1
    with brownie.reverts(err("MeterReadingsIntervalNotEnded", i, (i + 1) * INTERVAL_S)):
        ledger.submit(i, [ledger.reading(parts.S1, i, 1, 1)])


def test_submit_not_oracle_reverts(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    with brownie.reverts(err("MeterReadingsNotOracle", parts.S1.address)):
        ledger.readings.submitReadings(i, ledger.reading(parts.S1, i, 1, 1), {"from": parts.S1})


def test_rotated_meter_reports_for_same_participant(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    old_meter = ledger.meter_of(parts.S1)
    ledger.submit(i, [ledger.reading(parts.S1, i, 1, 2)])
    new = Account.create()
    ledger.registry.rotateMeter(parts.S1, new.address, {"from": ledger.dso})
    ledger.meters[parts.S1.address] = new.key.hex()
    # the old key is no longer registered; the new key cannot add a second, different reading
    stale = batches.signed_reading(
        meter_key(5), ledger.chain_id, ledger.readings.address, old_meter, i, 1, 2
    )
    tx = ledger.submit(i, [stale, ledger.reading(parts.S1, i, 3, 4)])
    assert _rejections(tx) == [(old_meter, i, UNKNOWN_METER), (new.address, i, CONFLICTING)]
    assert tuple(ledger.readings.readingOf(new.address, i)) == (1, 2, True)


def test_submit_malformed_readings_reverts(ledger: Any, parts: Any) -> None:
    i = _ended(ledger)
    r = ledger.reading(parts.S1, i, 1, 1)
    assert len(r) == 100
    with brownie.reverts(err("MeterReadingsMalformedCalldata", 99)):
        ledger.submit(i, [r[:-1]])
    with brownie.reverts(err("MeterReadingsMalformedCalldata", 101)):
        ledger.submit(i, [r, b"\x00"])
    assert ledger.submit(i, []).return_value == 0


def test_readings_window(ledger: Any, parts: Any) -> None:
    """Readings live in a ring of `readingWindowIntervals` intervals (at least 6 h): older intervals
    are refused, and a reused ring position drops the older interval's readings."""
    window = ledger.readings.readingWindowIntervals()
    assert window == 6 * 3600 // INTERVAL_S == 24
    # settlement (deadline = end + 1 h) falls well inside the window
    assert 2 * ledger.market.settlementDelaySeconds() <= window * INTERVAL_S
    # (B1/B2: the rotation test above leaves S1 with a key the reverted chain does not know)
    i = _ended(ledger)
    ledger.submit(i, [ledger.reading(parts.B1, i, 1, 2)])
    later = i + window
    ledger.end_interval(later)
    current = ledger.current_interval()
    oldest = current - window + 1
    assert oldest > i
    with brownie.reverts(err("MeterReadingsIntervalTooOld", i, oldest)):
        ledger.submit(i, [ledger.reading(parts.B1, i, 1, 2)])
    # the oldest interval still in the window is accepted
    assert ledger.submit(oldest, [ledger.reading(parts.B2, oldest, 3, 4)]).return_value == 1
    # the interval one window later reuses i's ring slot: i's reading is gone, the new one is in
    meter = ledger.meter_of(parts.B1)
    assert tuple(ledger.readings.readingOf(meter, i)) == (1, 2, True)
    tx = ledger.submit(later, [ledger.reading(parts.B1, later, 7, 8)])
    assert tx.return_value == 1
    assert tuple(ledger.readings.readingOf(meter, later)) == (7, 8, True)
    assert tuple(ledger.readings.readingOf(meter, i)) == (0, 0, False)
    idx = [ledger.index[w.address] for w in (parts.B1, parts.B2)]
    imp, exp, present = ledger.readings.readingsOf(later, idx)
    assert (list(imp), list(exp), list(present)) == ([7, 0], [8, 0], [True, False])


def test_market_refuses_delay_beyond_half_window(ledger: Any, EnergyMarket: Any) -> None:
    half = ledger.readings.readingWindowIntervals() * INTERVAL_S // 2
    args = (ledger.token, ledger.registry, ledger.readings)
    ba = (ledger.dso, 15_000, 5_000)
    with brownie.reverts(err("MarketInvalidConfig")):
        EnergyMarket.deploy(*args, half + 1, 0, *ba, {"from": ledger.admin})
    EnergyMarket.deploy(*args, half, 0, *ba, {"from": ledger.admin})
