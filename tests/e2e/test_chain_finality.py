"""Finality on a real Anvil: a receipt counts once it has ``confirmations`` blocks on top, and an
oracle restarted after a rollback that happened while it was down re-checks its recent batches."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from eth_account import Account

from backend.chain.client import ChainClient
from backend.chain.contracts import contract_at
from backend.chain.deploy import RoleHolders, deploy_all
from backend.chain.finality import final_block, is_final
from backend.devtools.anvil import AnvilProcess
from backend.devtools.clock import chain_now, current_interval, end_interval, rpc
from backend.devtools.participants import register_participants
from backend.iot.meters import MeterSimulator, dev_meters
from backend.iot.schema import readings_topic
from backend.iot.transport import InProcessBroker, InProcessTransport, Message
from backend.oracle.daemon import OracleConfig, OracleDaemon
from backend.oracle.store import OracleStore
from backend.oracle.web3_ledger import Web3Ledger
from backend.settings import ANVIL_KEYS

pytestmark = pytest.mark.e2e

INTERVAL_S = 900


def test_final_block_counts_confirmations() -> None:
    assert final_block(100, 0) == 100
    assert final_block(100, 3) == 97
    assert is_final(97, 100, 3) and not is_final(98, 100, 3)


def test_transact_waits_for_confirmations() -> None:
    with AnvilProcess() as anvil:
        client = ChainClient(anvil.url, ANVIL_KEYS[0], confirmations=2, receipt_timeout_s=20)
        a = client.address
        dep = deploy_all(
            ChainClient(anvil.url, ANVIL_KEYS[0]), RoleHolders(a, a, a, a), interval_seconds=900
        )
        client.reset_nonce()
        token = contract_at(client.w3, "EnergyToken", dep.address("EnergyToken"))
        # Anvil mines one block per transaction: two empty blocks must follow for finality.
        miner = threading.Timer(1.0, lambda: [rpc(client.w3, "evm_mine", []) for _ in range(2)])
        miner.start()
        receipt = client.transact(token.functions.mint(a, 5))
        miner.join()
        assert int(client.w3.eth.block_number) == int(receipt["blockNumber"]) + 2


def _dumped_block(state_file: Path) -> int | None:
    try:
        return int(json.loads(state_file.read_text())["best_block_number"])
    except (OSError, ValueError, KeyError):
        return None


def test_oracle_restarted_after_a_rollback_resubmits_what_the_chain_lost(tmp_path: Path) -> None:
    state = tmp_path / "anvil-state.json"
    anvil = AnvilProcess(state_file=state, state_interval_s=1).start()
    try:
        admin = ChainClient(anvil.url, ANVIL_KEYS[0])
        a = admin.address
        oracle = Account.from_key(ANVIL_KEYS[1]).address
        dep = deploy_all(admin, RoleHolders(a, a, oracle, a), interval_seconds=INTERVAL_S)
        meters = dev_meters(5)
        register_participants(
            admin.w3, dep.address("ParticipantRegistry"), ANVIL_KEYS[0],
            [(m.wallet, m.address, int(m.bus)) for m in meters],
        )  # fmt: skip
        w3 = admin.w3
        t = current_interval(w3, INTERVAL_S)
        end_interval(w3, t + 1, INTERVAL_S)
        db = f"sqlite:///{tmp_path / 'oracle.db'}"
        bus = InProcessBroker()
        pub = InProcessTransport(bus)
        pub.connect()

        def run_oracle(intervals: list[int], submitted: int, resubmitted: int = 0) -> OracleDaemon:
            ledger = Web3Ledger(anvil.url, ANVIL_KEYS[1], dep)
            store = OracleStore(db)
            sim = MeterSimulator(meters, ledger.domain(), pub, INTERVAL_S)
            daemon = OracleDaemon(store, ledger, None, OracleConfig(backoff_initial_s=0.1))
            for interval_id in intervals:
                for spec in meters:
                    signed = sim.sign(spec, sim.reading_for(spec, interval_id))
                    daemon.deliver(Message(readings_topic(spec.address), signed.to_json()))
            daemon.start()
            deadline = time.monotonic() + 60
            while not (
                daemon.counters.resubmitted == resubmitted
                and store.status().submitted == submitted
                and daemon.idle()
            ):
                assert time.monotonic() < deadline, store.status()
                time.sleep(0.05)
            daemon.stop()
            return daemon

        run_oracle([t], 5)
        kept = int(w3.eth.block_number)
        deadline = time.monotonic() + 10
        while _dumped_block(state) != kept:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shutil.copy(state, tmp_path / "old.json")
        run_oracle([t + 1], 10)
        assert int(w3.eth.block_number) == kept + 1

        # The chain loses the second batch while no oracle runs.
        anvil.kill()
        shutil.copy(tmp_path / "old.json", state)
        anvil.start()
        rpc(w3, "evm_setNextBlockTimestamp", [chain_now(w3) + 1])  # chain time as before
        assert int(w3.eth.block_number) == kept

        daemon = run_oracle([], 10, resubmitted=5)  # a fresh daemon: no memory of the old head
        assert daemon.counters.submitted == 5
        assert daemon.counters.rechecked_batches == 2
        ledger = Web3Ledger(anvil.url, ANVIL_KEYS[1], dep)
        for spec in meters:
            assert ledger.reading_of(spec.address, t + 1)[2] is True
        assert int(w3.eth.block_number) == kept + 1  # one batch of five, not two
        pub.close()
    finally:
        anvil.stop()
