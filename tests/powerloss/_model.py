"""A power-loss model of one directory tree, recorded from the durability calls
ckpt's own code makes, and the trees a power cut could leave behind.

Terms:
    root        the directory under test (a store, or several, and nothing else
                that matters); its contents when recording starts count as durable.
    sync        ``os.fsync`` or ``os.fdatasync`` on a file or directory under root,
                made by any thread while recording. The model patches those two
                functions (and the calls that unlink or replace a file, to tell a
                reused inode number from its former owner) and nothing else: it
                does not need to see writes, because a sync reads what it makes
                durable (the file through ``/proc/self/fd/N``, the directory by
                listing it).
    durable     what survives a power cut, POSIX's minimum (the model that ALICE
                and CrashMonkey test against): a file's bytes as of its last sync
                (empty if it was never synced); a directory's entries (name ->
                inode) as of its last sync (none if never synced). A create,
                rename or unlink after a directory's last sync is undone. This is
                stricter than ext4 with ``data=ordered``, which commits metadata
                in order: a store that survives this model survives ext4, XFS and
                btrfs too.
    crash point one power cut: just before a sync (the state the sync would have
                changed), or just after a command returned. The durable state
                changes only at a sync, so these are all the distinct states a
                cut can leave; ``points`` lists them in order.
    torn        a variant of a crash point before a file sync: that file's
                unsynced bytes reached the disk up to a seeded 512-byte sector
                boundary and no further (a write torn by the cut).
    reordered   a variant of any crash point: each directory, by a seeded coin,
                has either its durable names or every name it had at the cut
                (file systems commit directories independently, so a pack's
                removal can reach the disk while its index file's does not).
    SQLite      the event store's file is written by SQLite's C code, whose syncs
                this model cannot see. It is modelled by what SQLite promises in
                the mode ckpt opens it in (WAL, ``synchronous=FULL``: a committed
                transaction is durable and atomic, an uncommitted one is rolled
                back): at each crash point the database's committed state is
                taken with ``Connection.serialize`` (a fresh read-only
                connection). Its directory entry follows the model above:
                SQLite syncs the directory for its journals, not for the main
                database file, so the store directory must be synced by ckpt
                after it is created.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTOR = 512

Key = tuple[int, int]  # (inode number, generation): a file or directory's identity


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing."""

    is_dir: bool
    key: Key


@dataclass(frozen=True)
class CrashPoint:
    """A moment a power cut can happen at; ``seq`` orders it among the syncs."""

    seq: int
    label: str  # what was about to happen (or what had just returned)
    step: int  # the scenario step (command) running at that moment
    torn: Key | None = None  # the file whose sync is next: it can be torn here
    torn_path: str = ""


@dataclass
class _Versions:
    """A file's synced contents, or a directory's synced listings, in sync order."""

    seqs: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def add(self, seq: int, value: Any) -> None:
        self.seqs.append(seq)
        self.values.append(value)

    def before(self, seq: int) -> Any | None:
        """The last value recorded before ``seq`` (None: never synced by then)."""
        found = None
        for s, v in zip(self.seqs, self.values, strict=True):
            if s >= seq:
                break
            found = v
        return found

    def at(self, seq: int) -> Any | None:
        for s, v in zip(self.seqs, self.values, strict=True):
            if s == seq:
                return v
        return None


