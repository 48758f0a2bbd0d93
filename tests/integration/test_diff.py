"""``ckpt diff`` / ``Store.diff`` checked against the restored bytes of both points.

- random histories (Hypothesis) of one VM: writes, zero-fills, grows and
  shrinks, checkpoints, applies, deletes and syncs; for two random points the
  blocks the diff reports are exactly the blocks whose bytes differ within B's
  size (the shorter image read as zeros), and the zeroed ones are exactly the
  reported blocks all zero in B. Points deleted from the tree are named by id.
- ``--format changed-blocks`` fed back into ``checkpoint create
  --changed-blocks`` gives the content of a full scan.
- the errors, ``--at`` for a deleted checkpoint, state files, and that no
  chunk of data is read (the chunk store's reads are recorded: none is an id
  that any block of either state refers to).
"""

from __future__ import annotations

import io
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_support import CLI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt import (
    CheckpointType,
    DiskDiff,
    DiskFormat,
    Extent,
    FileDiff,
    FileRole,
    InvalidValue,
    PointDiff,
    PointPurged,
    Store,
    diff_ops,
)
from ckpt.restore_ops import resolve_view
from ckpt.storage.manifest_cache import chain_manifest_ids
from ckpt.storage.manifest_restore import load_state

B = 4096
MIB = 1 << 20


def _image(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _read(store: Store, point: str, at: int | None, size: int) -> bytes:
    with store.open_disk("VM", point, "D", at=at) as reader:
        assert reader.size == size
        return reader.pread(0, size)


# ----------------------------------------------------------------- histories


@dataclass
class Point:
    ref: str  # what diff is given: a name, an id (deleted), or Now
    size: int
    at: int | None = None  # where the bytes are read (deleted: just before)


@dataclass
class History:
    store: Store
    dir: Path
    rng: random.Random
    image: bytearray = field(default_factory=lambda: bytearray(MIB))
    points: dict[str, Point] = field(default_factory=dict)  # by name
    checkpoints: list[str] = field(default_factory=list)  # live ones
    serial: int = 0
    now: int = 0  # Now's size: the running layer's as last captured (or applied)

    def capture(self, kind: str) -> None:
        self.serial += 1
        name = f"{kind}{self.serial}"
        src = _image(self.dir / "d", bytes(self.image))
        if kind == "c":
            self.store.create_checkpoint("VM", name, disks={"D": src})
            self.checkpoints.append(name)
        else:
            self.store.sync("VM", {"D": src}, name=name)
        self.points[name] = Point(name, len(self.image))
        self.now = len(self.image)

    def apply(self, pick: int) -> None:
        if self.checkpoints:
            name = self.checkpoints[pick % len(self.checkpoints)]
            self.store.apply_checkpoint("VM", name)
            self.image = bytearray(_read(self.store, name, None, self.points[name].size))
            self.now = len(self.image)

    def delete(self, pick: int) -> None:
        if len(self.checkpoints) < 2:
            return
        name = self.checkpoints.pop(pick % len(self.checkpoints))
        cp = next(c for c in self.store.checkpoints("VM") if c.name == name)
        before = self.store.log()[-1].position
        self.store.delete_checkpoint("VM", name)
        self.points[name] = Point(str(cp.id), self.points[name].size, before)


Op = tuple[str, int, int]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 1023), st.integers(1, 40)),
        st.tuples(st.just("write"), st.integers(0, 1023), st.integers(1, 3)),
        st.tuples(st.just("zero"), st.integers(0, 1023), st.integers(1, 40)),
        st.tuples(st.just("resize"), st.integers(256, 1024), st.just(0)),
        st.tuples(st.sampled_from(["c", "c", "b"]), st.just(0), st.just(0)),
        st.tuples(st.sampled_from(["c", "b"]), st.just(0), st.just(0)),  # captures: often
        st.tuples(st.just("c"), st.just(0), st.just(0)),
        st.tuples(st.sampled_from(["apply", "delete"]), st.integers(0, 9), st.just(0)),
    ),
    min_size=4,
    max_size=14,
)


