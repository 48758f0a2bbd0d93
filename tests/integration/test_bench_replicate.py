"""bench/bench_replicate.py runs end to end on a tiny disk, so the benchmark cannot rot.

ckpt only (restic and borg are not needed here), a disk of 400 blocks (1.6 MiB) with 2% of them
rewritten, through the hidden ``--blocks``; every command a subprocess, about 15 s. Speed and
the 1.1x target are the benchmark's to measure at 4 GiB, not the tests' at 8 changed blocks.
What is checked: the first run is a copy,
the incremental one sends at least what the primary newly stored and less than the first copy,
the run after it sends nothing, the replica's c1 restores to the changed image, a first copy
killed (SIGKILL) and run again sends no complete file twice, and the scratch directory is gone.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_replicate.py"
CKPT = Path(sys.executable).with_name("ckpt")


def _bench_module() -> ModuleType:
    sys.path.insert(0, str(BENCH.parent))  # it imports bench_content by path, as it runs
    try:
        spec = importlib.util.spec_from_file_location("bench_replicate", BENCH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH.parent))


def test_the_changed_image_differs_from_the_base_in_exactly_the_rewritten_blocks(
    tmp_path: Path,
) -> None:
    bench = _bench_module()
    base, changed = tmp_path / "base.img", tmp_path / "changed.img"
    bench.write_base(str(base), 1000, 1024)
    n = bench.write_changed(str(base), str(changed), 1000, 1.0, 1024)
    a, b = base.read_bytes(), changed.read_bytes()
    blocks = [a[i : i + 4096] for i in range(0, len(a), 4096)]
    differ = [i for i in range(1000) if blocks[i] != b[i * 4096 : (i + 1) * 4096]]
    assert n == 10 and len(differ) == 10 and len(a) == len(b) == 1000 * 4096
    assert len(set(blocks)) == 1000  # every block unique: the store dedups nothing by chance


def test_a_clustered_change_rewrites_whole_aligned_runs_of_256_blocks(tmp_path: Path) -> None:
    bench = _bench_module()
    base, changed = tmp_path / "base.img", tmp_path / "changed.img"
    bench.write_base(str(base), 2048, 64)
    n = bench.write_changed(str(base), str(changed), 2048, 25.0, 64, clustered=True)
    a, b = base.read_bytes(), changed.read_bytes()
    differ = [
        i for i in range(2048) if a[i * 4096 : (i + 1) * 4096] != b[i * 4096 : (i + 1) * 4096]
    ]
    runs = sorted({i // 256 for i in differ})
    assert n == len(differ) == 512 and len(runs) == 2
    assert differ == [r * 256 + k for r in runs for k in range(256)]


@pytest.mark.slow
def test_the_replication_benchmark_copies_then_sends_only_the_change(tmp_path: Path) -> None:
    if not CKPT.exists():
        pytest.skip(f"no ckpt console script next to {sys.executable}")
    work, out = tmp_path / "work", tmp_path / "replicate.json"
    args = ["--blocks", "400", "--change-pct", "2", "--tools", "ckpt", "--ckpt", str(CKPT)]
    r = subprocess.run(
        [sys.executable, str(BENCH), *args, "--work", str(work), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ckpt replicate" in r.stdout and "sent/grew" in r.stdout
    assert not work.exists()
    doc = json.loads(out.read_text())
    assert doc["blocks"] == 400 and doc["changed_blocks"] == 8
    c = doc["tools"]["ckpt"]
    first, incr, noop = (c[k]["report"] for k in ("first", "incremental", "noop"))
    assert first["first_run"] is True and incr["first_run"] is False
    assert first["bytes"] > 400 * 1024  # the 1 KiB random head of every block, at least
    assert c["grew"] > 0 and c["grew"] <= c["sent"] == incr["bytes"] < first["bytes"]
    assert incr["events"] > 0 and incr["packs"] > 0 and incr["skipped_packs"] == first["packs"]
    assert noop["events"] == noop["packs"] == noop["bytes"] == 0
    assert noop["skipped_packs"] == first["packs"] + incr["packs"]
    assert noop["position"] == incr["position"] == c["check"]["position"]
    assert c["check"]["identical"] is True
    # A first copy killed halfway, then run again: it completes and sends no complete file twice.
    assert c["resume"]["report"]["position"] == incr["position"] and c["resume"]["resent"] == 0
    assert all(c[k]["maxrss_mib"] > 0 for k in ("first", "incremental", "noop"))
