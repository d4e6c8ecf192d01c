"""Order book, clearing and batch recording of the tegrid market (see ``service.Market``)."""

from backend.market.auction import BookOrder, Candidate, Clearing, Decision, clear
from backend.market.errors import MarketError, OrderRejectedError
from backend.market.events import EventBus
from backend.market.service import Market, MarketConfig
from backend.market.store import Store

__all__ = [
    "BookOrder",
    "Candidate",
    "Clearing",
    "Decision",
    "EventBus",
    "Market",
    "MarketConfig",
    "MarketError",
    "OrderRejectedError",
    "Store",
    "clear",
]
