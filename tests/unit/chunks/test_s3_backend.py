"""The S3 adapter beyond the port's contract (test_chunk_backend.py runs that on
S3 too): URL parsing, keeping credentials out of text, error translation, key
layout under the prefix, and a whole chunk store on S3.

The tests under "on the test server" need the S3 server (tests/backends.py)
and skip without it; the rest need none: they parse URLs, point at a closed
port, or have botocore's ``Stubber`` play the server.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from backends import fresh_name, s3_url
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from ckpt.domain.errors import (
    ChunkMissing,
    InvalidValue,
    StorageError,
    StoreFull,
    StoreUnavailable,
)
from ckpt.exit_codes import exit_code
from ckpt.storage.chunks import ChunkStore, S3ChunkBackend, chunk_id, parse_s3_url
from ckpt.storage.chunks.s3 import S3Location

FAKE_KEY_ID = "AKIATESTKEYID0000000"
FAKE_SECRET = "fake/Secret+Key0123456789abcdefghijklmno"  # 40 characters, like AWS's


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials no server accepts, and no other source to fall back on."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raw_client(loc: S3Location) -> Any:
    """A plain boto3 client on the test bucket, for what the port cannot do."""
    import boto3

    return boto3.client("s3", endpoint_url=loc.endpoint, region_name=loc.region)


def _empty(backend: S3ChunkBackend) -> None:
    """The test server outlives the test: leave the bucket as we found it.
    (DeleteObjects: 1,000 keys a request, where the port's delete takes 2.)"""
    loc = backend.location
    keys = [loc.key(name) for name in backend.list("")]
    client = _raw_client(loc)
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        client.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})


# --- URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", S3Location("bucket")),
        ("s3://bucket/", S3Location("bucket")),
        ("s3://my-bucket/some/prefix", S3Location("my-bucket", "some/prefix")),
        ("s3://my-bucket/some/prefix/", S3Location("my-bucket", "some/prefix")),
        ("s3://b.example.com/p_1/q-2.x", S3Location("b.example.com", "p_1/q-2.x")),
        ("s3://abc?region=eu-west-1", S3Location("abc", "", None, "eu-west-1")),
        (
            "s3://ckpt-test/p?endpoint=http://127.0.0.1:8333&region=us-east-1",
            S3Location("ckpt-test", "p", "http://127.0.0.1:8333", "us-east-1"),
        ),
        (
            "s3://ckpt/x?endpoint=https://minio.example.com",
            S3Location("ckpt", "x", "https://minio.example.com"),
        ),
        ("s3://" + "a" * 63, S3Location("a" * 63)),
    ],
)
def test_good_urls_parse(url: str, expected: S3Location) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://bucket/p", "must start with 's3://'"),
        ("bucket/p", "must start with 's3://'"),
        ("s3://", "3 to 63 characters"),
        ("s3://ab", "3 to 63 characters"),
        ("s3://" + "a" * 64, "3 to 63 characters"),
        ("s3://Bucket", "may hold only a-z"),
        ("s3://my_bucket", "may hold only a-z"),
        ("s3://-bucket", "start and end with a letter or digit"),
        ("s3://bucket-", "start and end with a letter or digit"),
        ("s3://my..bucket", "must not contain '..'"),
        ("s3://192.168.1.10", "IP address"),
        ("s3://xn--bucket", "reserves"),
        ("s3://bucket-s3alias", "reserves"),
        ("s3://bucket:9000/p", "invalid bucket name 'bucket:9000'"),
        ("s3://bucket/a/../b", "invalid prefix 'a/../b'"),
        ("s3://bucket/a//b", "invalid prefix 'a//b'"),
        ("s3://bucket/.hidden", "invalid prefix '.hidden'"),
        ("s3://bucket/a b", "invalid prefix 'a b'"),
        ("s3://bucket/" + "p" * 600, "at most 512"),
        ("s3://bucket#frag", "unexpected fragment '#frag'"),
        ("s3://bucket?foo=1", "unknown query parameter 'foo' (known: endpoint, region)"),
        ("s3://bucket?region", "not a list of name=value pairs"),
        ("s3://bucket?region=", "query parameter 'region' is empty"),
        ("s3://bucket?region=a&region=b", "'region' given twice"),
        ("s3://bucket?region=US_EAST", "invalid region 'US_EAST'"),
        ("s3://bucket?endpoint=ftp://host", "invalid endpoint 'ftp://host'"),
        ("s3://bucket?endpoint=127.0.0.1:9000", "invalid endpoint"),
        ("s3://bucket?endpoint=http://host:99999", "endpoint is not a valid URL"),
        ("s3://bucket?endpoint=http://host/?x=1", "no query or fragment"),
    ],
)
def test_bad_urls_are_refused_naming_the_bad_part(url: str, says: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_s3_url(url)
    assert says in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@bucket/p",
        f"s3://bucket/p?aws_secret_access_key={FAKE_SECRET}",
        f"s3://bucket/p?endpoint=http://user:{FAKE_SECRET}@host:9000",
    ],
)
def test_a_url_holding_a_secret_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_s3_url(url)
    assert FAKE_SECRET not in str(info.value)
    assert "Secret" not in str(info.value)


