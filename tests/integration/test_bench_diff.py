"""bench/bench_diff.py runs end to end on a tiny disk, so the benchmark cannot rot.

ckpt only (restic and borg are not needed here), a disk of 600 blocks (2.3 MiB) with 2% of them
rewritten, through the hidden ``--blocks``; every command a subprocess, a few seconds. Speed is
the benchmark's to measure at 8 GiB. What is checked: the run succeeds, which means ckpt diff named
exactly the rewritten bytes and the --changed-blocks capture it drove restored byte-identical
(the benchmark exits 1 otherwise), its JSON holds those figures, and the scratch is gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_diff.py"
CKPT = Path(sys.executable).with_name("ckpt")


def test_the_diff_benchmark_runs_and_checks_what_it_measures(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--blocks", "600", "--change-pct", "2", "--tools", "ckpt",
         "--work", str(work), "--ckpt", str(CKPT), "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    ckpt = figures["results"]["ckpt"]
    assert figures["rewritten"] == 12
    assert ckpt["changed_bytes"] == 12 * 4096 and ckpt["checked"] is True
    assert 1 <= ckpt["extents"] <= 12
    assert "diff" in done.stdout and "--changed-blocks" in done.stdout
    assert not work.exists()
