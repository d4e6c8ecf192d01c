"""The README's "five terminals" walkthrough, run exactly as written: the command blocks after the
``<!-- five-terminals:... -->`` markers are read from README.md and run through bash - the
daemons (chain, serve, oracle, meters) as processes of their own, the user's block as a script -
on free ports (a Mosquitto of the test's own, every state file in a temporary folder). Then the
outcome is checked on chain to the Wh and the base unit: the trade recorded, the readings with
the traded energy, the seller paid the trade in full (trades settle firm), each party's imbalance
(its metered net position, household included, against the trade) settled with the balancing
account at 1.5x / 0.5x the clearing price, and with ``--under-delivery 0.5`` the seller's 500 Wh
short on top. What the README shows the user is compared with what the commands printed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from eth_account import Account
from web3 import Web3

from backend.chain import imbalance as imbalances
from backend.chain.contracts import contract_at, load_deployment
from backend.chain.protocol import escrow_of
from backend.devtools.anvil import is_up
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.iot.meters import dev_meter_key, dev_meters, metered_energy_wh
from backend.net import free_port
from backend.paths import REPO_ROOT
from backend.settings import ANVIL_KEYS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

README = REPO_ROOT / "README.md"
BLOCK = re.compile(r"<!-- five-terminals:([a-z-]+) -->\n```[a-z]*\n(.*?)```", re.S)
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SELLER, BUYER = (Account.from_key(k).address for k in ANVIL_KEYS[1:3])
PRICE = 110_000  # the midpoint of the two limits, 100000 and 120000
SOLD_WH = 1000


def walkthrough() -> dict[str, str]:
    """The README's marked blocks by name (chain, serve, oracle, meters, user, settled, ...)."""
    return {name: body for name, body in BLOCK.findall(README.read_text())}


def command(block: str) -> str:
    """The one command of a daemon's block."""
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, block
    return lines[0]


def _wait(what: str, ready: Callable[[], bool], timeout_s: float, proc: Daemon) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited: {proc.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout_s} s: {proc.log()[-3000:]}")
        time.sleep(0.2)


class Daemon:
    """One terminal: ``bash -c <the README's line>`` in a session of its own, output to a file;
    ``stop`` is Ctrl-C (SIGINT to its process group), then SIGKILL for anything of it left."""

    def __init__(self, name: str, line: str, env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.path = folder / f"{name}.log"
        with self.path.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", line], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.descendants: set[int] = set()

    def log(self) -> str:
        return self.path.read_text(errors="replace")

    def remember_children(self) -> None:
        """Note every process this terminal started (Anvil runs in a session of its own)."""
        try:
            kids = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        self.descendants |= {k.pid for k in kids}

    def stop(self) -> int | None:
        self.remember_children()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for pid in self.descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        return self.process.returncode


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[Daemon], Path]]:
    with MosquittoBroker() as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEGRID_")}
        env.update(
            PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
            COLUMNS="300",
            TEGRID_RPC_URL=f"http://127.0.0.1:{free_port()}",
            TEGRID_BROKER_URL=broker.url,
            TEGRID_API_PORT=str(free_port()),
            TEGRID_DEPLOYMENT_FILE=str(tmp_path / "deployment.json"),
            TEGRID_CHAIN_STATE_FILE=str(tmp_path / "anvil-state.json"),
            TEGRID_DATABASE_URL=f"sqlite:///{tmp_path / 'tegrid.db'}",
            TEGRID_ORACLE_DATABASE_URL=f"sqlite:///{tmp_path / 'oracle.db'}",
            TEGRID_CHAIN_HEAD_FILE=str(tmp_path / "chain-head.json"),
        )
        daemons: list[Daemon] = []
        try:
            yield env, daemons, tmp_path
        finally:
            for daemon in reversed(daemons):
                daemon.stop()


