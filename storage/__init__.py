"""ckpt.storage: persistence adapters (event store wiring, encoders)."""

from .compressor import ZstdCompressor
from .event_store import sqlite_environment
from .transcoder import MsgPackTranscoder

__all__ = ["MsgPackTranscoder", "ZstdCompressor", "sqlite_environment"]
