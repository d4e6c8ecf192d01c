// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Flexibility activations: validator-attested, paid on metered delivery
/// @notice EIP-712 domain: name "tegrid FlexibilityMarket", version "1", this chain id, this contract.
///
/// Signed types:
/// - `FlexOffer(address provider,address device,uint64 intervalId,uint8 direction,uint32 powerW,int32 baselineW,uint128 pricePerKWh,uint256 nonce,uint64 expiry)`
///   signed by the provider's wallet: its device can move `powerW` from `baselineW` for one interval,
///   up (direction 0: to baselineW + powerW) or down (1: to baselineW - powerW), for `pricePerKWh`
///   token base units per kWh. W positive = injection into the grid, negative = consumption.
///   offerHash = its EIP-712 digest.
/// - `FlexAttestation(uint64 intervalId,uint32 batchIndex,bytes activations,bytes32 evidenceHash)` signed
///   by a VALIDATOR_ROLE key (the key that attests trades): `activations` is the batch's packed calldata
///   (below; EIP-712 hashes `bytes` as keccak256 of its content), so the signature covers every value
///   of every activation - the offer, activatedW, tradeId, the rescued trade's energy, payers and
///   shares - and its position; `evidenceHash` the Neural Grid's evidence of the interval (trades and
///   activations).
///
/// Rules:
/// - activationId = keccak256(abi.encode(offerHash, tradeId)); tradeId = the rescued trade's id, or zero
///   for a DSO-service activation (the grid operator buys flexibility for a base state past a limit).
/// - energyWh = floor(activatedW x intervalSeconds / 3600); cost = floor(energyWh x pricePerKWh / 1000).
/// - Payers: a DSO-service activation is paid by EnergyMarket's balancing account alone (payer0, share0 =
///   cost; payer1 zero), within the per-interval DSO budget (`setDsoBudget`, GRID_OPERATOR_ROLE). A
///   trade rescue is paid by the trade's seller (payer0) and buyer (payer1): the seller floor(cost/2),
///   the buyer the rest; each share at most its payer's remedy cap x tradeEnergyWh / 1000 (floor;
///   `setRemedyCap`, default 0: never pays, never rescued); when one cap binds the other pays the rest
///   within its own cap; the shares given must be exactly this split.
/// - Recording (MARKET_OPERATOR_ROLE), up to EnergyMarket's gate closure for the interval, batches in
///   sequence (batchIndex 0, 1, ...): activations in strictly ascending (offerHash, tradeId) order
///   across the interval's batches (so none is recorded twice and an offer's activations are
///   consecutive: their activatedW sum at most powerW, with no storage per offer); each offer checked
///   on chain (signature, interval, not expired, direction, provider active, device registered,
///   active and the provider's, baseline and the offer's target within the device's limits). A batch
///   with a trade rescue needs every attested trade batch of the interval on EnergyMarket. Each share
///   is locked in EnergyMarket (refused for an owing payer or one without the available funds:
///   EnergyMarket's `MarketAccountOwing` / `MarketInsufficientBalance(payer, available, needed)`;
///   consecutive shares of one payer are locked in one call, so `needed` is their sum).
/// - Settlement (anyone, per batch, once): from the interval's end, with each device's reading in
///   MeterReadings or at EnergyMarket's settlement deadline, before its `reclaimAfter`. Metered device
///   power W = (exportWh - importWh) x 3600 / intervalSeconds (truncated); delivered W: up =
///   clamp(metered - baselineW, 0, activatedW), down = clamp(baselineW - metered, 0, activatedW); a
///   missing reading delivers nothing. The provider gets paid = floor(cost x delivered / activatedW):
///   payer0 floor(share0 x paid / cost) of it, payer1 the rest; what is left of each share goes back
///   to its payer. From `reclaimAfter` an unsettled batch's shares go back in full (`reclaimActivations`).
/// - No storage per activation: one commitment per batch, keccak256 of its activation records (below:
///   what paying on delivery needs of each activation, derived on chain from the attested activations
///   while they are recorded), and one event per batch; settlement and reclaim take the records again
///   (121 bytes each instead of 293: the offer's signature, price and nonce were checked at recording).
///   `ActivationBatchClosed` says per activation, in batch order, what it delivered; the payments
///   follow from the rule above (backend/chain/flex.py computes them, and the activation ids, off chain).
///
/// Packed calldata of `recordActivations`: 293 bytes per activation, big-endian, no padding
/// (contracts/libraries/PackedActivation.sol names the offsets; backend/chain/flex.py is the Python
/// encoder): provider (20) | device (20) | intervalId (8) | direction (1) | powerW (4) | baselineW (4,
/// two's complement) | pricePerKWh (16) | nonce (32) | expiry (8) | r (32) | vs (32) - the offer
/// signature in EIP-2098 compact form - | activatedW (4) | tradeId (32) | tradeEnergyWh (8) | payer0 (20) |
/// share0 (16) | payer1 (20) | share1 (16).
///
/// Activation record (`settleActivations`, `reclaimActivations`; contracts/libraries/ActivationRecord.sol):
/// 121 bytes, the same fields of the same activation: device (20) | direction (1) | baselineW (4) |
/// activatedW (4) | provider (20) | payer0 (20) | share0 (16) | payer1 (20) | share1 (16).
interface IFlexibilityMarket {
    /// @notice A recorded batch of activations: its commitment and where it stands.
    enum BatchState {
        None,
        Recorded,
        Settled,
        Reclaimed
    }

