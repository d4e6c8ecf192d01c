"""The dashboard's handling of the API's decimal strings (``backend/api/static/util.js``), run in
Node as the browser runs the module: amounts typed by a person become exact base units, base
units are shown exactly, and prices sort as integers past 2^53."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from backend.paths import REPO_ROOT

UTIL = REPO_ROOT / "backend" / "api" / "static" / "util.js"


def _run(expression: str) -> Any:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    script = (
        f"const u = await import({json.dumps(UTIL.as_uri())});\n"
        f"process.stdout.write(JSON.stringify({expression}));\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_base_units_of_typed_amounts_are_exact() -> None:
    typed = ["0.12", "1", "1.", ".5", " 2.5 ", "0.000001", "12345678901234.123456",
             "0.1234567", "", ".", "abc", "-1", "1e3", "0x10"]  # fmt: skip
    got = _run(f"{json.dumps(typed)}.map(u.baseUnits)")
    assert got == ["120000", "1000000", "1000000", "500000", "2500000", "1",
                   "12345678901234123456", None, None, None, None, None, None, None]  # fmt: skip


def test_tokens_shows_base_units_exactly() -> None:
    cases = [["300000", 4], ["120000", 6], ["1", 6], ["1", 4], ["0", 2], ["123456789", 4],
             ["12345678901234123456", 6]]  # fmt: skip
    got = _run(f"{json.dumps(cases)}.map(([v, d]) => u.tokens(v, d))")
    assert got == ["0.3", "0.12", "0.000001", "0", "0", "123.4567",
                   "12,345,678,901,234.123456"]  # fmt: skip
    assert _run("[u.tokens(null), u.tokens(undefined)]") == ["\N{EM DASH}", "\N{EM DASH}"]


def test_prices_sort_as_integers_past_2_53() -> None:
    prices = ["30", "4", str(2**53 + 1), str(2**53), "100000"]
    assert _run(f"{json.dumps(prices)}.sort(u.compareUnits)") == [
        "4", "30", "100000", str(2**53), str(2**53 + 1),
    ]  # fmt: skip
