"""IdSet: a set of chunk ids that spills sorted runs to a temporary directory."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.storage.chunks.id_set import IdSet


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.binary(min_size=32, max_size=32), max_size=300),
    st.lists(st.binary(min_size=32, max_size=32), max_size=50),
    st.integers(1, 40),
)
def test_an_id_set_behaves_like_a_set_whatever_it_spilled(
    added: list[bytes], others: list[bytes], budget: int
) -> None:
    with IdSet(budget=budget) as ids:
        ids.add_many(added + added[:7])  # re-adding changes nothing
        asked = others + added[::3]
        assert ids.contains_many(asked) == [c in set(added) for c in asked]
        assert all(c in ids for c in added[:5])
        assert list(ids) == sorted(set(added))  # sorted, each id once
        assert len(ids) == len(set(added))
        assert ids.contains_many([b"short"]) == [False]


def test_many_spills_merge_and_close_removes_the_files(tmp_path: Path) -> None:
    rng = random.Random(1)
    added = [rng.randbytes(32) for _ in range(20_000)]
    ids = IdSet(budget=700, directory=tmp_path)  # 28 spills: merged past 8 runs
    ids.add_many(added)
    absent = [rng.randbytes(32) for _ in range(1000)]
    assert ids.contains_many(added[::7] + absent) == [True] * len(added[::7]) + [False] * 1000
    assert len(ids) == 20_000
    assert list(tmp_path.iterdir())
    ids.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        ids.contains_many(added[:1])


def test_ids_of_the_wrong_length_are_refused() -> None:
    with IdSet() as ids, pytest.raises(ValueError, match="32 bytes"):
        ids.add(b"x" * 31)
