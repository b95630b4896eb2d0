"""The relay's SQL connection: an embedded SQLite file or a PostgreSQL database, behind
one small interface (:class:`Database`).

:class:`~.storage.RelayStorage` writes its SQL once, in what both engines read the
same way: ``?`` placeholders, ``INSERT … ON CONFLICT …``, the ``"user"`` column quoted
(a reserved word in PostgreSQL), no engine-specific literals. Each connection runs
outside any implicit transaction; the storage opens, commits and rolls back its own,
and uses savepoints inside them (both engines have them):

* ``database =`` a file path (or ``:memory:``) selects :class:`SqliteDatabase`; a
  ``postgresql://`` (or ``postgres://``) URL selects :class:`PostgresDatabase`.
* :meth:`Database.begin`: SQLite's ``BEGIN IMMEDIATE`` takes the write lock at once;
  PostgreSQL's ``BEGIN`` is read committed.
* A commit is durable when it returns: SQLite in WAL mode with ``synchronous=FULL``;
  PostgreSQL through its own WAL (``fsync`` and ``synchronous_commit`` on, its defaults).
* Who may share it: a SQLite file belongs to one relay process (an OS lock beside it,
  :class:`~crdtsync.core.sqlite_meta.OwnerLock`); any number of relays may share a
  PostgreSQL database, their write transactions taken one at a time by the lock on its
  sequence row (``RelayStorage.begin``). A relay frozen in a transaction holds that lock
  at most :data:`IDLE_IN_TRANSACTION_TIMEOUT` (the server then ends its session and
  rolls back); one waiting for it gives up after :data:`LOCK_TIMEOUT`.

PostgreSQL is reached through psycopg 3 (``pip install 'crdtsync[postgres]'``), imported
only when a ``postgresql://`` database is opened.
"""

from __future__ import annotations

import math
import re
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from crdtsync.core.sqlite_meta import Rows

from .errors import StorageError

#: What an application's ``database`` setting starts with to select PostgreSQL.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

#: The key of the transaction-level advisory lock taken while the tables are checked and
#: created (relays starting at once on a new database create them once); an arbitrary
#: constant, "crdtsync" in ASCII.
SCHEMA_LOCK_KEY = 0x6372647473796E63
#: How a relay's sessions are named to the server (``pg_stat_activity``).
APPLICATION_NAME = "crdtsync relay"
#: Seconds a relay's session may sit idle inside a transaction before the server ends
#: it (a relay frozen mid-transaction must not hold the sequence lock for long).
IDLE_IN_TRANSACTION_TIMEOUT = 10
#: Seconds a relay waits for a lock (the sequence row) before its transaction fails
#: (the pushes in it get ``internal_error`` and their replicas retry).
LOCK_TIMEOUT = 5
#: Seconds a relay's session may wait, inside a transaction, for its relay to send the
#: rest of a statement before another relay that needs the lock ends it (see
#: :meth:`PostgresDatabase.end_stalled_relays`).
STALLED_AFTER = 10
#: SQLSTATE of a lock wait that ran out (``lock_not_available``)
LOCK_NOT_AVAILABLE = "55P03"
#: The channel a relay's commit notice goes out on (``NOTIFY``): its payload is the
#: committing relay's :attr:`PostgresDatabase.node` and the version it committed through.
COMMITS_CHANNEL = "crdtsync_commits"
#: How a relay's listening session is named to the server (``pg_stat_activity``): not
#: the relay's own name, so that it never counts as a relay's working session.
LISTENER_NAME = "crdtsync relay listener"
#: The share of PostgreSQL's notification queue (8 GB by default, one for the whole
#: server) in use above which listening sessions that are stuck sending to their relay
#: are ended (see :meth:`PostgresDatabase.end_stuck_listeners`); a healthy cluster keeps
#: it near 0.
NOTICE_QUEUE_LIMIT = 0.01


def is_postgres_url(database: str) -> bool:
    """``database`` names a PostgreSQL database (a URL), not a SQLite file."""
    return database.startswith(POSTGRES_SCHEMES)


