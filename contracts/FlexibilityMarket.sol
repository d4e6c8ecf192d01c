// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {CompactSignature} from "./libraries/CompactSignature.sol";
import {
    ACT_DEVICE_OFFSET,
    ACTIVATION_SIZE,
    PackedActivation,
    PackedActivationLibrary
} from "./libraries/PackedActivation.sol";
import {
    ACTIVATION_RECORD_SIZE,
    ActivationRecord,
    ActivationRecordLibrary,
    REC_DEVICE_OFFSET,
    REC_STORE_SLACK
} from "./libraries/ActivationRecord.sol";
import {DEVICE_KEY_SIZE, DeviceState} from "./libraries/DeviceState.sol";
import {ADDRESS_SHIFT} from "./libraries/PackedField.sol";
import {IEnergyMarket} from "./interfaces/IEnergyMarket.sol";
import {IFlexibilityMarket} from "./interfaces/IFlexibilityMarket.sol";
import {IMeterReadings} from "./interfaces/IMeterReadings.sol";
import {IParticipantRegistry} from "./interfaces/IParticipantRegistry.sol";

/// @title FlexibilityMarket
/// @notice Activations of signed flexibility offers, attested by the grid validator, paid on metered
/// delivery from funds locked in EnergyMarket (the one bank). See {IFlexibilityMarket}.
contract FlexibilityMarket is EIP712, IFlexibilityMarket {
    /// @inheritdoc IFlexibilityMarket
    bytes32 public constant FLEX_OFFER_TYPEHASH = keccak256(
        "FlexOffer(address provider,address device,uint64 intervalId,uint8 direction,uint32 powerW,int32 baselineW,uint128 pricePerKWh,uint256 nonce,uint64 expiry)"
    );
    /// @inheritdoc IFlexibilityMarket
    bytes32 public constant FLEX_ATTESTATION_TYPEHASH =
        keccak256("FlexAttestation(uint64 intervalId,uint32 batchIndex,bytes activations,bytes32 evidenceHash)");

    bytes32 internal constant MARKET_OPERATOR_ROLE = keccak256("MARKET_OPERATOR_ROLE");
    bytes32 internal constant VALIDATOR_ROLE = keccak256("VALIDATOR_ROLE");
    bytes32 internal constant GRID_OPERATOR_ROLE = keccak256("GRID_OPERATOR_ROLE");
    uint8 internal constant UP = 0;
    uint8 internal constant DOWN = 1;
    uint256 internal constant SECONDS_PER_HOUR = 3600;
    // A settled activation in ActivationBatchClosed's `deliveries`: meteredW (int64) | deliveredW (uint32).
    uint256 internal constant DELIVERY_SIZE = 12;
    uint256 internal constant OFFER_SCRATCH_SIZE = 0x1a0;
    uint256 internal constant DELIVERY_METERED_W_SHIFT = 256 - 64;
    uint256 internal constant DELIVERY_DELIVERED_W_SHIFT = 256 - 96;

    IEnergyMarket public immutable market;
    IParticipantRegistry public immutable registry;
    IMeterReadings public immutable readings;
    uint64 public immutable intervalSeconds;
    address public immutable balancingAccount;

    /// @dev A remedy cap as it changes: `current` from interval `fromInterval` on, `previous` before it
    /// (one slot: what `_checkShares` reads costs one SLOAD as before).
    struct RemedyCap {
        uint96 previous;
        uint96 current;
        uint64 fromInterval;
    }

    mapping(address account => RemedyCap) private _remedyCaps;
    uint128 private _dsoBudget;
    mapping(uint64 intervalId => IntervalBook) private _books;
    // One commitment per batch (keccak256 of its activation records; no storage per activation); the
    // state beside it in its own slot.
    mapping(uint64 intervalId => mapping(uint256 batchIndex => bytes32)) private _commitments;
    mapping(uint64 intervalId => mapping(uint256 batchIndex => BatchState)) private _states;

    /// @dev A batch while it is recorded: the interval's cursor (copied from storage, written back once),
    /// scratch memory for the offer hashes, and whether the interval's trades were checked.
    struct Cursor {
        bytes32 lastOffer;
        bytes32 lastTrade;
        uint256 usedW;
        uint256 dsoSpent;
        uint256 dsoBudget;
        uint256 buf;
        bytes32 domain;
        bool tradesChecked;
        address lockPayer; // the payer of the run of shares not yet locked
        uint256 lockAmount; // what that run locks (one EnergyMarket call per run of one payer)
    }

    /// @dev What a settlement or a reclaim gives back and pays, sent to EnergyMarket in one `flexRelease`:
    /// its moves (account, unlocked, credited: one word each) in memory reserved for the batch at `start`
    /// (a length word, then at most three moves per activation), `end` past the last one; the run of
    /// shares of one payer not yet written (`payer`, what it unlocks and gets back) is merged into one move.
    struct Release {
        uint256 start;
        uint256 end;
        address payer;
        uint256 unlocked;
        uint256 refunded;
    }

    /// @param market_ The EnergyMarket holding every balance (it must attach this contract).
    /// @param registry_ The market's registry.
    /// @param readings_ The market's readings.
    constructor(IEnergyMarket market_, IParticipantRegistry registry_, IMeterReadings readings_)
        EIP712("tegrid FlexibilityMarket", "1")
    {
        if (address(market_) == address(0) || address(registry_) == address(0) || address(readings_) == address(0)) {
            revert FlexInvalidConfig();
        }
        market = market_;
        registry = registry_;
        readings = readings_;
        intervalSeconds = market_.intervalSeconds();
        balancingAccount = market_.balancingAccount();
    }

    // ------------------------------------------------------------------ settings

    /// @inheritdoc IFlexibilityMarket
    function setRemedyCap(uint128 maxPerKWh) external {
        if (maxPerKWh > type(uint96).max) revert FlexRemedyCapTooLarge(maxPerKWh);
        // From the first interval whose gate closes more than one interval from now: an interval that
        // may already be cleared (its book closed, its rescues planned on this cap) keeps the cap it
        // was cleared with, so consent cannot be withdrawn between the clearing and the recording.
        uint64 from = uint64((block.timestamp + intervalSeconds) / intervalSeconds + 1);
        while (market.gateClosure(from) <= block.timestamp + intervalSeconds) ++from;
        RemedyCap storage cap = _remedyCaps[msg.sender];
        // the cap of every interval before `from` stays what it is now (intervals before the earlier
        // change's `from` are past their gate closure: no activation of theirs is recorded any more)
        uint96 before = from - 1 >= cap.fromInterval ? cap.current : cap.previous;
        (cap.previous, cap.current, cap.fromInterval) = (before, uint96(maxPerKWh), from);
        emit RemedyCapSet(msg.sender, maxPerKWh, from);
    }

    /// @inheritdoc IFlexibilityMarket
    function setDsoBudget(uint128 budgetPerInterval) external {
        if (!registry.hasRole(GRID_OPERATOR_ROLE, msg.sender)) revert FlexNotGridOperator(msg.sender);
        _dsoBudget = budgetPerInterval;
        emit DsoBudgetSet(budgetPerInterval);
    }

    // ------------------------------------------------------------------ recording

    /// @inheritdoc IFlexibilityMarket
    function recordActivations(
        uint64 intervalId,
        uint32 batchIndex,
        bytes calldata activations,
        bytes32 evidenceHash,
        bytes calldata validatorSignature
    ) external returns (bytes32 commitment) {
        if (!registry.hasRole(MARKET_OPERATOR_ROLE, msg.sender)) revert FlexNotOperator(msg.sender);
        if (activations.length == 0 || activations.length % ACTIVATION_SIZE != 0) {
            revert FlexMalformedCalldata(activations.length);
        }
        uint256 closure = market.gateClosure(intervalId);
        if (block.timestamp > closure) revert FlexGateClosed(intervalId, closure);
        IntervalBook storage book = _books[intervalId];
        if (batchIndex != book.batchCount) revert FlexBatchOutOfSequence(intervalId, book.batchCount, batchIndex);
        _checkAttestation(intervalId, batchIndex, keccak256(activations), evidenceHash, validatorSignature);

        Cursor memory c = Cursor({
            lastOffer: book.lastOfferHash,
            lastTrade: book.lastTradeId,
            usedW: book.lastOfferUsedW,
            dsoSpent: book.dsoSpent,
            dsoBudget: _dsoBudget,
            buf: 0,
            domain: _domainSeparatorV4(),
            tradesChecked: false,
            lockPayer: address(0),
            lockAmount: 0
        });
        c.buf = _reserve(OFFER_SCRATCH_SIZE);
        commitment = _recordAll(intervalId, activations, c);
        uint256 n = activations.length / ACTIVATION_SIZE;
        (book.lastOfferHash, book.lastTradeId) = (c.lastOffer, c.lastTrade);
        (book.lastOfferUsedW, book.dsoSpent, book.batchCount) = (uint64(c.usedW), uint128(c.dsoSpent), batchIndex + 1);
        _commitments[intervalId][batchIndex] = commitment;
        _states[intervalId][batchIndex] = BatchState.Recorded;
        emit ActivationBatchRecorded(intervalId, batchIndex, commitment, uint32(n), evidenceHash);
    }

    /// @dev Records every activation of the batch, locks their shares and returns the hash of their
    /// records (written to memory as they are checked).
    function _recordAll(uint64 intervalId, bytes calldata activations, Cursor memory c)
        private
        returns (bytes32 commitment)
    {
        uint256 base = _cdPtr(activations);
        uint256 n = activations.length / ACTIVATION_SIZE;
        uint256[] memory devices = registry.deviceStatesOf(_keysOf(base + ACT_DEVICE_OFFSET, n, ACTIVATION_SIZE));
        uint256 out = _reserve(n * ACTIVATION_RECORD_SIZE + REC_STORE_SLACK);
        for (uint256 i = 0; i < n; ++i) {
            PackedActivation a = PackedActivationLibrary.at(base, i);
            _record(intervalId, a, c, devices[i]);
            ActivationRecordLibrary.store(out + i * ACTIVATION_RECORD_SIZE, a);
        }
        _flushLock(c);
        commitment = _hashMemory(out, n * ACTIVATION_RECORD_SIZE);
    }

    function _checkAttestation(
        uint64 intervalId,
        uint32 batchIndex,
        bytes32 activationsHash,
        bytes32 evidenceHash,
        bytes calldata signature
    ) private view {
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(FLEX_ATTESTATION_TYPEHASH, intervalId, batchIndex, activationsHash, evidenceHash))
        );
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError) signer = address(0);
        if (signer == address(0) || !registry.hasRole(VALIDATOR_ROLE, signer)) {
            revert FlexInvalidValidatorSignature(signer);
        }
    }

    /// @dev One activation: its offer (checked once per offer), its place, its payers; locks the shares.
    /// The activation id is computed only for an error.
    function _record(uint64 intervalId, PackedActivation a, Cursor memory c, uint256 device) private {
        bytes32 offer = _offerDigest(a, c.buf, c.domain);
        bytes32 tradeId = a.tradeId();
        if (offer == c.lastOffer) {
            if (tradeId <= c.lastTrade) revert FlexActivationOutOfOrder(_activationId(offer, tradeId));
        } else {
            if (offer < c.lastOffer) revert FlexActivationOutOfOrder(_activationId(offer, tradeId));
            _checkOffer(intervalId, a, offer, device);
            c.lastOffer = offer;
            c.usedW = 0;
        }
        c.lastTrade = tradeId;
        if (block.timestamp > a.expiry()) revert FlexOfferExpired(offer, a.expiry());
        uint256 activatedW = a.activatedW();
        if (activatedW == 0) revert FlexZeroActivation(_activationId(offer, tradeId));
        c.usedW += activatedW;
        if (c.usedW > a.powerW()) revert FlexOfferOverActivated(offer, c.usedW, a.powerW());
        uint256 cost = _cost(activatedW, a.pricePerKWh());
        (address payer0, address payer1) = (a.payer0(), a.payer1());
        if (tradeId == bytes32(0)) {
            if (payer0 != balancingAccount || payer1 != address(0)) {
                revert FlexWrongPayers(_activationId(offer, tradeId), payer0, payer1);
            }
            if (a.share0() != cost || a.share1() != 0) revert FlexSharesMismatch(_activationId(offer, tradeId), cost, 0);
            c.dsoSpent += cost;
            if (c.dsoSpent > c.dsoBudget) revert FlexDsoBudgetExceeded(intervalId, c.dsoSpent, c.dsoBudget);
        } else {
            if (payer0 == address(0) || payer1 == address(0) || payer0 == payer1) {
                revert FlexWrongPayers(_activationId(offer, tradeId), payer0, payer1);
            }
            if (!c.tradesChecked) {
                IEnergyMarket.IntervalState memory trades = market.intervalOf(intervalId);
                if (trades.expectedBatches == 0 || trades.batchCount != trades.expectedBatches) {
                    revert FlexTradesNotRecorded(intervalId);
                }
                c.tradesChecked = true;
            }
            _checkShares(intervalId, offer, tradeId, a, cost);
        }
        _lock(c, payer0, a.share0());
        _lock(c, payer1, a.share1());
    }

    /// @dev Adds `amount` to the run of locks of `payer`, locking the previous run (another payer) first.
    function _lock(Cursor memory c, address payer, uint256 amount) private {
        if (amount == 0) return;
        if (payer != c.lockPayer) {
            _flushLock(c);
            c.lockPayer = payer;
        }
        c.lockAmount += amount;
    }

    /// @dev Locks the current run in EnergyMarket (it refuses an owing payer or one short of funds).
    function _flushLock(Cursor memory c) private {
        if (c.lockAmount == 0) return;
        market.flexLock(c.lockPayer, c.lockAmount);
        c.lockAmount = 0;
    }

    /// @dev The offer's own checks (once per offer): interval, direction, signature, provider, device and
    /// limits (`device`: its registry state word, DeviceState).
    function _checkOffer(uint64 intervalId, PackedActivation a, bytes32 offer, uint256 device) private view {
        if (a.intervalId() != intervalId) revert FlexOfferIntervalMismatch(offer, a.intervalId());
        if (a.direction() > DOWN) revert FlexInvalidDirection(offer, a.direction());
        address provider = a.provider();
        if (CompactSignature.recover(offer, a.r(), a.vs()) != provider) {
            revert FlexInvalidOfferSignature(offer, provider);
        }
        address owner = DeviceState.owner(device);
        if (owner != provider) revert FlexDeviceNotOwned(a.device(), owner);
        if (!DeviceState.ownerActive(device)) revert FlexProviderInactive(provider);
        if (!DeviceState.active(device)) revert FlexDeviceInactive(a.device());
        (int256 minW, int256 maxW) = (DeviceState.minW(device), DeviceState.maxW(device));
        int256 baseline = a.baselineW();
        int256 target = a.direction() == UP ? baseline + int256(uint256(a.powerW())) : baseline - int256(uint256(a.powerW()));
        if (baseline < minW || baseline > maxW) revert FlexOutsideDeviceLimits(a.device(), baseline);
        if (target < minW || target > maxW) revert FlexOutsideDeviceLimits(a.device(), target);
    }

    /// @dev A trade rescue's shares: the seller (payer0) half the cost (floor), the buyer the rest, each
    /// within its remedy cap for the trade, the other taking over what a binding cap leaves.
    function _checkShares(uint64 intervalId, bytes32 offer, bytes32 tradeId, PackedActivation a, uint256 cost)
        private
        view
    {
        uint256 energyWh = a.tradeEnergyWh();
        uint256 cap0 = _capAt(a.payer0(), intervalId) * energyWh / 1000;
        uint256 cap1 = _capAt(a.payer1(), intervalId) * energyWh / 1000;
        if (cap0 + cap1 < cost) revert FlexRemedyCapExceeded(_activationId(offer, tradeId), cost, cap0 + cap1);
        uint256 s0 = cost / 2;
        if (s0 > cap0) s0 = cap0;
        if (cost - s0 > cap1) s0 = cost - cap1;
        if (a.share0() != s0 || a.share1() != cost - s0) {
            revert FlexSharesMismatch(_activationId(offer, tradeId), s0, cost - s0);
        }
    }

    // ------------------------------------------------------------------ settlement

    /// @inheritdoc IFlexibilityMarket
    function settleActivations(uint64 intervalId, uint32 batchIndex, bytes calldata records) external {
        _openBatch(intervalId, batchIndex, records);
        uint256 endsAt = (uint256(intervalId) + 1) * intervalSeconds;
        if (block.timestamp < endsAt) revert FlexSettlementNotReady(intervalId, endsAt);
        uint256 reclaimAfter = market.reclaimAfter(intervalId);
        if (block.timestamp >= reclaimAfter) revert FlexSettlementExpired(intervalId, reclaimAfter);
        bool pastDeadline = block.timestamp >= market.settlementDeadline(intervalId);
        _states[intervalId][batchIndex] = BatchState.Settled;
        uint256 base = _cdPtr(records);
        uint256 n = records.length / ACTIVATION_RECORD_SIZE;
        Release memory r = _newRelease(n);
        bytes memory deliveries = _newBytes(n * DELIVERY_SIZE);
        uint256[] memory got = readings.deviceReadingsOf(
            _keysOf(base + REC_DEVICE_OFFSET, n, ACTIVATION_RECORD_SIZE), intervalId
        );
        uint256 out;
        assembly ("memory-safe") {
            out := add(deliveries, 0x20)
        }
        for (uint256 i = 0; i < n; ++i) {
            ActivationRecord a = ActivationRecordLibrary.at(base, i);
            _settle(intervalId, a, got[i], pastDeadline, r, out + i * DELIVERY_SIZE);
        }
        _sendRelease(r);
        emit ActivationBatchClosed(intervalId, batchIndex, false, deliveries);
    }

    /// @dev Pays one activation on its device's metered delivery (rule in {IFlexibilityMarket}) and writes
    /// its delivery (meteredW, deliveredW) at memory position `out`.
    function _settle(
        uint64 intervalId,
        ActivationRecord a,
        uint256 reading,
        bool pastDeadline,
        Release memory r,
        uint256 out
    ) private view {
        (int256 meteredW, uint256 deliveredW) = _delivered(intervalId, a, reading, pastDeadline);
        (uint256 share0, uint256 share1) = (a.share0(), a.share1());
        uint256 cost = share0 + share1;
        uint256 paid = cost * deliveredW / a.activatedW();
        uint256 paid0 = cost == 0 ? 0 : share0 * paid / cost;
        _unlock(r, a.payer0(), share0, share0 - paid0);
        _unlock(r, a.payer1(), share1, share1 - (paid - paid0));
        if (paid != 0) _move(r, a.provider(), 0, paid);
        assembly ("memory-safe") {
            mstore(
                out,
                or(
                    shl(DELIVERY_METERED_W_SHIFT, and(meteredW, 0xffffffffffffffff)),
                    shl(DELIVERY_DELIVERED_W_SHIFT, deliveredW)
                )
            )
        }
    }

    /// @dev The device's metered power (0 without a reading) and the power it delivered of the activation;
    /// `reading` is the device's `deviceReadingsOf` word.
    function _delivered(uint64 intervalId, ActivationRecord a, uint256 reading, bool pastDeadline)
        private
        view
        returns (int256 meteredW, uint256 deliveredW)
    {
        (uint64 importWh, uint64 exportWh, bool present) =
            (uint64(reading >> 64), uint64(reading), reading >> 128 != 0);
        if (!present) {
            if (!pastDeadline) revert FlexSettlementNotReady(intervalId, market.settlementDeadline(intervalId));
            return (0, 0);
        }
        meteredW = (int256(uint256(exportWh)) - int256(uint256(importWh))) * int256(SECONDS_PER_HOUR)
            / int256(uint256(intervalSeconds));
        int256 moved = a.direction() == UP ? meteredW - a.baselineW() : int256(a.baselineW()) - meteredW;
        uint256 activatedW = a.activatedW();
        if (moved > 0) deliveredW = uint256(moved) < activatedW ? uint256(moved) : activatedW;
    }

    /// @inheritdoc IFlexibilityMarket
    function reclaimActivations(uint64 intervalId, uint32 batchIndex, bytes calldata records) external {
        _openBatch(intervalId, batchIndex, records);
        uint256 reclaimAfter = market.reclaimAfter(intervalId);
        if (block.timestamp < reclaimAfter) revert FlexReclaimNotReady(intervalId, reclaimAfter);
        _states[intervalId][batchIndex] = BatchState.Reclaimed;
        uint256 base = _cdPtr(records);
        uint256 n = records.length / ACTIVATION_RECORD_SIZE;
        Release memory r = _newRelease(n);
        for (uint256 i = 0; i < n; ++i) {
            ActivationRecord a = ActivationRecordLibrary.at(base, i);
            (uint256 share0, uint256 share1) = (a.share0(), a.share1());
            _unlock(r, a.payer0(), share0, share0);
            _unlock(r, a.payer1(), share1, share1);
        }
        _sendRelease(r);
        emit ActivationBatchClosed(intervalId, batchIndex, true, "");
    }

    /// @dev A release for `n` activations: its moves' memory reserved (a length word + 3 x 96 bytes each)
    /// and never touched by anything else before `_sendRelease`.
    function _newRelease(uint256 n) private pure returns (Release memory r) {
        uint256 start = _reserve(0x20 + n * 0x120);
        (r.start, r.end) = (start, start + 0x20);
    }

    /// @dev Adds a share to the run of `payer` (`refunded` of it back to the payer), writing the previous
    /// run (another payer) first.
    function _unlock(Release memory r, address payer, uint256 share, uint256 refunded) private pure {
        if (share == 0) return;
        if (payer != r.payer) {
            _flushRun(r);
            r.payer = payer;
        }
        (r.unlocked, r.refunded) = (r.unlocked + share, r.refunded + refunded);
    }

    function _flushRun(Release memory r) private pure {
        if (r.unlocked == 0) return;
        _move(r, r.payer, r.unlocked, r.refunded);
        (r.unlocked, r.refunded) = (0, 0);
    }

    function _move(Release memory r, address account, uint256 unlocked, uint256 credited) private pure {
        uint256 at = r.end;
        assembly ("memory-safe") {
            mstore(at, account)
            mstore(add(at, 0x20), unlocked)
            mstore(add(at, 0x40), credited)
        }
        r.end = at + 0x60;
    }

    /// @dev The release's moves to EnergyMarket in one call (it checks they conserve funds).
    function _sendRelease(Release memory r) private {
        _flushRun(r);
        bytes memory moves;
        (uint256 start, uint256 end) = (r.start, r.end);
        assembly ("memory-safe") {
            moves := start
            mstore(moves, sub(end, add(start, 0x20)))
        }
        market.flexRelease(moves);
    }

    /// @dev A recorded, not yet closed batch whose commitment `records` match.
    function _openBatch(uint64 intervalId, uint32 batchIndex, bytes calldata records) private view {
        BatchState state = _states[intervalId][batchIndex];
        if (state != BatchState.Recorded) revert FlexBatchNotOpen(intervalId, batchIndex, state);
        if (keccak256(records) != _commitments[intervalId][batchIndex]) {
            revert FlexBatchCommitmentMismatch(intervalId, batchIndex);
        }
    }

    // ------------------------------------------------------------------ views and hashing

    /// @inheritdoc IFlexibilityMarket
    function remedyCapOf(address account) external view returns (uint128) {
        return _remedyCaps[account].current;
    }

    /// @inheritdoc IFlexibilityMarket
    function remedyCapAt(address account, uint64 intervalId) external view returns (uint128) {
        return uint128(_capAt(account, intervalId));
    }

    function _capAt(address account, uint64 intervalId) private view returns (uint256) {
        RemedyCap storage cap = _remedyCaps[account];
        return intervalId >= cap.fromInterval ? cap.current : cap.previous;
    }

    /// @inheritdoc IFlexibilityMarket
    function dsoBudget() external view returns (uint128) {
        return _dsoBudget;
    }

    /// @inheritdoc IFlexibilityMarket
    function intervalBookOf(uint64 intervalId) external view returns (IntervalBook memory) {
        return _books[intervalId];
    }

    /// @inheritdoc IFlexibilityMarket
    function batchOf(uint64 intervalId, uint32 batchIndex) external view returns (bytes32, BatchState) {
        return (_commitments[intervalId][batchIndex], _states[intervalId][batchIndex]);
    }

    /// @inheritdoc IFlexibilityMarket
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
    ) external view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    FLEX_OFFER_TYPEHASH,
                    provider,
                    device,
                    intervalId,
                    direction,
                    powerW,
                    baselineW,
                    pricePerKWh,
                    nonce,
                    expiry
                )
            )
        );
    }

    /// @inheritdoc IFlexibilityMarket
    function attestationDigest(uint64 intervalId, uint32 batchIndex, bytes calldata activations, bytes32 evidenceHash)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(FLEX_ATTESTATION_TYPEHASH, intervalId, batchIndex, keccak256(activations), evidenceHash)
            )
        );
    }

    /// @inheritdoc IFlexibilityMarket
    function recordsOf(bytes calldata activations) external pure returns (bytes memory records) {
        if (activations.length % ACTIVATION_SIZE != 0) revert FlexMalformedCalldata(activations.length);
        uint256 n = activations.length / ACTIVATION_SIZE;
        records = _newBytes(n * ACTIVATION_RECORD_SIZE);
        uint256 base = _cdPtr(activations);
        for (uint256 i = 0; i < n; ++i) {
            uint256 out;
            assembly ("memory-safe") {
                out := add(add(records, 0x20), mul(i, ACTIVATION_RECORD_SIZE))
            }
            ActivationRecordLibrary.store(out, PackedActivationLibrary.at(base, i));
        }
    }

    /// @inheritdoc IFlexibilityMarket
    function costOf(uint32 activatedW, uint128 pricePerKWh) external view returns (uint256) {
        return _cost(activatedW, pricePerKWh);
    }

    function _cost(uint256 activatedW, uint256 pricePerKWh) private view returns (uint256) {
        // 32-bit W x 64-bit seconds x 128-bit price stays far below 2^256
        return activatedW * intervalSeconds / SECONDS_PER_HOUR * pricePerKWh / 1000;
    }

    /// @dev The offer's EIP-712 digest, hashed in scratch memory at `buf` (0x140 + 0x42 bytes: OFFER_SCRATCH_SIZE).
    function _offerDigest(PackedActivation a, uint256 buf, bytes32 domain) private pure returns (bytes32 digest) {
        bytes32 structHash = a.structHash(FLEX_OFFER_TYPEHASH, buf);
        assembly ("memory-safe") {
            mstore(add(buf, 0x140), hex"1901")
            mstore(add(buf, 0x142), domain)
            mstore(add(buf, 0x162), structHash)
            digest := keccak256(add(buf, 0x140), 0x42)
        }
    }

    function _activationId(bytes32 offer, bytes32 tradeId) private pure returns (bytes32) {
        return keccak256(abi.encode(offer, tradeId));
    }

    /// @dev `n` addresses in calldata from position `first`, `stride` bytes apart (a batch's devices),
    /// packed 20 bytes each for the registry's `deviceStatesOf` and the readings' `deviceReadingsOf`.
    function _keysOf(uint256 first, uint256 n, uint256 stride) private pure returns (bytes memory keys) {
        keys = _newBytes(n * DEVICE_KEY_SIZE);
        assembly ("memory-safe") {
            let out := add(keys, 0x20)
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                let key := shr(ADDRESS_SHIFT, calldataload(add(first, mul(i, stride))))
                mstore(add(out, mul(i, DEVICE_KEY_SIZE)), shl(ADDRESS_SHIFT, key))
            }
        }
    }

    /// @dev `size` bytes of memory allocated (not cleared: the caller writes before it reads).
    function _reserve(uint256 size) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := mload(0x40)
            mstore(0x40, add(p, and(add(size, 0x1f), not(0x1f))))
        }
    }

    /// @dev A `bytes` of `length` allocated with room for 32 bytes written at its last position.
    function _newBytes(uint256 length) private pure returns (bytes memory b) {
        uint256 p = _reserve(0x40 + length);
        assembly ("memory-safe") {
            b := p
            mstore(b, length)
        }
    }

    function _hashMemory(uint256 p, uint256 length) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            h := keccak256(p, length)
        }
    }

    function _cdPtr(bytes calldata data) private pure returns (uint256 p) {
        assembly ("memory-safe") {
            p := data.offset
        }
    }
}
