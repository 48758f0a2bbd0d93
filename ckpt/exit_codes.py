"""Stable exit codes of the ``ckpt`` command, one per error class (the one table).

Scripts depend on these numbers: never renumber, only add. The most specific
class that matches wins (the table is searched in order).
"""

from __future__ import annotations

from ckpt.domain import errors as e

OK = 0
INTERNAL = 1  # a bug: an exception that is not a CkptError
USAGE = 2  # argparse's own code for a malformed command line

TABLE: tuple[tuple[type[e.CkptError], int], ...] = (
    (e.UnknownVM, 10),
    (e.UnknownCheckpoint, 11),
    (e.NotFound, 12),
    (e.AmbiguousName, 13),
    (e.InvalidValue, 14),
    (e.NotAllowed, 15),
    (e.AlreadyExists, 16),
    (e.CaptureOutdated, 17),
    (e.PointPurged, 40),
    (e.DomainError, 19),
    (e.StoreNotFound, 20),
    (e.StoreExists, 21),
    (e.StoreConflict, 22),
    (e.StoreCorrupt, 23),
    (e.WrongKey, 28),
    (e.StoreUnavailable, 34),
    (e.StoreMismatch, 35),
    (e.ChunkMissing, 24),
    (e.ChunkCorrupt, 25),
    (e.PackCorrupt, 26),
    (e.IndexCorrupt, 27),
    (e.OutputFailed, 36),
    (e.StoreFull, 37),
    (e.StoreReadOnly, 38),
    (e.StoreIOError, 39),
    (e.ConfigurationError, 41),
    (e.ReplicaDiverged, 42),
    (e.StoreIsReplica, 43),
    (e.VhdxCorrupt, 30),
    (e.VhdxUnsupported, 31),
    (e.VhdxChainMismatch, 32),
    (e.VhdxError, 33),
    (e.StorageError, 29),
    (e.CkptError, 1),
)


def exit_code(error: BaseException) -> int:
    for cls, code in TABLE:
        if isinstance(error, cls):
            return code
    return INTERNAL
