"""bench/bench_index.py runs end to end on a tiny index, so the benchmark cannot rot.

8,192 entries in packs of 512, every candidate whose package is installed, a short
concurrency phase; a few seconds. The figures are not checked (speed is measured by the
benchmark, never by tests), only that every candidate built, found every present id and no
absent one (the script asserts that itself), and printed its column.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_index.py"


def test_bench_index_runs_end_to_end(tmp_path: Path) -> None:
    if importlib.util.find_spec("numpy") is None:
        pytest.skip("numpy is not installed (bench/bench_index.py needs it)")
    names = ["sqlite", "runs", "hashpart"]
    if importlib.util.find_spec("lmdb") is not None:
        names += ["lmdb", "lmdb-sorted"]
    out = tmp_path / "index.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCH), "--entries", "8192", "--per-pack", "512"),
            *("--batches", "2", "--concurrency-s", "0.5", "--candidates", ",".join(names)),
            *("--work", str(tmp_path / "work"), "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| build s |" in proc.stdout
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(names)
    for name, (res,) in results.items():
        assert res["entries"] == 8192, name
        assert res["bytes_per_entry"] > 0, name
        assert res["conc_errors"] == 0, (name, proc.stderr)
    assert not any((tmp_path / "work").iterdir())
