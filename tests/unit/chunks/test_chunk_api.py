"""The public API of ckpt.storage.chunks is exactly what __init__ exports."""

from __future__ import annotations

import ckpt.storage.chunks as chunks


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(chunks.__all__) == [
        "ChunkBackend",
        "ChunkId",
        "ChunkStats",
        "ChunkStore",
        "ChunkWriter",
        "DEFAULT_LEVEL",
        "DEFAULT_PACK_SIZE",
        "GcReport",
        "IdSet",
        "LocalChunkBackend",
        "MemoryChunkBackend",
        "PackEntry",
        "PackWriter",
        "RebuildReport",
        "S3ChunkBackend",
        "S3Location",
        "UpgradeReport",
        "VerifyReport",
        "chunk_id",
        "from_hex",
        "is_zero",
        "parse_s3_url",
        "read_pack_index",
        "to_hex",
    ]
    assert all(hasattr(chunks, name) for name in chunks.__all__)


def test_defaults_are_16_mib_packs_and_zstd_level_1() -> None:
    assert chunks.DEFAULT_PACK_SIZE == 16 * 1024 * 1024
    assert chunks.DEFAULT_LEVEL == 1
