"""``tegrid devices simulate``: controllable devices that take signed control actions over MQTT,
answer with signed acks and meter what they did."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from backend.cli.base import App
from backend.cli.output import deployment_line, fail, redact, startup
from backend.errors import TegridError
from backend.settings import Settings

app = App(
    help="Controllable devices: simulate batteries that follow signed control actions.",
    no_args_is_help=True,
)
console = Console()

DEVICES_FORMAT = (
    'a JSON list of {"key": "0x<32-byte device key>"}, optionally with "kind" (1 battery, '
    '2 EV charger, 3 heat pump, 4 PV inverter, 5 genset; default 1), "minW" (-5000), '
    '"maxW" (5000), "capacityWh" (10000), "socWh" (5000), "baselineW" (0) and "ignore" (false).'
)


def load_devices_file(path: Path) -> list[Any]:
    # lazy: eth-keys (~0.3 s), not for `tegrid --help`
    from backend.iot.devices import DeviceSpec  # noqa: PLC0415

    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise TegridError(f"cannot read devices file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TegridError(f"devices file {path} is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise TegridError(f"devices file {path} must hold a JSON list of devices")
    names = {"kind": "kind", "minW": "min_w", "maxW": "max_w", "capacityWh": "capacity_wh",
             "socWh": "soc_wh", "baselineW": "baseline_w", "ignore": "ignore"}  # fmt: skip
    specs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise TegridError(f"devices file {path}: entry {i} needs a string 'key'")
        unknown = set(item) - set(names) - {"key"}
        if unknown:
            raise TegridError(f"devices file {path}: entry {i}: unknown fields {sorted(unknown)}")
        values = {names[k]: v for k, v in item.items() if k in names}
        for k, v in values.items():
            wanted = bool if k == "ignore" else int
            if not isinstance(v, wanted) or (wanted is int and isinstance(v, bool)):
                raise TegridError(f"devices file {path}: entry {i}: {k} must be {wanted.__name__}")
        try:
            specs.append(DeviceSpec(item["key"], **values))
        except TegridError as exc:
            raise TegridError(f"devices file {path}: entry {i}: {exc}") from None
    return specs


def _summary_table(counts: dict[str, int], readings: int, intervals: list[int]) -> Table:
    table = Table(title="devices", show_header=False)
    table.add_row("applied", str(counts.get("applied", 0)))
    refused = {k: v for k, v in counts.items()
               if k not in ("applied", "duplicate", "malformed", "ignored")}  # fmt: skip
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(refused.items())) or "none"
    table.add_row("refused", f"{sum(refused.values())} ({reasons})")
    table.add_row("answered again (duplicate delivery)", str(counts.get("duplicate", 0)))
    table.add_row("ignored (--ignore)", str(counts.get("ignored", 0)))
    table.add_row("malformed messages", str(counts.get("malformed", 0)))
    table.add_row("readings published", f"{readings} ({len(intervals)} intervals)")
    return table


@app.command()
def simulate(
    count: int = typer.Option(
        5, min=1, max=100_000, metavar="N", help="Number of dev batteries (5 kW, 10 kWh)."
    ),
    devices_file: Path = typer.Option(
        None, metavar="FILE", help=f"Devices instead of --count: {DEVICES_FORMAT}"
    ),
    ignore: int = typer.Option(
        0, min=0, metavar="N", help="The last N --count devices ignore every action (no ack)."
    ),
    register: bool = typer.Option(
        False,
        help="Register unknown devices (dev chains): dev device i belongs to dev participant i "
        "(connected first if needed, as `tegrid meters simulate --register` does).",
    ),
    duration: float = typer.Option(
        0.0, min=0.0, metavar="SECONDS", help="Stop after this long (0: run until Ctrl-C)."
    ),
    poll: float = typer.Option(
        0.5, min=0.05, max=60, metavar="SECONDS", help="How often to read chain time."
    ),
    readings: bool = typer.Option(
        True, help="Publish each device's signed reading of every interval that ends."
    ),
    broker_url: str = typer.Option(
        None, metavar="URL", help="MQTT broker, mqtt://host:port (default TEGRID_BROKER_URL)."
    ),
    deployment: Path = typer.Option(
        None, metavar="FILE", help="Deployment file (default TEGRID_DEPLOYMENT_FILE)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
) -> None:
    """Run N devices: each checks the control actions on tegrid/devices/<device>/control
    (grid operator signature, device, expiry, interval, limits, state of charge, replay),
    applies the valid ones, acks on tegrid/devices/<device>/ack, and publishes its own signed
    reading of each ended interval on tegrid/meters/<device>/readings."""
    try:
        settings = Settings.from_env()
    except TegridError as exc:
        fail(str(exc))
    if devices_file is None and ignore > count:
        fail(f"--ignore {ignore} is more than --count {count}")
    # lazy: web3, eth-keys and paho-mqtt (~1 s), not for `tegrid --help`
    from web3 import Web3  # noqa: PLC0415

    from backend.chain.client import ChainClock  # noqa: PLC0415
    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.chain.registry import DeviceRegistry  # noqa: PLC0415
    from backend.iot.control import registry_domain  # noqa: PLC0415
    from backend.iot.devices import DeviceFleet, dev_devices  # noqa: PLC0415
    from backend.iot.signing import ReadingDomain  # noqa: PLC0415
    from backend.iot.transport import MqttTransport  # noqa: PLC0415

    out = Console(stderr=True) if json_out else console
    err = Console(stderr=True)

    def say(line: str) -> None:
        (err if line.startswith("warning:") else out).print(
            f"devices: {line}", highlight=False, soft_wrap=True
        )

    try:
        dep = load_deployment(deployment or settings.deployment_file)
        specs = (
            load_devices_file(devices_file)
            if devices_file is not None
            else dev_devices(count, ignore)
        )
        w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
        registry_address = dep.address("ParticipantRegistry")
        registry = DeviceRegistry(w3, registry_address)
        transport = MqttTransport(broker_url or settings.broker_url)
        startup(
            "devices",
            [
                ("chain", settings.rpc_url),
                ("broker", redact(transport.url)),
                ("deployment", deployment_line(deployment or settings.deployment_file, dep)),
            ],
        )
        clock = ChainClock(w3, poll)
        try:
            clock()
        except OSError:
            fail(
                f"no chain answering at {settings.rpc_url}: start one with `tegrid chain start`", 1
            )
        if register:
            _register(w3, settings, registry, registry_address, specs)
        fleet = DeviceFleet(
            specs, registry_domain(dep.chain_id, registry_address),
            ReadingDomain(dep.chain_id, dep.address("MeterReadings")), transport,
            dep.interval_seconds, registry.is_grid_operator, registry.devices, clock, say,
        )  # fmt: skip
        active = fleet.sync_registry()
        say(f"registry: {active} of {len(specs)} devices are active devices")
        fleet.start()  # handlers before the connection, which subscribes them
        transport.connect()
    except (TegridError, ValueError, KeyError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)

    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    interval_s = dep.interval_seconds
    next_interval = int(clock()) // interval_s
    published, intervals = 0, []
    started = time.monotonic()
    say(f"{len(specs)} devices listening from interval {next_interval} (Ctrl-C stops)")
    with Live(_summary_table({}, 0, []), console=err, transient=True, auto_refresh=False) as live:
        while not stop.is_set():
            if duration and time.monotonic() - started >= duration:
                break
            try:
                now = clock()
                if (next_interval + 1) * interval_s <= now:
                    fleet.sync_registry()  # a device deactivated since refuses from now on
                while (next_interval + 1) * interval_s <= now:
                    if readings:
                        published += fleet.publish_readings(next_interval, time.time())
                        intervals.append(next_interval)
                    next_interval += 1
            except (TegridError, OSError) as exc:
                say(f"warning: {str(exc).splitlines()[0]}; trying again")
            live.update(_summary_table(dict(fleet.counts), published, intervals), refresh=True)
            stop.wait(poll)
    flushed = transport.flush(30)
    transport.close()
    summary = {
        "devices": len(specs), "counts": dict(sorted(fleet.counts.items())),
        "readings": published, "intervals": intervals, "acknowledged_by_broker": flushed,
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(_summary_table(dict(fleet.counts), published, intervals))
    if not flushed:
        raise typer.Exit(1)


def _register(w3: Any, settings: Settings, registry: Any, address: str, specs: list[Any]) -> None:
    """Register the devices the registry does not know; dev device i under dev participant i
    (connected first, at a load bus, if it is not)."""
    # lazy: the dev tooling (web3, pandapower for the load buses)
    from backend.cli.meters import _register_missing  # noqa: PLC0415
    from backend.devtools.participants import register_devices  # noqa: PLC0415
    from backend.iot.meters import dev_meters  # noqa: PLC0415

    records = registry.devices([s.address for s in specs])
    todo = [i for i, s in enumerate(specs) if records[s.address].owner is None]
    if not todo:
        return
    meters = dev_meters(max(todo) + 1)
    _register_missing(w3, settings, registry, address, meters, dev=True)
    owners = registry.owners([m.address for m in meters])
    register_devices(
        w3, address, settings.grid_operator_key,
        [
            (specs[i].address, meters[i].wallet, owners[meters[i].address].bus_id,
             specs[i].kind, specs[i].min_w, specs[i].max_w,
             specs[i].capacity_wh if specs[i].kind == 1 else 0)
            for i in todo
        ],
    )  # fmt: skip
