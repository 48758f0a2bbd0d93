"""End-to-end demonstration on a temporary store: ``ckpt-demo`` (``make demo``).

Runs the same commands a person would type, printing each one and its output,
so the demo doubles as a tour of the CLI: checkpoint trees with Hyper-V's
rules first, then content (disk images captured, a merge, a deleted
checkpoint restored byte for byte with ``--at``), then the audit log.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shlex
import sys
import tempfile
from pathlib import Path

from .cli import run

Step = tuple[str, str]

TREE_STEPS: list[Step] = [
    ("Create a store and register a 2016+ VM with two disks", "init"),
    ("", "vm add web01 --config-version 9.0 --disk Boot --disk Data --checkpoint-type production"),
    ("Checkpoint while the VM is off", "checkpoint create web01 'Base install'"),
    ("Start it and take a standard checkpoint while running (memory saved)", "vm start web01"),
    ("", "checkpoint create web01 'Before update' --type standard"),
    (
        "A production checkpoint falls back to standard when the guest cannot quiesce",
        "checkpoint create web01 'After update' --guest-cannot-quiesce",
    ),
    (
        "Apply the older checkpoint: the VM comes up off (it was taken while off)",
        "checkpoint apply web01 'Base install'",
    ),
    ("Create a new branch from there", "checkpoint create web01 'Branch: hotfix'"),
    ("Rename a checkpoint", "checkpoint rename web01 'After update' 'Patched (Nov)'"),
    ("The tree, with Now under the current checkpoint", "tree web01"),
    (
        "Delete a checkpoint with exactly one dependant: its child's AVHDX merges into it",
        "checkpoint delete web01 'Before update'",
    ),
    ("The tree and disk chain after the merge", "tree web01"),
    ("", "chain web01"),
    ("State files of a checkpoint taken while running", "files web01 'Patched (Nov)'"),
    (
        "A 2012 R2 VM (config 5.0) on a VHD: XML/VSV/BIN files and AVHD layers",
        "vm add legacy01 --config-version 5.0 --disk System:vhd --checkpoint-type standard",
    ),
    ("", "vm start legacy01"),
    ("", "checkpoint create legacy01 'Running'"),
    ("", "files legacy01 Running"),
    ("", "chain legacy01"),
    (
        "Unknown names give one clear line and a stable exit code",
        "checkpoint apply web01 'No such checkpoint'",
    ),
]


def _image(path: Path, seed: int, changes: int = 0) -> str:
    """A 16 MiB raw disk: some text, some random blocks, the rest zeros (holes)."""
    rng = random.Random(seed)
    data = bytearray(16 << 20)
    data[: 1 << 20] = (b"ckpt demo disk, block after block. " * 30000)[: 1 << 20]
    data[4 << 20 : 6 << 20] = rng.randbytes(2 << 20)
    for _ in range(changes):
        at = rng.randrange(0, 16 << 20, 4096)
        data[at : at + 4096] = rng.randbytes(4096)
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest()[:16]


def demo(out: io.TextIOBase | None = None) -> int:
    stream = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="ckpt-demo-") as tmp:
        root = Path(tmp)
        store = str(root / "store")
        stream.write(f"# ckpt demo on a temporary store: {store}\n")

        def ckpt(command: str, expect_failure: bool = False) -> int:
            stream.write(f"$ ckpt {command}\n")
            argv = ["--store", store, "--actor", "demo", *shlex.split(command)]
            code = run(argv, out=stream, err=stream)  # type: ignore[arg-type]
            if expect_failure:
                stream.write(f"(exit code {code})\n")
            return code

        def steps(items: list[Step]) -> int:
            for title, command in items:
                if title:
                    stream.write(f"\n## {title}\n")
                failing = "No such" in command
                code = ckpt(command, failing)
                if (code != 0) != failing:
                    stream.write(f"demo step failed with exit code {code}\n")
                    return 1
            return 0

        def note(text: str) -> None:
            stream.write(f"\n## {text}\n")

        if steps(TREE_STEPS):
            return 1
        disk = root / "db01-data.raw"
        note("Content: capture a 16 MiB disk image at two checkpoints (only changed 4 KiB blocks)")
        first = _image(disk, 1)
        stream.write(f"(disk image written, sha256 {first}...)\n")
        if ckpt("vm add db01 --disk Data --checkpoint-type standard") or ckpt(
            f"checkpoint create db01 'Nightly 1' --disk Data={disk}"
        ):
            return 1
        second = _image(disk, 1, changes=40)
        stream.write(f"(40 blocks changed, sha256 {second}...)\n")
        if ckpt(f"checkpoint create db01 'Nightly 2' --disk Data={disk}"):
            return 1
        log = io.StringIO()
        run(["--store", store, "log", "db01", "--json"], out=log, err=log)
        position = json.loads(log.getvalue())[-1]["position"]  # the last event before the delete
        note("Delete 'Nightly 1' (its layer is merged away, as in Hyper-V) ...")
        if ckpt("checkpoint delete db01 'Nightly 1'") or ckpt("tree db01"):
            return 1
        note(f"... and restore it anyway, byte for byte, as of log position {position}")
        restored = root / "nightly1.raw"
        if ckpt(f"restore db01 'Nightly 1' --disk Data -o {restored} --at {position}"):
            return 1
        got = hashlib.sha256(restored.read_bytes()).hexdigest()[:16]
        stream.write(
            f"(restored sha256 {got}...: {'identical' if got == first else 'DIFFERENT'})\n"
        )
        if got != first:
            return 1
        note("Retention: a backup point, then a keep-policy (dry run first: why each is kept)")
        if ckpt(f"sync db01 --disk Data={disk} --name Hourly") or ckpt(
            "forget db01 --keep-last 1 --dry-run"
        ):
            return 1
        note("The purge is an event; the deleted checkpoint's bytes are refused, then reclaimed")
        if ckpt("forget db01 --keep-last 1"):
            return 1
        refused = ckpt(f"restore db01 'Nightly 1' --disk Data -o {restored} --at {position}", True)
        if refused != 40 or ckpt("gc --grace 0"):
            return 1
        note("A Hyper-V folder: export the whole VM (Export-VM), import it as a copy")
        folder = root / "export"
        if ckpt(f"export db01 -o {folder} --all-checkpoints") or ckpt(
            f"import hyperv {folder / 'db01'} --name db01-copy"
        ):
            return 1
        copied = root / "nightly2-copy.vhd"
        if ckpt("tree db01-copy") or ckpt(f"restore db01-copy 'Nightly 2' --disk Data -o {copied}"):
            return 1
        note("Every referenced chunk present, decompressing and hashing to its id")
        if ckpt("verify") or ckpt("stats"):
            return 1
        note("The log's hash chain: any change to a recorded event is found, and where")
        if ckpt("verify --log"):
            return 1
        note("The audit log: who did what, when")
        if ckpt("log"):
            return 1
        stream.write("\n# demo finished: every step above ran against the store and was recorded\n")
    return 0


def main() -> None:
    sys.exit(demo())
