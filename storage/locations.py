"""Where a store keeps its events and its chunks, as URLs; and keeping secrets out of text.

Terms:
    events URL  ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]``
                (PostgreSQL, through eventsourcing's own persistence; a missing
                password is taken from ``$PGPASSWORD``), or ``sqlite:///PATH`` (an
                SQLite file: the embedded default keeps ``DIR/events.sqlite``).
    chunks URL  ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]`` (credentials
                from the usual AWS environment variables), or ``file:///PATH``
                (a local directory: the default is ``DIR/chunks``).
    display     a URL as it may be printed: the password replaced by ``***``.
    secret      any text that must never be printed: passwords of events URLs,
                ``$PGPASSWORD``, ``$AWS_SECRET_ACCESS_KEY``, ``$AWS_SESSION_TOKEN``.
                ``scrub`` replaces each in a message; the CLI runs every error
                and every output line through it.
    token       a secret as it stands in text, not glued to a word: the characters
                either side are not letters, digits or ``_``, nor ``-``/``.`` joining
                it to one. ``ckpt`` is a token in ``user ckpt.`` and ``/ckpt/``, not
                in ``ckpt-store.json`` or ``s3://ckpt-bars``.

Masking, and why not every substring: replacing each occurrence of a password
``ckpt`` turned ``ckpt-store.json`` into ``***-store.json`` and so told the reader
the password (issue 12). ``scrub`` therefore masks
    - wherever a URL's user part has a password, or a ``password=``, ``secret=``
      or ``token=`` option has a value: the value, whatever it is (a password in
      a URL is a password whatever its length, and it is masked even if unknown);
    - the known secrets (``secrets_in``) only as whole tokens: the secret
      variables' values of 4+ characters, and URL passwords of 8+ characters
      (a server may quote one outside its URL). A shorter URL password is masked
      only where it stands in a URL: elsewhere it is more likely a word of the
      message (the user name, the database, a folder) than the password, and
      masking that word would give the password away. Secrets of 1-3 characters
      are not masked as tokens at all, as before: every "a" or "vm" would be.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ckpt.domain.errors import InvalidValue

POSTGRES_SCHEMES = ("postgresql", "postgres")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # PostgreSQL: 63 bytes at most
SECRET_ENV = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class PostgresLocation:
    user: str
    password: str = field(repr=False)
    host: str
    port: int
    dbname: str
    schema: str

    def display(self) -> str:
        where = f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.dbname}"
        return where if self.schema == "public" else f"{where}?schema={self.schema}"


def kind_of_events(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    if scheme == "sqlite":
        return "sqlite"
    raise InvalidValue(f"events URL {display(url)!r}: expected postgresql://... or sqlite:///PATH")


def kind_of_chunks(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in ("s3", "file"):
        return scheme
    raise InvalidValue(f"chunks URL {display(url)!r}: expected s3://BUCKET/PREFIX or file:///PATH")


def parse_postgres(url: str, environ: Mapping[str, str]) -> PostgresLocation:
    """``environ`` supplies ``PGPASSWORD`` when the URL has no password."""
    head, userinfo, rest = _userinfo(url)
    try:
        parts = urlsplit(head + rest)  # without the user part: a password may hold anything
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise InvalidValue(f"events URL {display(url)!r} is malformed: {e}") from None
    if parts.scheme not in POSTGRES_SCHEMES:
        raise InvalidValue(f"{display(url)!r} is not a postgresql:// URL")
    shown = display(url)
    port = parts.port or 5432
    user_part, _, password_part = userinfo.partition(":")
    user = unquote(user_part)
    password = unquote(password_part) or environ.get("PGPASSWORD", "")
    dbname = unquote(parts.path.lstrip("/"))
    if not (user and parts.hostname and dbname):
        raise InvalidValue(f"events URL {shown!r}: give user, host and database")
    if not password:
        raise InvalidValue(
            f"events URL {shown!r} has no password: put it in the URL or in $PGPASSWORD"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"schema"})
    if unknown:
        raise InvalidValue(f"events URL {shown!r}: unknown option {unknown[0]!r} (known: schema)")
    schema = query.get("schema", ["public"])[-1]
    if not _IDENTIFIER.fullmatch(schema):
        raise InvalidValue(
            f"events URL {shown!r}: schema {schema!r} is not a plain identifier "
            "(letters, digits, _; at most 63)"
        )
    return PostgresLocation(user, password, parts.hostname or "", port, dbname, schema)


def _local_path(url: str, scheme: str) -> Path:
    parts = urlsplit(url)
    # sqlite://tmp/x would mean /x with "tmp" silently dropped: three slashes or none.
    if parts.scheme != scheme or not parts.path or parts.netloc or parts.query:
        raise InvalidValue(
            f"{display(url)!r} is not a {scheme}:///ABSOLUTE/PATH URL (three slashes, no host)"
        )
    return Path(unquote(parts.path))


def sqlite_path(url: str) -> Path:
    return _local_path(url, "sqlite")


def file_path(url: str) -> Path:
    return _local_path(url, "file")


_QUERY_SECRET = re.compile(r"((?:^|[?&;])(?:password|secret|token)[^=&;]*=)([^&;#]*)", re.I)


def _userinfo(url: str) -> tuple[str, str, str]:
    """(scheme://, userinfo, rest) split by hand, not by urlsplit: a password
    with an unencoded ``/``, ``?`` or ``#`` must still be found (urlsplit would
    cut the netloc there and leave the rest of the password in the path)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    if "@" not in rest:
        return scheme + sep, "", rest
    userinfo, _, host = rest.rpartition("@")
    return scheme + sep, userinfo, host


