"""Backups of a relay's database, taken while it serves, and their restore.

A backup is two files: ``OUTPUT``, a consistent copy of the database made by SQLite's
online backup from one read transaction (a serving relay keeps accepting changes), and
``OUTPUT.secret``, the token key the relay keeps beside its database (when it keeps
one). Neither ever overwrites a file.

A restore puts a backup back as the database of a stopped relay, never over an existing
database. The restored database gets a new relay identity and a new CRDT client id:
replicas that synced with the lost database see another relay and sync again from the
start (their cursors count changes the backup does not have), and the relay never
reuses the CRDT clock values of operations it made after the backup was taken.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import uuid
from pathlib import Path

import attrs

from crdtsync.core.exceptions import FormatError, LockedError
from crdtsync.core.sqlite_meta import OwnerLock, check_format, get_meta, set_meta

from .config import RelayConfig
from .database import is_postgres_url, shown_url
from .errors import StorageError
from .storage import FORMAT_VERSION, RelayStorage, new_private_file


@attrs.frozen
class Copied:
    """What a backup or a restore wrote."""

    database: str  #: the database file written
    version: int  #: the relay's last version in it
    secret: str | None  #: the secret file written beside it, if any


def back_up(config: RelayConfig, output: str) -> Copied:
    """Copy ``config``'s database (serving or not) to the new file ``output``, and the
    secret the relay keeps beside it to ``output.secret``. The database is only read:
    a backup never migrates or otherwise changes it."""
    _refuse_postgres(config, "back up", "pg_dump")
    _copy_database(config.database, output)
    try:
        version = _relay_version(output, config.database)
    except StorageError:
        os.unlink(output)
        raise
    secret = config.secret_path
    if config.secret is not None or secret is None or not secret.exists():
        return Copied(output, version, None)
    target = f"{output}.secret"
    _copy_new(secret, target)
    return Copied(output, version, target)


def restore(config: RelayConfig, backup: str) -> Copied:
    """Make the backup ``backup`` the database of ``config`` (which must not exist, and
    no relay may be serving on it), with a new relay identity; put ``backup.secret``
    beside it. The backup itself is only read: it is copied first, and the copy is
    checked (a relay database, in a format this version reads or migrates, intact)."""
    database = config.database
    _refuse_postgres(config, "restore", "pg_restore")
    if database == ":memory:":
        raise StorageError("restore needs a database file, not :memory:")
    if os.path.lexists(database):
        raise StorageError(
            f"{database} exists: move it away first (it may hold changes the backup does "
            "not); a restore never overwrites a database"
        )
    try:
        lock = OwnerLock(database)
    except LockedError:
        raise StorageError(f"{database} is in use by a relay: stop it first") from None
    draft = f"{database}.restoring-{secrets.token_hex(4)}"
    try:
        _copy_database(backup, draft)
        version = _relay_version(draft, backup)
        storage = RelayStorage(draft, create=False)  # migrates an older format
        try:
            problem = storage.integrity_check()
        finally:
            storage.close()
        if problem != "ok":
            raise StorageError(f"{backup} is damaged: {problem}")
        _new_identity(draft)
        secret = _restore_secret(config, backup)
        os.replace(draft, database)
    finally:
        for leftover in (draft, f"{draft}-wal", f"{draft}-shm", f"{draft}-journal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        lock.release()
    return Copied(database, version, secret)


def _refuse_postgres(config: RelayConfig, verb: str, tool: str) -> None:
    """These commands copy SQLite files; a PostgreSQL database has its own tools."""
    if is_postgres_url(config.database):
        raise StorageError(
            f"crdtsync cannot {verb} a PostgreSQL database ({shown_url(config.database)}): "
            f"use PostgreSQL's own tools ({tool}, or continuous archiving)"
        )


def _copy_database(source: str, target: str) -> None:
    """Copy the SQLite database ``source`` to the new file ``target`` (mode 0600, one
    self-contained file) with SQLite's online backup: every transaction committed
    before it started, none half-written, from a read-only connection."""
    if source == ":memory:" or not os.path.isfile(source):
        raise StorageError(f"{source}: no relay database there")
    os.close(new_private_file(target))
    try:
        reader = sqlite3.connect(Path(source).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            writer = sqlite3.connect(target)
            try:
                reader.backup(writer)
                writer.execute("PRAGMA journal_mode=DELETE")
            finally:
                writer.close()
        finally:
            reader.close()
    except sqlite3.Error as exc:
        os.unlink(target)
        raise StorageError(f"{source}: not a crdtsync relay database ({exc})") from None


def _relay_version(path: str, name: str) -> int:
    """The last version in the relay database copied to ``path`` (``name``: the file it
    was copied from, for errors), read without changing it."""
    db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        if check_format(db, version=FORMAT_VERSION, kind="relay database") is None:
            raise FormatError("it is empty")
        return int(get_meta(db, "seq", 0))
    except FormatError as exc:
        raise StorageError(f"{name}: not a crdtsync relay database: {exc}") from None
    except sqlite3.Error as exc:
        raise StorageError(f"{name}: not a crdtsync relay database ({exc})") from None
    finally:
        db.close()


def _new_identity(path: str) -> None:
    """Give the relay database at ``path`` a new relay id and CRDT client id."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        set_meta(db, "server_id", uuid.uuid4().hex)
        set_meta(db, "client_id", secrets.randbits(53) or 1)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to move
    finally:
        db.close()


def _restore_secret(config: RelayConfig, backup: str) -> str | None:
    """Put the backup's secret beside the database, unless the relay is configured
    with one (then the backup's is not needed)."""
    saved = Path(f"{backup}.secret")
    target = config.secret_path
    if config.secret is not None or target is None or not saved.exists():
        return None
    if target.exists():
        if target.read_bytes() != saved.read_bytes():
            raise StorageError(
                f"{target} exists and differs from {saved}: move it away first "
                "(tokens signed with it would stop working)"
            )
        return None
    _copy_new(saved, str(target))
    return str(target)


def _copy_new(source: Path, target: str) -> None:
    """Copy ``source`` to the new file ``target``, readable by its owner only."""
    with os.fdopen(new_private_file(target), "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
        out.flush()
        os.fsync(out.fileno())