def test_location_keys_and_url() -> None:
    loc = parse_s3_url("s3://bucket/a/b?region=us-east-1")
    assert loc.url == "s3://bucket/a/b"
    assert loc.key("packs/ab/x.pack") == "a/b/packs/ab/x.pack"
    root = parse_s3_url("s3://bucket")
    assert root.url == "s3://bucket"
    assert root.key("index/x.idx") == "index/x.idx"  # no leading "/"


def test_importing_the_package_does_not_import_botocore(tmp_path: Path) -> None:
    # The CLI imports ckpt.storage.chunks on every command; botocore alone
    # costs ~115 ms. (A fresh interpreter, outside the repo's bare ckpt/.)
    code = "import sys, ckpt.storage.chunks; print('botocore' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# --- no secrets in text, errors translated (no server needed) ----------------


@pytest.mark.usefixtures("fake_credentials")
def test_repr_names_bucket_prefix_and_endpoint_never_credentials() -> None:
    backend = S3ChunkBackend("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9&region=eu-west-1")
    assert repr(backend) == (
        "S3ChunkBackend('s3://bucket/some/prefix', endpoint='http://127.0.0.1:9')"
    )
    assert FAKE_SECRET not in repr(backend) and FAKE_KEY_ID not in repr(backend)
    assert repr(S3ChunkBackend("s3://bucket")) == "S3ChunkBackend('s3://bucket', endpoint=None)"
    assert S3ChunkBackend.from_url("s3://bucket/p").location == S3Location("bucket", "p")


@pytest.mark.usefixtures("fake_credentials")
def test_an_unreachable_endpoint_is_a_quick_store_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    backend = S3ChunkBackend(
        f"s3://bucket/p?endpoint={endpoint}&region=us-east-1", connect_timeout=1, max_attempts=1
    )
    calls: list[tuple[str, Callable[[], object]]] = [
        ("put", lambda: backend.put("packs/ab/x.pack", b"1")),
        ("read", lambda: backend.get("packs/ab/x.pack", 5, 10)),
        ("stat", lambda: backend.exists("packs/ab/x.pack")),
        ("list", lambda: backend.list("packs/")),
    ]
    for verb, call in calls:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert message.startswith(f"cannot {verb} 'packs/")
        assert "S3ChunkBackend('s3://bucket/p'" in message
        assert "EndpointConnectionError" in message and endpoint in message
        assert FAKE_SECRET not in message
    assert isinstance(info.value, StorageError)


@pytest.fixture
def stubbed(fake_credentials: None) -> Iterator[tuple[S3ChunkBackend, Stubber]]:
    """A backend whose S3 answers are scripted. Reaching into ``_client`` is
    the price of testing answers the test server never gives."""
    backend = S3ChunkBackend("s3://bucket/pre?endpoint=http://127.0.0.1:9&region=us-east-1")
    with Stubber(backend._client) as stubber:
        yield backend, stubber
        stubber.assert_no_pending_responses()


def _client_error(
    stubber: Stubber, method: str, code: str, status: int, message: str = "", **expected: Any
) -> None:
    """Script one error answer to a call on object "a" (key "pre/a")."""
    stubber.add_client_error(
        method,
        service_error_code=code,
        service_message=message,
        http_status_code=status,
        expected_params={"Bucket": "bucket", "Key": "pre/a", **expected},
    )