def display(url: str) -> str:
    """``url`` with any password (in the user part, or a ``password=``/``secret=``/
    ``token=`` query option) replaced by ``***``: safe to print."""
    head, userinfo, rest = _userinfo(url)
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{rest}" if colon else f"{user}@{rest}"
    return head + _QUERY_SECRET.sub(r"\1***", rest)


# The shortest secrets masked as tokens (see the module docstring): 4 characters
# for the secret variables, as before; 8 for URL passwords, which are masked in
# their URLs whatever their length.
MIN_ENV_SECRET = 4
MIN_URL_SECRET = 8


def secrets_in(urls: Iterable[str | None], environ: Mapping[str, str]) -> list[str]:
    """The secrets ``scrub`` masks as whole tokens: URL passwords and secret query
    options of 8+ characters (raw and percent-decoded) and the values of the secret
    environment variables of 4+ characters. Longest first."""
    found: list[str] = []
    for url in urls:
        if not url:
            continue
        _, userinfo, rest = _userinfo(url)
        candidates = [userinfo.partition(":")[2]] if ":" in userinfo else []
        candidates += [m.group(2) for m in _QUERY_SECRET.finditer(rest)]
        for secret in candidates:
            found += [s for s in (secret, unquote(secret)) if len(s) >= MIN_URL_SECRET]
    found += [value for name in SECRET_ENV if len(value := environ.get(name, "")) >= MIN_ENV_SECRET]
    # Longest first, so a secret containing another is replaced whole.
    return sorted(set(found), key=len, reverse=True)


# scheme://USER:PASSWORD@ anywhere in a text: the password runs to the last "@"
# before a space or a quote (it may hold "/", "?", "#" and "@" unencoded).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s'\"/@:]*:)[^\s'\"]*(?=@)")
# password=/secret=/token= options in a URL's query or a libpq conninfo string.
_TEXT_SECRET = re.compile(r"((?:^|[?&;\s])(?:password|secret|token)[^=&;\s]*=)([^&;#\s'\"]*)", re.I)
_WORD = "A-Za-z0-9_"


def _as_token(secret: str) -> re.Pattern[str]:
    """``secret`` where it stands as a token (module docstring): only a secret
    that starts or ends with a word character can be glued to a word there."""
    before = f"(?<![{_WORD}])(?<![{_WORD}][-.])" if re.match(f"[{_WORD}]", secret) else ""
    after = f"(?![{_WORD}])(?![-.][{_WORD}])" if re.search(f"[{_WORD}]$", secret) else ""
    return re.compile(before + re.escape(secret) + after)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every password in a URL or a secret option, and every one of
    ``secrets`` standing as a token, replaced by ``***`` (module docstring)."""
    text = _URL_PASSWORD.sub(r"\1***", text)
    text = _TEXT_SECRET.sub(r"\1***", text)
    for secret in secrets:
        text = _as_token(secret).sub("***", text)
    return text


def environ_secrets(urls: Iterable[str | None]) -> list[str]:
    return secrets_in(urls, os.environ)
