"""``tegrid meters ...``: simulated smart meters publishing device-signed readings over MQTT."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from backend.cli.base import App
from backend.cli.output import deployment_line, fail, redact, startup
from backend.errors import TegridError
from backend.settings import Settings

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
        1, min=1, max=10_000, metavar="N", help="How many intervals to report."
    ),
    start_interval: int = typer.Option(
        None,
        min=0,
        metavar="INTERVAL",
        help="First interval (default: the last --intervals ended ones, chain time).",
    ),
    under_delivery: float = typer.Option(
        0.0, metavar="SHARE", help="Share of sold export not delivered (0-1)."
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
    """Publish signed readings of N meters for ended intervals (tegrid/meters/<addr>/readings)."""
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

    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.iot.meters import (  # noqa: PLC0415
        Deviations,
        MeterSimulator,
        dev_meters,
        load_meter_file,
    )
    from backend.iot.signing import ReadingDomain  # noqa: PLC0415
    from backend.iot.transport import MqttTransport  # noqa: PLC0415

    try:
        uses_chain = start_interval is None or register
        dep = load_deployment(deployment or settings.deployment_file)
        specs = load_meter_file(meters_file) if meters_file is not None else dev_meters(count)
        domain = ReadingDomain(dep.chain_id, dep.address("MeterReadings"))
        interval_s = dep.interval_seconds
        if start_interval is None or register:
            w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
            if start_interval is None:
                now = int(w3.eth.get_block("pending")["timestamp"])
                start_interval = now // interval_s - intervals
            if register:
                _register_missing(w3, settings, dep.address("ParticipantRegistry"), specs)
        transport = MqttTransport(broker_url or settings.broker_url)
        startup(
            "meters",
            [
                ("chain", settings.rpc_url if uses_chain else "not used (--start-interval given)"),
                ("broker", redact(transport.url)),
                ("deployment", deployment_line(deployment or settings.deployment_file, dep)),
            ],
        )
        transport.connect()
    except (TegridError, ValueError, KeyError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
    sim = MeterSimulator(
        specs, domain, transport, interval_s,
        Deviations(under_delivery=under_delivery, missing=missing, late=late, seed=seed),
        clock=time.time,
    )  # fmt: skip
    totals = {"published": 0, "missing": 0, "late": 0}
    if announce:
        sim.announce_all()
    for interval_id in range(start_interval, start_interval + intervals):
        stats = sim.publish_interval(interval_id)
        totals["published"] += stats.published + stats.late_published
        totals["missing"] += stats.missing
        totals["late"] += stats.deferred
    totals["published"] += sim.publish_remaining_late()
    flushed = transport.flush(60)
    transport.close()
    summary = {
        "meters": len(specs), "intervals": [start_interval, start_interval + intervals - 1],
        **totals, "broker": transport.url, "acknowledged_by_broker": flushed,
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(
            f"{len(specs)} meters, intervals {start_interval}..{start_interval + intervals - 1}: "
            f"{totals['published']} readings published ({totals['missing']} missing, "
            f"{totals['late']} sent late) to {transport.url}",
            highlight=False,
        )
    if not flushed:
        raise typer.Exit(1)


def _register_missing(w3: object, settings: Settings, registry: str, specs: list[Any]) -> None:
    # lazy: web3 and the dev stack's participants (pandapower, ~3 s), not for `tegrid --help`
    from web3 import Web3  # noqa: PLC0415

    from backend.chain.contracts import contract_at  # noqa: PLC0415
    from backend.devtools.participants import register_participants  # noqa: PLC0415

    assert isinstance(w3, Web3)
    reg = contract_at(w3, "ParticipantRegistry", registry)
    todo = []
    for spec in specs:
        wallet, _index, _active = reg.functions.meterRecordOf(spec.address).call()
        if int(wallet, 16) == 0:
            if not spec.wallet:
                raise TegridError(f"meter {spec.address} has no wallet to register it under")
            todo.append(
                (spec.wallet, spec.address, int(spec.bus) if str(spec.bus).isdigit() else 0)
            )
    if todo:
        register_participants(w3, registry, settings.grid_operator_key, todo)
