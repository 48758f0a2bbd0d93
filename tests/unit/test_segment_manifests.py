"""Segment manifests (format v2): round trips, the fold rule over chains of v1
diffs and v2 states against a plain dict model, and the segment-wise diff."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import StoreCorrupt
from ckpt.storage import disk_state, manifest, segments
from ckpt.storage.manifest import KIND_DISK, ZERO_ID, BlockMap
from ckpt.storage.segment_builder import SegmentBuilder
from ckpt.storage.segments import SPAN

cids = st.binary(min_size=32, max_size=32).filter(lambda b: b != ZERO_ID)


class Chunks:
    """A content-addressed dict, counting reads."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.gets = 0

    def add(self, data: bytes) -> bytes | None:
        if data == bytes(len(data)):
            return None
        cid = hashlib.sha256(data).digest()
        self.data[cid] = data
        return cid

    def sink(self, cid: bytes, data: bytes) -> int:
        new = cid not in self.data
        self.data[cid] = data
        return len(data) if new else 0

    def get(self, cid: bytes) -> bytes:
        self.gets += 1
        return self.data[cid]


@given(st.dictionaries(st.integers(0, SPAN - 1), cids, max_size=50))
def test_a_segment_round_trips(entries: dict[int, bytes]) -> None:
    data = segments.encode_segment(entries)
    assert segments.decode_segment(data, SPAN, "s") == entries
    assert sorted(segments.segment_ids(data, "s")) == sorted(entries.values())


@given(
    st.dictionaries(st.integers(0, SPAN - 1), cids, max_size=40),
    st.data(),
)
@settings(max_examples=60)
def test_changed_entries_of_two_segments_with_the_same_offsets_are_a_dict_comparison(
    old: dict[int, bytes], data: st.DataObject
) -> None:
    """The numpy comparison of two segments' id columns (diff's fast path) equals
    comparing their decoded entries; other offsets: None (the caller compares entries)."""
    new = {o: data.draw(st.sampled_from([cid, b"\7" * 32])) for o, cid in old.items()}
    got = segments.changed_entries(
        segments.encode_segment(old), segments.encode_segment(new), SPAN, "s"
    )
    assert got == sorted((o, c) for o, c in new.items() if old[o] != c)
    more = {**old, SPAN - 1: b"\x09" * 32} if SPAN - 1 not in old else {}
    other = segments.encode_segment(more)
    assert segments.changed_entries(segments.encode_segment(old), other, SPAN, "s") is None


def test_changed_entries_refuses_a_damaged_segment() -> None:
    a = segments.encode_segment({1: b"\1" * 32, 2: b"\2" * 32})
    b = segments.encode_segment({1: b"\1" * 32, 2: b"\3" * 32})
    assert segments.changed_entries(a, b, SPAN, "s") == [(2, b"\3" * 32)]
    with pytest.raises(StoreCorrupt, match="need"):
        segments.changed_entries(a, b[:-1], SPAN, "s")
    with pytest.raises(StoreCorrupt, match="not ascending"):
        segments.changed_entries(a, b, 2, "s")
    zero = segments.encode_segment({1: b"\1" * 32, 2: ZERO_ID})
    with pytest.raises(StoreCorrupt, match="zero id"):
        segments.changed_entries(a, zero, SPAN, "s")
    with pytest.raises(StoreCorrupt, match="magic"):
        segments.changed_entries(b"XXXX" + a[4:], b, SPAN, "s")


def test_a_damaged_segment_or_root_is_refused() -> None:
    data = segments.encode_segment({1: b"\1" * 32, 2: b"\2" * 32})
    with pytest.raises(StoreCorrupt, match="need"):
        segments.decode_segment(data[:-1], SPAN, "s")
    with pytest.raises(StoreCorrupt, match="not ascending"):
        segments.decode_segment(data, 2, "s")
    chunks = Chunks()
    ref = segments.store_root(KIND_DISK, 4096, 4096 * SPAN * 3, [ZERO_ID] * 3, chunks.add)
    root = chunks.data[ref]
    assert segments.decode_root(root, "r").segments == 3
    with pytest.raises(StoreCorrupt, match="pieces"):
        segments.decode_root(root + b"x" * 32, "r")
    with pytest.raises(StoreCorrupt, match="version-1 manifest"):
        manifest.decode(root)  # ckpt up to v1 refuses a v2 root instead of misreading it


BS = 1  # one-byte blocks: three segments are 12 KiB of "disk", so tests stay fast
MAX_BLOCKS = 3 * SPAN + 5


