"""An islanded interval end to end on a real chain: the grid operator switches the registry to
islanded, the market reads the mode at gate closure, the Neural Grid validates the village with no
external grid (its battery empty at 07:00), and the veto ``ISLAND_BALANCE`` (code 8) is what the
validator attests and the chain records. Real Anvil, real contracts, real SQLite store."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from devsettings import dev_settings  # tests/e2e is on sys.path (a folder without __init__)
from eth_account import Account
from web3 import Web3

from backend.chain import eip712
from backend.chain.client import ChainClient, chain_time
from backend.chain.contracts import contract_at
from backend.chain.registry import GridModeLog
from backend.devtools.anvil import AnvilProcess
from backend.devtools.broker import MosquittoBroker, find_mosquitto
from backend.devtools.devstack import start_dev_stack
from backend.devtools.participants import register_devices, register_participants
from backend.iot.control import registry_domain
from backend.iot.control_store import ControlStore
from backend.iot.devices import DeviceFleet, DeviceSpec, dev_device_key
from backend.iot.dispatcher import Dispatcher, StoreActivations
from backend.iot.modes import RegistryModes
from backend.iot.signing import ReadingDomain
from backend.iot.transport import MqttTransport
from backend.market.factory import build_market
from backend.market.service import MarketConfig
from backend.settings import ANVIL_KEYS
from grid.island import units_from_docs
from grid.validator import GridValidator
from grid.verdicts import Trade

pytestmark = pytest.mark.e2e


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
DAY_S = 86_400
SHORT_HOUR = 7  # 07:00 UTC: village_island's battery is empty, the genset alone falls short


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("island")
    with AnvilProcess() as anvil:
        settings = dataclasses.replace(dev_settings(tmp, anvil.url), network="village_island")
        dev = start_dev_stack(settings, participants=3)
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        now = int(w3.eth.get_block("latest")["timestamp"])
        # the chain's clock to 06:30 UTC of the next day: the interval two ahead starts at 07:00
        target = (now // DAY_S + 1) * DAY_S + SHORT_HOUR * 3600 - 1800
        w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        yield {"settings": settings, "deployment": dev.deployment, "w3": w3}


def test_islanded_interval_vetoed_island_balance_on_chain(stack: dict[str, Any]) -> None:
    settings, w3 = stack["settings"], stack["w3"]
    registry = contract_at(
        w3, "ParticipantRegistry", stack["deployment"].address("ParticipantRegistry")
    )
    ChainClient(settings.rpc_url, settings.grid_operator_key).transact(
        registry.functions.setGridMode(1)
    )
    market = build_market(settings, config=MarketConfig(interval_seconds=900))
    assert market.ledger.grid_mode() == 1
    interval = market.current_interval() + 2
    assert interval * 900 % DAY_S == SHORT_HOUR * 3600
    seller, buyer = ANVIL_KEYS[1], ANVIL_KEYS[2]
    s_addr, b_addr = Account.from_key(seller).address, Account.from_key(buyer).address
    for key, side, me, other in ((seller, 0, s_addr, b_addr), (buyer, 1, b_addr, s_addr)):
        msg = {
            "trader": me, "side": side, "intervalId": interval, "energyWh": 500,
            "pricePerKWh": 100_000, "nonce": 1, "expiry": interval * 900 + 86_400,
            "counterparty": other,
        }  # fmt: skip
        market.submit_order(msg, eip712.sign_digest(market.domain.digest("Order", msg), key))
    row = market.close_interval(interval, force=True)
    assert (row.status, row.approved_count, row.vetoed_count) == ("recorded", 0, 1)
    [trade] = market.trades(interval)
    assert (trade.verdict, trade.reason) == (8, "ISLAND_BALANCE")
    assert trade.element == "battery village-battery (bus 1)"
    assert trade.veto_limit == 0.0 and trade.veto_value is not None
    assert round(trade.veto_value, 2) == 26.93
    # on chain: the attested batch carries the veto code
    em = contract_at(w3, "EnergyMarket", stack["deployment"].address("EnergyMarket"))
    [vetoed] = em.events.TradeVetoed.get_logs(from_block=0)
    assert "0x" + bytes(vetoed["args"]["tradeId"]).hex() == trade.id
    assert int(vetoed["args"]["reason"]) == 8
    # switching back: the next interval is validated grid-connected, this one keeps its mode
    ChainClient(settings.rpc_url, settings.grid_operator_key).transact(
        registry.functions.setGridMode(0)
    )
    assert market.clearing.mode_of(interval) == 1
    assert market.clearing.mode_of(interval + 1) == 0


def test_switch_reaches_the_registered_units_which_then_carry_the_island(
    tmp_path: Path,
) -> None:
    """The whole loop with the registry's own grid-forming units: a powerhouse participant at the
    village's LV busbar (bus 1) registers a 250 kW / 800 kWh battery and a 160 kW genset as
    devices; the grid operator switches to islanded on chain; the dispatcher sends each a signed
    ModeAction over the real broker and both ack it signed; the battery reports 600 kWh, signed;
    the market then validates the 07:00 interval with those units - where the village's own
    empty battery vetoes the trade ``ISLAND_BALANCE``, the registered one carries it - and a
    validator given the same units reproduces the attested evidence hash."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    with MosquittoBroker() as broker, AnvilProcess() as anvil:
        settings = dataclasses.replace(dev_settings(tmp_path, anvil.url), network="village_island")
        dev = start_dev_stack(settings, participants=3)
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        now = int(w3.eth.get_block("latest")["timestamp"])
        target = (now // DAY_S + 1) * DAY_S + SHORT_HOUR * 3600 - 1800
        w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        registry_address = dev.deployment.address("ParticipantRegistry")
        operator = settings.grid_operator_key
        house, house_meter = Account.create(), Account.create()
        specs = [
            DeviceSpec(dev_device_key(200), kind=1, min_w=-300_000, max_w=250_000,
                       capacity_wh=800_000, soc_wh=600_000),
            DeviceSpec(dev_device_key(201), kind=5, min_w=48_000, max_w=160_000, capacity_wh=0,
                       soc_wh=0),
        ]  # fmt: skip
        battery, genset = (s.address for s in specs)
        register_participants(w3, registry_address, operator,
                              [(house.address, house_meter.address, 1)],
                              400_000, 400_000)  # fmt: skip
        register_devices(w3, registry_address, operator, [
            (s.address, house.address, 1, s.kind, s.min_w, s.max_w, s.capacity_wh) for s in specs
        ])  # fmt: skip
        log = GridModeLog(w3, registry_address)
        domain = registry_domain(dev.deployment.chain_id, registry_address)
        fleet_transport = MqttTransport(broker.url)
        fleet = DeviceFleet(
            specs, domain, ReadingDomain(dev.deployment.chain_id,
                                         dev.deployment.address("MeterReadings")),
            fleet_transport, 900, log.is_grid_operator, log.devices, lambda: chain_time(w3),
        )  # fmt: skip
        assert fleet.sync_registry() == 2
        fleet.start()
        fleet_transport.connect()
        controls = ControlStore(f"sqlite:///{tmp_path / 'control.db'}")
        transport = MqttTransport(broker.url, "island-dispatcher", clean_session=False,
                                  manual_ack=True)  # fmt: skip
        dispatcher = Dispatcher(
            controls, StoreActivations(controls), transport, domain, operator, 900,
            lambda: chain_time(w3), modes=RegistryModes(log, 900, dev.deployment.block),
        )  # fmt: skip
        dispatcher.start()
        transport.connect()
        try:
            registry = contract_at(w3, "ParticipantRegistry", registry_address)
            ChainClient(settings.rpc_url, operator).transact(registry.functions.setGridMode(1))
            assert dispatcher.step().sent == 2
            wait_for(lambda: [r.state for r in controls.actions(target // 900 + 1)]
                     == ["acknowledged", "acknowledged"], 15, "both units' acks")  # fmt: skip
            acks = {r.device: (r.ack_status, r.applied_w) for r in controls.actions()}
            assert acks == {battery: (0, 0), genset: (0, 48_000)}
            assert fleet.devices[genset].islanded(target // 900 + 1)
            # the battery's signed state of charge after the interval that just ended
            fleet.publish_readings(target // 900 - 1)
            wait_for(lambda: controls.soc(battery) is not None, 10, "the battery's report")
            market = build_market(settings, config=MarketConfig(interval_seconds=900))
            market.use_socs(controls)
            interval = market.current_interval() + 2
            assert interval * 900 % DAY_S == SHORT_HOUR * 3600
            seller, buyer = ANVIL_KEYS[1], ANVIL_KEYS[2]
            s_addr, b_addr = Account.from_key(seller).address, Account.from_key(buyer).address
            for key, side, me, other in ((seller, 0, s_addr, b_addr), (buyer, 1, b_addr, s_addr)):
                msg = {
                    "trader": me, "side": side, "intervalId": interval, "energyWh": 500,
                    "pricePerKWh": 100_000, "nonce": 1, "expiry": interval * 900 + 86_400,
                    "counterparty": other,
                }  # fmt: skip
                market.submit_order(
                    msg, eip712.sign_digest(market.domain.digest("Order", msg), key)
                )
            row = market.close_interval(interval, force=True)
            assert (row.status, row.approved_count, row.vetoed_count) == ("recorded", 1, 0)
            units = market.clearing.island_units(interval)
            assert units is not None
            assert [(u["device"], u["kind"]) for u in units] == [
                (battery, "battery"), (genset, "genset")
            ]  # fmt: skip
            assert (units[0]["soc_kwh"], units[0]["max_kw"], units[1]["min_kw"]) == (
                600.0, 250.0, 48.0
            )  # fmt: skip
            [trade] = market.trades(interval)
            [batch] = market.store.batches(interval)
            again = GridValidator("village_island", island=units_from_docs(units)).validate(
                [Trade(trade.id, trade.seller_bus, trade.buyer_bus, 2.0)], interval, 900,
                islanded=True,
            )  # fmt: skip
            assert again.evidence_hash == batch.evidence_hash
            own = GridValidator("village_island").validate(
                [Trade(trade.id, trade.seller_bus, trade.buyer_bus, 2.0)], interval, 900,
                islanded=True,
            )  # fmt: skip
            assert own.verdicts[0].reason.name == "ISLAND_BALANCE"
        finally:
            dispatcher.stop()
            transport.close()
            fleet_transport.close()
            controls.close()
