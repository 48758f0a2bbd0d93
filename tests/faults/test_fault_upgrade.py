"""Kill points inside ``ckpt upgrade`` (storage/chunks/upgrade.py).

The upgrade writes ``FORMAT`` first, then per version-1 pack: a new version-2
pack, its index file (naming the v1 pack it came from), the old index file's
delete, the old pack's delete. Killed anywhere, the store must verify clean,
every checkpoint must restore its captured bytes, and the next run must finish
the work (no v1 pack left, none converted twice).

A format-1 store is made the way the old release left one: the same captures
with no ``chunks/FORMAT`` (so they write version-1 packs). Before each kill
point the marker is removed again and more is captured, as a host still on the
old release would add v1 packs, so every kill point has work to cut.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._harness import Harness, Image, MiB, Point

UPGRADE_KILLS = 6


def _pack_versions(store: Path) -> dict[int, int]:
    versions: dict[int, int] = {}
    for p in (store / "chunks" / "packs").rglob("*.pack"):
        with p.open("rb") as f:
            v = int.from_bytes(f.read(12)[8:12], "little")
        versions[v] = versions.get(v, 0) + 1
    return versions


def test_upgrade_killed_anywhere_loses_nothing_and_resumes(tmp_path: Path, scratch: Path) -> None:
    h = Harness("upgrade", tmp_path, scratch)
    h.init()
    marker = h.store / "chunks" / "FORMAT"
    h.ok("vm", "add", "u", "--disk", "D")
    disk = Image(scratch / "d.raw", 16 * MiB, h.rng)
    number = 0

    def old_release_captures(count: int) -> None:
        nonlocal number
        marker.unlink(missing_ok=True)  # a format-1 store: captures write v1 packs
        for _ in range(count):
            disk.mutate(h.rng.randrange(256, 1024), h.rng.randrange(0, 3) * MiB)
            name = f"c{number}"
            number += 1
            h.ok("checkpoint", "create", "u", name, "--disk", f"D={disk.path}")
            h.ledger[name] = Point("u", name, {"D": disk.sha})

    old_release_captures(4)
    assert set(_pack_versions(h.store)) == {1}
    h.check()
    typical = h.timed("upgrade")
    assert set(_pack_versions(h.store)) == {2}
    h.check()

    for _ in range(UPGRADE_KILLS):
        old_release_captures(2)
        outcome = h.kill_point("upgrade", typical=typical)
        left = _pack_versions(h.store).get(1, 0)
        h.result(outcome, "done" if left == 0 else "part done" if marker.exists() else "not begun")
        h.check()

    h.where = f"[{h.kind}: an uncut upgrade after the kill points]"
    report = json.loads(h.ok("upgrade", "--json"))
    assert report["remaining"] == 0 and not report["problems"], f"{h.where} {report}"
    assert set(_pack_versions(h.store)) == {2}, h.where
    assert json.loads(marker.read_text()) == {"packs": 2}
    again = json.loads(h.ok("upgrade", "--json"))
    assert again["converted_packs"] == 0 and again["format_before"] == 2
    h.check()
    h.final_check()
