"""Shared validators (network loading and base states are the slow part, so build them once)."""

from __future__ import annotations

import pytest

from grid import GridValidator, Limits


@pytest.fixture(scope="session")
def cigre() -> GridValidator:
    return GridValidator("cigre_lv")


@pytest.fixture(scope="session")
def case33() -> GridValidator:
    return GridValidator("case33bw")


@pytest.fixture(scope="session")
def case33_strict() -> GridValidator:
    return GridValidator("case33bw", limits=Limits(vm_min_pu=0.95))