def test_a_secret_in_an_error_message_is_scrubbed(
    stubbed: tuple[S3ChunkBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    _client_error(
        stubber, "put_object", "AccessDenied", 403, f"no, {FAKE_SECRET} is wrong", Body=ANY
    )
    with pytest.raises(StoreUnavailable) as info:
        backend.put("a", b"x")
    message = str(info.value)
    assert FAKE_SECRET not in message
    assert "S3 error AccessDenied (HTTP 403): no, *** is wrong" in message
    assert "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in message


def test_server_errors_are_unavailable_other_errors_storage_errors(
    stubbed: tuple[S3ChunkBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    _client_error(stubber, "get_object", "SlowDown", 503, "Reduce your request rate")
    with pytest.raises(StoreUnavailable, match=r"SlowDown \(HTTP 503\)"):
        backend.get("a")
    # A missing bucket is not a missing object: the store is misconfigured.
    _client_error(stubber, "get_object", "NoSuchBucket", 404, "The bucket does not exist")
    with pytest.raises(StorageError, match="NoSuchBucket") as info:
        backend.get("a")
    assert not isinstance(info.value, (ChunkMissing, StoreUnavailable))
    _client_error(stubber, "head_object", "403", 403, "Forbidden")
    with pytest.raises(StoreUnavailable, match=r"cannot stat 'a' .*: HTTP 403: Forbidden"):
        backend.exists("a")  # "not allowed to look" is not "absent"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("QuotaExceeded", 403),  # Ceph RGW's quota: 403, yet not a credentials problem
        ("XMinioStorageFull", 507),
        ("XMinioAdminBucketQuotaExceeded", 400),
        ("EntityTooLarge", 400),
        ("InsufficientStorage", 507),
        ("SomethingElse", 507),  # HTTP 507 Insufficient Storage whatever the code
    ],
)
def test_s3_answers_that_mean_no_room_are_store_full_with_the_object_size(
    stubbed: tuple[S3ChunkBackend, Stubber], code: str, status: int
) -> None:
    backend, stubber = stubbed
    _client_error(stubber, "put_object", code, status, "no room for it", Body=ANY)
    with pytest.raises(StoreFull) as info:
        backend.put("a", bytes(1234))
    message = str(info.value)
    assert message.startswith("no space left on the store's device: 1234 bytes needed for 'a' ")
    assert "S3ChunkBackend('s3://bucket/pre'" in message
    assert f"S3 error {code} (HTTP {status}): no room for it" in message
    assert "check AWS_ACCESS_KEY_ID" not in message
    assert exit_code(info.value) == 37


ANY_GET = {"Bucket": "bucket", "Key": "pre/a", "Range": ANY}


def test_a_server_that_ignores_range_is_sliced_locally(
    stubbed: tuple[S3ChunkBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    for _ in range(2):  # HTTP 200, whole body, no Content-Range
        body = StreamingBody(BytesIO(b"0123456789"), 10)
        stubber.add_response("get_object", {"Body": body, "ContentLength": 10}, ANY_GET)
    assert backend.get("a", 2, 3) == b"234"
    assert backend.get("a", 7) == b"789"


def _broken_body(length: int) -> StreamingBody:
    """A body whose connection drops: it sends the headers, then half the bytes."""
    return StreamingBody(BytesIO(b"x" * (length // 2)), length)


def test_a_body_that_breaks_off_is_read_again(
    stubbed: tuple[S3ChunkBackend, Stubber], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, stubber = stubbed
    monkeypatch.setattr(time, "sleep", lambda _: None)
    ranged = {"Bucket": "bucket", "Key": "pre/a", "Range": "bytes=2-5"}
    stubber.add_response("get_object", {"Body": _broken_body(4), "ContentRange": "x"}, ranged)
    good = StreamingBody(BytesIO(b"2345"), 4)
    stubber.add_response("get_object", {"Body": good, "ContentRange": "bytes 2-5/10"}, ranged)
    assert backend.get("a", 2, 4) == b"2345"


def test_a_body_that_keeps_breaking_off_is_store_unavailable_after_max_attempts(
    fake_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)
    backend = S3ChunkBackend("s3://bucket/pre?endpoint=http://127.0.0.1:9", max_attempts=3)
    with Stubber(backend._client) as stubber:
        for _ in range(3):
            stubber.add_response(
                "get_object", {"Body": _broken_body(10)}, {"Bucket": "bucket", "Key": "pre/a"}
            )
        with pytest.raises(StoreUnavailable, match=r"cannot read 'a' .*IncompleteReadError"):
            backend.get("a")
        stubber.assert_no_pending_responses()


# --- on the test server ------------------------------------------------------


@pytest.fixture
def s3() -> Iterator[S3ChunkBackend]:
    backend = S3ChunkBackend(s3_url())
    yield backend
    _empty(backend)


def test_a_wrong_secret_key_is_store_unavailable_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = s3_url()  # skips without a server, before the credentials change
    wrong = "Wr0ngSecretKey/" + fresh_name("x") + "+abcdefghijklmnopq"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    backend = S3ChunkBackend(url)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("put", lambda: backend.put("a", b"x")),
        ("read", lambda: backend.get("a")),
        ("stat", lambda: backend.exists("a")),
        ("list", lambda: backend.list("")),
    ]
    for verb, call in calls:
        with pytest.raises(StoreUnavailable) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"cannot {verb} 'a'" if verb != "list" else "cannot list ''")
        assert "403" in message
        assert "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in message
        assert wrong not in message and wrong not in str(info.value.__cause__)


def test_keys_live_under_the_prefix_and_a_sibling_prefix_is_not_listed() -> None:
    base = fresh_name("p")
    a = S3ChunkBackend(s3_url(base))
    b = S3ChunkBackend(s3_url(f"{base}x"))  # a string prefix of b's keys: "pNNN" < "pNNNx"
    nested = S3ChunkBackend(s3_url(f"{base}/nested"))
    try:
        a.put("index/a.idx", b"a")
        b.put("index/b.idx", b"b")
        nested.put("index/n.idx", b"n")
        assert list(a.list("")) == ["index/a.idx", "nested/index/n.idx"]
        assert list(a.list("index/")) == ["index/a.idx"]
        assert list(b.list("")) == ["index/b.idx"]
        assert list(nested.list("")) == ["index/n.idx"]
        assert a.get("nested/index/n.idx") == b"n"
    finally:
        for backend in (a, b):
            _empty(backend)


def test_keys_that_are_not_names_are_not_listed(s3: S3ChunkBackend) -> None:
    loc = s3.location
    client = _raw_client(loc)
    s3.put("packs/00/x.pack", b"1")
    junk = [f"{loc.prefix}/{k}" for k in ("packs/", "packs/00/.x.pack.tmp", "a b", ".hidden")]
    for key in junk:  # as a console's "folder" or another tool might leave
        client.put_object(Bucket=loc.bucket, Key=key, Body=b"junk")
    try:
        assert list(s3.list("")) == ["packs/00/x.pack"]
    finally:
        for key in junk:
            client.delete_object(Bucket=loc.bucket, Key=key)


def test_listing_spans_pages_and_threads_share_one_backend(s3: S3ChunkBackend) -> None:
    # ListObjectsV2 returns at most 1,000 keys a page: 1,001 make two pages.
    names = [f"packs/{i % 256:02x}/{i:032x}.pack" for i in range(1001)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: s3.put(n, n.encode()), names))
        assert list(s3.list("packs/")) == sorted(names)
        got = list(pool.map(lambda n: s3.get(n, 6), names[::5]))
    assert got == [n.encode()[6:] for n in names[::5]]
    assert list(s3.list("packs/0a/")) == sorted(n for n in names if n.startswith("packs/0a/"))


def test_empty_objects_and_ranges_at_the_end(s3: S3ChunkBackend) -> None:
    s3.put("e", b"")
    assert s3.get("e") == b""
    assert s3.get("e", 0, 5) == b""  # S3 answers 416 for any range of an empty object
    assert s3.get("e", 3) == b""
    assert s3.size("e") == 0
    s3.put("x", b"0123456789")
    assert s3.get("x", 10) == b""
    assert s3.get("x", 9, 1) == b"9"
    with pytest.raises(ChunkMissing, match="'nope'"):
        s3.get("nope", 0, 0)  # no empty range in S3, but absent is still absent
    with pytest.raises(ChunkMissing, match="'nope'"):
        s3.get("nope", 20, 5)


def test_a_chunk_store_round_trips_on_s3(s3: S3ChunkBackend) -> None:
    rng = random.Random(7)
    # Half random, half zero: ~2 KiB stored per 4 KiB chunk, ~6 MB in all.
    blocks = [rng.randbytes(2048) + bytes(2048) for _ in range(3000)]
    store = ChunkStore(s3, pack_size=1 << 20)  # ~6 packs, put from the writer's pool
    with store.writer() as w:
        ids = [w.add(b) for b in blocks]
    assert ids == [chunk_id(b) for b in blocks]
    assert len(list(s3.list("packs/"))) == len(list(s3.list("index/"))) >= 5

    reader = ChunkStore(s3)  # a second store: loads the index files from S3
    order = list(range(len(blocks)))
    rng.shuffle(order)
    assert reader.get_many([chunk_id(blocks[i]) for i in order]) == [blocks[i] for i in order]
    assert reader.get_many([chunk_id(b) for b in blocks]) == blocks
    report = reader.verify()
    assert report.ok and report.checked == 3000
    assert reader.stats().chunks == 3000
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "-") not in repr(reader)
