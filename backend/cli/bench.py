"""``tegrid bench ...``: benchmarks printing measured figures (JSON) beside a same-run baseline."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from backend.cli.base import App
from backend.cli.output import fail
from backend.errors import TegridError

app = App(
    help="Benchmarks: each prints JSON with our figure and a baseline measured in the same run.",
    no_args_is_help=True,
)


def _emit(result: dict[str, object]) -> None:
    typer.echo(json.dumps(result, indent=2, sort_keys=False))


@app.command("api")
def api(
    json_out: bool = typer.Option(False, "--json", help="print JSON only"),
    orders: int = typer.Option(6000, help="orders in the timed run"),
    concurrency: int = typer.Option(32, help="client connections"),
) -> None:
    """Signed orders accepted per second through HTTP (one uvicorn worker), p50/p99 latency;
    baselines: one request at a time, and eth-account's generic EIP-712 recovery per order."""
    # lazy: bench.api loads the dev stack (web3, pandapower: seconds), not for `tegrid --help`
    from bench.api import run  # noqa: PLC0415

    result = run(orders=orders, concurrency=concurrency)
    if not json_out:
        typer.echo(
            f"{result['orders_per_s']} orders/s (p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms)"
        )
    _emit(result)


@app.command()
def oracle(
    json_out: bool = typer.Option(False, "--json", help="Print JSON (the only output format)."),
    readings: int = typer.Option(4000, min=1, max=200_000, help="Readings relayed in batches."),
    meters: int = typer.Option(500, min=1, max=20_000, help="Registered meters signing them."),
    single_readings: int = typer.Option(300, min=1, max=20_000, help="Readings sent one per tx."),
    batch_size: int = typer.Option(400, min=1, max=1000, help="Readings per submitReadings."),
) -> None:
    """Oracle relay: readings/s (publish -> receipt) and gas/reading, batched vs one tx each."""
    # lazy: bench.oracle loads web3, sqlalchemy and pandapower (seconds), not for `tegrid --help`
    from bench.oracle import run_oracle_bench  # noqa: PLC0415

    try:
        result = run_oracle_bench(readings, meters, single_readings, batch_size)
    except TegridError as exc:
        fail(str(exc), 1)
    _emit(result)


@app.command("control")
def control_bench(
    json_out: bool = typer.Option(False, "--json", help="Print JSON only (progress on stderr)."),
    devices: int = typer.Option(
        1000, min=1, max=20_000, help="Simulated devices, one control action each."
    ),
    rounds: int = typer.Option(
        1, min=1, max=20, help="Dispatch rounds against the same devices; the median is reported."
    ),
) -> None:
    """Control loop: signed actions published -> checked by the devices -> signed acks stored,
    actions/s and p50/p99; baseline: unsigned QoS-1 round trips through the same broker."""
    # lazy: bench.control loads web3, sqlalchemy and the dev stack (~2 s), not for `tegrid --help`
    from bench.control import run as run_control_bench  # noqa: PLC0415

    err = Console(stderr=True)
    try:
        with err.status("control bench") as status:
            result = run_control_bench(devices, lambda s: status.update(s), rounds)
    except TegridError as exc:
        fail(str(exc), 1)
    if not json_out:
        base = result["baseline_unsigned_qos1_round_trip"]
        typer.echo(
            f"{result['actions_per_s']} actions/s, p50 {result['p50_ms']} ms, p99 "
            f"{result['p99_ms']} ms (baseline {base['round_trips_per_s']} round trips/s, "
            f"p99 {base['p99_ms']} ms)"
        )
    _emit(result)


