"""The values the contracts and the Python side share, defined once: every user imports them from
here. ``tests/contracts/test_protocol.py`` pins each against the compiled contracts (views, events,
ABI), so a change on either side fails a test instead of a transaction.

- the settlement token's decimals (``EnergyToken.decimals``);
- order sides (``IEnergyMarket.Side``), grid verdict codes (``grid.verdicts.Reason``: 0 approved,
  anything else a veto with that reason; the grid package owns the enum, the chain only stores it);
- reading-rejection codes of ``MeterReadings.ReadingRejected`` and the oracle's label of each;
- the largest energy a reading may carry (``MeterReadings`` packs 23-bit values);
- byte sizes of the packed records (layouts in ``backend/chain/batches.py``);
- the EIP-712 domain names; escrow and trade-id arithmetic;
- the signatures (topic 0) of the market events read from logs, and ``TradeState`` of ``tradeOf``;
- the bounds of the imbalance prices (basis points of an interval's clearing price).
"""

from __future__ import annotations

from enum import IntEnum

from eth_hash.auto import keccak

from backend.settings import BPS as BPS
from backend.settings import MAX_LONG_PRICE_BPS as MAX_LONG_PRICE_BPS
from backend.settings import MAX_SHORT_PRICE_BPS as MAX_SHORT_PRICE_BPS
from backend.settings import MIN_SHORT_PRICE_BPS as MIN_SHORT_PRICE_BPS

MARKET_DOMAIN_NAME = "tegrid EnergyMarket"
READINGS_DOMAIN_NAME = "tegrid MeterReadings"
REGISTRY_DOMAIN_NAME = "tegrid ParticipantRegistry"
FLEX_DOMAIN_NAME = "tegrid FlexibilityMarket"
DOMAIN_VERSION = "1"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

# EnergyToken.decimals(): amounts on chain (deposits, escrow, payments, pricePerKWh) are in base
# units, TOKEN_UNIT of them to the token.
TOKEN_DECIMALS = 6
TOKEN_UNIT = 10**TOKEN_DECIMALS

# EnergyMarket's imbalance prices, basis points of an interval's clearing price: short within
# [MIN_SHORT_PRICE_BPS, MAX_SHORT_PRICE_BPS], long within [0, MAX_LONG_PRICE_BPS]
# (MarketInvalidImbalancePrices outside); the settings check them, so they are defined there and
# imported above.

# IEnergyMarket.Side (the Order's uint8 side).
SELL = 0
BUY = 1

# IParticipantRegistry.Device kinds; only a battery has (and must have) an energy capacity, and a
# genset's minW is >= 0 (it cannot consume). Batteries and gensets are the grid-forming kinds: in
# islanded mode the active ones on the island's buses balance it (no flag: the kind says it).
DEVICE_KINDS = {1: "battery", 2: "ev_charger", 3: "heat_pump", 4: "pv_inverter", 5: "genset"}
DEVICE_BATTERY = 1
DEVICE_GENSET = 5
GRID_FORMING_KINDS = frozenset({DEVICE_BATTERY, DEVICE_GENSET})

# A flexibility offer's direction: UP raises injection / lowers consumption, DOWN the opposite.
FLEX_UP = 0
FLEX_DOWN = 1

# Verdict of a trade in the attestation: grid.verdicts.Reason (APPROVED = 0, vetoes 1..7).
APPROVED = 0


class ReadingRejection(IntEnum):
    """Reason codes of ``MeterReadings.ReadingRejected``; ``label`` is what the oracle stores."""

    BAD_SIGNATURE = 1
    UNREGISTERED = 2  # MeterReadings.UNKNOWN_METER: the signing key is no registered meter
    INACTIVE = 3
    CONFLICTING = 4
    VALUE_TOO_LARGE = 5

    @property
    def label(self) -> str:
        return self.name.lower()


def rejection_label(code: int) -> str:
    """The oracle's label of a ``ReadingRejected`` code (``rejected_<code>`` for an unknown one)."""
    try:
        return ReadingRejection(code).label
    except ValueError:
        return f"rejected_{code}"


# MeterReadings packs four readings per slot, 23 bits for each of importWh and exportWh.
MAX_READING_WH = 2**23 - 1

# Byte sizes of the packed records (field widths in IEnergyMarket.sol / IMeterReadings.sol):
# order: trader 20 | side 1 | intervalId 8 | energyWh 8 | pricePerKWh 16 | nonce 8 | expiry 8 |
#        counterparty 20 | r 32 | vs 32
# trade: sellOrder 2 | buyOrder 2 | energyWh 8 | pricePerKWh 16 | verdict 1
# record: tradeId 32 | seller 20 | buyer 20 | sellerIndex 4 | buyerIndex 4 | energyWh 8 |
#         pricePerKWh 16
# reading: meter 20 | importWh 8 | exportWh 8 | r 32 | vs 32
# accepted reading in ReadingsSubmitted(uint64 indexed intervalId, bytes accepted): meter 20 |
# importWh 4 | exportWh 4
ORDER_SIZE = 153
TRADE_SIZE = 29
RECORD_SIZE = 104
READING_SIZE = 100
ACCEPTED_SIZE = 28


