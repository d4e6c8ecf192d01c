"""``tegrid keeper``: settle intervals as soon as their readings are in, or at the deadline."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from types import FrameType

import typer

from backend.chain.errors import DeploymentNotFoundError
from backend.cli.base import App
from backend.cli.output import deployment_line, fail, startup
from backend.errors import TegridError
from backend.settings import Settings

app = App(help="Settlement keeper.", invoke_without_command=True)


@app.callback()
def run(
    once: bool = typer.Option(
        False, "--once", help="One round (scan + settle what is due), then exit."
    ),
    poll_seconds: float = typer.Option(
        1.0, min=0.05, max=3600, metavar="SECONDS", help="Time between rounds."
    ),
    from_block: int = typer.Option(
        None,
        min=0,
        metavar="BLOCK",
        help="Scan events from this block (default: deployment block).",
    ),
    rpc_url: str = typer.Option(
        None, metavar="URL", help="JSON-RPC endpoint (default TEGRID_RPC_URL)."
    ),
    deployment: Path = typer.Option(
        None, metavar="FILE", help="Deployment file (default TEGRID_DEPLOYMENT_FILE)."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="With --once: print settled intervals and activation batches as JSON."
    ),
) -> None:
    """Find intervals with recorded trades (market events) and call EnergyMarket.settle when due."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # lazy: the chain client and the keeper load web3 (~0.5 s), not for `tegrid --help`
    from backend.chain.client import ChainClient  # noqa: PLC0415
    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.keeper import SettlementKeeper  # noqa: PLC0415
    from backend.market.factory import load_key  # noqa: PLC0415

    try:
        settings = Settings.from_env()
        dep = load_deployment(deployment or settings.deployment_file)
        key = load_key(settings.keeper_key, settings.keystore_password)
        client = ChainClient(
            rpc_url or settings.rpc_url,
            key,
            receipt_timeout_s=settings.receipt_timeout_seconds,
            confirmations=settings.confirmations,
        )
        keeper = SettlementKeeper(
            client,
            dep,
            from_block=from_block,
            poll_s=poll_seconds,
            head_file=settings.chain_head_file,
        )
        first_block = dep.block if from_block is None else from_block
        startup(
            "keeper",
            [
                ("chain", f"{rpc_url or settings.rpc_url}, settling as {client.address}"),
                ("deployment", deployment_line(deployment or settings.deployment_file, dep)),
                ("events", f"from block {first_block}, a round every {poll_seconds:g} s"),
            ],
        )
        if once:
            acts = keeper.activations
            settled_before, reclaimed_before = len(acts.settled), len(acts.reclaimed)
            settled = keeper.run_once()
            # the activation batches (interval, batch index) this round closed
            batches = {
                "settled": [list(b) for b in acts.settled[settled_before:]],
                "reclaimed": [list(b) for b in acts.reclaimed[reclaimed_before:]],
            }
            if json_out:
                typer.echo(json.dumps({"settled": settled, "activationBatches": batches}))
            else:
                typer.echo(f"settled intervals: {settled or 'none'}")
                typer.echo(
                    f"activation batches settled: {batches['settled'] or 'none'}, "
                    f"reclaimed: {batches['reclaimed'] or 'none'}"
                )
            return
    except (TegridError, ValueError, KeyError, OSError) as exc:
        fail(
            str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__,
            code=2 if isinstance(exc, ValueError | DeploymentNotFoundError) else 1,
        )

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        keeper.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    keeper.run()
