// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
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
    uint256 internal constant RECORD_SIZE = 224; // one ABI-encoded TradeRecord: 7 words

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

    /// @dev Per-trader totals of an interval during settlement.
    struct Party {
        address wallet;
        uint32 index;
        uint256 soldWh;
        uint256 boughtWh;
        uint256 exportWh;
        uint256 importWh;
        uint256 credit;
        uint256 unlock;
    }

    /// @dev Hashes of a batch computed before the attestation check.
    struct BatchHashes {
        bytes32[] orderHashes;
        bytes32[] ids;
        uint8[] verdicts;
        uint256 approved;
    }

    /// @dev Per-order state while a batch is recorded.
    struct Fills {
        bool[] used;
        uint64[] remaining;
        uint64[] delta;
        uint32[] index;
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
    function recordTrades(
        uint64 intervalId,
        SignedOrder[] calldata orders,
        Trade[] calldata trades,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment) {
        if (!registry.hasRole(MARKET_OPERATOR_ROLE, msg.sender)) revert MarketNotOperator(msg.sender);
        uint256 n = trades.length;
        if (n == 0) revert MarketEmptyBatch();
        IntervalState storage st = _intervals[intervalId];
        if (st.settled) revert MarketIntervalSettled(intervalId);

        BatchHashes memory h = _hashBatch(orders, trades, st.lastTradeId);
        _checkAttestation(intervalId, h.ids, h.verdicts, evidenceHash, validatorSignature);
        commitment = _recordApproved(intervalId, orders, trades, h);
        uint32 batchIndex = st.batchCount;
        _commitments[intervalId][batchIndex] = commitment;
        st.lastTradeId = h.ids[n - 1];
        st.batchCount = batchIndex + 1;
        st.approvedCount += uint32(h.approved);
        emit BatchRecorded(intervalId, batchIndex, commitment, uint32(h.approved), evidenceHash);
    }

    /// @dev Order digests, trade ids and verdicts of a batch; checks that the ids ascend past `last`.
    function _hashBatch(SignedOrder[] calldata orders, Trade[] calldata trades, bytes32 last)
        private
        view
        returns (BatchHashes memory h)
    {
        uint256 n = trades.length;
        uint256 m = orders.length;
        h.orderHashes = new bytes32[](m);
        for (uint256 o = 0; o < m; ++o) {
            h.orderHashes[o] = _orderDigest(orders[o].order);
        }
        h.ids = new bytes32[](n);
        h.verdicts = new uint8[](n);
        for (uint256 i = 0; i < n; ++i) {
            Trade calldata t = trades[i];
            if (t.sellOrder >= m) revert MarketOrderIndexOutOfRange(t.sellOrder);
            if (t.buyOrder >= m) revert MarketOrderIndexOutOfRange(t.buyOrder);
            bytes32 id = keccak256(abi.encode(h.orderHashes[t.sellOrder], h.orderHashes[t.buyOrder]));
            if (id <= last) revert MarketTradeOutOfOrder(id, last);
            last = id;
            h.ids[i] = id;
            h.verdicts[i] = t.verdict;
            if (t.verdict == 0) ++h.approved;
        }
    }

    function _checkAttestation(
        uint64 intervalId,
        bytes32[] memory ids,
        uint8[] memory verdicts,
        bytes32 evidenceHash,
        bytes calldata signature
    ) private view {
        bytes32 digest = _attestationDigest(intervalId, ids, verdicts, evidenceHash);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError) signer = address(0);
        if (signer == address(0) || !registry.hasRole(VALIDATOR_ROLE, signer)) {
            revert MarketInvalidValidatorSignature(signer);
        }
    }

    /// @dev Vetoes are only announced; approved trades are checked, filled, escrowed and committed.
    /// Each order is verified (signature, expiry, interval, active trader, cancellation) on first use and
    /// its fill lane written once at the end, however many trades it is in.
    function _recordApproved(
        uint64 intervalId,
        SignedOrder[] calldata orders,
        Trade[] calldata trades,
        BatchHashes memory h
    ) private returns (bytes32 commitment) {
        Fills memory f;
        f.used = new bool[](orders.length);
        f.remaining = new uint64[](orders.length);
        f.delta = new uint64[](orders.length);
        f.index = new uint32[](orders.length);
        bytes memory buf = new bytes(h.approved * RECORD_SIZE);
        uint256 k;
        for (uint256 i = 0; i < trades.length; ++i) {
            if (h.verdicts[i] != 0) {
                emit TradeVetoed(h.ids[i], h.verdicts[i]);
                continue;
            }
            _recordOne(intervalId, orders, trades[i], h, i, f);
            _writeRecord(buf, k++, h.ids[i], orders, trades[i], f);
        }
        for (uint256 o = 0; o < orders.length; ++o) {
            if (f.used[o]) _commitFill(orders[o].order, f.delta[o]);
        }
        commitment = keccak256(buf);
    }

    function _recordOne(
        uint64 intervalId,
        SignedOrder[] calldata orders,
        Trade calldata t,
        BatchHashes memory h,
        uint256 i,
        Fills memory f
    ) private {
        bytes32 id = h.ids[i];
        Order calldata s = orders[t.sellOrder].order;
        Order calldata b = orders[t.buyOrder].order;
        if (s.side != SELL) revert MarketOrderWrongSide(id, SELL);
        if (b.side != BUY) revert MarketOrderWrongSide(id, BUY);
        if (s.trader == b.trader) revert MarketSelfTrade(id);
        if (t.energyWh == 0) revert MarketZeroTradeAmount(id);
        if (t.pricePerKWh < s.pricePerKWh || t.pricePerKWh > b.pricePerKWh) {
            revert MarketPriceOutOfRange(id, t.pricePerKWh);
        }
        if (s.counterparty != address(0) && s.counterparty != b.trader) {
            revert MarketCounterpartyMismatch(s.trader, s.nonce, s.counterparty);
        }
        if (b.counterparty != address(0) && b.counterparty != s.trader) {
            revert MarketCounterpartyMismatch(b.trader, b.nonce, b.counterparty);
        }
        if (!f.used[t.sellOrder]) _useOrder(intervalId, orders[t.sellOrder], h.orderHashes[t.sellOrder], id, t.sellOrder, f);
        if (!f.used[t.buyOrder]) _useOrder(intervalId, orders[t.buyOrder], h.orderHashes[t.buyOrder], id, t.buyOrder, f);
        _take(s, t.sellOrder, t.energyWh, f);
        _take(b, t.buyOrder, t.energyWh, f);
        uint256 escrow = _escrow(t.energyWh, t.pricePerKWh);
        Account memory acc = _accounts[b.trader];
        if (acc.available < escrow) revert MarketInsufficientBalance(b.trader, acc.available, escrow);
        _accounts[b.trader] = Account(acc.available - uint128(escrow), acc.locked + uint128(escrow));
        emit TradeRecorded(id, s.trader, b.trader, t.energyWh, t.pricePerKWh);
    }

    /// @dev First use of an order in a batch: interval, expiry, signature, active trader, fill state.
    function _useOrder(
        uint64 intervalId,
        SignedOrder calldata so,
        bytes32 digest,
        bytes32 tradeId,
        uint256 o,
        Fills memory f
    ) private view {
        Order calldata order = so.order;
        if (order.intervalId != intervalId) revert MarketOrderIntervalMismatch(tradeId, order.intervalId);
        if (block.timestamp > order.expiry) revert MarketOrderExpired(order.trader, order.nonce, order.expiry);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, so.r, so.vs);
        if (err != ECDSA.RecoverError.NoError || signer != order.trader) {
            revert MarketInvalidOrderSignature(order.trader, order.nonce);
        }
        (bool active, uint32 index) = registry.stateOf(order.trader);
        if (!active) revert MarketParticipantInactive(order.trader);
        uint256 filled = (_fills[order.trader][order.nonce >> 2] >> ((uint256(order.nonce) & 3) * 64)) & LANE_MASK;
        if (filled == CANCELLED) revert MarketOrderCancelled(order.trader, order.nonce);
        f.remaining[o] = filled >= order.energyWh ? 0 : uint64(order.energyWh - filled);
        f.index[o] = index;
        f.used[o] = true;
    }

    function _take(Order calldata order, uint256 o, uint64 energyWh, Fills memory f) private pure {
        uint64 remaining = f.remaining[o];
        if (energyWh > remaining) revert MarketOrderOverfilled(order.trader, order.nonce, remaining);
        f.remaining[o] = remaining - energyWh;
        f.delta[o] += energyWh;
    }

    /// @dev Adds a batch's fills to the (trader, nonce) lane; re-checks against the lane as stored, which
    /// also catches two orders of one batch sharing a nonce.
    function _commitFill(Order calldata order, uint64 delta) private {
        (uint256 word, uint256 shift) = (order.nonce >> 2, (uint256(order.nonce) & 3) * 64);
        uint256 lanes = _fills[order.trader][word];
        uint256 filled = (lanes >> shift) & LANE_MASK;
        if (filled + delta > order.energyWh) {
            revert MarketOrderOverfilled(order.trader, order.nonce, filled >= order.energyWh ? 0 : uint64(order.energyWh - filled));
        }
        _fills[order.trader][word] = lanes + (uint256(delta) << shift);
    }

    /// @dev Appends the 7-word ABI encoding of the trade's TradeRecord to the commitment buffer.
    function _writeRecord(
        bytes memory buf,
        uint256 k,
        bytes32 id,
        SignedOrder[] calldata orders,
        Trade calldata t,
        Fills memory f
    ) private pure {
        address seller = orders[t.sellOrder].order.trader;
        address buyer = orders[t.buyOrder].order.trader;
        uint256 si = f.index[t.sellOrder];
        uint256 bi = f.index[t.buyOrder];
        uint256 energyWh = t.energyWh;
        uint256 price = t.pricePerKWh;
        assembly ("memory-safe") {
            let ptr := add(add(buf, 32), mul(k, 224))
            mstore(ptr, id)
            mstore(add(ptr, 32), seller)
            mstore(add(ptr, 64), buyer)
            mstore(add(ptr, 96), si)
            mstore(add(ptr, 128), bi)
            mstore(add(ptr, 160), energyWh)
            mstore(add(ptr, 192), price)
        }
    }

    // ------------------------------------------------------------------ settlement

    /// @inheritdoc IEnergyMarket
    function settle(
        uint64 intervalId,
        TradeRecord[][] calldata batches,
        address[] calldata parties,
        uint32[] calldata positions
    ) external {
        IntervalState storage st = _intervals[intervalId];
        if (st.settled) revert MarketIntervalSettled(intervalId);
        uint256 nb = st.batchCount;
        if (nb == 0) revert MarketIntervalNotRecorded(intervalId);
        if (batches.length != nb) revert MarketBatchCountMismatch(intervalId, nb, batches.length);
        for (uint256 b = 0; b < nb; ++b) {
            if (_hashRecords(batches[b]) != _commitments[intervalId][b]) {
                revert MarketBatchCommitmentMismatch(intervalId, b);
            }
        }
        if (positions.length != 2 * uint256(st.approvedCount)) {
            revert MarketPositionsMismatch(2 * uint256(st.approvedCount), positions.length);
        }
        for (uint256 p = 1; p < parties.length; ++p) {
            if (parties[p] <= parties[p - 1]) revert MarketPartiesNotSorted(p);
        }
        st.settled = true;

        Party[] memory ps = _aggregate(batches, parties, positions);
        _loadReadings(intervalId, ps);
        uint256 j;
        for (uint256 b = 0; b < nb; ++b) {
            TradeRecord[] calldata batch = batches[b];
            for (uint256 i = 0; i < batch.length; ++i) {
                _settleOne(batch[i], ps[positions[j]], ps[positions[j + 1]]);
                j += 2;
            }
        }
        for (uint256 p = 0; p < ps.length; ++p) {
            Party memory party = ps[p];
            Account storage acc = _accounts[party.wallet];
            (uint128 available, uint128 locked) = (acc.available, acc.locked);
            (acc.available, acc.locked) = (available + uint128(party.credit), locked - uint128(party.unlock));
        }
        emit IntervalSettled(intervalId, uint32(j / 2));
    }

    /// @dev keccak256 of a committed batch straight from calldata (the records are static 7-word structs).
    function _hashRecords(TradeRecord[] calldata batch) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let len := mul(batch.length, 224)
            let ptr := mload(0x40)
            calldatacopy(ptr, batch.offset, len)
            h := keccak256(ptr, len)
        }
    }

    function _aggregate(TradeRecord[][] calldata batches, address[] calldata parties, uint32[] calldata positions)
        private
        pure
        returns (Party[] memory ps)
    {
        ps = new Party[](parties.length);
        uint256 j;
        for (uint256 b = 0; b < batches.length; ++b) {
            TradeRecord[] calldata batch = batches[b];
            for (uint256 i = 0; i < batch.length; ++i) {
                TradeRecord calldata t = batch[i];
                Party memory seller = _party(ps, parties, positions[j], t.seller);
                seller.index = t.sellerIndex;
                seller.soldWh += t.energyWh;
                Party memory buyer = _party(ps, parties, positions[j + 1], t.buyer);
                buyer.index = t.buyerIndex;
                buyer.boughtWh += t.energyWh;
                j += 2;
            }
        }
        for (uint256 p = 0; p < ps.length; ++p) {
            if (ps[p].wallet == address(0)) revert MarketPartyUnused(parties[p]);
        }
    }

    function _party(Party[] memory ps, address[] calldata parties, uint256 pos, address wallet)
        private
        pure
        returns (Party memory party)
    {
        if (pos >= parties.length || parties[pos] != wallet) revert MarketPartyMissing(wallet);
        party = ps[pos];
        party.wallet = wallet;
    }

    function _loadReadings(uint64 intervalId, Party[] memory ps) private view {
        uint32[] memory indices = new uint32[](ps.length);
        for (uint256 p = 0; p < ps.length; ++p) {
            indices[p] = ps[p].index;
        }
        (uint64[] memory importWh, uint64[] memory exportWh, bool[] memory present) =
            readings.readingsOf(intervalId, indices);
        bool complete = true;
        for (uint256 p = 0; p < ps.length; ++p) {
            ps[p].importWh = importWh[p];
            ps[p].exportWh = exportWh[p];
            if (!present[p]) complete = false;
        }
        uint256 deadline = _deadline(intervalId);
        if (!complete && block.timestamp < deadline) revert MarketSettlementNotReady(intervalId, deadline);
    }

    function _settleOne(TradeRecord calldata t, Party memory seller, Party memory buyer) private {
        // r = min(1, metered / contracted) for each side, as a fraction; take the smaller one.
        (uint256 num, uint256 den) = (1, 1);
        if (seller.exportWh < seller.soldWh) (num, den) = (seller.exportWh, seller.soldWh);
        if (buyer.importWh < buyer.boughtWh && buyer.importWh * den < num * buyer.boughtWh) {
            (num, den) = (buyer.importWh, buyer.boughtWh);
        }
        uint256 energyWh = t.energyWh;
        uint256 price = t.pricePerKWh;
        uint256 delivered = (energyWh * num) / den;
        uint256 escrow = (energyWh * price + 999) / 1000;
        uint256 paid = (delivered * price) / 1000;
        seller.credit += paid;
        buyer.credit += escrow - paid;
        buyer.unlock += escrow;
        emit TradeSettled(t.tradeId, uint64(delivered), paid, escrow - paid);
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
