"""End-to-end demonstration on a temporary store: ``ckpt-demo`` (``make demo``).

Runs the same commands a person would type, printing each one and its output,
so the demo doubles as a tour of the CLI.
"""

from __future__ import annotations

import io
import shlex
import sys
import tempfile
from pathlib import Path

from .cli import run

STEPS: list[tuple[str, str]] = [
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
    ("The audit log: who did what, when", "log"),
]


def demo(out: io.TextIOBase | None = None) -> int:
    stream = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="ckpt-demo-") as tmp:
        store = str(Path(tmp) / "store")
        stream.write(f"# ckpt demo on a temporary store: {store}\n")
        for title, command in STEPS:
            if title:
                stream.write(f"\n## {title}\n")
            stream.write(f"$ ckpt {command}\n")
            argv = ["--store", store, "--actor", "demo", *shlex.split(command)]
            code = run(argv, out=stream, err=stream)  # type: ignore[arg-type]
            expected_failure = "No such" in command
            if code != 0 and not expected_failure:
                stream.write(f"demo step failed with exit code {code}\n")
                return code
            if expected_failure:
                stream.write(f"(exit code {code})\n")
                if code == 0:
                    return 1
        stream.write("\n# demo finished: every step above ran against the store and was recorded\n")
    return 0


def main() -> None:
    sys.exit(demo())
