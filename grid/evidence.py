"""Evidence hash: sha256 over canonical inputs and the rounded AC result, so anyone can recompute
it.

Canonical JSON (sorted keys, no spaces) of::

    {"schema": "tegrid-grid-evidence-v1", "network": <fingerprint>, "base_state": {...},
     "limits": {...}, "trades": [[id, seller_bus, buyer_bus, p_kw], ...],
     "verdicts": [[id, approved, reason_code, element, value, limit], ...],
     "ac_result": {"vm_pu": [...], "loading_percent": [...]}}

Verdict values and voltages are rounded to 5 decimals, loadings to 3 (well above solver noise).

With flexibility activations the document is schema ``tegrid-grid-evidence-v2``: the same keys
plus ``"activations": [[id, bus, p_kw, before], ...]`` and ``"activation_verdicts"`` (the verdict
rows of the activations, in their order). Without activations it is the v1 document exactly, so
every hash made before activations existed still verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from grid.verdicts import Activation, Limits, Trade, Verdict

SCHEMA = "tegrid-grid-evidence-v1"
SCHEMA_ACTIVATIONS = "tegrid-grid-evidence-v2"


def _r(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    rounded = round(float(value), digits)
    return 0.0 if rounded == 0 else rounded


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    """``[_r(x, digits) for x in values]``, faster (``or 0.0`` turns -0.0 into 0.0 as ``_r``)."""
    return [round(x, digits) or 0.0 for x in np.asarray(values, dtype=float).tolist()]


def hash_array(values: np.ndarray, digits: int = 9) -> str:
    """sha256 of rounded values (for the base-state injections)."""
    blob = json.dumps(_rounded(values, digits), separators=(",", ":"))
    return "0x" + hashlib.sha256(blob.encode()).hexdigest()


def evidence_hash(
    *,
    network: str,
    base_state: dict[str, object],
    limits: Limits,
    trades: Sequence[Trade],
    verdicts: Sequence[Verdict],
    vm_pu: np.ndarray,
    loading_percent: np.ndarray,
    activations: Sequence[Activation] = (),
    activation_verdicts: Sequence[Verdict] = (),
) -> str:
    document: dict[str, object] = {
        "schema": SCHEMA,
        "network": network,
        "base_state": base_state,
        "limits": limits.to_dict(),
        "trades": [
            [t.id, int(t.seller_bus), int(t.buyer_bus), repr(float(t.p_kw))] for t in trades
        ],
        "verdicts": _verdict_rows(verdicts),
        "ac_result": {
            "vm_pu": _rounded(vm_pu, 5),
            "loading_percent": _rounded(loading_percent, 3),
        },
    }
    if activations:
        document["schema"] = SCHEMA_ACTIVATIONS
        document["activations"] = [
            [a.id, int(a.bus), repr(float(a.p_kw)), a.before] for a in activations
        ]
        document["activation_verdicts"] = _verdict_rows(activation_verdicts)
    blob = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "0x" + hashlib.sha256(blob.encode()).hexdigest()


def _verdict_rows(verdicts: Sequence[Verdict]) -> list[list[object]]:
    return [
        [v.id, v.approved, int(v.reason), v.element, _r(v.value, 5), _r(v.limit, 5)]
        for v in verdicts
    ]
