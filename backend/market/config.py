"""The market's tunables (``TEGRID_*`` settings feed them through ``factory.build_market``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MarketConfig:
    interval_seconds: int = 900
    gate_lead_seconds: int = 60  # gate closes this long before the interval starts
    # ... and at least this long before the chain's gate closure (``gateLeadSeconds`` of the
    # contract), so that clearing and recording fit before the chain refuses the batches
    clearing_window_s: int = 30
    max_intervals_ahead: int = 96 * 7
    participant_ttl_s: float = 5.0
    balance_ttl_s: float = 2.0
    expiry_margin_s: int = 30  # orders expiring this close to recording are left out of a batch
    # Bounded work per interval: live orders one trader may have for one interval.
    max_orders_per_trader_interval: int = 64
    # A batch is planned to use at most this share of the block gas limit (by the measured model).
    batch_gas_share: float = 0.5
    # Trades in the batch that measures the gas rate when nothing has been measured yet.
    probe_trades: int = 32
    # A failed batch is retried after retry_base_s, doubling per failure up to retry_max_s.
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    # An interval whose batch would revert (a participant acted after the clearing) is cleared
    # again at most this often while nothing of it is on chain.
    max_reclears: int = 2
    # The DSO service's budget per interval, token base units (0: off; backend.market.remedy).
    dso_flex_budget: int = 0
