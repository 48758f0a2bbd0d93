"""``ckpt`` with ``Store.open_disk``/``open_memory`` standing in for the reader.

Until the random-access reader (issue 15 item 1) is merged, the store has no
``open_disk``: this runs the real CLI with one that restores the disk (or the
memory image) into memory through ``restore_disk`` and serves those bytes, so
``ckpt serve`` shows a point's true content. Usage: ``python nbd_fake_serve.py
ARGS...`` as ``ckpt ARGS...``. Once the reader is merged, the tests run ``ckpt``.
"""

from __future__ import annotations

import io
import sys

from nbd_support import BytesSource

from ckpt.cli import main
from ckpt.store import Store


def open_disk(self: Store, vm: str, point: str, disk: str, at: str | int | None = None) -> object:
    out = io.BytesIO()
    self.restore_disk(vm, point, disk, out, at=at)
    return BytesSource(out.getvalue())


def open_memory(self: Store, vm: str, point: str, at: str | int | None = None) -> object:
    out = io.BytesIO()
    self.restore_memory(vm, point, out, at=at)
    return BytesSource(out.getvalue())


def patch() -> None:
    if not hasattr(Store, "open_disk"):
        Store.open_disk = open_disk  # type: ignore[attr-defined]
        Store.open_memory = open_memory  # type: ignore[attr-defined]


if __name__ == "__main__":
    patch()
    sys.argv[0] = "ckpt"
    main()
