// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Peer-to-peer energy market: escrow, validator-attested trade batches, min-of-two settlement
/// @notice EIP-712 domain: name "tegrid EnergyMarket", version "1", this chain id, this contract.
///
/// Signed types:
/// - `Order(address trader,uint8 side,uint64 intervalId,uint64 energyWh,uint128 pricePerKWh,uint64 nonce,uint64 expiry,address counterparty)`
///   side 0 = SELL, 1 = BUY; price in token base units per kWh; counterparty zero = anyone; expiry a unix time.
/// - `GridAttestation(uint64 intervalId,bytes32[] tradeIds,uint8[] verdicts,bytes32 evidenceHash)`
///   signed by a VALIDATOR_ROLE key; the arrays list every trade of the batch in batch order with its verdict
///   (0 approved; 1 VOLTAGE_HIGH, 2 VOLTAGE_LOW, 3 LINE_OVERLOAD, 4 TRAFO_OVERLOAD, 5 NOT_CONVERGED,
///   6 UNKNOWN_BUS, 7 INVALID_TRADE, other non-zero codes are vetoes too). Standard EIP-712 array encoding.
///
/// Identifiers and rules:
/// - orderHash = the order's EIP-712 digest; tradeId = keccak256(abi.encode(sellOrderHash, buyOrderHash)).
/// - Fill state is kept per (trader, nonce): orders signed with the same nonce share it; cancelling a nonce
///   makes every order with it unrecordable.
/// - Within an interval, trades (approved and vetoed) must be recorded in strictly ascending tradeId order,
///   across all batches: this makes recording a trade twice impossible without a storage slot per trade.
/// - Escrow of a trade = ceil(energyWh * pricePerKWh / 1000) (rounded up so the seller can always be paid).
/// - Each recorded batch stores one commitment: keccak256 over the approved TradeRecords of the batch,
///   each ABI-encoded as 7 words, concatenated (= the calldata of the TradeRecord[] elements);
///   `settle` takes the interval's batches again as calldata and checks them against the commitments.
/// - Settlement (min of two, pro rata): E_s = sum of the seller's approved sales in the interval, X_s its
///   metered export, r_s = min(1, X_s / E_s); buyers likewise with purchases and metered import. A trade of q Wh
///   delivers floor(q * min(r_s, r_b)) Wh, the seller is paid floor(delivered * price / 1000), the buyer gets
///   escrow - paid back. Readings missing at the deadline count as zero.
/// - An interval settles in one `settle` call over all its batches (about 20k gas per trade, so some
///   1,400 trades per interval fit a 30M-gas block); chunked settlement is not implemented.
/// - Internal balances assume a plain ERC-20: tokens that take a fee on transfer are not supported.
interface IEnergyMarket {
    /// @notice An order as signed by its trader (see the type string above).
    struct Order {
        address trader;
        uint8 side;
        uint64 intervalId;
        uint64 energyWh;
        uint128 pricePerKWh;
        uint64 nonce;
        uint64 expiry;
        address counterparty;
    }

    /// @notice An order with its signature in EIP-2098 compact form (r, vs = yParity << 255 | s).
    struct SignedOrder {
        Order order;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice A candidate trade of a batch: indices of its sell and buy order in the batch's order list
    /// (an order matched with several counterparties is sent and verified once), amount, price and the
    /// validator's verdict.
    struct Trade {
        uint32 sellOrder;
        uint32 buyOrder;
        uint64 energyWh;
        uint128 pricePerKWh;
        uint8 verdict;
    }

    /// @notice What settlement needs of an approved trade; a batch commits to the array of these.
    struct TradeRecord {
        bytes32 tradeId;
        address seller;
        address buyer;
        uint32 sellerIndex;
        uint32 buyerIndex;
        uint64 energyWh;
        uint128 pricePerKWh;
    }

    /// @notice Internal balance of an account in token base units.
    struct Account {
        uint128 available;
        uint128 locked;
    }

    /// @notice Per-interval bookkeeping.
    struct IntervalState {
        bytes32 lastTradeId;
        uint32 batchCount;
        uint32 approvedCount;
        bool settled;
    }

    error MarketInvalidConfig();
    error MarketZeroAmount();
    error MarketAmountTooLarge(uint256 amount);
    error MarketInsufficientBalance(address account, uint256 available, uint256 required);
    error MarketNotOperator(address caller);
    error MarketEmptyBatch();
    error MarketInvalidValidatorSignature(address signer);
    error MarketTradeOutOfOrder(bytes32 tradeId, bytes32 lastTradeId);
    error MarketIntervalSettled(uint64 intervalId);
    error MarketOrderWrongSide(bytes32 tradeId, uint8 expectedSide);
    error MarketOrderIntervalMismatch(bytes32 tradeId, uint64 orderIntervalId);
    error MarketOrderExpired(address trader, uint64 nonce, uint64 expiry);
    error MarketInvalidOrderSignature(address trader, uint64 nonce);
    error MarketSelfTrade(bytes32 tradeId);
    error MarketCounterpartyMismatch(address trader, uint64 nonce, address counterparty);
    error MarketPriceOutOfRange(bytes32 tradeId, uint128 pricePerKWh);
    error MarketZeroTradeAmount(bytes32 tradeId);
    error MarketOrderCancelled(address trader, uint64 nonce);
    error MarketOrderOverfilled(address trader, uint64 nonce, uint64 remainingWh);
    error MarketParticipantInactive(address trader);
    error MarketNonceAlreadyCancelled(address trader, uint64 nonce);
    error MarketIntervalNotRecorded(uint64 intervalId);
    error MarketBatchCountMismatch(uint64 intervalId, uint256 expected, uint256 given);
    error MarketBatchCommitmentMismatch(uint64 intervalId, uint256 batchIndex);
    error MarketPartiesNotSorted(uint256 position);
    error MarketPartyMissing(address wallet);
    error MarketOrderIndexOutOfRange(uint256 index);
    error MarketPositionsMismatch(uint256 expected, uint256 given);
    error MarketPartyUnused(address wallet);
    error MarketSettlementNotReady(uint64 intervalId, uint256 deadline);