def shown_url(url: str) -> str:
    """``url`` fit for a message or a log line: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class Database(Protocol):
    """One connection to the relay's database, driven by :class:`~.storage.RelayStorage`
    (one thread at a time). SQL is written as the module docstring says."""

    #: ``"sqlite"`` or ``"postgresql"``
    kind: str
    #: the database as a message names it (a path; a URL without its password)
    where: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def begin(self) -> None:
        """Open a write transaction (:meth:`commit` or :meth:`rollback` ends it)."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class SqliteDatabase:
    """A SQLite file in WAL mode with ``synchronous=FULL``: a commit is on disk when it
    returns."""

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.where = path
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.connection.executemany(sql, rows)

    def begin(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def close(self) -> None:
        self.connection.close()


_PLACEHOLDER = re.compile(r"\?")


class PostgresDatabase:
    """A PostgreSQL database over psycopg 3, in autocommit mode with explicit
    transactions (as :class:`SqliteDatabase`). A commit is durable when it returns, as
    far as the server is configured to make it so (``fsync`` and ``synchronous_commit``
    on, their defaults).

    Connecting fails with a :class:`~.errors.StorageError` that names the server (never
    the password) and what the driver said. A connection that breaks (the server
    restarted, the network cut) fails what was running on it, which the server rolls
    back; the next transaction (or statement outside one) connects again."""

    kind = "postgresql"

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.where = shown_url(url)
        try:
            import psycopg
        except ImportError:
            raise StorageError(
                f"{self.where}: PostgreSQL needs psycopg: pip install 'crdtsync[postgres]'"
            ) from None
        self._psycopg = psycopg
        #: what the driver raises (``psycopg.Error``)
        self.Error: type[Exception] = psycopg.Error
        self._url, self._connect_timeout = url, max(1, round(connect_timeout))
        #: names this connection's commits in their notices (see :meth:`write_sequence`)
        self.node = secrets.token_hex(8)
        self.connection = self._connect()
        self._in_transaction = False  #: between begin() and commit() / rollback()
        self._translated: dict[str, str] = {}

    def _connect(self) -> Any:
        try:
            connection = self._psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name=APPLICATION_NAME,
            )
            connection.execute(
                f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}s'"
            )
            connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}s'")
            # psycopg prepares a statement run five times, and the server then caches
            # one generic plan for it, chosen for the tables as they were: on a log that
            # started empty, a sequential scan, kept while the log grows (each push
            # frame's retransmission check scanned the whole log). Plan every run for
            # the tables as they are.
            connection.execute("SET plan_cache_mode = force_custom_plan")
        except self._psycopg.Error as exc:
            raise StorageError(f"{self.where}: cannot connect: {_first_line(exc)}") from None
        return connection

    def _live(self) -> Any:
        """The connection, connected again if it broke (outside a transaction only: a
        transaction that lost its connection is gone, and its statements fail)."""
        if self.connection.closed:
            self.connection = self._connect()
        return self.connection

    def _sql(self, sql: str) -> str:
        """``sql`` with psycopg's ``%s`` placeholders for ``?`` (memoised: the storage
        runs a few dozen distinct statements)."""
        found = self._translated.get(sql)
        if found is None:
            if "%" in sql:
                raise ValueError(f"a literal % in the storage's SQL: {sql!r}")
            found = self._translated[sql] = _PLACEHOLDER.sub("%s", sql)
        return found

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        connection = self.connection if self._in_transaction else self._live()
        cursor: Rows = connection.execute(self._sql(sql), params or None)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        connection = self.connection if self._in_transaction else self._live()
        with connection.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def begin(self) -> None:
        self._live().execute("BEGIN")
        self._in_transaction = True

    def commit(self) -> None:
        self._in_transaction = False
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        self._in_transaction = False
        if not self.connection.closed and self._server_in_transaction():
            self.connection.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def _server_in_transaction(self) -> bool:
        status = self.connection.info.transaction_status
        return bool(status != self._psycopg.pq.TransactionStatus.IDLE)

    def write_sequence(self, value: bytes, seq: int) -> None:
        """Inside a transaction: store the sequence row (``value``, packed) and tell the
        relays listening on :data:`COMMITS_CHANNEL` that versions through ``seq`` are
        committed, in one statement. The server delivers the notice when, and only
        if, the transaction commits."""
        self.execute(
            "WITH written AS (INSERT INTO meta (key, value) VALUES ('seq', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING 1) "
            "SELECT pg_notify(?, ?) FROM written",
            (value, COMMITS_CHANNEL, f"{self.node} {seq}"),
        )

    def other_relays_connected(self) -> bool:
        """Another relay has a session on this database (sessions of the same role, as
        relays of one deployment are, are visible to each other)."""
        row = self.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = ? AND pid <> pg_backend_pid()",
            (APPLICATION_NAME,),
        ).fetchone()
        return bool(row and row[0])

    def end_stalled_relays(self) -> int:
        """End the sessions of relays stopped inside a transaction; how many were ended.

        A relay frozen between two statements is ended by the server itself
        (:data:`IDLE_IN_TRANSACTION_TIMEOUT`). One frozen in the middle of sending a
        statement (a ``SIGSTOP``, a paused VM, in the middle of a pipelined INSERT) counts
        as *active*: the server waits for the rest for ever, holding the sequence row. So
        a relay whose wait for that row ran out ends every relay session of this database
        that is in a transaction and has been waiting for its relay to send anything
        (``ClientRead``) for :data:`STALLED_AFTER` seconds or more; a working relay never
        waits on itself that long, and whatever the ended one had not committed is rolled
        back (its clients retry)."""
        return self._end_sessions(
            "application_name = ? AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
            "AND wait_event = 'ClientRead' AND state_change < now() - make_interval(secs => ?)",
            (APPLICATION_NAME, STALLED_AFTER),
        )

    def end_stuck_listeners(self) -> int:
        """End the listening sessions of relays that stopped reading (frozen, cut off):
        how many were ended.

        A listening session's server process sends each notice to its relay; when the
        relay stops reading, that process blocks writing to it (``ClientWrite``) and
        holds back PostgreSQL's notification queue, which every listener shares: once it
        is full, every commit that sends a notice fails. So once the queue is more than
        :data:`NOTICE_QUEUE_LIMIT` in use, listening sessions of relays that are blocked
        writing are ended. A live relay whose session happened to be writing just then
        listens again at once (and reads the log once): it loses no change."""
        return self._end_sessions(
            "application_name = ? AND wait_event = 'ClientWrite' "
            "AND pg_notification_queue_usage() > ?",
            (LISTENER_NAME, NOTICE_QUEUE_LIMIT),
        )

    def _end_sessions(self, condition: str, params: Sequence[Any]) -> int:
        """End the sessions of this database that ``condition`` (over
        ``pg_stat_activity``) picks; how many were ended."""
        rows = self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = current_database() AND {condition}",
            params,
        )
        return sum(1 for (ended,) in rows if ended)

    def close(self) -> None:
        self.connection.close()


def waits_past_a_stall() -> int:
    """How many waits for the sequence row (each up to :data:`LOCK_TIMEOUT`) outlast a
    relay that stopped in its transaction just before the first began: by the last, it
    has been stopped :data:`STALLED_AFTER` seconds and is ended (or the server ended it)."""
    return 1 + math.ceil(STALLED_AFTER / LOCK_TIMEOUT)


def is_lock_timeout(exc: BaseException) -> bool:
    """``exc`` is a lock wait that ran out (:data:`LOCK_TIMEOUT`)."""
    return getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_database(database: str) -> Database:
    """The connection for a ``database`` setting: a ``postgresql://`` URL, else a SQLite
    path."""
    if is_postgres_url(database):
        return PostgresDatabase(database)
    return SqliteDatabase(database)
