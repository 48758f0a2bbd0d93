"""bench/bench_grouping.py (and bench/gen_real_dataset.py) run end to end on tiny input.

The grouping benchmark runs on a synthetic 5-step series in bench_content.py's layout (2 MiB
sparse disks of compressible text blocks, some repeated, some rewritten each step), restic left
out; a few seconds.  Only the shape of the result is checked (figures are the benchmark's job):
every option has a row, the raw bytes match the series' new blocks, 4 KiB groups read 1x.

The real-content generator needs root, loop devices and the Debian archive (it downloads ~10 MB
of .debs with ``--small``), so it runs only with CKPT_TEST_REAL_DATASET=1 and says why otherwise.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench"
BLOCK = 4096
WORDS = b"alpha beta gamma delta kernel module config usr lib share doc python perl".split()


def text_block(rng: random.Random) -> bytes:
    out = b" ".join(rng.choice(WORDS) for _ in range(900))
    return out[:BLOCK].ljust(BLOCK, b"\n")


def write_series(data: Path) -> int:
    """5 steps; returns how many distinct non-zero blocks the series holds."""
    rng = random.Random(7)
    disk = {i: text_block(rng) for i in range(0, 400, 2)}  # every other block: holes between
    disk[401] = disk[0]  # a duplicate inside the step
    distinct = {*disk.values()}
    for k in range(5):
        if k:
            for i in rng.sample(sorted(disk), 40):
                disk[i] = text_block(rng)
                distinct.add(disk[i])
        d = data / f"ckpt{k}"
        d.mkdir(parents=True)
        with open(d / "disk.img", "wb") as f:
            f.truncate(2 << 20)
            for i, b in disk.items():
                f.seek(i * BLOCK)
                f.write(b)
        (d / "mem.bin").write_bytes(bytes(BLOCK) + text_block(rng))
    return len(distinct)


def test_bench_grouping_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    distinct = write_series(data)
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_grouping.py"), "--data", str(data), "--no-restic",
         "--groups", "4,64", "--levels", "1,3", "--reps", "1", "--sample-mib", "1",
         "--dict-kib", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "restore amp" in proc.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["option"], r["group_KiB"], r["level"]) for r in rows] == [
        ("today", 4, 1), ("grouped", 4, 3), ("grouped", 64, 1), ("grouped", 64, 3),
        ("dict", 4, 1), ("dict", 4, 3),
    ]  # fmt: skip
    assert result["new_chunks"] == distinct
    for r in rows:
        assert r["raw_MB"] * 1e6 == distinct * BLOCK
        assert 0 < r["ratio"] < 1
    assert rows[0]["restore_amp"] == 1.0
    assert rows[2]["restore_amp"] >= 1.0


@pytest.mark.skipif(
    os.environ.get("CKPT_TEST_REAL_DATASET") != "1",
    reason="needs root, loop devices and the Debian archive: set CKPT_TEST_REAL_DATASET=1",
)
def test_gen_real_dataset_small(tmp_path: Path) -> None:
    out = tmp_path / "real"
    cache = os.environ.get("CKPT_TEST_DEB_CACHE", str(tmp_path / "debs"))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gen_real_dataset.py"), str(out), "--small", "--cache", cache],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert [s["step"] for s in info["steps"]] == [0, 1, 2, 3, 4]
    assert info["steps"][1]["upgraded"] and info["steps"][3]["removed"]
    sizes = {(out / f"ckpt{k}" / "disk.img").stat().st_size for k in range(5)}
    assert sizes == {info["size_bytes"]}
