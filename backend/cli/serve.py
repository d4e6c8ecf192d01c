"""``tegrid serve``: the market API (uvicorn, one worker), the interval scheduler and, once it
exists, the settlement keeper. ``--dev`` first starts or reuses a local Anvil, deploys if needed and
registers the ten Anvil accounts as funded participants; then ``POST /intervals/{id}/close`` clears
at once."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import typer

from backend.cli.output import deployment_line, fail, redact, startup
from backend.errors import TegridError
from backend.settings import Settings

SWITCH_INTERVAL_S = 0.0005


def _keeper_hook(settings: Settings) -> list[Any]:
    """Run the settlement keeper (backend/keeper) in a thread beside the API. It shares the market
    operator's chain client when the keys are the same, so their nonces never clash."""

    def run(market: Any) -> Any:
        # lazy: the chain client and the keeper load web3 (~0.5 s), not for `tegrid --help`
        from backend.chain.client import ChainClient  # noqa: PLC0415
        from backend.keeper import SettlementKeeper  # noqa: PLC0415
        from backend.market.factory import load_key  # noqa: PLC0415

        ledger = market.ledger
        key = load_key(settings.keeper_key, settings.keystore_password)
        operator = getattr(ledger, "operator", None)
        if operator is not None and operator.account.key.hex().removeprefix("0x") == key[2:]:
            client = operator
        else:
            client = ChainClient(settings.rpc_url, key)
        keeper = SettlementKeeper(client, ledger.deployment)
        threading.Thread(target=keeper.run, name="tegrid-keeper", daemon=True).start()
        return keeper.stop

    return [run]


def serve(
    dev: bool = typer.Option(
        False, "--dev", help="local Anvil, deploy, funded participants, instant interval closing"
    ),
    host: str = typer.Option(
        None, metavar="HOST", show_default=False, help="bind address (default TEGRID_API_HOST)"
    ),
    port: int = typer.Option(
        None, min=1, max=65535, metavar="PORT", help="port (default TEGRID_API_PORT)"
    ),
    gate_lead: int = typer.Option(
        60, metavar="SECONDS", help="gate closure, seconds before the interval starts"
    ),
    scheduler: bool = typer.Option(True, help="close intervals at gate closure automatically"),
    tick: float = typer.Option(2.0, metavar="SECONDS", help="scheduler period"),
    keeper: bool = typer.Option(
        True,
        help="run the settlement keeper (backend/keeper) in this process; --no-keeper where a "
        "separate `tegrid keeper` runs",
    ),
    participants: int = typer.Option(
        10, metavar="N", help="--dev: how many Anvil accounts to register"
    ),
    dev_stack: bool = typer.Option(
        True,
        help="--dev: start/reuse Anvil, deploy and register accounts; --no-dev-stack keeps only "
        "the dev API (instant interval closing) on the chain and deployment the settings name",
    ),
) -> None:
    """Serve the market API (OpenAPI at /docs)."""
    # lazy: uvicorn, the API, the market and web3 (~1.5 s), not for `tegrid --help`
    import uvicorn  # noqa: PLC0415

    from backend.api.app import create_app  # noqa: PLC0415
    from backend.market.events import EventBus  # noqa: PLC0415
    from backend.market.factory import build_market  # noqa: PLC0415
    from backend.market.service import MarketConfig  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stack = None
    try:
        settings = Settings.from_env()
        # The network first, before any chain is started: an unknown name or an element the
        # validator does not model ends here in one line, not inside uvicorn's startup (or at
        # the first clearing, in the grid worker process).
        # lazy: pandapower (~3 s), not for `tegrid --help`
        from grid import GridError, load_network, refuse_unmodeled  # noqa: PLC0415

        try:
            refuse_unmodeled(load_network(settings.network), settings.network)
        except GridError as exc:
            fail(str(exc))
        if dev and dev_stack:
            # lazy: the dev stack (Anvil, deployment, pandapower for buses), only for --dev
            from backend.devtools.devstack import start_dev_stack  # noqa: PLC0415

            stack = start_dev_stack(settings, participants=participants)
            startup(
                "serve",
                [
                    (
                        "dev stack",
                        f"{len(stack.participants)} Anvil accounts registered as participants "
                        f"on load buses of {settings.network}, deposits funded",
                    )
                ],
            )
        # lazy: uvicorn, the API, the market and web3 (~1.5 s), not for `tegrid --help`
        from backend.chain.contracts import load_deployment  # noqa: PLC0415

        # Fail here with one line, not inside uvicorn's startup with a traceback.
        deployment = load_deployment(settings.deployment_file)

        def factory(cfg: Settings, bus: EventBus) -> Any:
            return build_market(
                cfg,
                bus,
                config=MarketConfig(
                    interval_seconds=deployment.interval_seconds, gate_lead_seconds=gate_lead
                ),
            )

        bind_host, bind_port = host or settings.api_host, port or settings.api_port
        startup(
            "serve",
            [
                ("chain", settings.rpc_url),
                ("deployment", deployment_line(settings.deployment_file, deployment)),
                ("database", redact(settings.database_url)),
                ("broker", f"{redact(settings.broker_url)} (reported by /health)"),
                ("api", f"http://{bind_host}:{bind_port} (OpenAPI at /docs)"),
                (
                    "keeper",
                    "in this process" if keeper else "off (--no-keeper): run `tegrid keeper`",
                ),
            ],
        )
        background = _keeper_hook(settings) if keeper else []
        if stack is not None:
            # Stop the Anvil we started in the app's shutdown: uvicorn re-raises SIGTERM after its
            # graceful exit, so the ``finally`` below only covers failures before serving.
            started = stack
            background.append(lambda _market: started.stop)
        app = create_app(
            settings=settings,
            dev=dev,
            scheduler=scheduler,
            tick_seconds=tick,
            market_factory=factory,
            background=background,
        )
        # The clearing and the recorder are threads of this process: with Python's default
        # 5 ms switch interval, every I/O wait of the order intake's event loop costs it up to
        # 5 ms to get the interpreter lock back from them (the convoy effect).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        uvicorn.run(
            app,
            host=bind_host,
            port=bind_port,
            log_level="info",
            access_log=False,
        )
    except TegridError as exc:
        fail(str(exc))
    finally:
        if stack is not None:
            stack.stop()
