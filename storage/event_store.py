"""Wiring of eventsourcing's persistence: where events live and how they are encoded.

The embedded default is one SQLite file per store directory (WAL mode, set by
the library). Events are msgpack (``MsgPackTranscoder``) then zstd
(``ZstdCompressor``), in that order, as the library applies them on write.
"""

from __future__ import annotations

from pathlib import Path

EVENTS_FILE = "events.sqlite"
LOCK_TIMEOUT_S = 30  # a second writer waits this long for SQLite's lock, then fails clearly

COMPRESSOR_TOPIC = "ckpt.storage.compressor:ZstdCompressor"


def sqlite_environment(store_dir: Path) -> dict[str, str]:
    """eventsourcing settings for the embedded SQLite event store in ``store_dir``."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(store_dir / EVENTS_FILE),
        "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT_S),
        "COMPRESSOR_TOPIC": COMPRESSOR_TOPIC,
    }
