"""An index file whose pack is gone is a finding of ``verify`` (exit 23), even
when no event references its chunks: a capture that deduplicated against them
would record references to bytes that no longer exist. Writers and gc keep the
order (pack before index, index deleted before pack) durably, so only a file
system that lost that order leaves one (tests/powerloss plants exactly that)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import ckpt
from ckpt.cli import run
from ckpt.storage.chunks.layout import INDEX, pack_id_of_index, pack_name


def _cli(store: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--store", str(store), *args], out, err)
    return code, out.getvalue(), err.getvalue()


def test_an_index_file_naming_a_vanished_pack_fails_verify_until_repaired(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    rng = random.Random(14)
    with ckpt.Store.init(store) as opened, opened.chunks.writer() as writer:
        for _ in range(50):  # a dead capture's pack: no event references it
            writer.add(rng.randbytes(4096))
    index_files = list((store / "chunks" / "index").rglob("*"))
    (index_file,) = [p for p in index_files if p.is_file()]
    name = f"{INDEX}{index_file.name}"
    pack_id = pack_id_of_index(name)
    assert pack_id is not None
    pack = store / "chunks" / pack_name(pack_id)
    assert _cli(store, "verify", "--json")[0] == 0
    pack.unlink()  # what a file system that lost gc's order leaves behind

    code, out, err = _cli(store, "verify", "--json")
    assert code == 23, (code, out, err)
    report = json.loads(out)
    assert not report["ok"] and report["stale_index"] == [name] and not report["bad"]
    assert "index files naming packs that are gone" in err and "--repair" in err
    code, out, err = _cli(store, "verify")
    assert code == 23 and f"index file {name} names a pack that is gone" in out

    code, out, err = _cli(store, "verify", "--repair", "--json")
    assert code == 0, err
    assert json.loads(out)["repair"]["stale_index_files_removed"] == 1
    assert not index_file.exists()
    assert _cli(store, "verify", "--json")[0] == 0
