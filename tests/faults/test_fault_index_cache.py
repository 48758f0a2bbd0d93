"""Kill points inside the chunk-index cache's write path: appends, merges, rebuilds.

A worker process writes index files into a local backend and takes them into
the cache (``add`` + ``persist``: one run; ``refresh`` after deleting some:
tombstones; now and then the cache dropped: a rebuild), with small runs so that
size-tiered merges happen often. It is SIGKILLed after a seeded delay. Whatever
moment the kill hit (a run half written, a manifest not yet renamed, a merge
between its publish and its sweep), a fresh index must answer exactly as the
index files say: the cache is never ahead of them and never wrong.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ckpt.storage.chunks import LocalChunkBackend
from ckpt.storage.chunks.index import ChunkIndex
from ckpt.storage.chunks.index_file import decode_index_file

from ._harness import SEED

KILLS = 8

WORKER = textwrap.dedent(
    """
    import random, sys
    from pathlib import Path
    from ckpt.storage.chunks import ChunkId, LocalChunkBackend, PackEntry
    from ckpt.storage.chunks import index as index_module
    from ckpt.storage.chunks.index import ChunkIndex
    from ckpt.storage.chunks.index_file import IndexFile, encode_index_file
    from ckpt.storage.chunks.layout import index_name

    index_module.WINDOW = 512  # small rebuild batches: more runs and merges to kill
    root, seed = Path(sys.argv[1]), sys.argv[2]
    rng = random.Random(seed)
    backend = LocalChunkBackend(root)
    index = ChunkIndex(backend)
    index.refresh()
    print("go", flush=True)
    pool = [rng.randbytes(32) for _ in range(4000)]
    while True:
        for _ in range(rng.randint(1, 3)):
            pack_id = rng.randbytes(16)
            ids = rng.sample(pool, rng.randint(1, 200))
            entries = [PackEntry(ChunkId(c), 16 + 50 * i, 50, 4096) for i, c in enumerate(ids)]
            f = IndexFile(pack_id, 1.0, 16 + 50 * len(ids) + 48 * len(ids) + 40, entries)
            backend.put(index_name(pack_id), encode_index_file(f))
            index.add(f)
        index.persist()
        if rng.random() < 0.3:
            names = sorted(backend.list("index/"))
            backend.delete(rng.choice(names))
            index.refresh()
        if rng.random() < 0.1:
            index.reload()
        index.stats()
    """
)


def _model(backend: LocalChunkBackend) -> dict[bytes, set[tuple[bytes, int]]]:
    model: dict[bytes, set[tuple[bytes, int]]] = {}
    for name in backend.list("index/"):
        f = decode_index_file(backend.get(name), name)
        for e in f.entries:
            model.setdefault(e.chunk_id, set()).add((f.pack_id, e.offset))
    return model


def test_the_index_cache_killed_anywhere_answers_as_the_index_files(tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}/index-cache/delays")
    root = tmp_path / "chunks"
    backend = LocalChunkBackend(root)
    absent = [random.Random(SEED).randbytes(32) for _ in range(20)]
    for k in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), f"{SEED}/index-cache/{k}"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,  # not the source tree: its ckpt/ folder would shadow the package
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
            time.sleep(rng.uniform(0.05, 1.5))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        model = _model(backend)
        index = ChunkIndex(backend)
        asked = list(model) + absent
        packs, slots = index.locate_many(asked)
        for cid, slot in zip(asked, slots, strict=True):
            if cid not in model:
                assert slot is None, f"kill {k}: {cid.hex()} found, no index file lists it"
            else:
                assert slot is not None, f"kill {k}: {cid.hex()} lost"
                assert (packs[slot[0]].pack_id, slot[1]) in model[cid], f"kill {k}: wrong copy"
        assert index.stats().chunks == len(model), f"kill {k}"
        assert list(index.ids()) == sorted(model), f"kill {k}"
        index.close()
