"""Issue 11 "done when": disks that grow, shrink, become empty and change between
captures, with checkpoint deletes, applies and ``gc --grace 0`` in between.

Every live checkpoint and every backup point must restore byte for byte, and
verify and gc must stay usable, whatever the sequence. Captures are taken with
a full read or with changed extents (the blocks that differ from the running
layer's last capture, as Hyper-V RCT would report them; a resize is not in them).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt import DiskFormat, Store

SECTOR = 512
BLOCK = 4096
MAX_SECTORS = 6 * BLOCK // SECTOR  # up to 6 blocks: partial blocks at every end

sizes = st.integers(0, MAX_SECTORS).map(lambda n: n * SECTOR)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("resize"), sizes, st.booleans()),  # grow with data or with zeros
        st.tuples(st.just("write"), st.integers(0, MAX_SECTORS * SECTOR), st.integers(1, 9000)),
        st.tuples(st.just("empty")),
        st.tuples(st.just("checkpoint"), st.booleans()),  # with changed extents?
        st.tuples(st.just("sync"), st.booleans()),
        st.tuples(st.just("apply"), st.integers(0, 30)),
        st.tuples(st.just("delete"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("gc")),
    ),
    min_size=1,
    max_size=16,
)


def _changed_extents(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """The sectors of the common length whose bytes differ (what RCT would list)."""
    common = min(len(old), len(new))
    return [
        (at, SECTOR)
        for at in range(0, common, SECTOR)
        if old[at : at + SECTOR] != new[at : at + SECTOR]
    ]


def _restored(store: Store, point: str) -> bytes:
    out = io.BytesIO()
    store.restore_disk("VM", point, "D", out)
    return out.getvalue()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, seed=st.integers(0, 2**32 - 1))
def test_resized_disks_restore_every_live_point_and_gc_verify_stay_usable(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[Any, ...]], seed: int
) -> None:
    rng = random.Random(seed)
    root = tmp_path_factory.mktemp("resize")
    image = bytearray()
    captured = b""  # the running layer's content as last recorded
    checkpoints: dict[str, bytes] = {}
    points: dict[str, bytes] = {}
    src = Path(root) / "disk.raw"
    with Store.init(Path(root) / "s") as store:
        store.register_vm("VM", [("D", DiskFormat.VHDX)])
        for n, step in enumerate(steps):
            live = list(store.vm("VM").checkpoints.values())
            kind = step[0]
            if kind == "resize":
                size, with_data = step[1], step[2]
                if size <= len(image):
                    del image[size:]
                else:
                    grown = size - len(image)
                    image += rng.randbytes(grown) if with_data else bytes(grown)
            elif kind == "write" and image:
                at = step[1] % len(image)
                length = min(step[2], len(image) - at)
                image[at : at + length] = rng.randbytes(length)
            elif kind == "empty":
                image.clear()
            elif kind in ("checkpoint", "sync"):
                src.write_bytes(image)
                extents = {"D": _changed_extents(captured, bytes(image))} if step[1] else {}
                if kind == "checkpoint":
                    store.create_checkpoint("VM", f"c{n}", disks={"D": src}, changed_blocks=extents)
                    checkpoints[f"c{n}"] = bytes(image)
                else:
                    store.sync("VM", {"D": src}, name=f"b{n}", changed_blocks=extents)
                    points[f"b{n}"] = bytes(image)
                captured = bytes(image)
            elif kind == "apply" and live:
                name = live[step[1] % len(live)].name
                store.apply_checkpoint("VM", name)
                image[:] = captured = checkpoints[name]
            elif kind == "delete" and live:
                store.delete_checkpoint("VM", live[step[1] % len(live)].name, subtree=step[2])
            elif kind == "gc":
                store.gc(0)
        for cp in store.vm("VM").checkpoints.values():
            assert _restored(store, cp.name) == checkpoints[cp.name], cp.name
        for name, data in points.items():
            assert _restored(store, name) == data, name
        assert store.verify().ok
        store.gc(0)
        assert store.verify().ok
        for name, data in points.items():
            assert _restored(store, name) == data, name
