"""The S3 adapter of the chunk backend port.

Terms:
    S3 URL     where a chunk store lives in S3:
               ``s3://BUCKET[/PREFIX][?endpoint=URL][&region=NAME]``. ``endpoint``
               is the base URL of an S3-compatible server (SeaweedFS, MinIO,
               Ceph; omitted for AWS itself), ``region`` the signing region.
               Nothing else may appear in it: in particular no credentials,
               which come from the standard AWS sources (``AWS_ACCESS_KEY_ID``
               / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role).
    bucket     the S3 bucket, named by S3's rules (3-63 characters of ``a-z``,
               ``0-9``, ``.`` and ``-``; see ``check_bucket``). ``ckpt init``
               creates it when it is missing (``create_bucket``, as restic's
               init does); every other use needs it to exist, and S3's
               NoSuchBucket becomes ``StoreNotFound``: "bucket X does not exist".
    prefix     the store's folder in the bucket: ``a/b`` puts object ``packs/x``
               at key ``a/b/packs/x``. Its components follow the rules of object
               names (backend.py), so no ``..`` and no empty component.
    key        the S3 key of an object: ``prefix/name``, or ``name`` when the
               prefix is empty.

How the port's promises map onto S3:
    put     one PutObject: S3 stores an object whole or not at all, and a
            successful PUT is durable (AWS stores it redundantly before it
            answers; a self-hosted S3 server is as durable as its own settings
            make it, e.g. whether it fsyncs).
    get     GetObject with a ``Range`` header. S3 answers 416 InvalidRange for a
            range starting at or after the end, which the port calls "clipped to
            nothing": ``b""``. botocore retries a request until its response
            headers arrive; a body that breaks off later (a dropped connection
            in the middle of a 16 MiB pack) is retried here.
    exists, size
            HeadObject; 404 means absent.
    delete  HeadObject, then DeleteObject: S3's delete succeeds on an absent
            key, the port must raise ``ChunkMissing``. Between the two another
            process may delete the object; that is harmless.
    list    ListObjectsV2 under ``prefix/`` + the name prefix, page by page.

Every botocore error other than "absent" (and "no such bucket", above) becomes
a ``StorageError`` naming the
verb, the object, the backend and S3's error code and message: a
``StoreUnavailable`` when the server cannot be reached, refuses our credentials
(HTTP 403) or keeps failing (5xx after the retries), so the CLI can tell "S3
is down or the keys are wrong" from "S3 answered, but not as expected"; a
``StoreFull`` when S3 has no room for the object (a quota, full drives, a size
limit: ``_FULL_CODES``), naming the object's size.
Messages never contain credentials: the repr shows bucket, prefix and endpoint
only, and the secret key is scrubbed from any error text that comes back.

botocore (the engine under boto3; its clients are boto3's clients) costs
~115 ms to import, about as much as all of ckpt, and the CLI imports this
package on every command: it is imported when the first ``S3ChunkBackend`` is
made, not with this module. Loading the S3 API model costs ~80 ms more per
botocore session; every backend gets a session of its own (so it reads the
credentials as they are when it is made) but all of them share one model
loader, so the second backend in a process costs ~10 ms, not ~90.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, cast
from urllib.parse import parse_qsl, urlsplit

from ckpt.domain.errors import (
    ChunkMissing,
    InvalidValue,
    StorageError,
    StoreNotFound,
    StoreUnavailable,
)
from ckpt.storage.no_space import store_full

from .backend import MAX_NAME, check_name, check_prefix, check_range

if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from botocore.exceptions import ClientError
    from botocore.loaders import Loader
    from botocore.session import Session
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

SCHEME = "s3"
QUERY_KEYS = ("endpoint", "region")
# S3 general purpose bucket names (docs.aws.amazon.com/AmazonS3/latest/userguide/
# bucketnamingrules.html): 3-63 of a-z 0-9 . -, starting and ending with a letter
# or digit, no "..", not an IP address, and a few reserved prefixes and suffixes.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# HeadObject has no body, so a missing key only shows as the bare status code.
_ABSENT_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# HeadBucket has no body either: a missing bucket is a bare 404 there.
_NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})
# The one region where CreateBucket takes no LocationConstraint (AWS refuses
# "us-east-1" as one); SeaweedFS and MinIO accept either form.
_DEFAULT_REGION = "us-east-1"
# Answers that mean "no room for this object" (StoreFull): Ceph RGW's and
# S3-compatible servers' quota (QuotaExceeded, HTTP 403 on Ceph), MinIO's full
# drives (XMinioStorageFull, HTTP 507) and bucket quota, and a size limit below
# our objects (EntityTooLarge: AWS allows 5 GiB per PUT, our packs are <= 16 MiB,
# so a server that refuses one has a smaller limit configured; HTTP 413 from a
# proxy in front of it). HTTP 507 Insufficient Storage whatever the code.
_FULL_CODES = frozenset(
    {
        "QuotaExceeded",
        "XMinioStorageFull",
        "XMinioAdminBucketQuotaExceeded",
        "EntityTooLarge",
        "InsufficientStorage",
        "413",
        "507",
    }
)
_FULL_STATUS = frozenset({413, 507})
# S3 error messages are one sentence; an HTML error page from a proxy is not.
_MAX_DETAIL = 300


@dataclass(frozen=True)
class S3Location:
    """A parsed S3 URL: ``bucket``, ``prefix`` (``""`` for the bucket's root),
    and the optional ``endpoint`` and ``region``."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` without the query: what reprs and messages show."""
        root = f"{SCHEME}://{self.bucket}"
        return f"{root}/{self.prefix}" if self.prefix else root

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def check_bucket(bucket: str) -> str:
    """Return ``bucket`` if S3 accepts it as a bucket name, else ``InvalidValue``."""
    why = None
    if not 3 <= len(bucket) <= 63:
        why = "must be 3 to 63 characters long"
    elif not _BUCKET.fullmatch(bucket):
        why = "may hold only a-z, 0-9, '.' and '-', and must start and end with a letter or digit"
    elif ".." in bucket:
        why = "must not contain '..'"
    elif _is_ip_address(bucket):
        why = "must not look like an IP address"
    elif bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        why = "uses a prefix or suffix S3 reserves"
    if why is not None:
        raise InvalidValue(f"S3 URL: invalid bucket name {bucket!r}: a bucket name {why}")
    return bucket


def _is_ip_address(text: str) -> bool:
    import ipaddress  # only URL parsing needs it: kept off the CLI's import path

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_s3_url(url: str) -> S3Location:
    """Parse ``s3://BUCKET[/PREFIX][?endpoint=URL][&region=NAME]``.

    ``InvalidValue`` names the bad part. The whole URL is never quoted back,
    because a mistyped one may hold a secret (``s3://KEY:SECRET@bucket``)."""
    try:
        parts = urlsplit(url)
    except ValueError as e:  # e.g. an unbalanced '[' in the host
        raise InvalidValue(f"S3 URL: cannot parse it ({e})") from None
    if parts.scheme != SCHEME:
        raise InvalidValue(f"S3 URL: must start with 's3://', not {parts.scheme + ':'!r}")
    if "@" in parts.netloc:
        raise InvalidValue(
            "S3 URL: must not hold credentials (user:password@); set AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, or use an AWS profile or role"
        )
    if parts.fragment:
        raise InvalidValue(f"S3 URL: unexpected fragment {'#' + parts.fragment!r}")
    bucket = check_bucket(parts.netloc)
    prefix = parts.path.removeprefix("/").removesuffix("/")  # "s3://b/p/" means "s3://b/p"
    if prefix:
        try:
            check_name(prefix)
        except ValueError:
            raise InvalidValue(
                f"S3 URL: invalid prefix {prefix!r}: components are [A-Za-z0-9_-][A-Za-z0-9._-]* "
                "separated by single '/' (no '.', '..', empty or hidden component)"
            ) from None
        if len(prefix) > MAX_NAME // 2:  # leave room for names under S3's 1,024-byte keys
            raise InvalidValue(f"S3 URL: prefix is {len(prefix)} characters, at most 512")
    params = _query(parts.query)
    endpoint = params.get("endpoint")
    if endpoint is not None:
        _check_endpoint(endpoint)
    region = params.get("region")
    if region is not None and not _REGION.fullmatch(region):
        raise InvalidValue(f"S3 URL: invalid region {region!r} (like 'us-east-1')")
    return S3Location(bucket, prefix, endpoint, region)


def _query(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidValue("S3 URL: the query is not a list of name=value pairs") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        # Only the name of an unknown parameter is quoted: its value may be a secret.
        if key not in QUERY_KEYS:
            known = ", ".join(QUERY_KEYS)
            raise InvalidValue(f"S3 URL: unknown query parameter {key!r} (known: {known})")
        if key in params:
            raise InvalidValue(f"S3 URL: query parameter {key!r} given twice")
        if not value:
            raise InvalidValue(f"S3 URL: query parameter {key!r} is empty")
        params[key] = value
    return params


def _check_endpoint(endpoint: str) -> None:
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port not in 0..65535
    except ValueError:
        raise InvalidValue("S3 URL: the endpoint is not a valid URL") from None
    if "@" in parts.netloc:
        raise InvalidValue("S3 URL: the endpoint must not hold credentials (user:password@)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue(
            f"S3 URL: invalid endpoint {endpoint!r}: give http(s)://HOST[:PORT], "
            "as in 'http://127.0.0.1:8333'"
        )
    if parts.query or parts.fragment:
        raise InvalidValue(f"S3 URL: invalid endpoint {endpoint!r}: no query or fragment")


class S3ChunkBackend:
    """A backend in an S3 bucket (or an S3-compatible server); see the module
    docstring. Safe to share between threads: one S3 client (what
    ``boto3.client("s3")`` returns), made here, serves all of them; clients
    are thread-safe, sessions are not, so the session never leaves ``__init__``.

    ``connect_timeout`` and ``read_timeout`` are per attempt, in seconds;
    ``max_attempts`` counts the first try (botocore's "standard" retry mode:
    throttling, 5xx and connection errors are retried with jittered backoff).
    """

    # Requests here wait on the network, not on the CPU: the writer puts this many
    # packs at once and a restore keeps this many ranged reads in flight
    # (backend.parallel_requests). Measured on SeaweedFS, loopback, 2 cores: see
    # bench/README.md (restore 112 -> ... MB/s).
    parallel_requests = 8

    def __init__(
        self,
        location: S3Location | str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        max_pool_connections: int = 32,
    ) -> None:
        self._location = parse_s3_url(location) if isinstance(location, str) else location
        self._max_attempts = max(1, max_attempts)
        # Imported here, not at the top: see the module docstring.
        from botocore import exceptions as boto_errors
        from botocore.config import Config

        self._client_error: type[ClientError] = boto_errors.ClientError
        self._errors: tuple[type[Exception], ...] = (
            boto_errors.ClientError,
            boto_errors.BotoCoreError,
        )
        # A response body that broke off: a dropped connection, a read timeout.
        self._body_errors: tuple[type[Exception], ...] = (
            boto_errors.HTTPClientError,
            boto_errors.IncompleteReadError,
        )
        # Errors that say "cannot reach the server, or it will not talk to us".
        self._unreachable: tuple[type[Exception], ...] = (
            boto_errors.ConnectionError,  # refused, DNS, connect timeout, TLS, proxy
            boto_errors.HTTPClientError,  # read timeout, connection dropped mid-body
            boto_errors.IncompleteReadError,  # bodies cut short, attempt after attempt
            boto_errors.NoCredentialsError,
            boto_errors.PartialCredentialsError,
            boto_errors.CredentialRetrievalError,
        )
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # One connection per thread that reads or writes at once: the
            # writer's put pool and parallel restores use up to ~32.
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # S3-compatible servers rarely resolve BUCKET.host (virtual-host
            # style); AWS itself prefers it, and "auto" picks it there.
            s3={"addressing_style": "path" if self._location.endpoint else "auto"},
        )
        with _session_lock:  # a botocore session is not thread-safe
            session = _new_session()
            # Resolved once, here, so that error messages can be scrubbed of
            # the secret without walking the credential chain on every error.
            self._credentials: Credentials | None = session.get_credentials()
            client = session.create_client(
                "s3",
                endpoint_url=self._location.endpoint,
                region_name=self._location.region,
                config=config,
            )
        self._client = cast("S3Client", client)  # botocore's stubs say BaseClient

    @classmethod
    def from_url(cls, url: str) -> S3ChunkBackend:
        """The backend an ``s3://`` URL names (``parse_s3_url``), default settings."""
        return cls(parse_s3_url(url))

    def __repr__(self) -> str:
        return f"S3ChunkBackend({self._location.url!r}, endpoint={self._location.endpoint!r})"

    @property
    def location(self) -> S3Location:
        return self._location

    def _key(self, name: str) -> str:
        key = self._location.key(check_name(name))
        if len(key) > MAX_NAME:  # S3's limit on keys; our names are < 60 bytes
            raise ValueError(
                f"invalid chunk backend object name {name!r}: key over {MAX_NAME} bytes"
            )
        return key

    def _missing(self, name: str) -> ChunkMissing:
        return ChunkMissing(f"no object {name!r} in {self!r}")

    def _code(self, error: Exception) -> str | None:
        """S3's error code of a ``ClientError`` (``"404"`` for a HEAD), else None."""
        if isinstance(error, self._client_error):
            return str(error.response.get("Error", {}).get("Code", ""))
        return None

    def _fail(self, verb: str, name: str, error: Exception, needed: int | None = None) -> NoReturn:
        """Raise ``error`` as ckpt's; ``needed``: the size of the object a put
        wanted to store (what a ``StoreFull`` message reports)."""
        cls: type[StorageError] = StorageError
        hint = ""
        if isinstance(error, self._client_error):
            info = error.response.get("Error", {})
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = info.get("Code", "?")
            text = self._shorten(info.get("Message", "") or "no message")
            if code.isdigit():  # a HEAD: no body, so no error code either
                detail = f"HTTP {status or code}: {text}"
            else:
                detail = f"S3 error {code} (HTTP {status or '?'}): {text}"
            if code == "NoSuchBucket":
                # Not "cannot list ...": the store is not there at all (a typo in
                # the URL, another endpoint, a deleted bucket).
                raise StoreNotFound(
                    f"bucket {self._location.bucket!r} does not exist ({self!r}; {detail}); "
                    "`ckpt init` with this --chunks URL creates it for a new store"
                ) from error
            if code in _FULL_CODES or status in _FULL_STATUS:
                # before the 403 below: Ceph answers a full quota with HTTP 403
                raise store_full(repr(name), repr(self), needed, detail) from error
            if status == 403:
                cls = StoreUnavailable
                hint = " (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy)"
            elif status >= 500:  # botocore has retried it max_attempts times already
                cls = StoreUnavailable
        else:
            detail = f"{type(error).__name__}: {self._shorten(str(error))}"
            if isinstance(error, self._unreachable):
                cls = StoreUnavailable
        raise cls(f"cannot {verb} {name!r} in {self!r}: {detail}{hint}") from error

    def _shorten(self, text: str) -> str:
        text = self._scrub(text)  # before cutting, or a cut could split a secret
        return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."

    def _scrub(self, text: str) -> str:
        # Neither S3 nor botocore put the secret key in an error message today;
        # this makes sure none ever reaches a log or a terminal through us.
        creds = self._credentials
        if creds is None:
            return text
        try:
            secret_texts = [creds.secret_key, creds.token]
        except Exception:  # a refreshable credential may fail to refresh here
            return text
        for secret in secret_texts:
            if secret:
                # Anywhere, not as a token (locations.scrub): an AWS secret key
                # is 40 characters, a session token hundreds; no word is one.
                text = text.replace(secret, "***")
        return text

    def create_bucket(self) -> bool:
        """Create the bucket if it does not exist (``ckpt init``); True if this
        call created it. Another process creating it at the same moment is fine."""
        bucket = self._location.bucket
        try:
            self._client.head_bucket(Bucket=bucket)
            return False
        except self._errors as e:
            if self._code(e) not in _NO_BUCKET_CODES:
                self._fail("find bucket", bucket, e)
        region = self._location.region or self._client.meta.region_name
        try:
            if region and region != _DEFAULT_REGION:
                self._client.create_bucket(
                    Bucket=bucket,
                    # The stubs list AWS's regions; an S3 clone may name its own.
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", region)
                    },
                )
            else:
                self._client.create_bucket(Bucket=bucket)
        except self._errors as e:
            if self._code(e) == "BucketAlreadyOwnedByYou":  # another init got there first
                return False
            self._fail("create bucket", bucket, e)
        return True

    def put(self, name: str, data: bytes) -> None:
        """One PutObject: atomic (S3 never shows part of an object) and durable
        once it returns (S3 acknowledges a PUT only after storing it)."""
        key = self._key(name)
        try:
            self._client.put_object(Bucket=self._location.bucket, Key=key, Body=bytes(data))
        except self._errors as e:
            self._fail("put", name, e, len(data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        check_range(offset, length)
        if length == 0:
            # S3 has no empty range ("bytes=5-4" is ignored: the whole object
            # comes back), but a missing object must still raise: one HEAD.
            self.size(name)
            return b""
        ranged = offset > 0 or length is not None
        # No Range when reading it all: any range of an empty object is a 416.
        byte_range = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        for attempt in range(1, self._max_attempts + 1):
            try:
                data, clipped = self._get_once(name, key, byte_range if ranged else None)
                break
            except _BodyBrokeOff as broke:
                if attempt == self._max_attempts:
                    self._fail("read", name, broke.error)
                time.sleep(min(0.1 * 2**attempt, 2.0))  # like botocore's backoff
        if ranged and not clipped:
            # A server that ignores Range sends the whole object (HTTP 200).
            return data[offset:] if length is None else data[offset : offset + length]
        return data

    def _get_once(self, name: str, key: str, byte_range: str | None) -> tuple[bytes, bool]:
        """One GetObject: the bytes, and whether the server applied the range.
        ``_BodyBrokeOff`` if the body broke off after the headers arrived."""
        try:
            if byte_range is None:
                response = self._client.get_object(Bucket=self._location.bucket, Key=key)
            else:
                response = self._client.get_object(
                    Bucket=self._location.bucket, Key=key, Range=byte_range
                )
        except self._errors as e:
            code = self._code(e)
            if code in _ABSENT_CODES:
                raise self._missing(name) from None
            if code == "InvalidRange":  # the range starts at or after the end
                return b"", True
            self._fail("read", name, e)
        body = response["Body"]
        try:
            data = body.read()  # botocore checks the length against Content-Length
        except self._body_errors as e:
            raise _BodyBrokeOff(e) from e
        except self._errors as e:
            self._fail("read", name, e)
        finally:
            body.close()
        return data, bool(response.get("ContentRange"))

    def _head_size(self, verb: str, name: str) -> int | None:
        """The object's length, or None if it does not exist."""
        key = self._key(name)
        try:
            response = self._client.head_object(Bucket=self._location.bucket, Key=key)
        except self._errors as e:
            if self._code(e) in _ABSENT_CODES:
                return None
            self._fail(verb, name, e)
        return int(response["ContentLength"])

    def exists(self, name: str) -> bool:
        return self._head_size("stat", name) is not None

    def size(self, name: str) -> int:
        size = self._head_size("stat", name)
        if size is None:
            raise self._missing(name)
        return size

    def delete(self, name: str) -> None:
        if self._head_size("delete", name) is None:
            raise self._missing(name)
        try:
            self._client.delete_object(Bucket=self._location.bucket, Key=self._key(name))
        except self._errors as e:
            self._fail("delete", name, e)

    def list(self, prefix: str) -> Iterator[str]:
        # Eager, not a generator: errors belong to the call, not to some later
        # next(), and the names must be sorted anyway.
        check_prefix(prefix)
        base = self._location.key("")  # "p/" or ""
        names = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._location.bucket, Prefix=base + prefix
            )
            for page in pages:
                for entry in page.get("Contents", []):
                    name = entry.get("Key", "")[len(base) :]
                    # Keys no ckpt put there ("dir/" markers of a console, ".x")
                    # are not objects of this store, as hidden files are not in
                    # the local backend.
                    if _is_name(name):
                        names.append(name)
        except self._errors as e:
            self._fail("list", prefix, e)
        # S3 lists in UTF-8 byte order, which for ASCII names is sorted();
        # sorting again costs little and does not trust every S3 clone.
        names.sort()
        return iter(names)


class _BodyBrokeOff(Exception):
    """A GetObject response whose body broke off: worth another request."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_session_lock = threading.Lock()
_loader: Loader | None = None  # the API models, loaded once per process


def _new_session() -> Session:
    """A fresh botocore session sharing the process's model loader (call it
    holding ``_session_lock``)."""
    import botocore.session

    global _loader
    session = botocore.session.Session()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


def _is_name(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True
