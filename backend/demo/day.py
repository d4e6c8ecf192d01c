"""One community day on a running ``DemoStack``: the members connect through the plug-and-play
path, post signed orders, the server clears each interval, the meters publish (some sellers
under-deliver, some readings never come), and the driver waits for recording, readings and
settlement where the chain clock would otherwise overtake them."""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from typing import Any

from rich.console import Console

from backend.chain import batches, protocol
from backend.chain.client import ChainClient
from backend.chain.protocol import DEVICE_BATTERY, DEVICE_KINDS, TOKEN_UNIT
from backend.demo.clients import check_list, check_response, domain_args, sign_typed, signed_body
from backend.demo.community import build_community, intent_for, offer_for
from backend.demo.config import (
    BALANCING_DEPOSIT,
    DEPOSIT,
    IGNORING_DEVICE,
    REMEDY_CAP_PER_KWH,
    ROLE_KEYS,
    SETTLEMENT_DELAY_S,
    DemoConfig,
    DemoError,
)
from backend.demo.powerhouse import start_powerhouse
from backend.demo.profile import Stages
from backend.demo.stack import DemoStack
from backend.devtools.clock import chain_now
from backend.iot.meters import MeterSimulator, MeterSpec, Position
from backend.iot.signing import ReadingDomain
from backend.market import typed
from grid.island import named_island
from grid.validator import GridValidator


