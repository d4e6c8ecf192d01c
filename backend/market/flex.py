"""Flexibility offers: a participant offers to move one of its registered devices away from its
baseline for one interval, for a price per kWh. The offer is EIP-712 typed data (``FlexOffer``) in
FlexibilityMarket's domain (the contract verifies it again when an activation of it is recorded),
signed by the provider's wallet, checked like an order (signature, domain,
registry status, interval gate, expiry, nonce) plus what is particular to a device (registered,
active, owned by the provider; the baseline and the baseline moved by the offered power within the
device's [minW, maxW]; a battery's target power held over the interval within what its latest
reported state of charge can give or take, when it has reported one).

No funds are checked: an offer is paid when activated, it costs its provider nothing. Its nonce is
the provider's flex nonce (uint256), a namespace of its own apart from order nonces; a cancelled
offer keeps its nonce used.
"""

from __future__ import annotations

import time
from typing import Any

from backend.chain import protocol
from backend.chain.address import checksum
from backend.market import typed
from backend.market.errors import (
    BadSignatureError,
    ConflictError,
    DeviceInactiveError,
    InvalidOrderError,
    NonceUsedError,
    NotDeviceOwnerError,
    NotFoundError,
    OutOfDeviceLimitsError,
    StateOfChargeError,
    TooManyOrdersError,
    UnknownDeviceError,
)
from backend.market.events import EventBus
from backend.market.intake import Intake
from backend.market.models import FlexOfferRow, FlexStatus
from backend.market.ports import MarketLedger, SocSource
from backend.market.store import Store


