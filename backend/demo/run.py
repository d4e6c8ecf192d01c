"""``tegrid demo``: a community day through every real component, then a report.

The embedded stack is brought up here: Anvil (its own port, state in the run folder), the contracts,
the market API (uvicorn in a thread), the MQTT broker (Mosquitto when installed, else the in-process
transport, said so), the oracle daemon, the meter simulator and the settlement keeper. Members
connect through the plug-and-play path (signed ``ConnectionRequest`` over HTTP, hosting capacity
checked by the Neural Grid), post signed orders over HTTP as real clients would, and the chain
clock is moved forward interval by interval (``evm_setNextBlockTimestamp``) instead of waiting.

Interval pipeline (what a real day looks like, compressed): while interval ``t-1`` runs, orders for
``t`` are posted and its gate is closed (clear, validate, record); when ``t-1`` ends its meters
publish, the oracle relays the readings and the keeper settles it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backend.chain import batches, eip712, protocol
from backend.demo.community import TOKEN_UNIT, build_community, intent_for
from backend.devtools.clock import chain_now, set_time
from backend.errors import TegridError
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS, Settings

# Distinct keys per role, so no two processes share a transaction nonce.
ROLE_KEYS = {
    "admin": ANVIL_KEYS[0],
    "market_operator": ANVIL_KEYS[1],
    "validator": ANVIL_KEYS[2],
    "grid_operator": ANVIL_KEYS[3],
    "oracle": ANVIL_KEYS[4],
    "keeper": ANVIL_KEYS[5],
}
DEPOSIT = 2_000 * TOKEN_UNIT
TRADE_FIELDS = (
    "id", "intervalId", "seller", "buyer", "sellerBus", "buyerBus", "energyWh", "pricePerKWh",
    "approved", "reason", "element",
)  # fmt: skip
SETTLEMENT_DELAY_S = 1800
# How often the keeper polls the chain when nothing is due: it is not on the critical path, and
# every poll costs it and Anvil CPU the clearing needs (at 0.02 / 0.2 s the oracle and the keeper
# used a third of a core between them).
SERVICE_POLL_S = 0.5
# The oracle's sleep when its queue is empty: the driver waits for each interval's readings one
# step after publishing them (before the clock passes their settlement deadline), and at 0.5 s
# that wait was ~5.6 s of a 34 s run; at 0.15 s it is ~1.2 s, for ~25 % more (smaller) batches.
ORACLE_IDLE_S = 0.15


class DemoError(TegridError, RuntimeError):
    """The demo could not complete a step (says which)."""


@dataclass(frozen=True)
class DemoConfig:
    network: str = "cigre_lv"
    prosumers: int = 16
    hours: float = 4.0
    interval_minutes: int = 15
    seed: int = 7
    start_hour: float = 10.0
    under_delivery_share: float = 0.2  # share of sellers whose meters show 30-70 % of the sale
    missing_share: float = 0.05  # share of readings never sent (count as zero at the deadline)
    reports_dir: Path = REPO_ROOT / "reports"
    broker: str = "auto"  # auto | mosquitto | inprocess

    def validate(self) -> None:
        if self.prosumers < 2 or self.prosumers > 500:
            raise DemoError("--prosumers must be between 2 and 500")
        if not 0 < self.hours <= 24:
            raise DemoError("--hours must be in (0, 24]")
        if self.interval_minutes < 1 or 1440 % self.interval_minutes:
            raise DemoError("--interval-minutes must divide a day (1, 5, 15, 30, 60 ...)")
        if self.broker not in ("auto", "mosquitto", "inprocess"):
            raise DemoError("--broker must be auto, mosquitto or inprocess")

    @property
    def interval_seconds(self) -> int:
        return self.interval_minutes * 60

    @property
    def intervals(self) -> int:
        return max(1, round(self.hours * 60 / self.interval_minutes))


class _Stack:
    """Everything the demo started, stopped in reverse order."""

    def __init__(self) -> None:
        self._stops: list[Any] = []

    def push(self, stop: Any) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            with contextlib.suppress(Exception):
                stop()


def _sign(domain: Any, primary: str, message: dict[str, Any], key: str) -> str:
    return str(eip712.sign_digest(domain.digest(primary, message), key))


def _domain_args(domain: dict[str, Any]) -> dict[str, Any]:
    """``typed.Domain`` arguments from the domain of a ``GET .../eip712`` template."""
    return {
        "name": domain["name"],
        "version": domain["version"],
        "chain_id": int(domain["chainId"]),
        "verifying_contract": domain["verifyingContract"],
    }


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise DemoError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


class OrderClients:
    """The members' order posts over plain keep-alive HTTP/1.1: one ``http.client`` connection
    per worker thread (httpx costs several times the CPU of the request itself), ``workers``
    threads kept for the whole run. Each member still signs its own order; the connection only
    carries it."""

    IDLE_S = 2.0  # a connection idle longer is opened anew before a post

    def __init__(self, api_url: str, workers: int = 8, timeout_s: float = 120.0) -> None:
        parts = urlsplit(api_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order-client")

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        now = time.monotonic()
        if conn is not None and now - getattr(self._local, "used", now) > self.IDLE_S:
            conn.close()  # the server may drop it any moment (uvicorn keeps idle ones 5 s)
            conn = None
        self._local.used = now
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        """POST JSON; one reconnect when the kept connection was closed by the server."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request("POST", path, payload, headers)
                response = conn.getresponse()
                return response.status, response.read().decode()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()


