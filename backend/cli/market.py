"""``tegrid market ...``: trade through a running ``tegrid serve`` from the command line - sign and
submit an order with a wallet key, close an interval (dev API), list an interval's trades and
their settlement.

Orders are signed here, with the key given, for the deployment in ``TEGRID_DEPLOYMENT_FILE`` (the
EnergyMarket and chain the user knows); the API checks that domain against its own and refuses
the order (``WRONG_DOMAIN``) when it serves another market.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from backend.cli.base import App
from backend.cli.output import console, fail, settings_or_fail
from backend.errors import TegridError
from backend.settings import Settings

if TYPE_CHECKING:  # httpx costs ~80 ms to import: by the commands, not at start-up (--help)
    import httpx

app = App(
    help="Trade through the market API: orders signed with a wallet key, interval closing, "
    "trades and their settlement.",
    no_args_is_help=True,
)

SIDES = {"sell": 0, "buy": 1}
API_URL_HELP = "Market API (default http://TEGRID_API_HOST:TEGRID_API_PORT)."


class _Api:
    """The market API over HTTP; any failure ends the command in one line (exit 1)."""

    def __init__(self, url: str | None, settings: Settings) -> None:
        # lazy: httpx (~0.2 s), not for `tegrid --help`
        import httpx  # noqa: PLC0415

        self.url = (url or settings.api_url).rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=120.0)

    def call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        # lazy: httpx (~0.2 s), not for `tegrid --help`
        import httpx  # noqa: PLC0415

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(
                f"{what}: no market API answering at {self.url} ({exc.__class__.__name__}): "
                "is `tegrid serve` running there?",
                1,
            )
        if response.status_code >= 400:
            fail(f"{what}: {_problem(response)}", 1)
        try:
            return response.json()
        except ValueError:
            fail(f"{what}: the answer of {self.url}{path} is not JSON", 1)


def _problem(response: httpx.Response) -> str:
    """``CODE: message`` of an API refusal (``{"detail": {"code", "message"}}``)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict) and "code" in detail:
        return f"{detail['code']}: {detail.get('message', '')} (HTTP {response.status_code})"
    return f"HTTP {response.status_code} {response.text[:200]}"


def _next_open(api: _Api) -> int:
    return int(api.call("GET", "/intervals/next-open", "cannot find the next open interval")["id"])


@app.command("next-interval")
def next_interval(api_url: str = typer.Option(None, metavar="URL", help=API_URL_HELP)) -> None:
    """Print the first interval that still takes orders (its gate closure is ahead)."""
    typer.echo(_next_open(_Api(api_url, settings_or_fail())))