@app.command("chain")
def chain_bench(
    json_out: bool = typer.Option(False, "--json", help="Print JSON only."),
    batch: int = typer.Option(100, min=2, max=1000, help="Trades per recordTrades/settle batch."),
    intervals: int = typer.Option(5, min=2, max=50, help="Intervals run (the first is warm-up)."),
    naive_trades: int = typer.Option(
        10, min=1, max=200, help="Trades recorded+settled one per tx."
    ),
    deviation: float = typer.Option(
        0.05,
        min=0.0,
        max=1.0,
        help="Share of each position the meters read off it (every party settles an imbalance; "
        "0: none).",
    ),
) -> None:
    """Ledger gas: per trade (record + settle) and per reading in batches on a fresh Anvil;
    baseline: one trade recorded and settled per transaction on the same contracts; per
    flexibility activation (record + settle) in batches of the same size."""
    # lazy: bench.chain loads web3 (~1 s), not for `tegrid --help`
    from bench.chain import run as run_chain_bench  # noqa: PLC0415

    result = run_chain_bench(
        batch=batch, intervals=intervals, naive_trades=naive_trades, deviation=deviation
    )
    if not json_out:
        typer.echo(
            f"{result['gas_per_trade']} gas/trade in batches of {batch} "
            f"(naive {result['naive_gas_per_trade']}), {result['gas_per_reading']} gas/reading, "
            f"{result['flex_gas_per_activation']} gas/flexibility activation (recorded + settled)"
        )
    _emit(result)


@app.command("grid")
def grid_bench(
    trades: int = typer.Option(2000, "--trades", min=10, help="random trades per network"),
    as_json: bool = typer.Option(False, "--json", help="print JSON only (progress goes to stderr)"),
) -> None:
    """Neural Grid validator against a full pandapower runpp per trade, on five networks."""
    # lazy: bench.grid loads pandapower (~3 s), not for `tegrid --help`
    from bench.grid import CASES, run_benchmark  # noqa: PLC0415

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("naive runpp per trade", total=trades * len(CASES))
        result = run_benchmark(CASES, trades, on_trade=lambda: progress.advance(task))
    _emit(result)


@app.command("clearing")
def clearing_bench(
    as_json: bool = typer.Option(False, "--json", help="print JSON only (progress goes to stderr)"),
    intervals: int = typer.Option(
        16, min=1, max=40, help="15-minute intervals per network, from 11:00"
    ),
    scale_orders: int = typer.Option(
        2000, min=0, max=20_000, help="orders in the scale case (0: skip it)"
    ),
    networks: list[str] = typer.Option(
        [], "--network", help="only this network of the bench (repeatable; default: all)"
    ),
) -> None:
    """Optimal network-constrained clearing against the greedy merit order, the unconstrained
    auction and an AC-verified reference optimum, on congested midday books."""
    # lazy: bench.clearing loads pandapower and scipy (~3 s), not for `tegrid --help`
    from bench.clearing import CASES, run_benchmark  # noqa: PLC0415

    known = {case.network: case for case in CASES}
    unknown = [n for n in networks if n not in known]
    if unknown:
        fail(f"unknown network {unknown[0]!r}; the bench's networks: {', '.join(known)}")
    cases = [known[n] for n in networks] if networks else list(CASES)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("clearing midday intervals", total=intervals * len(cases))
        result = run_benchmark(
            cases, intervals, scale_orders, on_interval=lambda: progress.advance(task)
        )
    if not as_json:
        Console(width=150).print(_clearing_table(result))
    _emit(result)


FLEX_NETWORKS = ("kerber_vorstadt", "cigre_lv")  # bench.flex.NETWORKS (not imported: --help)


