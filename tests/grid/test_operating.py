"""Operating points: the AC state under extra injections and the limits linearized there, checked
against the validator's own AC solves."""

from __future__ import annotations

import numpy as np

from grid import GridValidator

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
