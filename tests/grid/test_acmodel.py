"""The AC engine under the validator: the kept lightsim2grid grid model on larger grids, KLU, the
sensitivity columns computed together, and the chunked multi-column solves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.linalg import splu

from bench.naive import PandapowerChecker, injections_of
from grid import GridValidator, Trade
from grid.acmodel import ACModel, Linearization, jacobian_at
from grid.klu import KLUFactor, factorize


@pytest.fixture(scope="module")
def kerber() -> GridValidator:
    return GridValidator("kerber_vorstadt", reuse=False)


def _kerber_model() -> ACModel:
    model = GridValidator("kerber_vorstadt", reuse=False)._base(None, 900).model
    assert model is not None and model._kept is not None
    return model


def test_kerber_kept_grid_solves_like_the_plain_solver(kerber: GridValidator) -> None:
    validator = kerber
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


@pytest.mark.parametrize("network", ["cigre_lv", "case33bw", "kerber_vorstadt"])
def test_columns_equal_whichever_columns_computed_together(network: str) -> None:
    # Sessions compute columns in groups that depend on the trades ahead, which differ between
    # a prefix run and a longer one: the values must not depend on the grouping.
    validator = GridValidator(network, reuse=False)
    model = validator._base(None, 900).model
    assert model is not None
    buses = validator.load_buses()
    together = Linearization(model, model.V0)
    together.prepare(buses)
    single = Linearization(model, model.V0)
    grouped = Linearization(model, model.V0)
    rng = np.random.default_rng(3)
    order = [int(b) for b in rng.permutation(buses)]
    while order:
        size = int(rng.integers(1, 20))
        grouped.prepare(order[:size])
        order = order[size:]
    for bus in buses:
        assert np.array_equal(together.column(bus).packed, single.column(bus).packed)
        assert np.array_equal(together.column(bus).packed, grouped.column(bus).packed)


def test_kept_grid_answer_independent_of_earlier_solves() -> None:
    # Prefix reuse resumes a session on a model that has seen other solves than a from-scratch
    # run's: each answer must depend on its own injections and start alone, bit for bit.
    fresh, used = _kerber_model(), _kerber_model()
    rng = np.random.default_rng(7)
    pq = fresh.pq

    def nudged(base: np.ndarray, scale_kw: float) -> np.ndarray:
        S = base.copy()
        rows = rng.choice(pq, size=6, replace=False)
        S[rows] += rng.uniform(-scale_kw, scale_kw, size=6) / 1000.0 / fresh.base_mva
        return S

    probes = [nudged(fresh.Sbus0, 30.0) for _ in range(4)]
    history: list[np.ndarray] = []
    for probe in probes:
        # Injections within lightsim2grid's 1e-7 MW of the probe's (it would keep the old
        # value), and solves that fail (KLU is analysed anew after them).
        history += [probe + 1e-12 * (rng.random(len(probe)) - 0.5), nudged(fresh.Sbus0, 30.0)]
        history.append(nudged(fresh.Sbus0, 5000.0))
    failed = 0
    for S in history:
        failed += used.solve(S, used.V0) is None
        for probe in probes:
            got, want = used.solve(probe, used.V0), fresh.solve(probe, fresh.V0)
            assert got is not None and want is not None and np.array_equal(got, want)
            J_got, J_want = used.last_jacobian(), fresh.last_jacobian()
            assert J_got is not None and J_want is not None
            assert (J_got != J_want).nnz == 0
    assert failed > 0 and used._last_kept


@pytest.mark.parametrize("network", ["cigre_lv", "case33bw", "kerber_vorstadt"])
def test_factorize_klu_solves_like_superlu(network: str) -> None:
    model = GridValidator(network, reuse=False)._base(None, 900).model
    assert model is not None
    J = jacobian_at(model, model.V0)
    factor = factorize(J)
    assert isinstance(factor, KLUFactor) and factor.shape == J.shape
    reference = splu(J.tocsc())
    rng = np.random.default_rng(1)
    b = rng.standard_normal(J.shape[0])
    block = np.asfortranarray(rng.standard_normal((J.shape[0], 5)))
    b_copy, block_copy = b.copy(), block.copy()
    x, X = factor.solve(b), factor.solve(block)
    assert np.allclose(x, reference.solve(b), rtol=1e-9, atol=1e-12)
    assert np.allclose(X, reference.solve(block), rtol=1e-9, atol=1e-12)
    for k in range(5):  # each column of a block exactly as alone
        assert np.array_equal(X[:, k], factor.solve(block[:, k]))
    assert np.array_equal(b, b_copy) and np.array_equal(block, block_copy)  # inputs untouched


def test_factorize_singular_matrix_raises() -> None:
    singular = sparse.csc_matrix(np.array([[1.0, 2.0], [2.0, 4.0]]))
    with pytest.raises(RuntimeError):
        factorize(singular)
