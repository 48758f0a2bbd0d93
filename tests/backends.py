"""Where the backend suites find their servers (see tests/servers.py).

Each test gets its own namespace on the shared throwaway servers: a fresh
PostgreSQL schema, a fresh S3 key prefix. Without a server the test is
skipped, and the reason says how to get one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

import pytest

PG_VAR = "CKPT_TEST_POSTGRES_URL"
S3_VAR = "CKPT_TEST_S3_URL"

# The four combinations every backend suite runs on: (events, chunks).
COMBINATIONS = [
    ("sqlite", "local"),
    ("postgres", "local"),
    ("sqlite", "s3"),
    ("postgres", "s3"),
]
COMBINATION_IDS = [f"{e}+{c}" for e, c in COMBINATIONS]


def server_url(var: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        pytest.skip(
            f"{var} is not set: run the suite with `make test`, which starts throwaway "
            "PostgreSQL and SeaweedFS servers (tests/servers.py)"
        )
    if value.startswith("unavailable:"):
        pytest.skip(value)
    return value


def fresh_name(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def postgres_url(schema: str | None = None) -> str:
    """A URL of the test database with a schema no other test uses."""
    return f"{server_url(PG_VAR)}?schema={schema or fresh_name('s')}"


def s3_url(prefix: str | None = None) -> str:
    """A URL of the test bucket with a key prefix no other test uses."""
    base = server_url(S3_VAR)
    head, _, query = base.partition("?")
    return f"{head.rstrip('/')}/{prefix or fresh_name('p')}?{query}"


def killed_before_index_files(backend: object, write: Callable[[], None]) -> None:
    """Run ``write`` (a writer session) as if the process died once its first
    pack was durable and before any index file: the orphan packs a crash
    leaves. A writer publishes each pack's index file as soon as the pack's put
    returns, so an exception in the caller does not make an orphan by itself."""
    real = backend.put  # type: ignore[attr-defined]

    def put(name: str, data: bytes) -> None:
        if name.startswith("index/"):
            raise KeyboardInterrupt  # the kill
        real(name, data)

    backend.put = put  # type: ignore[attr-defined]
    try:
        write()
    except KeyboardInterrupt:
        pass
    finally:
        del backend.put  # type: ignore[attr-defined]
