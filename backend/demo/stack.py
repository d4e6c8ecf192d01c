"""The demo's embedded stack: Anvil, the contracts, the market API (``tegrid serve`` in its own
process), the MQTT broker with the oracle (its own process over Mosquitto, else a thread beside the
in-process transport), the keeper process, the flexibility control loop over Mosquitto (``tegrid
dispatcher`` and ``tegrid devices simulate``, each its own process), and the chain helpers the day
needs. ``DemoStack``
starts the parts; everything started is stopped in reverse order (``Stops``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from web3 import Web3

from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.chain.deploy import deploy_from_settings
from backend.demo.clients import OrderClients, check_response, domain_args
from backend.demo.config import (
    ORACLE_IDLE_S,
    ROLE_KEYS,
    SERVICE_POLL_S,
    SETTLEMENT_DELAY_S,
    DemoConfig,
    DemoError,
)
from backend.demo.profile import cpu_seconds
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.clock import chain_now, set_time
from backend.devtools.services import ServiceProcess
from backend.iot.transport import InProcessBroker, InProcessTransport, MqttTransport
from backend.market import typed
from backend.net import free_port
from backend.oracle.daemon import OracleDaemon
from backend.oracle.store import OracleStore
from backend.oracle.web3_ledger import Web3Ledger
from backend.paths import REPO_ROOT
from backend.settings import Settings


class Stops:
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


class DemoStack:
    """The processes and connections of one demo run (set up by the ``_start_*`` steps)."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        config.validate()
        self.cfg = config
        self.console = console
        self.stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.work = REPO_ROOT / ".tegrid" / f"demo-{self.stamp}"
        self.stack = Stops()
        self.transport_note = ""
        self._clients: dict[str, Any] = {}
        self.services: dict[str, Any] = {}
        self._pids: dict[str, int | None] = {"driver": os.getpid()}

    # ------------------------------------------------------------------ set-up
    def _start_chain(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        # No --state file: the demo never restarts its chain, and Anvil would serialize the whole
        # state to JSON every second (16 MB after 12 intervals of 150 members, growing).
        anvil = AnvilProcess(port=self.cfg.chain_port or None).start()
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
            keeper_key=ROLE_KEYS["keeper"],
            database_url=f"sqlite:///{self.work / 'market.db'}",
            oracle_database_url=f"sqlite:///{self.work / 'oracle.db'}",
            control_database_url=f"sqlite:///{self.work / 'control.db'}",
            network=self.cfg.network,
            vm_min_pu=self.cfg.vm_min_pu,
            vm_max_pu=self.cfg.vm_max_pu,
            grid_process=True,
            interval_seconds=self.cfg.interval_seconds,
            deployment_file=self.work / "deployment.json",
            chain_state_file=self.work / "anvil-state.json",
        )

    def _deploy(self) -> None:
        self.deployment = deploy_from_settings(
            self.settings, settlement_delay_seconds=SETTLEMENT_DELAY_S
        )

    def _start_market(self) -> None:
        """``tegrid serve --dev --no-dev-stack`` in its own process (the dev API closes an interval
        on request; no scheduler, no keeper: the keeper is a process of its own)."""
        port = self.cfg.api_port or free_port()
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
        self.services["api"].wait_until(
            lambda: self.http.get("/health").status_code == 200, timeout_s=180
        )
        template = check_response(self.http.get("/orders/eip712"), "GET /orders/eip712")
        registry = check_response(self.http.get("/participants/eip712"), "GET /participants/eip712")
        self.domain = typed.Domain(**domain_args(template["domain"]))
        self.registry_domain = typed.Domain(**domain_args(registry["domain"]))
        self.console.print(
            f"API at {self.api_url} (EIP-712 domain {template['domain']['name']!r}, "
            f"chain {template['domain']['chainId']})"
        )

    def _start_iot(self) -> None:
        """The broker, then the oracle: its own process (``tegrid oracle``) over Mosquitto, or a
        thread beside the in-process transport when there is no broker to share."""
        use_mqtt = self.cfg.broker == "mosquitto" or (
            self.cfg.broker == "auto" and find_mosquitto() is not None
        )
        if use_mqtt or self.cfg.broker_port:
            if find_mosquitto() is None:
                option = "--broker mosquitto" if use_mqtt else "--broker-port"
                raise DemoError(f"{option}: mosquitto is not installed (apt-get install mosquitto)")
            broker = MosquittoBroker(port=self.cfg.broker_port or None).start()
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
        if "oracle" in self.services and self.cfg.flexibility:
            # the control loop (#17): signed control actions for the recorded activations
            dispatcher_args = [
                "dispatcher", "--client-id", "tegrid-demo-dispatcher", "--log-level", "WARNING",
                "--tick", "0.1",
            ]  # fmt: skip
            self._start_service("dispatcher", dispatcher_args, self.settings)
        self.console.print(f"meter transport: {self.transport_note}")
        self.meter_transport.connect()
        self.stack.push(self.meter_transport.close)

    def _start_oracle_thread(self, transport: Any) -> None:
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
        service = ServiceProcess(name, args, settings, self.work).start()
        self._pids[name] = service.process.pid if service.process is not None else None
        self.stack.push(service.stop)
        self.services[name] = service

    def _oracle_ready(self) -> None:
        """The oracle process has subscribed (its queue records ``started_at`` right after)."""
        service = self.services.get("oracle")
        if service is None:
            return

        def ready() -> bool:
            store = OracleStore(self.settings.oracle_database_url, create=False)
            try:
                return store.meta("started_at") is not None
            finally:
                store.close()

        service.wait_until(ready)
        time.sleep(0.2)  # the SUBSCRIBE went out just before; let the broker take it

    def _start_devices(self, devices: list[dict[str, Any]]) -> None:
        """``tegrid devices simulate`` with the members' devices (a devices file in the run
        folder): they take the dispatcher's control actions and publish their own signed
        readings of every interval that ends."""
        path = self.work / "devices.json"
        path.write_text(json.dumps(devices, indent=2))
        self._start_service(
            "devices",
            ["devices", "simulate", "--devices-file", str(path), "--poll", "0.1"],
            self.settings,
        )

    def _start_keeper(self) -> None:
        """``tegrid keeper`` in its own process, sending from the keeper's key."""
        self._start_service(
            "keeper",
            ["keeper", "--poll-seconds", str(SERVICE_POLL_S)],
            self.settings,
        )

    # ------------------------------------------------------------------ chain helpers
    def _contract(self, name: str) -> Any:
        return contract_at(self.w3, name, self.deployment.address(name))

    def _set_time(self, timestamp: int) -> None:
        if chain_now(self.w3) < timestamp:
            set_time(self.w3, timestamp)

    def _transact(self, key: str, fn: Any) -> Any:
        """Send ``fn`` from ``key`` through one client per key (it keeps the key's nonce)."""
        if key not in self._clients:
            self._clients[key] = ChainClient(self.settings.rpc_url, key)
        return self._clients[key].transact(fn)

    # ------------------------------------------------------------------ processes
    def _cpu_seconds(self) -> dict[str, float]:
        """CPU seconds of each process of the stack so far (see ``profile.cpu_seconds``)."""
        return cpu_seconds(self._pids)

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
