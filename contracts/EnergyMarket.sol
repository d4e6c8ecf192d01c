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
    bytes32 public constant ATTESTATION_TYPEHASH =
        keccak256("GridAttestation(uint64 intervalId,bytes32[] tradeIds,uint8[] verdicts,bytes32 evidenceHash)");

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

    // available and locked escrow share one slot: recording a trade touches the buyer once.
    mapping(address account => Account) private _accounts;
    // Fill state of (trader, nonce): four 64-bit lanes (filled Wh, or CANCELLED) per slot, so a trader's
    // consecutive nonces mostly write an already non-zero slot (5,000 gas instead of 22,100).
    mapping(address trader => mapping(uint256 word => uint256 lanes)) private _fills;
    mapping(uint64 intervalId => IntervalState) private _intervals;
    // One commitment per recorded batch instead of storage per trade; settle re-supplies the trades.
    mapping(uint64 intervalId => mapping(uint256 batchIndex => bytes32)) private _commitments;

    /// @dev A batch while it is recorded: hashes first (the attestation covers ids and verdicts), then
    /// one word per order: remaining Wh (bits 0..63) | filled by this batch (64..127) | registry index
    /// (128..159) | verified (bit 255); states: the registry's word per trader. Words instead of structs keep memory small.
    struct Batch {
        bytes32 domain;
        bytes32[] digests;
        bytes32[] ids;
        uint256[] verdicts;
        uint256[] work;
        uint256[] states;
        uint256 approved;
    }

    /// @dev An interval while it is settled: per party its totals (see `_aggregate`), readings, and what its
    /// balance gains (credit) and releases from escrow (unlock).
    struct Settlement {
        uint256[] totals;
        uint64[] importWh;
        uint64[] exportWh;
        uint256[] credit;
        uint256[] unlock;
    }

    /// @param token_ Any ERC-20 used for payment.
    /// @param registry_ Roles and participants.
    /// @param readings_ Meter readings; its interval length is the market's.
    /// @param settlementDelaySeconds_ Time after an interval's end until missing readings count as zero.
    constructor(IERC20 token_, IParticipantRegistry registry_, IMeterReadings readings_, uint64 settlementDelaySeconds_)
        EIP712("tegrid EnergyMarket", "1")
    {
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
    /// @dev Packed calldata instead of ABI struct arrays: no decoder loops, no per-order memory structs;
    /// signatures through the ecrecover precompile (EIP-2098, low s); the batch's traders read from the
    /// registry in one call.
    function recordTrades(
        uint64 intervalId,
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
        if (st.settled) revert MarketIntervalSettled(intervalId);

        Batch memory bt = _hashBatch(orders, trades, st.lastTradeId);
        _checkAttestation(intervalId, bt.ids, bt.verdicts, evidenceHash, validatorSignature);
        commitment = _recordApproved(intervalId, orders, trades, bt);
        uint32 batchIndex = st.batchCount;
        _commitments[intervalId][batchIndex] = commitment;
        st.lastTradeId = bt.ids[bt.ids.length - 1];
        st.batchCount = batchIndex + 1;
        st.approvedCount += uint32(bt.approved);
        emit BatchRecorded(intervalId, batchIndex, commitment, uint32(bt.approved), evidenceHash);
    }

    /// @dev Order digests, trade ids and verdicts of a batch; checks that the ids ascend past `last`.
    function _hashBatch(bytes calldata orders, bytes calldata trades, bytes32 last)
        private
        view
        returns (Batch memory bt)
    {
        uint256 m = orders.length / ORDER_SIZE;
        uint256 n = trades.length / TRADE_SIZE;
        bt.domain = _domainSeparatorV4();
        bt.digests = new bytes32[](m);
        bt.work = new uint256[](m);
        for (uint256 o = 0; o < m; ++o) {
            bt.digests[o] = _orderDigestAt(_orderPtr(orders, o), bt.domain);
        }
        bt.ids = new bytes32[](n);
        bt.verdicts = new uint256[](n);
        uint256 approved;
        for (uint256 i = 0; i < n; ++i) {
            uint256 tp = _tradePtr(trades, i);
            (uint256 so, uint256 bo) = (_load(tp, 0, 16), _load(tp, 2, 16));
            if (so >= m) revert MarketOrderIndexOutOfRange(so);
            if (bo >= m) revert MarketOrderIndexOutOfRange(bo);
            bytes32 id = _pairId(bt.digests[so], bt.digests[bo]);
            if (id <= last) revert MarketTradeOutOfOrder(id, last);
            last = id;
            bt.ids[i] = id;
            uint256 verdict = _load(tp, 28, 8);
            bt.verdicts[i] = verdict;
            if (verdict == 0) ++approved;
        }
        bt.approved = approved;
    }

    function _checkAttestation(
        uint64 intervalId,
        bytes32[] memory ids,
        uint256[] memory verdicts,
        bytes32 evidenceHash,
        bytes calldata signature
    ) private view {
        bytes32 digest = _hashTypedDataV4(
            keccak256(
                abi.encode(
                    ATTESTATION_TYPEHASH,
                    intervalId,
                    keccak256(abi.encodePacked(ids)),
                    keccak256(abi.encodePacked(verdicts)),
                    evidenceHash
                )
            )
        );
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError) signer = address(0);
        if (signer == address(0) || !registry.hasRole(VALIDATOR_ROLE, signer)) {
            revert MarketInvalidValidatorSignature(signer);
        }
    }

    /// @dev Vetoes are only announced; approved trades are checked, filled, escrowed and committed.
    /// Each order is verified (signature, expiry, interval, active trader, cancellation) on first use and
    /// its fill lane written once at the end, however many trades it is in.
    function _recordApproved(uint64 intervalId, bytes calldata orders, bytes calldata trades, Batch memory bt)
        private
        returns (bytes32 commitment)
    {
        bt.states = _traderStates(orders);
        bytes memory buf = new bytes(bt.approved * RECORD_SIZE);
        uint256 out;
        assembly ("memory-safe") {
            out := add(buf, 32)
        }
        for (uint256 i = 0; i < bt.ids.length; ++i) {
            if (bt.verdicts[i] != 0) {
                emit TradeVetoed(bt.ids[i], uint8(bt.verdicts[i]));
                continue;
            }
            _recordOne(intervalId, orders, _tradePtr(trades, i), bt, i, out);
            out += RECORD_SIZE;
        }
        uint256 m = bt.work.length;
        for (uint256 o = 0; o < m; ++o) {
            uint256 w = bt.work[o];
            if (w & USED != 0) _commitFill(_orderPtr(orders, o), (w >> 64) & U64);
        }
        commitment = keccak256(buf);
    }

    /// @dev One registry call for every trader of the batch.
    function _traderStates(bytes calldata orders) private view returns (uint256[] memory) {
        uint256 m = orders.length / ORDER_SIZE;
        address[] memory traders = new address[](m);
        for (uint256 o = 0; o < m; ++o) {
            traders[o] = address(uint160(_load(_orderPtr(orders, o), 0, 160)));
        }
        return registry.statesOf(traders);
    }

    function _recordOne(uint64 intervalId, bytes calldata orders, uint256 tp, Batch memory bt, uint256 i, uint256 out)
        private
    {
        (uint256 so, uint256 bo) = (_load(tp, 0, 16), _load(tp, 2, 16));
        (address seller, address buyer) = _checkPair(bt.ids[i], _orderPtr(orders, so), _orderPtr(orders, bo), tp);
        _fill(intervalId, _orderPtr(orders, so), bt, so, bt.ids[i], _load(tp, 4, 64));
        _fill(intervalId, _orderPtr(orders, bo), bt, bo, bt.ids[i], _load(tp, 4, 64));
        _lockEscrow(buyer, _load(tp, 4, 64), _load(tp, 12, 128));
        emit TradeRecorded(bt.ids[i], seller, buyer, uint64(_load(tp, 4, 64)), uint128(_load(tp, 12, 128)));
        // the 104-byte trade record: id | seller | buyer | sellerIndex | buyerIndex | energyWh | price
        uint256 tail = (((bt.work[so] >> 128) & U32) << 224) | (((bt.work[bo] >> 128) & U32) << 192)
            | (_load(tp, 4, 192) & (U64 << 128 | U128));
        bytes32 id = bt.ids[i];
        assembly ("memory-safe") {
            mstore(out, id)
            mstore(add(out, 32), shl(96, seller))
            mstore(add(out, 52), shl(96, buyer))
            mstore(add(out, 72), tail)
        }
    }

    function _lockEscrow(address buyer, uint256 energyWh, uint256 price) private {
        uint256 escrow = (energyWh * price + 999) / 1000;
        Account memory acc = _accounts[buyer];
        if (acc.available < escrow) revert MarketInsufficientBalance(buyer, acc.available, escrow);
        _accounts[buyer] = Account(acc.available - uint128(escrow), acc.locked + uint128(escrow));
    }

    /// @dev The checks of a trade that need no state: sides, self-trade, amount, price, counterparties.
    function _checkPair(bytes32 id, uint256 sp, uint256 bp, uint256 tp)
        private
        pure
        returns (address seller, address buyer)
    {
        (uint256 energyWh, uint256 price) = (_load(tp, 4, 64), _load(tp, 12, 128));
        seller = address(uint160(_load(sp, 0, 160)));
        buyer = address(uint160(_load(bp, 0, 160)));
        if (_load(sp, 20, 8) != SELL) revert MarketOrderWrongSide(id, SELL);
        if (_load(bp, 20, 8) != BUY) revert MarketOrderWrongSide(id, BUY);
        if (seller == buyer) revert MarketSelfTrade(id);
        if (energyWh == 0) revert MarketZeroTradeAmount(id);
        if (price < _load(sp, 37, 128) || price > _load(bp, 37, 128)) {
            revert MarketPriceOutOfRange(id, uint128(price));
        }
        _checkCounterparty(sp, buyer);
        _checkCounterparty(bp, seller);
    }

    /// @dev Verifies the order on its first use in the batch, then takes `energyWh` of what is left of it.
    function _fill(uint64 intervalId, uint256 op, Batch memory bt, uint256 o, bytes32 id, uint256 energyWh)
        private
        view
    {
        if (bt.work[o] & USED == 0) _useOrder(intervalId, op, bt, o, id);
        uint256 w = bt.work[o];
        uint256 remaining = w & U64;
        if (energyWh > remaining) {
            revert MarketOrderOverfilled(
                address(uint160(_load(op, 0, 160))), uint64(_load(op, 53, 64)), uint64(remaining)
            );
        }
        // remaining -= energyWh; filled-by-this-batch += energyWh (cannot carry: both stay below 2^64)
        bt.work[o] = w - energyWh + (energyWh << 64);
    }

    function _checkCounterparty(uint256 op, address other) private pure {
        address counterparty = address(uint160(_load(op, 69, 160)));
        if (counterparty != address(0) && counterparty != other) {
            revert MarketCounterpartyMismatch(
                address(uint160(_load(op, 0, 160))), uint64(_load(op, 53, 64)), counterparty
            );
        }
    }

    /// @dev First use of an order in a batch: interval, expiry, signature, active trader, fill state.
    function _useOrder(uint64 intervalId, uint256 op, Batch memory bt, uint256 o, bytes32 tradeId) private view {
        uint256 state = bt.states[o];
        address trader = address(uint160(_load(op, 0, 160)));
        uint64 nonce = uint64(_load(op, 53, 64));
        uint64 orderInterval = uint64(_load(op, 21, 64));
        if (orderInterval != intervalId) revert MarketOrderIntervalMismatch(tradeId, orderInterval);
        uint64 expiry = uint64(_load(op, 61, 64));
        if (block.timestamp > expiry) revert MarketOrderExpired(trader, nonce, expiry);
        address signer = CompactSignature.recover(bt.digests[o], bytes32(_load(op, 89, 256)), bytes32(_load(op, 121, 256)));
        if (signer == address(0) || signer != trader) revert MarketInvalidOrderSignature(trader, nonce);
        if (state & (1 << 32) == 0) revert MarketParticipantInactive(trader);
        uint256 filled = (_fills[trader][nonce >> 2] >> ((uint256(nonce) & 3) * 64)) & LANE_MASK;
        if (filled == CANCELLED) revert MarketOrderCancelled(trader, nonce);
        uint256 energyWh = _load(op, 29, 64);
        uint256 remaining = filled >= energyWh ? 0 : energyWh - filled;
        bt.work[o] = USED | ((state & U32) << 128) | remaining;
    }

    /// @dev Adds a batch's fills to the (trader, nonce) lane; re-checks against the lane as stored, which
    /// also catches two orders of one batch sharing a nonce.
    function _commitFill(uint256 op, uint256 delta) private {
        address trader = address(uint160(_load(op, 0, 160)));
        uint64 nonce = uint64(_load(op, 53, 64));
        uint256 energyWh = _load(op, 29, 64);
        (uint256 word, uint256 shift) = (nonce >> 2, (uint256(nonce) & 3) * 64);
        uint256 lanes = _fills[trader][word];
        uint256 filled = (lanes >> shift) & LANE_MASK;
        if (filled + delta > energyWh) {
            revert MarketOrderOverfilled(trader, nonce, filled >= energyWh ? 0 : uint64(energyWh - filled));
        }
        _fills[trader][word] = lanes + (delta << shift);
    }

    // ------------------------------------------------------------------ settlement

    /// @inheritdoc IEnergyMarket
    /// @dev Per party three memory words (totals, credit, unlock) instead of an 8-word struct; one balance
    /// write per party.
    function settle(uint64 intervalId, bytes[] calldata batches, bytes calldata parties, bytes calldata positions)
        external
    {
        IntervalState storage st = _intervals[intervalId];
        if (st.settled) revert MarketIntervalSettled(intervalId);
        uint256 nb = st.batchCount;
        if (nb == 0) revert MarketIntervalNotRecorded(intervalId);
        if (batches.length != nb) revert MarketBatchCountMismatch(intervalId, nb, batches.length);
        for (uint256 b = 0; b < nb; ++b) {
            bytes calldata batch = batches[b];
            if (batch.length % RECORD_SIZE != 0) revert MarketMalformedCalldata(FIELD_RECORDS, batch.length);
            if (_hashCalldata(batch) != _commitments[intervalId][b]) {
                revert MarketBatchCommitmentMismatch(intervalId, b);
            }
        }
        if (positions.length % 2 != 0) revert MarketMalformedCalldata(FIELD_POSITIONS, positions.length);
        if (positions.length / 2 != 2 * uint256(st.approvedCount)) {
            revert MarketPositionsMismatch(2 * uint256(st.approvedCount), positions.length / 2);
        }
        if (parties.length % 20 != 0) revert MarketMalformedCalldata(FIELD_PARTIES, parties.length);
        uint256 np = parties.length / 20;
        for (uint256 p = 1; p < np; ++p) {
            if (_party(parties, p) <= _party(parties, p - 1)) revert MarketPartiesNotSorted(p);
        }
        st.settled = true;

        Settlement memory z;
        z.totals = _aggregate(batches, parties, positions);
        (z.importWh, z.exportWh) = _loadReadings(intervalId, z.totals);
        z.credit = new uint256[](np);
        z.unlock = new uint256[](np);
        uint256 pos = _cdPtr(positions);
        for (uint256 b = 0; b < nb; ++b) {
            bytes calldata batch = batches[b];
            uint256 rp = _cdPtr(batch);
            for (uint256 end = rp + batch.length; rp < end; rp += RECORD_SIZE) {
                _settleOne(z, rp, pos);
                pos += 4;
            }
        }
        for (uint256 p = 0; p < np; ++p) {
            Account storage acc = _accounts[_party(parties, p)];
            (uint128 available, uint128 locked) = (acc.available, acc.locked);
            (acc.available, acc.locked) = (available + uint128(z.credit[p]), locked - uint128(z.unlock[p]));
        }
        emit IntervalSettled(intervalId, st.approvedCount);
    }

    /// @dev The record at calldata position rp, its parties at positions pos and pos + 2.
    function _settleOne(Settlement memory z, uint256 rp, uint256 pos) private {
        (uint256 s, uint256 y) = (_load(pos, 0, 16), _load(pos, 2, 16));
        (uint256 num, uint256 den) = _ratio(z, s, y);
        uint256 tail = _load(rp, 72, 256);
        (uint256 energyWh, uint256 price) = ((tail >> 128) & U64, tail & U128);
        uint256 delivered = (energyWh * num) / den;
        uint256 escrow = (energyWh * price + 999) / 1000;
        uint256 paid = (delivered * price) / 1000;
        z.credit[s] += paid;
        z.credit[y] += escrow - paid;
        z.unlock[y] += escrow;
        emit TradeSettled(bytes32(_load(rp, 0, 256)), uint64(delivered), paid, escrow - paid);
    }

    /// @dev min(r_seller, r_buyer) as a fraction, r = min(1, metered / contracted) for each side.
    function _ratio(Settlement memory z, uint256 s, uint256 y) private pure returns (uint256 num, uint256 den) {
        (num, den) = (1, 1);
        (uint256 sold, uint256 bought) = (z.totals[s] & U64, (z.totals[y] >> 64) & U64);
        (uint256 exported, uint256 imported) = (z.exportWh[s], z.importWh[y]);
        if (exported < sold) (num, den) = (exported, sold);
        if (imported < bought && imported * den < num * bought) (num, den) = (imported, bought);
    }

    /// @dev Per party: sold Wh (bits 0..63) | bought Wh (64..127) | registry index (128..159) | seen (255).
    /// Checks every position hint against the record's address and that every listed party trades.
    function _aggregate(bytes[] calldata batches, bytes calldata parties, bytes calldata positions)
        private
        pure
        returns (uint256[] memory totals)
    {
        uint256 np = parties.length / 20;
        totals = new uint256[](np);
        uint256 pos = _cdPtr(positions);
        for (uint256 b = 0; b < batches.length; ++b) {
            bytes calldata batch = batches[b];
            uint256 rp = _cdPtr(batch);
            uint256 end = rp + batch.length;
            for (; rp < end; rp += RECORD_SIZE) {
                _addRecord(totals, parties, rp, pos);
                pos += 4;
            }
        }
        for (uint256 p = 0; p < np; ++p) {
            if (totals[p] & USED == 0) revert MarketPartyUnused(_party(parties, p));
        }
    }

    function _addRecord(uint256[] memory totals, bytes calldata parties, uint256 rp, uint256 pos) private pure {
        uint256 tail = _load(rp, 72, 256);
        uint256 energyWh = (tail >> 128) & U64;
        uint256 np = totals.length;
        uint256 s = _position(parties, np, _load(pos, 0, 16), _load(rp, 32, 160));
        uint256 y = _position(parties, np, _load(pos, 2, 16), _load(rp, 52, 160));
        totals[s] = (totals[s] + energyWh) | USED | ((tail >> 224) << 128);
        totals[y] = (totals[y] + (energyWh << 64)) | USED | (((tail >> 192) & U32) << 128);
    }

    function _position(bytes calldata parties, uint256 np, uint256 pos, uint256 wallet)
        private
        pure
        returns (uint256)
    {
        if (pos >= np || uint160(_party(parties, pos)) != wallet) revert MarketPartyMissing(address(uint160(wallet)));
        return pos;
    }

    function _loadReadings(uint64 intervalId, uint256[] memory totals)
        private
        view
        returns (uint64[] memory importWh, uint64[] memory exportWh)
    {
        uint256 np = totals.length;
        uint32[] memory indices = new uint32[](np);
        for (uint256 p = 0; p < np; ++p) {
            indices[p] = uint32(totals[p] >> 128);
        }
        bool[] memory present;
        (importWh, exportWh, present) = readings.readingsOf(intervalId, indices);
        for (uint256 p = 0; p < np; ++p) {
            if (!present[p]) {
                uint256 deadline = _deadline(intervalId);
                if (block.timestamp < deadline) revert MarketSettlementNotReady(intervalId, deadline);
                break;
            }
        }
    }

    // ------------------------------------------------------------------ packed calldata access

    /// @dev `bits` bits (a multiple of 8, at most 256) big-endian at calldata position ptr + off.
    function _load(uint256 ptr, uint256 off, uint256 bits) private pure returns (uint256 v) {
        assembly ("memory-safe") {
            v := shr(sub(256, bits), calldataload(add(ptr, off)))
        }
    }

    function _orderPtr(bytes calldata orders, uint256 o) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := add(orders.offset, mul(o, 153))
        }
    }

    function _tradePtr(bytes calldata trades, uint256 i) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := add(trades.offset, mul(i, 29))
        }
    }

    function _cdPtr(bytes calldata data) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := data.offset
        }
    }

    function _party(bytes calldata parties, uint256 p) private pure returns (address a) {
        assembly ("memory-safe") {
            a := shr(96, calldataload(add(parties.offset, mul(p, 20))))
        }
    }

    function _hashCalldata(bytes calldata data) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            calldatacopy(ptr, data.offset, data.length)
            h := keccak256(ptr, data.length)
        }
    }

    /// @dev EIP-712 digest of the packed order at calldata position op (the Order struct hash, then
    /// "\x19\x01" || domain || structHash), as `orderHash` computes it from the struct.
    function _orderDigestAt(uint256 op, bytes32 domain) private pure returns (bytes32 digest) {
        bytes32 typeHash = ORDER_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typeHash)
            mstore(add(m, 0x20), shr(96, calldataload(op))) // trader
            mstore(add(m, 0x40), shr(248, calldataload(add(op, 20)))) // side
            mstore(add(m, 0x60), shr(192, calldataload(add(op, 21)))) // intervalId
            mstore(add(m, 0x80), shr(192, calldataload(add(op, 29)))) // energyWh
            mstore(add(m, 0xa0), shr(128, calldataload(add(op, 37)))) // pricePerKWh
            mstore(add(m, 0xc0), shr(192, calldataload(add(op, 53)))) // nonce
            mstore(add(m, 0xe0), shr(192, calldataload(add(op, 61)))) // expiry
            mstore(add(m, 0x100), shr(96, calldataload(add(op, 69)))) // counterparty
            let structHash := keccak256(m, 0x120)
            mstore(m, hex"1901")
            mstore(add(m, 0x02), domain)
            mstore(add(m, 0x22), structHash)
            digest := keccak256(m, 0x42)
        }
    }

    function _pairId(bytes32 a, bytes32 b) private pure returns (bytes32 id) {
        assembly ("memory-safe") {
            mstore(0x00, a)
            mstore(0x20, b)
            id := keccak256(0x00, 0x40)
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
    function attestationDigest(
        uint64 intervalId,
        bytes32[] calldata tradeIds,
        uint8[] calldata verdicts,
        bytes32 evidenceHash
    ) external view returns (bytes32) {
        return _attestationDigest(intervalId, tradeIds, verdicts, evidenceHash);
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

    function _deadline(uint64 intervalId) private view returns (uint256) {
        return (uint256(intervalId) + 1) * intervalSeconds + settlementDelaySeconds;
    }

    function _escrow(uint64 energyWh, uint128 pricePerKWh) private pure returns (uint256) {
        return (uint256(energyWh) * pricePerKWh + 999) / 1000;
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

    function _attestationDigest(
        uint64 intervalId,
        bytes32[] memory tradeIds,
        uint8[] memory verdicts,
        bytes32 evidenceHash
    ) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    ATTESTATION_TYPEHASH,
                    intervalId,
                    keccak256(abi.encodePacked(tradeIds)),
                    keccak256(abi.encodePacked(verdicts)),
                    evidenceHash
                )
            )
        );
    }
}