@app.command()
def order(
    key: str = typer.Option(
        ...,
        envvar="TEGRID_TRADER_KEY",
        metavar="KEY",
        help="The trader's wallet: 0x + 64 hex digits, or a keystore file "
        "(TEGRID_KEYSTORE_PASSWORD); also read from TEGRID_TRADER_KEY.",
    ),
    side: str = typer.Option(..., metavar="sell|buy", help="Sell or buy."),
    energy_wh: int = typer.Option(..., min=1, max=2**63 - 1, metavar="WH", help="Energy in Wh."),
    price: int = typer.Option(
        ...,
        min=0,
        max=2**128 - 1,
        metavar="BASE_UNITS_PER_KWH",
        help="Limit price in token base units per kWh (100000 = 0.1 token).",
    ),
    interval: int = typer.Option(
        None,
        min=0,
        max=2**63 - 1,
        metavar="INTERVAL",
        help="Delivery interval (default: the next one that takes orders).",
    ),
    nonce: int = typer.Option(
        None, min=0, max=2**64 - 1, metavar="N", help="Order nonce (default: a random one)."
    ),
    counterparty: str = typer.Option(
        None, metavar="ADDRESS", help="Trade only with this wallet (a bilateral order)."
    ),
    api_url: str = typer.Option(None, metavar="URL", help=API_URL_HELP),
    deployment: Path = typer.Option(
        None, metavar="FILE", help="Deployment file (default TEGRID_DEPLOYMENT_FILE)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the accepted order as JSON."),
) -> None:
    """Sign an EIP-712 order with KEY and submit it; it is valid until its interval ends."""
    if side not in SIDES:
        fail(f"--side must be sell or buy, got {side!r}")
    settings = settings_or_fail()
    # lazy: eth-utils, eth-account and web3 (~0.5 s), not for `tegrid --help`
    from eth_utils import is_address, to_checksum_address  # noqa: PLC0415

    from backend.chain import eip712  # noqa: PLC0415
    from backend.chain.contracts import load_deployment  # noqa: PLC0415
    from backend.market.factory import load_key  # noqa: PLC0415

    if counterparty is not None and not is_address(counterparty):
        fail(f"--counterparty must be a 0x address, got {counterparty!r}")
    try:
        private_key = load_key(key, settings.keystore_password)
        trader = eip712.address_of(private_key)
        dep = load_deployment(deployment or settings.deployment_file)
        market_address = dep.address("EnergyMarket")
    except (TegridError, ValueError) as exc:
        fail(str(exc))
    api = _Api(api_url, settings)
    if interval is None:
        interval = _next_open(api)
    message = {
        "trader": trader,
        "side": SIDES[side],
        "intervalId": interval,
        "energyWh": energy_wh,
        "pricePerKWh": price,
        "nonce": secrets.randbelow(2**63) if nonce is None else nonce,
        "expiry": (interval + 1) * dep.interval_seconds,
        "counterparty": to_checksum_address(counterparty) if counterparty else eip712.ZERO_ADDRESS,
    }
    typed = eip712.order_typed_data(dep.chain_id, market_address, message)
    signature = eip712.sign_typed_data(private_key, typed)
    body = {
        "message": typed["message"],
        "signature": "0x" + signature.hex(),
        "domain": typed["domain"],
    }
    out = api.call("POST", "/orders", f"the market refused the {side} order", json=body)
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    console.print(
        f"order {out['hash']} {out['status']}: {side} {energy_wh} Wh at {price} per kWh in "
        f"interval {interval} (trader {trader}, nonce {message['nonce']})",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def close(
    interval: int = typer.Option(
        ..., "--interval", min=0, max=2**63 - 1, metavar="INTERVAL", help="The interval."
    ),
    api_url: str = typer.Option(None, metavar="URL", help=API_URL_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the interval as JSON."),
) -> None:
    """Close the interval now: clear it, validate it on the Neural Grid and record its batch on
    chain (a `tegrid serve --dev` API; otherwise only once its gate closure has passed)."""
    api = _Api(api_url, settings_or_fail())
    out = api.call("POST", f"/intervals/{interval}/close", f"cannot close interval {interval}")
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    price, approved = out.get("clearingPrice"), int(out["approvedCount"])
    console.print(
        f"interval {interval} {out['status']}: {approved} trade{'' if approved == 1 else 's'} "
        "approved "
        f"({out['tradedWh']} Wh"
        + (f" at clearing price {price} per kWh" if price is not None else "")
        + f"), {out['vetoedCount']} vetoed",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def trades(
    interval: int = typer.Option(
        ..., "--interval", min=0, max=2**63 - 1, metavar="INTERVAL", help="The interval."
    ),
    wait: float = typer.Option(
        0,
        min=0,
        max=86_400,
        metavar="SECONDS",
        help="Wait up to this long until every approved trade of the interval is settled.",
    ),
    api_url: str = typer.Option(None, metavar="URL", help=API_URL_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the trades as JSON."),
) -> None:
    """The interval's trades: parties, energy, price, verdict, and once settled the delivered
    energy, the payment to the seller and the refund to the buyer."""
    # lazy: the chain layer loads eth-utils (~0.2 s), not for `tegrid --help`
    from backend.chain.protocol import escrow_of  # noqa: PLC0415

    api = _Api(api_url, settings_or_fail())
    what = f"cannot list the trades of interval {interval}"
    rows = api.call("GET", "/trades", what, params={"interval": interval})
    if wait > 0:
        deadline = time.monotonic() + wait
        with Console(stderr=True).status(f"waiting for interval {interval} to settle"):
            while not _all_settled(rows) and time.monotonic() < deadline:
                time.sleep(0.5)
                rows = api.call("GET", "/trades", what, params={"interval": interval})
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        console.print(
            f"interval {interval}: {len(rows)} trade{'' if len(rows) == 1 else 's'}",
            highlight=False,
        )
        for t in rows:
            energy, unit_price = int(t["energyWh"]), int(t["pricePerKWh"])
            line = (
                f"{t['seller']} (bus {t['sellerBus']}) sells {energy} Wh to {t['buyer']} "
                f"(bus {t['buyerBus']}) at {unit_price} per kWh: "
            )
            if not t["approved"]:
                line += f"vetoed ({t['reason']})"
            elif t["status"] == "settled":
                paid = int(t["paid"])
                line += (
                    f"settled, delivered {t['deliveredWh']} Wh, paid {paid}, refunded "
                    f"{escrow_of(energy, unit_price) - paid}"
                )
            else:
                line += f"{t['status']}, escrow {escrow_of(energy, unit_price)}"
            console.print(line, highlight=False, soft_wrap=True)
    if wait > 0 and not _all_settled(rows):
        fail(f"interval {interval} not settled after {wait:g} s", 1)


def _all_settled(rows: list[dict[str, Any]]) -> bool:
    approved = [t for t in rows if t["approved"]]
    return bool(approved) and all(t["status"] == "settled" for t in approved)
