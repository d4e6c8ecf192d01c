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
/// - Settlement (min of two, pro rata): E_s = sum of the seller's approved sales in the interval, X_s its
///   metered export, r_s = min(1, X_s / E_s); buyers likewise with purchases and metered import. A trade of q Wh
///   delivers floor(q * min(r_s, r_b)) Wh, the seller is paid floor(delivered * price / 1000), the buyer gets
///   escrow - paid back. Readings missing at the deadline count as zero.
/// - An interval settles in one `settle` call over all its batches (about 15k gas per trade, so some
///   1,900 trades per interval fit a 30M-gas block); chunked settlement is not implemented. Settle within
///   the readings window of {IMeterReadings} (`readingWindowIntervals`): readings overwritten by a later
///   interval count as missing. The constructor requires settlementDelay <= window / 2.
/// - Internal balances assume a plain ERC-20: tokens that take a fee on transfer are not supported.
///
/// Packed calldata (big-endian, no padding; `packOrder`/`packTrade` build the first two, and
/// backend/chain/batches.py is the Python encoder). A length that is not a whole number of records
/// reverts with `MarketMalformedCalldata(field, length)`: field 0 orders, 1 trades, 2 a settle batch,
/// 3 parties, 4 positions.
/// - orders: 153 bytes per signed order, each sent once per batch however many trades it is in:
///   trader (20) | side (1) | intervalId (8) | energyWh (8) | pricePerKWh (16) | nonce (8) | expiry (8) |
///   counterparty (20) | r (32) | vs (32) - the signature in EIP-2098 compact form (vs = yParity << 255 | s,
///   s in the lower half of the curve order).
/// - trades: 29 bytes per trade: sellOrder (2, index into orders) | buyOrder (2) | energyWh (8) |
///   pricePerKWh (16) | verdict (1).
/// - trade record (what settlement needs of an approved trade), 104 bytes: tradeId (32) | seller (20) |
///   buyer (20) | sellerIndex (4) | buyerIndex (4) | energyWh (8) | pricePerKWh (16) (indices: registry
///   participant indices). A batch's commitment = keccak256 of its approved trades' records concatenated in
///   batch order; `settle` takes each batch's record bytes again and checks them against the commitments.
/// - parties: 20 bytes per address, strictly ascending; positions: 2 bytes per entry, for the j-th record
///   (all batches in order) the seller's then the buyer's position in parties.
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
    /// @notice Packed calldata whose length is not a whole number of records (field: see the layouts).
    error MarketMalformedCalldata(uint8 field, uint256 length);

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
    /// @param orders The signed orders the trades refer to, packed (153 bytes each, see above); each is
    /// verified once per batch.
    /// @param trades The trades, packed (29 bytes each), ascending by tradeId, with the validator's verdicts.
    /// @param evidenceHash The validator's grid evidence hash.
    /// @param validatorSignature 65-byte signature of the GridAttestation by a VALIDATOR_ROLE key.
    /// @return commitment The batch commitment (keccak256 of the concatenated 104-byte trade records).
    function recordTrades(
        uint64 intervalId,
        bytes calldata orders,
        bytes calldata trades,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment);

    /// @notice Settle an interval (anyone): every recorded batch again, in recording order, and the sorted list
    /// of every trader of the interval. Allowed once all traders' readings are in or the deadline has passed.
    /// @param intervalId The interval.
    /// @param batches Each batch's approved trade records (104 bytes each), exactly as committed.
    /// @param parties Every seller and buyer of the interval, 20 bytes each, strictly ascending.
    /// @param positions 2 bytes each: for the j-th record (all batches in order) the seller's then the
    /// buyer's position in `parties` (checked, so a hint and not a trust).
    function settle(
        uint64 intervalId,
        bytes[] calldata batches,
        bytes calldata parties,
        bytes calldata positions
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
    /// @notice The 153-byte packed form of a signed order (for console users; the backend packs off-chain).
    function packOrder(Order calldata order, bytes32 r, bytes32 vs) external pure returns (bytes memory);
    /// @notice The 29-byte packed form of a trade.
    function packTrade(uint16 sellOrder, uint16 buyOrder, uint64 energyWh, uint128 pricePerKWh, uint8 verdict)
        external
        pure
        returns (bytes memory);
    /// @notice Escrow locked for a trade: ceil(energyWh * pricePerKWh / 1000).
    function escrowOf(uint64 energyWh, uint128 pricePerKWh) external pure returns (uint256);
    /// @notice Time after which an interval can be settled with missing readings counted as zero.
    function settlementDeadline(uint64 intervalId) external view returns (uint256);
    /// @notice Interval length in seconds.
    function intervalSeconds() external view returns (uint64);
    /// @notice Delay after an interval's end before missing readings count as zero.
    function settlementDelaySeconds() external view returns (uint64);
}