    /// @notice Per-interval bookkeeping: the last recorded (offerHash, tradeId), what the last offer has
    /// activated so far, what the DSO spent, and how many batches were recorded.
    struct IntervalBook {
        bytes32 lastOfferHash;
        bytes32 lastTradeId;
        uint64 lastOfferUsedW;
        uint128 dsoSpent;
        uint32 batchCount;
    }

    /// @notice Deployment with a zero address, or a market whose registry or readings are other ones.
    error FlexInvalidConfig();
    /// @notice recordActivations by an account without MARKET_OPERATOR_ROLE (in the registry).
    error FlexNotOperator(address caller);
    /// @notice setDsoBudget by an account without GRID_OPERATOR_ROLE (in the registry).
    error FlexNotGridOperator(address caller);
    /// @notice Packed activations that are empty or not whole 293-byte records.
    error FlexMalformedCalldata(uint256 length);
    /// @notice recordActivations after EnergyMarket's gate closure for the interval.
    error FlexGateClosed(uint64 intervalId, uint256 gateClosure);
    /// @notice A batch index other than the next one.
    error FlexBatchOutOfSequence(uint64 intervalId, uint256 expected, uint256 given);
    /// @notice The FlexAttestation signature does not recover to a VALIDATOR_ROLE key (zero: invalid).
    error FlexInvalidValidatorSignature(address signer);
    /// @notice An offer signed for another interval than the batch's.
    error FlexOfferIntervalMismatch(bytes32 offerHash, uint64 offerIntervalId);
    /// @notice An offer recorded after its expiry (chain time).
    error FlexOfferExpired(bytes32 offerHash, uint64 expiry);
    /// @notice An offer whose signature does not recover to its provider (or has a high s).
    error FlexInvalidOfferSignature(bytes32 offerHash, address provider);
    /// @notice An offer whose direction is neither 0 (up) nor 1 (down).
    error FlexInvalidDirection(bytes32 offerHash, uint8 direction);
    /// @notice An offer of a provider that is not an active participant.
    error FlexProviderInactive(address provider);
    /// @notice A device that is not registered to the provider (owner zero: not registered).
    error FlexDeviceNotOwned(address device, address owner);
    /// @notice A deactivated device.
    error FlexDeviceInactive(address device);
    /// @notice The offer's baseline or target power (baselineW +/- powerW) outside the device's limits.
    error FlexOutsideDeviceLimits(address device, int256 powerW);
    /// @notice Activations not in strictly ascending (offerHash, tradeId) order across the interval.
    error FlexActivationOutOfOrder(bytes32 activationId);
    /// @notice activatedW of zero.
    error FlexZeroActivation(bytes32 activationId);
    /// @notice An offer's activations in the interval sum to more than its powerW.
    error FlexOfferOverActivated(bytes32 offerHash, uint256 activatedW, uint256 powerW);
    /// @notice Payers that the rule does not allow: a DSO-service activation not paid by the balancing
    /// account alone, or a trade rescue with a zero or the same payer twice.
    error FlexWrongPayers(bytes32 activationId, address payer0, address payer1);
    /// @notice Shares other than the rule's split of the cost.
    error FlexSharesMismatch(bytes32 activationId, uint256 expected0, uint256 expected1);
    /// @notice The payers' remedy caps together cannot cover the cost of a trade rescue.
    error FlexRemedyCapExceeded(bytes32 activationId, uint256 cost, uint256 caps);
    /// @notice DSO-service activations of an interval over the DSO budget.
    error FlexDsoBudgetExceeded(uint64 intervalId, uint256 spent, uint256 budget);
    /// @notice A trade rescue recorded before every attested trade batch of its interval is on EnergyMarket.
    error FlexTradesNotRecorded(uint64 intervalId);
    /// @notice Settlement or reclaim of a batch not recorded, already settled or already reclaimed.
    error FlexBatchNotOpen(uint64 intervalId, uint256 batchIndex, BatchState state);
    /// @notice Activations that are not the batch's committed bytes.
    error FlexBatchCommitmentMismatch(uint64 intervalId, uint256 batchIndex);
    /// @notice Settlement before the interval's end, or before a device's reading is in while the
    /// settlement deadline has not passed (`notBefore` is when it can run).
    error FlexSettlementNotReady(uint64 intervalId, uint256 notBefore);
    /// @notice Settlement at or after EnergyMarket's `reclaimAfter`: only reclaim is left.
    error FlexSettlementExpired(uint64 intervalId, uint256 reclaimAfter);
    /// @notice A remedy cap above 2^96 - 1 base units per kWh.
    error FlexRemedyCapTooLarge(uint256 maxPerKWh);
    /// @notice reclaimActivations before `reclaimAfter`.
    error FlexReclaimNotReady(uint64 intervalId, uint256 reclaimAfter);