class DemoDay(DemoStack):
    """The stack plus the day's state: members, cleared intervals, meter positions, readings."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        super().__init__(config, console)
        self.grid_validator: GridValidator  # made by ``Demo.run`` once the services start
        self.records: list[dict[str, Any]] = []
        self.island_from: int | None = None  # the first islanded interval (--islanded)
        self.mode_switch: dict[str, Any] | None = None
        self.vetoes: list[dict[str, Any]] = []
        self.positions: dict[tuple[str, int], Position] = {}
        self.overrides: dict[tuple[str, int], tuple[int, int]] = {}
        self.published: set[tuple[str, int]] = set()
        self.stage = Stages()
        self.cpu_s: dict[str, float] = {}
        self.pipeline_s = 0.0
        self.offers_posted: dict[int, int] = {}
        self.activated: dict[int, int] = {}  # interval -> activations the clearing bought
        self.consenting: list[str] = []
        self.ignoring_device: str | None = None
        self.order_prices: dict[tuple[str, int], int] = {}  # (wallet, interval) -> limit price

    # ------------------------------------------------------------------ community
    def _connect_members(self) -> None:

        midday = (86400 * 1000 + 13 * 3600) // self.cfg.interval_seconds
        weak_first = sorted(
            self.grid_validator.load_buses(),
            key=lambda b: (
                self.grid_validator.hosting_capacity(
                    b, interval=midday, interval_seconds=self.cfg.interval_seconds
                ).max_export.p_kw
            ),
        )
        self.members = build_community(weak_first, self.cfg.prosumers, self.cfg.seed)
        token = self._contract("EnergyToken")
        market = self._contract("EnergyMarket")
        now = chain_now(self.w3)
        # Deposits first (the market takes them from anybody), so the API's first read of a
        # member's balance, when it connects, already sees the deposit.
        for m in self.members:
            self.w3.provider.make_request("anvil_setBalance", [m.wallet, hex(10**20)])  # type: ignore[arg-type]
            self._transact(ROLE_KEYS["admin"], token.functions.mint(m.wallet, DEPOSIT))
            self._transact(m.wallet_key, token.functions.approve(market.address, DEPOSIT))
            self._transact(m.wallet_key, market.functions.deposit(DEPOSIT))
        # the grid operator funds the balancing account it settles imbalances from
        balancing = market.functions.balancingAccount().call()
        self._transact(ROLE_KEYS["admin"], token.functions.mint(balancing, BALANCING_DEPOSIT))
        operator = ROLE_KEYS["grid_operator"]
        self._transact(operator, token.functions.approve(market.address, BALANCING_DEPOSIT))
        self._transact(operator, market.functions.deposit(BALANCING_DEPOSIT))
        self._api_ready()
        reg_domain = self.registry_domain
        refused = 0
        for i, m in enumerate(self.members):
            export_w = m.max_export_w
            for attempt in range(2):
                msg = {
                    "wallet": m.wallet, "meter": m.meter, "busId": m.bus,
                    "maxExportW": export_w, "maxImportW": m.max_import_w,
                    "nonce": i * 10 + attempt, "expiry": now + 3600,
                }  # fmt: skip
                body = signed_body(reg_domain, "ConnectionRequest", msg, m.wallet_key)
                r = self.http.post("/participants", json=body)
                if r.status_code < 400:
                    break
                detail = r.json().get("detail", {})
                if attempt == 0 and detail.get("code") == "HOSTING_CAPACITY":
                    refused += 1
                    capacity_w = int(
                        self.grid_validator.hosting_capacity(
                            m.bus, interval=None, interval_seconds=self.cfg.interval_seconds
                        ).max_export.p_kw
                        * 1000
                    )
                    export_w = max(1000, int(capacity_w * 0.9))
                    self.members[i] = dataclasses.replace(
                        m, pv_peak_kw=min(m.pv_peak_kw, export_w / 1200)
                    )
                    m = self.members[i]
                    continue
                raise DemoError(f"connecting {m.name}: HTTP {r.status_code} {r.text[:200]}")
        self.console.print(
            f"{len(self.members)} prosumers connected through the plug-and-play path "
            f"({refused} first requests refused for hosting capacity and resized)"
        )
        self.by_wallet = {m.wallet: m for m in self.members}
        self.by_meter = {m.meter: m for m in self.members}
        if self.flex_enabled:
            with self.stage("devices register (POST /devices) and remedy caps (set-up)"):
                self._register_devices()
                self._set_remedy_caps()
        elif self.cfg.flexibility:
            self.console.print(
                "flexibility: off - the dispatcher and the devices need Mosquitto "
                "(apt-get install mosquitto)"
            )

    # ------------------------------------------------------------------ flexibility (#17)
    @property
    def flex_enabled(self) -> bool:
        """Flexibility runs where the control loop does: over Mosquitto (the dispatcher and the
        devices are processes of their own that need a broker to share)."""
        return "dispatcher" in self.services

    def _register_devices(self) -> None:
        """Each member's device through ``POST /devices`` (the owner wallet and the device key
        sign the same ``DeviceRegistration``), then ``tegrid devices simulate`` runs them; the
        ``IGNORING_DEVICE``-th one ignores every action (no ack, nothing applied)."""
        template = check_response(self.http.get("/devices/eip712"), "GET /devices/eip712")
        domain = typed.Domain(**domain_args(template["domain"]))
        expiry = chain_now(self.w3) + 3600
        specs = []
        resized = 0
        # a device within the hosting capacity at its bus (the API refuses it beyond): at the
        # far end of a feeder a battery may take less than it could
        for i, m in enumerate(self.members):
            if not m.device_kind:
                continue
            cap = self.grid_validator.hosting_capacity(
                m.bus, interval=None, interval_seconds=self.cfg.interval_seconds
            )
            room_kw = cap.max_import.p_kw
            if m.device_kind == DEVICE_BATTERY:
                room_kw = min(room_kw, cap.max_export.p_kw)
            if m.device_kw > 0.9 * room_kw:
                resized += 1
                kw = round(0.9 * room_kw, 1)
                # below 1 kW no device is worth registering at that bus
                self.members[i] = dataclasses.replace(
                    m,
                    device_kw=kw if kw >= 1.0 else 0.0,
                    device_kind=m.device_kind if kw >= 1.0 else 0,
                )
        self.by_wallet = {m.wallet: m for m in self.members}
        with_device = [m for m in self.members if m.device_kind]
        if not with_device:
            self.console.print("no member's bus can host a device: no flexibility in this run")
            return
        for n, m in enumerate(with_device):
            min_w, max_w, capacity_wh = m.device_limits
            msg = {
                "owner": m.wallet, "device": m.device, "busId": m.bus, "kind": m.device_kind,
                "minW": min_w, "maxW": max_w, "capacityWh": capacity_wh, "expiry": expiry,
            }  # fmt: skip
            body = signed_body(domain, "DeviceRegistration", msg, m.wallet_key)
            body["deviceSignature"] = sign_typed(domain, "DeviceRegistration", msg, m.device_key)
            check_response(self.http.post("/devices", json=body), f"registering {m.name}'s device")
            ignore = n == IGNORING_DEVICE % len(with_device)
            if ignore:
                self.ignoring_device = m.device
            specs.append(
                {
                    "key": m.device_key, "kind": m.device_kind, "minW": min_w, "maxW": max_w,
                    "capacityWh": capacity_wh, "socWh": capacity_wh // 5,
                    "baselineW": m.device_baseline_w, "ignore": ignore,
                }
            )  # fmt: skip
        template = check_response(self.http.get("/flex/eip712"), "GET /flex/eip712")
        self.flex_domain = typed.Domain(**domain_args(template["domain"]))
        self._start_devices(specs)
        kinds = Counter(DEVICE_KINDS[m.device_kind] for m in with_device)
        self.console.print(
            f"{len(with_device)} devices registered through POST /devices "
            f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; {resized} resized "
            "to the hosting capacity at their bus); "
            f"`tegrid devices simulate` runs them, one ignoring its actions"
        )

    def _set_remedy_caps(self) -> None:
        """The consenting members (``remedy_consent_share``, drawn from the seed) set their remedy
        cap on FlexibilityMarket, each with its own transaction."""
        flexibility = self._contract("FlexibilityMarket")
        rng = self._rng("consent", 0)
        n = round(self.cfg.remedy_consent_share * len(self.members))
        self.consenting = sorted(m.wallet for m in rng.sample(self.members, n))
        for wallet in self.consenting:
            key = self.by_wallet[wallet].wallet_key
            self._transact(key, flexibility.functions.setRemedyCap(REMEDY_CAP_PER_KWH))
        self.console.print(
            f"{n} of {len(self.members)} members set a remedy cap of "
            f"{REMEDY_CAP_PER_KWH / TOKEN_UNIT:g} tokens per kWh (setRemedyCap)"
        )

    def _post_offers(self, interval_id: int) -> int:
        """The devices' signed ``FlexOffer`` for ``interval_id`` (before its gate closure)."""
        if not self.flex_enabled:
            return 0
        hour = (interval_id * self.cfg.interval_seconds % 86400) / 3600
        rng = self._rng("offers", interval_id)
        expiry = (interval_id + 4) * self.cfg.interval_seconds
        bodies = []
        for m in self.members:
            offer = offer_for(m, hour, rng)
            if offer is None:
                continue
            msg = {
                "provider": m.wallet, "device": m.device, "intervalId": interval_id,
                "direction": offer.direction, "powerW": offer.power_w,
                "baselineW": offer.baseline_w, "pricePerKWh": offer.price_per_kwh,
                "nonce": interval_id, "expiry": expiry,
            }  # fmt: skip
            bodies.append((m.name, signed_body(self.flex_domain, "FlexOffer", msg, m.wallet_key)))

        # one after the other, in member order: the remedy search's columns follow the offers'
        # sequence, so the same day gives the same activations
        for name, body in bodies:
            status, text = self.orders.post("/flex", body)
            if status >= 400:
                raise DemoError(f"flexibility offer of {name}: HTTP {status} {text[:300]}")
        self.offers_posted[interval_id] = len(bodies)
        return len(bodies)

    def _wait_actions(self, interval_id: int, timeout_s: float = 30.0) -> None:
        """Before the clock leaves ``interval_id``: its recorded activations' control actions have
        reached their devices (acknowledged or refused; the ignoring device's sent)."""
        if not self.flex_enabled or not self.activated.get(interval_id):
            return
        deadline = time.monotonic() + timeout_s
        while True:
            iv = check_response(
                self.http.get(f"/intervals/{interval_id}"), f"GET /intervals/{interval_id}"
            )
            batches_ = iv.get("activationBatches") or []
            recorded = {
                a for b in batches_ if b["state"] in ("recorded", "settled")
                for a in b["activationIds"]
            }  # fmt: skip
            done = all(b["state"] not in ("pending", "sent") for b in batches_)
            if done:
                actions = check_list(
                    self.http.get("/control/actions", params={"interval": interval_id}),
                    "GET /control/actions",
                )
                by_id = {a["activationId"]: a for a in actions}
                answered = all(
                    a in by_id and (
                        by_id[a]["state"] in ("acknowledged", "refused", "expired")
                        or (by_id[a]["device"] == self.ignoring_device
                            and by_id[a]["state"] == "sent")
                    )
                    for a in recorded
                )  # fmt: skip
                if answered:
                    return
            if time.monotonic() > deadline:
                self.console.print(
                    f"[yellow]warning:[/] interval {interval_id}: control actions not all "
                    f"answered after {timeout_s:.0f} s (dispatcher log: "
                    f"{self._service_log('dispatcher')})"
                )
                return
            time.sleep(0.05)

    def _wait_device_readings(self, interval_id: int, timeout_s: float = 120.0) -> None:
        """Wait until every device's own reading of ``interval_id`` is on chain
        (``DeviceReadingSubmitted``), where the interval had activations (the keeper settles
        them on these readings)."""
        if not self.flex_enabled or not self.activated.get(interval_id):
            return
        readings = self._contract("MeterReadings")
        want = {m.device for m in self.members if m.device_kind}
        deadline = time.monotonic() + timeout_s
        while want:
            logs = readings.events.DeviceReadingSubmitted.get_logs(
                from_block=self.deployment.block, argument_filters={"intervalId": interval_id}
            )
            want -= {str(e["args"]["device"]) for e in logs}
            if not want:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"interval {interval_id}: {len(want)} device readings not on chain after "
                    f"{timeout_s:.0f} s (devices log: {self._service_log('devices')})"
                )
            time.sleep(0.05)

    def _wait_activations_closed(self, timeout_s: float = 180.0) -> None:
        """Wait until the keeper has settled (or reclaimed) every recorded activation batch."""
        flexibility = self._contract("FlexibilityMarket")
        want = [
            (int(e["args"]["intervalId"]), int(e["args"]["batchIndex"]))
            for e in flexibility.events.ActivationBatchRecorded.get_logs(
                from_block=self.deployment.block
            )
        ]
        deadline = time.monotonic() + timeout_s
        while want:
            want = [(t, b) for t, b in want if flexibility.functions.batchOf(t, b).call()[1] < 2]
            if not want:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"activation batches {want[:5]} not closed after {timeout_s:.0f} s "
                    f"(keeper log: {self._service_log('keeper')})"
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------ one interval
    def _switch_to_island(self, interval_id: int, label: str) -> None:
        """The grid operator switches the registry to islanded before ``interval_id``'s gate
        closure: the market validates it, and every later interval, islanded. The network's
        grid-forming units are registered as devices first (``backend.demo.powerhouse``): the
        dispatcher sends each the signed mode action, their acks go into the report, and the
        market validates the island with these registered units."""
        island = named_island(self.cfg.network)
        powerhouse = None
        if island is not None:
            powerhouse = start_powerhouse(
                self.settings.rpc_url, self.deployment, ROLE_KEYS["grid_operator"], island,
                self.meter_transport, f"sqlite:///{self.work / 'control.db'}",
                self.cfg.interval_seconds, self.stack.push,
                lambda line: self.console.print(line, highlight=False),
            )  # fmt: skip
        registry = self._contract("ParticipantRegistry")
        # a client of its own: the API process sends from this key too (the members' connections),
        # so a kept client's nonce would be stale
        operator = ChainClient(self.settings.rpc_url, ROLE_KEYS["grid_operator"])
        receipt = operator.transact(registry.functions.setGridMode(1))
        mode, since = registry.functions.gridMode().call()
        if int(mode) != 1:
            raise DemoError(f"setGridMode(1) left the registry in mode {mode}")
        self.mode_switch = {
            "interval": interval_id,
            "label": label,
            "mode": "islanded",
            "since": int(since),
            "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        }
        self.console.print(f"grid operator: islanded from interval {label} (GridModeChanged)")
        if powerhouse is not None:
            acks = powerhouse.switch_acks()
            self.mode_switch["devices"] = acks
            for a in acks:
                self.console.print(
                    f"mode action to {a['kind']} {a['device']}: {a['state']}"
                    + (f", running {a['appliedW']} W" if a["acked"] else ""),
                    highlight=False,
                )

    def _post_orders(self, interval_id: int) -> int:
        hour = (interval_id * self.cfg.interval_seconds % 86400) / 3600
        hours = self.cfg.interval_seconds / 3600
        domain = self.domain
        expiry = (interval_id + 4) * self.cfg.interval_seconds
        bodies = []
        rng = self._rng("orders", interval_id)
        for m in self.members:
            intent = intent_for(m, hour, hours, rng)
            if intent is None:
                continue
            limit_wh = int((m.max_export_w if intent.side == 0 else m.max_import_w) * hours)
            msg = {
                "trader": m.wallet, "side": intent.side, "intervalId": interval_id,
                "energyWh": min(intent.energy_wh, limit_wh), "pricePerKWh": intent.price_per_kwh,
                "nonce": interval_id * 4 + intent.side, "expiry": expiry,
                "counterparty": protocol.ZERO_ADDRESS,
            }  # fmt: skip
            bodies.append((m.name, signed_body(domain, "Order", msg, m.wallet_key)))
            self.order_prices[(m.wallet, interval_id)] = intent.price_per_kwh

        def post(item: tuple[str, dict[str, Any]]) -> None:
            status, text = self.orders.post("/orders", item[1])
            if status >= 400:
                raise DemoError(f"order of {item[0]}: HTTP {status} {text[:300]}")

        # members are independent clients: they post at the same time
        list(self.orders.pool.map(post, bodies))
        return len(bodies)

    def _clear(self, interval_id: int) -> dict[str, Any]:
        # The answer comes once the clearing is stored; the server records the batch in the
        # background (in interval order) while the next interval is cleared.
        interval = check_response(
            self.http.post(f"/intervals/{interval_id}/close", params={"wait": "false"}),
            f"closing interval {interval_id}",
        )
        trades = check_response(
            self.http.get("/trades", params={"interval": interval_id}), "GET /trades"
        )
        items: list[dict[str, Any]] = (
            trades if isinstance(trades, list) else trades.get("trades", [])
        )
        self.activated[interval_id] = len(interval.get("activations") or [])
        return {"interval": interval, "trades": items}

    def _wait_recorded(self, interval_id: int, timeout_s: float = 120.0) -> None:
        """Wait until the server has the interval's batch on chain (status recorded), and its
        activation batches (FlexibilityMarket refuses them after the gate closure too); an
        activation batch the chain refused (a payer lowered its cap) is reported and left: its
        trade stands, nobody pays it and no device is told to run it."""
        deadline = time.monotonic() + timeout_s
        while True:
            row = check_response(
                self.http.get(f"/intervals/{interval_id}"), f"GET /intervals/{interval_id}"
            )
            flex_batches = row.get("activationBatches") or []
            if row.get("status") in ("recorded", "settled") and all(
                b["state"] in ("recorded", "settled") for b in flex_batches
            ):
                return
            # no scheduler in the demo's API: a failed batch is not tried again
            failed = [b for b in flex_batches if b["state"] == "failed"]
            if row.get("status") in ("recorded", "settled") and failed:
                self.console.print(
                    f"[yellow]warning:[/] interval {interval_id}: activation batch not recorded: "
                    f"{failed[0]['reason']}"
                )
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"interval {interval_id}'s batch not recorded after {timeout_s:.0f} s "
                    f"(status {row.get('status')})"
                )
            time.sleep(0.05)

    def _reclaim_after(self, interval_id: int) -> int:
        return self._deadline(interval_id) + SETTLEMENT_DELAY_S

    def _wait_interval_settled(self, interval_id: int, timeout_s: float = 180.0) -> None:
        market = self._contract("EnergyMarket")
        deadline = time.monotonic() + timeout_s
        # intervalOf(t)[5]: settled (every batch settled or reclaimed)
        while not market.functions.intervalOf(interval_id).call()[5]:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"interval {interval_id} not settled after {timeout_s:.0f} s "
                    f"(keeper log: {self._service_log('keeper')})"
                )
            time.sleep(0.05)

    def _deadline(self, interval_id: int) -> int:
        return (interval_id + 1) * self.cfg.interval_seconds + SETTLEMENT_DELAY_S

    def _rng(self, purpose: str, interval_id: int) -> random.Random:
        """One random stream per (seed, purpose, interval of the day): a run's draws depend
        neither on the order in which the pipeline reaches the intervals nor on the date."""
        slot = interval_id * self.cfg.interval_seconds % 86400 // self.cfg.interval_seconds
        return random.Random(f"{self.cfg.seed}/{purpose}/{slot}")

    def _timed_clear(self, interval_id: int) -> dict[str, Any]:
        with self.stage("clearing + Neural Grid + recordTrades (server, overlaps the orders)"):
            return self._clear(interval_id)

    def _plan_delivery(self, interval_id: int, trades: list[dict[str, Any]]) -> None:
        """Traded positions for the meters; some sellers under-deliver."""
        rng = self._rng("delivery", interval_id)
        for t in trades:
            if not t["approved"]:
                continue
            energy_wh = int(t["energyWh"])
            sell_key = (self.by_wallet[t["seller"]].meter, interval_id)
            buy_key = (self.by_wallet[t["buyer"]].meter, interval_id)
            sold, bought = self.positions.get(sell_key, Position())
            self.positions[sell_key] = Position(sold + energy_wh, bought)
            sold, bought = self.positions.get(buy_key, Position())
            self.positions[buy_key] = Position(sold, bought + energy_wh)
        for m in self.members:
            key = (m.meter, interval_id)
            sold_wh = self.positions.get(key, Position()).sold_wh
            if sold_wh > 0 and rng.random() < self.cfg.under_delivery_share:
                # a cloud: the meter exports only part of what was sold (partial delivery)
                self.overrides[key] = (0, int(sold_wh * rng.uniform(0.3, 0.7)))

    def _publish_readings(self, interval_id: int) -> int:
        rng = self._rng("missing", interval_id)
        specs = [
            MeterSpec(m.meter_key, m.bus, m.load_peak_kw, m.pv_peak_kw, False, m.wallet)
            for m in self.members
            if rng.random() >= self.cfg.missing_share
        ]
        sim = MeterSimulator(
            specs,
            ReadingDomain(self.settings.chain_id, self.deployment.address("MeterReadings")),
            self.meter_transport,
            self.cfg.interval_seconds,
            positions=self.positions,
            overrides=self.overrides,
        )
        # No wait for the broker's acknowledgements here (~35 ms of every interval on the
        # critical path): QoS 1 delivers them meanwhile, and the driver waits for the readings
        # on chain anyway before their deadline.
        stats = sim.publish_interval(interval_id)
        for spec in specs:
            self.published.add((spec.address, interval_id))
        return stats.published

    def _wait_readings(self, interval_id: int, timeout_s: float = 120.0) -> None:
        """Wait until every reading published for ``interval_id`` is on chain (its
        ``ReadingsSubmitted`` logs, one ``eth_getLogs`` per poll)."""
        readings = self._contract("MeterReadings")
        want = {meter for meter, i in self.published if i == interval_id}
        event = readings.events.ReadingsSubmitted
        deadline = time.monotonic() + timeout_s
        while want:
            logs = event.get_logs(
                from_block=self.deployment.block, argument_filters={"intervalId": interval_id}
            )
            want -= {reading.meter for _, reading, _ in batches.accepted_from_logs(logs)}
            if not want:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"interval {interval_id}: {len(want)} readings not on chain after "
                    f"{timeout_s:.0f} s (oracle log: {self._service_log('oracle')})"
                )
            time.sleep(0.05)

    def _wait_settled(self, missing_deadline: bool) -> None:
        """Wait until the keeper (its own thread) has settled every interval with approved trades
        whose readings are complete (``missing_deadline``: every such interval)."""
        market = self._contract("EnergyMarket")
        traded = [r["t"] for r in self.records if any(tr["approved"] for tr in r["trades"])]
        published: dict[int, set[str]] = {}
        for meter, i in self.published:
            published.setdefault(i, set()).add(meter)
        want = [
            t for t in traded
            if missing_deadline or all(m.meter in published.get(t, ()) for m in self.members)
        ]  # fmt: skip
        deadline = time.monotonic() + 180
        while want:
            # intervalOf(t)[5]: settled (every batch settled or reclaimed)
            want = [t for t in want if not market.functions.intervalOf(t).call()[5]]
            if not want:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"intervals {want[:5]} not settled after 180 s "
                    f"(keeper log: {self._service_log('keeper')})"
                )
            time.sleep(0.1)
