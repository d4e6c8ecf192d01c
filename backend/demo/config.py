"""The demo's settings (``DemoConfig``), its error and the constants of the run: role keys, the
members' deposit, the settlement delay and the services' poll intervals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.chain.protocol import TOKEN_UNIT
from backend.errors import ConfigError, TegridError
from backend.net import port_open
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS, check_voltage_band

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
# The grid operator's own funds in the balancing account, from which it pays long imbalances.
BALANCING_DEPOSIT = 1_000 * TOKEN_UNIT
TRADE_FIELDS = (
    "id", "intervalId", "seller", "buyer", "sellerBus", "buyerBus", "energyWh", "pricePerKWh",
    "approved", "reason", "element", "vetoValue", "vetoLimit",
)  # fmt: skip
SETTLEMENT_DELAY_S = 1800
# What a consenting member lets remedies charge it, per kWh of its trade (setRemedyCap): 0.05
# tokens, a share of the gains (bid - ask) a rescued trade keeps.
REMEDY_CAP_PER_KWH = TOKEN_UNIT // 20
# Which of the members' devices (in member order) ignores every control action: the demo shows a
# device that does not deliver, and is not paid. The 9th: with the default seed, pv-13's battery
# at bus 40, at the end of the feeder whose voltage binds at midday (activated at 13:00).
IGNORING_DEVICE = 8
MIN_PORT = 1024  # below: privileged ports, which Anvil, Mosquitto and uvicorn cannot bind as users
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


def check_port(port: int, name: str) -> None:
    """``DemoError`` naming the option (``name``, as the user gave it) unless ``port`` is 0 (a
    free port) or an unprivileged port number."""
    if port != 0 and not MIN_PORT <= port <= 65535:
        raise DemoError(f"{name} must be 0 (a free port) or {MIN_PORT}-65535, got {port}")


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
    # Where the stack listens on 127.0.0.1 (0: a free port the system picks).
    api_port: int = 0
    chain_port: int = 0
    broker_port: int = 0
    # The Neural Grid's voltage band (pu), for the API's validator and the report's checks.
    vm_min_pu: float = 0.90
    vm_max_pu: float = 1.10
    # Switch the registry to islanded before the second interval (the first runs grid-connected):
    # the network needs grid-forming units (village_island).
    islanded: bool = False
    # Share of the members who set a remedy cap (consent to pay for flexibility that rescues
    # their vetoed trades); the others' trades are never rescued.
    remedy_consent_share: float = 0.75
    # #17's flexibility: the members' devices, offers, remedies and the control loop (needs
    # Mosquitto: the dispatcher and the devices are processes of their own).
    flexibility: bool = True

    def validate(self) -> None:
        if self.prosumers < 2 or self.prosumers > 500:
            raise DemoError("--prosumers must be between 2 and 500")
        if not 0 < self.hours <= 24:
            raise DemoError("--hours must be in (0, 24]")
        if self.interval_minutes < 1 or 1440 % self.interval_minutes:
            raise DemoError("--interval-minutes must divide a day (1, 5, 15, 30, 60 ...)")
        if not 0 <= self.remedy_consent_share <= 1:
            raise DemoError("--remedy-consent must be between 0 and 1")
        if self.broker not in ("auto", "mosquitto", "inprocess"):
            raise DemoError("--broker must be auto, mosquitto or inprocess")
        try:
            check_voltage_band(self.vm_min_pu, self.vm_max_pu, ("--vm-min", "--vm-max"))
        except ConfigError as exc:
            raise DemoError(str(exc)) from None
        ports = {"--api-port": self.api_port, "--chain-port": self.chain_port,
                 "--broker-port": self.broker_port}  # fmt: skip
        for name, port in ports.items():
            check_port(port, name)
        chosen = [(name, port) for name, port in ports.items() if port]
        for i, (name, port) in enumerate(chosen):
            for other, same in chosen[i + 1 :]:
                if port == same:
                    raise DemoError(f"{name} and {other} are both {port}: give each its own port")
        if self.broker_port and self.broker == "inprocess":
            raise DemoError("--broker-port needs Mosquitto: --broker inprocess listens on no port")
        for name, port in chosen:
            if port_open("127.0.0.1", port, timeout_s=0.2):
                raise DemoError(f"{name} {port}: something already listens on 127.0.0.1:{port}")

    @property
    def interval_seconds(self) -> int:
        return self.interval_minutes * 60

    @property
    def intervals(self) -> int:
        return max(1, round(self.hours * 60 / self.interval_minutes))
