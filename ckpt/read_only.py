"""A store on read-only media: finding out, reading it without writing a byte.

Terms:
    read-only   the store's own files cannot be written: a file system mounted
                read-only (``statvfs`` says ``ST_RDONLY``: a CD, a write-protected
                or ``-o ro`` disk, a snapshot), or (not for root, whom
                permissions do not stop) a directory or event log this user
                may not write. Local places only: a server's refusal is its own.
    immutable   how the event log is opened then: SQLite's URI parameter
                ``immutable=1`` (no locks, no ``-shm`` or ``-wal`` file
                created; the database is trusted not to change: nobody can
                write it). A WAL-mode database opened ``mode=ro`` wants its
                ``-shm`` file, which a read-only directory cannot give it
                (SQLite 3.40: "unable to open database file").
    private copy  the event log copied (with its ``-wal``) into a temporary
                directory and opened there, writable: when a ``-wal`` file
                holds committed transactions (``immutable`` would not read
                them), or the read models lag the log (a command was killed
                between its save and its catch-up), so the catch-up has a
                place to write. It costs a copy of the file (~1 s per GiB),
                only then; the copy is removed at ``close``.

Write commands are refused by the unit of work (``UnitOfWork.writable``) before
any work; read commands need nothing else but a place for the chunk-index cache
(``cache_dir``), which a read-only chunk directory cannot hold.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

from ckpt.domain import StorageError, StoreReadOnly
from ckpt.storage.chunks import LocalChunkBackend
from ckpt.storage.chunks.layout import INDEX, PACKS
from ckpt.storage.durable import make_dirs
from ckpt.storage.no_space import is_no_space, os_reason, store_full

from .store_config import StoreConfig

WAL_SUFFIX = "-wal"
# As storage/chunks/index_cache.py's CACHE_ENV (importing it would load numpy,
# ~50 ms of every command, for a name).
CACHE_ENV = "XDG_CACHE_HOME"


def _places(config: StoreConfig) -> list[Path]:
    """The store's local files and directories that a write command writes (not
    the directory of a store whose backends are servers: only its marker is
    there, which no command but ``init`` writes)."""
    places: list[Path] = []
    sqlite = config.sqlite_file()
    if sqlite is not None:
        places += [sqlite.parent, sqlite]
    root = chunk_root(config)
    if root is not None:
        places += [root, root / PACKS.rstrip("/"), root / INDEX.rstrip("/")]
    return [p for p in places if p.exists()]


def chunk_root(config: StoreConfig) -> Path | None:
    """The directory of a local chunk backend (None: S3)."""
    backend = config.chunk_backend() if config.chunks_kind == "file" else None
    return backend.root if isinstance(backend, LocalChunkBackend) else None


def reason(config: StoreConfig) -> str | None:
    """Why the store cannot be written ("on a read-only file system"), or None."""
    places = _places(config)
    for place in places:
        try:
            if os.statvfs(place).f_flag & os.ST_RDONLY:
                return "on a read-only file system"
        except OSError:
            continue
    if os.geteuid() != 0:  # root writes whatever the permission bits say
        for place in places:
            if not os.access(place, os.W_OK):
                return f"not writable by this user ({place})"
    return None


def check_can_create(directory: Path, what: str) -> None:
    """Refuse (``StoreReadOnly``) to create ``what`` in ``directory`` on read-only
    media, before anything is tried: ``init``, ``copy --to-store``. The nearest
    directory that exists says (the new one does not yet)."""
    place = directory
    while not place.exists() and place.parent != place:
        place = place.parent
    try:
        read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except OSError:
        return  # let the creation itself say what is wrong
    if read_only:
        raise StoreReadOnly(f"cannot {what} at {directory}: {place} is on a read-only file system")


def make_directory(directory: Path, what: str) -> None:
    """``mkdir -p``, each new directory durable in its parent (a power cut must
    not lose a store whose init returned), its failure an error that names the
    directory (no traceback)."""
    try:
        make_dirs(directory)
    except OSError as e:
        if is_no_space(e):
            raise store_full("the store directory", str(directory), None, os_reason(e)) from e
        raise StorageError(f"cannot {what} at {directory}: {e.strerror or e}") from e


def immutable_uri(path: Path) -> str:
    """The SQLite URI that opens ``path`` without writing anything beside it."""
    return f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"


def wal_has_data(path: Path) -> bool:
    """Whether ``path``'s ``-wal`` file may hold transactions the file lacks
    (a clean close checkpoints and deletes it)."""
    wal = path.with_name(path.name + WAL_SUFFIX)
    try:
        return wal.stat().st_size > 0
    except OSError:
        return False


def private_copy(path: Path) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    """``path`` and its ``-wal`` copied into a new temporary directory: (the
    copy, the directory, to be cleaned up). SQLite replays the WAL into the
    copy when it is first opened."""
    directory = tempfile.TemporaryDirectory(prefix="ckpt-read-only-")
    copy = Path(directory.name) / path.name
    shutil.copyfile(path, copy)
    wal = path.with_name(path.name + WAL_SUFFIX)
    if wal.exists():
        shutil.copyfile(wal, copy.with_name(copy.name + WAL_SUFFIX))
    return copy, directory


def cache_dir(config: StoreConfig, root: Path) -> tuple[Path, bool]:
    """Where the chunk-index cache of a read-only local chunk directory lives:
    ``$XDG_CACHE_HOME/ckpt/<key>/chunk-index`` (``~/.cache`` without it), the
    key a hash of the store id and the directory (two copies of a store keep
    two caches), else a new temporary directory when that cannot be made:
    (the directory, whether it is temporary)."""
    key = hashlib.sha256(f"{config.store_id}|{root.resolve()}".encode()).hexdigest()[:32]
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    path = Path(base) / "ckpt" / key / "chunk-index"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK) and not os.statvfs(path).f_flag & os.ST_RDONLY:
            return path, False
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="ckpt-chunk-index-")), True
