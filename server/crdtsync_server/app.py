"""``RelayServer``: the relay on a websockets server, with ``/healthz`` and ``/metrics``.

The transport only moves bytes between sockets and :class:`RelaySession` objects.
On PostgreSQL the relay, its sessions and its database run on a thread of their own
(:mod:`.relay_thread`), so a round trip or a lock another relay holds never stalls the
event loop: ``/healthz`` and ``/metrics`` answer, and websockets are read and written,
while the relay waits on its database. On SQLite they run on the loop.
``async with RelayServer(config) as server`` starts it (``port=0`` picks a free port:
see :attr:`RelayServer.url`); leaving the block, or SIGTERM under
:meth:`RelayServer.serve_forever`, stops accepting, lets the push in progress commit,
and closes every connection with 1001 (going away).

Beyond ``[server] max_connections`` open websockets a new upgrade is refused with HTTP
503 ("too many connections", ``Retry-After``) before any websocket exists, so a
connection flood cannot exhaust the relay; ``/healthz`` and ``/metrics`` still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from crdtsync.core.exceptions import LockedError
from crdtsync.core.sqlite_meta import OwnerLock

from .commit_notices import CommitListener
from .config import RelayConfig
from .database import is_postgres_url
from .errors import StorageError
from .relay import Relay
from .relay_thread import RelayOnLoop, RelayRunner, RelayThread
from .session import RelaySession
from .storage import RelayStorage

log = logging.getLogger("crdtsync.server")

#: seconds between two looks at what other relays on a PostgreSQL database committed,
#: while their commit notices cannot be heard (see .commit_notices)
FOLLOW_INTERVAL = 0.05
#: the same while they can: a safety net, the notices wake the relay at once
LISTENING_FOLLOW_INTERVAL = 1.0
#: seconds before a look that failed is tried again, doubling up to the second
FOLLOW_RETRY_FIRST = 0.1
FOLLOW_RETRY_MAX = 2.0
#: seconds between two checks for listening sessions that hold back PostgreSQL's
#: notification queue (see PostgresDatabase.end_stuck_listeners)
NOTICE_QUEUE_CHECK_INTERVAL = 10.0

T = TypeVar("T")

SEND_TIMEOUT = 30.0
RETRY_AFTER_SECONDS = 5  #: the ``Retry-After`` of a 503 "too many connections"


class RelayServer:
    """A running relay. Use as ``async with RelayServer(config) as server: ...``."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.authority = config.token_authority()
        self.storage: RelayStorage | None = None
        self.relay: Relay | None = None
        self._server: Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._lock: OwnerLock | None = None
        #: websockets admitted (upgrade accepted) and not yet finished
        self._admitted: set[ServerConnection] = set()
        #: how long a send may take before its replica counts as no longer reading
        self.send_timeout = SEND_TIMEOUT
        #: websockets in the middle of a send, and when that send began (event-loop
        #: time), for :meth:`_watch_sends`: one clock reading per send instead of a
        #: timeout scheduled and cancelled around each
        self._sending: dict[ServerConnection, float] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        #: where the relay, its sessions and its storage run (see .relay_thread)
        self._thread: RelayRunner | None = None
        #: how often a relay on PostgreSQL looks for what other relays committed (a
        #: relay that commits itself catches up first anyway), while it cannot hear
        #: their commit notices, and while it can
        self.follow_interval = FOLLOW_INTERVAL
        self.listening_follow_interval = LISTENING_FOLLOW_INTERVAL
        #: hear other relays' commit notices (PostgreSQL); off, the relay only polls
        self.listen_for_commits = True
        self.commit_listener: CommitListener | None = None
        self._listener: asyncio.Task[None] | None = None
        self._queue_guard: asyncio.Task[None] | None = None
        self._listeners_ended = 0  #: by :meth:`_guard_notice_queue`
        self._committed_elsewhere = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "ws" if self.config.tls_certificate is None else "wss"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Take the database (a SQLite file belongs to one relay, held by an OS lock the
        process keeps until it stops or dies; any number of relays may share a PostgreSQL
        database if they run the same configuration), open it, and listen. If listening
        fails, a SQLite file this start created is removed again."""
        database = self.config.database
        on_file = database != ":memory:" and not is_postgres_url(database)
        existed = not on_file or Path(database).exists()
        if on_file:
            try:
                self._lock = OwnerLock(database)
            except LockedError:
                raise StorageError(
                    f"{database} is in use by another relay: one relay process per database "
                    "(stop the other, or give this one another --db)"
                ) from None
            except OSError as exc:
                raise StorageError(f"{database}: cannot open it: {exc.strerror}") from None
        loop = asyncio.get_running_loop()
        postgres = is_postgres_url(database)
        thread: RelayRunner = RelayThread(loop) if postgres else RelayOnLoop(loop)
        self._thread = thread
        try:
            self.storage = await thread.call(RelayStorage, database)
            self.relay = await thread.call(self._open_relay, self.storage, thread)
            self._server = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._http,
                max_size=self.config.max_frame_bytes,
                compression=None,
                ssl=self.config.tls_context(),
            )
        except BaseException:
            await self.close()
            if not existed:  # leave nothing behind: no empty database
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(database + suffix).unlink(missing_ok=True)
            raise
        self._watchdog = asyncio.create_task(self._watch_sends())
        if self.storage.kind == "postgresql":  # other relays may share the database
            node = self.storage.node
            if self.listen_for_commits and node is not None:
                wake = self._committed_elsewhere.set
                self.commit_listener = CommitListener(database, node, wake)
                self._listener = asyncio.create_task(self.commit_listener.run())
                self._queue_guard = asyncio.create_task(self._guard_notice_queue())
            self._follower = asyncio.create_task(self._follow_others())
        log.info("relay listening on %s (database %s)", self.url, self.storage.where)
        ungranted = self.config.policy.ungranted()
        if ungranted:
            nobody = "; ".join(
                f"{name} ({', '.join(action.value for action in actions)})"
                for name, actions in ungranted.items()
            )
            log.warning(
                "no role grants %s: nobody can do that%s; grant it in [roles.NAME] "
                "(every user has [roles.default])",
                nobody,
                " unless the policy hook allows it" if self.config.policy.hook else "",
            )

    def _open_relay(self, storage: RelayStorage, thread: RelayRunner) -> Relay:
        storage.agree_on_configuration(self.config.fingerprint())
        return Relay(
            schema=self.config.schema,
            policy=self.config.policy,
            storage=storage,
            cache_records=self.config.cache_records,
            max_record_bytes=self.config.max_record_bytes,
            # group commit: the pushes submitted before the settle share one
            # transaction and one fsync
            defer=thread.defer,
        )

    def inspect(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run on the relay's thread, for tools and tests that look at a
        running relay's state from another thread (this one waits meanwhile)."""
        assert self._thread is not None, "the server is not started"
        return self._thread.run(fn, *args)

    async def close(self) -> None:
        """Stop accepting, close connections with 1001, then close the database (what
        was pushed is committed and answered first)."""
        thread = self._thread
        if thread is None:
            return
        if self.relay is not None:
            await thread.call(self.relay.settle)
        for task in (self._watchdog, self._follower, self._listener, self._queue_guard):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])  # ended (its cancellation is not ours)
        self._watchdog = self._follower = self._listener = self._queue_guard = None
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self.storage is not None:
            await thread.call(self.storage.close)
            self.storage = None
        await thread.stop()  # after every session's connection_lost
        self._thread = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with self:
            print(f"crdtsync relay listening on {self.url}", flush=True)
            await stop.wait()
            print("crdtsync relay shutting down", flush=True)

    # -- HTTP -------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if request.path == "/metrics":
            assert self.relay is not None
            metrics = self.relay.metrics.render() + self._cluster_metrics()
            response = connection.respond(HTTPStatus.OK, metrics)
            del response.headers["Content-Type"]  # Headers appends: replace, not add
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return connection.respond(
                HTTPStatus.NOT_FOUND, "crdtsync relay: websocket on /, or GET /healthz, /metrics\n"
            )
        if not self._admit(connection):
            assert self.relay is not None
            self.relay.metrics.connections_refused += 1
            response = connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"crdtsync relay: too many connections (max_connections = "
                f"{self.config.max_connections}); retry later\n",
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return None

    def _cluster_metrics(self) -> str:
        """Prometheus lines on hearing other relays' commits (PostgreSQL only)."""
        listener = self.commit_listener
        if listener is None:
            return ""
        lines = [
            "# HELP crdtsync_cluster_listening 1 while this relay hears other relays' "
            "commit notices, 0 while it only polls.",
            "# TYPE crdtsync_cluster_listening gauge",
            f"crdtsync_cluster_listening {int(listener.listening)}",
            "# HELP crdtsync_cluster_notices_total Commit notices heard from other relays.",
            "# TYPE crdtsync_cluster_notices_total counter",
            f"crdtsync_cluster_notices_total {listener.heard}",
            "# HELP crdtsync_cluster_listeners_ended_total Listening sessions of relays "
            "that stopped reading, ended by this relay.",
            "# TYPE crdtsync_cluster_listeners_ended_total counter",
            f"crdtsync_cluster_listeners_ended_total {self._listeners_ended}",
        ]
        return "\n".join(lines) + "\n"

    def _admit(self, connection: ServerConnection) -> bool:
        """Count ``connection`` against ``max_connections``, if there is room for it.

        Called from the synchronous handshake step that accepts the upgrade, so two
        handshakes cannot both take the last place. A connection whose handshake failed
        after being admitted never reaches :meth:`_handle`: it is dropped once closed.
        """
        limit = self.config.max_connections
        if limit <= 0:
            return True
        if len(self._admitted) >= limit:
            self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
            if len(self._admitted) >= limit:
                return False
        self._admitted.add(connection)
        return True

    # -- websocket ----------------------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        assert self.relay is not None and self._thread is not None
        thread = self._thread
        wake = asyncio.Event()
        session = RelaySession(
            self.relay,
            self.authority,
            max_frame_bytes=self.config.max_frame_bytes,
            max_changes_per_frame=self.config.max_changes_per_frame,
            max_queued_bytes=self.config.max_queued_bytes,
            max_frames_per_second=self.config.max_frames_per_second,
            frame_burst=self.config.frame_burst,
            wake=lambda: thread.notify(wake.set),
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._write(websocket, session, wake, thread))
                expiry: asyncio.Task[None] | None = None
                try:
                    async for message in websocket:
                        # Once the session is closing it ignores what comes in; reading
                        # on (not stopping) drains what a flooder had already sent, so its
                        # close frame gets through and the close handshake completes.
                        await thread.call(session.receive, message)
                        if expiry is None and session.expires_at is not None:
                            expiry = tasks.create_task(
                                self._expire(session, session.expires_at, thread)
                            )
                except ConnectionClosed:
                    pass
                wake.set()
                if expiry is not None:
                    expiry.cancel()
                if (await thread.call(_outgoing, session, False)).close_code is None:
                    writer.cancel()
        finally:
            # Not awaited: a cancelled handler must still let the relay forget the session.
            thread.submit(session.connection_lost)
            self._admitted.discard(websocket)

    @staticmethod
    async def _expire(session: RelaySession, expires_at: float, thread: RelayRunner) -> None:
        """End the session when its token expires."""
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        thread.submit(session.expire)

    async def _write(
        self,
        websocket: ServerConnection,
        session: RelaySession,
        wake: asyncio.Event,
        thread: RelayRunner,
    ) -> None:
        try:
            while True:
                await wake.wait()
                wake.clear()
                out = await thread.call(_outgoing, session)
                await self._send(websocket, out.data)
                if out.has_more:  # a backlog: next batch after others had a turn
                    wake.set()
                    await asyncio.sleep(0)
                if out.close_code is not None:
                    # What was queued while a send blocked (the fatal error among it) goes
                    # out before the close.
                    rest = await thread.call(_outgoing, session)
                    await self._send(websocket, rest.data)
                    await websocket.close(out.close_code, _reason(out.close_reason))
                    return
        except ConnectionClosed:
            return
        finally:
            self._sending.pop(websocket, None)

    async def _send(self, websocket: ServerConnection, messages: list[bytes]) -> None:
        """Send ``messages``, each send watched by :meth:`_watch_sends`."""
        sending, now = self._sending, asyncio.get_running_loop().time
        for data in messages:
            sending[websocket] = now()
            await websocket.send(data)
        sending.pop(websocket, None)

    async def _watch_sends(self) -> None:
        """Close the connection of a replica that stopped reading: one whose send has
        not finished within :attr:`send_timeout` seconds (checked a few times per
        timeout, at most every second). The blocked send then fails and its writer
        ends; the session ends as for any lost connection."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.send_timeout / 4))
            now = loop.time()
            for websocket, since in list(self._sending.items()):
                if now - since > self.send_timeout:
                    del self._sending[websocket]
                    log.warning(
                        "closing a replica that stopped reading for %.0f s", self.send_timeout
                    )
                    with contextlib.suppress(Exception):  # already gone: nothing to close
                        websocket.transport.abort()

    async def _follow_others(self) -> None:
        """Take in and fan out what other relays on the database committed
        (:meth:`.relay.Relay.follow`) as soon as one of their commit notices is heard
        (:mod:`.commit_notices`), and by itself every :attr:`listening_follow_interval`
        seconds, or every :attr:`follow_interval` while no notice can be heard.

        A look that fails (the database unreachable for a while, a connection it broke)
        is tried again after :data:`FOLLOW_RETRY_FIRST` seconds, doubling up to
        :data:`FOLLOW_RETRY_MAX`: what woke it is not lost with it. The first failure of
        a run of them is logged with its traceback, the recovery in one line."""
        woken = self._committed_elsewhere
        retry: float | None = None  # seconds before trying a failed look again
        while True:
            listener = self.commit_listener
            listening = listener is not None and listener.listening
            interval = self.listening_follow_interval if listening else self.follow_interval
            if retry is not None:
                interval = min(interval, retry)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await woken.wait()
            woken.clear()
            if self.relay is None or self._thread is None:
                continue
            try:
                await self._thread.call(self.relay.follow)
            except Exception:
                if retry is None:
                    log.exception("reading what other relays committed failed; retrying")
                retry = min(2 * retry, FOLLOW_RETRY_MAX) if retry else FOLLOW_RETRY_FIRST
                continue
            if retry is not None:
                log.info("reading what other relays committed works again")
                retry = None

    async def _guard_notice_queue(self) -> None:
        """Every :data:`NOTICE_QUEUE_CHECK_INTERVAL` seconds, end the listening sessions
        of relays that stopped reading their commit notices, before they fill
        PostgreSQL's notification queue (then every commit would fail). A failure is
        logged (the first of a run of them with its traceback) and the next round tries
        again."""
        failing = False
        while True:
            await asyncio.sleep(NOTICE_QUEUE_CHECK_INTERVAL)
            if self.storage is None or self._thread is None:
                continue
            try:
                ended = await self._thread.call(self.storage.end_stuck_listeners)
            except Exception:
                if not failing:
                    log.exception("checking PostgreSQL's notification queue failed; retrying")
                failing = True
                continue
            failing = False
            if ended:
                self._listeners_ended += ended
                log.warning(
                    "ended %d listening session(s) of relays that stopped reading their "
                    "commit notices (they held back PostgreSQL's notification queue)",
                    ended,
                )


@attrs.frozen
class _Outgoing:
    """What a session has for its transport, taken on the relay thread."""

    data: list[bytes]
    has_more: bool
    close_code: int | None
    close_reason: str


def _outgoing(session: RelaySession, take: bool = True) -> _Outgoing:
    """The session's queued messages (``take``: emptying its queue) and its state."""
    return _Outgoing(
        session.data_to_send() if take else [],
        session.has_more,
        session.close_code,
        session.close_reason,
    )


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode("utf-8")[:123]
    return data.decode("utf-8", errors="ignore")
