"""Where a store lives: its directory, its events and chunks backends, its marker.

Terms:
    directory   ``--store DIR``: holds the marker ``ckpt-store.json``; unless the
                marker names other backends, also the events (``events.sqlite``)
                and the chunks (``chunks/``): the embedded default.
    URLs        ``--events URL`` / ``--chunks URL`` (storage/locations.py): a
                store's backends elsewhere. ``ckpt --store DIR init --events URL
                --chunks URL`` writes them into DIR's marker (mode 0600: a
                PostgreSQL URL may hold a password); a store given by URLs alone
                has no directory.
    meta        format and encryption check of a store. A store with a backend
                named by URL keeps its meta also in the chunk backend, as object
                ``ckpt-store.json``: a second host attaches to the store (``init``
                with the same URLs) or opens it by URL, and finds its format and
                key check there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt.domain import InvalidValue, StoreCorrupt, StoreNotFound, StoreUnavailable
from ckpt.storage.chunks import ChunkBackend, LocalChunkBackend
from ckpt.storage.durable import write_file
from ckpt.storage.event_store import EVENTS_FILE, postgres_environment, sqlite_environment
from ckpt.storage.locations import (
    display,
    file_path,
    kind_of_chunks,
    kind_of_events,
    parse_postgres,
    sqlite_path,
)
from ckpt.storage.no_space import is_no_space, os_reason, store_full

MARKER = "ckpt-store.json"
META_OBJECT = "ckpt-store.json"  # the meta's copy in a chunk backend given by URL
CHUNKS_DIR = "chunks"
FORMAT = 1


@dataclass
class StoreConfig:
    directory: Path | None
    events: str | None = field(default=None, repr=False)  # None: directory/events.sqlite
    chunks: str | None = field(default=None, repr=False)  # None: directory/chunks
    encryption: dict[str, Any] | None = field(default=None)
    store_id: str | None = None  # None: a store of before store ids (or embedded)

    def __post_init__(self) -> None:
        if self.directory is None and not (self.events and self.chunks):
            raise InvalidValue(
                "a store without a directory needs both --events URL and --chunks URL"
            )
        # Checked here, before any server is asked: a malformed URL is exit 14,
        # not "no store there".
        if self.events:
            if kind_of_events(self.events) == "sqlite":
                sqlite_path(self.events)
            else:
                parse_postgres(self.events, os.environ)
        if self.chunks:
            if kind_of_chunks(self.chunks) == "file":
                file_path(self.chunks)
            else:
                from ckpt.storage.chunks.s3 import parse_s3_url

                parse_s3_url(self.chunks)

    @property
    def remote(self) -> bool:
        """Whether a backend is named by URL (then the meta is kept in the chunks too)."""
        return bool(self.events or self.chunks)

    @property
    def events_kind(self) -> str:
        return kind_of_events(self.events) if self.events else "sqlite"

    @property
    def chunks_kind(self) -> str:
        return kind_of_chunks(self.chunks) if self.chunks else "file"

    def describe(self) -> str:
        """Where the store is, safe to print (no password)."""
        if not self.remote:
            return str(self.directory)
        parts = [f"events {display(self.events)}" if self.events else "",
                 f"chunks {display(self.chunks)}" if self.chunks else ""]  # fmt: skip
        where = ", ".join(p for p in parts if p)
        return f"{self.directory} ({where})" if self.directory else where

    def sqlite_file(self) -> Path | None:
        if self.events is None:
            assert self.directory is not None
            return self.directory / EVENTS_FILE
        return sqlite_path(self.events) if self.events_kind == "sqlite" else None

    def events_environment(self, create: bool) -> dict[str, str]:
        """eventsourcing's settings for the events. Without ``create`` (every
        command but ``init`` and ``copy``) the event store must be there already:
        an open that created an empty log (a mistyped schema, a deleted file)
        would hand ``gc`` a store that references no chunk at all."""
        sqlite = self.sqlite_file()
        if sqlite is not None:
            if not create and not sqlite.is_file():
                raise StoreNotFound(
                    f"the event log {sqlite} of the store at {self.describe()} is missing"
                )
            env = sqlite_environment(sqlite.parent)
            env["SQLITE_DBNAME"] = str(sqlite)
            return env
        assert self.events is not None
        loc = parse_postgres(self.events, os.environ)
        try:
            from ckpt.storage.event_store import check_schema

            found = check_schema(loc, create)
        except Exception as e:  # psycopg.Error: connection refused, bad password, ...
            raise StoreUnavailable(
                f"cannot reach the event store {loc.display()}: {first_line(e)}"
            ) from e
        if found == "none" and not create:
            raise StoreNotFound(
                f"no ckpt event tables in schema {loc.schema!r} of {loc.display()}: check the "
                "URL (create a store there with: ckpt ... init --events URL --chunks URL)"
            )
        return postgres_environment(loc, create_tables=found != "complete")

    def chunk_backend(self, create: bool = False) -> ChunkBackend:
        """The chunk backend; with ``create`` (``init``), an S3 bucket that does
        not exist yet is created, as restic's init does (a local directory is
        created by its backend anyway)."""
        if self.chunks is None:
            assert self.directory is not None
            return LocalChunkBackend(self.directory / CHUNKS_DIR)
        if self.chunks_kind == "file":
            return LocalChunkBackend(file_path(self.chunks))
        from ckpt.storage.chunks.s3 import S3ChunkBackend

        backend = S3ChunkBackend.from_url(self.chunks)
        if create:
            backend.create_bucket()
        return backend

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"format": FORMAT, "events": self.events or "sqlite"}
        if self.chunks:
            meta["chunks"] = self.chunks
        if self.encryption is not None:
            meta["encryption"] = self.encryption
        if self.store_id is not None:
            meta["store_id"] = self.store_id
        return meta

    def write_marker(self) -> None:
        assert self.directory is not None
        text = (json.dumps(self.meta()) + "\n").encode()
        try:
            write_file(self.directory / MARKER, text, 0o600)
        except OSError as e:
            if is_no_space(e):
                marker = self.directory / MARKER
                raise store_full(
                    MARKER, str(self.directory), len(text), os_reason(e), marker
                ) from e
            raise


def first_line(error: BaseException) -> str:
    """A server's error text is often several lines (DETAIL:, HINT:): ours are one."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def check_format(meta: dict[str, Any], where: str) -> None:
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise StoreCorrupt(f"{where} has store format {fmt!r}; this ckpt reads format {FORMAT}")


