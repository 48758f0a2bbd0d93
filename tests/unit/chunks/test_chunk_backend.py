"""Contract tests of the ChunkBackend port, run against every adapter."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from backends import S3_VAR, s3_url
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import ChunkMissing
from ckpt.storage.chunks import (
    ChunkBackend,
    LocalChunkBackend,
    MemoryChunkBackend,
    S3ChunkBackend,
)


def test_put_then_get_returns_the_bytes(backend: ChunkBackend) -> None:
    backend.put("packs/ab/one.pack", b"hello world")
    assert backend.get("packs/ab/one.pack") == b"hello world"
    assert backend.size("packs/ab/one.pack") == 11
    assert backend.exists("packs/ab/one.pack")
    assert not backend.exists("packs/ab/two.pack")


def test_ranged_get_is_clipped_at_the_end(backend: ChunkBackend) -> None:
    backend.put("x", b"0123456789")
    assert backend.get("x", 2, 3) == b"234"
    assert backend.get("x", 7) == b"789"
    assert backend.get("x", 8, 10) == b"89"
    assert backend.get("x", 20, 5) == b""
    assert backend.get("x", 0, 0) == b""
    with pytest.raises(ValueError):
        backend.get("x", -1, 2)


def test_put_replaces_an_existing_object(backend: ChunkBackend) -> None:
    backend.put("index/a.idx", b"old bytes")
    backend.put("index/a.idx", b"new")
    assert backend.get("index/a.idx") == b"new"
    assert list(backend.list("index/")) == ["index/a.idx"]


def test_list_filters_by_string_prefix_in_sorted_order(backend: ChunkBackend) -> None:
    for name in ["packs/b1/z.pack", "packs/a0/y.pack", "index/y.idx", "packs/a0/x.pack", "pa"]:
        backend.put(name, b"1")
    assert list(backend.list("packs/")) == ["packs/a0/x.pack", "packs/a0/y.pack", "packs/b1/z.pack"]
    assert list(backend.list("packs/a")) == ["packs/a0/x.pack", "packs/a0/y.pack"]
    assert list(backend.list("index/")) == ["index/y.idx"]
    assert list(backend.list("p")) == [
        "pa",
        "packs/a0/x.pack",
        "packs/a0/y.pack",
        "packs/b1/z.pack",
    ]
    assert len(list(backend.list(""))) == 5
    assert list(backend.list("nothing/")) == []


def test_delete_removes_the_object(backend: ChunkBackend) -> None:
    backend.put("a/b", b"1")
    backend.put("a/c", b"2")
    backend.delete("a/b")
    assert not backend.exists("a/b")
    assert list(backend.list("a/")) == ["a/c"]


@pytest.mark.parametrize("verb", ["get", "size", "delete"])
def test_missing_object_raises_chunk_missing_naming_it(backend: ChunkBackend, verb: str) -> None:
    with pytest.raises(ChunkMissing) as info:
        getattr(backend, verb)("packs/00/absent.pack")
    message = str(info.value)
    assert "packs/00/absent.pack" in message
    assert type(backend).__name__ in message  # says where it looked


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/", ".hidden", "a/.tmp", "a\\b"]
)
def test_names_that_could_escape_or_hide_are_refused(backend: ChunkBackend, name: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        backend.put(name, b"x")
    with pytest.raises(ValueError, match="invalid"):
        backend.get(name)
    with pytest.raises(ValueError, match="invalid"):
        backend.exists(name)


def test_list_refuses_a_prefix_that_escapes(backend: ChunkBackend) -> None:
    with pytest.raises(ValueError, match="invalid"):
        list(backend.list("../"))


def test_local_backend_maps_names_to_sub_paths_and_hides_temp_files(tmp_path: Path) -> None:
    backend = LocalChunkBackend(tmp_path / "root")
    backend.put("packs/ab/abc.pack", b"data")
    assert (tmp_path / "root" / "packs" / "ab" / "abc.pack").read_bytes() == b"data"
    # A temp file left by a crash mid-put is never listed.
    (tmp_path / "root" / "packs" / "ab" / ".abc.pack.1234.tmp").write_bytes(b"partial")
    assert list(backend.list("")) == ["packs/ab/abc.pack"]
    assert sorted(p.name for p in (tmp_path / "root").rglob("*")) == [
        ".abc.pack.1234.tmp",
        "ab",
        "abc.pack",
        "packs",
    ]


def test_local_backend_treats_a_directory_as_missing(tmp_path: Path) -> None:
    backend = LocalChunkBackend(tmp_path)
    backend.put("packs/ab/x.pack", b"1")
    with pytest.raises(ChunkMissing, match="'packs/ab'"):
        backend.get("packs/ab")
    assert not backend.exists("packs")


def _s3_configured() -> bool:
    # Not s3_url() alone: it skips the whole test, memory and local included.
    value = os.environ.get(S3_VAR, "")
    return bool(value) and not value.startswith("unavailable:")


_names = st.sampled_from(["a", "b/c", "b/d", "index/e.idx", "packs/00/f.pack"])
_ops = st.lists(st.tuples(st.booleans(), _names, st.binary(max_size=64)), max_size=20)


@settings(max_examples=40, deadline=None)
@given(ops=_ops)
def test_any_sequence_of_puts_and_deletes_matches_a_dict(
    ops: list[tuple[bool, str, bytes]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[ChunkBackend] = [MemoryChunkBackend(), LocalChunkBackend(Path(tmp))]
        if _s3_configured():
            backends.append(S3ChunkBackend(s3_url()))  # a fresh prefix per example
        for backend in backends:
            model: dict[str, bytes] = {}
            for is_put, name, data in ops:
                if is_put:
                    backend.put(name, data)
                    model[name] = data
                elif name in model:
                    backend.delete(name)
                    del model[name]
            assert list(backend.list("")) == sorted(model)
            assert {n: backend.get(n) for n in model} == model
            for name in model:  # the S3 server outlives the test
                backend.delete(name)


def test_local_put_and_delete_fsync_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalChunkBackend(tmp_path)
    backend.put("packs/ab/first.pack", b"1")  # creates the directories
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    backend.put("packs/ab/second.pack", b"2")
    directory = str(tmp_path / "packs" / "ab")
    assert len(synced) == 2
    assert synced[0].startswith(f"{directory}/.second.pack.") and synced[0].endswith(".tmp")
    assert synced[1] == directory
    backend.delete("packs/ab/first.pack")
    assert synced[2:] == [directory]
    backend.put("index/new.idx", b"3")  # a new directory: its parent is synced too
    index_dir = str(tmp_path / "index")
    assert len(synced) == 6
    assert synced[3] == str(tmp_path)
    assert synced[4].startswith(f"{index_dir}/.new.idx.")
    assert synced[5] == index_dir
