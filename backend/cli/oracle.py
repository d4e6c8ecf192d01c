"""``tegrid oracle``: run the oracle daemon; ``tegrid oracle status``: what its queue holds."""

from __future__ import annotations

import json
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console
from rich.table import Table

from backend.chain.errors import ChainUnavailableError
from backend.cli.base import App
from backend.cli.output import deployment_line, fail, redact, settings_or_fail, startup
from backend.errors import TegridError

app = App(
    help="Oracle daemon: relays device-signed meter readings from MQTT to MeterReadings.",
    invoke_without_command=True,
)
console = Console()


@app.callback()
def run(
    ctx: typer.Context,
    rpc_url: str = typer.Option(
        None, metavar="URL", help="JSON-RPC endpoint (default TEGRID_RPC_URL)."
    ),
    broker_url: str = typer.Option(
        None, metavar="URL", help="MQTT broker, mqtt://host:port (default TEGRID_BROKER_URL)."
    ),
    database_url: str = typer.Option(
        None,
        metavar="URL",
        help="Queue database, sqlite:///path (default TEGRID_ORACLE_DATABASE_URL).",
    ),
    deployment: Path = typer.Option(
        None, metavar="FILE", help="Deployment file (default TEGRID_DEPLOYMENT_FILE)."
    ),
    batch_size: int = typer.Option(
        400, min=1, max=1000, metavar="N", help="Readings per transaction."
    ),
    client_id: str = typer.Option(
        "tegrid-oracle", metavar="ID", help="MQTT client id (persistent session)."
    ),
    log_level: str = typer.Option("INFO", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
    idle_sleep: float = typer.Option(
        0.02,
        min=0.001,
        max=60,
        metavar="SECONDS",
        help="Time between chain polls while nothing is due.",
    ),
) -> None:
    """Run the daemon (until SIGINT/SIGTERM). Subcommand ``status`` reads its queue instead."""
    if ctx.invoked_subcommand is not None:
        return
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_or_fail()
    # lazy: web3, sqlalchemy and paho-mqtt (~1 s), not for `tegrid --help`
    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.iot.transport import MqttTransport  # noqa: PLC0415
    from backend.market.factory import load_key  # noqa: PLC0415
    from backend.oracle.daemon import OracleConfig, OracleDaemon  # noqa: PLC0415
    from backend.oracle.store import OracleStore  # noqa: PLC0415
    from backend.oracle.web3_ledger import Web3Ledger  # noqa: PLC0415

    try:
        dep = load_deployment(deployment or settings.deployment_file)
        key = load_key(settings.oracle_key, settings.keystore_password)
        ledger = Web3Ledger(
            rpc_url or settings.rpc_url,
            key,
            dep,
            confirmations=settings.confirmations,
            head_file=settings.chain_head_file,
        )
        store = OracleStore(database_url or settings.oracle_database_url)
        transport = MqttTransport(
            broker_url or settings.broker_url, client_id, clean_session=False, manual_ack=True
        )
        config = OracleConfig(
            batch_size=batch_size,
            idle_sleep_s=idle_sleep,
            receipt_timeout_s=float(settings.receipt_timeout_seconds),
        )
        daemon = OracleDaemon(store, ledger, transport, config)
        startup(
            "oracle",
            [
                ("chain", f"{rpc_url or settings.rpc_url}, submitting as {ledger.account.address}"),
                ("broker", f"{redact(transport.url)} as client {client_id!r}"),
                ("database", redact(store.url)),
                ("deployment", deployment_line(deployment or settings.deployment_file, dep)),
            ],
        )
        transport.connect()
        try:
            if not ledger.holds_oracle_role():
                fail(
                    f"{ledger.account.address} (TEGRID_ORACLE_KEY) does not hold ORACLE_ROLE in "
                    f"the ParticipantRegistry {dep.address('ParticipantRegistry')}: MeterReadings "
                    "would refuse every batch; deploy with this TEGRID_ORACLE_KEY or have the "
                    "admin grant it the role",
                    1,
                )  # the broker connection ends with the process
        except ChainUnavailableError:
            pass  # the chain is down: the daemon waits for it (and the contract checks the role)
    except (TegridError, ValueError, KeyError) as exc:
        fail(str(exc))

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        daemon.stop(timeout_s=0.1)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        daemon.run()
    finally:
        transport.close()
        store.close()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command()
def status(
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    database_url: str = typer.Option(
        None,
        metavar="URL",
        help="Queue database, sqlite:///path (default TEGRID_ORACLE_DATABASE_URL).",
    ),
) -> None:
    """Queue depth, submitted, rejected by reason, last block."""
    # lazy: web3, sqlalchemy and paho-mqtt (~1 s), not for `tegrid --help`
    from backend.oracle.store import OracleStore  # noqa: PLC0415

    url = database_url or settings_or_fail().oracle_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        fail(f"no oracle queue at {url}: has `tegrid oracle` run here?", code=1)
    try:
        store = OracleStore(url, create=False)
        st = store.status()
    except TegridError as exc:
        fail(str(exc), code=1)
    except Exception as exc:  # not an oracle database, unreadable file
        fail(f"cannot read the oracle queue at {url}: {exc.__class__.__name__}", code=1)
    data = st.as_dict()
    data["database_url"] = url
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title="oracle queue", show_header=False)
    table.add_row(
        "queue depth", f"{st.queue_depth} ({st.pending} pending, {st.inflight} in flight)"
    )
    table.add_row("submitted", str(st.submitted))
    table.add_row("batches", str(st.batches))
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted(st.rejected_by_reason.items())) or "none"
    table.add_row("rejected", f"{sum(st.rejected_by_reason.values())} ({rejected})")
    table.add_row("last block", str(st.last_block) if st.last_block is not None else "-")
    table.add_row("last submission", _when(st.last_submit_at))
    table.add_row("intervals waiting", ", ".join(map(str, st.intervals_pending[:20])) or "-")
    console.print(table)