def read_marker(directory: Path) -> StoreConfig:
    marker = directory / MARKER
    if not marker.is_file():
        raise StoreNotFound(
            f"no ckpt store at {directory} (create one with: ckpt --store {directory} init)"
        )
    try:
        meta = json.loads(marker.read_text())
        check_format(meta, str(marker))
        events = meta.get("events", "sqlite")
        return StoreConfig(
            directory,
            None if events == "sqlite" else events,
            meta.get("chunks"),
            meta.get("encryption"),
            meta.get("store_id"),
        )
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise StoreCorrupt(f"{marker} is not a ckpt store marker: {e}") from e


def read_remote_meta(backend: ChunkBackend, where: str) -> dict[str, Any] | None:
    """The meta object in a chunk backend given by URL; None if there is none.
    Listed, not HEADed: S3 answers a HEAD in a missing bucket with a bare 404,
    a listing with NoSuchBucket, which the error then names."""
    if META_OBJECT not in set(backend.list(META_OBJECT)):
        return None
    try:
        meta = json.loads(backend.get(META_OBJECT))
    except ValueError as e:
        raise StoreCorrupt(f"{META_OBJECT} in {where} is not a ckpt store marker: {e}") from e
    if not isinstance(meta, dict):
        raise StoreCorrupt(f"{META_OBJECT} in {where} is not a ckpt store marker")
    check_format(meta, f"{META_OBJECT} in {where}")
    return meta


def write_remote_meta(backend: ChunkBackend, config: StoreConfig) -> None:
    """Format, key check and store id only: the URLs (and passwords) stay on the host."""
    meta: dict[str, Any] = {"format": FORMAT}
    if config.encryption is not None:
        meta["encryption"] = config.encryption
    if config.store_id is not None:
        meta["store_id"] = config.store_id
    backend.put(META_OBJECT, (json.dumps(meta) + "\n").encode())
