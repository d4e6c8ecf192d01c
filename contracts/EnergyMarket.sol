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
        bytes32[] ids;
        uint8[] verdicts;
        bytes32[] sellDigests;
        bytes32[] buyDigests;
        uint256 approved;
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
        Trade[] calldata trades,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment) {
        if (!registry.hasRole(MARKET_OPERATOR_ROLE, msg.sender)) revert MarketNotOperator(msg.sender);
        uint256 n = trades.length;
        if (n == 0) revert MarketEmptyBatch();
        IntervalState storage st = _intervals[intervalId];
        if (st.settled) revert MarketIntervalSettled(intervalId);

        BatchHashes memory h = _hashBatch(trades, st.lastTradeId);
        _checkAttestation(intervalId, h.ids, h.verdicts, evidenceHash, validatorSignature);
        commitment = _recordApproved(intervalId, trades, h);
        uint32 batchIndex = st.batchCount;
        _commitments[intervalId][batchIndex] = commitment;
        st.lastTradeId = h.ids[n - 1];
        st.batchCount = batchIndex + 1;
        st.approvedCount += uint32(h.approved);
        emit BatchRecorded(intervalId, batchIndex, commitment, uint32(h.approved), evidenceHash);
    }

    /// @dev Order digests and trade ids of a batch; checks that the ids ascend past `last`.
    function _hashBatch(Trade[] calldata trades, bytes32 last) private view returns (BatchHashes memory h) {
        uint256 n = trades.length;
        h.ids = new bytes32[](n);
        h.verdicts = new uint8[](n);
        h.sellDigests = new bytes32[](n);
        h.buyDigests = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            bytes32 sd = _orderDigest(trades[i].sell.order);
            bytes32 bd = _orderDigest(trades[i].buy.order);
            bytes32 id = keccak256(abi.encode(sd, bd));
            if (id <= last) revert MarketTradeOutOfOrder(id, last);
            last = id;
            (h.ids[i], h.sellDigests[i], h.buyDigests[i]) = (id, sd, bd);
            h.verdicts[i] = trades[i].verdict;
            if (h.verdicts[i] == 0) ++h.approved;
        }
    }

    /// @dev Vetoes are only announced; approved trades are checked, filled, escrowed and committed.
    function _recordApproved(uint64 intervalId, Trade[] calldata trades, BatchHashes memory h)
        private
        returns (bytes32)
    {
        TradeRecord[] memory records = new TradeRecord[](h.approved);
        uint256 k;
        for (uint256 i = 0; i < trades.length; ++i) {
            if (h.verdicts[i] != 0) {
                emit TradeVetoed(h.ids[i], h.verdicts[i]);
                continue;
            }
            records[k++] = _recordOne(intervalId, trades[i], h.ids[i], h.sellDigests[i], h.buyDigests[i]);
        }
        return keccak256(abi.encode(records));
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

    function _recordOne(uint64 intervalId, Trade calldata t, bytes32 id, bytes32 sellDigest, bytes32 buyDigest)
        private
        returns (TradeRecord memory rec)
    {
        Order calldata s = t.sell.order;
        Order calldata b = t.buy.order;
        if (s.side != SELL) revert MarketOrderWrongSide(id, SELL);
        if (b.side != BUY) revert MarketOrderWrongSide(id, BUY);
        if (s.intervalId != intervalId) revert MarketOrderIntervalMismatch(id, s.intervalId);
        if (b.intervalId != intervalId) revert MarketOrderIntervalMismatch(id, b.intervalId);
        if (s.trader == b.trader) revert MarketSelfTrade(id);
        if (t.energyWh == 0) revert MarketZeroTradeAmount(id);
        if (t.pricePerKWh < s.pricePerKWh || t.pricePerKWh > b.pricePerKWh) {
            revert MarketPriceOutOfRange(id, t.pricePerKWh);
        }
        _checkOrder(s, b.trader, t.sell.r, t.sell.vs, sellDigest);
        _checkOrder(b, s.trader, t.buy.r, t.buy.vs, buyDigest);
        rec.sellerIndex = _activeIndex(s.trader);
        rec.buyerIndex = _activeIndex(b.trader);
        _fill(s, t.energyWh);
        _fill(b, t.energyWh);
        uint256 escrow = _escrow(t.energyWh, t.pricePerKWh);
        Account storage acc = _accounts[b.trader];
        if (acc.available < escrow) revert MarketInsufficientBalance(b.trader, acc.available, escrow);
        acc.available -= uint128(escrow);
        acc.locked += uint128(escrow);
        rec.tradeId = id;
        rec.seller = s.trader;
        rec.buyer = b.trader;
        rec.energyWh = t.energyWh;
        rec.pricePerKWh = t.pricePerKWh;
        emit TradeRecorded(id, s.trader, b.trader, t.energyWh, t.pricePerKWh);
    }

    function _checkOrder(Order calldata o, address other, bytes32 r, bytes32 vs, bytes32 digest) private view {
        if (block.timestamp > o.expiry) revert MarketOrderExpired(o.trader, o.nonce, o.expiry);
        if (o.counterparty != address(0) && o.counterparty != other) {
            revert MarketCounterpartyMismatch(o.trader, o.nonce, o.counterparty);
        }
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, r, vs);
        if (err != ECDSA.RecoverError.NoError || signer != o.trader) {
            revert MarketInvalidOrderSignature(o.trader, o.nonce);
        }
    }

    function _activeIndex(address trader) private view returns (uint32) {
        (bool active, uint32 index) = registry.stateOf(trader);
        if (!active) revert MarketParticipantInactive(trader);
        return index;
    }

    function _fill(Order calldata o, uint64 energyWh) private {
        (uint256 word, uint256 shift) = (o.nonce >> 2, (uint256(o.nonce) & 3) * 64);
        uint256 lanes = _fills[o.trader][word];
        uint256 filled = (lanes >> shift) & LANE_MASK;
        if (filled == CANCELLED) revert MarketOrderCancelled(o.trader, o.nonce);
        uint256 remaining = filled >= o.energyWh ? 0 : o.energyWh - filled;
        if (energyWh > remaining) revert MarketOrderOverfilled(o.trader, o.nonce, uint64(remaining));
        _fills[o.trader][word] = lanes + (uint256(energyWh) << shift);
    }

    // ------------------------------------------------------------------ settlement

    /// @inheritdoc IEnergyMarket
    function settle(uint64 intervalId, TradeRecord[][] calldata batches, address[] calldata parties) external {
        IntervalState storage st = _intervals[intervalId];
        if (st.settled) revert MarketIntervalSettled(intervalId);
        uint256 nb = st.batchCount;
        if (nb == 0) revert MarketIntervalNotRecorded(intervalId);
        if (batches.length != nb) revert MarketBatchCountMismatch(intervalId, nb, batches.length);
        for (uint256 b = 0; b < nb; ++b) {
            if (keccak256(abi.encode(batches[b])) != _commitments[intervalId][b]) {
                revert MarketBatchCommitmentMismatch(intervalId, b);
            }
        }
        for (uint256 p = 1; p < parties.length; ++p) {
            if (parties[p] <= parties[p - 1]) revert MarketPartiesNotSorted(p);
        }
        st.settled = true;

        Party[] memory ps = _aggregate(batches, parties);
        _loadReadings(intervalId, ps);
        uint32 count;
        for (uint256 b = 0; b < nb; ++b) {
            TradeRecord[] calldata batch = batches[b];
            for (uint256 i = 0; i < batch.length; ++i) {
                _settleOne(batch[i], ps, parties);
                ++count;
            }
        }
        for (uint256 p = 0; p < ps.length; ++p) {
            Party memory party = ps[p];
            Account storage acc = _accounts[party.wallet];
            acc.locked -= uint128(party.unlock);
            acc.available += uint128(party.credit);
        }
        emit IntervalSettled(intervalId, count);
    }

    function _aggregate(TradeRecord[][] calldata batches, address[] calldata parties)
        private
        pure
        returns (Party[] memory ps)
    {
        ps = new Party[](parties.length);
        for (uint256 b = 0; b < batches.length; ++b) {
            TradeRecord[] calldata batch = batches[b];
            for (uint256 i = 0; i < batch.length; ++i) {
                TradeRecord calldata t = batch[i];
                Party memory seller = ps[_find(parties, t.seller)];
                seller.wallet = t.seller;
                seller.index = t.sellerIndex;
                seller.soldWh += t.energyWh;
                Party memory buyer = ps[_find(parties, t.buyer)];
                buyer.wallet = t.buyer;
                buyer.index = t.buyerIndex;
                buyer.boughtWh += t.energyWh;
            }
        }
        for (uint256 p = 0; p < ps.length; ++p) {
            if (ps[p].wallet == address(0)) revert MarketPartyUnused(parties[p]);
        }
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

    function _settleOne(TradeRecord calldata t, Party[] memory ps, address[] calldata parties) private {
        Party memory seller = ps[_find(parties, t.seller)];
        Party memory buyer = ps[_find(parties, t.buyer)];
        // r = min(1, metered / contracted) for each side, as a fraction; take the smaller one.
        (uint256 num, uint256 den) = (1, 1);
        if (seller.exportWh < seller.soldWh) (num, den) = (seller.exportWh, seller.soldWh);
        if (buyer.importWh < buyer.boughtWh && buyer.importWh * den < num * buyer.boughtWh) {
            (num, den) = (buyer.importWh, buyer.boughtWh);
        }
        uint256 delivered = (uint256(t.energyWh) * num) / den;
        uint256 escrow = _escrow(t.energyWh, t.pricePerKWh);
        uint256 paid = (delivered * t.pricePerKWh) / 1000;
        uint256 refunded = escrow - paid;
        seller.credit += paid;
        buyer.credit += refunded;
        buyer.unlock += escrow;
        emit TradeSettled(t.tradeId, uint64(delivered), paid, refunded);
    }

    /// @dev Position of `wallet` in the strictly ascending `parties` (binary search).
    function _find(address[] calldata parties, address wallet) private pure returns (uint256) {
        uint256 lo = 0;
        uint256 hi = parties.length;
        while (lo < hi) {
            uint256 mid = (lo + hi) >> 1;
            address at = parties[mid];
            if (at == wallet) return mid;
            if (at < wallet) lo = mid + 1;
            else hi = mid;
        }
        revert MarketPartyMissing(wallet);
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