class Demo:
    """One demo run; :meth:`run` returns the summary and the report folder."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        config.validate()
        self.cfg = config
        self.console = console
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.report_dir = config.reports_dir / stamp
        self.work = REPO_ROOT / ".tegrid" / f"demo-{stamp}"
        self.stack = _Stack()
        self.records: list[dict[str, Any]] = []
        self.vetoes: list[dict[str, Any]] = []
        self.positions: dict[tuple[str, int], int] = {}
        self.overrides: dict[tuple[str, int], tuple[int, int]] = {}
        self.published: set[tuple[str, int]] = set()
        self.transport_note = ""
        self.stage_s: dict[str, float] = {}
        self._clients: dict[str, Any] = {}
        self.services: dict[str, Any] = {}
        self._pids: dict[str, int | None] = {"driver": os.getpid()}
        self.cpu_s: dict[str, float] = {}
        self.pipeline_s = 0.0

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_s[name] = self.stage_s.get(name, 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ set-up
    def _start_chain(self) -> None:
        from web3 import Web3

        from backend.devtools.anvil import AnvilProcess

        self.work.mkdir(parents=True, exist_ok=True)
        # No --state file: the demo never restarts its chain, and Anvil would serialize the whole
        # state to JSON every second (16 MB after 12 intervals of 150 members, growing).
        anvil = AnvilProcess().start()
        self._pids["anvil"] = anvil.process.pid if anvil.process is not None else None
        self.stack.push(anvil.stop)
        self.w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        self.settings = dataclasses.replace(
            Settings.from_env(),
            rpc_url=anvil.url,
            chain_id=int(self.w3.eth.chain_id),
            admin_key=ROLE_KEYS["admin"],
            market_operator_key=ROLE_KEYS["market_operator"],
            validator_key=ROLE_KEYS["validator"],
            grid_operator_key=ROLE_KEYS["grid_operator"],
            oracle_key=ROLE_KEYS["oracle"],
            database_url=f"sqlite:///{self.work / 'market.db'}",
            oracle_database_url=f"sqlite:///{self.work / 'oracle.db'}",
            network=self.cfg.network,
            grid_process=True,
            interval_seconds=self.cfg.interval_seconds,
            deployment_file=self.work / "deployment.json",
            chain_state_file=self.work / "anvil-state.json",
        )

    def _deploy(self) -> None:
        from backend.chain.deploy import deploy_from_settings

        self.deployment = deploy_from_settings(
            self.settings, settlement_delay_seconds=SETTLEMENT_DELAY_S
        )

    def _start_market(self) -> None:
        """``tegrid serve --dev --no-dev-stack`` in its own process (the dev API closes an interval
        on request; no scheduler, no keeper: the keeper is a process of its own)."""
        from backend.net import free_port

        port = free_port()
        self._start_service(
            "api",
            ["serve", "--dev", "--no-dev-stack", "--no-scheduler", "--no-keeper",
             "--port", str(port), "--gate-lead", "60"],
            self.settings,
        )  # fmt: skip
        self.api_url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.api_url, timeout=120)
        self.stack.push(self.http.close)
        self.orders = OrderClients(self.api_url)
        self.stack.push(self.orders.close)

    def _api_ready(self) -> None:
        from backend.market import typed

        self.services["api"].wait_until(
            lambda: self.http.get("/health").status_code == 200, timeout_s=180
        )
        template = _check(self.http.get("/orders/eip712"), "GET /orders/eip712")
        registry = _check(self.http.get("/participants/eip712"), "GET /participants/eip712")
        self.domain = typed.Domain(**_domain_args(template["domain"]))
        self.registry_domain = typed.Domain(**_domain_args(registry["domain"]))
        self.console.print(
            f"API at {self.api_url} (EIP-712 domain {template['domain']['name']!r}, "
            f"chain {template['domain']['chainId']})"
        )

    def _start_iot(self) -> None:
        """The broker, then the oracle: its own process (``tegrid oracle``) over Mosquitto, or a
        thread beside the in-process transport when there is no broker to share."""
        from backend.devtools.broker import MosquittoBroker, find_mosquitto
        from backend.iot.transport import InProcessBroker, InProcessTransport, MqttTransport

        use_mqtt = self.cfg.broker == "mosquitto" or (
            self.cfg.broker == "auto" and find_mosquitto() is not None
        )
        if use_mqtt:
            if find_mosquitto() is None:
                raise DemoError(
                    "--broker mosquitto: mosquitto is not installed (apt-get install mosquitto)"
                )
            broker = MosquittoBroker().start()
            self._pids["mosquitto"] = broker.process.pid if broker.process is not None else None
            self.stack.push(broker.stop)
            self.transport_note = f"MQTT via Mosquitto at {broker.url}"
            self.settings = dataclasses.replace(self.settings, broker_url=broker.url)
            self.meter_transport: Any = MqttTransport(broker.url, client_id="tegrid-demo-meters")
            oracle_args = [
                "oracle", "--client-id", "tegrid-demo-oracle", "--log-level", "WARNING",
                "--idle-sleep", str(ORACLE_IDLE_S),
            ]  # fmt: skip
            self._start_service("oracle", oracle_args, self.settings)
        else:
            shared = InProcessBroker()
            self.transport_note = (
                "in-process transport (no MQTT broker found: apt-get install mosquitto)"
            )
            self._start_oracle_thread(InProcessTransport(shared, client_id="tegrid-demo-oracle"))
            self.meter_transport = InProcessTransport(shared, client_id="tegrid-demo-meters")
        self.console.print(f"meter transport: {self.transport_note}")
        self.meter_transport.connect()
        self.stack.push(self.meter_transport.close)

    def _start_oracle_thread(self, transport: Any) -> None:
        from backend.oracle.daemon import OracleDaemon
        from backend.oracle.store import OracleStore
        from backend.oracle.web3_ledger import Web3Ledger

        transport.connect()
        self.stack.push(transport.close)
        oracle = OracleDaemon(
            OracleStore(self.settings.oracle_database_url),
            Web3Ledger(self.settings.rpc_url, self.settings.oracle_key, self.deployment),
            transport,
        )
        oracle.start()
        self.stack.push(oracle.stop)

    def _start_service(self, name: str, args: list[str], settings: Settings) -> None:
        from backend.devtools.services import ServiceProcess

        service = ServiceProcess(name, args, settings, self.work).start()
        self._pids[name] = service.process.pid if service.process is not None else None
        self.stack.push(service.stop)
        self.services[name] = service

    def _oracle_ready(self) -> None:
        """The oracle process has subscribed (its queue records ``started_at`` right after)."""
        service = self.services.get("oracle")
        if service is None:
            return
        from backend.oracle.store import OracleStore

        def ready() -> bool:
            store = OracleStore(self.settings.oracle_database_url, create=False)
            try:
                return store.meta("started_at") is not None
            finally:
                store.close()

        service.wait_until(ready)
        time.sleep(0.2)  # the SUBSCRIBE went out just before; let the broker take it

    def _start_keeper(self) -> None:
        """``tegrid keeper`` in its own process, sending from the keeper's key."""
        self._start_service(
            "keeper",
            ["keeper", "--poll-seconds", str(SERVICE_POLL_S)],
            dataclasses.replace(self.settings, admin_key=ROLE_KEYS["keeper"]),
        )

    # ------------------------------------------------------------------ chain helpers
    def _contract(self, name: str) -> Any:
        from backend.chain.contracts import contract_at

        return contract_at(self.w3, name, self.deployment.address(name))

    def _set_time(self, timestamp: int) -> None:
        if chain_now(self.w3) < timestamp:
            set_time(self.w3, timestamp)

    def _transact(self, key: str, fn: Any) -> Any:
        """Send ``fn`` from ``key`` through one client per key (it keeps the key's nonce)."""
        from backend.chain.client import ChainClient

        if key not in self._clients:
            self._clients[key] = ChainClient(self.settings.rpc_url, key)
        return self._clients[key].transact(fn)

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
                sig = _sign(reg_domain, "ConnectionRequest", msg, m.wallet_key)
                r = self.http.post("/participants", json={"message": msg, "signature": sig})
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

    # ------------------------------------------------------------------ one interval
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
            body = {"message": msg, "signature": _sign(domain, "Order", msg, m.wallet_key)}
            bodies.append((m.name, body))

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
        interval = _check(
            self.http.post(f"/intervals/{interval_id}/close", params={"wait": "false"}),
            f"closing interval {interval_id}",
        )
        trades = _check(self.http.get("/trades", params={"interval": interval_id}), "GET /trades")
        items: list[dict[str, Any]] = (
            trades if isinstance(trades, list) else trades.get("trades", [])
        )
        return {"interval": interval, "trades": items}

    def _wait_recorded(self, interval_id: int, timeout_s: float = 120.0) -> None:
        """Wait until the server has the interval's batch on chain (status recorded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            row = _check(
                self.http.get(f"/intervals/{interval_id}"), f"GET /intervals/{interval_id}"
            )
            if row.get("status") in ("recorded", "settled"):
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
        with self._stage("clearing + Neural Grid + recordTrades (server, overlaps the orders)"):
            return self._clear(interval_id)

    def _plan_delivery(self, interval_id: int, trades: list[dict[str, Any]]) -> None:
        """Traded positions for the meters; some sellers under-deliver."""
        rng = self._rng("delivery", interval_id)
        for t in trades:
            if not t["approved"]:
                continue
            seller, buyer = self.by_wallet[t["seller"]], self.by_wallet[t["buyer"]]
            self.positions[(seller.meter, interval_id)] = self.positions.get(
                (seller.meter, interval_id), 0
            ) + int(t["energyWh"])
            self.positions[(buyer.meter, interval_id)] = self.positions.get(
                (buyer.meter, interval_id), 0
            ) - int(t["energyWh"])
        for m in self.members:
            key = (m.meter, interval_id)
            sold_wh = self.positions.get(key, 0)
            if sold_wh > 0 and rng.random() < self.cfg.under_delivery_share:
                # a cloud: the meter exports only part of what was sold (partial delivery)
                self.overrides[key] = (0, int(sold_wh * rng.uniform(0.3, 0.7)))

    def _publish_readings(self, interval_id: int) -> int:
        from backend.iot.meters import MeterSimulator, MeterSpec
        from backend.iot.signing import ReadingDomain

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

    def _cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds each process of the stack has used so far; a service's live
        child processes count as its own (the API's Neural Grid worker), the driver's do not (they
        are the services)."""
        import psutil

        out: dict[str, float] = {}
        for name, pid in self._pids.items():
            if pid is None:
                continue
            try:
                process = psutil.Process(pid)
                family = [process]
                if name != "driver":
                    family += process.children(recursive=True)
            except psutil.Error:
                continue
            total = 0.0
            for p in family:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
            out[name] = total
        return out

    def _layout(self) -> dict[str, str]:
        """Which operating-system process ran what."""
        layout = {
            "driver": "tegrid demo: members' order clients (8 keep-alive HTTP connections), "
            "the meter fleet (signing + MQTT publish), the chain clock, the checks",
            "chain": "anvil",
        }
        for name, service in self.services.items():
            layout[name] = "python -m backend.cli.main " + " ".join(service.args)
        if "oracle" in self.services:
            layout["broker"] = "mosquitto"
        else:
            layout["oracle"] = "a thread of the driver (in-process transport, no MQTT broker)"
        return layout

    def _service_log(self, name: str) -> str:
        service = self.services.get(name)
        return service.log_tail(300) if service is not None else "in-process"

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

    # ------------------------------------------------------------------ grid evidence
    def _grid_states(self, interval_id: int, trades: list[dict[str, Any]]) -> dict[str, Any]:
        from grid.verdicts import Trade

        hours = self.cfg.interval_seconds / 3600
        validator = self.grid_validator

        def state(selected: list[dict[str, Any]]) -> dict[str, float]:
            st = validator.grid_status(
                [
                    Trade(t["id"], t["sellerBus"], t["buyerBus"], t["energyWh"] / hours / 1000)
                    for t in selected
                ],
                interval=interval_id,
                interval_seconds=self.cfg.interval_seconds,
            )
            return {
                "converged": bool(st.converged),
                "vm_min_pu": min(st.vm_pu) if st.vm_pu else float("nan"),
                "vm_max_pu": max(st.vm_pu) if st.vm_pu else float("nan"),
                "max_line_loading_percent": max(st.line_loading_percent, default=0.0),
                "max_trafo_loading_percent": max(st.trafo_loading_percent, default=0.0),
            }

        base = validator.base_state(interval_id, self.cfg.interval_seconds)
        return {
            "grid_base": state([]),
            "grid_approved": state([t for t in trades if t["approved"]]),
            "grid_all": state(trades),
            "base_summary": base.to_dict(),
        }

    # ------------------------------------------------------------------ the run
    def run(self) -> tuple[dict[str, Any], Path]:
        from grid.validator import GridValidator

        cfg = self.cfg
        started = time.perf_counter()
        try:
            self.console.print(
                f"[bold]tegrid demo[/]: {cfg.prosumers} prosumers on {cfg.network}, "
                f"{cfg.intervals} intervals of {cfg.interval_minutes} min from "
                f"{cfg.start_hour:04.1f} h, seed {cfg.seed}"
            )
            self._start_chain()
            self._deploy()
            # the service processes start first: their imports overlap the market's set-up
            self._start_iot()
            self._start_keeper()
            self._start_market()
            self.grid_validator = GridValidator(cfg.network)
            self._connect_members()
            self._oracle_ready()
            s = cfg.interval_seconds
            now = chain_now(self.w3)
            day = (now // 86400 + 1) * 86400
            first = (day + int(cfg.start_hour * 3600)) // s
            last = first + cfg.intervals - 1
            self._set_time((first - 1) * s + 1)
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            ) as progress:
                task = progress.add_task("intervals", total=cfg.intervals + 1)
                cpu_started = self._cpu_seconds()
                pipeline_started = time.perf_counter()
                posted: dict[int, int] = {}
                relaying: list[int] = []  # intervals published, not yet seen on chain
                settling: list[int] = []  # intervals with trades, not yet seen settled
                with self._stage("orders over HTTP (sign + POST /orders)"):
                    posted[first] = self._post_orders(first)
                # At chain time just inside interval c: the server clears c+1 (Neural Grid,
                # recordTrades) while the meters publish c-1's readings and the members post their
                # orders for c+2, and the oracle relays c-1; the keeper (its own process) settles
                # what is in.
                # The driver waits for an interval's readings only before the clock would come
                # within half an interval of its settlement deadline (SETTLEMENT_DELAY_S after its
                # end: with 15 min intervals, c-2's before the clock leaves c).
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="closer") as closer:
                    for c in range(first - 1, last + 1):
                        label = datetime.fromtimestamp((c + 1) * s, UTC).strftime("%H:%M")
                        clearing = None
                        if c + 1 <= last:
                            progress.update(task, description=f"interval {label}: clearing")
                            clearing = closer.submit(self._timed_clear, c + 1)
                        if c - 1 >= first:
                            with self._stage("meters publish (sign + MQTT)"):
                                self._publish_readings(c - 1)
                        if clearing is not None:
                            if c + 2 <= last:
                                with self._stage("orders over HTTP (sign + POST /orders)"):
                                    posted[c + 2] = self._post_orders(c + 2)
                            with self._stage("waiting for the clearing (after the orders)"):
                                cleared = clearing.result()
                            self._plan_delivery(c + 1, cleared["trades"])
                            self.records.append(
                                {"t": c + 1, "label": label, "posted": posted[c + 1], **cleared}
                            )
                        if c - 1 >= first:
                            relaying.append(c - 1)
                        if clearing is not None and cleared["trades"]:
                            settling.append(c + 1)
                        # interval c ends; first make sure the clock does not come near the
                        # settlement deadline of an interval whose readings are still relayed
                        # (the meters published them in time; the oracle must land them)
                        clock = (c + 1) * s + 1
                        if clearing is not None and cleared["trades"]:
                            # the chain refuses c+1's batch after its gate closure (its start)
                            with self._stage("recorder lands the batch before the gate"):
                                self._wait_recorded(c + 1)
                        with self._stage("oracle relays readings (broker -> receipt)"):
                            while relaying and self._deadline(relaying[0]) <= clock + s // 2:
                                self._wait_readings(relaying.pop(0))
                        # ... nor past an interval's reclaimAfter (deadline + delay) before the
                        # keeper settled it: the chain would only let its escrow be reclaimed
                        with self._stage("keeper settles before reclaimAfter"):
                            while settling and self._reclaim_after(settling[0]) <= clock + s // 2:
                                self._wait_interval_settled(settling.pop(0))
                        self._set_time(clock)
                        progress.advance(task)
                with self._stage("meters publish (sign + MQTT)"):
                    self._publish_readings(last)
                    self.meter_transport.flush()
                with self._stage("oracle relays readings (broker -> receipt)"):
                    for t in [*relaying, last]:
                        self._wait_readings(t)
                with self._stage("keeper settles (waiting for the last intervals)"):
                    self._wait_settled(missing_deadline=False)
                # readings that never came count as zero once the settlement deadline passes
                self._set_time((last + 1) * s + SETTLEMENT_DELAY_S + 2)
                with self._stage("keeper settles (waiting for the last intervals)"):
                    self._wait_settled(missing_deadline=True)
                self.pipeline_s = time.perf_counter() - pipeline_started
                self.cpu_s = {
                    k: round(v - cpu_started.get(k, 0.0), 2) for k, v in self._cpu_seconds().items()
                }
            summary = self._summarize(first, last, time.perf_counter() - started)
        finally:
            self.stack.close()
        from backend.demo.report import write_report

        write_report(summary, self.report_dir)
        return summary, self.report_dir

    # ------------------------------------------------------------------ results
    def _events(self, contract: Any, name: str) -> list[Any]:
        event = getattr(contract.events, name)
        return list(event.get_logs(from_block=self.deployment.block))

    def _summarize(self, first: int, last: int, wall_s: float) -> dict[str, Any]:
        market = self._contract("EnergyMarket")
        readings = self._contract("MeterReadings")
        token = self._contract("EnergyToken")
        settled_events = self._events(market, "TradeSettled")
        settled_count = Counter(e["args"]["tradeId"].hex() for e in settled_events)
        settled_by_id = {e["args"]["tradeId"].hex(): e for e in settled_events}
        reading_events = self._events(readings, "ReadingsSubmitted")
        reading_count = Counter(
            (reading.meter, iv) for iv, reading, _ in batches.accepted_from_logs(reading_events)
        )
        settle_gas: Counter[int] = Counter()
        for e in self._events(market, "BatchesSettled"):  # every settlement page
            receipt = self.w3.eth.get_transaction_receipt(e["transactionHash"])
            settle_gas[int(e["args"]["intervalId"])] += int(receipt["gasUsed"])
        reading_gas: Counter[int] = Counter()
        seen_tx: set[bytes] = set()
        for e in reading_events:
            if e["transactionHash"] in seen_tx:
                continue
            seen_tx.add(e["transactionHash"])
            receipt = self.w3.eth.get_transaction_receipt(e["transactionHash"])
            reading_gas[int(e["args"]["intervalId"])] += int(receipt["gasUsed"])

        limits = self.grid_validator.limits
        intervals: list[dict[str, Any]] = []
        approved_ids: list[str] = []
        vetoed_ids: list[str] = []
        limit_ok = True
        for rec in self.records:
            t, trades = rec["t"], rec["trades"]
            # as recorded (the close answered before the batch was on chain)
            iv = _check(self.http.get(f"/intervals/{t}"), f"GET /intervals/{t}")
            grid_states = self._grid_states(t, trades)
            record_gas = 0
            batch = iv.get("batch") or {}
            if batch.get("txHash"):
                record_gas = int(self.w3.eth.get_transaction_receipt(batch["txHash"])["gasUsed"])
            reasons = Counter(tr["reason"] for tr in trades if not tr["approved"])
            for tr in trades:
                (approved_ids if tr["approved"] else vetoed_ids).append(tr["id"][2:].lower())
                if not tr["approved"]:
                    self.vetoes.append(
                        {
                            "label": rec["label"], "trade": tr["id"][:10], "reason": tr["reason"],
                            "element": tr["element"], "value": "", "limit": "",
                        }
                    )  # fmt: skip
            ok = _within(grid_states["grid_approved"], grid_states["grid_base"], limits)
            limit_ok &= ok
            price = iv.get("clearingPrice")
            intervals.append(
                {
                    "interval": t,
                    "label": rec["label"],
                    "orders": rec["posted"],
                    "clearing_price": int(price) / TOKEN_UNIT if price is not None else None,
                    "traded_wh": int(iv["tradedWh"]),
                    "vetoed_wh": int(iv["vetoedWh"]),
                    "approved": int(iv["approvedCount"]),
                    "vetoed": int(iv["vetoedCount"]),
                    "vetoes_by_reason": dict(reasons),
                    "grid_base": grid_states["grid_base"],
                    "grid_approved": grid_states["grid_approved"],
                    "grid_all": grid_states["grid_all"],
                    "approved_state_within_limits": ok,
                    "gas": {
                        "record": record_gas,
                        "readings": int(reading_gas.get(t, 0)),
                        "settle": int(settle_gas.get(t, 0)),
                    },
                }
            )

        participants: list[dict[str, Any]] = []
        total_internal = 0
        for m in self.members:
            available, locked = market.functions.balanceOf(m.wallet).call()
            total_internal += int(available) + int(locked)
            participants.append(
                {
                    "name": m.name, "kind": m.kind, "wallet": m.wallet, "bus": m.bus,
                    "contracted_wh": 0, "delivered_wh": 0, "paid": 0, "received": 0,
                    "available": int(available), "locked": int(locked),
                }
            )  # fmt: skip
        by_wallet = {p["wallet"]: p for p in participants}
        for rec in self.records:
            for tr in rec["trades"]:
                if not tr["approved"]:
                    continue
                ev = settled_by_id.get(tr["id"][2:].lower())
                delivered = int(ev["args"]["deliveredWh"]) if ev else 0
                paid = int(ev["args"]["paid"]) if ev else 0
                for who, sign in ((tr["seller"], 1), (tr["buyer"], -1)):
                    p = by_wallet[who]
                    p["contracted_wh"] += int(tr["energyWh"])
                    p["delivered_wh"] += delivered
                    if sign > 0:
                        p["received"] += paid
                    else:
                        p["paid"] += paid
        deposited = DEPOSIT * len(self.members)
        market_tokens = int(token.functions.balanceOf(market.address).call())
        checks = {
            "tokens conserved (market token balance = deposits = internal balances)": (
                market_tokens == deposited == total_internal
            ),
            "every approved trade settled exactly once": all(
                settled_count.get(i, 0) == 1 for i in approved_ids
            )
            and len(settled_count) == len(approved_ids),
            "no vetoed trade settled": not any(settled_count.get(i, 0) for i in vetoed_ids),
            "every published reading on chain exactly once": all(
                reading_count.get(k, 0) == 1 for k in self.published
            )
            and sum(reading_count.values()) == len(self.published),
            "no approved interval state violates a grid limit": limit_ok,
            "no escrow left locked": all(p["locked"] == 0 for p in participants),
        }
        totals = {
            "intervals": len(intervals),
            "orders posted": sum(i["orders"] for i in intervals),
            "trades approved": len(approved_ids),
            "trades vetoed": len(vetoed_ids),
            "energy traded (kWh)": round(sum(i["traded_wh"] for i in intervals) / 1000, 3),
            "energy delivered (kWh)": round(sum(p["delivered_wh"] for p in participants) / 2000, 3),
            "tokens paid to sellers": sum(p["received"] for p in participants) / TOKEN_UNIT,
            "readings on chain": sum(reading_count.values()),
            "gas total": sum(sum(i["gas"].values()) for i in intervals),
            "wall time (s)": round(wall_s, 1),
            "pipeline time (s)": round(self.pipeline_s, 2),
            "trades settled per second (pipeline)": round(len(approved_ids) / self.pipeline_s, 1)
            if self.pipeline_s
            else 0.0,
        }
        return {
            "network": self.cfg.network,
            "prosumers": self.cfg.prosumers,
            "interval_minutes": self.cfg.interval_minutes,
            "seed": self.cfg.seed,
            "transport": self.transport_note,
            "chain": {"rpc_url": self.settings.rpc_url, "contracts": self.deployment.contracts},
            "limits": {
                "vm_min_pu": float(limits.vm_min_pu),
                "vm_max_pu": float(limits.vm_max_pu),
                "max_loading_percent": float(limits.max_line_loading_percent),
                "max_trafo_loading_percent": float(limits.max_trafo_loading_percent),
            },
            "intervals": intervals,
            "participants": participants,
            "vetoes": self.vetoes,
            "trades": [
                {k: tr[k] for k in TRADE_FIELDS} for rec in self.records for tr in rec["trades"]
            ],
            "checks": checks,
            "totals": totals,
            "processes": self._layout(),
            "pipeline_cpu_s": self.cpu_s,
            "profile_s": {
                k: round(v, 3) for k, v in sorted(self.stage_s.items(), key=lambda kv: -kv[1])
            },
        }


