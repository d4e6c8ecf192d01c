"""``tegrid chain ...``: start a local chain, deploy the contracts, move a dev chain's clock."""

from __future__ import annotations

import signal
from urllib.parse import urlparse

import typer

from backend.chain.errors import DeploymentNotFoundError
from backend.cli.base import App
from backend.cli.output import fail
from backend.errors import TegridError
from backend.settings import Settings

app = App(help="Local chain and contract deployment.", no_args_is_help=True)


@app.command()
def start(
    detach: bool = typer.Option(False, "--detach", help="Leave Anvil running in the background."),
) -> None:
    """Start Anvil (node_modules) on TEGRID_RPC_URL's port, state kept in TEGRID_CHAIN_STATE_FILE
    (--state, dumped every second), or reuse a chain already answering there."""
    # lazy: backend.devtools.anvil loads web3 (~0.5 s), not for `tegrid --help`
    from backend.devtools.anvil import is_up, start_anvil  # noqa: PLC0415

    try:
        settings = Settings.from_env()
        if is_up(settings.rpc_url):
            typer.echo(f"chain already running at {settings.rpc_url}")
            typer.echo(settings.rpc_url)
            return
        port = urlparse(settings.rpc_url).port or 8545
        log = settings.chain_state_file.with_name("anvil.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        anvil = start_anvil(port, state_file=settings.chain_state_file, log_file=log)
    except TegridError as exc:
        fail(str(exc))
    typer.echo(anvil.url)
    if anvil.process is None:
        return
    if detach:
        pid_file = settings.chain_state_file.with_name("anvil.pid")
        pid_file.write_text(f"{anvil.process.pid}\n")
        typer.echo(f"anvil pid {anvil.process.pid} (stop with: kill $(cat {pid_file}))")
        return
    typer.echo(f"state file {settings.chain_state_file}; Ctrl-C stops (state is dumped on exit)")
    # Anvil runs in a session of its own: stop it on SIGTERM as on Ctrl-C (and on Ctrl-C even
    # when a shell started this in the background with SIGINT ignored), never leave it orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        anvil.process.wait()
    except KeyboardInterrupt:
        anvil.stop()


@app.command()
def deploy(
    settlement_delay: int = typer.Option(
        3600,
        min=0,
        metavar="SECONDS",
        help="Time after an interval's end until missing readings count as zero.",
    ),
) -> None:
    """Deploy token, registry, readings and market to TEGRID_RPC_URL, grant the roles to the
    TEGRID_*_KEY addresses and write TEGRID_DEPLOYMENT_FILE."""
    # lazy: backend.chain.deploy loads web3 (~0.5 s), not for `tegrid --help`
    from backend.chain.deploy import deploy_from_settings  # noqa: PLC0415

    try:
        settings = Settings.from_env()
        deployment = deploy_from_settings(settings, settlement_delay_seconds=settlement_delay)
    except TegridError as exc:
        fail(str(exc))
    typer.echo(deployment.to_json())
    typer.echo(f"written to {settings.deployment_file}", err=True)


@app.command()
def advance(
    to_interval: int = typer.Option(
        None,
        "--to-interval",
        min=0,
        metavar="INTERVAL",
        help="Move chain time to the start of this interval (every interval before it has ended).",
    ),
    seconds: int = typer.Option(
        None, "--seconds", min=1, metavar="SECONDS", help="Move chain time forward by this much."
    ),
    interval_seconds: int = typer.Option(
        None,
        min=1,
        metavar="SECONDS",
        help="Interval length for --to-interval (default: the deployment's, else "
        "TEGRID_INTERVAL_SECONDS).",
    ),
) -> None:
    """Dev chains only (Anvil, Ganache): mine one block later in time at TEGRID_RPC_URL, so that
    intervals end and can settle without waiting in real time. Interval N starts at
    N * interval_seconds (unix time); the chain's clock only moves forward."""
    if (to_interval is None) == (seconds is None):
        fail("give exactly one of --to-interval N or --seconds S")
    # lazy: web3 (~0.5 s), not for `tegrid --help`
    from web3 import Web3  # noqa: PLC0415

    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.devtools.anvil import is_up  # noqa: PLC0415
    from backend.devtools.clock import advance_to, chain_now  # noqa: PLC0415

    try:
        settings = Settings.from_env()
        if interval_seconds is None:
            try:
                interval_seconds = load_deployment(settings.deployment_file).interval_seconds
            except DeploymentNotFoundError:
                interval_seconds = settings.interval_seconds
        if not is_up(settings.rpc_url, timeout_s=5.0):
            fail(
                f"no chain answering at {settings.rpc_url}: start one with `tegrid chain start`", 1
            )
        w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 30}))
        now = chain_now(w3)
        if to_interval is not None:
            target = to_interval * interval_seconds
            if target < now:
                fail(
                    f"interval {to_interval} started at {target}, before the chain's time {now} "
                    f"(interval {now // interval_seconds}): the clock only moves forward"
                )
        else:
            target = now + seconds
        reached = advance_to(w3, target)
    except TegridError as exc:
        fail(str(exc), 1)
    typer.echo(
        f"chain time {reached} (interval {reached // interval_seconds} of {interval_seconds} s), "
        f"moved {reached - now} s at {settings.rpc_url}"
    )