def _v2(chunks: Chunks, parent: disk_state.State | None, op: tuple) -> tuple[bytes, dict]:  # type: ignore[type-arg]
    """Capture with the builder: a full scan of ``image`` (holes: zeros) or a
    patch of some extents over the parent. Returns the root and the model."""
    _, blocks, fed, patch = op
    builder = SegmentBuilder(parent, KIND_DISK, BS, blocks, chunks.sink, _sha, patch=patch)
    model = {}
    if patch and parent is not None:
        model = {i: c for i, c in parent.present() if i < blocks}
    for start, ids in sorted(fed.items()):
        ids = ids[: max(0, blocks - start)]
        if not ids:
            continue
        for k, cid in enumerate(ids):
            if cid is None:
                model.pop(start + k, None)
            else:
                model[start + k] = cid
        builder.feed(start * BS, bytes(len(ids)), ids)
    builder.finish()
    return builder.store(chunks.add), model


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _non_overlapping(fed: dict[int, list]) -> dict[int, list]:  # type: ignore[type-arg]
    out: dict[int, list] = {}  # type: ignore[type-arg]
    end = 0
    for start in sorted(fed):
        if start >= end:
            out[start] = fed[start]
            end = start + len(fed[start])
    return out


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("v1"),
            st.integers(0, MAX_BLOCKS),
            st.dictionaries(st.integers(0, MAX_BLOCKS - 1), st.one_of(cids, st.just(ZERO_ID))),
        ),
        st.tuples(
            st.just("v2"),
            st.integers(0, MAX_BLOCKS),
            st.dictionaries(
                st.integers(0, MAX_BLOCKS - 1),
                st.lists(st.one_of(st.none(), cids), min_size=1, max_size=20),
                max_size=6,
            ).map(_non_overlapping),
            st.booleans(),
        ),
    ),
    min_size=1,
    max_size=8,
)


def _fold(model: dict[int, bytes], entries: dict[int, bytes], blocks: int) -> dict[int, bytes]:
    out = {i: c for i, c in model.items() if i < blocks}
    for i, c in entries.items():
        if i >= blocks:
            continue
        if c == ZERO_ID:
            out.pop(i, None)
        else:
            out[i] = c
    return out


@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_any_chain_of_v1_diffs_and_v2_states_folds_as_a_dict_model(ops: list) -> None:  # type: ignore[type-arg]
    chunks = Chunks()
    refs: list[bytes] = []
    model: dict[int, bytes] = {}
    previous: disk_state.State | None = None
    for op in ops:
        blocks = op[1]
        if op[0] == "v1":
            entries = {i: c for i, c in op[2].items() if i < blocks}
            refs.append(manifest.store(BlockMap(KIND_DISK, BS, blocks, entries), chunks.add))
            model = _fold(model, entries, blocks)
        else:
            ref, model = _v2(chunks, disk_state.load(refs, chunks.get), op)
            refs.append(ref)
        state = disk_state.load(refs, chunks.get)
        assert state is not None and state.size == blocks
        assert dict(state.present()) == model
        assert list(state.present()) == sorted(model.items())  # in block order
        # the diff from the previous state, laid over it, gives this one
        before = dict(previous.present()) if previous is not None else {}
        for index, cid in disk_state.diff(previous, state):
            if cid == ZERO_ID:
                before.pop(index, None)
            else:
                before[index] = cid
        assert {i: c for i, c in before.items() if i < blocks} == model
        previous = state


def test_an_unchanged_segment_keeps_its_id_and_a_patch_reads_only_touched_segments() -> None:
    chunks = Chunks()
    blocks = 8 * SPAN
    ids = [bytes([1 + k % 200]) * 32 for k in range(blocks)]
    ref, _ = _v2(chunks, None, ("v2", blocks, {0: ids[:blocks]}, False))
    parent = disk_state.load([ref], chunks.get)
    assert parent is not None
    chunks.gets = 0
    changed = ids[:]
    changed[3 * SPAN + 7] = b"\xee" * 32
    builder = SegmentBuilder(parent, KIND_DISK, BS, blocks, chunks.sink, _sha, patch=True)
    builder.feed((3 * SPAN + 7) * BS, b"\0", [changed[3 * SPAN + 7]])
    builder.finish()
    new = builder.store(chunks.add)
    assert builder.changed_blocks == 1
    assert chunks.gets <= 2  # the top-list piece and the one segment touched
    state = disk_state.load([ref, new], chunks.get)
    assert state is not None
    same = [k for k in range(8) if state.segment_id(k) == parent.segment_id(k)]
    assert same == [0, 1, 2, 4, 5, 6, 7]
    assert dict(state.present()) == dict(enumerate(changed))


def test_a_state_streams_its_blocks_reading_segments_only_as_they_are_reached() -> None:
    """Memory flat in disk size: ``present`` reads a segment when it gets there
    (16 at a time with ``get_many``), never the whole map first."""
    chunks = Chunks()
    blocks = 40 * SPAN
    ids = [bytes([1 + k % 250]) * 32 for k in range(blocks)]
    ref, _ = _v2(chunks, None, ("v2", blocks, {0: ids}, False))
    many: list[int] = []

    def get_many(want: object) -> list[bytes]:
        assert isinstance(want, list)
        many.append(len(want))
        return [chunks.data[c] for c in want]

    state = disk_state.load([ref], chunks.get, get_many)
    assert state is not None
    chunks.gets = 0
    stream = state.present()
    assert next(stream) == (0, ids[0])
    assert many == [disk_state.PREFETCH]  # 16 of 40 segments read so far
    assert len(state._cache) <= 4  # decoded segments kept: a few, whatever the size
    assert sum(1 for _ in stream) == blocks - 1
    assert many == [16, 16, 8]
    assert chunks.gets == 1  # the top-list piece; every segment came through get_many