@app.command("flex")
def flex_bench(
    as_json: bool = typer.Option(False, "--json", help="print JSON only (progress goes to stderr)"),
    intervals: int = typer.Option(
        4, min=1, max=16, help="15-minute intervals per network, from 12:00"
    ),
    networks: list[str] = typer.Option(
        [], "--network", help="only this network of the bench (repeatable; default: all)"
    ),
) -> None:
    """Remedies in the clearing: share of the vetoed trades' gains recovered through flexibility
    offers at relieving and non-relieving buses, remedy search time per vetoed candidate beside a
    naive runpp search, false accepts under pandapower's runpp."""
    unknown = [n for n in networks if n not in FLEX_NETWORKS]
    if unknown:
        fail(f"unknown network {unknown[0]!r}; the bench's networks: {', '.join(FLEX_NETWORKS)}")
    # lazy: bench.flex loads pandapower and highspy (~3 s), not for `tegrid --help`
    from bench.flex import run_benchmark  # noqa: PLC0415

    chosen = list(networks) if networks else list(FLEX_NETWORKS)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("remedies in midday intervals", total=intervals * len(chosen))
        result = run_benchmark(chosen, intervals, on_interval=lambda: progress.advance(task))
    if not as_json:
        table = Table(title="remedies (tokens)")
        for column in ("network", "lost gain", "recovered", "share", "cost", "us/cand",
                       "naive us/cand", "speedup", "false accepts"):  # fmt: skip
            table.add_column(column, justify="left" if column == "network" else "right")
        for n in result["networks"]:
            t = n["total"]
            table.add_row(
                n["network"],
                *(str(t[k]) for k in ("vetoed_gain", "recovered_gain", "recovered_share",
                                      "remedy_cost", "remedy_us_per_candidate",
                                      "naive_us_per_candidate", "speedup", "false_accepts")),
            )  # fmt: skip
        Console(width=150).print(table)
    _emit(result)


def _clearing_table(result: dict[str, Any]) -> Table:
    table = Table(title="clearing welfare (tokens), all intervals")
    for column in (
        "network",
        "optimal",
        "greedy",
        "unconstrained",
        "reference",
        "opt/ref",
        "greedy/ref",
        "ms optimal: sum (max)",
        "ms greedy: sum (max)",
        "violations",
    ):
        table.add_column(column)  # fmt: skip
    for n in result["networks"]:
        t = n["total"]
        w = t["welfare"]
        table.add_row(
            n["network"],
            *(f"{w[k]:.3f}" for k in ("optimal", "greedy", "unconstrained", "reference")),
            str(t["optimal_over_reference"]),
            str(t["greedy_over_reference"]),
            f"{t['ms_total']['optimal']} ({t['ms_max']['optimal']})",
            f"{t['ms_total']['greedy']} ({t['ms_max']['greedy']})",
            str(t["runpp_violations"]),
        )
    scale = result.get("scale")
    if scale:
        table.caption = (
            f"{scale['orders']} orders ({scale['network']}): optimal {scale['ms']['optimal']} ms, "
            f"greedy {scale['ms']['greedy']} ms"
        )
    return table


@app.command("e2e")
def e2e(
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    network: str = typer.Option(
        "kerber_vorstadt", metavar="NETWORK", help="Grid of the community."
    ),
    prosumers: int = typer.Option(150, min=2, max=500, help="Members of the community."),
    intervals: int = typer.Option(96, min=2, max=960, help="15-minute intervals (96 = a day)."),
    naive_trades: int = typer.Option(
        300, min=1, max=5000, help="Trades timed through the naive pipeline."
    ),
    naive_warmup: int = typer.Option(
        20, min=0, max=1000, help="Naive trades run before the timing starts."
    ),
) -> None:
    """The whole pipeline (HTTP orders, clearing, Neural Grid, recording, readings, settlement)
    against the naive one (one runpp and one transaction per trade), in one run."""
    # lazy: bench.e2e and the grid package load pandapower (~3 s), not for `tegrid --help`
    from bench.e2e import run_e2e  # noqa: PLC0415
    from grid.errors import GridError  # noqa: PLC0415

    try:
        result = run_e2e(network, prosumers, intervals, naive_trades, naive_warmup)
    except (TegridError, GridError) as exc:  # e.g. an unknown network name
        fail(str(exc))
    if json_out:
        _emit(result)
    else:
        Console().print(result)
