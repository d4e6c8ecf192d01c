"""``tegrid meters ...``: simulated smart meters publishing device-signed readings over MQTT."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from backend.cli.base import App
from backend.cli.output import deployment_line, fail, redact, startup
from backend.errors import TegridError
from backend.settings import Settings

if TYPE_CHECKING:  # web3 and the meters: imported by the command, not at start-up
    from backend.iot.fleet import MeterFleet

app = App(
    help="Smart meters: simulate a fleet that signs and publishes readings.", no_args_is_help=True
)
console = Console()

# The --meters-file format, as backend.iot.meters.load_meter_file reads it.
METERS_FORMAT = (
    'a JSON list of {"key": "0x<32-byte device key>", "bus": 3}, optionally with '
    '"load_peak_kw" (default 4.0), "pv_peak_kw" (0.0), "commercial" (false) and '
    '"wallet" (the owner\'s 0x address, needed by --register).'
)


def _fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{name} must be between 0 and 1")
    return value


@app.command()
def simulate(
    count: int = typer.Option(
        20, min=1, max=100_000, metavar="N", help="Number of dev-community meters."
    ),
    meters_file: Path = typer.Option(
        None, metavar="FILE", help=f"Meters instead of --count: {METERS_FORMAT}"
    ),
    intervals: int = typer.Option(
        1, min=1, max=10_000, metavar="N", help="How many intervals to report (without --follow)."
    ),
    start_interval: int = typer.Option(
        None,
        min=0,
        metavar="INTERVAL",
        help="First interval (default: the last --intervals ended ones; with --follow the "
        "interval running now, chain time).",
    ),
    follow: bool = typer.Option(
        False,
        "--follow",
        help="Keep running: publish each interval's readings as soon as it ends (chain time), "
        "until Ctrl-C.",
    ),
    poll: float = typer.Option(
        1.0, min=0.05, max=60, metavar="SECONDS", help="--follow: how often to look at the chain."
    ),
    follow_market: bool = typer.Option(
        True,
        help="Meter each owner's trades of the interval (from the market API) on top of its "
        "household profile: sellers export what they sold, buyers import what they bought.",
    ),
    api_url: str = typer.Option(
        None,
        metavar="URL",
        help="Market API to read the trades from (default http://TEGRID_API_HOST:TEGRID_API_PORT).",
    ),
    under_delivery: float = typer.Option(
        0.0, metavar="SHARE", help="Share of sold energy sellers do not deliver (0-1)."
    ),
    missing: float = typer.Option(
        0.0, metavar="P", help="Probability a reading is never sent (0-1)."
    ),
    late: float = typer.Option(
        0.0, metavar="P", help="Probability a reading is sent one interval late (0-1)."
    ),
    seed: int = typer.Option(0, metavar="N", help="Random seed for the deviations."),
    announce: bool = typer.Option(True, help="Announce each meter (address, bus) first."),
    register: bool = typer.Option(
        False, help="Connect unknown meters in the registry (dev chains)."
    ),
    broker_url: str = typer.Option(
        None, metavar="URL", help="MQTT broker, mqtt://host:port (default TEGRID_BROKER_URL)."
    ),
    deployment: Path = typer.Option(
        None, metavar="FILE", help="Deployment file (default TEGRID_DEPLOYMENT_FILE)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Publish signed readings of N meters for ended intervals (tegrid/meters/<addr>/readings).

    Each meter's participant comes from the registry, and a --count meter's bus too (a meter that
    is not registered, or whose stated bus disagrees, is reported); each owner's trades of the
    interval are metered on top of its household profile, so settlement pays what was traded."""
    for name, value in (
        ("--under-delivery", under_delivery),
        ("--missing", missing),
        ("--late", late),
    ):
        if not 0.0 <= value <= 1.0:
            fail(f"{name} must be between 0 and 1, got {value}")
    try:
        settings = Settings.from_env()
    except TegridError as exc:
        fail(str(exc))
    # lazy: web3, eth-keys and paho-mqtt (~1 s), not for `tegrid --help`
    from web3 import Web3  # noqa: PLC0415

    from backend.chain.client import chain_time  # noqa: PLC0415
    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.chain.registry import MeterRegistry  # noqa: PLC0415
    from backend.iot.fleet import MarketTrades, MeterFleet  # noqa: PLC0415
    from backend.iot.meters import Deviations, MeterSimulator, dev_meters, load_meter_file  # noqa: PLC0415
    from backend.iot.signing import ReadingDomain  # noqa: PLC0415
    from backend.iot.transport import MqttTransport  # noqa: PLC0415

    market: MarketTrades | None = None
    try:
        dep = load_deployment(deployment or settings.deployment_file)
        specs = load_meter_file(meters_file) if meters_file is not None else dev_meters(count)
        domain = ReadingDomain(dep.chain_id, dep.address("MeterReadings"))
        interval_s = dep.interval_seconds
        w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
        registry = MeterRegistry(w3, dep.address("ParticipantRegistry"))
        if follow_market:
            market = MarketTrades(api_url or settings.api_url)
        transport = MqttTransport(broker_url or settings.broker_url)
        startup(
            "meters",
            [
                ("chain", settings.rpc_url),
                ("broker", redact(transport.url)),
                ("deployment", deployment_line(deployment or settings.deployment_file, dep)),
                (
                    "market",
                    f"trades from {market.url}"
                    if market is not None
                    else "not followed (--no-follow-market): households alone",
                ),
            ],
        )
        try:
            now = chain_time(w3)
        except OSError:
            fail(
                f"no chain answering at {settings.rpc_url}: start one with `tegrid chain start`", 1
            )
        if start_interval is None:
            start_interval = now // interval_s - (0 if follow else intervals)
        if register:
            _register_missing(w3, settings, registry, dep.address("ParticipantRegistry"), specs,
                              dev=meters_file is None)  # fmt: skip
        transport.connect()
    except (TegridError, ValueError, KeyError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
    sim = MeterSimulator(
        specs, domain, transport, interval_s,
        Deviations(under_delivery=under_delivery, missing=missing, late=late, seed=seed),
        clock=time.time,
    )  # fmt: skip
    out = Console(stderr=True) if json_out else console
    err = Console(stderr=True)

    def say(line: str) -> None:
        (err if line.startswith("warning:") else out).print(
            f"meters: {line}", highlight=False, soft_wrap=True
        )

    fleet = MeterFleet(
        sim, registry.owners, market.of_interval if market is not None else None, say,
        stated_buses=meters_file is not None,
    )  # fmt: skip
    totals = {"published": 0, "missing": 0, "late": 0}
    published_intervals: list[int] = []

    def publish(interval_id: int) -> None:
        report = fleet.publish(interval_id)
        say(report.line(under_delivery))
        totals["published"] += report.stats.published + report.stats.late_published
        totals["missing"] += report.stats.missing
        totals["late"] += report.stats.deferred
        published_intervals.append(interval_id)

    try:
        fleet.sync_registry()
        if announce:
            sim.announce_all()
        if follow:
            _follow(lambda: chain_time(w3), fleet, publish, start_interval, interval_s, poll, say)
        else:
            for interval_id in range(start_interval, start_interval + intervals):
                publish(interval_id)
    except (TegridError, OSError) as exc:  # the chain, the registry or the market API
        transport.close()
        fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, 1)
    finally:
        if market is not None:
            market.close()
    totals["published"] += sim.publish_remaining_late()
    flushed = transport.flush(60)
    transport.close()
    first, last = (
        (published_intervals[0], published_intervals[-1]) if published_intervals else (None, None)
    )
    summary = {
        "meters": len(specs), "intervals": [first, last],
        **totals, "broker": transport.url, "acknowledged_by_broker": flushed,
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        span = f"intervals {first}..{last}" if published_intervals else "no interval ended"
        console.print(
            f"{len(specs)} meters, {span}: "
            f"{totals['published']} readings published ({totals['missing']} missing, "
            f"{totals['late']} sent late) to {transport.url}",
            highlight=False,
            soft_wrap=True,
        )
    if not flushed:
        raise typer.Exit(1)


def _follow(
    clock: Callable[[], int],
    fleet: MeterFleet,
    publish: Callable[[int], None],
    next_interval: int,
    interval_s: int,
    poll_s: float,
    say: Callable[[str], None],
) -> None:
    """Publish each interval once chain time passes its end, until SIGINT/SIGTERM. A chain or
    market that does not answer is reported once and tried again on the next poll."""
    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    say(f"following chain time from interval {next_interval} (Ctrl-C stops)")
    trouble: str | None = None
    while not stop.is_set():
        try:
            now = clock()
            if (next_interval + 1) * interval_s <= now:
                fleet.sync_registry()
            while (next_interval + 1) * interval_s <= now and not stop.is_set():
                publish(next_interval)
                next_interval += 1
            trouble = None
        except (TegridError, OSError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            if text != trouble:
                say(f"warning: {text}; trying again every {poll_s:g} s")
                trouble = text
        stop.wait(poll_s)


def _register_missing(
    w3: Any, settings: Settings, registry: Any, address: str, specs: list[Any], dev: bool
) -> None:
    """Connect the meters the registry does not know, under their ``wallet``; dev meters go on
    the network's load buses as ``tegrid serve --dev`` places them (meter i on load bus i)."""
    # lazy: web3, eth-keys and paho-mqtt (~1 s), not for `tegrid --help`
    from backend.devtools.participants import register_participants  # noqa: PLC0415  # web3: not at start-up

    owners = registry.owners([spec.address for spec in specs])
    buses: list[int] = []
    if dev:
        # lazy: web3, eth-keys and paho-mqtt (~1 s), not for `tegrid --help`
        from grid.validator import GridValidator  # noqa: PLC0415  # pandapower: only when registering

        buses = GridValidator(settings.network).load_buses()
    todo = []
    for i, spec in enumerate(specs):
        if owners[spec.address].registered:
            continue
        if not spec.wallet:
            raise TegridError(f"meter {spec.address} has no wallet to register it under")
        if dev:
            bus = int(buses[i % len(buses)])
        elif isinstance(spec.bus, int) or str(spec.bus).isdigit():
            bus = int(spec.bus)
        else:
            raise TegridError(f"meter {spec.address}: bus {spec.bus!r} is not a bus index")
        todo.append((spec.wallet, spec.address, bus))
    if todo:
        register_participants(w3, address, settings.grid_operator_key, todo)
