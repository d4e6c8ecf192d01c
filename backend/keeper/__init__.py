"""Settlement keeper: settles each interval with recorded trades as soon as every trader's reading
is in, or at the settlement deadline (missing readings then count as zero). See
:mod:`backend.keeper.keeper`.
"""

from __future__ import annotations

from backend.keeper.errors import KeeperError
from backend.keeper.keeper import IntervalBook, SettlementKeeper

__all__ = ["IntervalBook", "KeeperError", "SettlementKeeper"]
