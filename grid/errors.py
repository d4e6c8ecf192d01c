"""Exceptions of the grid package: one root, subclasses that also inherit the builtin they
replace."""

from __future__ import annotations


class GridError(Exception):
    """Root of every error the grid package raises on purpose."""


class UnknownNetworkError(GridError, ValueError):
    """A network name is neither a known name, a SimBench code nor a readable pandapower JSON
    file."""


class NetworkFileError(GridError, ValueError):
    """A pandapower JSON file exists but cannot be read as a network."""


class TradeInputError(GridError, ValueError):
    """A trade list is malformed (not a list of objects with id, seller_bus, buyer_bus, p_kw)."""


class BaseStateError(GridError, RuntimeError):
    """The base state of an interval does not converge, so nothing can be validated against it."""


class UnmodeledElementError(GridError, ValueError):
    """A network holds in-service elements the validator's AC model does not reproduce."""
