// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {CompactSignature} from "./libraries/CompactSignature.sol";
import {IEnergyMarket} from "./interfaces/IEnergyMarket.sol";
import {IMeterReadings} from "./interfaces/IMeterReadings.sol";
import {IParticipantRegistry} from "./interfaces/IParticipantRegistry.sol";

/// @title EnergyMarket
/// @notice Escrowed peer-to-peer energy trades with grid-validator attestation and metered settlement.
/// See {IEnergyMarket} for types, identifiers and rules.
contract EnergyMarket is EIP712, IEnergyMarket {
    using SafeERC20 for IERC20;

    /// @inheritdoc IEnergyMarket
    bytes32 public constant ORDER_TYPEHASH = keccak256(
        "Order(address trader,uint8 side,uint64 intervalId,uint64 energyWh,uint128 pricePerKWh,uint64 nonce,uint64 expiry,address counterparty)"
    );
    /// @inheritdoc IEnergyMarket
    bytes32 public constant ATTESTATION_TYPEHASH = keccak256(
        "GridAttestation(uint64 intervalId,uint32 batchIndex,uint32 batchCount,bytes32[] tradeIds,uint64[] energyWh,uint128[] pricePerKWh,uint8[] verdicts,bytes32 evidenceHash)"
    );

    bytes32 internal constant MARKET_OPERATOR_ROLE = keccak256("MARKET_OPERATOR_ROLE");
    bytes32 internal constant VALIDATOR_ROLE = keccak256("VALIDATOR_ROLE");
    uint8 internal constant SELL = 0;
    uint8 internal constant BUY = 1;
    uint256 internal constant LANE_MASK = type(uint64).max;
    uint256 internal constant CANCELLED = type(uint64).max;
    uint256 internal constant ORDER_SIZE = 153; // packed signed order, see IEnergyMarket
    uint256 internal constant TRADE_SIZE = 29; // packed trade
    uint256 internal constant RECORD_SIZE = 104; // packed trade record (what settle needs)
    uint8 internal constant FIELD_ORDERS = 0;
    uint8 internal constant FIELD_TRADES = 1;
    uint8 internal constant FIELD_RECORDS = 2;
    uint8 internal constant FIELD_PARTIES = 3;
    uint8 internal constant FIELD_POSITIONS = 4;
    uint256 internal constant USED = 1 << 255;
    uint256 internal constant U32 = type(uint32).max;
    uint256 internal constant U64 = type(uint64).max;
    uint256 internal constant U128 = type(uint128).max;

    IERC20 public immutable token;
    IParticipantRegistry public immutable registry;
    IMeterReadings public immutable readings;
    /// @inheritdoc IEnergyMarket
    uint64 public immutable intervalSeconds;
    /// @inheritdoc IEnergyMarket
    uint64 public immutable settlementDelaySeconds;
    /// @inheritdoc IEnergyMarket
    uint64 public immutable gateLeadSeconds;

    // available and locked escrow share one slot: recording a trade touches the buyer once.
    mapping(address account => Account) private _accounts;
    // Fill state of (trader, nonce): four 64-bit lanes (filled Wh, or CANCELLED) per slot, so a trader's
    // consecutive nonces mostly write an already non-zero slot (5,000 gas instead of 22,100).
    mapping(address trader => mapping(uint256 word => uint256 lanes)) private _fills;
    mapping(uint64 intervalId => IntervalState) private _intervals;
    // One commitment per recorded batch instead of storage per trade; settle re-supplies the trades.
    mapping(uint64 intervalId => mapping(uint256 batchIndex => bytes32)) private _commitments;

    /// @dev A batch while it is recorded: hashes first (the attestation covers ids, amounts, prices and
    /// verdicts, one word each per trade as EIP-712 hashes arrays), then
    /// one word per order: remaining Wh (bits 0..63) | filled by this batch (64..127) | registry index
    /// (128..159) | verified (bit 255); states: the registry's word per trader. Words instead of structs keep memory small.
    struct Batch {
        uint256 obase; // calldata position of the packed orders
        bytes32[] digests;
        bytes32[] ids;
        uint256[] energies;
        uint256[] prices;
        uint256[] verdicts;
        uint256[] work;
        uint256[] states;
    }

    /// @dev An interval while it is settled: per party its totals (see `_aggregate`), readings, and what its
    /// balance gains (credit) and releases from escrow (unlock).
    struct Settlement {
        uint256 pbase; // calldata position of the packed parties
        uint256 np; // number of parties
        uint256[] totals;
        uint256[] metered;
        uint256[] credit;
        uint256[] unlock;
    }

    /// @param token_ Any ERC-20 used for payment.
    /// @param registry_ Roles and participants.
    /// @param readings_ Meter readings; its interval length is the market's.
    /// @param settlementDelaySeconds_ Time after an interval's end until missing readings count as zero.
    /// @param gateLeadSeconds_ How long before an interval starts its gate closes (no batch after it).
    constructor(
        IERC20 token_,
        IParticipantRegistry registry_,
        IMeterReadings readings_,
        uint64 settlementDelaySeconds_,
        uint64 gateLeadSeconds_
    ) EIP712("tegrid EnergyMarket", "1") {
        if (address(token_) == address(0) || address(registry_) == address(0) || address(readings_) == address(0)) {
            revert MarketInvalidConfig();
        }
        token = token_;
        registry = registry_;
        readings = readings_;
        intervalSeconds = readings_.intervalSeconds();
        // settlement must fall well inside the readings window (older readings get overwritten)
        if (2 * uint256(settlementDelaySeconds_) > uint256(readings_.readingWindowIntervals()) * intervalSeconds) {
            revert MarketInvalidConfig();
        }
        settlementDelaySeconds = settlementDelaySeconds_;
        gateLeadSeconds = gateLeadSeconds_;
    }

    // ------------------------------------------------------------------ balances

    /// @inheritdoc IEnergyMarket
    function deposit(uint256 amount) external {
        if (amount == 0) revert MarketZeroAmount();
        if (amount > type(uint128).max) revert MarketAmountTooLarge(amount);
        _accounts[msg.sender].available += uint128(amount);
        emit Deposited(msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IEnergyMarket
    function withdraw(uint256 amount) external {
        if (amount == 0) revert MarketZeroAmount();
        Account storage acc = _accounts[msg.sender];
        if (acc.available < amount) revert MarketInsufficientBalance(msg.sender, acc.available, amount);
        acc.available -= uint128(amount);
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IEnergyMarket
    function cancelNonce(uint64 nonce) external {
        (uint256 word, uint256 shift) = (nonce >> 2, (uint256(nonce) & 3) * 64);
        uint256 lanes = _fills[msg.sender][word];
        if ((lanes >> shift) & LANE_MASK == CANCELLED) revert MarketNonceAlreadyCancelled(msg.sender, nonce);
        _fills[msg.sender][word] = lanes | (CANCELLED << shift);
        emit NonceCancelled(msg.sender, nonce);
    }

    // ------------------------------------------------------------------ recording

    /// @inheritdoc IEnergyMarket
    /// @dev Packed calldata instead of ABI struct arrays: no decoder loops, no per-order memory structs
    /// (one word per order); signatures through the ecrecover precompile (EIP-2098, low s); the batch's
    /// traders read from the registry in one call.
    function recordTrades(
        uint64 intervalId,
        uint32 batchIndex,
        uint32 batchCount,
        bytes calldata orders,
        bytes calldata trades,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment) {
        if (!registry.hasRole(MARKET_OPERATOR_ROLE, msg.sender)) revert MarketNotOperator(msg.sender);
        if (trades.length == 0) revert MarketEmptyBatch();
        if (trades.length % TRADE_SIZE != 0) revert MarketMalformedCalldata(FIELD_TRADES, trades.length);
        if (orders.length == 0 || orders.length % ORDER_SIZE != 0) {
            revert MarketMalformedCalldata(FIELD_ORDERS, orders.length);
        }
        IntervalState storage st = _intervals[intervalId];
        _checkSequence(intervalId, st, batchIndex, batchCount);

        Batch memory bt;
        (bt.obase, bt.digests) = _orderDigests(orders);
        uint256 approved = _tradeIds(trades, bt, st.lastTradeId);
        _checkAttestation(intervalId, batchIndex, batchCount, bt, evidenceHash, validatorSignature);
        bt.states = _traderStates(bt.obase, bt.digests.length);
        bt.work = new uint256[](bt.digests.length);
        commitment = _recordApproved(intervalId, _cdPtr(trades), bt, approved);
        _commitBatch(intervalId, st, batchCount, bt.ids[bt.ids.length - 1], commitment, approved, evidenceHash);
    }

    /// @dev The batch's commitment and the interval's bookkeeping (a function of its own: stack depth).
    function _commitBatch(
        uint64 intervalId,
        IntervalState storage st,
        uint32 batchCount,
        bytes32 lastTradeId,
        bytes32 commitment,
        uint256 approved,
        bytes32 evidenceHash
    ) private {
        uint32 batchIndex = st.batchCount;
        _commitments[intervalId][batchIndex] = commitment;
        st.lastTradeId = lastTradeId;
        st.batchCount = batchIndex + 1;
        st.expectedBatches = batchCount;
        st.approvedCount += uint32(approved);
        emit BatchRecorded(intervalId, batchIndex, commitment, uint32(approved), evidenceHash);
    }

    /// @dev Gate closure, then the batch's place: the next index, the count of the interval's first batch.
    function _checkSequence(uint64 intervalId, IntervalState storage st, uint256 batchIndex, uint256 batchCount)
        private
        view
    {
        uint256 closure = _gateClosure(intervalId);
        if (block.timestamp > closure) revert MarketGateClosed(intervalId, closure);
        if (st.settled) revert MarketIntervalSettled(intervalId);
        if (batchIndex != st.batchCount) revert MarketBatchOutOfSequence(intervalId, st.batchCount, batchIndex);
        uint256 expected = st.expectedBatches;
        if (batchCount <= batchIndex || (expected != 0 && batchCount != expected)) {
            revert MarketBatchCountInvalid(intervalId, expected, batchCount);
        }
    }

    /// @dev EIP-712 digest of every packed order.
    function _orderDigests(bytes calldata orders) private view returns (uint256 obase, bytes32[] memory digests) {
        obase = _cdPtr(orders);
        uint256 m = orders.length / ORDER_SIZE;
        bytes32 domain = _domainSeparatorV4();
        bytes32 typeHash = ORDER_TYPEHASH;
        digests = new bytes32[](m);
        assembly ("memory-safe") {
            let buf := mload(0x40)
            mstore(buf, typeHash)
            for { let o := 0 } lt(o, m) { o := add(o, 1) } {
                let op := add(obase, mul(o, ORDER_SIZE))
                let w0 := calldataload(op)
                let w1 := calldataload(add(op, 29))
                let w2 := calldataload(add(op, 61))
                mstore(add(buf, 0x20), shr(96, w0)) // trader
                mstore(add(buf, 0x40), and(shr(88, w0), 0xff)) // side
                mstore(add(buf, 0x60), and(shr(24, w0), 0xffffffffffffffff)) // intervalId
                mstore(add(buf, 0x80), shr(192, w1)) // energyWh
                mstore(add(buf, 0xa0), and(shr(64, w1), 0xffffffffffffffffffffffffffffffff)) // pricePerKWh
                mstore(add(buf, 0xc0), and(w1, 0xffffffffffffffff)) // nonce
                mstore(add(buf, 0xe0), shr(192, w2)) // expiry
                mstore(add(buf, 0x100), and(shr(32, w2), 0xffffffffffffffffffffffffffffffffffffffff)) // counterparty
                let structHash := keccak256(buf, 0x120)
                mstore(add(buf, 0x120), hex"1901")
                mstore(add(buf, 0x122), domain)
                mstore(add(buf, 0x142), structHash)
                mstore(add(digests, shl(5, add(o, 1))), keccak256(add(buf, 0x120), 0x42))
            }
        }
    }

    /// @dev Trade ids and verdicts of a batch; checks order indices and that the ids ascend past `last`.
    function _tradeIds(bytes calldata trades, Batch memory bt, bytes32 last) private pure returns (uint256 approved) {
        unchecked {
            uint256 n = trades.length / TRADE_SIZE;
            uint256 m = bt.digests.length;
            uint256 tbase = _cdPtr(trades);
            bytes32[] memory digests = bt.digests;
            bytes32[] memory ids = new bytes32[](n);
            uint256[] memory energies = new uint256[](n);
            uint256[] memory prices = new uint256[](n);
            uint256[] memory verdicts = new uint256[](n);
            for (uint256 i = 0; i < n; ++i) {
                uint256 w;
                assembly ("memory-safe") {
                    w := calldataload(add(tbase, mul(i, TRADE_SIZE)))
                }
                (uint256 so, uint256 bo) = (w >> 240, (w >> 224) & 0xffff);
                if (so >= m) revert MarketOrderIndexOutOfRange(so);
                if (bo >= m) revert MarketOrderIndexOutOfRange(bo);
                bytes32 id;
                assembly ("memory-safe") {
                    mstore(0x00, mload(add(digests, shl(5, add(so, 1)))))
                    mstore(0x20, mload(add(digests, shl(5, add(bo, 1)))))
                    id := keccak256(0x00, 0x40)
                    mstore(add(ids, shl(5, add(i, 1))), id)
                    // trade word: energyWh (bits 160..223) | pricePerKWh (32..159) | verdict (24..31)
                    mstore(add(energies, shl(5, add(i, 1))), and(shr(160, w), 0xffffffffffffffff))
                    mstore(add(prices, shl(5, add(i, 1))), and(shr(32, w), 0xffffffffffffffffffffffffffffffff))
                    mstore(add(verdicts, shl(5, add(i, 1))), and(shr(24, w), 0xff))
                }
                if (id <= last) revert MarketTradeOutOfOrder(id, last);
                last = id;
                if ((w >> 24) & 0xff == 0) ++approved;
            }
            bt.ids = ids;
            bt.energies = energies;
            bt.prices = prices;
            bt.verdicts = verdicts;
        }
    }

    function _checkAttestation(
        uint64 intervalId,
        uint256 batchIndex,
        uint256 batchCount,
        Batch memory bt,
        bytes32 evidenceHash,
        bytes calldata signature
    ) private view {
        bytes32 digest = _attestationDigest(
            intervalId,
            batchIndex,
            batchCount,
            [_hashWords(bt.ids), _hashWords(bt.energies), _hashWords(bt.prices), _hashWords(bt.verdicts)],
            evidenceHash
        );
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError) signer = address(0);
        if (signer == address(0) || !registry.hasRole(VALIDATOR_ROLE, signer)) {
            revert MarketInvalidValidatorSignature(signer);
        }
    }

    /// @dev EIP-712 hash of an array of one-word elements: keccak256 of the words where they lie in memory.
    function _hashWords(bytes32[] memory words) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            h := keccak256(add(words, 32), shl(5, mload(words)))
        }
    }

    function _hashWords(uint256[] memory words) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            h := keccak256(add(words, 32), shl(5, mload(words)))
        }
    }

    /// @dev One registry call for every trader of the batch.
    function _traderStates(uint256 obase, uint256 m) private view returns (uint256[] memory) {
        unchecked {
            address[] memory traders = new address[](m);
            assembly ("memory-safe") {
                for { let o := 0 } lt(o, m) { o := add(o, 1) } {
                    mstore(add(traders, shl(5, add(o, 1))), shr(96, calldataload(add(obase, mul(o, ORDER_SIZE)))))
                }
            }
            return registry.statesOf(traders);
        }
    }

    /// @dev Vetoes are only announced; approved trades are checked, filled, escrowed and committed.
    /// Each order is verified (signature, expiry, interval, active trader, cancellation) on first use and
    /// its fill lane written once at the end, however many trades it is in.
    function _recordApproved(uint64 intervalId, uint256 tbase, Batch memory bt, uint256 approved)
        private
        returns (bytes32 commitment)
    {
        unchecked {
            bytes memory buf = new bytes(approved * RECORD_SIZE);
            uint256 out;
            assembly ("memory-safe") {
                out := add(buf, 32)
            }
            uint256 n = bt.ids.length;
            for (uint256 i = 0; i < n; ++i) {
                uint256 verdict = bt.verdicts[i];
                if (verdict != 0) {
                    emit TradeVetoed(bt.ids[i], uint8(verdict));
                    continue;
                }
                _recordOne(intervalId, tbase + i * TRADE_SIZE, bt, bt.ids[i], out);
                out += RECORD_SIZE;
            }
            uint256 m = bt.work.length;
            uint256[] memory work = bt.work;
            for (uint256 o = 0; o < m; ++o) {
                uint256 w;
                assembly ("memory-safe") {
                    w := mload(add(work, shl(5, add(o, 1))))
                }
                if (w & USED != 0) _commitFill(bt.obase + o * ORDER_SIZE, (w >> 64) & U64);
            }
            commitment = keccak256(buf);
        }
    }

    function _recordOne(uint64 intervalId, uint256 tp, Batch memory bt, bytes32 id, uint256 out) private {
        unchecked {
            uint256 w;
            assembly ("memory-safe") {
                w := calldataload(tp)
            }
            // trade word: sellOrder (bits 240..255) | buyOrder (224..239) | energyWh (160..223) |
            // pricePerKWh (32..159) | verdict (24..31)
            (address seller, address buyer) = _checkPair(id, bt.obase, w);
            _fill(intervalId, bt, w >> 240, id, (w >> 160) & U64);
            _fill(intervalId, bt, (w >> 224) & 0xffff, id, (w >> 160) & U64);
            _lockEscrow(buyer, (w >> 160) & U64, (w >> 32) & U128);
            emit TradeRecorded(id, seller, buyer, uint64(w >> 160), uint128(w >> 32));
            // the 104-byte trade record: id | seller | buyer | sellerIndex | buyerIndex | energyWh | price
            uint256[] memory work = bt.work;
            assembly ("memory-safe") {
                let si := and(shr(128, mload(add(work, shl(5, add(shr(240, w), 1))))), 0xffffffff)
                let bi := and(shr(128, mload(add(work, shl(5, add(and(shr(224, w), 0xffff), 1))))), 0xffffffff)
                mstore(out, id)
                mstore(add(out, 32), shl(96, seller))
                mstore(add(out, 52), shl(96, buyer))
                mstore(add(out, 72), or(or(shl(224, si), shl(192, bi)), shr(64, shl(32, w))))
            }
        }
    }

    function _lockEscrow(address buyer, uint256 energyWh, uint256 price) private {
        uint256 escrow = _escrow(energyWh, price);
        Account memory acc = _accounts[buyer];
        if (acc.available < escrow) revert MarketInsufficientBalance(buyer, acc.available, escrow);
        _accounts[buyer] = Account(acc.available - uint128(escrow), acc.locked + uint128(escrow));
    }

    /// @dev The checks of a trade that need no state: sides, self-trade, amount, price, counterparties.
    function _checkPair(bytes32 id, uint256 obase, uint256 w) private pure returns (address seller, address buyer) {
        unchecked {
            uint256 sp = obase + (w >> 240) * ORDER_SIZE;
            uint256 bp = obase + ((w >> 224) & 0xffff) * ORDER_SIZE;
            uint256 price = (w >> 32) & U128;
            uint256 s0;
            uint256 b0;
            uint256 sellLimit;
            uint256 buyLimit;
            assembly ("memory-safe") {
                s0 := calldataload(sp)
                b0 := calldataload(bp)
                sellLimit := and(shr(64, calldataload(add(sp, 29))), 0xffffffffffffffffffffffffffffffff)
                buyLimit := and(shr(64, calldataload(add(bp, 29))), 0xffffffffffffffffffffffffffffffff)
            }
            (seller, buyer) = (address(uint160(s0 >> 96)), address(uint160(b0 >> 96)));
            if ((s0 >> 88) & 0xff != SELL) revert MarketOrderWrongSide(id, SELL);
            if ((b0 >> 88) & 0xff != BUY) revert MarketOrderWrongSide(id, BUY);
            if (seller == buyer) revert MarketSelfTrade(id);
            if ((w >> 160) & U64 == 0) revert MarketZeroTradeAmount(id);
            if (price < sellLimit || price > buyLimit) {
                revert MarketPriceOutOfRange(id, uint128(price));
            }
            _checkCounterparty(sp, buyer);
            _checkCounterparty(bp, seller);
        }
    }

    function _checkCounterparty(uint256 op, address other) private pure {
        unchecked {
            address counterparty;
            assembly ("memory-safe") {
                counterparty := and(shr(32, calldataload(add(op, 61))), 0xffffffffffffffffffffffffffffffffffffffff)
            }
            if (counterparty != address(0) && counterparty != other) {
                revert MarketCounterpartyMismatch(address(uint160(_word(op) >> 96)), uint64(_word(op + 29)), counterparty);
            }
        }
    }

    /// @dev Verifies order `o` on its first use in the batch, then takes `energyWh` of what is left of it.
    function _fill(uint64 intervalId, Batch memory bt, uint256 o, bytes32 id, uint256 energyWh) private view {
        unchecked {
            uint256[] memory work = bt.work;
            uint256 w;
            assembly ("memory-safe") {
                w := mload(add(work, shl(5, add(o, 1))))
            }
            if (w & USED == 0) w = _useOrder(intervalId, bt, o, id);
            uint256 remaining = w & U64;
            if (energyWh > remaining) {
                uint256 op = bt.obase + o * ORDER_SIZE;
                revert MarketOrderOverfilled(address(uint160(_word(op) >> 96)), uint64(_word(op + 29)), uint64(remaining));
            }
            // remaining -= energyWh; filled-by-this-batch += energyWh (cannot carry: both stay below 2^64)
            assembly ("memory-safe") {
                mstore(add(work, shl(5, add(o, 1))), add(sub(w, energyWh), shl(64, energyWh)))
            }
        }
    }

    /// @dev First use of an order in a batch: interval, expiry, signature, active trader, fill state.
    function _useOrder(uint64 intervalId, Batch memory bt, uint256 o, bytes32 tradeId) private view returns (uint256) {
        unchecked {
            uint256 op = bt.obase + o * ORDER_SIZE;
            uint256 w0;
            uint256 w1;
            uint256 expiry;
            bytes32 r;
            bytes32 vs;
            assembly ("memory-safe") {
                w0 := calldataload(op)
                w1 := calldataload(add(op, 29))
                expiry := shr(192, calldataload(add(op, 61)))
                r := calldataload(add(op, 89))
                vs := calldataload(add(op, 121))
            }
            address trader = address(uint160(w0 >> 96));
            uint64 nonce = uint64(w1);
            if (uint64(w0 >> 24) != intervalId) revert MarketOrderIntervalMismatch(tradeId, uint64(w0 >> 24));
            if (block.timestamp > expiry) revert MarketOrderExpired(trader, nonce, uint64(expiry));
            bytes32 digest;
            bytes32[] memory digests = bt.digests;
            assembly ("memory-safe") {
                digest := mload(add(digests, shl(5, add(o, 1))))
            }
            address signer = CompactSignature.recover(digest, r, vs);
            if (signer == address(0) || signer != trader) revert MarketInvalidOrderSignature(trader, nonce);
            uint256 state = bt.states[o];
            if (state & (1 << 32) == 0) revert MarketParticipantInactive(trader);
            uint256 filled = (_fills[trader][nonce >> 2] >> ((uint256(nonce) & 3) * 64)) & LANE_MASK;
            if (filled == CANCELLED) revert MarketOrderCancelled(trader, nonce);
            uint256 energyWh = w1 >> 192;
            return USED | ((state & U32) << 128) | (filled >= energyWh ? 0 : energyWh - filled);
        }
    }

    /// @dev Adds a batch's fills to the (trader, nonce) lane; re-checks against the lane as stored, which
    /// also catches two orders of one batch sharing a nonce.
    function _commitFill(uint256 op, uint256 delta) private {
        unchecked {
            (uint256 w0, uint256 w1) = (_word(op), _word(op + 29));
            address trader = address(uint160(w0 >> 96));
            uint64 nonce = uint64(w1);
            uint256 energyWh = w1 >> 192;
            (uint256 slot, uint256 shift) = (nonce >> 2, (uint256(nonce) & 3) * 64);
            uint256 lanes = _fills[trader][slot];
            uint256 filled = (lanes >> shift) & LANE_MASK;
            if (filled + delta > energyWh) {
                revert MarketOrderOverfilled(trader, nonce, filled >= energyWh ? 0 : uint64(energyWh - filled));
            }
            _fills[trader][slot] = lanes + (delta << shift);
        }
    }

    // ------------------------------------------------------------------ settlement

    /// @inheritdoc IEnergyMarket
    /// @dev Per party three memory words (totals, credit, unlock) instead of an 8-word struct; one balance
    /// write per party the page pays or refunds.
    function settle(
        uint64 intervalId,
        bytes[] calldata batches,
        bytes calldata parties,
        bytes calldata positions,
        uint32 pageEnd
    ) external {
        IntervalState storage st = _intervals[intervalId];
        uint256 from = _checkSettleable(intervalId, st, pageEnd);
        _checkBatches(intervalId, batches, 0, st.batchCount);
        if (positions.length % 2 != 0) revert MarketMalformedCalldata(FIELD_POSITIONS, positions.length);
        if (positions.length / 2 != 2 * uint256(st.approvedCount)) {
            revert MarketPositionsMismatch(2 * uint256(st.approvedCount), positions.length / 2);
        }
        if (parties.length % 20 != 0) revert MarketMalformedCalldata(FIELD_PARTIES, parties.length);
        _checkSorted(parties);
        bool last = pageEnd == st.batchCount;
        st.settledBatches = pageEnd;
        if (last) st.settled = true;

        Settlement memory z;
        z.pbase = _cdPtr(parties);
        z.np = parties.length / 20;
        _aggregate(z, batches, _cdPtr(positions));
        _loadReadings(intervalId, z);
        z.credit = new uint256[](z.np);
        z.unlock = new uint256[](z.np);
        uint256 count = _settlePage(z, batches, from, pageEnd, _cdPtr(positions));
        _pay(z);
        emit BatchesSettled(intervalId, uint32(from), pageEnd, uint32(count));
        if (last) emit IntervalSettled(intervalId, st.approvedCount);
    }

    /// @inheritdoc IEnergyMarket
    function reclaim(uint64 intervalId, bytes[] calldata batches) external {
        IntervalState storage st = _intervals[intervalId];
        if (st.settled) revert MarketIntervalSettled(intervalId);
        uint256 nb = st.batchCount;
        if (nb == 0) revert MarketIntervalNotRecorded(intervalId);
        uint256 start = _reclaimAfter(intervalId);
        if (block.timestamp < start) revert MarketReclaimNotReady(intervalId, start);
        uint256 from = st.settledBatches;
        _checkBatches(intervalId, batches, from, nb - from);
        st.settledBatches = uint32(nb);
        st.settled = true;
        st.reclaimed = true;
        uint256 count;
        for (uint256 b = 0; b < batches.length; ++b) {
            bytes calldata batch = batches[b];
            uint256 rp = _cdPtr(batch);
            for (uint256 end = rp + batch.length; rp < end; rp += RECORD_SIZE) {
                _reclaimOne(rp);
                ++count;
            }
        }
        emit IntervalReclaimed(intervalId, uint32(from), uint32(count));
    }

    /// @dev The escrow of the record at calldata position rp back to its buyer.
    function _reclaimOne(uint256 rp) private {
        unchecked {
            bytes32 id;
            address buyer;
            uint256 tail; // sellerIndex | buyerIndex | energyWh | pricePerKWh
            assembly ("memory-safe") {
                id := calldataload(rp)
                buyer := shr(96, calldataload(add(rp, 52)))
                tail := calldataload(add(rp, 72))
            }
            uint256 escrow = _escrow((tail >> 128) & U64, tail & U128);
            Account memory acc = _accounts[buyer];
            _accounts[buyer] = Account(acc.available + uint128(escrow), acc.locked - uint128(escrow));
            emit EscrowReclaimed(id, buyer, escrow);
        }
    }

    /// @dev The timeline and page checks of `settle`; returns the first batch of the page.
    function _checkSettleable(uint64 intervalId, IntervalState storage st, uint256 pageEnd)
        private
        view
        returns (uint256 from)
    {
        if (st.settled) revert MarketIntervalSettled(intervalId);
        uint256 nb = st.batchCount;
        if (nb == 0) revert MarketIntervalNotRecorded(intervalId);
        uint256 closure = _gateClosure(intervalId);
        if (block.timestamp <= closure) revert MarketRecordingOpen(intervalId, closure);
        if (nb != st.expectedBatches) revert MarketBatchesMissing(intervalId, st.expectedBatches, nb);
        uint256 expiry = _reclaimAfter(intervalId);
        if (block.timestamp >= expiry) revert MarketSettlementExpired(intervalId, expiry);
        from = st.settledBatches;
        if (pageEnd <= from || pageEnd > nb) revert MarketPageInvalid(intervalId, from, pageEnd);
    }

    /// @dev `batches` are batches [first, first + count) of the interval, each exactly as committed.
    function _checkBatches(uint64 intervalId, bytes[] calldata batches, uint256 first, uint256 count) private view {
        if (batches.length != count) revert MarketBatchCountMismatch(intervalId, count, batches.length);
        for (uint256 b = 0; b < count; ++b) {
            bytes calldata batch = batches[b];
            if (batch.length % RECORD_SIZE != 0) revert MarketMalformedCalldata(FIELD_RECORDS, batch.length);
            if (_hashCalldata(batch) != _commitments[intervalId][first + b]) {
                revert MarketBatchCommitmentMismatch(intervalId, first + b);
            }
        }
    }

    /// @dev Settles the records of batches [from, to); `pos` points at the positions of the first record.
    function _settlePage(Settlement memory z, bytes[] calldata batches, uint256 from, uint256 to, uint256 pos)
        private
        returns (uint256 count)
    {
        unchecked {
            for (uint256 b = 0; b < to; ++b) {
                bytes calldata batch = batches[b];
                uint256 n = batch.length / RECORD_SIZE;
                if (b >= from) {
                    uint256 rp = _cdPtr(batch);
                    for (uint256 i = 0; i < n; ++i) {
                        _settleOne(z, rp + i * RECORD_SIZE, pos + 4 * i);
                    }
                    count += n;
                }
                pos += 4 * n;
            }
        }
    }

    function _checkSorted(bytes calldata parties) private pure {
        unchecked {
            uint256 np = parties.length / 20;
            uint256 pbase = _cdPtr(parties);
            uint256 prev;
            for (uint256 p = 0; p < np; ++p) {
                uint256 a = uint160(_party(pbase, p));
                if (p > 0 && a <= prev) revert MarketPartiesNotSorted(p);
                prev = a;
            }
        }
    }

    /// @dev The record at calldata position rp, its parties' positions at calldata position pos.
    function _settleOne(Settlement memory z, uint256 rp, uint256 pos) private {
        unchecked {
            uint256 tail; // sellerIndex | buyerIndex | energyWh | pricePerKWh
            uint256 s;
            uint256 y;
            bytes32 id;
            assembly ("memory-safe") {
                tail := calldataload(add(rp, 72))
                let p := calldataload(pos)
                s := shr(240, p)
                y := and(shr(224, p), 0xffff)
                id := calldataload(rp)
            }
            (uint256 num, uint256 den) = _ratio(z, s, y);
            (uint256 energyWh, uint256 price) = ((tail >> 128) & U64, tail & U128);
            uint256 delivered = (energyWh * num) / den;
            uint256 escrow = _escrow(energyWh, price);
            uint256 paid = (delivered * price) / 1000;
            assembly ("memory-safe") {
                // z: pbase, np, totals, metered, credit (at 0x80), unlock (at 0xa0) - read by
                // offset: two more Solidity locals here are a stack-too-deep error (legacy codegen)
                let credit := mload(add(z, 0x80))
                let unlock := mload(add(z, 0xa0))
                let cs := add(credit, shl(5, add(s, 1)))
                mstore(cs, add(mload(cs), paid))
                let cy := add(credit, shl(5, add(y, 1)))
                mstore(cy, add(mload(cy), sub(escrow, paid)))
                let uy := add(unlock, shl(5, add(y, 1)))
                mstore(uy, add(mload(uy), escrow))
            }
            emit TradeSettled(id, uint64(delivered), paid, escrow - paid);
        }
    }

    /// @dev min(r_seller, r_buyer) as a fraction, r = min(1, metered / contracted) for each side.
    function _ratio(Settlement memory z, uint256 s, uint256 y) private pure returns (uint256 num, uint256 den) {
        unchecked {
            (uint256[] memory totals, uint256[] memory metered) = (z.totals, z.metered);
            uint256 sold;
            uint256 bought;
            uint256 exported;
            uint256 imported;
            assembly ("memory-safe") {
                sold := and(mload(add(totals, shl(5, add(s, 1)))), 0xffffffffffffffffffffffff)
                bought := and(shr(96, mload(add(totals, shl(5, add(y, 1))))), 0xffffffffffffffffffffffff)
                exported := and(shr(64, mload(add(metered, shl(5, add(s, 1))))), 0xffffffffffffffff)
                imported := and(mload(add(metered, shl(5, add(y, 1)))), 0xffffffffffffffff)
            }
            (num, den) = (1, 1);
            if (exported < sold) (num, den) = (exported, sold);
            if (imported < bought && imported * den < num * bought) (num, den) = (imported, bought);
        }
    }

    /// @dev One balance write per party: credit to available, unlock from locked.
    function _pay(Settlement memory z) private {
        (uint256[] memory credit, uint256[] memory unlock) = (z.credit, z.unlock);
        uint256 pbase = z.pbase;
        for (uint256 p = 0; p < z.np; ++p) {
            address wallet = _party(pbase, p);
            uint256 c;
            uint256 u;
            assembly ("memory-safe") {
                c := mload(add(credit, shl(5, add(p, 1))))
                u := mload(add(unlock, shl(5, add(p, 1))))
            }
            if (c == 0 && u == 0) continue; // not in this page
            Account memory acc = _accounts[wallet];
            _accounts[wallet] = Account(acc.available + uint128(c), acc.locked - uint128(u));
        }
    }

    /// @dev totals per party: sold Wh (bits 0..95) | bought Wh (96..191) | registry index (192..223) |
    /// seen (255). Checks every position hint against the record's address and that every party trades.
    function _aggregate(Settlement memory z, bytes[] calldata batches, uint256 pos) private pure {
        unchecked {
            z.totals = new uint256[](z.np);
            for (uint256 b = 0; b < batches.length; ++b) {
                bytes calldata batch = batches[b];
                uint256 rp = _cdPtr(batch);
                for (uint256 end = rp + batch.length; rp < end; rp += RECORD_SIZE) {
                    _addRecord(z, rp, pos);
                    pos += 4;
                }
            }
            uint256[] memory totals = z.totals;
            for (uint256 p = 0; p < z.np; ++p) {
                if (totals[p] & USED == 0) revert MarketPartyUnused(_party(z.pbase, p));
            }
        }
    }

    function _addRecord(Settlement memory z, uint256 rp, uint256 pos) private pure {
        unchecked {
            uint256 tail;
            uint256 p;
            uint256 seller;
            uint256 buyer;
            assembly ("memory-safe") {
                tail := calldataload(add(rp, 72))
                p := calldataload(pos)
                seller := shr(96, calldataload(add(rp, 32)))
                buyer := shr(96, calldataload(add(rp, 52)))
            }
            uint256 energyWh = (tail >> 128) & U64;
            uint256 s = _position(z, p >> 240, seller);
            uint256 y = _position(z, (p >> 224) & 0xffff, buyer);
            uint256[] memory totals = z.totals;
            // sums of at most 2^32 amounts below 2^64 stay below 2^96: the lanes never carry
            assembly ("memory-safe") {
                let ts := add(totals, shl(5, add(s, 1)))
                mstore(ts, or(or(add(mload(ts), energyWh), USED), shl(192, shr(224, tail))))
                let ty := add(totals, shl(5, add(y, 1)))
                mstore(ty, or(or(add(mload(ty), shl(96, energyWh)), USED), shl(192, and(shr(192, tail), 0xffffffff))))
            }
        }
    }

    function _position(Settlement memory z, uint256 pos, uint256 wallet) private pure returns (uint256) {
        unchecked {
            if (pos >= z.np || uint160(_party(z.pbase, pos)) != wallet) revert MarketPartyMissing(address(uint160(wallet)));
            return pos;
        }
    }

    /// @dev Readings of every party: metered = present (bit 128) | exportWh (bits 64..127) | importWh (0..63).
    function _loadReadings(uint64 intervalId, Settlement memory z) private view {
        unchecked {
            uint256 np = z.np;
            uint32[] memory indices = new uint32[](np);
            uint256[] memory totals = z.totals;
            for (uint256 p = 0; p < np; ++p) {
                indices[p] = uint32(totals[p] >> 192);
            }
            uint256[] memory metered = readings.meteredOf(intervalId, indices);
            z.metered = metered;
            for (uint256 p = 0; p < np; ++p) {
                if (metered[p] >> 128 == 0) {
                    uint256 deadline = _deadline(intervalId);
                    if (block.timestamp < deadline) revert MarketSettlementNotReady(intervalId, deadline);
                    break;
                }
            }
        }
    }

    // ------------------------------------------------------------------ packed calldata access

    /// @dev The 32 bytes at calldata position ptr.
    function _word(uint256 ptr) private pure returns (uint256 w) {
        assembly ("memory-safe") {
            w := calldataload(ptr)
        }
    }

    function _cdPtr(bytes calldata data) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := data.offset
        }
    }

    /// @dev Party p of the packed 20-byte addresses at calldata position pbase.
    function _party(uint256 pbase, uint256 p) private pure returns (address a) {
        assembly ("memory-safe") {
            a := shr(96, calldataload(add(pbase, mul(p, 20))))
        }
    }

    function _hashCalldata(bytes calldata data) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, data.offset, data.length)
            h := keccak256(ptr, data.length)
        }
    }

    // ------------------------------------------------------------------ views and hashing

    /// @inheritdoc IEnergyMarket
    function balanceOf(address account) external view returns (uint128 available, uint128 locked) {
        Account storage acc = _accounts[account];
        return (acc.available, acc.locked);
    }

    /// @inheritdoc IEnergyMarket
    function filledOf(address trader, uint64 nonce) external view returns (uint64 filledWh, bool cancelled) {
        uint256 lane = (_fills[trader][nonce >> 2] >> ((uint256(nonce) & 3) * 64)) & LANE_MASK;
        if (lane == CANCELLED) return (0, true);
        return (uint64(lane), false);
    }

    /// @inheritdoc IEnergyMarket
    function intervalOf(uint64 intervalId) external view returns (IntervalState memory) {
        return _intervals[intervalId];
    }

    /// @inheritdoc IEnergyMarket
    function commitmentOf(uint64 intervalId, uint256 batchIndex) external view returns (bytes32) {
        return _commitments[intervalId][batchIndex];
    }

    /// @inheritdoc IEnergyMarket
    function orderHash(Order calldata order) external view returns (bytes32) {
        return _orderDigest(order);
    }

    /// @inheritdoc IEnergyMarket
    function tradeIdOf(Order calldata sell, Order calldata buy) external view returns (bytes32) {
        return keccak256(abi.encode(_orderDigest(sell), _orderDigest(buy)));
    }

    /// @inheritdoc IEnergyMarket
    function attestationDigest(GridAttestation calldata a) external view returns (bytes32) {
        return _attestationDigest(
            a.intervalId,
            a.batchIndex,
            a.batchCount,
            [
                keccak256(abi.encodePacked(a.tradeIds)),
                keccak256(abi.encodePacked(a.energyWh)),
                keccak256(abi.encodePacked(a.pricePerKWh)),
                keccak256(abi.encodePacked(a.verdicts))
            ],
            a.evidenceHash
        );
    }

    /// @inheritdoc IEnergyMarket
    function packOrder(Order calldata o, bytes32 r, bytes32 vs) external pure returns (bytes memory) {
        return abi.encodePacked(
            o.trader, o.side, o.intervalId, o.energyWh, o.pricePerKWh, o.nonce, o.expiry, o.counterparty, r, vs
        );
    }

    /// @inheritdoc IEnergyMarket
    function packTrade(uint16 sellOrder, uint16 buyOrder, uint64 energyWh, uint128 pricePerKWh, uint8 verdict)
        external
        pure
        returns (bytes memory)
    {
        return abi.encodePacked(sellOrder, buyOrder, energyWh, pricePerKWh, verdict);
    }

    /// @inheritdoc IEnergyMarket
    function escrowOf(uint64 energyWh, uint128 pricePerKWh) external pure returns (uint256) {
        return _escrow(energyWh, pricePerKWh);
    }

    /// @inheritdoc IEnergyMarket
    function settlementDeadline(uint64 intervalId) external view returns (uint256) {
        return _deadline(intervalId);
    }

    /// @inheritdoc IEnergyMarket
    function gateClosure(uint64 intervalId) external view returns (uint256) {
        return _gateClosure(intervalId);
    }

    /// @inheritdoc IEnergyMarket
    function reclaimAfter(uint64 intervalId) external view returns (uint256) {
        return _reclaimAfter(intervalId);
    }

    function _deadline(uint64 intervalId) private view returns (uint256) {
        return (uint256(intervalId) + 1) * intervalSeconds + settlementDelaySeconds;
    }

    function _gateClosure(uint64 intervalId) private view returns (uint256) {
        uint256 start = uint256(intervalId) * intervalSeconds;
        return start > gateLeadSeconds ? start - gateLeadSeconds : 0;
    }

    function _reclaimAfter(uint64 intervalId) private view returns (uint256) {
        return _deadline(intervalId) + settlementDelaySeconds;
    }

    /// @dev Escrow of a trade: its value rounded up to whole token base units. Callers pass a 64-bit
    /// amount and a 128-bit price, so the product cannot overflow.
    function _escrow(uint256 energyWh, uint256 pricePerKWh) private pure returns (uint256) {
        unchecked {
            return (energyWh * pricePerKWh + 999) / 1000;
        }
    }

    function _orderDigest(Order calldata o) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    ORDER_TYPEHASH,
                    o.trader,
                    o.side,
                    o.intervalId,
                    o.energyWh,
                    o.pricePerKWh,
                    o.nonce,
                    o.expiry,
                    o.counterparty
                )
            )
        );
    }

    /// @dev The GridAttestation digest from the EIP-712 hashes of its four arrays (tradeIds, energyWh,
    /// pricePerKWh, verdicts: keccak256 of the 32-byte elements), so the recording path can hash its arrays
    /// where they lie in memory.
    function _attestationDigest(
        uint64 intervalId,
        uint256 batchIndex,
        uint256 batchCount,
        bytes32[4] memory arrayHashes,
        bytes32 evidenceHash
    ) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    ATTESTATION_TYPEHASH,
                    intervalId,
                    batchIndex,
                    batchCount,
                    arrayHashes[0],
                    arrayHashes[1],
                    arrayHashes[2],
                    arrayHashes[3],
                    evidenceHash
                )
            )
        );
    }
}
