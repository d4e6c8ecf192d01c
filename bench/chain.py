"""Gas benchmark of the ledger: batched trades and readings vs. one trade per transaction.

Starts its own Anvil (free port, --hardfork shanghai, 30M gas), deploys, connects ``batch``
participants (half sellers, half buyers) and runs several delivery intervals. Each interval records
``batch`` trades in one ``recordTrades`` (every order matched with two counterparties, as a double
auction does), submits one device-signed reading per participant in one ``submitReadings`` and
settles in one ``settle`` - with every party's imbalance: the meters read ``deviation`` off each
position (sellers export less than they sold, buyers import less than they bought, so every
party pays or is paid an imbalance: the worst case for settlement gas; 0 meters every position
exactly). The first intervals pay for first-ever storage (fill slots, and the
reading slots until the readings ring of ``readingWindowIntervals`` has wrapped once: rounds are
two intervals apart, so the first ceil(window / 2) rounds); the figures are the mean of the
``intervals - 1`` rounds after that (steady state), the first interval and the first ring cycle
are reported beside them. The naive baseline records and settles one trade per transaction on
the same contracts in the same run.

The flexibility case (``flex_*``, same run, same contracts): every participant has a registered
battery; each round records ``batch`` DSO-service activations (one signed FlexOffer each, paid by
the balancing account) in one ``recordActivations``, submits each battery's signed reading in one
``submitDeviceReadings`` (half the batteries deliver in full, a quarter half, a quarter nothing) and
settles them in one ``settleActivations``; the first round (first-ever writes of the interval book
and the provider balances) is reported apart from the steady rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from backend.chain import batches, flex
from backend.chain.batches import CandidateTrade
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.devtools.anvil import start_anvil
from backend.settings import ANVIL_KEYS

INTERVAL_S = 900
DELAY_S = 3600
PRICE = 250_000  # token base units per kWh (0.25 token at 6 decimals)
EXPIRY = 2**40
EVIDENCE = keccak(b"bench evidence")


@dataclass
class _Party:
    key: str
    address: str
    meter_key: str
    meter: str
    index: int = 0


def _key(label: str) -> str:
    return "0x" + keccak(text=label).hex()


class _Bench:
    def __init__(
        self, client: ChainClient, deployment: Any, n_parties: int, deviation: float = 0.0
    ) -> None:
        self.c = client
        self.deviation = deviation
        self.w3: Web3 = client.w3
        self.cid = client.chain_id
        self.market = contract_at(self.w3, "EnergyMarket", deployment.address("EnergyMarket"))
        self.readings = contract_at(self.w3, "MeterReadings", deployment.address("MeterReadings"))
        self.registry = contract_at(
            self.w3, "ParticipantRegistry", deployment.address("ParticipantRegistry")
        )
        self.token = contract_at(self.w3, "EnergyToken", deployment.address("EnergyToken"))
        self.parties: list[_Party] = []
        for i in range(n_parties):
            k, mk = _key(f"bench trader {i}"), _key(f"bench meter {i}")
            self.parties.append(
                _Party(k, Account.from_key(k).address, mk, Account.from_key(mk).address)
            )
        half = n_parties // 2
        self.sellers, self.buyers = self.parties[:half], self.parties[half:]
        self.nonce = 0
        self.flex = contract_at(
            self.w3, "FlexibilityMarket", deployment.address("FlexibilityMarket")
        )
        self.flex_domain = flex.domain(self.cid, self.flex.address)
        self.device_keys = [_key(f"bench battery {i}") for i in range(n_parties)]

    def setup_flex(self) -> None:
        """A battery per participant (-5..5 kW), and a DSO budget no round reaches."""
        for i, (p, key) in enumerate(zip(self.parties, self.device_keys, strict=True)):
            device = Account.from_key(key).address
            fn = self.registry.functions.registerDevice(
                device, p.address, i + 1, 1, -5_000, 5_000, 10_000
            )
            self.c.transact(fn)
        self.c.transact(self.flex.functions.setDsoBudget(2**127))

    def flex_round(self, n: int) -> dict[str, int]:
        """``n`` DSO activations recorded, metered and settled, one transaction each step."""
        iv = self.now() // INTERVAL_S + 2
        self.nonce += 1
        balancing = self.c.address
        acts = []
        for i in range(n):
            p = self.parties[i % len(self.parties)]
            device = Account.from_key(self.device_keys[i % len(self.parties)]).address
            offer = {
                "provider": p.address, "device": device, "intervalId": iv, "direction": 0,
                "powerW": 4_000, "baselineW": 0, "pricePerKWh": PRICE, "nonce": self.nonce,
                "expiry": EXPIRY,
            }  # fmt: skip
            cost = flex.cost(2_000, PRICE, INTERVAL_S)
            acts.append(
                flex.Activation(
                    offer, flex.sign_offer(p.key, self.flex_domain, offer), 2_000, balancing, cost
                )
            )
        packed = flex.pack_batch(self.flex_domain, acts)
        sig = flex.attest(ANVIL_KEYS[0], self.flex_domain, iv, 0, packed, EVIDENCE)
        record = self.c.transact(
            self.flex.functions.recordActivations(iv, 0, packed, EVIDENCE, sig)
        )
        self.end_interval(iv)
        readings = []
        for i, act in enumerate(acts):
            key = self.device_keys[i % len(self.parties)]
            exp = (500, 500, 250, 0)[i % 4]  # 2,000 W, 2,000 W, 1,000 W, nothing
            readings.append(
                batches.signed_reading(
                    key, self.cid, self.readings.address, act.offer["device"], iv, 0, exp
                )
            )
        fn = self.readings.functions.submitDeviceReadings(iv, batches.readings_arg(readings))
        device_readings = self.c.transact(fn)
        settle = self.c.transact(self.flex.functions.settleActivations(iv, 0, flex.records(packed)))
        return {
            "record": int(record["gasUsed"]),
            "settle": int(settle["gasUsed"]),
            "readings": int(device_readings["gasUsed"]),
        }

    def setup(self) -> None:
        deposit = 10**15
        for i, p in enumerate(self.parties):
            self.c.transact(
                self.registry.functions.connect(p.address, p.meter, i + 1, 10_000, 10_000)
            )
            p.index = int(self.registry.functions.stateOf(p.address).call()[1])
            self.w3.provider.make_request("anvil_setBalance", [p.address, hex(10**21)])  # type: ignore[arg-type]
            # every participant keeps a balance (prosumers buy and sell over a day)
            self.c.transact(self.token.functions.mint(p.address, deposit))
            trader = ChainClient(self.c.w3.provider.endpoint_uri, p.key)  # type: ignore[attr-defined]
            trader.transact(self.token.functions.approve(self.market.address, 2**256 - 1))
            trader.transact(self.market.functions.deposit(deposit))

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def end_interval(self, iv: int) -> None:
        target = (iv + 1) * INTERVAL_S
        if self.now() < target:
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def candidate_trades(self, iv: int, n_trades: int) -> list[CandidateTrade]:
        """Each seller's order matched with two buyers, each buyer's order with two sellers."""
        self.nonce += 1
        q = 700  # Wh per trade
        ns = len(self.sellers)
        sell = {
            s.address: {
                "trader": s.address,
                "side": 0,
                "intervalId": iv,
                "energyWh": 2 * q,
                "pricePerKWh": PRICE - 50_000,
                "nonce": self.nonce,
                "expiry": EXPIRY,
                "counterparty": None,
            }
            for s in self.sellers
        }
        buy = {
            b.address: {
                "trader": b.address,
                "side": 1,
                "intervalId": iv,
                "energyWh": 2 * q,
                "pricePerKWh": PRICE + 50_000,
                "nonce": self.nonce,
                "expiry": EXPIRY,
                "counterparty": None,
            }
            for b in self.buyers
        }
        keys = {p.address: p.key for p in self.parties}
        sigs = {
            a: batches.sign_order(keys[a], self.cid, self.market.address, o)
            for a, o in [*sell.items(), *buy.items()]
        }
        trades = []
        for k in range(n_trades):
            s = self.sellers[k % ns]
            b = self.buyers[(k % ns + k // ns) % len(self.buyers)]
            trades.append(
                CandidateTrade(
                    sell[s.address], buy[b.address], sigs[s.address], sigs[b.address], q, PRICE
                )
            )
        return batches.sort_by_trade_id(trades, self.cid, self.market.address)

    def record(self, iv: int, trades: list[CandidateTrade]) -> tuple[int, list[bytes]]:
        sig = batches.attest(ANVIL_KEYS[0], self.cid, self.market.address, iv, trades, EVIDENCE)
        orders, rows = batches.record_args(trades)
        fn = self.market.functions.recordTrades(iv, 0, 1, orders, rows, EVIDENCE, sig)
        receipt = self.c.transact(fn)
        index = {p.address: p.index for p in self.parties}
        recs = [
            t.record(self.cid, self.market.address, index[t.sell["trader"]], index[t.buy["trader"]])
            for t in trades
        ]
        return int(receipt["gasUsed"]), recs

    def submit_readings(self, iv: int, parties: list[_Party], contracted: dict[str, int]) -> int:
        readings = []
        sellers = {s.address for s in self.sellers}
        for p in parties:
            wh = round(contracted.get(p.address, 0) * (1.0 - self.deviation))
            imp, exp = (0, wh) if p.address in sellers else (wh, 0)
            readings.append(
                batches.signed_reading(
                    p.meter_key, self.cid, self.readings.address, p.meter, iv, imp, exp
                )
            )
        fn = self.readings.functions.submitReadings(iv, batches.readings_arg(readings))
        receipt = self.c.transact(fn)
        return int(receipt["gasUsed"])

    def settle(self, iv: int, batches_: list[list[bytes]]) -> int:
        args = batches.settle_args(batches_)
        receipt = self.c.transact(self.market.functions.settle(iv, *args, len(batches_)))
        return int(receipt["gasUsed"])

    def interval(self, n_trades: int) -> dict[str, int]:
        iv = self.now() // INTERVAL_S + 2  # gate closure (its start) well ahead
        trades = self.candidate_trades(iv, n_trades)
        record_gas, recs = self.record(iv, trades)
        contracted: dict[str, int] = {}
        for t in trades:
            for who in (t.sell["trader"], t.buy["trader"]):
                contracted[who] = contracted.get(who, 0) + t.energy_wh
        involved = [p for p in self.parties if p.address in contracted]
        self.end_interval(iv)
        readings_gas = self.submit_readings(iv, involved, contracted)
        settle_gas = self.settle(iv, [recs])
        return {
            "record": record_gas,
            "settle": settle_gas,
            "readings": readings_gas,
            "n_readings": len(involved),
        }


def run(
    batch: int = 100, intervals: int = 5, naive_trades: int = 10, deviation: float = 0.05
) -> dict[str, object]:
    """Run the benchmark on a fresh Anvil; return the figures (exact gas, wall-clock times)."""
    anvil = start_anvil()
    try:
        client = ChainClient(anvil.url, ANVIL_KEYS[0])
        admin = client.address
        roles = RoleHolders(admin, admin, admin, admin)
        deployment = deploy_all(
            client, roles, interval_seconds=INTERVAL_S, settlement_delay_seconds=DELAY_S
        )
        n_parties = max(4, batch)  # batch/2 sellers, batch/2 buyers: every order in two trades
        bench = _Bench(client, deployment, n_parties, deviation)
        bench.setup()
        # the balancing account (the grid operator's: admin here) pays the long parties
        bench.c.transact(bench.token.functions.mint(admin, 10**15))
        bench.c.transact(bench.token.functions.approve(bench.market.address, 2**256 - 1))
        bench.c.transact(bench.market.functions.deposit(10**15))
        # Readings live in a ring of `window` intervals; rounds are two intervals apart, so from
        # round ceil(window / 2) on every reading slot is reused (a running market's steady state).
        window = int(bench.readings.functions.readingWindowIntervals().call())
        warmup = max(1, -(-window // 2))
        t0 = time.perf_counter()
        rounds = [bench.interval(batch) for _ in range(warmup + max(1, intervals - 1))]
        batched_s = time.perf_counter() - t0
        steady = rounds[warmup:]
        cycle = rounds[1:warmup] or rounds[:1]
        per_trade = [(r["record"] + r["settle"]) / batch for r in steady]
        per_reading = [r["readings"] / r["n_readings"] for r in steady]
        first = rounds[0]
        naive = [bench.interval(1) for _ in range(naive_trades)]
        naive_per_trade = [r["record"] + r["settle"] for r in naive]
        bench.setup_flex()
        flex_rounds = [bench.flex_round(batch) for _ in range(max(2, intervals))]
        flex_first, flex_steady = flex_rounds[0], flex_rounds[1:]

        def flex_mean(what: str) -> int:
            return round(sum(r[what] for r in flex_steady) / len(flex_steady) / batch)

        return {
            "batch": batch,
            "meter_deviation": deviation,
            "gas_per_trade": round(sum(per_trade) / len(per_trade)),
            "gas_per_reading": round(sum(per_reading) / len(per_reading)),
            "naive_gas_per_trade": round(sum(naive_per_trade) / len(naive_per_trade)),
            "record_gas_per_trade": round(sum(r["record"] for r in steady) / len(steady) / batch),
            "settle_gas_per_trade": round(sum(r["settle"] for r in steady) / len(steady) / batch),
            "first_interval_gas_per_trade": round((first["record"] + first["settle"]) / batch),
            "first_interval_gas_per_reading": round(first["readings"] / first["n_readings"]),
            "first_ring_cycle_gas_per_reading": round(
                sum(r["readings"] / r["n_readings"] for r in cycle) / len(cycle)
            ),
            "reading_window_intervals": window,
            "warmup_intervals": warmup,
            "batch_record_gas": steady[-1]["record"],
            "batch_settle_gas": steady[-1]["settle"],
            "batch_readings_gas": steady[-1]["readings"],
            "trades_per_30m_block": int(30_000_000 // (sum(per_trade) / len(per_trade))),
            "participants": n_parties,
            "intervals_measured": len(steady),
            "naive_trades": naive_trades,
            "batched_wall_s": round(batched_s, 2),
            "flex_gas_per_activation": flex_mean("record") + flex_mean("settle"),
            "flex_record_gas_per_activation": flex_mean("record"),
            "flex_settle_gas_per_activation": flex_mean("settle"),
            "flex_gas_per_device_reading": flex_mean("readings"),
            "flex_first_round_gas_per_activation": round(
                (flex_first["record"] + flex_first["settle"]) / batch
            ),
            "flex_batch_record_gas": flex_steady[-1]["record"],
            "flex_batch_settle_gas": flex_steady[-1]["settle"],
            "flex_rounds_measured": len(flex_steady),
            "chain": "anvil --hardfork shanghai",
        }
    finally:
        anvil.stop()
