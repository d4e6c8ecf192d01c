"""A short `tegrid demo` (2 intervals, congested midday) through every real component."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TEGRID = Path(sys.executable).with_name("tegrid")
PHYSICAL = {"VOLTAGE_HIGH", "VOLTAGE_LOW", "LINE_OVERLOAD", "TRAFO_OVERLOAD"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_demo_short_congested_day_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(TEGRID), "demo", "--hours", "0.5", "--prosumers", "16", "--start-hour", "13",
            "--seed", "7", "--reports", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "160"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    folder = folders[0]
    summary = json.loads((folder / "summary.json").read_text())

    assert all(summary["checks"].values()), summary["checks"]
    assert len(summary["intervals"]) == 2
    assert summary["prosumers"] == 16
    approved = sum(i["approved"] for i in summary["intervals"])
    vetoed = sum(i["vetoed"] for i in summary["intervals"])
    assert summary["totals"]["trades approved"] == approved > 0
    assert summary["totals"]["trades vetoed"] == vetoed >= 1
    reasons = {r for i in summary["intervals"] for r in i["vetoes_by_reason"]}
    assert reasons & PHYSICAL, reasons
    # every member reports once per interval unless its reading went missing
    assert 0 < summary["totals"]["readings on chain"] <= 2 * 16
    # conservation, per participant: what sellers received is what buyers paid
    received = sum(p["received"] for p in summary["participants"])
    paid = sum(p["paid"] for p in summary["participants"])
    assert received == paid > 0
    for interval in summary["intervals"]:
        assert interval["approved_state_within_limits"]
        assert interval["gas"]["record"] > 0 and interval["gas"]["settle"] > 0

    # the API and the keeper (and the oracle, over Mosquitto) ran as processes of their own
    layout = summary["processes"]
    assert "backend.cli.main serve --dev --no-dev-stack --no-scheduler" in layout["api"]
    assert "backend.cli.main keeper" in layout["keeper"]
    if layout.get("broker") == "mosquitto":
        assert "backend.cli.main oracle" in layout["oracle"]
    assert (folder / "report.html").read_text().count("<img") == 5
    for png in ("prices_volumes", "verdicts", "grid_limits", "participants", "gas"):
        data = (folder / f"{png}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png
    assert "PASS" in result.stdout and "FAIL" not in result.stdout