def _within(approved: dict[str, Any], base: dict[str, Any], limits: Any) -> bool:
    """The approved state respects every limit, or is no worse than the base state where the base
    state is already outside it (the validator's "do no harm" rule)."""
    tol = 1e-6
    if not approved["converged"]:
        return False
    checks = (
        (approved["vm_min_pu"] >= min(limits.vm_min_pu, base["vm_min_pu"]) - tol),
        (approved["vm_max_pu"] <= max(limits.vm_max_pu, base["vm_max_pu"]) + tol),
        approved["max_line_loading_percent"]
        <= max(limits.max_line_loading_percent, base["max_line_loading_percent"]) + tol,
        approved["max_trafo_loading_percent"]
        <= max(limits.max_trafo_loading_percent, base["max_trafo_loading_percent"]) + tol,
    )
    return all(checks)


def print_summary(summary: dict[str, Any], report_dir: Path, console: Console) -> None:
    table = Table(title="tegrid demo: per interval")
    for col in ("time", "orders", "price", "kWh", "ok", "veto", "reasons", "min V", "load%"):
        table.add_column(col, justify="right")
    for i in summary["intervals"]:
        ga = i["grid_approved"]
        price = "-" if i["clearing_price"] is None else f"{i['clearing_price']:.4f}"
        table.add_row(
            i["label"], str(i["orders"]), price, f"{i['traded_wh'] / 1000:.1f}",
            str(i["approved"]), str(i["vetoed"]),
            ", ".join(f"{k} {v}" for k, v in i["vetoes_by_reason"].items()) or "-",
            f"{ga['vm_min_pu']:.3f}",
            f"{max(ga['max_line_loading_percent'], ga['max_trafo_loading_percent']):.1f}",
        )  # fmt: skip
    console.print(table)
    totals = Table(title="totals")
    totals.add_column("figure")
    totals.add_column("value", justify="right")
    for k, v in summary["totals"].items():
        totals.add_row(k, str(v))
    console.print(totals)
    for name, ok in summary["checks"].items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'}  {name}")
    console.print(f"report: {report_dir / 'report.html'}")