# EnergyMarket events read from logs (topic 0 = keccak256 of the signature). TradeRecorded's topics
# are tradeId, seller, buyer (intervalId, energyWh, pricePerKWh are data); tradeId is topic 1 of
# every per-trade event, so the filter [None, tradeId] gives a trade's whole life.
TRADE_RECORDED_EVENT = "TradeRecorded(bytes32,address,address,uint64,uint64,uint128)"
TRADE_VETOED_EVENT = "TradeVetoed(bytes32,uint8)"
TRADE_SETTLED_EVENT = "TradeSettled(bytes32,uint64,uint256,uint256)"
ESCROW_RECLAIMED_EVENT = "EscrowReclaimed(bytes32,address,uint256)"
BATCH_RECORDED_EVENT = "BatchRecorded(uint64,uint32,bytes32,uint32,bytes32)"
INTERVAL_SETTLED_EVENT = "IntervalSettled(uint64,uint32)"
INTERVAL_RECLAIMED_EVENT = "IntervalReclaimed(uint64,uint32,uint32)"
# Imbalance, with an interval's last settlement page: one per party (topics intervalId, account)
# and one per interval (topic intervalId).
IMBALANCE_SETTLED_EVENT = "ImbalanceSettled(uint64,address,int256,int256,int256,uint256)"
INTERVAL_IMBALANCE_SETTLED_EVENT = (
    "IntervalImbalanceSettled(uint64,uint256,uint32,uint32,uint256,uint256)"
)


def event_topic(signature: str) -> bytes:
    """Topic 0 of an event: keccak256 of its signature."""
    return keccak(signature.encode())


TRADE_RECORDED = event_topic(TRADE_RECORDED_EVENT)
TRADE_VETOED = event_topic(TRADE_VETOED_EVENT)
TRADE_SETTLED = event_topic(TRADE_SETTLED_EVENT)
ESCROW_RECLAIMED = event_topic(ESCROW_RECLAIMED_EVENT)
BATCH_RECORDED = event_topic(BATCH_RECORDED_EVENT)
INTERVAL_SETTLED = event_topic(INTERVAL_SETTLED_EVENT)
INTERVAL_RECLAIMED = event_topic(INTERVAL_RECLAIMED_EVENT)
IMBALANCE_SETTLED = event_topic(IMBALANCE_SETTLED_EVENT)
INTERVAL_IMBALANCE_SETTLED = event_topic(INTERVAL_IMBALANCE_SETTLED_EVENT)


class TradeState(IntEnum):
    """``IEnergyMarket.TradeState`` of ``tradeOf``: an approved trade's escrow locked and not yet
    settled, paid out by ``settle``, or returned to the buyer by ``reclaim``."""

    UNSETTLED = 0
    SETTLED = 1
    RECLAIMED = 2

    @property
    def label(self) -> str:
        return self.name.lower()


def escrow_of(energy_wh: int, price_per_kwh: int) -> int:
    """Escrow the market locks for a trade: ``ceil(energyWh x pricePerKWh / 1000)``
    (``EnergyMarket.escrowOf``)."""
    return -(-(energy_wh * price_per_kwh) // 1000)


def trade_id(sell_order_hash: bytes, buy_order_hash: bytes) -> bytes:
    """tradeId = keccak256(abi.encode(sellOrderHash, buyOrderHash)) (``EnergyMarket.tradeIdOf``)."""
    if len(sell_order_hash) != 32 or len(buy_order_hash) != 32:
        raise ValueError("order hashes must be 32 bytes")
    return keccak(bytes(sell_order_hash) + bytes(buy_order_hash))


def activation_id_hex(offer_hash: str, trade_id: str) -> str:
    """activationId = keccak256(abi.encode(offerHash, tradeId)) of two ``0x`` hex bytes32 (the
    FlexOffer's EIP-712 digest; the rescued trade's id, or bytes32(0) for a DSO-service
    activation), as ``0x`` hex."""
    offer, trade = bytes.fromhex(offer_hash[2:]), bytes.fromhex(trade_id[2:])
    if len(offer) != 32 or len(trade) != 32:
        raise ValueError("offer hash and trade id must be 32 bytes")
    return "0x" + keccak(offer + trade).hex()


ZERO_BYTES32 = "0x" + "00" * 32


def trade_id_hex(sell_order_hash: str, buy_order_hash: str) -> str:
    """:func:`trade_id` of two ``0x`` hex order hashes, as ``0x`` hex."""
    return (
        "0x" + trade_id(bytes.fromhex(sell_order_hash[2:]), bytes.fromhex(buy_order_hash[2:])).hex()
    )
