"""Plug-and-play connection requests: a wallet asks to join the grid at a bus, the Neural Grid
checks the hosting capacity there, and the grid operator's key registers the participant on
chain."""

from __future__ import annotations

from typing import Any

from backend.chain import protocol
from backend.chain.address import checksum
from backend.market import typed
from backend.market.errors import (
    AlreadyConnectedError,
    BadSignatureError,
    ConflictError,
    ConnectionRequestRefusedError,
    InvalidOrderError,
    OrderExpiredError,
)
from backend.market.events import EventBus
from backend.market.intake import Intake
from backend.market.ports import GridPort, MarketLedger
from backend.market.store import Store


class RegistryDesk:
    """What a request that ends in a ``ParticipantRegistry`` transaction needs: the store, the
    chain, the Neural Grid (hosting capacity), the event bus, the registry's EIP-712 domain and
    the order intake. Connections and devices are its two desks."""

    def __init__(
        self,
        store: Store,
        ledger: MarketLedger,
        grid: GridPort | None,
        events: EventBus,
        registry_domain: typed.Domain,
        intake: Intake,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.grid = grid
        self.events = events
        self.registry_domain = registry_domain
        self.intake = intake


class Connections(RegistryDesk):
    def request(self, message: dict[str, Any], signature: str) -> Any:
        """A connection request signed by the wallet: hosting capacity at the bus is checked by
        the Neural Grid, then the grid operator key registers it on chain."""
        msg = dict(message)
        for key in ("wallet", "meter"):
            typed.address_bytes(msg.get(key), key)
            msg[key] = checksum(msg[key])
        digest = self.registry_domain.digest("ConnectionRequest", msg)
        signer = typed.recover(digest, signature)
        wallet = msg["wallet"]
        if signer != wallet:
            raise BadSignatureError(f"the request is signed by {signer}, not the wallet {wallet}")
        now = self.ledger.now()
        if msg["expiry"] <= now:
            raise OrderExpiredError(
                f"the request expired at {msg['expiry']}; the chain time is {now}"
            )
        if msg["meter"] == protocol.ZERO_ADDRESS or msg["meter"] == wallet:
            raise InvalidOrderError("the meter key must be its own non-zero address")
        existing = self.intake.participant(wallet, fresh=True)
        if existing is not None:
            raise AlreadyConnectedError(f"{wallet} is already connected at bus {existing.bus_id}")
        bus_id, export_w, import_w = msg["busId"], msg["maxExportW"], msg["maxImportW"]
        if export_w >= 1 << 32 or import_w >= 1 << 32:
            raise InvalidOrderError("connection limits must fit in 32 bits (W)")
        capacity: int | None = None
        refusal = ""
        code = "CONNECTION_REFUSED"
        if self.grid is not None:
            if bus_id not in self.grid.load_buses():
                refusal, code = f"bus {bus_id} is not a connectable bus of the grid", "UNKNOWN_BUS"
            else:
                capacity = self.grid.hosting_capacity_w(bus_id)
                if export_w > capacity:
                    refusal = (
                        f"the hosting capacity at bus {bus_id} is {capacity} W, "
                        f"less than the requested export of {export_w} W"
                    )
                    code = "HOSTING_CAPACITY"
        values = {
            "wallet": wallet,
            "meter": msg["meter"],
            "bus_id": bus_id,
            "max_export_w": export_w,
            "max_import_w": import_w,
            "hosting_capacity_w": capacity,
        }
        if refusal:
            self.store.save_connection(
                {**values, "status": "refused", "reason": refusal, "tx_hash": None}
            )
            self.events.publish(
                "participant", {"wallet": wallet, "status": "refused", "reason": refusal}
            )
            raise ConnectionRequestRefusedError(refusal, reason=code)
        tx_hash = self.ledger.connect(wallet, msg["meter"], bus_id, export_w, import_w)
        receipt = self.ledger.wait(tx_hash)
        if not receipt.ok:
            raise ConflictError(
                f"the registry refused the connection (transaction {tx_hash} reverted)",
                reason="REGISTRY_REFUSED",
            )
        self.intake.forget_participant(wallet)
        self.store.save_connection(
            {**values, "status": "registered", "reason": "", "tx_hash": tx_hash}
        )
        self.events.publish(
            "participant", {"wallet": wallet, "status": "registered", "busId": bus_id}
        )
        return self.store.get_connection(wallet)
