"""Shared test settings: Hypothesis profiles (``HYPOTHESIS_PROFILE=ci|dev``)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The chunk-index cache of a remote (S3) store lives in $XDG_CACHE_HOME/ckpt/...
# (storage/chunks/index.py): the tests, and the commands they start, keep theirs
# in a directory of their own, never in the real home.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ckpt-test-xdg-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)


# ---------------------------------------------------------------- backends
# The backend suites take the ``backends`` fixture: one run per combination of
# event store and chunk storage (tests/backends.py). Calling it gives the
# ``events=``/``chunks=`` arguments of ``Store.init`` for a fresh, private store.

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from backends import COMBINATION_IDS, COMBINATIONS, postgres_url, s3_url  # noqa: E402

Backends = Callable[[], dict[str, str]]


@pytest.fixture(params=COMBINATIONS, ids=COMBINATION_IDS)
def backends(request: pytest.FixtureRequest) -> Backends:
    events, chunks = request.param

    def fresh() -> dict[str, str]:
        kwargs = {}
        if events == "postgres":
            kwargs["events"] = postgres_url()
        if chunks == "s3":
            kwargs["chunks"] = s3_url()
        return kwargs

    fresh()  # skips now, with the reason, when a server is missing
    return fresh


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for disk images and restored files: in /dev/shm when it exists.

    The images are rewritten and the restored files deleted after every kill
    point (tests/faults) or crash state (tests/powerloss); on a disk mounted
    with ``discard`` each unlink of a 16 MiB file costs ~10 ms, which adds up
    to seconds. The store itself stays in ``tmp_path``.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="ckpt-scratch-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
