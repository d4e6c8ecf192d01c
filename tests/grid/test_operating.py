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


def test_prediction_from_a_point_is_its_first_order_move(cigre: GridValidator) -> None:
    """``predict`` (the remedy search's first point for a candidate): values moved along the
    point's sensitivities, the columns asked for kept, no AC solve."""
    buses = cigre.load_buses()
    op = cigre.operating_point({}, buses, INTERVAL, SECONDS)
    assert op is not None
    guess = op.predict({16: 30.0, 2: -30.0}, [2, 16, 18])
    dp = np.array([{16: 30.0, 2: -30.0}.get(b, 0.0) for b in buses])
    assert guess.predicted and guess.violation is None and guess.buses == (2, 16, 18)
    assert np.array_equal(guess.vm_pu, op.vm_pu + op.dvm @ dp)
    assert np.allclose(guess.current, op.current + op.dcurrent @ dp, rtol=0, atol=1e-12)
    assert np.array_equal(guess.dvm, op.dvm[:, [buses.index(b) for b in (2, 16, 18)]])
    assert guess.injections_kw.tolist() == [-30.0, 30.0, 0.0]


def test_islanded_point_carries_the_masters_power_and_its_sensitivities() -> None:
    """village_island at 07:00 (26.93 kW short): the master's power is the validator's, and its
    sensitivity per kW injected at each bus matches a 1 kW AC step to 1e-3 (-1 at its own bus;
    elsewhere below -1 by the losses the injection saves). ``constraints`` bounds it both ways."""
    village = GridValidator("village_island")
    interval = 20_000 * 96 + 28
    buses = [1, 40, 60, 3]
    op = village.operating_point({}, buses, interval, SECONDS, islanded=True)
    assert op is not None and op.forming_kw is not None and op.dforming is not None
    assert op.forming_kw == pytest.approx(village.island_state(interval).forming_kw, abs=1e-9)
    assert op.forming_limits_kw == (-300.0, 0.0)
    assert op.violation is not None and op.violation.reason.name == "ISLAND_BALANCE"
    for k, bus in enumerate(buses):
        step = village.operating_point({bus: 1.0}, buses, interval, SECONDS, islanded=True)
        assert step is not None and step.forming_kw is not None
        assert step.forming_kw - op.forming_kw == pytest.approx(op.dforming[k], abs=1e-3)
    assert op.dforming[0] == -1.0 and all(d < -1.0 for d in op.dforming[1:])
    A, b, labels, _ = op.constraints(np.full(4, 50.0), 1e-3, 0.5)
    assert labels[-2:] == ["island high", "island low"]
    assert np.array_equal(A[-1], -A[-2]) and np.array_equal(A[-2], op.dforming)
    assert b[-2] == pytest.approx(0.0 - 0.1 - op.forming_kw)  # its limit less the 0.1 kW margin
    # Grid-connected, no master: no such rows.
    connected = village.operating_point({}, buses, interval, SECONDS)
    assert connected is not None and connected.forming_kw is None
