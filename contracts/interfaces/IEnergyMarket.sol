// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Peer-to-peer energy market: escrow, validator-attested trade batches, firm settlement with
/// imbalance against a balancing account
/// @notice EIP-712 domain: name "tegrid EnergyMarket", version "1", this chain id, this contract.
///
/// Signed types:
/// - `Order(address trader,uint8 side,uint64 intervalId,uint64 energyWh,uint128 pricePerKWh,uint64 nonce,uint64 expiry,address counterparty)`
///   side 0 = SELL, 1 = BUY; price in token base units per kWh; counterparty zero = anyone; expiry a unix time.
/// - `GridAttestation(uint64 intervalId,uint32 batchIndex,uint32 batchCount,bytes32[] tradeIds,uint64[] energyWh,uint128[] pricePerKWh,uint8[] verdicts,bytes32 evidenceHash)`
///   signed by a VALIDATOR_ROLE key: batch `batchIndex` of the `batchCount` batches the validator cleared
///   for the interval; the arrays list every trade of the batch in batch order with the energy and price
///   the contract records and its verdict (0 approved; 1 VOLTAGE_HIGH, 2 VOLTAGE_LOW, 3 LINE_OVERLOAD,
///   4 TRAFO_OVERLOAD, 5 NOT_CONVERGED, 6 UNKNOWN_BUS, 7 INVALID_TRADE, 8 ISLAND_BALANCE; other non-zero codes are vetoes
///   too). The parties are bound through the trade ids (each covers both signed orders, traders included),
///   the chain and contract through the domain. Standard EIP-712 array encoding.
///
/// Identifiers and rules:
/// - orderHash = the order's EIP-712 digest; tradeId = keccak256(abi.encode(sellOrderHash, buyOrderHash)).
/// - Fill state is kept per (trader, nonce): orders signed with the same nonce share it; cancelling a nonce
///   makes every order with it unrecordable.
/// - Within an interval, trades (approved and vetoed) must be recorded in strictly ascending tradeId order,
///   across all batches: this makes recording a trade twice impossible without a storage slot per trade.
///   Batches are recorded in their attested order (batchIndex 0, 1, ...) and all carry the same batchCount.
/// - Timeline of an interval (chain time): batches are recorded up to its gate closure
///   (`gateClosure` = interval start - `gateLeadSeconds`, set at deployment); settlement starts after
///   the gate closure once every attested batch is recorded, and needs every party's reading or the
///   settlement deadline (interval end + `settlementDelaySeconds`); it may run in pages of whole batches
///   until `reclaimAfter` (the deadline + `settlementDelaySeconds`). From then on anyone may `reclaim`:
///   the escrow of every trade not yet settled goes back to its buyer (also for an interval whose batches
///   never all arrived).
/// - Escrow of a trade = ceil(energyWh * pricePerKWh / 1000) (rounded up so the seller can always be paid).
/// - Settlement of trades (firm): a trade of q Wh at price p pays the seller floor(q * p / 1000) from the
///   buyer's escrow; the buyer gets the rounding remainder (escrow - paid) back. What the meters show
///   does not change a trade's payment: deviations are settled as imbalance.
/// - Imbalance (with the last page of `settle`): for every party of the interval, contracted net position
///   C = sold Wh - bought Wh (its approved trades), metered net position M = exportWh - importWh (its
///   reading; a reading missing at the deadline counts as zero), deviation D = M - C. The interval's
///   clearing price P = floor(sum(q * p) / sum(q)) over its approved trades (computed from the committed
///   records, nothing unsigned). D < 0 (short: the grid supplied |D|): the party pays
///   ceil(|D| * P * shortPriceBps / 10^7) to the balancing account, from its available balance; what that
///   cannot cover is recorded as its debt (`debtOf`), never a negative balance. D > 0 (long: the grid
///   absorbed D): the balancing account pays floor(D * P * longPriceBps / 10^7), nothing for a missing
///   reading; when its available balance plus this interval's short payments cannot pay every long party
///   in full, each gets the same share (floor) of what it is due. The bps are fixed per interval at its
///   first recorded batch (`intervalOf`), from the prices the grid operator set (`setImbalancePrices`).
///   A reclaimed interval settles no imbalance. The balancing account itself settles none.
/// - Debt: an account that owes can neither have an order recorded nor withdraw (`MarketAccountOwing`);
///   a deposit pays the debt first (to the balancing account), and `repayDebt` pays it from the
///   available balance.
/// - `settle` takes every batch of the interval (the totals of each party span all batches) and pays the
///   trades of batches [settled so far, pageEnd): a page costs about 2k gas per trade of the interval
///   (calldata, commitment and totals) plus about 13k per trade paid; the last page also about 3-5k
///   per party for its imbalance (docs/benchmarks.md). The constructor requires
///   2 x settlementDelay <= the readings window of {IMeterReadings}, so settlement always reads
///   readings that a later interval has not overwritten.
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
/// The offsets and sizes are named in contracts/libraries (PackedOrder, PackedTrade, TradeRecord), whose
/// typed getters are the contract's only reads of these records; docs/packed-calldata.md lists every
/// field byte by byte.
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
    /// lastTradeId: highest trade id recorded; batchCount: batches recorded; approvedCount: approved trades
    /// recorded; expectedBatches: the batchCount the validator attested (0 before the first batch);
    /// settledBatches: batches settled so far (batches [0, settledBatches) paid by `settle`; a reclaim
    /// leaves it as it was); settled: every batch is settled or reclaimed; reclaimed: the escrow of
    /// batches [settledBatches, batchCount) went back to the buyers; shortPriceBps, longPriceBps: the
    /// imbalance prices of the interval (basis points of its clearing price), taken when its first batch
    /// was recorded (in the same storage slot as the counters, so for no extra write).
    struct IntervalState {
        bytes32 lastTradeId;
        uint32 batchCount;
        uint32 approvedCount;
        uint32 expectedBatches;
        uint32 settledBatches;
        bool settled;
        bool reclaimed;
        uint32 shortPriceBps;
        uint32 longPriceBps;
    }

    /// @notice Where an approved trade stands: its escrow locked and not yet settled (Unsettled), paid
    /// out by `settle` (Settled), or returned to the buyer by `reclaim` (Reclaimed).
    enum TradeState {
        Unsettled,
        Settled,
        Reclaimed
    }

    /// @notice An approved trade as `tradeOf` reads it: the batch it was recorded in, its parties,
    /// amount, price, the escrow locked for it (token base units) and its state. What settlement
    /// delivered and paid is in the trade's `TradeSettled` event.
    struct TradeInfo {
        uint64 intervalId;
        uint32 batchIndex;
        address seller;
        address buyer;
        uint64 energyWh;
        uint128 pricePerKWh;
        uint256 escrow;
        TradeState state;
    }

    /// @notice A validator attestation of one batch, as signed (see the type string above).
    struct GridAttestation {
        uint64 intervalId;
        uint32 batchIndex;
        uint32 batchCount;
        bytes32[] tradeIds;
        uint64[] energyWh;
        uint128[] pricePerKWh;
        uint8[] verdicts;
        bytes32 evidenceHash;
    }

    /// @notice Deployment with a zero token, registry, readings or balancing account address, or a
    /// settlement delay longer than half the readings window of {IMeterReadings}.
    error MarketInvalidConfig();
    /// @notice Imbalance prices outside their bounds: short within [10,000, 100,000] bps (1x to 10x the
    /// clearing price), long within [0, 10,000] (up to 1x), so no deviation ever pays better than the trade.
    /// @param shortPriceBps The short price given.
    /// @param longPriceBps The long price given.
    error MarketInvalidImbalancePrices(uint256 shortPriceBps, uint256 longPriceBps);
    /// @notice setImbalancePrices by an account without GRID_OPERATOR_ROLE (in the registry).
    /// @param caller The caller.
    error MarketNotGridOperator(address caller);
    /// @notice An order of an account that owes imbalance payments (recordTrades), or a withdrawal by it.
    /// @param account The account.
    /// @param debt What it owes, in token base units (deposit or `repayDebt` to clear it).
    error MarketAccountOwing(address account, uint256 debt);
    /// @notice repayDebt by an account that owes nothing, or whose available balance is zero.
    /// @param account The caller.
    error MarketNothingToRepay(address account);
    /// @notice deposit or withdraw of zero tokens.
    error MarketZeroAmount();
    /// @notice deposit of more than 2^128 - 1 base units (balances are uint128).
    /// @param amount The amount given.
    error MarketAmountTooLarge(uint256 amount);
    /// @notice A withdrawal or a trade's escrow exceeds the account's available balance.
    /// @param account The account (the caller of withdraw, or the buyer of the trade).
    /// @param available Its available balance in token base units.
    /// @param required The amount needed in token base units.
    error MarketInsufficientBalance(address account, uint256 available, uint256 required);
    /// @notice recordTrades by an account without MARKET_OPERATOR_ROLE (in the registry).
    /// @param caller The caller.
    error MarketNotOperator(address caller);
    /// @notice recordTrades with no trades.
    error MarketEmptyBatch();
    /// @notice The batch's GridAttestation signature does not recover to a VALIDATOR_ROLE key.
    /// @param signer The recovered address (zero when the signature is invalid).
    error MarketInvalidValidatorSignature(address signer);
    /// @notice A trade id not above the interval's last recorded one (trades go in strictly ascending
    /// tradeId order across the interval's batches).
    /// @param tradeId The trade.
    /// @param lastTradeId The highest trade id recorded before it.
    error MarketTradeOutOfOrder(bytes32 tradeId, bytes32 lastTradeId);
    /// @notice recordTrades, settle or reclaim of an interval already settled or reclaimed.
    /// @param intervalId The interval.
    error MarketIntervalSettled(uint64 intervalId);
    /// @notice A trade whose sell order is not a SELL order, or whose buy order is not a BUY order.
    /// @param tradeId The trade.
    /// @param expectedSide The side the order should have (0 SELL, 1 BUY).
    error MarketOrderWrongSide(bytes32 tradeId, uint8 expectedSide);
    /// @notice An order of a trade signed for another interval than the batch's.
    /// @param tradeId The trade.
    /// @param orderIntervalId The interval in the order.
    error MarketOrderIntervalMismatch(bytes32 tradeId, uint64 orderIntervalId);
    /// @notice An order recorded after its expiry (chain time).
    /// @param trader The order's trader.
    /// @param nonce The order's nonce.
    /// @param expiry The order's expiry (unix time).
    error MarketOrderExpired(address trader, uint64 nonce, uint64 expiry);
    /// @notice An order whose signature does not recover to its trader (or has a high s).
    /// @param trader The order's trader.
    /// @param nonce The order's nonce.
    error MarketInvalidOrderSignature(address trader, uint64 nonce);
    /// @notice A trade whose seller and buyer are the same trader.
    /// @param tradeId The trade.
    error MarketSelfTrade(bytes32 tradeId);
    /// @notice An order restricted to a counterparty is matched with another trader.
    /// @param trader The order's trader.
    /// @param nonce The order's nonce.
    /// @param counterparty The only trader the order may match.
    error MarketCounterpartyMismatch(address trader, uint64 nonce, address counterparty);
    /// @notice A trade price below the sell order's limit or above the buy order's.
    /// @param tradeId The trade.
    /// @param pricePerKWh The trade's price in token base units per kWh.
    error MarketPriceOutOfRange(bytes32 tradeId, uint128 pricePerKWh);
    /// @notice A trade of zero Wh.
    /// @param tradeId The trade.
    error MarketZeroTradeAmount(bytes32 tradeId);
    /// @notice An order whose (trader, nonce) was cancelled.
    /// @param trader The order's trader.
    /// @param nonce The cancelled nonce.
    error MarketOrderCancelled(address trader, uint64 nonce);
    /// @notice Trades take more energy from an order than is left of it (its energyWh minus what is filled
    /// under its nonce).
    /// @param trader The order's trader.
    /// @param nonce The order's nonce.
    /// @param remainingWh What was left of the order when the trade was applied, in Wh.
    error MarketOrderOverfilled(address trader, uint64 nonce, uint64 remainingWh);
    /// @notice An order of a trader that is not an active registered participant.
    /// @param trader The trader.
    error MarketParticipantInactive(address trader);
    /// @notice cancelNonce of a nonce the caller already cancelled.
    /// @param trader The caller.
    /// @param nonce The nonce.
    error MarketNonceAlreadyCancelled(address trader, uint64 nonce);
    /// @notice settle or reclaim of an interval with no recorded batch.
    /// @param intervalId The interval.
    error MarketIntervalNotRecorded(uint64 intervalId);
    /// @notice settle or reclaim given another number of batches than it needs (settle: every recorded
    /// batch; reclaim: the batches not yet settled).
    /// @param intervalId The interval.
    /// @param expected The number of batches needed.
    /// @param given The number of batches given.
    error MarketBatchCountMismatch(uint64 intervalId, uint256 expected, uint256 given);
    /// @notice A batch's trade records differ from what was committed when it was recorded.
    /// @param intervalId The interval.
    /// @param batchIndex The batch.
    error MarketBatchCommitmentMismatch(uint64 intervalId, uint256 batchIndex);
    /// @notice settle's parties are not strictly ascending.
    /// @param position The position of the first party not above the one before it.
    error MarketPartiesNotSorted(uint256 position);
    /// @notice A record's seller or buyer is not at the position its hint gives in parties.
    /// @param wallet The seller or buyer.
    error MarketPartyMissing(address wallet);
    /// @notice A trade refers to an order index past the batch's packed orders.
    /// @param index The order index given.
    error MarketOrderIndexOutOfRange(uint256 index);
    /// @notice settle's positions are not two per approved trade of the interval.
    /// @param expected The number of positions needed (2 x the interval's approved trades).
    /// @param given The number of positions given.
    error MarketPositionsMismatch(uint256 expected, uint256 given);
    /// @notice A party of settle that is in no trade of the interval.
    /// @param wallet The party.
    error MarketPartyUnused(address wallet);
    /// @notice settle before every party's reading is in and before the settlement deadline.
    /// @param intervalId The interval.
    /// @param deadline The settlement deadline (missing readings count as zero from then on).
    error MarketSettlementNotReady(uint64 intervalId, uint256 deadline);
    /// @notice Packed calldata whose length is not a whole number of records.
    /// @param field Which argument: 0 orders, 1 trades, 2 a settle or reclaim batch, 3 parties, 4 positions.
    /// @param length Its length in bytes.
    error MarketMalformedCalldata(uint8 field, uint256 length);
    /// @notice recordTrades after the interval's gate closure (`gateClosure`, chain time).
    /// @param intervalId The interval.
    /// @param gateClosure The last timestamp at which its batches could be recorded.
    error MarketGateClosed(uint64 intervalId, uint256 gateClosure);
    /// @notice A batch recorded out of its attested order.
    /// @param intervalId The interval.
    /// @param expectedIndex The index the next batch must carry (batches recorded so far).
    /// @param batchIndex The index given.
    error MarketBatchOutOfSequence(uint64 intervalId, uint256 expectedIndex, uint256 batchIndex);
    /// @notice A batch count of zero, not above the batch index, or unlike the count of the interval's
    /// first batch.
    /// @param intervalId The interval.
    /// @param expectedCount The count of the first batch (0 when this is the first).
    /// @param batchCount The count given.
    error MarketBatchCountInvalid(uint64 intervalId, uint256 expectedCount, uint256 batchCount);
    /// @notice settle before the interval's gate closure has passed (more batches may still come).
    /// @param intervalId The interval.
    /// @param gateClosure Its gate closure.
    error MarketRecordingOpen(uint64 intervalId, uint256 gateClosure);
    /// @notice settle of an interval whose attested batches did not all arrive (only `reclaim` is left).
    /// @param intervalId The interval.
    /// @param expected Batches attested.
    /// @param recorded Batches recorded.
    error MarketBatchesMissing(uint64 intervalId, uint256 expected, uint256 recorded);
    /// @notice settle at or after `reclaimAfter`: the unsettled escrow can only be reclaimed.
    /// @param intervalId The interval.
    /// @param reclaimAfter When reclaiming started.
    error MarketSettlementExpired(uint64 intervalId, uint256 reclaimAfter);
    /// @notice reclaim before `reclaimAfter`.
    /// @param intervalId The interval.
    /// @param reclaimAfter When reclaiming starts.
    error MarketReclaimNotReady(uint64 intervalId, uint256 reclaimAfter);
    /// @notice A settlement page that does not start after the batches already settled or ends past the last.
    /// @param intervalId The interval.
    /// @param settledBatches Batches already settled.
    /// @param pageEnd The page end given.
    error MarketPageInvalid(uint64 intervalId, uint256 settledBatches, uint256 pageEnd);
    /// @notice tradeOf with a batch's records (matching its commitment) that hold no trade `tradeId`.
    /// @dev Also the answer for a vetoed trade (vetoes are only announced, never committed) and for an
    /// id this market never recorded.
    /// @param tradeId The trade asked for.
    /// @param intervalId The interval given.
    /// @param batchIndex The batch given.
    error MarketTradeNotInBatch(bytes32 tradeId, uint64 intervalId, uint256 batchIndex);

    /// @notice attachFlexibility by an account without the registry's DEFAULT_ADMIN_ROLE.
    error MarketNotAdmin(address caller);
    /// @notice attachFlexibility when a FlexibilityMarket is already attached (once only).
    error MarketFlexibilityAttached(address flexibility);
    /// @notice flexLock or flexRelease by another caller than the attached FlexibilityMarket.
    error MarketNotFlexibility(address caller);
    /// @notice flexRelease moves whose credits do not sum to what they unlock.
    error MarketFlexUnbalanced(uint256 unlocked, uint256 credited);

    /// @notice The FlexibilityMarket that may lock and release balances was attached.
    event FlexibilityAttached(address flexibility);
    /// @notice Tokens were deposited into `account`'s internal balance.
    event Deposited(address indexed account, uint256 amount);
    /// @notice Tokens were withdrawn from `account`'s available balance.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice A trader cancelled a nonce.
    event NonceCancelled(address indexed trader, uint64 nonce);
    /// @notice An approved trade was recorded and the buyer's escrow locked.
    /// @dev Indexed (three topics at most): tradeId, seller, buyer. tradeId stays topic 1, as in
    /// TradeVetoed, TradeSettled and EscrowReclaimed, so one `eth_getLogs` filter `[null, tradeId]`
    /// returns a trade's whole life; a wallet filters its sales by topic 2 (`[TradeRecorded, null,
    /// wallet]`) and its purchases by topic 3 (`[TradeRecorded, null, null, wallet]`). intervalId is
    /// data: an interval's trades are those of the transactions of its `BatchRecorded` (intervalId
    /// indexed), and a wallet's own trades are few enough to sort by interval as they come.
    /// @param tradeId keccak256(abi.encode(sellOrderHash, buyOrderHash)).
    /// @param seller The sell order's trader.
    /// @param buyer The buy order's trader (whose escrow is locked).
    /// @param intervalId The delivery interval.
    /// @param energyWh Energy traded in Wh.
    /// @param pricePerKWh Price in token base units per kWh.
    event TradeRecorded(
        bytes32 indexed tradeId,
        address indexed seller,
        address indexed buyer,
        uint64 intervalId,
        uint64 energyWh,
        uint128 pricePerKWh
    );
    /// @notice A vetoed trade was recorded with the validator's reason; nothing is locked or consumed.
    event TradeVetoed(bytes32 indexed tradeId, uint8 reason);
    /// @notice A batch was recorded for an interval.
    event BatchRecorded(
        uint64 indexed intervalId, uint32 batchIndex, bytes32 commitment, uint32 approvedCount, bytes32 evidenceHash
    );
    /// @notice A trade was settled: the seller got `paid`, the buyer `refunded` of the escrow (the rounding
    /// remainder). `deliveredWh` is the trade's energy: trades settle firm, deviations as imbalance.
    event TradeSettled(bytes32 indexed tradeId, uint64 deliveredWh, uint256 paid, uint256 refunded);
    /// @notice Batches [fromBatch, toBatch) of an interval were settled (`tradeCount` approved trades).
    event BatchesSettled(uint64 indexed intervalId, uint32 fromBatch, uint32 toBatch, uint32 tradeCount);
    /// @notice Every batch of an interval is settled.
    event IntervalSettled(uint64 indexed intervalId, uint32 tradeCount);
    /// @notice The escrow of an unsettled trade went back to its buyer after `reclaimAfter`.
    event EscrowReclaimed(bytes32 indexed tradeId, address indexed buyer, uint256 refunded);
    /// @notice Batches from `fromBatch` on of an interval were reclaimed (`tradeCount` trades).
    event IntervalReclaimed(uint64 indexed intervalId, uint32 fromBatch, uint32 tradeCount);
    /// @notice One party's imbalance of an interval was settled (once per party, with the interval's
    /// last settlement page).
    /// @param intervalId The interval.
    /// @param account The party.
    /// @param contractedWh Its contracted net position: sold minus bought Wh.
    /// @param meteredWh Its metered net position: exported minus imported Wh (0 without a reading).
    /// @param payment What moved, token base units: negative paid to the balancing account (short),
    /// positive paid by it (long); deviation = meteredWh - contractedWh.
    /// @param shortfall What could not be paid: a short party's new debt, or what an underfunded
    /// balancing account did not pay a long one.
    event ImbalanceSettled(
        uint64 indexed intervalId,
        address indexed account,
        int256 contractedWh,
        int256 meteredWh,
        int256 payment,
        uint256 shortfall
    );
    /// @notice An interval's imbalance was settled: its clearing price and imbalance prices, what the
    /// balancing account collected from short parties and paid to long ones (token base units).
    event IntervalImbalanceSettled(
        uint64 indexed intervalId,
        uint256 clearingPricePerKWh,
        uint32 shortPriceBps,
        uint32 longPriceBps,
        uint256 collected,
        uint256 paidOut
    );
    /// @notice The grid operator set the imbalance prices (also emitted at deployment); they apply to
    /// intervals whose first batch is recorded from now on.
    event ImbalancePricesChanged(uint32 shortPriceBps, uint32 longPriceBps);
    /// @notice An owing account paid `amount` of its debt to the balancing account; `remaining` is left.
    event DebtRepaid(address indexed account, uint256 amount, uint256 remaining);
    /// @notice The balancing account advanced `amount` of a remedy share `payer` no longer had; owed back.
    event FlexShareAdvanced(address indexed payer, uint256 amount);

    /// @notice EIP-712 type hash of Order.
    function ORDER_TYPEHASH() external view returns (bytes32);
    /// @notice EIP-712 type hash of GridAttestation.
    function ATTESTATION_TYPEHASH() external view returns (bytes32);

    /// @notice Move `amount` tokens from the caller (ERC-20 allowance needed) into its available balance;
    /// an owing caller's debt is paid from it first (to the balancing account).
    /// @param amount Token base units.
    function deposit(uint256 amount) external;

    /// @notice Withdraw `amount` of the caller's available balance (not while it owes).
    /// @param amount Token base units.
    function withdraw(uint256 amount) external;

    /// @notice Pay the caller's debt from its available balance (as much as it holds).
    function repayDebt() external;

    /// @notice Set the imbalance prices (GRID_OPERATOR_ROLE in the registry), in basis points of the
    /// interval's clearing price; they apply to intervals whose first batch is recorded afterwards.
    /// @param shortPriceBps Paid by a short party per Wh, within [10,000, 100,000].
    /// @param longPriceBps Paid to a long party per Wh, within [0, 10,000].
    function setImbalancePrices(uint32 shortPriceBps, uint32 longPriceBps) external;

    /// @notice Cancel every order of the caller signed with `nonce` (also partially filled ones).
    /// @param nonce The order nonce.
    function cancelNonce(uint64 nonce) external;

    /// @notice Record a validator-attested batch of trades for one interval (MARKET_OPERATOR_ROLE), up to
    /// the interval's gate closure.
    /// @param intervalId The interval every trade is for.
    /// @param batchIndex The batch's position among the interval's batches (batches recorded so far).
    /// @param batchCount How many batches the validator cleared for the interval (the same in each).
    /// @param orders The signed orders the trades refer to, packed (153 bytes each, see above); each is
    /// verified once per batch.
    /// @param trades The trades, packed (29 bytes each), ascending by tradeId, with the validator's verdicts.
    /// @param evidenceHash The validator's grid evidence hash.
    /// @param validatorSignature 65-byte signature of the GridAttestation by a VALIDATOR_ROLE key.
    /// @return commitment The batch commitment (keccak256 of the concatenated 104-byte trade records).
    function recordTrades(
        uint64 intervalId,
        uint32 batchIndex,
        uint32 batchCount,
        bytes calldata orders,
        bytes calldata trades,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment);

    /// @notice Settle a page of an interval (anyone): every recorded batch again, in recording order, and the
    /// sorted list of every trader of the interval; pays the trades of batches [settled so far, pageEnd);
    /// the last page (pageEnd = the batch count) also settles every party's imbalance. Allowed after the gate closure with every attested batch recorded, once all traders' readings are in
    /// or the settlement deadline has passed, and before `reclaimAfter`.
    /// @param intervalId The interval.
    /// @param batches Each batch's approved trade records (104 bytes each), exactly as committed.
    /// @param parties Every seller and buyer of the interval, 20 bytes each, strictly ascending.
    /// @param positions 2 bytes each: for the j-th record (all batches in order) the seller's then the
    /// buyer's position in `parties` (checked, so a hint and not a trust).
    /// @param pageEnd One past the last batch this call settles (the batch count settles the rest).
    function settle(
        uint64 intervalId,
        bytes[] calldata batches,
        bytes calldata parties,
        bytes calldata positions,
        uint32 pageEnd
    ) external;

    /// @notice From `reclaimAfter` on (anyone): the escrow of every trade in the batches not yet settled goes
    /// back to its buyer, and the interval is closed.
    /// @param intervalId The interval.
    /// @param batches The approved trade records of batches [settled so far, recorded), exactly as committed.
    function reclaim(uint64 intervalId, bytes[] calldata batches) external;

    /// @notice Attach the FlexibilityMarket (the registry's DEFAULT_ADMIN_ROLE, once): the only caller of
    /// `flexLock` and `flexRelease`. Balances stay here (one bank); it moves them as its rules say.
    function attachFlexibility(address flexibility_) external;
    /// @notice Lock `amount` of `payer`'s available balance (FlexibilityMarket only); what the payer no
    /// longer has (withdrawn since the clearing) the balancing account advances and the payer owes
    /// (`FlexShareAdvanced`, `debtOf`); `MarketInsufficientBalance(balancingAccount, ...)` if it cannot
    /// (and for the balancing account's own DSO shares).
    function flexLock(address payer, uint256 amount) external;
    /// @notice Release locked balances (FlexibilityMarket only), a whole batch in one call: `moves` is
    /// 96-byte entries of three words (account, unlocked, credited): each account's locked balance falls
    /// by `unlocked`, its available balance rises by `credited`. The sums of both must be equal
    /// (`MarketFlexUnbalanced`): a release moves funds, never makes or loses any.
    function flexRelease(bytes calldata moves) external;
    /// @notice The attached FlexibilityMarket (zero: none).
    function flexibility() external view returns (address);

    /// @notice Internal balance of an account.
    function balanceOf(address account) external view returns (uint128 available, uint128 locked);
    /// @notice What an account owes the balancing account (token base units; 0: nothing).
    function debtOf(address account) external view returns (uint256);
    /// @notice The account that settles every imbalance (set at deployment).
    function balancingAccount() external view returns (address);
    /// @notice The imbalance prices the next interval takes (basis points of its clearing price).
    function imbalancePrices() external view returns (uint32 shortPriceBps, uint32 longPriceBps);
    /// @notice Filled energy of (trader, nonce) and whether it is cancelled.
    function filledOf(address trader, uint64 nonce) external view returns (uint64 filledWh, bool cancelled);
    /// @notice Bookkeeping of an interval.
    function intervalOf(uint64 intervalId) external view returns (IntervalState memory);
    /// @notice Commitment of a recorded batch.
    function commitmentOf(uint64 intervalId, uint256 batchIndex) external view returns (bytes32);
    /// @notice An approved trade read from the chain: the caller gives the records of the batch it was
    /// recorded in (rebuilt from the transaction's `TradeRecorded` events and the registry indices, as
    /// `settle` takes them), checked against the batch's commitment; the state comes from the
    /// interval's bookkeeping. The contract keeps no storage per trade (a slot per trade would cost
    /// about 27k gas per trade recorded and settled; see docs/packed-calldata.md).
    /// @dev Reverts MarketMalformedCalldata(2, length) for records that are not whole 104-byte records,
    /// MarketBatchCommitmentMismatch when they are not the batch's (also for a batch never recorded),
    /// MarketTradeNotInBatch when the batch holds no approved trade `tradeId`.
    /// @param tradeId The trade.
    /// @param intervalId Its interval (`TradeRecorded.intervalId`).
    /// @param batchIndex Its batch (`BatchRecorded.batchIndex` of the same transaction).
    /// @param records Every trade record of that batch (104 bytes each), exactly as committed.
    /// @return trade The trade, its escrow and state.
    function tradeOf(bytes32 tradeId, uint64 intervalId, uint32 batchIndex, bytes calldata records)
        external
        view
        returns (TradeInfo memory trade);
    /// @notice EIP-712 digest of an order (its orderHash).
    function orderHash(Order calldata order) external view returns (bytes32);
    /// @notice tradeId of a pair of orders.
    function tradeIdOf(Order calldata sell, Order calldata buy) external view returns (bytes32);
    /// @notice EIP-712 digest of a GridAttestation.
    function attestationDigest(GridAttestation calldata attestation) external view returns (bytes32);
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
    /// @notice How long before an interval's start its gate closes (no batch is recorded after it).
    function gateLeadSeconds() external view returns (uint64);
    /// @notice The last timestamp at which a batch of `intervalId` can be recorded.
    function gateClosure(uint64 intervalId) external view returns (uint256);
    /// @notice From this timestamp on the interval can no longer be settled, only reclaimed.
    function reclaimAfter(uint64 intervalId) external view returns (uint256);
}
