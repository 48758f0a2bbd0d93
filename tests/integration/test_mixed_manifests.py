"""Random histories mixing v1 captures (as the release before segment manifests
wrote them) and v2 captures, with resizes, --changed-blocks, apply and delete
(layer merges): every live checkpoint restores byte for byte, verify stays
clean, and so after gc."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from legacy_v1 import writing_v1

from ckpt import CheckpointType, DiskFormat, Store

BLOCK = 4096
MAX = 24 * BLOCK

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, MAX - 1), st.binary(min_size=1, max_size=9000)),
        st.tuples(st.just("resize"), st.integers(0, MAX // 512)),
        st.tuples(st.just("checkpoint"), st.booleans(), st.booleans()),  # v1?, changed blocks?
        st.tuples(st.just("apply"), st.integers(0, 50)),
        st.tuples(st.just("delete"), st.integers(0, 50), st.booleans()),
    ),
    min_size=1,
    max_size=16,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops)
def test_any_history_of_v1_and_v2_captures_restores_exactly(tmp_path: Path, ops: list) -> None:  # type: ignore[type-arg]
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    image = bytearray(8 * BLOCK)
    dirty: list[tuple[int, int]] = []  # written since the running layer's last capture
    expected: dict[str, bytes] = {}
    src = root / "d.img"
    with Store.init(root / "s", actor="t") as store, pytest.MonkeyPatch.context() as m:
        store.register_vm("VM", [("D", DiskFormat.VHDX)], checkpoint_type=CheckpointType.STANDARD)
        captured = False
        for n, op in enumerate(ops):
            live = [cp.name for cp in store.vm("VM").checkpoints.values()]
            if op[0] == "write":
                _, offset, data = op
                data = data[: max(0, len(image) - offset)]
                image[offset : offset + len(data)] = data
                if data:
                    dirty.append((offset, len(data)))
            elif op[0] == "resize":
                size = op[1] * 512
                image = image[:size] + bytearray(max(0, size - len(image)))
            elif op[0] == "checkpoint":
                _, v1, cbt = op
                src.write_bytes(bytes(image))
                extents = {"D": list(dirty)} if cbt and captured else None
                if v1:
                    with m.context() as old, writing_v1(old):
                        store.create_checkpoint("VM", f"c{n}", disks={"D": src}, raw=True,
                                                changed_blocks=extents)  # fmt: skip
                else:
                    store.create_checkpoint("VM", f"c{n}", disks={"D": src}, raw=True,
                                            changed_blocks=extents)  # fmt: skip
                expected[f"c{n}"] = bytes(image)
                dirty, captured = [], True
            elif op[0] == "apply" and live:
                name = live[op[1] % len(live)]
                store.apply_checkpoint("VM", name)
                image = bytearray(expected[name])
                dirty = []
            elif op[0] == "delete" and live:
                store.delete_checkpoint("VM", live[op[1] % len(live)], subtree=op[2])
        for cp in store.vm("VM").checkpoints.values():
            out = io.BytesIO()
            store.restore_disk("VM", cp.name, "D", out)
            assert out.getvalue() == expected[cp.name], cp.name
        assert store.verify().ok
        store.gc(grace_seconds=0)
        assert store.verify().ok