class PowerModel:
    """Record the durable state of ``root`` while ckpt runs; rebuild it at any crash point."""

    def __init__(self, root: Path, databases: tuple[str, ...] = ("events.sqlite",)) -> None:
        self.root = root.resolve()
        self.databases = databases  # file names whose content is SQLite's (see SQLite)
        self._lock = threading.RLock()
        self._saved: dict[str, Callable[..., Any]] = {}
        self._current: dict[int, dict[Key, dict[str, Entry]]] = {}  # seq -> listings
        self._gen: dict[int, int] = {}
        self._files: dict[Key, _Versions] = {}
        self._dirs: dict[Key, _Versions] = {}
        self._sqlite: dict[str, _Versions] = {}  # path relative to root -> images
        self._sqlite_sig: dict[str, tuple[int, ...]] = {}
        self.points: list[CrashPoint] = []
        self.syncs = 0  # syncs seen under root
        self.step = 0
        self._seq = 0
        self.root_key = self._key(os.lstat(self.root))
        self._record_tree(self.root)
        self._seq = 1

    # ------------------------------------------------------------ identity
    def _key(self, st: os.stat_result) -> Key:
        return (st.st_ino, self._gen.get(st.st_ino, 0))

    def _gone(self, st: os.stat_result | None) -> None:
        """An inode lost its last name: a later file with its number is another one."""
        if st is not None and (stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1):
            self._gen[st.st_ino] = self._gen.get(st.st_ino, 0) + 1

    def _under_root(self, path: str) -> bool:
        return path == str(self.root) or path.startswith(str(self.root) + os.sep)

    def _is_database(self, path: str) -> bool:
        name = os.path.basename(path)
        return any(name == db or name.startswith(db + "-") for db in self.databases)

    # ------------------------------------------------------------ recording
    def _listing(self, path: str) -> dict[str, Entry]:
        listing = {}
        with os.scandir(path) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed by another thread meanwhile
                    continue
                if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                    listing[e.name] = Entry(stat.S_ISDIR(st.st_mode), self._key(st))
        return listing

    def _now(self) -> None:
        """Every directory's entries as they are (not as they are durable): what
        a reordered crash state may take a directory's names from."""
        now: dict[Key, dict[str, Entry]] = {}
        todo = [(str(self.root), self.root_key)]
        while todo:
            path, key = todo.pop()
            try:
                now[key] = listing = self._listing(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            todo.extend((os.path.join(path, n), e.key) for n, e in listing.items() if e.is_dir)
        self._current[self._seq] = now

    def _record_tree(self, path: Path) -> None:
        """Everything under root when recording starts is durable (seq 0)."""
        st = os.lstat(path)
        self._dirs.setdefault(self._key(st), _Versions()).add(0, self._listing(str(path)))
        for entry in os.scandir(path):
            child = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                self._record_tree(child)
            elif entry.is_file(follow_symlinks=False) and not self._is_database(entry.path):
                key = self._key(os.lstat(child))
                self._files.setdefault(key, _Versions()).add(0, child.read_bytes())
        self._record_databases()

    def _record_databases(self) -> None:
        """Each database's committed state, when it changed since the last look."""
        for db in self.root.rglob("*"):
            if db.name not in self.databases or not db.is_file():
                continue
            rel = str(db.relative_to(self.root))
            sig: tuple[int, ...] = ()
            for p in (db, db.with_name(db.name + "-wal")):
                with suppress(FileNotFoundError):
                    s = os.stat(p)
                    sig += (s.st_size, s.st_mtime_ns, s.st_ino)
            if self._sqlite_sig.get(rel) == sig:
                continue
            self._sqlite_sig[rel] = sig
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                image = con.serialize()
            finally:
                con.close()
            self._sqlite.setdefault(rel, _Versions()).add(self._seq, image)

    def point(self, label: str) -> None:
        """A crash point that is no sync: e.g. a command has just returned."""
        with self._lock:
            self._record_databases()
            self._now()
            self.points.append(CrashPoint(self._seq, label, self.step))
            self._seq += 1

    def _sync(self, fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if not self._under_root(path) or self._is_database(path):
            return
        with self._lock:
            st = os.fstat(fd)
            key = self._key(st)
            self._record_databases()
            self._now()
            rel = os.path.relpath(path, self.root)
            if stat.S_ISDIR(st.st_mode):
                self.points.append(CrashPoint(self._seq, f"before the sync of {rel}/", self.step))
                self._dirs.setdefault(key, _Versions()).add(self._seq, self._listing(path))
            elif stat.S_ISREG(st.st_mode):
                self.points.append(
                    CrashPoint(self._seq, f"before the sync of {rel}", self.step, key, rel)
                )
                with open(f"/proc/self/fd/{fd}", "rb") as f:
                    data = f.read()
                self._files.setdefault(key, _Versions()).add(self._seq, data)
            else:
                return
            self.syncs += 1
            self._seq += 1

    @contextmanager
    def recording(self) -> Iterator[PowerModel]:
        """Patch the durability calls (and the unlinks) for the duration."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        for name, fn in self._saved.items():
            setattr(os, name, fn)
        self._saved = {}

    def start(self) -> None:
        real_fsync, real_fdatasync = os.fsync, os.fdatasync

        def fsync(fd: Any) -> None:
            real_fsync(fd)
            self._sync(fd if isinstance(fd, int) else fd.fileno())

        def fdatasync(fd: Any) -> None:
            real_fdatasync(fd)
            self._sync(fd if isinstance(fd, int) else fd.fileno())

        def unlinking(real: Callable[..., Any]) -> Callable[..., Any]:
            def call(path: Any, *args: Any, dir_fd: int | None = None, **kw: Any) -> Any:
                st = _lstat(path, dir_fd)
                result = real(path, *args, dir_fd=dir_fd, **kw)
                with self._lock:
                    self._gone(st)
                return result

            return call

        def replacing(real: Callable[..., Any]) -> Callable[..., Any]:
            def call(src: Any, dst: Any, *, src_dir_fd: int | None = None,
                     dst_dir_fd: int | None = None) -> Any:  # fmt: skip
                before, moved = _lstat(dst, dst_dir_fd), _lstat(src, src_dir_fd)
                result = real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                if before is not None and (moved is None or before.st_ino != moved.st_ino):
                    with self._lock:
                        self._gone(before)
                return result

            return call

        patches: dict[str, Callable[..., Any]] = {
            "fsync": fsync,
            "fdatasync": fdatasync,
            "unlink": unlinking(os.unlink),
            "remove": unlinking(os.remove),
            "rmdir": unlinking(os.rmdir),
            "replace": replacing(os.replace),
            "rename": replacing(os.rename),
        }
        assert not self._saved, "already recording"
        for name, fn in patches.items():
            self._saved[name] = getattr(os, name)
            setattr(os, name, fn)

    # ------------------------------------------------------------ rebuilding
    def materialize(
        self,
        point: CrashPoint,
        torn: random.Random | None = None,
        reorder: random.Random | frozenset[Key] | None = None,
    ) -> str:
        """Replace root's contents with what the power cut at ``point`` leaves.
        With ``torn``, the file whose sync was next gets a seeded sector-aligned
        part of its unsynced bytes. With ``reorder``, each directory keeps, by a
        seeded coin (or: those in the given set), all the names it had at the cut,
        the others their durable names
        (its unsynced creates, renames and removes reached the disk, in some
        directories and not in others: file systems commit directories
        independently); file bytes stay as synced. Returns what was varied."""
        for entry in os.scandir(self.root):
            _remove(Path(entry.path))
        notes = []
        tear = None
        if torn is not None and point.torn is not None:
            old = self._files[point.torn].before(point.seq) or b""
            new = self._files[point.torn].at(point.seq) or b""
            tear, note = _tear(old, new, torn)
            notes.append(f"{point.torn_path}: {note}")
        build = _Build(point.seq, point.torn, tear, reorder, self._current.get(point.seq, {}))
        self._build(self.root_key, self.root, build)
        if build.reordered:
            notes.append(f"reordered: {', '.join(sorted(build.reordered))} as at the cut")
        for rel, images in self._sqlite.items():
            db = self.root / rel
            image = images.before(point.seq + 1)
            if image is not None and db.is_file():
                db.write_bytes(image)
        return "; ".join(notes)

    def unsynced_directories(self, point: CrashPoint) -> list[Key]:
        """The directories whose names at ``point`` differ from their durable ones."""
        differ = []
        for key, now in self._current.get(point.seq, {}).items():
            versions = self._dirs.get(key)
            if now != ((versions.before(point.seq) if versions else None) or {}):
                differ.append(key)
        return sorted(differ)

    def _build(self, key: Key, path: Path, b: _Build) -> None:
        versions = self._dirs.get(key)
        listing: dict[str, Entry] = (versions.before(b.seq) if versions else None) or {}
        if key in b.now and (
            key in b.reorder
            if isinstance(b.reorder, frozenset)
            else b.reorder is not None and b.reorder.random() < 0.5
        ):
            if b.now[key] != listing:
                b.reordered.append(os.path.relpath(path, self.root) + "/")
            listing = b.now[key]
        for name, entry in listing.items():
            child = path / name
            if entry.is_dir:
                child.mkdir()
                self._build(entry.key, child, b)
            elif self._is_database(str(child)):
                # Present (written below) only if its directory entry is durable.
                if name in self.databases:
                    child.write_bytes(b"")
            else:
                if entry.key == b.torn and b.tear is not None:
                    data = b.tear
                else:
                    file_versions = self._files.get(entry.key)
                    data = (file_versions.before(b.seq) if file_versions else None) or b""
                child.write_bytes(data)


@dataclass
class _Build:
    """One materialize: the crash point's seq and the variations chosen."""

    seq: int
    torn: Key | None
    tear: bytes | None
    reorder: random.Random | frozenset[Key] | None
    now: dict[Key, dict[str, Entry]]
    reordered: list[str] = field(default_factory=list)


def _tear(old: bytes, new: bytes, rng: random.Random) -> tuple[bytes, str]:
    """``new`` written over ``old`` up to a sector boundary at or after the first
    differing byte, then the cut: the rest is ``old`` (or nothing past its end)."""
    first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                 min(len(old), len(new)))  # fmt: skip
    lo = first // SECTOR
    hi = max(lo, (len(new) - 1) // SECTOR)
    cut = min(rng.randint(lo, hi) * SECTOR, len(new))
    data = new[:cut] + old[cut:]
    return data, f"torn at byte {cut} of {len(new)} (was {len(old)})"


def _lstat(path: Any, dir_fd: int | None) -> os.stat_result | None:
    try:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, TypeError, ValueError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for entry in os.scandir(path):
            _remove(Path(entry.path))
        path.rmdir()
    else:
        path.unlink()