def _user(block: str, env: dict[str, str]) -> list[str]:
    """Terminal 5: the user's block as one bash script; its output lines."""
    done = subprocess.run(
        ["bash", "-e", "-c", block], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=400, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def _as_shown(block: str, interval_id: int) -> list[str]:
    """A README output block with its example interval replaced by the one the run used."""
    example = re.search(r"interval (\d+)", block)
    assert example is not None, block
    return block.replace(example.group(1), str(interval_id)).strip().splitlines()


class Chain:
    def __init__(self, env: dict[str, str]) -> None:
        self.w3 = Web3(Web3.HTTPProvider(env["TEGRID_RPC_URL"]))
        self.dep = load_deployment(Path(env["TEGRID_DEPLOYMENT_FILE"]))
        self.market = contract_at(self.w3, "EnergyMarket", self.dep.address("EnergyMarket"))
        self.readings = contract_at(self.w3, "MeterReadings", self.dep.address("MeterReadings"))
        self.registry = contract_at(
            self.w3, "ParticipantRegistry", self.dep.address("ParticipantRegistry")
        )
        self.api = f"http://127.0.0.1:{env['TEGRID_API_PORT']}"

    def balances(self) -> dict[str, tuple[int, int]]:
        return {w: tuple(self.market.functions.balanceOf(w).call()) for w in (SELLER, BUYER)}

    def check_interval(self, interval_id: int, delivered_wh: int) -> dict[str, int]:
        """The trade of ``interval_id`` on chain: recorded, metered, settled and paid exactly, and
        both parties' imbalance; returns what each party's available balance gained."""
        state = self.market.functions.intervalOf(interval_id).call()
        # lastTradeId; batchCount, approvedCount, expectedBatches, settledBatches, settled,
        # reclaimed, shortPriceBps, longPriceBps
        assert tuple(state[1:]) == (1, 1, 1, 1, True, False, 15_000, 5_000)
        (trade,) = httpx.get(f"{self.api}/trades", params={"interval": interval_id}).json()
        trade_id = bytes.fromhex(trade["id"][2:])
        (recorded,) = self.market.events.TradeRecorded.get_logs(
            from_block=self.dep.block, argument_filters={"tradeId": trade_id}
        )
        assert (recorded.args.seller, recorded.args.buyer) == (SELLER, BUYER)
        assert (recorded.args.energyWh, recorded.args.pricePerKWh) == (SOLD_WH, PRICE)

        seller_meter, buyer_meter = dev_meters(10)[1:3]
        assert seller_meter.pv_peak_kw == 0  # the seller's own export is zero at any hour
        own_seller = metered_energy_wh(seller_meter, interval_id, self.dep.interval_seconds)
        own_buyer = metered_energy_wh(buyer_meter, interval_id, self.dep.interval_seconds)
        reading_of = self.readings.functions.readingOf
        assert tuple(reading_of(seller_meter.address, interval_id).call()) == (
            own_seller[0], delivered_wh, True,
        )  # fmt: skip
        assert tuple(reading_of(buyer_meter.address, interval_id).call()) == (
            own_buyer[0] + SOLD_WH, own_buyer[1], True,
        )  # fmt: skip

        paid = SOLD_WH * PRICE // 1000  # trades settle firm
        refunded = escrow_of(SOLD_WH, PRICE) - paid
        (settled,) = self.market.events.TradeSettled.get_logs(
            from_block=self.dep.block, argument_filters={"tradeId": trade_id}
        )
        assert (settled.args.deliveredWh, settled.args.paid, settled.args.refunded) == (
            SOLD_WH, paid, refunded,
        )  # fmt: skip
        # net positions (export - import) against the trade; the clearing price is the trade's
        seller_metered = delivered_wh - own_seller[0]
        buyer_metered = own_buyer[1] - own_buyer[0] - SOLD_WH
        found = imbalances.find(self.w3, self.market, interval_id, self.dep.block)
        assert found is not None and found.clearing_price_per_kwh == PRICE
        assert {p.account: (p.contracted_wh, p.metered_wh, p.payment, p.shortfall)
                for p in found.parties} == {
            SELLER: (SOLD_WH, seller_metered, _imbalance(seller_metered - SOLD_WH), 0),
            BUYER: (-SOLD_WH, buyer_metered, _imbalance(buyer_metered + SOLD_WH), 0),
        }  # fmt: skip
        return {
            SELLER: paid + _imbalance(seller_metered - SOLD_WH),
            BUYER: -paid + _imbalance(buyer_metered + SOLD_WH),
        }


def _imbalance(deviation_wh: int) -> int:
    """The imbalance payment of a deviation at the trade's price: short pays ceil(|D| x 1.5 x P /
    1000) (the floor of the negative), long gets floor(D x 0.5 x P / 1000); the dev balancing
    account holds a deposit, so long parties are paid in full."""
    bps = 15_000 if deviation_wh < 0 else 5_000
    return deviation_wh * PRICE * bps // 10**7


def _round(
    chain: Chain, blocks: dict[str, str], env: dict[str, str], settled_block: str
) -> tuple[int, dict[str, tuple[int, int]], dict[str, tuple[int, int]], list[str]]:
    before = chain.balances()
    out = _user(blocks["user"], env)
    interval_id = int(re.search(r"in interval (\d+)", "\n".join(out)).group(1))  # type: ignore[union-attr]
    assert out[-2:] == _as_shown(blocks[settled_block], interval_id)
    return interval_id, before, chain.balances(), out


def test_five_terminals_walkthrough_settles_and_pays_as_the_readme_shows(
    terminals: tuple[dict[str, str], list[Daemon], Path],
) -> None:
    env, daemons, folder = terminals
    blocks = walkthrough()
    assert set(blocks) >= {
        "chain", "serve", "oracle", "meters", "user", "settled", "metered", "announced",
        "meters-partial", "settled-partial",
    }  # fmt: skip

    chain_term = Daemon("chain", command(blocks["chain"]), env, folder)
    daemons.append(chain_term)
    _wait("chain", lambda: is_up(env["TEGRID_RPC_URL"]), 60, chain_term)
    chain_term.remember_children()
    serve = Daemon("serve", command(blocks["serve"]), env, folder)
    daemons.append(serve)
    api = f"http://127.0.0.1:{env['TEGRID_API_PORT']}"

    def healthy() -> bool:
        try:
            return bool(httpx.get(f"{api}/health", timeout=5).json().get("ok"))
        except (httpx.HTTPError, ValueError):
            return False

    _wait("serve", healthy, 300, serve)
    oracle = Daemon("oracle", command(blocks["oracle"]), env, folder)
    daemons.append(oracle)
    _wait("oracle", lambda: "oracle started" in oracle.log(), 120, oracle)
    meters = Daemon("meters", command(blocks["meters"]), env, folder)
    daemons.append(meters)
    _wait("meters", lambda: "following chain time" in meters.log(), 120, meters)
    assert (
        "meters: registry: 10 of 10 meters belong to active participants (their buses and "
        "wallets come from the registry)"
    ) in meters.log()

    chain = Chain(env)
    # full delivery: the seller is paid escrow price x 1000 Wh, the buyer's escrow all spent;
    # each household's own load and PV beside the trade is its imbalance
    n, before, after, _out = _round(chain, blocks, env, "settled")
    gained = chain.check_interval(n, delivered_wh=SOLD_WH)
    assert SOLD_WH * PRICE // 1000 == 110_000
    for who in (SELLER, BUYER):
        assert after[who][0] - before[who][0] == gained[who]
    assert after[BUYER][1] == before[BUYER][1] == 0  # nothing left locked
    assert _as_shown(blocks["metered"], n)[0] in meters.log().splitlines()
    # the oracle compared every announcement with the registry: all ten as registered
    announced = [ln for ln in oracle.log().splitlines() if "as registered)" in ln]
    assert len(announced) == 10, oracle.log()[-3000:]
    shown = blocks["announced"].splitlines()[0].split(" INFO ", 1)[1]
    assert any(ln.endswith(f" INFO {shown}") for ln in announced), shown

    # partial delivery: terminal 4 again, sellers withhold half of what they sold
    assert meters.stop() == 0
    partial = Daemon("meters-partial", command(blocks["meters-partial"]), env, folder)
    daemons.append(partial)
    _wait("meters", lambda: "following chain time" in partial.log(), 120, partial)
    n2, before, after, _out = _round(chain, blocks, env, "settled-partial")
    assert n2 > n
    gained = chain.check_interval(n2, delivered_wh=500)  # the seller 500 Wh short more
    for who in (SELLER, BUYER):
        assert after[who][0] - before[who][0] == gained[who]
    assert after[BUYER][1] == 0

    _check_registry_reports(chain, env, folder, oracle, n2)
    _check_order_refused(env)


def _check_order_refused(env: dict[str, str]) -> None:
    """An order the market refuses ends ``tegrid market order`` in one line with its code."""
    stranger = Account.from_key("0x" + "42" * 32).address
    done = subprocess.run(
        [str(VENV_BIN / "tegrid"), "market", "order", "--key", "0x" + "42" * 32, "--side", "sell",
         "--energy-wh", "1000", "--price", "100000"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: the market refused the sell order: UNKNOWN_TRADER: {stranger} is not a "
        "registered participant (POST /participants) (HTTP 403)"
    ]


def _check_registry_reports(
    chain: Chain, env: dict[str, str], folder: Path, oracle: Daemon, interval_id: int
) -> None:
    """Meters the registry does not back are reported in one line each - by the simulator as it
    starts, by the oracle as they announce themselves: a meter stating another bus than its
    participant's, a meter no participant has."""
    moved_key, stranger_key = dev_meter_key(3), "0x" + "42" * 32
    moved, stranger = (Account.from_key(k).address for k in (moved_key, stranger_key))
    wallet = Account.from_key(ANVIL_KEYS[3]).address
    bus = int(chain.registry.functions.participantOf(wallet).call()[2])
    stated = bus + 1
    meter_file = folder / "meters.json"
    meter_file.write_text(
        # meter 3 as the dev fleet runs it (same household, so the same reading), on another bus
        json.dumps(
            [
                {"key": moved_key, "bus": stated, "load_peak_kw": dev_meters(4)[3].load_peak_kw},
                {"key": stranger_key, "bus": 5},
            ]
        )
    )
    done = subprocess.run(
        [str(VENV_BIN / "tegrid"), "meters", "simulate", "--meters-file", str(meter_file),
         "--start-interval", str(interval_id), "--no-follow-market"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    mismatch = (
        f"meter {moved} announces bus {stated}, but the registry connects its participant "
        f"{wallet} at bus {bus}: the registry's bus counts"
    )
    unknown = (
        f"meter {stranger} is not registered: no participant has this meter key, so "
        "MeterReadings refuses its readings"
    )
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("meters: warning:")]
    assert warnings == [f"meters: warning: {mismatch}", f"meters: warning: {unknown}"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = oracle.log()
        if f"announcement: {mismatch}" in text and f"announcement: {unknown}" in text:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(oracle.log()[-3000:])
    assert re.search(rf"rejected unregistered \(meter {stranger}, interval {interval_id}\)", text)
    assert "rejected conflicting" not in text