class FlexBook:
    def __init__(
        self,
        store: Store,
        ledger: MarketLedger,
        events: EventBus,
        domain: typed.Domain,
        intake: Intake,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.events = events
        self.domain = domain
        self.intake = intake
        self.socs: SocSource | None = None  # the devices' reported states of charge (API wires it)

    def submit(
        self, message: dict[str, Any], signature: str, domain: dict[str, Any] | None = None
    ) -> FlexOfferRow:
        """Verify and store one signed offer; a ``MarketError`` subclass says why not."""
        self.intake.check_domain(domain, "offer", "/flex/eip712", self.domain)
        msg = dict(message)
        for key in ("provider", "device"):
            typed.address_bytes(msg.get(key), key)
            msg[key] = checksum(msg[key])
        digest = self.domain.digest("FlexOffer", msg)
        provider, device = msg["provider"], msg["device"]
        typed.require_signer(digest, signature, provider, "provider")
        direction, power_w, baseline_w = msg["direction"], msg["powerW"], msg["baselineW"]
        interval_id, expiry = msg["intervalId"], msg["expiry"]
        if direction not in (protocol.FLEX_UP, protocol.FLEX_DOWN):
            raise InvalidOrderError("direction must be 0 (up) or 1 (down)", field="direction")
        if power_w <= 0:
            raise InvalidOrderError("powerW must be positive", field="powerW")
        now = self.ledger.now()
        gate = self.intake.check_interval(interval_id, expiry, now, what="offer")
        self.intake.check_open(interval_id, gate, now)  # again with the insert, under the lock
        self.intake.active_participant(provider)
        record = self.ledger.device(device)
        if record is None:
            raise UnknownDeviceError(f"{device} is not a registered device (POST /devices)")
        if record.owner != provider:
            raise NotDeviceOwnerError(f"the device {device} belongs to {record.owner}")
        if not record.active:
            raise DeviceInactiveError(f"the device {device} is deactivated")
        target = baseline_w + power_w if direction == protocol.FLEX_UP else baseline_w - power_w
        if not record.min_w <= baseline_w <= record.max_w:
            raise OutOfDeviceLimitsError(
                f"baselineW {baseline_w} W is outside the device's limits "
                f"[{record.min_w}, {record.max_w}] W",
                field="baselineW",
            )
        if not record.min_w <= target <= record.max_w:
            raise OutOfDeviceLimitsError(
                f"baselineW {baseline_w} W {'+' if direction == protocol.FLEX_UP else '-'} "
                f"powerW {power_w} W = {target} W is outside the device's limits "
                f"[{record.min_w}, {record.max_w}] W",
                field="powerW",
            )
        self._check_soc(device, record.kind, record.capacity_wh, target)
        values = {
            "hash": "0x" + digest.hex(),
            "provider": provider,
            "device": device,
            "interval_id": interval_id,
            "direction": direction,
            "power_w": power_w,
            "baseline_w": baseline_w,
            "price_per_kwh": str(msg["pricePerKWh"]),
            "nonce": str(msg["nonce"]),
            "expiry": str(expiry),
            "signature": typed.canonical_signature(signature),
            "status": FlexStatus.OPEN,
            "created_at": time.time(),
        }
        # under the intake's lock, as an order is admitted: closing the interval for orders
        # (the clearing) waits for this offer, or this offer sees the interval closed
        with self.intake.lock:
            self.intake.check_open(interval_id, gate, self.ledger.now())
            taken = self.store.device_flex_offer(device, interval_id)
            if taken == values["hash"]:  # this very offer again: its nonce is what is used
                raise NonceUsedError(
                    f"flex nonce {values['nonce']} of {provider} is already used", field="nonce"
                )
            if taken is not None:
                # one offer per device and interval: a device has one baseline, and the
                # activations of one offer stay within its powerW, so within the device's limits
                # (two offers could each fit and together not); cancel it to offer again
                raise ConflictError(
                    f"the device {device} already has the offer {taken} for interval "
                    f"{interval_id} (one offer per device and interval: cancel it first)",
                    reason="DEVICE_ALREADY_OFFERED",
                    field="device",
                )
            cap = self.intake.config.max_orders_per_trader_interval
            if self.store.count_open_flex(provider, interval_id) >= cap:
                raise TooManyOrdersError(
                    f"{provider} already has {cap} open offers for interval {interval_id}, the "
                    "limit per provider and interval (TEGRID_MAX_ORDERS_PER_TRADER_INTERVAL)"
                )
            row = self.store.insert_flex_offer(values)
        self.events.publish(
            "flex",
            {"hash": row.hash, "provider": provider, "device": device, "intervalId": interval_id,
             "direction": direction, "powerW": power_w, "pricePerKWh": row.price_per_kwh,
             "status": FlexStatus.OPEN},
        )  # fmt: skip
        return row

    def _check_soc(self, device: str, kind: int, capacity_wh: int, target_w: int) -> None:
        """A battery's target held for the whole interval: floor(|W| x seconds / 3600) Wh out of
        (W > 0) or into (W < 0) its latest reported state of charge must fit in [0, capacity]."""
        if kind != protocol.DEVICE_BATTERY or self.socs is None or target_w == 0:
            return
        report = self.socs.soc(device)
        if report is None:
            return
        energy_wh = abs(target_w) * self.intake.config.interval_seconds // 3600
        if target_w > 0 and energy_wh > report.soc_wh:
            raise StateOfChargeError(
                f"the battery {device} reported {report.soc_wh} Wh at {report.at}: it cannot give "
                f"{energy_wh} Wh ({target_w} W for the interval)",
                field="powerW",
            )
        room_wh = capacity_wh - report.soc_wh
        if target_w < 0 and energy_wh > room_wh:
            raise StateOfChargeError(
                f"the battery {device} reported {report.soc_wh} of {capacity_wh} Wh at "
                f"{report.at}: it cannot take {energy_wh} Wh ({target_w} W for the interval)",
                field="powerW",
            )

    def get(self, offer_hash: str) -> FlexOfferRow:
        row = self.store.get_flex_offer(offer_hash.lower())
        if row is None:
            raise NotFoundError(f"no flexibility offer {offer_hash}")
        return row

    def cancel(self, offer_hash: str, signature: str) -> FlexOfferRow:
        """Cancel an open offer with the provider's signature over ``Cancel(trader, orderHash)``
        (the orders' cancellation typed data: ``trader`` the provider, ``orderHash`` the offer's
        hash)."""
        row = self.get(offer_hash)
        digest = self.domain.digest("Cancel", {"trader": row.provider, "orderHash": row.hash})
        signer = typed.recover(digest, signature)
        if signer != row.provider:
            raise BadSignatureError(
                f"the cancellation is signed by {signer}, not the provider {row.provider}"
            )
        if not self.store.cancel_flex_offer(row.hash):
            raise ConflictError(
                f"flexibility offer {row.hash} is {self.get(row.hash).status}, not open",
                reason="NOT_CANCELLABLE",
            )
        row.status = FlexStatus.CANCELLED
        self.events.publish(
            "flex", {"hash": row.hash, "provider": row.provider, "status": FlexStatus.CANCELLED}
        )
        return row
