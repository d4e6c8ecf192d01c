"""``tegrid dispatcher``: sign and publish control actions for activations, collect the devices'
acks durably; ``tegrid dispatcher status``: what the store holds."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console
from rich.table import Table

from backend.cli.base import App
from backend.cli.output import deployment_line, fail, redact, settings_or_fail, startup
from backend.errors import TegridError

app = App(
    help="Dispatcher: signed control actions to devices over MQTT, their acks in a durable store.",
    invoke_without_command=True,
)
console = Console()


@app.callback()
def run(
    ctx: typer.Context,
    broker_url: str = typer.Option(
        None, metavar="URL", help="MQTT broker, mqtt://host:port (default TEGRID_BROKER_URL)."
    ),
    database_url: str = typer.Option(
        None, metavar="URL", help="Control store (default TEGRID_CONTROL_DATABASE_URL)."
    ),
    market_database_url: str = typer.Option(
        None,
        metavar="URL",
        help="The market's store, where the clearing records activations (default "
        "TEGRID_DATABASE_URL).",
    ),
    deployment: Path = typer.Option(
        None, metavar="FILE", help="Deployment file (default TEGRID_DEPLOYMENT_FILE)."
    ),
    client_id: str = typer.Option(
        "tegrid-dispatcher", metavar="ID", help="MQTT client id (persistent session for acks)."
    ),
    retry: float = typer.Option(
        None,
        min=0.05,
        max=3600,
        metavar="SECONDS",
        help="Publish an unacknowledged action again after this long "
        "(default TEGRID_CONTROL_RETRY_SECONDS).",
    ),
    ahead: int = typer.Option(
        2, min=0, max=96, metavar="N", help="Dispatch activations up to N intervals ahead."
    ),
    tick: float = typer.Option(
        0.2, min=0.01, max=60, metavar="SECONDS", help="Time between dispatch steps."
    ),
    log_level: str = typer.Option("INFO", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run the dispatcher (until SIGINT/SIGTERM). Subcommand ``status`` reads its store."""
    if ctx.invoked_subcommand is not None:
        return
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_or_fail()
    # lazy: web3, sqlalchemy and paho-mqtt (~1 s), not for `tegrid --help`
    from web3 import Web3  # noqa: PLC0415

    from backend.chain.client import chain_time  # noqa: PLC0415
    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.chain.registry import DeviceRegistry, GridModeLog  # noqa: PLC0415
    from backend.cli.activations import MarketActivations  # noqa: PLC0415
    from backend.iot.control import registry_domain  # noqa: PLC0415
    from backend.iot.control_store import ControlStore  # noqa: PLC0415
    from backend.iot.dispatcher import Dispatcher  # noqa: PLC0415
    from backend.iot.modes import RegistryModes, battery_reports  # noqa: PLC0415
    from backend.iot.transport import MqttTransport  # noqa: PLC0415
    from backend.market.factory import load_key  # noqa: PLC0415
    from backend.market.store import Store as MarketStore  # noqa: PLC0415

    err = Console(stderr=True)

    def say(line: str) -> None:
        err.print(f"dispatcher: {line}", highlight=False, soft_wrap=True)

    try:
        dep = load_deployment(deployment or settings.deployment_file)
        key = load_key(settings.grid_operator_key, settings.keystore_password)
        w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
        registry_address = dep.address("ParticipantRegistry")
        store = ControlStore(database_url or settings.control_database_url)
        transport = MqttTransport(
            broker_url or settings.broker_url, client_id, clean_session=False, manual_ack=True
        )
        market_store = MarketStore(market_database_url or settings.database_url)
        source = MarketActivations(market_store, dep.interval_seconds)
        dispatcher = Dispatcher(
            store, source, transport,
            registry_domain(dep.chain_id, registry_address), key, dep.interval_seconds,
            lambda: chain_time(w3), retry if retry is not None else settings.control_retry_seconds,
            ahead, say,
            modes=RegistryModes(
                GridModeLog(w3, registry_address), dep.interval_seconds, from_block=dep.block
            ),
            soc_check=battery_reports(DeviceRegistry(w3, registry_address)),
        )  # fmt: skip
        startup(
            "dispatcher",
            [
                ("chain", f"{settings.rpc_url}, signing as {dispatcher.signer}"),
                ("broker", f"{redact(transport.url)} as client {client_id!r}"),
                ("database", redact(store.url)),
                ("activations from", redact(market_store.url)),
                ("deployment", deployment_line(deployment or settings.deployment_file, dep)),
            ],
        )
        try:
            holds = DeviceRegistry(w3, registry_address).is_grid_operator(dispatcher.signer)
        except OSError:
            fail(
                f"no chain answering at {settings.rpc_url}: start one with `tegrid chain start`", 1
            )
        if not holds:
            fail(
                f"{dispatcher.signer} (TEGRID_GRID_OPERATOR_KEY) does not hold GRID_OPERATOR_ROLE "
                f"in the ParticipantRegistry {registry_address}: every device would refuse its "
                "actions",
                1,
            )
        dispatcher.start()  # handlers first: acks queued in the session arrive right on connect
        transport.connect()
    except (TegridError, ValueError, KeyError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)

    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    store.set_meta("started_at")
    trouble: str | None = None
    while not stop.is_set():
        try:
            report = dispatcher.step()
            if report.sent or report.expired:
                say(f"{report.sent} actions sent, {report.resent} sent again, "
                    f"{report.expired} expired")  # fmt: skip
            trouble = None
        except (TegridError, OSError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            if text != trouble:
                say(f"warning: {text}; trying again every {tick:g} s")
                trouble = text
        stop.wait(tick)
    dispatcher.stop()
    transport.close()
    store.close()


@app.command()
def status(
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    database_url: str = typer.Option(
        None, metavar="URL", help="Control store (default TEGRID_CONTROL_DATABASE_URL)."
    ),
) -> None:
    """Control actions by state."""
    # lazy: sqlalchemy (~0.3 s), not for `tegrid --help`
    from backend.iot.control_store import ControlStore  # noqa: PLC0415

    url = database_url or settings_or_fail().control_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        fail(f"no control store at {url}: has `tegrid dispatcher` run here?", code=1)
    try:
        counts = ControlStore(url).counts()
    except TegridError as exc:
        fail(str(exc), code=1)
    if json_out:
        typer.echo(json.dumps({"database_url": url, **counts}, indent=2))
        return
    table = Table(title="control actions", show_header=False)
    for state, n in counts.items():
        table.add_row(state, str(n))
    console.print(table)
