"""A capture reads its image once, outside the retry loop (issue 12).

Another writer changes the VM between the capture and its commit: the commit
then fails with a conflict and the decision is retried on fresh state. A
change that leaves the disk's layer and base alone (a rename) keeps the
finished capture; one that moved the layer (another capture) makes a new one.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt.capture_ops
from ckpt import commands, queries, restore_ops
from ckpt.domain import CheckpointType, DiskFormat, VirtualMachine
from ckpt.unit_of_work import UnitOfWork, throwaway

SIZE = 256 * 1024


@pytest.fixture
def uow() -> Iterator[UnitOfWork]:
    u = throwaway()
    vm = commands.new_vm(u, "web", [("D", DiskFormat.VHDX)], None, CheckpointType.STANDARD)
    commands.save_new_vm(u, vm)
    yield u
    u.close()


def _image(path: Path, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(SIZE))
    return path


def _count_reads(monkeypatch: pytest.MonkeyPatch, image: Path) -> list[str]:
    """Each capture of ``image`` (the other writer's images are not counted)."""
    reads: list[str] = []
    real = ckpt.capture_ops.capture_disk

    def counted(vm: VirtualMachine, disk: str, src: Any, *a: Any, **k: Any) -> Any:
        if src.where == str(image):  # src: the opened storage.sources.Source
            reads.append(src.where)
        return real(vm, disk, src, *a, **k)

    monkeypatch.setattr(ckpt.capture_ops, "capture_disk", counted)
    return reads


def _before_first_save(
    uow: UnitOfWork, monkeypatch: pytest.MonkeyPatch, other: Callable[[], Any]
) -> list[str]:
    """Run ``other`` (another writer's command) just before the first save: the
    save then conflicts, as when two processes write one VM. Returns how each
    save ended."""
    real = uow.app.save
    pending = [other]
    saves: list[str] = []

    def save(*aggregates: Any, **kwargs: Any) -> Any:
        if pending:
            pending.pop()()
        try:
            result = real(*aggregates, **kwargs)
        except Exception as e:
            saves.append(type(e).__name__)
            raise
        saves.append("saved")
        return result

    monkeypatch.setattr(uow.app, "save", save)
    return saves


def _restored(uow: UnitOfWork, point: str) -> bytes:
    out = io.BytesIO()
    restore_ops.restore_disk(uow, "web", point, "D", out, None)
    return out.getvalue()


def test_a_concurrent_rename_does_not_make_the_image_be_read_again(
    uow: UnitOfWork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands.create_checkpoint(uow, "web", "old", None, True)
    image = _image(tmp_path / "d.raw", 1)
    reads = _count_reads(monkeypatch, image)
    saves = _before_first_save(
        uow, monkeypatch, lambda: commands.rename_checkpoint(uow, "web", "old", "renamed")
    )
    ckpt.capture_ops.create_checkpoint(uow, "web", "new", None, True, {"D": image}, {}, {}, None)
    assert saves == ["saved", "IntegrityError", "saved"]  # the rename, ours refused, ours again
    assert len(reads) == 1
    vm = queries.vm(uow, "web")
    assert sorted(cp.name for cp in vm.checkpoints.values()) == ["new", "renamed"]
    assert _restored(uow, "new") == image.read_bytes()


def test_a_concurrent_capture_that_moved_the_layer_makes_a_new_capture(
    uow: UnitOfWork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _image(tmp_path / "d.raw", 1)
    theirs = _image(tmp_path / "theirs.raw", 2)
    reads = _count_reads(monkeypatch, image)
    _before_first_save(
        uow,
        monkeypatch,
        lambda: ckpt.capture_ops.create_checkpoint(
            uow, "web", "theirs", None, True, {"D": theirs}, {}, {}, None
        ),
    )
    ckpt.capture_ops.create_checkpoint(uow, "web", "ours", None, True, {"D": image}, {}, {}, None)
    assert len(reads) == 2  # their checkpoint froze the layer ours was diffed against
    assert _restored(uow, "theirs") == theirs.read_bytes()
    assert _restored(uow, "ours") == image.read_bytes()


def test_a_sync_keeps_its_capture_through_a_concurrent_rename(
    uow: UnitOfWork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands.create_checkpoint(uow, "web", "old", None, True)
    image = _image(tmp_path / "d.raw", 3)
    reads = _count_reads(monkeypatch, image)
    saves = _before_first_save(
        uow, monkeypatch, lambda: commands.rename_checkpoint(uow, "web", "old", "renamed")
    )
    ckpt.capture_ops.sync(uow, "web", "b1", {"D": image}, {}, None)
    assert saves == ["saved", "IntegrityError", "saved"]
    assert len(reads) == 1
    assert _restored(uow, "b1") == image.read_bytes()