def _run(h: History, history: Sequence[Op]) -> None:
    for at in range(0, MIB, 64 * B):  # data runs among holes
        h.image[at : at + 9 * B] = h.rng.randbytes(9 * B)
    h.capture("c")
    for op, x, n in history:
        size = len(h.image)
        if op == "write":
            start = x * B % size
            h.image[start : start + n * B] = h.rng.randbytes(min(n * B, size - start))
        elif op == "zero":
            start = x * B % size
            h.image[start : start + n * B] = bytes(min(n * B, size - start))
        elif op == "resize":  # grow with zeros or cut
            h.image = h.image[: x * B] + bytearray(max(0, x * B - size))
        elif op in ("c", "b"):
            h.capture(op)
        elif op == "apply":
            h.apply(x)
        else:
            h.delete(x)


def _blocks(a: bytes, b: bytes) -> tuple[set[int], set[int]]:
    """Blocks of ``b`` with any byte unlike ``a`` (padded with zeros), and the
    zero ones among them."""
    changed, zeroed = set(), set()
    zero = bytes(B)
    for i in range(-(-len(b) // B)):
        mine = b[i * B : (i + 1) * B]
        theirs = a[i * B : (i + 1) * B].ljust(len(mine), b"\0")[: len(mine)]
        if mine != theirs:
            changed.add(i)
            if mine == zero[: len(mine)]:
                zeroed.add(i)
    return changed, zeroed


def _covered(extents: Sequence[Extent], size: int) -> set[int]:
    out: set[int] = set()
    for e in extents:
        assert e.offset % B == 0 and (e.length % B == 0 or e.end == size) and e.end <= size
        out.update(range(e.offset // B, -(-e.end // B)))
    return out


@settings(
    max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
@given(history=ops, seed=st.integers(0, 1 << 32))
def test_diff_reports_exactly_the_blocks_whose_bytes_differ(history: list[Op], seed: int) -> None:
    """Every ordered pair of the history's points (Now included)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Store.init(root / "s", actor="t") as store:
            store.register_vm("VM", [("D", DiskFormat.VHDX)])
            h = History(store, root, random.Random(seed))
            _run(h, history)
            h.points["Now"] = Point("Now", h.now)
            data = {name: _read(store, p.ref, p.at, p.size) for name, p in h.points.items()}
            for x, a in h.points.items():
                for y, b in h.points.items():
                    (d,) = store.diff("VM", a.ref, b.ref).disks
                    assert (d.size_from, d.size_to, d.block_size) == (a.size, b.size, B)
                    changed, zeroed = _blocks(data[x], data[y])
                    assert _covered(d.extents, b.size) == changed, (x, y)
                    assert _covered(d.zeroed, b.size) == zeroed, (x, y)
                    assert d.changed_bytes == sum(min(B, b.size - i * B) for i in changed)


# ------------------------------------------------- changed blocks, fed back


def test_changed_blocks_fed_back_give_the_content_of_a_full_scan(
    tmp_path: Path, scratch: Path
) -> None:
    rng = random.Random(19)
    c = CLI(tmp_path / "s")
    c.ok("init")
    c.ok("vm", "add", "v", "--disk", "D")
    c.ok("vm", "add", "w", "--disk", "D")
    one = bytearray(2 * MIB)
    for at in range(0, 2 * MIB, 32 * B):
        one[at : at + 5 * B] = rng.randbytes(5 * B)
    two = bytearray(one) + rng.randbytes(3 * B) + bytes(B)  # grown, a zero block at the end
    two[7 * B : 40 * B] = rng.randbytes(33 * B)
    two[64 * B : 66 * B] = bytes(2 * B)  # zeroed: data in c1
    two[100 * B + 17 : 100 * B + 18] = b"\x01"  # one byte
    i1, i2 = _image(scratch / "i1", bytes(one)), _image(scratch / "i2", bytes(two))
    for vm in ("v", "w"):
        c.ok("checkpoint", "create", vm, "c1", "--disk", f"D={i1}")
    c.ok("checkpoint", "create", "v", "c2", "--disk", f"D={i2}")  # a full scan
    lines = c.ok("diff", "v", "c1", "c2", "--format", "changed-blocks")  # one disk: no --disk
    assert lines == c.ok("diff", "v", "c1", "c2", "--disk", "D", "--format", "changed-blocks")
    assert lines.splitlines() == [
        f"{7 * B} {33 * B}", f"{64 * B} {2 * B}", f"{100 * B} {B}", f"{len(one)} {3 * B}"
    ]  # fmt: skip
    cb = scratch / "cb"
    cb.write_text(lines)
    c.ok("checkpoint", "create", "w", "c2", "--disk", f"D={i2}", "--changed-blocks", f"D={cb}")
    c.ok("checkpoint", "apply", "v", "c1")
    c.ok("checkpoint", "create", "v", "c3", "--disk", f"D={i2}", "--changed-blocks", f"D={cb}")
    with Store.open(tmp_path / "s") as store:
        for vm, point in (("w", "c2"), ("v", "c3")):
            out = io.BytesIO()
            store.restore_disk(vm, point, "D", out)
            assert out.getvalue() == bytes(two)
        (same,) = store.diff("v", "c2", "c3").disks
        assert (same.extents, same.zeroed, same.size_changed) == ([], [], False)
        (d,) = store.diff("v", "c1", "c3").disks
        assert d == store.diff("v", "c1", "c2").disks[0]
        assert d.zeroed == [Extent(64 * B, 2 * B)] and d.zeroed_bytes == 2 * B
        assert (d.size_from, d.size_to, d.size_changed) == (len(one), len(two), True)


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def two_disks(tmp_path: Path, scratch: Path) -> CLI:
    """VM v with disks D and E; checkpoints c1, c2; backup points b1 (purged), b2."""
    c = CLI(tmp_path / "s")
    c.ok("init")
    c.ok("vm", "add", "v", "--disk", "D", "--disk", "E")
    d = bytearray(MIB)
    d[B : 3 * B] = b"\x07" * (2 * B)
    e = _image(scratch / "e", bytes(MIB))
    c.ok("checkpoint", "create", "v", "c1", "--disk", f"D={_image(scratch / 'd', d)}",
         "--disk", f"E={e}")  # fmt: skip
    d[B : 2 * B] = bytes(B)
    d[9 * B : 10 * B] = b"\x09" * B
    c.ok("checkpoint", "create", "v", "c2", "--disk", f"D={_image(scratch / 'd', d)}",
         "--disk", f"E={e}")  # fmt: skip
    for name in ("b1", "b2"):
        c.ok("sync", "v", "--name", name, "--disk", f"D={scratch / 'd'}", "--disk", f"E={e}")
    c.ok("forget", "v", "--keep-last", "1")
    return c


def test_the_json_is_the_documented_document(two_disks: CLI) -> None:
    doc = two_disks.json("diff", "v", "c1", "c2")
    assert set(doc) == {"vm", "from", "to", "at", "disks", "files"}
    assert doc["vm"] == "v" and doc["at"] is None and doc["files"] == []
    assert doc["from"]["point"] == "c1" and doc["from"]["kind"] == "checkpoint"
    assert doc["to"]["kind"] == "checkpoint" and len(doc["to"]["id"]) == 36
    d, e = doc["disks"]
    assert d == {
        "disk": "D", "size_from": MIB, "size_to": MIB, "size_changed": False,
        "block_size": B, "changed_bytes": 2 * B, "extents": [[B, B], [9 * B, B]],
        "zeroed_bytes": B, "zeroed": [[B, B]],
    }  # fmt: skip
    assert (e["disk"], e["extents"], e["changed_bytes"]) == ("E", [], 0)
    now = two_disks.json("diff", "v", "b2", "Now", "--disk", "E")
    assert now["to"] == {"point": "Now", "kind": "now", "id": None}
    assert now["from"]["kind"] == "backup point"
    assert [x["disk"] for x in now["disks"]] == ["E"]


def test_the_text_names_each_disk_with_its_extents(two_disks: CLI) -> None:
    text = two_disks.ok("diff", "v", "c1", "c2").splitlines()
    assert text == [
        "VM v: checkpoint 'c1' -> checkpoint 'c2'",
        f"disk D: size {MIB} bytes, {2 * B} bytes changed in 2 extents, {B} bytes zeroed",
        f"  {B} {B}",
        f"  {9 * B} {B}",
        f"  zeroed {B} {B}",
        f"disk E: size {MIB} bytes, 0 bytes changed in 0 extents, 0 bytes zeroed",
    ]


def test_bad_input_is_refused_naming_what_was_wrong(two_disks: CLI) -> None:
    c = two_disks
    assert "'nope'" in c.fails(11, "diff", "v", "c1", "nope")
    assert "'x'" in c.fails(10, "diff", "x", "c1", "c2")
    err = c.fails(40, "diff", "v", "b1", "c2")
    assert "backup point 'b1'" in err and "purged" in err
    err = c.fails(14, "diff", "v", "c1", "c2", "--format", "changed-blocks")
    assert "2 disks (D, E)" in err and "--disk" in err
    err = c.fails(14, "diff", "v", "c1", "c2", "--disk", "D", "--format", "changed-blocks",
                  "--json")  # fmt: skip
    assert "--json" in err and "changed-blocks" in err
    err = c.fails(12, "diff", "v", "c1", "c2", "--disk", "X")
    assert "no disk 'X'" in err and "(disks: D, E)" in err
    assert "beyond the end" in c.fails(14, "diff", "v", "c1", "c2", "--at", "99999")


def test_the_api_checks_its_arguments_and_raises_the_cli_errors(two_disks: CLI) -> None:
    with Store.open(two_disks.store) as store:
        with pytest.raises(InvalidValue, match="diff: b must be a str"):
            store.diff("v", "c1", 3)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue, match="diff: disk must be a str or None"):
            store.diff("v", "c1", "c2", disk=b"D")  # type: ignore[arg-type]
        with pytest.raises(PointPurged):
            store.diff("v", "c1", "b1")
        found = store.diff("v", "c1", "c2", disk="D")
        assert isinstance(found, PointDiff) and isinstance(found.disks[0], DiskDiff)
        assert found.disks[0].extents[1] == Extent(9 * B, B) and Extent(B, B).end == 2 * B
        assert found.as_dict() == two_disks.json("diff", "v", "c1", "c2", "--disk", "D")


def test_a_deleted_checkpoint_as_of_then_or_by_its_id(two_disks: CLI) -> None:
    c = two_disks
    before = c.json("log")[-1]["position"]
    expected = c.json("diff", "v", "c1", "c2")["disks"]
    gone = c.json("diff", "v", "c1", "c2")["to"]["id"]
    c.ok("checkpoint", "delete", "v", "c2")
    c.fails(11, "diff", "v", "c1", "c2")  # by name: not in the tree any more
    then = c.json("diff", "v", "c1", "c2", "--at", str(before))
    assert then["disks"] == expected and then["at"] == before
    by_id = c.json("diff", "v", "c1", gone)
    assert by_id["disks"] == expected and by_id["to"]["point"] == "c2" and by_id["at"] is None
    c.fails(11, "diff", "v", "c1", "00000000-0000-0000-0000-000000000000")


# --------------------------------------------------- files, no chunk data read


def test_state_files_changed_unchanged_or_in_one_point(tmp_path: Path, scratch: Path) -> None:
    rng = random.Random(7)
    disk = _image(scratch / "d", rng.randbytes(64 * B))
    mem = _image(scratch / "m1", rng.randbytes(50 * B))
    with Store.init(tmp_path / "s", actor="t") as store:
        store.register_vm("VM", [("D", DiskFormat.VHDX)], "9.0", CheckpointType.STANDARD)
        store.start_vm("VM")
        for name in ("m", "same"):
            store.create_checkpoint("VM", name, disks={"D": disk}, files={FileRole.MEMORY: mem})
        other = _image(scratch / "m2", mem.read_bytes()[: 30 * B] + rng.randbytes(20 * B))
        store.create_checkpoint("VM", "other", disks={"D": disk}, files={FileRole.MEMORY: other})
        files = {n: store.diff("VM", "m", n).files for n in ("same", "other", "Now")}
        assert files["same"] == [FileDiff("memory", False)]
        assert files["other"] == [FileDiff("memory", True)]
        assert files["Now"] == [FileDiff("memory", None)]
        assert store.diff("VM", "m", "other").disks[0].extents == []


def test_diff_reads_manifests_only_never_a_chunk_of_data(two_disks: CLI) -> None:
    """Every chunk the store is asked for (``get``, ``get_many``, ``get_views``)
    is recorded; the data chunks are the ids the blocks of the points' states
    refer to (found afterwards). None of them may have been asked for."""
    with Store.open(two_disks.store) as store:
        uow = store.unit_of_work
        chunks = uow.chunks
        asked: list[bytes] = []
        real_get, real_views = chunks.get, chunks.get_views

        def get(cid: bytes) -> bytes:
            asked.append(cid)
            return real_get(cid)

        def views(ids: Sequence[bytes]) -> list[Any]:
            asked.extend(ids)
            return list(real_views(ids))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(chunks, "get", get)
            mp.setattr(chunks, "get_many", views)
            mp.setattr(chunks, "get_views", views)
            for a, b in (("c1", "c2"), ("b2", "Now"), ("c2", "c1"), ("c1", "b2")):
                found = store.diff("v", a, b)
                assert found.disks[0].changed_bytes == (0 if a == "b2" else 2 * B)
            streamed = list(diff_ops.stream_extents(uow, "v", "c1", "c2", "D"))
            assert streamed == store.diff("v", "c1", "c2").disks[0].extents
        assert asked  # manifests were read
        data: set[bytes] = set()
        for ref in ("c1", "c2", "b2", "Now"):
            point = resolve_view(uow, "v", ref)
            for leaf in point.layers.values():
                state = load_state(chain_manifest_ids(point.vm, leaf), chunks)
                assert state is not None
                data.update(cid for _, cid in state.present())
        assert data and not data & set(asked)


def test_every_backend_gives_the_same_diff(
    tmp_path: Path, scratch: Path, backends: Callable[[], dict[str, str]]
) -> None:
    """PostgreSQL's log (the deletion found by topic) and S3's manifests."""
    rng = random.Random(3)
    one = bytearray(rng.randbytes(64 * B))
    two = bytearray(one)
    two[5 * B : 7 * B] = bytes(2 * B)
    two[20 * B : 21 * B] = rng.randbytes(B)
    with Store.init(tmp_path / "s", actor="t", **backends()) as store:  # type: ignore[arg-type]
        store.register_vm("VM", [("D", DiskFormat.VHDX)])
        store.create_checkpoint("VM", "c1", disks={"D": _image(scratch / "1", bytes(one))})
        gone = store.create_checkpoint("VM", "c2", disks={"D": _image(scratch / "2", bytes(two))})
        before = store.log()[-1].position
        store.delete_checkpoint("VM", "c2")
        for b, at in ((str(gone.id), None), ("c2", before), ("Now", None)):
            (d,) = store.diff("VM", "c1", b, at=at).disks
            assert d.extents == [Extent(5 * B, 2 * B), Extent(20 * B, B)], b
            assert d.zeroed == [Extent(5 * B, 2 * B)]
