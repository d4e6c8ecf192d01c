// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {CompactSignature} from "./libraries/CompactSignature.sol";
import {Metered} from "./libraries/Metered.sol";
import {ORDER_SIZE, PackedOrder, PackedOrderLibrary} from "./libraries/PackedOrder.sol";
import {TRADE_SIZE, PackedTrade, PackedTradeLibrary} from "./libraries/PackedTrade.sol";
import {RegistryState} from "./libraries/RegistryState.sol";
import {
    PARTY_SIZE,
    POSITION_SIZE,
    POSITIONS_PER_RECORD,
    RECORD_POSITIONS_SIZE,
    RECORD_SIZE,
    TradeRecord,
    TradeRecordLibrary,
    partyAt,
    positionAt
} from "./libraries/TradeRecord.sol";
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
    bytes32 internal constant GRID_OPERATOR_ROLE = keccak256("GRID_OPERATOR_ROLE");
    // Imbalance prices: basis points of the clearing price. Short >= 1x and long <= 1x, so no deviation
    // pays better than the trade it deviates from; the caps keep D * P * bps far below 2^256.
    uint256 internal constant BPS = 10_000;
    uint256 internal constant MAX_SHORT_PRICE_BPS = 100_000;
    // Wh x (base units per kWh) x bps -> base units
    uint256 internal constant IMBALANCE_DIVISOR = 1000 * BPS;
    uint8 internal constant SELL = 0;
    uint8 internal constant BUY = 1;
    // `field` of MarketMalformedCalldata
    uint8 internal constant FIELD_ORDERS = 0;
    uint8 internal constant FIELD_TRADES = 1;
    uint8 internal constant FIELD_RECORDS = 2;
    uint8 internal constant FIELD_PARTIES = 3;
    uint8 internal constant FIELD_POSITIONS = 4;
    // Fill lanes (see _fills): FILL_LANES lanes of FILL_LANE_BITS bits per slot, nonce n in lane n % FILL_LANES
    // of slot n / FILL_LANES; a lane holds the filled Wh or CANCELLED.
    uint256 internal constant FILL_LANES = 4;
    uint256 internal constant FILL_LANE_BITS = 64;
    uint256 internal constant FILL_LANE_MASK = type(uint64).max;
    uint256 internal constant CANCELLED = type(uint64).max;
    // Work word of an order while a batch is recorded (see Batch): remaining Wh (bits 0..63) | filled by
    // this batch (64..127) | registry index (128..159) | verified (bit 255).
    uint256 internal constant WORK_WH_MASK = type(uint64).max;
    uint256 internal constant WORK_FILLED_SHIFT = 64;
    uint256 internal constant WORK_INDEX_SHIFT = 128;
    uint256 internal constant WORK_INDEX_MASK = type(uint32).max;
    // Totals word of a party while an interval is settled (see _aggregate): sold Wh (bits 0..95) | bought
    // Wh (96..191) | registry index (192..223) | seen (bit 255).
    uint256 internal constant TOTALS_WH_MASK = type(uint96).max;
    uint256 internal constant TOTALS_BOUGHT_SHIFT = 96;
    uint256 internal constant TOTALS_INDEX_SHIFT = 192;
    // The flag bit of both words (verified order / party seen).
    uint256 internal constant USED = 1 << 255;

    IERC20 public immutable token;
    IParticipantRegistry public immutable registry;
    IMeterReadings public immutable readings;
    /// @inheritdoc IEnergyMarket
    uint64 public immutable intervalSeconds;
    /// @inheritdoc IEnergyMarket
    uint64 public immutable settlementDelaySeconds;
    /// @inheritdoc IEnergyMarket
    uint64 public immutable gateLeadSeconds;
    /// @inheritdoc IEnergyMarket
    address public immutable balancingAccount;

    // available and locked escrow share one slot: recording a trade touches the buyer once.
    mapping(address account => Account) private _accounts;
    // Fill state of (trader, nonce): four 64-bit lanes (filled Wh, or CANCELLED) per slot, so a trader's
    // consecutive nonces mostly write an already non-zero slot (5,000 gas instead of 22,100).
    mapping(address trader => mapping(uint256 word => uint256 lanes)) private _fills;
    mapping(uint64 intervalId => IntervalState) private _intervals;
    // One commitment per recorded batch instead of storage per trade; settle re-supplies the trades.
    mapping(uint64 intervalId => mapping(uint256 batchIndex => bytes32)) private _commitments;
    // The FlexibilityMarket that may lock and release balances (attached once by the registry's admin).
    address public flexibility;
    // Imbalance payments an account could not pay; while non-zero its orders are refused.
    mapping(address account => uint256) private _debts;
    // The imbalance prices the next interval takes: one slot, read once per interval (its first batch).
    ImbalancePrices private _prices;

    struct ImbalancePrices {
        uint32 shortBps;
        uint32 longBps;
    }

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
    /// balance gains (credit) and releases from escrow (unlock); over all its trades the energy and the
    /// value (sum of Wh x price per kWh) that give its clearing price.
    struct Settlement {
        uint256 pbase; // calldata position of the packed parties
        uint256 np; // number of parties
        uint256[] totals;
        uint256[] metered;
        uint256[] credit;
        uint256[] unlock;
        uint256 tradedWh;
        uint256 tradedValue;
    }

    /// @dev The imbalance of one interval while it is settled (see `_settleImbalance`).
    struct Imbalance {
        uint256 clearingPrice; // base units per kWh
        uint256 shortBps;
        uint256 longBps;
        uint256 collected; // from short parties, to the balancing account
        uint256 due; // owed to long parties in full
        uint256 pool; // what the balancing account can pay: its available balance + collected
        uint256 paidOut; // paid to long parties
    }

    /// @param token_ Any ERC-20 used for payment.
    /// @param registry_ Roles and participants.
    /// @param readings_ Meter readings; its interval length is the market's.
    /// @param settlementDelaySeconds_ Time after an interval's end until missing readings count as zero.
    /// @param gateLeadSeconds_ How long before an interval starts its gate closes (no batch after it).
    /// @param balancingAccount_ The account every imbalance is settled against (the grid operator's).
    /// @param shortPriceBps_ Imbalance short price, basis points of the clearing price (see setImbalancePrices).
    /// @param longPriceBps_ Imbalance long price, basis points of the clearing price.
    constructor(
        IERC20 token_,
        IParticipantRegistry registry_,
        IMeterReadings readings_,
        uint64 settlementDelaySeconds_,
        uint64 gateLeadSeconds_,
        address balancingAccount_,
        uint32 shortPriceBps_,
        uint32 longPriceBps_
    ) EIP712("tegrid EnergyMarket", "1") {
        if (
            address(token_) == address(0) || address(registry_) == address(0) || address(readings_) == address(0)
                || balancingAccount_ == address(0)
        ) {
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
        balancingAccount = balancingAccount_;
        _setPrices(shortPriceBps_, longPriceBps_);
    }

    // ------------------------------------------------------------------ balances

    /// @inheritdoc IEnergyMarket
    function deposit(uint256 amount) external {
        if (amount == 0) revert MarketZeroAmount();
        if (amount > type(uint128).max) revert MarketAmountTooLarge(amount);
        uint256 debt = _debts[msg.sender];
        uint256 repaid = debt < amount ? debt : amount;
        _accounts[msg.sender].available += uint128(amount - repaid);
        emit Deposited(msg.sender, amount);
        if (repaid != 0) _repay(msg.sender, debt, repaid);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IEnergyMarket
    function repayDebt() external {
        uint256 debt = _debts[msg.sender];
        Account storage acc = _accounts[msg.sender];
        uint256 available = acc.available;
        uint256 repaid = debt < available ? debt : available;
        if (repaid == 0) revert MarketNothingToRepay(msg.sender);
        acc.available = uint128(available - repaid);
        _repay(msg.sender, debt, repaid);
    }

    /// @dev `repaid` of `account`'s `debt` to the balancing account.
    function _repay(address account, uint256 debt, uint256 repaid) private {
        _debts[account] = debt - repaid;
        _accounts[balancingAccount].available += uint128(repaid);
        emit DebtRepaid(account, repaid, debt - repaid);
    }

    /// @inheritdoc IEnergyMarket
    function setImbalancePrices(uint32 shortPriceBps, uint32 longPriceBps) external {
        if (!registry.hasRole(GRID_OPERATOR_ROLE, msg.sender)) revert MarketNotGridOperator(msg.sender);
        _setPrices(shortPriceBps, longPriceBps);
    }

    function _setPrices(uint32 shortPriceBps, uint32 longPriceBps) private {
        if (shortPriceBps < BPS || shortPriceBps > MAX_SHORT_PRICE_BPS || longPriceBps > BPS) {
            revert MarketInvalidImbalancePrices(shortPriceBps, longPriceBps);
        }
        _prices = ImbalancePrices(shortPriceBps, longPriceBps);
        emit ImbalancePricesChanged(shortPriceBps, longPriceBps);
    }

    /// @inheritdoc IEnergyMarket
    function withdraw(uint256 amount) external {
        if (amount == 0) revert MarketZeroAmount();
        uint256 debt = _debts[msg.sender];
        if (debt != 0) revert MarketAccountOwing(msg.sender, debt);
        Account storage acc = _accounts[msg.sender];
        if (acc.available < amount) revert MarketInsufficientBalance(msg.sender, acc.available, amount);
        acc.available -= uint128(amount);
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IEnergyMarket
    function attachFlexibility(address flexibility_) external {
        if (!registry.hasRole(0x00, msg.sender)) revert MarketNotAdmin(msg.sender);
        if (flexibility != address(0)) revert MarketFlexibilityAttached(flexibility);
        flexibility = flexibility_;
        emit FlexibilityAttached(flexibility_);
    }

    /// @inheritdoc IEnergyMarket
    function flexLock(address payer, uint256 amount) external {
        if (msg.sender != flexibility) revert MarketNotFlexibility(msg.sender);
        Account storage acc = _accounts[payer];
        uint256 available = acc.available;
        if (available < amount) {
            if (payer == balancingAccount) revert MarketInsufficientBalance(payer, available, amount);
            // The payer consented to this share before the interval was cleared (its cap is fixed for
            // the interval) and its trade is recorded: a balance withdrawn since is advanced by the
            // balancing account and owed back, so backing out cannot leave the trade without its remedy.
            uint256 advanced = amount - available;
            Account storage ba = _accounts[balancingAccount];
            if (ba.available < advanced) revert MarketInsufficientBalance(balancingAccount, ba.available, advanced);
            ba.available -= uint128(advanced);
            _debts[payer] += advanced;
            emit FlexShareAdvanced(payer, advanced);
            available = amount;
        }
        (acc.available, acc.locked) = (uint128(available - amount), acc.locked + uint128(amount));
    }

    /// @inheritdoc IEnergyMarket
    /// @dev Locked falls in 256 bits before the cast (an unlock beyond it reverts); the credits, equal in
    /// sum to what was locked, fit 128 bits.
    function flexRelease(bytes calldata moves) external {
        if (msg.sender != flexibility) revert MarketNotFlexibility(msg.sender);
        (uint256 unlockedSum, uint256 creditedSum) = (0, 0);
        for (uint256 p = 0; p < moves.length; p += 0x60) {
            uint256 account;
            uint256 unlocked;
            uint256 credited;
            assembly ("memory-safe") {
                let at := add(moves.offset, p)
                account := calldataload(at)
                unlocked := calldataload(add(at, 0x20))
                credited := calldataload(add(at, 0x40))
            }
            Account storage acc = _accounts[address(uint160(account))];
            (acc.locked, acc.available) =
                (uint128(uint256(acc.locked) - unlocked), uint128(uint256(acc.available) + credited));
            (unlockedSum, creditedSum) = (unlockedSum + unlocked, creditedSum + credited);
        }
        if (unlockedSum != creditedSum) revert MarketFlexUnbalanced(unlockedSum, creditedSum);
    }

    /// @inheritdoc IEnergyMarket
    function cancelNonce(uint64 nonce) external {
        (uint256 word, uint256 shift) = _fillLane(nonce);
        uint256 lanes = _fills[msg.sender][word];
        if ((lanes >> shift) & FILL_LANE_MASK == CANCELLED) revert MarketNonceAlreadyCancelled(msg.sender, nonce);
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
        if (batchIndex == 0) {
            // the interval's imbalance prices, fixed before its gate closes (same slot as batchCount)
            ImbalancePrices memory prices = _prices;
            (st.shortPriceBps, st.longPriceBps) = (prices.shortBps, prices.longBps);
        }
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
        // scratch memory past the free pointer: the struct hash input (0x120 bytes), then the digest's (0x42)
        uint256 buf;
        assembly ("memory-safe") {
            buf := mload(0x40)
        }
        unchecked {
            for (uint256 o = 0; o < m; ++o) {
                bytes32 structHash = PackedOrderLibrary.at(obase, o).structHash(typeHash, buf);
                assembly ("memory-safe") {
                    mstore(add(buf, 0x120), hex"1901")
                    mstore(add(buf, 0x122), domain)
                    mstore(add(buf, 0x142), structHash)
                    mstore(add(digests, shl(5, add(o, 1))), keccak256(add(buf, 0x120), 0x42))
                }
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
                PackedTrade t = PackedTradeLibrary.at(tbase, i);
                bytes32 id;
                {
                    (uint256 so, uint256 bo) = (t.sellOrder(), t.buyOrder());
                    if (so >= m) revert MarketOrderIndexOutOfRange(so);
                    if (bo >= m) revert MarketOrderIndexOutOfRange(bo);
                    assembly ("memory-safe") {
                        mstore(0x00, mload(add(digests, shl(5, add(so, 1)))))
                        mstore(0x20, mload(add(digests, shl(5, add(bo, 1)))))
                        id := keccak256(0x00, 0x40)
                        mstore(add(ids, shl(5, add(i, 1))), id)
                    }
                }
                if (id <= last) revert MarketTradeOutOfOrder(id, last);
                last = id;
                (uint256 energyWh, uint256 price, uint256 verdict) = (t.energyWh(), t.pricePerKWh(), t.verdict());
                assembly ("memory-safe") {
                    mstore(add(energies, shl(5, add(i, 1))), energyWh)
                    mstore(add(prices, shl(5, add(i, 1))), price)
                    mstore(add(verdicts, shl(5, add(i, 1))), verdict)
                }
                if (verdict == 0) ++approved;
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
            for (uint256 o = 0; o < m; ++o) {
                address trader = PackedOrderLibrary.at(obase, o).trader();
                assembly ("memory-safe") {
                    mstore(add(traders, shl(5, add(o, 1))), trader)
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
                _recordOne(intervalId, PackedTradeLibrary.at(tbase, i), bt, bt.ids[i], out);
                out += RECORD_SIZE;
            }
            uint256 m = bt.work.length;
            uint256[] memory work = bt.work;
            for (uint256 o = 0; o < m; ++o) {
                uint256 w;
                assembly ("memory-safe") {
                    w := mload(add(work, shl(5, add(o, 1))))
                }
                if (w & USED != 0) _commitFill(PackedOrderLibrary.at(bt.obase, o), (w >> WORK_FILLED_SHIFT) & WORK_WH_MASK);
            }
            commitment = keccak256(buf);
        }
    }

    function _recordOne(uint64 intervalId, PackedTrade t, Batch memory bt, bytes32 id, uint256 out) private {
        unchecked {
            (address seller, address buyer) = _checkPair(id, bt.obase, t);
            (uint256 so, uint256 bo, uint256 energyWh) = (t.sellOrder(), t.buyOrder(), t.energyWh());
            _fill(intervalId, bt, so, id, energyWh);
            _fill(intervalId, bt, bo, id, energyWh);
            uint256 price = t.pricePerKWh();
            _lockEscrow(buyer, energyWh, price);
            emit TradeRecorded(id, seller, buyer, intervalId, uint64(energyWh), uint128(price));
            uint256[] memory work = bt.work;
            uint256 sw;
            uint256 bw;
            assembly ("memory-safe") {
                sw := mload(add(work, shl(5, add(so, 1))))
                bw := mload(add(work, shl(5, add(bo, 1))))
            }
            TradeRecordLibrary.store(
                out,
                id,
                seller,
                buyer,
                (sw >> WORK_INDEX_SHIFT) & WORK_INDEX_MASK,
                (bw >> WORK_INDEX_SHIFT) & WORK_INDEX_MASK,
                energyWh,
                price
            );
        }
    }

    function _lockEscrow(address buyer, uint256 energyWh, uint256 price) private {
        uint256 escrow = _escrow(energyWh, price);
        Account memory acc = _accounts[buyer];
        if (acc.available < escrow) revert MarketInsufficientBalance(buyer, acc.available, escrow);
        _accounts[buyer] = Account(acc.available - uint128(escrow), acc.locked + uint128(escrow));
    }

    /// @dev The checks of a trade that need no state: sides, self-trade, amount, price, counterparties.
    function _checkPair(bytes32 id, uint256 obase, PackedTrade t)
        private
        pure
        returns (address seller, address buyer)
    {
        PackedOrder sell = PackedOrderLibrary.at(obase, t.sellOrder());
        PackedOrder buy = PackedOrderLibrary.at(obase, t.buyOrder());
        uint128 price = t.pricePerKWh();
        (seller, buyer) = (sell.trader(), buy.trader());
        if (sell.side() != SELL) revert MarketOrderWrongSide(id, SELL);
        if (buy.side() != BUY) revert MarketOrderWrongSide(id, BUY);
        if (seller == buyer) revert MarketSelfTrade(id);
        if (t.energyWh() == 0) revert MarketZeroTradeAmount(id);
        if (price < sell.pricePerKWh() || price > buy.pricePerKWh()) revert MarketPriceOutOfRange(id, price);
        _checkCounterparty(sell, buyer);
        _checkCounterparty(buy, seller);
    }

    function _checkCounterparty(PackedOrder order, address other) private pure {
        address counterparty = order.counterparty();
        if (counterparty != address(0) && counterparty != other) {
            revert MarketCounterpartyMismatch(order.trader(), order.nonce(), counterparty);
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
            uint256 remaining = w & WORK_WH_MASK;
            if (energyWh > remaining) {
                PackedOrder order = PackedOrderLibrary.at(bt.obase, o);
                revert MarketOrderOverfilled(order.trader(), order.nonce(), uint64(remaining));
            }
            // remaining -= energyWh; filled-by-this-batch += energyWh (cannot carry: both stay below 2^64)
            assembly ("memory-safe") {
                mstore(add(work, shl(5, add(o, 1))), add(sub(w, energyWh), shl(WORK_FILLED_SHIFT, energyWh)))
            }
        }
    }

    /// @dev First use of an order in a batch: interval, expiry, signature, active trader, fill state.
    function _useOrder(uint64 intervalId, Batch memory bt, uint256 o, bytes32 tradeId) private view returns (uint256) {
        unchecked {
            PackedOrder order = PackedOrderLibrary.at(bt.obase, o);
            address trader = order.trader();
            uint64 nonce = order.nonce();
            {
                uint64 orderIntervalId = order.intervalId();
                if (orderIntervalId != intervalId) revert MarketOrderIntervalMismatch(tradeId, orderIntervalId);
                uint64 expiry = order.expiry();
                if (block.timestamp > expiry) revert MarketOrderExpired(trader, nonce, expiry);
            }
            {
                bytes32 digest;
                bytes32[] memory digests = bt.digests;
                assembly ("memory-safe") {
                    digest := mload(add(digests, shl(5, add(o, 1))))
                }
                (bytes32 r, bytes32 vs) = order.signature();
                address signer = CompactSignature.recover(digest, r, vs);
                if (signer == address(0) || signer != trader) revert MarketInvalidOrderSignature(trader, nonce);
            }
            uint256 state = bt.states[o];
            if (!RegistryState.isActive(state)) revert MarketParticipantInactive(trader);
            {
                uint256 debt = _debts[trader];
                if (debt != 0) revert MarketAccountOwing(trader, debt);
            }
            (uint256 slot, uint256 shift) = _fillLane(nonce);
            uint256 filled = (_fills[trader][slot] >> shift) & FILL_LANE_MASK;
            if (filled == CANCELLED) revert MarketOrderCancelled(trader, nonce);
            uint256 energyWh = order.energyWh();
            return USED | (uint256(RegistryState.index(state)) << WORK_INDEX_SHIFT)
                | (filled >= energyWh ? 0 : energyWh - filled);
        }
    }

    /// @dev Adds a batch's fills to the (trader, nonce) lane; re-checks against the lane as stored, which
    /// also catches two orders of one batch sharing a nonce.
    function _commitFill(PackedOrder order, uint256 delta) private {
        unchecked {
            address trader = order.trader();
            uint64 nonce = order.nonce();
            uint256 energyWh = order.energyWh();
            (uint256 slot, uint256 shift) = _fillLane(nonce);
            uint256 lanes = _fills[trader][slot];
            uint256 filled = (lanes >> shift) & FILL_LANE_MASK;
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
        if (positions.length % POSITION_SIZE != 0) revert MarketMalformedCalldata(FIELD_POSITIONS, positions.length);
        if (positions.length / POSITION_SIZE != POSITIONS_PER_RECORD * uint256(st.approvedCount)) {
            revert MarketPositionsMismatch(POSITIONS_PER_RECORD * uint256(st.approvedCount), positions.length / POSITION_SIZE);
        }
        if (parties.length % PARTY_SIZE != 0) revert MarketMalformedCalldata(FIELD_PARTIES, parties.length);
        _checkSorted(parties);
        bool last = pageEnd == st.batchCount;
        st.settledBatches = pageEnd;
        if (last) st.settled = true;

        Settlement memory z;
        z.pbase = _cdPtr(parties);
        z.np = parties.length / PARTY_SIZE;
        _aggregate(z, batches, _cdPtr(positions));
        _loadReadings(intervalId, z);
        z.credit = new uint256[](z.np);
        z.unlock = new uint256[](z.np);
        uint256 count = _settlePage(z, batches, from, pageEnd, _cdPtr(positions));
        _pay(z);
        emit BatchesSettled(intervalId, uint32(from), pageEnd, uint32(count));
        if (last) {
            _settleImbalance(intervalId, st, z);
            emit IntervalSettled(intervalId, st.approvedCount);
        }
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
        st.settled = true;
        st.reclaimed = true;
        uint256 count;
        for (uint256 b = 0; b < batches.length; ++b) {
            bytes calldata batch = batches[b];
            uint256 rp = _cdPtr(batch);
            for (uint256 end = rp + batch.length; rp < end; rp += RECORD_SIZE) {
                _reclaimOne(TradeRecord.wrap(rp));
                ++count;
            }
        }
        emit IntervalReclaimed(intervalId, uint32(from), uint32(count));
    }

    /// @dev The escrow of record `r` back to its buyer.
    function _reclaimOne(TradeRecord r) private {
        unchecked {
            address buyer = r.buyer();
            uint256 escrow = _escrow(r.energyWh(), r.pricePerKWh());
            Account memory acc = _accounts[buyer];
            _accounts[buyer] = Account(acc.available + uint128(escrow), acc.locked - uint128(escrow));
            emit EscrowReclaimed(r.tradeId(), buyer, escrow);
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
                        _settleOne(z, TradeRecord.wrap(rp + i * RECORD_SIZE), pos + RECORD_POSITIONS_SIZE * i);
                    }
                    count += n;
                }
                pos += RECORD_POSITIONS_SIZE * n;
            }
        }
    }

    function _checkSorted(bytes calldata parties) private pure {
        unchecked {
            uint256 np = parties.length / PARTY_SIZE;
            uint256 pbase = _cdPtr(parties);
            uint256 prev;
            for (uint256 p = 0; p < np; ++p) {
                uint256 a = uint160(partyAt(pbase, p));
                if (p > 0 && a <= prev) revert MarketPartiesNotSorted(p);
                prev = a;
            }
        }
    }

    /// @dev Record `r`, its parties' positions at calldata position `pos`: the seller's payment for the
    /// trade's energy (firm) and the buyer's rounding remainder, booked in z.credit and z.unlock.
    function _settleOne(Settlement memory z, TradeRecord r, uint256 pos) private {
        unchecked {
            (uint256 s, uint256 y) = (positionAt(pos, 0), positionAt(pos, 1));
            (uint256 delivered, uint256 price) = (r.energyWh(), r.pricePerKWh());
            uint256 escrow = _escrow(delivered, price);
            uint256 paid = (delivered * price) / 1000;
            (uint256[] memory credit, uint256[] memory unlock) = (z.credit, z.unlock);
            assembly ("memory-safe") {
                let cs := add(credit, shl(5, add(s, 1)))
                mstore(cs, add(mload(cs), paid))
                let cy := add(credit, shl(5, add(y, 1)))
                mstore(cy, add(mload(cy), sub(escrow, paid)))
                let uy := add(unlock, shl(5, add(y, 1)))
                mstore(uy, add(mload(uy), escrow))
            }
            emit TradeSettled(r.tradeId(), uint64(delivered), paid, escrow - paid);
        }
    }

    /// @dev One balance write per party: credit to available, unlock from locked.
    function _pay(Settlement memory z) private {
        (uint256[] memory credit, uint256[] memory unlock) = (z.credit, z.unlock);
        uint256 pbase = z.pbase;
        for (uint256 p = 0; p < z.np; ++p) {
            address wallet = partyAt(pbase, p);
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
                    _addRecord(z, TradeRecord.wrap(rp), pos);
                    pos += RECORD_POSITIONS_SIZE;
                }
            }
            uint256[] memory totals = z.totals;
            for (uint256 p = 0; p < z.np; ++p) {
                if (totals[p] & USED == 0) revert MarketPartyUnused(partyAt(z.pbase, p));
            }
        }
    }

    /// @dev Adds record `r` to its seller's and buyer's totals (positions at calldata position `pos`).
    function _addRecord(Settlement memory z, TradeRecord r, uint256 pos) private pure {
        unchecked {
            uint256 energyWh = r.energyWh();
            z.tradedWh += energyWh;
            z.tradedValue += energyWh * r.pricePerKWh(); // below 2^192 each, 2^224 for 2^32 trades
            uint256 s = _position(z, positionAt(pos, 0), r.seller());
            uint256 y = _position(z, positionAt(pos, 1), r.buyer());
            uint256 sellerFlags = USED | (uint256(r.sellerIndex()) << TOTALS_INDEX_SHIFT);
            uint256 buyerFlags = USED | (uint256(r.buyerIndex()) << TOTALS_INDEX_SHIFT);
            uint256[] memory totals = z.totals;
            // sums of at most 2^32 amounts below 2^64 stay below 2^96: the lanes never carry
            assembly ("memory-safe") {
                let ts := add(totals, shl(5, add(s, 1)))
                mstore(ts, or(add(mload(ts), energyWh), sellerFlags))
                let ty := add(totals, shl(5, add(y, 1)))
                mstore(ty, or(add(mload(ty), shl(TOTALS_BOUGHT_SHIFT, energyWh)), buyerFlags))
            }
        }
    }

    function _position(Settlement memory z, uint256 pos, address wallet) private pure returns (uint256) {
        if (pos >= z.np || partyAt(z.pbase, pos) != wallet) revert MarketPartyMissing(wallet);
        return pos;
    }

    /// @dev Readings of every party: metered = present (bit 128) | exportWh (bits 64..127) | importWh (0..63).
    function _loadReadings(uint64 intervalId, Settlement memory z) private view {
        unchecked {
            uint256 np = z.np;
            uint32[] memory indices = new uint32[](np);
            uint256[] memory totals = z.totals;
            for (uint256 p = 0; p < np; ++p) {
                indices[p] = uint32(totals[p] >> TOTALS_INDEX_SHIFT);
            }
            uint256[] memory metered = readings.meteredOf(intervalId, indices);
            z.metered = metered;
            for (uint256 p = 0; p < np; ++p) {
                if (!Metered.isPresent(metered[p])) {
                    uint256 deadline = _deadline(intervalId);
                    if (block.timestamp < deadline) revert MarketSettlementNotReady(intervalId, deadline);
                    break;
                }
            }
        }
    }

    // ------------------------------------------------------------------ imbalance

    /// @dev Every party's deviation from its contracted net position, settled with the balancing account
    /// (rule in {IEnergyMarket}): short parties pay first (what they cannot pay becomes debt), then the
    /// balancing account pays the long ones from its balance and what it collected.
    function _settleImbalance(uint64 intervalId, IntervalState storage st, Settlement memory z) private {
        Imbalance memory im;
        im.shortBps = st.shortPriceBps;
        im.longBps = st.longPriceBps;
        if (z.tradedWh != 0) im.clearingPrice = z.tradedValue / z.tradedWh;
        uint256[] memory longDue = new uint256[](z.np);
        bool[] memory long_ = new bool[](z.np);
        for (uint256 p = 0; p < z.np; ++p) {
            address wallet = partyAt(z.pbase, p);
            if (wallet == balancingAccount) continue; // it settles no imbalance with itself
            (int256 contracted, int256 metered) = _positions(z.totals[p], z.metered[p]);
            int256 d = metered - contracted;
            if (d < 0) {
                uint256 charge = (uint256(-d) * im.shortBps * im.clearingPrice + IMBALANCE_DIVISOR - 1)
                    / IMBALANCE_DIVISOR;
                (uint256 paid, uint256 owed) = _chargeShort(wallet, charge);
                im.collected += paid;
                emit ImbalanceSettled(intervalId, wallet, contracted, metered, -int256(paid), owed);
            } else if (d > 0 && Metered.isPresent(z.metered[p])) {
                long_[p] = true;
                longDue[p] = (uint256(d) * im.longBps * im.clearingPrice) / IMBALANCE_DIVISOR;
                im.due += longDue[p];
            } else {
                // balanced, or long without a reading (a missing reading never earns a payment)
                emit ImbalanceSettled(intervalId, wallet, contracted, metered, 0, 0);
            }
        }
        Account storage ba = _accounts[balancingAccount];
        im.pool = uint256(ba.available) + im.collected;
        for (uint256 p = 0; p < z.np; ++p) {
            if (long_[p]) _payLong(intervalId, z, im, p, longDue[p]);
        }
        ba.available = uint128(im.pool - im.paidOut);
        emit IntervalImbalanceSettled(
            intervalId, im.clearingPrice, uint32(im.shortBps), uint32(im.longBps), im.collected, im.paidOut
        );
    }

    /// @dev (contracted, metered) net positions in Wh of a party: sold - bought, exported - imported.
    function _positions(uint256 totals, uint256 metered) private pure returns (int256, int256) {
        uint256 sold = totals & TOTALS_WH_MASK;
        uint256 bought = (totals >> TOTALS_BOUGHT_SHIFT) & TOTALS_WH_MASK;
        // below 2^96 and 2^64: the casts cannot wrap
        return (
            int256(sold) - int256(bought),
            int256(Metered.exportWh(metered)) - int256(Metered.importWh(metered))
        );
    }

    /// @dev `charge` from `wallet`'s available balance; what it cannot pay is added to its debt.
    function _chargeShort(address wallet, uint256 charge) private returns (uint256 paid, uint256 owed) {
        Account storage acc = _accounts[wallet];
        uint256 available = acc.available;
        paid = charge < available ? charge : available;
        owed = charge - paid;
        acc.available = uint128(available - paid);
        if (owed != 0) _debts[wallet] += owed;
    }

    /// @dev The long party `p`'s due, in full when the pool covers every long party, else its share.
    function _payLong(uint64 intervalId, Settlement memory z, Imbalance memory im, uint256 p, uint256 due)
        private
    {
        uint256 paid = im.due <= im.pool ? due : Math.mulDiv(due, im.pool, im.due);
        address wallet = partyAt(z.pbase, p);
        im.paidOut += paid;
        _accounts[wallet].available += uint128(paid);
        (int256 contracted, int256 metered) = _positions(z.totals[p], z.metered[p]);
        emit ImbalanceSettled(intervalId, wallet, contracted, metered, int256(paid), due - paid);
    }

    // ------------------------------------------------------------------ packed calldata access

    function _cdPtr(bytes calldata data) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := data.offset
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
    function debtOf(address account) external view returns (uint256) {
        return _debts[account];
    }

    /// @inheritdoc IEnergyMarket
    function imbalancePrices() external view returns (uint32 shortPriceBps, uint32 longPriceBps) {
        ImbalancePrices memory prices = _prices;
        return (prices.shortBps, prices.longBps);
    }

    /// @inheritdoc IEnergyMarket
    function filledOf(address trader, uint64 nonce) external view returns (uint64 filledWh, bool cancelled) {
        (uint256 slot, uint256 shift) = _fillLane(nonce);
        uint256 lane = (_fills[trader][slot] >> shift) & FILL_LANE_MASK;
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
    function tradeOf(bytes32 tradeId, uint64 intervalId, uint32 batchIndex, bytes calldata records)
        external
        view
        returns (TradeInfo memory trade)
    {
        if (records.length % RECORD_SIZE != 0) revert MarketMalformedCalldata(FIELD_RECORDS, records.length);
        if (_hashCalldata(records) != _commitments[intervalId][batchIndex]) {
            revert MarketBatchCommitmentMismatch(intervalId, batchIndex);
        }
        uint256 rp = _cdPtr(records);
        uint256 end = rp + records.length;
        while (rp < end && TradeRecord.wrap(rp).tradeId() != tradeId) {
            rp += RECORD_SIZE;
        }
        if (rp == end) revert MarketTradeNotInBatch(tradeId, intervalId, batchIndex);
        TradeRecord r = TradeRecord.wrap(rp);
        IntervalState storage st = _intervals[intervalId];
        trade = TradeInfo({
            intervalId: intervalId,
            batchIndex: batchIndex,
            seller: r.seller(),
            buyer: r.buyer(),
            energyWh: r.energyWh(),
            pricePerKWh: r.pricePerKWh(),
            escrow: _escrow(r.energyWh(), r.pricePerKWh()),
            state: batchIndex < st.settledBatches
                ? TradeState.Settled
                : (st.reclaimed ? TradeState.Reclaimed : TradeState.Unsettled)
        });
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

    /// @dev The `_fills` slot of a nonce and the shift of its lane in it.
    function _fillLane(uint64 nonce) private pure returns (uint256 slot, uint256 shift) {
        unchecked {
            return (nonce / FILL_LANES, (nonce % FILL_LANES) * FILL_LANE_BITS);
        }
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
