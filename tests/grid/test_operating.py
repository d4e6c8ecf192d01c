"""Operating points: the AC state under extra injections and the limits linearized there, checked
against the validator's own AC solves."""

from __future__ import annotations

import numpy as np
import pytest

from grid import GridValidator
from grid.acmodel import jacobian_at, jacobian_by_slicing

SECONDS = 900
INTERVAL = (86400 * 1000 + 13 * 3600) // SECONDS


def test_linearized_limits_predict_the_ac_state(cigre: GridValidator) -> None:
    buses = cigre.load_buses()
    op = cigre.operating_point({}, buses, INTERVAL, SECONDS)
    assert op is not None and op.feasible
    base = cigre.base_state(INTERVAL, SECONDS)
    assert float(op.vm_pu.max()) == base.vm_max_pu
    move = {16: 30.0, 2: -30.0}  # 30 kW from the feeder end to the transformer
    dp = np.array([move.get(b, 0.0) for b in buses])
    moved = cigre.operating_point(move, buses, INTERVAL, SECONDS)
    assert moved is not None
    # A first-order prediction: voltages within 1e-3 pu, branch currents (percent of rating)
    # within 0.5 points for a 30 kW move across the feeder (second-order terms: losses).
    assert np.abs(op.vm_pu + op.dvm @ dp - moved.vm_pu).max() < 1e-3
    assert np.abs(op.current + op.dcurrent @ dp - moved.current).max() < 0.5
    assert np.allclose(moved.injections_kw, dp)
    # The rows at the moved point hold its own values: A p - b = value - (limit - margin).
    A, b, labels, is_cut = moved.constraints(np.full(len(buses), 50.0), 1e-3, 0.5)
    k = labels.index("bus 16 high")
    assert not is_cut[k] and is_cut[labels.index("trafo 0")]
    i = moved.bus_labels.index("bus 16")
    assert abs(A[k] @ moved.injections_kw - b[k] - (moved.vm_pu[i] - moved.vmax[i] + 1e-3)) < 1e-12


def test_no_solution_is_none(cigre: GridValidator) -> None:
    assert cigre.operating_point({16: 50_000.0}, [16], INTERVAL, SECONDS) is None


@pytest.mark.parametrize(
    "network", ["cigre_lv", "kerber_vorstadt", "case_ieee30", "example_multivoltage"]
)
def test_jacobian_from_its_pattern_is_pandapowers(network: str) -> None:
    """``jacobian_at`` (Ybus entries mapped once into CSC order) gives pandapower's sliced
    ``dSbus_dV`` products: the same sparsity pattern and values to the last bits (the order of
    floating-point operations differs), at the base state and at a perturbed point; on a network
    with PV buses (case_ieee30) and three voltage levels (example_multivoltage) too."""
    model = GridValidator(network)._base(None, SECONDS).model
    assert model is not None
    rng = np.random.default_rng(7)
    for V in (model.V0, model.V0 * (1 + 0.02 * rng.standard_normal(len(model.V0)))):
        fast, ref = jacobian_at(model, V), jacobian_by_slicing(model, V)
        ref.sort_indices()
        assert np.array_equal(fast.indptr, ref.indptr)
        assert np.array_equal(fast.indices, ref.indices)
        scale = np.abs(ref.data).max()
        assert np.abs(fast.data - ref.data).max() <= 1e-13 * scale
