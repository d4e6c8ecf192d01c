"""The AC engine under the validator: the kept lightsim2grid grid model on larger grids, the
sensitivity columns computed together, and the chunked multi-column solves."""

from __future__ import annotations

import numpy as np
import pytest

from grid import GridValidator, Trade, acmodel
from grid.acmodel import Linearization
from grid.naive import PandapowerChecker, injections_of


def test_kerber_kept_grid_solves_like_the_plain_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    # Off by default (its last digits depend on history, see KEPT_GRID_MIN_BUSES); still exact.
    monkeypatch.setattr(acmodel, "KEPT_GRID_MIN_BUSES", 150)
    validator = GridValidator("kerber_vorstadt", reuse=False)
    model = validator._base(None, 900).model
    assert model is not None and model._kept is not None and model._kept.jacobian_ok
    rng = np.random.default_rng(5)
    for _ in range(5):
        S = model.Sbus0.copy()
        rows = rng.choice(model.pq, size=4, replace=False)
        S[rows] += rng.uniform(-0.03, 0.03, size=4) / model.base_mva
        kept, plain = model.solve(S, model.V0), model._solve_plain(S, model.V0)
        assert kept is not None and plain is not None
        assert float(np.max(np.abs(kept - plain))) < 1e-8
        J = model.last_jacobian()
        assert J is not None and J.shape == (2 * len(model.pq), 2 * len(model.pq))
    # a reactive change is not what the kept model carries: the plain solver answers
    S = model.Sbus0.copy()
    S[model.pq[3]] += 0.001j
    assert model.solve(S, model.V0) is not None and not model._last_kept

    buses = validator.load_buses()
    trades = [
        Trade(f"k{i}", int(s), int(b), 30.0)
        for i, (s, b) in enumerate(rng.choice(buses, size=(60, 2)))
    ]
    result = validator.validate(trades)
    approved = [t for t, v in zip(trades, result.verdicts, strict=True) if v.approved]
    checker = PandapowerChecker(validator.base_net(), validator.limit_set())
    assert checker.check(injections_of(approved), strict=False) is None


def test_columns_together_equal_columns_one_by_one(cigre: GridValidator) -> None:
    model = cigre._base(None, 900).model
    assert model is not None and model._kept is None  # small grid: the plain solver
    buses = cigre.load_buses()
    together = Linearization(model, model.V0)
    together.prepare(buses)
    single = Linearization(model, model.V0)
    for bus in buses:
        assert np.array_equal(together.column(bus).packed, single.column(bus).packed)
