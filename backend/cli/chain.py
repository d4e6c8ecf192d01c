"""``tegrid chain ...``: start a local chain, deploy the contracts."""

from __future__ import annotations

from urllib.parse import urlparse

import typer

from backend.cli.base import App
from backend.cli.output import fail

app = App(help="Local chain and contract deployment.", no_args_is_help=True)


@app.command()
def start(
    detach: bool = typer.Option(False, "--detach", help="Leave Anvil running in the background."),
) -> None:
    """Start Anvil (node_modules) on TEGRID_RPC_URL's port, state kept in TEGRID_CHAIN_STATE_FILE
    (--state, dumped every second), or reuse a chain already answering there."""
    from backend.devtools.anvil import is_up, start_anvil
    from backend.errors import TegridError
    from backend.settings import Settings

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
    from backend.chain.deploy import deploy_from_settings
    from backend.errors import TegridError
    from backend.settings import Settings

    try:
        settings = Settings.from_env()
        deployment = deploy_from_settings(settings, settlement_delay_seconds=settlement_delay)
    except TegridError as exc:
        fail(str(exc))
    typer.echo(deployment.to_json())
    typer.echo(f"written to {settings.deployment_file}", err=True)
