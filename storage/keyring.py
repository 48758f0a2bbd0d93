"""Encryption at rest: one store key, and the keys derived from it.

Terms: the *store key* is 32 random bytes the user keeps (a key file, or the
``CKPT_KEY`` environment variable, hex). From it HKDF-SHA256 derives, each
for one purpose: the events key (eventsourcing's AES-GCM cipher encrypts every
stored event and snapshot), the chunk-id key (an encrypted store names a chunk
by HMAC-SHA256 of its bytes, not SHA-256: equal content still deduplicates,
but an id no longer confirms a guess of the content), the chunk key (every
compressed frame is sealed with AES-256-GCM, its id as associated data, so a
frame moved under another id fails), the read-model key (names and details
in the read-model tables are sealed too) and a key check, kept in the store
marker, that tells a wrong key from a damaged store.

The cipher is the ``cryptography`` package's AES-GCM (well kept, and the one
eventsourcing's own cipher uses): 12-byte random nonce, 16-byte tag.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ckpt.domain.errors import InvalidValue, StoreCorrupt

KEY_BYTES = 32
NONCE = 12


def _derive(key: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(key)


def parse_key(text: str, where: str) -> bytes:
    """A store key written as 64 hex digits (what ``generate_key`` writes)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise InvalidValue(f"{where}: a store key is 64 hex digits") from None
    if len(key) != KEY_BYTES:
        raise InvalidValue(f"{where}: a store key is {KEY_BYTES} bytes, got {len(key)}")
    return key


def parse_key_file(data: bytes, where: str) -> bytes:
    """A key file's bytes: exactly 32 raw bytes (``head -c 32 /dev/urandom``), or
    the text form, 64 hex digits and an optional newline (what ``init`` writes).
    Neither can be taken for the other: the text form is 64 bytes or more."""
    if len(data) == KEY_BYTES:
        return data
    try:
        text = data.decode("ascii")
        key = bytes.fromhex(text.strip())
    except ValueError:  # UnicodeDecodeError is one
        key = b""
    if len(key) != KEY_BYTES:
        raise InvalidValue(
            f"{where}: a key file holds 64 hex digits (a text line) or exactly {KEY_BYTES} "
            f"raw bytes; this one holds {len(data)} bytes that are neither"
        )
    return key


def generate_key() -> str:
    return os.urandom(KEY_BYTES).hex()


class Keyring:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidValue(f"a store key is {KEY_BYTES} bytes, got {len(key)}")
        self.events_key = base64.b64encode(_derive(key, "ckpt events")).decode()
        self._id_key = _derive(key, "ckpt chunk ids")
        self._chunks = AESGCM(_derive(key, "ckpt chunks"))
        self._records = AESGCM(_derive(key, "ckpt read models"))
        self.key_check = _derive(key, "ckpt key check").hex()

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return hmac.new(self._id_key, data, hashlib.sha256).digest()

    def seal_chunk(self, frame: bytes, cid: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._chunks.encrypt(nonce, frame, cid)

    def open_chunk(self, blob: bytes, cid: bytes) -> bytes:
        """The frame; ValueError when the blob is damaged or sealed under another key or id."""
        try:
            return self._chunks.decrypt(blob[:NONCE], blob[NONCE:], cid)
        except (InvalidTag, ValueError) as e:
            raise ValueError("its seal does not verify (damaged, or another key or id)") from e

    def seal_text(self, text: str | None) -> bytes | None:
        if text is None:
            return None
        nonce = os.urandom(NONCE)
        return nonce + self._records.encrypt(nonce, text.encode(), None)

    def open_text(self, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        try:
            return self._records.decrypt(blob[:NONCE], blob[NONCE:], None).decode()
        except (InvalidTag, ValueError) as e:
            raise StoreCorrupt("a sealed read-model value does not verify (damaged?)") from e