    /// @notice Tokens were deposited into `account`'s internal balance.
    event Deposited(address indexed account, uint256 amount);
    /// @notice Tokens were withdrawn from `account`'s available balance.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice A trader cancelled a nonce.
    event NonceCancelled(address indexed trader, uint64 nonce);
    /// @notice An approved trade was recorded and the buyer's escrow locked.
    event TradeRecorded(bytes32 indexed tradeId, address seller, address buyer, uint64 energyWh, uint128 pricePerKWh);
    /// @notice A vetoed trade was recorded with the validator's reason; nothing is locked or consumed.
    event TradeVetoed(bytes32 indexed tradeId, uint8 reason);
    /// @notice A batch was recorded for an interval.
    event BatchRecorded(
        uint64 indexed intervalId, uint32 batchIndex, bytes32 commitment, uint32 approvedCount, bytes32 evidenceHash
    );
    /// @notice A trade was settled: the seller got `paid`, the buyer `refunded` of the escrow.
    event TradeSettled(bytes32 indexed tradeId, uint64 deliveredWh, uint256 paid, uint256 refunded);
    /// @notice An interval was settled.
    event IntervalSettled(uint64 indexed intervalId, uint32 tradeCount);

    /// @notice EIP-712 type hash of Order.
    function ORDER_TYPEHASH() external view returns (bytes32);
    /// @notice EIP-712 type hash of GridAttestation.
    function ATTESTATION_TYPEHASH() external view returns (bytes32);

    /// @notice Move `amount` tokens from the caller (ERC-20 allowance needed) into its available balance.
    /// @param amount Token base units.
    function deposit(uint256 amount) external;

    /// @notice Withdraw `amount` of the caller's available balance.
    /// @param amount Token base units.
    function withdraw(uint256 amount) external;

    /// @notice Cancel every order of the caller signed with `nonce` (also partially filled ones).
    /// @param nonce The order nonce.
    function cancelNonce(uint64 nonce) external;

    /// @notice Record a validator-attested batch of trades for one interval (MARKET_OPERATOR_ROLE).
    /// @param intervalId The interval every trade is for.
    /// @param orders The signed orders the trades refer to (each verified once per batch).
    /// @param trades The trades, ascending by tradeId, each with the validator's verdict.
    /// @param evidenceHash The validator's grid evidence hash.
    /// @param validatorSignature 65-byte signature of the GridAttestation by a VALIDATOR_ROLE key.
    /// @return commitment The batch commitment (keccak256 of the concatenated 7-word TradeRecords).
    function recordTrades(
        uint64 intervalId,
        SignedOrder[] calldata orders,
        Trade[] calldata trades,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment);

    /// @notice Settle an interval (anyone): every recorded batch again, in recording order, and the sorted list
    /// of every trader of the interval. Allowed once all traders' readings are in or the deadline has passed.
    /// @param intervalId The interval.
    /// @param batches The approved TradeRecords of each batch, exactly as committed.
    /// @param parties Every seller and buyer of the interval, strictly ascending by address.
    /// @param positions For the j-th trade (all batches in order): positions[2j] = its seller's and
    /// positions[2j+1] = its buyer's position in `parties` (checked, so a hint and not a trust).
    function settle(
        uint64 intervalId,
        TradeRecord[][] calldata batches,
        address[] calldata parties,
        uint32[] calldata positions
    ) external;

    /// @notice Internal balance of an account.
    function balanceOf(address account) external view returns (uint128 available, uint128 locked);
    /// @notice Filled energy of (trader, nonce) and whether it is cancelled.
    function filledOf(address trader, uint64 nonce) external view returns (uint64 filledWh, bool cancelled);
    /// @notice Bookkeeping of an interval.
    function intervalOf(uint64 intervalId) external view returns (IntervalState memory);
    /// @notice Commitment of a recorded batch.
    function commitmentOf(uint64 intervalId, uint256 batchIndex) external view returns (bytes32);
    /// @notice EIP-712 digest of an order (its orderHash).
    function orderHash(Order calldata order) external view returns (bytes32);
    /// @notice tradeId of a pair of orders.
    function tradeIdOf(Order calldata sell, Order calldata buy) external view returns (bytes32);
    /// @notice EIP-712 digest of a GridAttestation.
    function attestationDigest(
        uint64 intervalId,
        bytes32[] calldata tradeIds,
        uint8[] calldata verdicts,
        bytes32 evidenceHash
    ) external view returns (bytes32);
    /// @notice Escrow locked for a trade: ceil(energyWh * pricePerKWh / 1000).
    function escrowOf(uint64 energyWh, uint128 pricePerKWh) external pure returns (uint256);
    /// @notice Time after which an interval can be settled with missing readings counted as zero.
    function settlementDeadline(uint64 intervalId) external view returns (uint256);
    /// @notice Interval length in seconds.
    function intervalSeconds() external view returns (uint64);
    /// @notice Delay after an interval's end before missing readings count as zero.
    function settlementDelaySeconds() external view returns (uint64);
}
