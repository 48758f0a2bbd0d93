"""Telling "no room where the store writes" from other write failures, and saying so.

Terms:
    no space   a write refused for want of room: ``ENOSPC`` (the device is full),
               ``EDQUOT`` (the user's or project's quota), ``EFBIG`` (a file size
               limit: ``ulimit -f``, or a quota that caps files; the largest file
               ckpt writes is a 16 MiB pack, far below any file system's own
               limit). SQLite says ``SQLITE_FULL`` ("database or disk is full"),
               or ``SQLITE_IOERR_SHMSIZE`` when it cannot grow the shared-memory
               file (``events.sqlite-shm``, 32 KiB) it needs to open a WAL log at
               all; PostgreSQL says SQLSTATE 53100 ``disk_full`` (53200
               ``out_of_memory`` is the server's RAM, not its disk: not ours).
    needed     how many bytes the failed write wanted: the whole object for a
               chunk backend's ``put`` (packs and index files are written in one
               piece, so the size is exact); a lower bound for a database (one
               page: SQLite 4,096 bytes, PostgreSQL 8,192; a commit writes at
               least that much, usually a few pages).

Every message starts "no space left on the store's device: N bytes needed" and
names the object and the place (directory, database file, backend); the free
space there (``statvfs``) when it can be read, so a user can see how far off
the write was. What to do is the same everywhere: free space there (``ckpt gc --grace 0``
reclaims what a failed capture wrote) and run the command again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ckpt.domain.errors import StoreFull

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# SQLite's primary result code (sqlite3.SQLITE_FULL); extended codes keep it in the low byte
SQLITE_FULL = 13
SQLITE_IOERR_SHMSIZE = 4874  # SQLITE_IOERR | (19 << 8): the -shm file could not grow
SQLITE_PAGE = 4096  # eventsourcing leaves SQLite's default page size
SQLITE_SHM = 32768  # the first region of a WAL log's -shm file
PG_DISK_FULL = "53100"
PG_PAGE = 8192
HINT = (
    "free space there (`ckpt gc --grace 0` reclaims at once what a failed capture wrote) "
    "and run the command again"
)


def is_no_space(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` that says "no room" (see ``NO_SPACE_ERRNOS``)."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s file system (its
    nearest existing ancestor's); None when it cannot be told."""
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def store_full(
    what: str,
    where: str,
    needed: int | None,
    reason: str,
    at: Path | None = None,
    at_least: bool = False,
) -> StoreFull:
    """The error for a write of ``needed`` bytes (None: unknown; ``at_least``: a
    lower bound) of ``what`` in ``where`` that was refused for ``reason``;
    ``at``: a local path whose file system's free space the message reports."""
    if needed is None:
        size = "more bytes needed"
    else:
        size = f"{'at least ' if at_least else ''}{needed} bytes needed"
    free = free_bytes(at) if at is not None else None
    room = "" if free is None else f"; {free} bytes free there"
    return StoreFull(
        f"no space left on the store's device: {size} for {what} in {where} ({reason}{room}): "
        + HINT
    )


def os_reason(error: OSError) -> str:
    """``[Errno 28] No space left on device`` without the file name (ours is clearer)."""
    text = f"[Errno {error.errno}] {error.strerror or os.strerror(error.errno or 0)}"
    if error.errno == errno.EFBIG:
        text += ": a file size limit (ulimit -f) or a quota"
    return text


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from (eventsourcing wraps the
    driver's error in its own: ``raise OperationalError(e) from e``)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def sqlite_full_code(error: BaseException) -> int | None:
    """The SQLite result code if ``error`` (or what it wraps) is SQLite finding no
    room: ``SQLITE_FULL`` or ``SQLITE_IOERR_SHMSIZE``; else None."""
    for e in _chain(error):
        code = getattr(e, "sqlite_errorcode", None)  # sqlite3.Error, Python 3.11+
        if isinstance(code, int) and (code & 0xFF == SQLITE_FULL or code == SQLITE_IOERR_SHMSIZE):
            return code
        if code is None and "database or disk is full" in str(e):
            return SQLITE_FULL  # a driver error without the code (wrapped as text)
    return None


def postgres_disk_full(error: BaseException) -> BaseException | None:
    """The psycopg error in ``error``'s chain whose SQLSTATE is 53100 (disk_full)."""
    for e in _chain(error):
        if getattr(e, "sqlstate", None) == PG_DISK_FULL:
            return e
    return None


def event_store_full(
    error: BaseException, where: str, events_file: Path | None
) -> StoreFull | None:
    """``StoreFull`` if ``error`` is the event store (SQLite file ``events_file``,
    or PostgreSQL) finding no room for a write; else None."""
    code = sqlite_full_code(error)
    if code is not None:
        target = str(events_file) if events_file is not None else "the SQLite event log"
        if code == SQLITE_IOERR_SHMSIZE:
            return store_full(
                f"the event log's shared-memory file {target}-shm (SQLite needs it to open "
                "the log at all)",
                where,
                SQLITE_SHM,
                "SQLite: disk I/O error, SQLITE_IOERR_SHMSIZE",
                events_file,
                at_least=True,
            )
        return store_full(
            f"the event log {target} (one SQLite page)",
            where,
            SQLITE_PAGE,
            "SQLite: database or disk is full",
            events_file,
            at_least=True,
        )
    pg = postgres_disk_full(error)
    if pg is not None:
        first = (str(pg).strip() or type(pg).__name__).splitlines()[0]
        return store_full(
            "the PostgreSQL event store (one page) on its server",
            where,
            PG_PAGE,
            f"PostgreSQL SQLSTATE 53100 disk_full: {first}",
            at_least=True,
        )
    return None
