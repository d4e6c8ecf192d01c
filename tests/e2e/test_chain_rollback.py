"""A chain rollback, for real: Anvil keeps its state in a file (dumped every second), does work,
is killed with -9 and restarted from the state file copied before that work - so it comes back
behind. Nothing is mocked: the head watcher, the client's nonce, the oracle daemon, the keeper and
``tegrid doctor`` all face the real chain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import keccak

from backend.api.routes.health import chain_head
from backend.chain import batches
from backend.chain.batches import CandidateTrade
from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.chain.heads import HeadWatcher, Rollback
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now, current_interval, end_interval, rpc
from backend.devtools.participants import register_participants
from backend.iot.meters import MeterSimulator, MeterSpec, dev_meter_key, dev_wallet_key
from backend.iot.schema import readings_topic
from backend.iot.transport import InProcessBroker, InProcessTransport, Message
from backend.keeper import SettlementKeeper
from backend.oracle.daemon import OracleConfig, OracleDaemon
from backend.oracle.store import OracleStore
from backend.oracle.web3_ledger import READINGS_SUBMITTED_TOPIC, Web3Ledger
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e

INTERVAL_S = 900
N_METERS = 20
PRICE = 100_000
DEPOSIT = 10**9
INTERVAL_SETTLED = keccak(text="IntervalSettled(uint64,uint32)")
TEGRID = Path(sys.executable).with_name("tegrid")


def _wait(pred: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _dumped_block(state_file: Path) -> int | None:
    try:
        return int(json.loads(state_file.read_text())["best_block_number"])
    except (OSError, ValueError, KeyError):
        return None  # not written yet, or caught mid-write


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[AnvilProcess]:
    chain = AnvilProcess(state_file=tmp_path / "anvil-state.json", state_interval_s=1).start()
    try:
        yield chain
    finally:
        chain.stop()


def _accepted(w3: Any, readings_address: str) -> list[tuple[str, int]]:
    """(meter, interval) of every reading in a ReadingsSubmitted event on the chain as it is."""
    logs = w3.eth.get_logs(
        {
            "address": readings_address,
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [READINGS_SUBMITTED_TOPIC],
        }
    )
    return [
        (r.meter, int.from_bytes(bytes(e["topics"][1]), "big"))
        for e in logs
        for r in batches.unpack_accepted(abi_decode(["bytes"], bytes(e["data"]))[0])
    ]


def test_rollback_is_noticed_and_every_component_recovers_exactly_once(
    anvil: AnvilProcess, tmp_path: Path
) -> None:
    assert anvil.state_file is not None
    # a short receipt timeout: a nonce left too high by the rollback must not cost 120 s
    admin = ChainClient(anvil.url, ANVIL_KEYS[0], receipt_timeout_s=10)
    w3 = admin.w3
    oracle_address = Account.from_key(ANVIL_KEYS[1]).address
    a = admin.address
    dep = deploy_all(admin, RoleHolders(a, a, oracle_address, a), interval_seconds=INTERVAL_S)
    market_address = dep.address("EnergyMarket")
    market = contract_at(w3, "EnergyMarket", market_address)
    token = contract_at(w3, "EnergyToken", dep.address("EnergyToken"))
    wallet_keys = [dev_wallet_key(300 + i) for i in range(N_METERS)]
    meters = [
        MeterSpec(dev_meter_key(300 + i), 1 + i % 10, wallet=Account.from_key(k).address)
        for i, k in enumerate(wallet_keys)
    ]
    register_participants(
        w3, dep.address("ParticipantRegistry"), ANVIL_KEYS[0],
        [(m.wallet, m.address, int(m.bus)) for m in meters],
    )  # fmt: skip
    seller, buyer = meters[0].wallet, meters[1].wallet
    for i in (0, 1):  # the two traders: tokens in escrow, ETH for gas
        admin.reset_nonce()  # account 0 is also used unmanaged (setup sends, ETH transfers)
        admin.transact(token.functions.mint(meters[i].wallet, DEPOSIT))
        eth = {"from": w3.eth.accounts[0], "to": meters[i].wallet, "value": 10**18}
        w3.eth.send_transaction(eth)
        admin.reset_nonce()
        trader = ChainClient(anvil.url, wallet_keys[i])
        trader.transact(token.functions.approve(market_address, DEPOSIT))
        trader.transact(market.functions.deposit(DEPOSIT))

    # Chain time inside interval T-1: T-2 has ended (its readings are due) and T's batch can still
    # be recorded (the chain's gate closure of T is its start).
    t = current_interval(w3, INTERVAL_S) + 2
    end_interval(w3, t - 2, INTERVAL_S)
    orders = [
        {"trader": who, "side": side, "intervalId": t, "energyWh": 1000, "pricePerKWh": PRICE,
         "nonce": 1, "expiry": 2**40, "counterparty": None}
        for who, side in ((seller, 0), (buyer, 1))
    ]  # fmt: skip
    sigs = [
        batches.sign_order(wallet_keys[i], dep.chain_id, market_address, orders[i]) for i in (0, 1)
    ]
    cands = [CandidateTrade(orders[0], orders[1], sigs[0], sigs[1], 1000, PRICE)]
    att = batches.attest(ANVIL_KEYS[0], dep.chain_id, market_address, t, cands, keccak(b"ev"))
    record = market.functions.recordTrades(t, 0, 1, *batches.record_args(cands), keccak(b"ev"), att)

    # The oracle daemon, in process, on its own key; readings reach it through an in-process bus.
    ledger = Web3Ledger(anvil.url, ANVIL_KEYS[1], dep)
    store = OracleStore(f"sqlite:///{tmp_path / 'oracle.db'}")
    bus = InProcessBroker()
    pub = InProcessTransport(bus)
    pub.connect()
    sim = MeterSimulator(
        meters, ledger.domain(), pub, INTERVAL_S,
        overrides={(meters[0].address, t): (0, 1000), (meters[1].address, t): (1000, 0)},
    )  # fmt: skip
    daemon = OracleDaemon(
        store, ledger, None, OracleConfig(backoff_initial_s=0.1, backoff_max_s=0.5)
    )

    def deliver(interval_id: int) -> None:
        """All readings of an interval handed in while the daemon is stopped: one batch."""
        daemon.stop()
        for spec in meters:
            signed = sim.sign(spec, sim.reading_for(spec, interval_id))
            daemon.deliver(Message(readings_topic(spec.address), signed.to_json()))
        daemon.start()

    keeper = SettlementKeeper(ChainClient(anvil.url, ANVIL_KEYS[2], receipt_timeout_s=10), dep)
    watcher = HeadWatcher(w3, state_file=tmp_path / "chain-head.json")
    health_watcher = HeadWatcher(w3)
    try:
        # Kept work: readings of interval T-2 (20, one batch).
        deliver(t - 2)
        _wait(lambda: store.status().submitted == N_METERS, what="readings of T-2")
        assert keeper.run_once() == []
        kept_head = int(w3.eth.block_number)
        _wait(lambda: _dumped_block(anvil.state_file) == kept_head, 10, "state dump")
        old_state = tmp_path / "anvil-state-old.json"
        shutil.copy(anvil.state_file, old_state)
        assert watcher.check() is None and watcher.head == kept_head
        assert health_watcher.check() is None

        # Work the chain will lose: the batch of T recorded, three more admin transactions (its
        # cached nonce runs ahead), T ends, the readings of T (20, one batch), T settled by the
        # keeper.
        admin_count = int(w3.eth.get_transaction_count(a))
        admin.transact(record)
        for _ in range(3):
            admin.transact(token.functions.mint(a, 1))
        end_interval(w3, t, INTERVAL_S)
        deliver(t)
        _wait(lambda: store.status().submitted == 2 * N_METERS, what="readings of T")
        assert keeper.run_once() == [t]
        scanned_to = keeper._next_block
        old_head = int(w3.eth.block_number)
        assert watcher.check() is None and health_watcher.check() is None
        assert watcher.head == old_head
        doctor_file = tmp_path / "doctor-chain-head.json"  # the head as a CLI process left it
        shutil.copy(tmp_path / "chain-head.json", doctor_file)
        assert len(_accepted(w3, ledger.readings_address)) == 2 * N_METERS
        assert admin._nonce == admin_count + 4

        # kill -9 and restart from the older state: the chain comes back behind.
        anvil.kill()
        shutil.copy(old_state, anvil.state_file)
        restarted_at = time.monotonic()
        anvil.start()
        # Anvil restarted from a state file stamps new blocks with the wall clock, before the
        # chain time this test moved forward: carry chain time on from the last block.
        rpc(w3, "evm_setNextBlockTimestamp", [chain_now(w3) + 1])
        assert int(w3.eth.block_number) <= kept_head + 3  # the oracle may already be sending

        rollback = watcher.check()
        assert rollback is not None
        assert (rollback.old_head, rollback.fork_block) == (old_head, kept_head + 1)
        # lost: the record, 3 mints, T's end, its readings, its settlement
        assert rollback.blocks_lost == old_head - kept_head == 7
        assert watcher.rollbacks == [rollback]
        health = chain_head(health_watcher)
        assert health is not None and health["rollbacks"] == 1
        assert health["last_rollback"]["old_head"] == old_head
        assert health["last_rollback"]["blocks_lost"] == 7

        # The market recorder records the lost batch again (here by hand): the admin's cached
        # nonce is 4 ahead of the chain; the client notices the gap, resyncs and the tx is mined.
        sent_at = time.monotonic()
        receipt = admin.transact(record)
        resync_s = time.monotonic() - sent_at
        assert receipt["status"] == 1
        assert admin.nonce_resyncs == 1
        assert receipt["blockNumber"] < scanned_to  # below where the keeper had scanned to
        # the restored chain time is inside T-1 again: T ends once more, its readings are due
        end_interval(w3, t, INTERVAL_S)

        # The oracle noticed the rollback and submitted the 20 lost readings again, once.
        _wait(
            lambda: (
                daemon.counters.resubmitted == N_METERS
                and store.status().queue_depth == 0
                and store.status().submitted == 2 * N_METERS
            ),
            what="readings submitted again",
        )
        oracle_s = time.monotonic() - restarted_at
        assert daemon.counters.rollbacks == 1
        accepted = _accepted(w3, ledger.readings_address)
        assert len(accepted) == len(set(accepted)) == 2 * N_METERS
        assert {i for _m, i in accepted} == {t - 2, t}
        for spec in meters:
            r = sim.reading_for(spec, t)
            assert ledger.reading_of(spec.address, t) == (r.import_wh, r.export_wh, True)

        # The keeper rescans from the fork block and settles the re-recorded batch.
        assert keeper.run_once() == [t]
        assert keeper.rescans == [kept_head + 1]
        assert keeper.settled == [t, t]  # once on the lost chain, once on this one
        settled = w3.eth.get_logs(
            {"address": market_address, "fromBlock": 0, "toBlock": "latest",
             "topics": [INTERVAL_SETTLED]}
        )  # fmt: skip
        assert [int.from_bytes(bytes(e["topics"][1]), "big") for e in settled] == [t]
        assert tuple(market.functions.balanceOf(seller).call()) == (DEPOSIT + PRICE, 0)
        assert tuple(market.functions.balanceOf(buyer).call()) == (DEPOSIT - PRICE, 0)
    finally:
        daemon.stop()
        pub.close()

    # `tegrid doctor` (another process) compares the chain with the head it last saw.
    env = dict(
        os.environ, COLUMNS="400", TEGRID_RPC_URL=anvil.url, TEGRID_CHAIN_HEAD_FILE=str(doctor_file)
    )
    out = subprocess.run(
        [str(TEGRID), "doctor"], capture_output=True, text=True, env=env, timeout=120, check=False
    ).stdout
    line = next(x for x in out.splitlines() if "chain head" in x)
    assert "warn" in line
    assert f"went back from block {old_head} to" in line
    assert f"blocks from {kept_head + 1} on changed, 7 lost" in line
    print(
        f"\nrollback: head {old_head} -> {rollback.new_head}, {rollback.blocks_lost} blocks lost; "
        f"nonce resync + re-record {resync_s:.2f} s; oracle re-submitted "
        f"{daemon.counters.resubmitted} readings within {oracle_s:.2f} s of the restart; "
        f"keeper rescanned from block {keeper.rescans[0]}"
    )


def test_rollback_dataclass_counts_blocks_lost() -> None:
    assert Rollback(old_head=40, new_head=30, fork_block=31, detected_at=0.0).blocks_lost == 10
    assert Rollback(old_head=40, new_head=45, fork_block=38, detected_at=0.0).blocks_lost == 3


def test_market_records_again_a_batch_the_rollback_lost(
    anvil: AnvilProcess, tmp_path: Path
) -> None:
    """The market's receipt was not final: after Anvil comes back from an older state, the next
    scheduler step finds the recorded batch gone, makes it pending and records it again (same
    signature; the operator's nonce resyncs), exactly once."""
    import dataclasses

    from backend.devtools.devstack import start_dev_stack
    from backend.settings import Settings
    from tests.e2e.test_market_batches import bilateral_pairs, new_market, provision_many, submit
    from tests.e2e.test_market_batches import trader_keys as keys_for

    assert anvil.state_file is not None
    settings = dataclasses.replace(
        Settings(),
        rpc_url=anvil.url,
        deployment_file=tmp_path / "deployment.json",
        chain_state_file=anvil.state_file,
        database_url=f"sqlite:///{tmp_path / 'book.db'}",
    )
    dev = start_dev_stack(settings, participants=2)
    keys = keys_for(4, seed="rollback trader")
    provision_many(settings, dev.deployment, keys)
    market = new_market(settings)
    w3 = market.ledger.w3  # type: ignore[attr-defined]
    iv = market.current_interval() + 9
    submit(market, bilateral_pairs(market.domain, keys, iv, 8, first_nonce=940_001))
    assert market.reconcile() == []  # the head watcher starts from here
    kept_head = int(w3.eth.block_number)
    _wait(lambda: _dumped_block(anvil.state_file) == kept_head, 10, "state dump")
    old_state = tmp_path / "anvil-state-old.json"
    shutil.copy(anvil.state_file, old_state)

    assert market.close_interval(iv, force=True).status == "recorded"
    [first] = market.batches(iv)
    assert first.block_number is not None and first.block_number > kept_head

    anvil.kill()
    shutil.copy(old_state, anvil.state_file)
    anvil.start()  # chain time is wall time here (nothing moved it): no clock to carry on
    contract = contract_at(w3, "EnergyMarket", dev.deployment.address("EnergyMarket"))
    assert contract.functions.intervalOf(iv).call()[1] == 0  # the batch is gone

    assert market.reconcile() == [(iv, 0)]  # the rollback is noticed, the batch lost
    [lost] = market.batches(iv)
    assert (lost.state, lost.tx_hash) == ("pending", None)
    assert market.interval(iv).status == "cleared"
    market.tick()  # records it again
    [again] = market.batches(iv)
    assert again.state == "recorded"
    # the same signed transaction again (same nonce, data and fees): the same hash, mined anew
    assert w3.eth.get_transaction_receipt(again.tx_hash)["status"] == 1
    assert market.interval(iv).status == "recorded"
    _last, batches_, approved, *_rest = contract.functions.intervalOf(iv).call()
    assert (batches_, approved) == (1, 8)
    logs = contract.events.TradeRecorded.get_logs(from_block=0)
    ids = ["0x" + bytes(lg["args"]["tradeId"]).hex() for lg in logs]
    assert sorted(ids) == sorted(json.loads(again.trade_ids))  # each trade once
    assert {t.status for t in market.trades(iv)} == {"recorded"}
