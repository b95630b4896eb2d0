"""What the replica's store and the relay's storage share: msgpack blobs in SQLite, and
a ``meta (key, value)`` table of small settings and counters."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgpack

META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)"


def pack(value: Any) -> bytes:
    """A value as a msgpack blob."""
    return bytes(msgpack.packb(value, use_bin_type=True))


def unpack(blob: bytes | None) -> Any:
    """The value of a msgpack blob (``None`` for SQL NULL)."""
    return None if blob is None else msgpack.unpackb(blob, raw=False, strict_map_key=False)


def get_meta(db: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else unpack(row[0])


def set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, pack(value)),
    )
