"""``tegrid demo``: a community day through every real component, then a report.

The embedded stack is brought up here: Anvil (its own port, state in the run folder), the contracts,
the market API (uvicorn in a thread), the MQTT broker (Mosquitto when installed, else the in-process
transport, said so), the oracle daemon, the meter simulator and the settlement keeper. Members
connect through the plug-and-play path (signed ``ConnectionRequest`` over HTTP, hosting capacity
checked by the Neural Grid), post signed orders over HTTP as real clients would, and the chain
clock is moved forward interval by interval (``evm_setNextBlockTimestamp``) instead of waiting.

Interval pipeline (what a real day looks like, compressed): while interval ``t-1`` runs, orders for
``t`` are posted and its gate is closed (clear, validate, record); when ``t-1`` ends its meters
publish, the oracle relays the readings and the keeper settles it.

The parts: ``config`` (settings, constants), ``stack`` (start-up), ``clients`` (signing, HTTP),
``day`` (the members and one interval's steps), ``profile`` (stage times, CPU), ``checks`` (the
summary and its six checks), ``analysis`` (binding limits, energy balance, delivery, with their
definitions), ``report`` (the files). This module runs the day's pipeline.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backend.demo.checks import day_span, print_summary, summarize
from backend.demo.config import SETTLEMENT_DELAY_S, DemoConfig, DemoError
from backend.demo.day import DemoDay
from backend.demo.report import write_report
from backend.devtools.clock import chain_now
from grid.island import named_island
from grid.validator import GridValidator
from grid.verdicts import Limits

__all__ = ["Demo", "DemoConfig", "DemoError", "print_summary"]


class Demo(DemoDay):
    """One demo run; :meth:`run` returns the summary and the report folder."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        super().__init__(config, console)
        self.report_dir = config.reports_dir / self.stamp

    def run(self) -> tuple[dict[str, Any], Path]:
        cfg = self.cfg
        started = time.perf_counter()
        if cfg.islanded and named_island(cfg.network) is None:
            raise DemoError(
                f"--islanded needs a network with grid-forming units (village_island); "
                f"{cfg.network!r} has none"
            )
        try:
            self.console.print(
                f"[bold]tegrid demo[/]: {cfg.prosumers} prosumers on {cfg.network}, "
                f"{cfg.intervals} intervals of {cfg.interval_minutes} min from "
                f"{cfg.start_hour:04.1f} h, seed {cfg.seed}, voltage limits "
                f"{cfg.vm_min_pu:g}-{cfg.vm_max_pu:g} pu"
            )
            self._start_chain()
            self._deploy()
            # the service processes start first: their imports overlap the market's set-up
            self._start_iot()
            self._start_keeper()
            self._start_market()
            self.grid_validator = GridValidator(
                cfg.network, limits=Limits(vm_min_pu=cfg.vm_min_pu, vm_max_pu=cfg.vm_max_pu)
            )
            for warning in self.grid_validator.facts.warnings:
                self.console.print(
                    f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True
                )
            self._connect_members()
            self._oracle_ready()
            s = cfg.interval_seconds
            now = chain_now(self.w3)
            day = (now // 86400 + 1) * 86400
            first = (day + int(cfg.start_hour * 3600)) // s
            last = first + cfg.intervals - 1
            # islanded from the second interval (the first, when there is one only)
            self.island_from = min(first + 1, last) if cfg.islanded else None
            self._set_time((first - 1) * s + 1)
            day_start = datetime.fromtimestamp(first * s, UTC)
            day_end = datetime.fromtimestamp((last + 1) * s, UTC)
            self.console.print(f"simulated day {day_span(day_start, day_end)} (chain time)")
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            ) as progress:
                task = progress.add_task("intervals", total=cfg.intervals + 1)
                cpu_started = self._cpu_seconds()
                pipeline_started = time.perf_counter()
                posted: dict[int, int] = {}
                relaying: list[int] = []  # intervals published, not yet seen on chain
                settling: list[int] = []  # intervals with trades, not yet seen settled
                with self.stage("orders over HTTP (sign + POST /orders)"):
                    posted[first] = self._post_orders(first)
                with self.stage("flexibility offers over HTTP (sign + POST /flex)"):
                    self._post_offers(first)
                # At chain time just inside interval c: the server clears c+1 (Neural Grid,
                # recordTrades) while the meters publish c-1's readings and the members post their
                # orders for c+2, and the oracle relays c-1; the keeper (its own process) settles
                # what is in.
                # The driver waits for an interval's readings only before the clock would come
                # within half an interval of its settlement deadline (SETTLEMENT_DELAY_S after its
                # end: with 15 min intervals, c-2's before the clock leaves c).
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="closer") as closer:
                    for c in range(first - 1, last + 1):
                        label = datetime.fromtimestamp((c + 1) * s, UTC).strftime("%H:%M")
                        clearing = None
                        if c + 1 == self.island_from:
                            self._switch_to_island(c + 1, label)
                        if c + 1 <= last:
                            progress.update(task, description=f"interval {label}: clearing")
                            clearing = closer.submit(self._timed_clear, c + 1)
                        if c - 1 >= first:
                            with self.stage("meters publish (sign + MQTT)"):
                                self._publish_readings(c - 1)
                        if clearing is not None:
                            if c + 2 <= last:
                                with self.stage("orders over HTTP (sign + POST /orders)"):
                                    posted[c + 2] = self._post_orders(c + 2)
                                with self.stage("flexibility offers over HTTP (sign + POST /flex)"):
                                    self._post_offers(c + 2)
                            with self.stage("waiting for the clearing (after the orders)"):
                                cleared = clearing.result()
                            self._plan_delivery(c + 1, cleared["trades"])
                            self.records.append(
                                {"t": c + 1, "label": label, "posted": posted[c + 1], **cleared}
                            )
                        if c - 1 >= first:
                            relaying.append(c - 1)
                        # an interval whose trades were all vetoed (an island that cannot
                        # balance itself) has nothing to settle: the keeper never settles it
                        if clearing is not None and any(tr["approved"] for tr in cleared["trades"]):
                            settling.append(c + 1)
                        # interval c ends; first make sure the clock does not come near the
                        # settlement deadline of an interval whose readings are still relayed
                        # (the meters published them in time; the oracle must land them)
                        clock = (c + 1) * s + 1
                        if clearing is not None and cleared["trades"]:
                            # the chain refuses c+1's batch after its gate closure (its start)
                            with self.stage("recorder lands the batch before the gate"):
                                self._wait_recorded(c + 1)
                        with self.stage("oracle relays readings (broker -> receipt)"):
                            while relaying and self._deadline(relaying[0]) <= clock + s // 2:
                                self._wait_device_readings(relaying[0])
                                self._wait_readings(relaying.pop(0))
                        # ... nor past an interval's reclaimAfter (deadline + delay) before the
                        # keeper settled it: the chain would only let its escrow be reclaimed
                        with self.stage("keeper settles before reclaimAfter"):
                            while settling and self._reclaim_after(settling[0]) <= clock + s // 2:
                                self._wait_interval_settled(settling.pop(0))
                        # the devices must have c's control actions before c ends
                        with self.stage("control actions reach the devices"):
                            self._wait_actions(c)
                        self._set_time(clock)
                        progress.advance(task)
                with self.stage("meters publish (sign + MQTT)"):
                    self._publish_readings(last)
                    self.meter_transport.flush()
                with self.stage("oracle relays readings (broker -> receipt)"):
                    for t in [*relaying, last]:
                        self._wait_device_readings(t)
                        self._wait_readings(t)
                with self.stage("keeper settles (waiting for the last intervals)"):
                    self._wait_settled(missing_deadline=False)
                # readings that never came count as zero once an interval's settlement deadline
                # passes: the clock goes from one open interval's deadline to the next, each
                # settled before the next step (one jump to the last deadline passed the
                # reclaimAfter of the interval two before it, whose escrow was then reclaimed)
                for t in settling:
                    self._set_time(self._deadline(t) + 2)
                    with self.stage("keeper settles (waiting for the last intervals)"):
                        self._wait_interval_settled(t)
                self._set_time((last + 1) * s + SETTLEMENT_DELAY_S + 2)
                with self.stage("keeper settles (waiting for the last intervals)"):
                    self._wait_settled(missing_deadline=True)
                    self._wait_activations_closed()
                self.pipeline_s = time.perf_counter() - pipeline_started
                self.cpu_s = {
                    k: round(v - cpu_started.get(k, 0.0), 2) for k, v in self._cpu_seconds().items()
                }
            summary = summarize(self, first, last, time.perf_counter() - started)
        finally:
            self.stack.close()
        write_report(summary, self.report_dir)
        return summary, self.report_dir
