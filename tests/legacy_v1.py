"""Writing manifests as ckpt wrote them before segment manifests (format version 1).

Stores made by today's release hold v1 block maps: diffs of what each capture
changed. ``writing_v1`` makes captures write them again (a regular file, read
whole), so tests can build such stores, damage them as the old bugs did
(``manifest.encode`` patched) and check that the new code reads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest

import ckpt.capture_ops
import ckpt.storage.manifest_capture as manifest_capture
from ckpt.domain import DiskCapture, FileCapture, FileRole, VirtualMachine
from ckpt.storage import disk_state, manifest
from ckpt.storage.capture import capture
from ckpt.storage.content_session import Session
from ckpt.storage.manifest import KIND_DISK, KIND_FILE, BlockMap
from ckpt.storage.manifest_cache import ManifestCache, chain_manifest_ids
from ckpt.storage.sources import Source, source_size


def capture_disk_v1(
    vm: VirtualMachine,
    disk: str,
    source: Source,
    session: Session,
    cache: ManifestCache,
    extents: Sequence[tuple[int, int]] | None = None,
    progress: object = None,
    segments: Sequence[tuple[int, int]] | None = None,
) -> DiskCapture:
    layer = vm.running[disk]
    chunks = cache.chunks
    state = disk_state.load(chain_manifest_ids(vm, layer), chunks.get)
    parent = dict(state.present()) if state is not None else {}
    size = source.size if source.size is not None else source_size(source.stream, source.where)
    result = capture(
        source.stream, size, 4096, parent, session.sink, extents, None, None, segments,
        session.hasher, parent_size=0 if state is None else state.size,
    )  # fmt: skip
    session.finish()
    ref = manifest.store(BlockMap(KIND_DISK, 4096, size, result.entries), session.add)
    return DiskCapture(
        disk=disk, layer=layer, manifest=ref, base=len(vm.contents.get(layer, ())),
        virtual_size=size, block_size=4096, changed_blocks=len(result.entries),
        read_bytes=result.read_bytes, added_bytes=result.added_bytes,
    )  # fmt: skip


def capture_file_v1(
    role: FileRole, source: Source, session: Session, progress: object = None
) -> FileCapture:
    size = source.size if source.size is not None else source_size(source.stream, source.where)
    result = capture(source.stream, size, 4096, {}, session.sink, hasher=session.hasher)
    session.finish()
    ref = manifest.store(BlockMap(KIND_FILE, 4096, size, result.entries), session.add)
    return FileCapture(role=role, path="", manifest=ref, size=size, added_bytes=result.added_bytes)


@contextlib.contextmanager
def writing_v1(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block, captures in this process write v1 manifests."""
    with monkeypatch.context() as m:
        for module in (manifest_capture, ckpt.capture_ops):
            m.setattr(module, "capture_disk", capture_disk_v1)
            m.setattr(module, "capture_file", capture_file_v1)
        yield
