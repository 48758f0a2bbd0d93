"""``storage/state_diff.py`` against a reference model: states as plain dicts.

A state here is an in-memory one (``disk_state.State`` over a folded v1
overlay, no base manifest): block index -> chunk id, ``ZERO_ID`` or absent
for zeros. The model compares the ids block by block below B's block count,
the shorter state read as zeros, and merges the changed blocks into runs.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import InvalidValue
from ckpt.storage.disk_state import State
from ckpt.storage.manifest import KIND_DISK, ZERO_ID
from ckpt.storage.segments import SPAN
from ckpt.storage.state_diff import (
    Extent,
    Runs,
    changed_extents,
    compare,
    same_content,
)

B = 4096
IDS = [ZERO_ID, b"x" * 32, b"y" * 32, b"z" * 32]  # few ids: equal blocks are common


def _state(entries: dict[int, bytes], size: int, block_size: int = B) -> State:
    def unread(cid: bytes) -> bytes:
        raise AssertionError(f"chunk {cid.hex()[:8]} read")

    return State(unread, KIND_DISK, block_size, size, None, dict(entries))


def _model(
    a: dict[int, bytes] | None, b: dict[int, bytes], size_b: int
) -> tuple[list[Extent], list[Extent]]:
    old = a or {}
    blocks = -(-size_b // B)
    changed = [i for i in range(blocks) if old.get(i, ZERO_ID) != b.get(i, ZERO_ID)]
    zeroed = [i for i in changed if b.get(i, ZERO_ID) == ZERO_ID]
    return _runs(changed, size_b), _runs(zeroed, size_b)


def _runs(blocks: list[int], size: int) -> list[Extent]:
    out: list[Extent] = []
    for i in blocks:
        start, end = i * B, min((i + 1) * B, size)
        if out and out[-1].end == start:
            out[-1] = Extent(out[-1].offset, end - out[-1].offset)
        else:
            out.append(Extent(start, end - start))
    return out


# Sizes around a segment boundary (4,096 blocks), some not a multiple of the block.
sizes = st.one_of(
    st.integers(0, 64).map(lambda n: n * B),
    st.integers(SPAN - 3, SPAN + 3).map(lambda n: n * B),
    st.integers(1, (SPAN + 8) * B),
)


@st.composite
def states(draw: st.DrawFn) -> tuple[dict[int, bytes], int]:
    size = draw(sizes)
    blocks = -(-size // B)
    if blocks == 0:
        return {}, size
    picks = st.one_of(st.integers(0, min(blocks - 1, 80)), st.integers(0, blocks - 1))
    entries = draw(st.dictionaries(picks, st.sampled_from(IDS), max_size=60))
    return entries, size


@settings(max_examples=150, deadline=None, derandomize=True)
@given(a=st.one_of(st.none(), states()), b=states())
def test_the_extents_are_the_changed_blocks_merged_and_clipped_to_b(
    a: tuple[dict[int, bytes], int] | None, b: tuple[dict[int, bytes], int]
) -> None:
    old = None if a is None else _state(*a)
    new = _state(*b)
    found = compare(old, new, "disk 'D'")
    extents, zeroed = _model(None if a is None else a[0], b[0], b[1])
    assert found.extents == extents
    assert found.zeroed == zeroed
    assert list(changed_extents(old, new, "disk 'D'")) == extents
    assert all(e.end <= b[1] and e.length > 0 for e in extents)
    if a is not None:
        assert same_content(_state(*a), _state(*b), "memory") == (
            a[1] == b[1] and not _model(a[0], b[0], max(a[1], b[1]))[0]
        )


def test_a_missing_target_changes_nothing() -> None:
    assert compare(_state({0: IDS[1]}, B), None, "disk 'D'").extents == []


def test_a_shrink_is_no_extent_and_a_grow_reports_only_its_non_zero_blocks() -> None:
    a = _state({0: IDS[1], 5: IDS[2]}, 8 * B)
    shrunk = compare(a, _state({0: IDS[1]}, 2 * B), "d")
    assert shrunk.extents == [] and shrunk.zeroed == []
    grown = compare(a, _state({0: IDS[1], 5: IDS[2], 9: IDS[3]}, 12 * B - 100), "d")
    assert grown.extents == [Extent(9 * B, B)]
    last = compare(a, _state({0: IDS[1], 5: IDS[2], 11: IDS[3]}, 12 * B - 100), "d")
    assert last.extents == [Extent(11 * B, B - 100)]  # clipped to B's size
    assert last.extents[0].end == 12 * B - 100


def test_zeroed_blocks_are_extents_too() -> None:
    a = _state({1: IDS[1], 2: IDS[1], 3: IDS[2]}, 8 * B)
    found = compare(a, _state({2: IDS[2]}, 8 * B), "d")
    assert found.extents == [Extent(B, 3 * B)]
    assert found.zeroed == [Extent(B, B), Extent(3 * B, B)]


def test_runs_merge_adjacent_blocks_only() -> None:
    runs = Runs(B, 100 * B)
    got = [runs.add(i) for i in (1, 2, 3, 7, 9, 10)] + [runs.close(), runs.close()]
    assert got == [None, None, None, Extent(B, 3 * B), Extent(7 * B, B), None,
                   Extent(9 * B, 2 * B), None]  # fmt: skip


def test_states_of_different_block_sizes_are_refused_naming_both() -> None:
    with pytest.raises(InvalidValue, match=r"disk 'D'.*block sizes 4096 and 65536"):
        compare(_state({}, B), _state({}, 65536, 65536), "disk 'D'")
    with pytest.raises(InvalidValue, match="block sizes"):
        same_content(_state({}, B), _state({}, B, 65536), "memory")