    /// @notice A participant set its remedy cap (base units per kWh of a rescued trade of its own).
    event RemedyCapSet(address indexed account, uint128 maxPerKWh, uint64 fromInterval);
    /// @notice The grid operator set the DSO budget (base units per interval).
    event DsoBudgetSet(uint128 budgetPerInterval);
    /// @notice A batch of activations was recorded and their shares locked; `commitment` is keccak256 of
    /// its activation records (the activations themselves are the transaction's attested calldata).
    event ActivationBatchRecorded(
        uint64 indexed intervalId, uint32 batchIndex, bytes32 commitment, uint32 count, bytes32 evidenceHash
    );
    /// @notice A batch was settled (`reclaimed` false) or reclaimed (every share back to its payers).
    /// @param deliveries Settled: per activation in batch order 12 bytes, meteredW (int64: the device's
    /// metered power, zero without a reading) | deliveredW (uint32); each provider was paid
    /// floor(cost x deliveredW / activatedW), the rest of each share went back. Reclaimed: empty.
    event ActivationBatchClosed(uint64 indexed intervalId, uint32 batchIndex, bool reclaimed, bytes deliveries);

    /// @notice EIP-712 type hash of FlexOffer.
    function FLEX_OFFER_TYPEHASH() external view returns (bytes32);
    /// @notice EIP-712 type hash of FlexAttestation.
    function FLEX_ATTESTATION_TYPEHASH() external view returns (bytes32);

    /// @notice Set the caller's remedy cap: at most `maxPerKWh` x tradeEnergyWh / 1000 base units per
    /// rescued trade of its own (0, the default: its trades are never rescued), for the intervals from
    /// the first whose gate closes more than one interval from now (`RemedyCapSet.fromInterval`); the
    /// intervals before keep the cap they are cleared with. At most 2^96 - 1 (`FlexRemedyCapTooLarge`).
    function setRemedyCap(uint128 maxPerKWh) external;
    /// @notice The remedy cap `account` set last (base units per kWh; in force from its fromInterval).
    function remedyCapOf(address account) external view returns (uint128);
    /// @notice The remedy cap of `account` for interval `intervalId` (what recording checks).
    function remedyCapAt(address account, uint64 intervalId) external view returns (uint128);
    /// @notice Set the DSO budget (GRID_OPERATOR_ROLE): at most `budgetPerInterval` base units of
    /// DSO-service activations per interval, from the balancing account.
    function setDsoBudget(uint128 budgetPerInterval) external;
    /// @notice The DSO budget per interval (base units).
    function dsoBudget() external view returns (uint128);

    /// @notice Record a validator-attested batch of activations for one interval (MARKET_OPERATOR_ROLE).
    /// @param intervalId The interval of every activation.
    /// @param batchIndex The batch's position (batches recorded so far for the interval).
    /// @param activations Packed activations (293 bytes each, see above).
    /// @param evidenceHash The validator's grid evidence hash of the interval.
    /// @param validatorSignature 65-byte signature of the FlexAttestation by a VALIDATOR_ROLE key.
    /// @return commitment keccak256 of the batch's activation records.
    function recordActivations(
        uint64 intervalId,
        uint32 batchIndex,
        bytes calldata activations,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment);

    /// @notice Settle a recorded batch on metered delivery (anyone, once; timing above): the providers'
    /// payments and the payers' refunds in one EnergyMarket call.
    /// @param records The batch's activation records (121 bytes each, `recordsOf` its activations),
    /// exactly as committed.
    function settleActivations(uint64 intervalId, uint32 batchIndex, bytes calldata records) external;

    /// @notice From EnergyMarket's `reclaimAfter` (anyone): an unsettled batch's shares back to its payers.
    /// @param records The batch's activation records, exactly as committed.
    function reclaimActivations(uint64 intervalId, uint32 batchIndex, bytes calldata records) external;

    /// @notice The activation records of packed activations (what a batch of them commits to).
    function recordsOf(bytes calldata activations) external pure returns (bytes memory);

    /// @notice Bookkeeping of an interval.
    function intervalBookOf(uint64 intervalId) external view returns (IntervalBook memory);
    /// @notice A batch's commitment and state.
    function batchOf(uint64 intervalId, uint32 batchIndex) external view returns (bytes32 commitment, BatchState state);
    /// @notice EIP-712 digest of a FlexOffer (its offerHash) from its fields.
    function offerHash(
        address provider,
        address device,
        uint64 intervalId,
        uint8 direction,
        uint32 powerW,
        int32 baselineW,
        uint128 pricePerKWh,
        uint256 nonce,
        uint64 expiry
    ) external view returns (bytes32);
    /// @notice EIP-712 digest of a FlexAttestation.
    function attestationDigest(uint64 intervalId, uint32 batchIndex, bytes calldata activations, bytes32 evidenceHash)
        external
        view
        returns (bytes32);
    /// @notice Cost of an activation: floor(floor(activatedW x intervalSeconds / 3600) x pricePerKWh / 1000).
    function costOf(uint32 activatedW, uint128 pricePerKWh) external view returns (uint256);
}
