"""bench/bench_scale.py runs end to end on a tiny disk, so the benchmark cannot rot.

One size of 300 blocks (1.2 MiB), ckpt only (restic and borg are not needed here), through
the hidden ``--blocks``; about 5 s, every command a subprocess.  The figures themselves are not
checked (speed is measured by the benchmark, never by tests), only that every command ran,
the restore matched the image and the scratch directory is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"
CKPT = Path(sys.executable).with_name("ckpt")
COMMANDS = {
    "startup",
    "create",
    "incr-full",
    "incr-cbt",
    "restore",
    "restore-vhdx",
    "export",
    "verify",
    "stats",
    "gc",
    "tree",
    "chain",
    "files",
    "log",
}


def test_the_scale_benchmark_runs_every_command_and_cleans_its_scratch(tmp_path: Path) -> None:
    if not CKPT.exists():
        pytest.skip(f"no ckpt console script next to {sys.executable}")
    work, out = tmp_path / "work", tmp_path / "scale.json"
    args = ["--blocks", "300", "--tools", "ckpt", "--store-prefill", "0.002", "--deep", "5"]
    args += ["--ckpt", str(CKPT)]
    r = subprocess.run(
        [sys.executable, str(BENCH), *args, "--work", str(work), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "peak RSS MiB" in r.stdout and "wall s" in r.stdout
    assert not work.exists()
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert run["blocks"] == 300 and run["image_bytes"] == 300 * 4096
    figures = run["ckpt"]
    assert figures.keys() >= COMMANDS
    assert figures["restore"]["identical"] is True
    assert figures["restore-5-layers"]["identical"] is True
    assert all(figures[c]["maxrss_mib"] > 0 and figures[c]["wall_s"] > 0 for c in COMMANDS)
    assert doc["store_prefill"]["logical_bytes"] > 0
    if os.path.exists("/proc/self/io"):
        assert figures["incr-full"]["rchar"] >= run["image_bytes"]
