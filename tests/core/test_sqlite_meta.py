"""What both stores share in SQLite: how blobs are bound."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import crdtsync.core.sqlite_meta  # noqa: F401  (binds bytes as they are, on import)


def test_a_blob_is_stored_and_read_back_exactly() -> None:
    blob = bytes(range(256)) * 3
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (b BLOB)")
    db.execute("INSERT INTO t VALUES (?)", (blob,))
    db.executemany("INSERT INTO t VALUES (?)", [(b"",), (b"\x00",)])
    assert [row[0] for row in db.execute("SELECT b FROM t")] == [blob, b"", b"\x00"]


def test_an_applications_own_bytes_adapter_is_kept() -> None:
    program = textwrap.dedent(
        """
        import sqlite3
        sqlite3.register_adapter(bytes, lambda b: b[::-1])
        import crdtsync.core.sqlite_meta
        db = sqlite3.connect(":memory:")
        print(db.execute("SELECT hex(?)", (b"ab",)).fetchone()[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "6261"  # the application's adapter reversed it
