"""``crdtsync.Client``: the application's facade over one replica.

Local operations (``create``, ``update``, ``delete``, ``get``, ``records``,
``pending``, ``summary``, ``resolve``, ``dismiss``) are plain synchronous calls that
work with no network: each is validated against the schema and committed to the local
SQLite store before it returns. ``async with client`` starts the background sync
(when a relay URL is given); ``client.events()`` streams typed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from crdtsync.core.exceptions import (
    InvalidOperation,
    OfflineError,
    ProtocolError,
    SchemaError,
    SyncError,
)
from crdtsync.core.protocol import MAX_RELAY_FRAME_BYTES, ErrorCode
from crdtsync.core.schema import Schema

from .events import (
    AuthenticationFailed,
    ConnectivityChanged,
    Event,
    EventBus,
    EventStream,
    PendingChanged,
    SyncFailed,
)
from .model import PendingChange, Record, Status
from .replica import Replica
from .store import LocalStore
from .sync import SyncSession, SyncState

log = logging.getLogger("crdtsync.client")


class Client:
    """A replica of an application's records, usable offline.

    ``store`` is a SQLite file path (or ``":memory:"``); pending changes and records
    survive closing the client and ``kill -9`` of the process. ``schema`` is a
    :class:`Schema` or the path of a TOML configuration; when omitted, the schema
    cached in the store is used. A ``wss://`` relay is verified against the system's
    certificate authorities (``SSL_CERT_FILE`` names others), or against
    ``ssl_context`` when given.

    ``url`` is the relay's URL, or a list of relay URLs (the nodes of one deployment):
    the client connects to the first and, whenever a connection fails before it has
    caught up, tries the next one (round the list, with the usual backoff). Relays of
    different deployments are different relays: moving to one, the client syncs with it
    from the start, as after a relay's restore (it receives that relay's records and
    sends it its pending changes; what the other relay accepted stays there).
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        store: str | Path = ":memory:",
        schema: Schema | str | Path | None = None,
        durable: bool = False,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        batch_size: int = 200,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        urls = (url,) if isinstance(url, str) else tuple(url) if url is not None else ()
        if url is not None and not urls:
            raise InvalidOperation("no relay URL: give one, a list of them, or None (offline)")
        for one in urls:
            if not isinstance(one, str) or not one.startswith(("ws://", "wss://")):
                raise InvalidOperation(
                    f"a relay URL must start with ws:// or wss://, got {one!r} "
                    "(e.g. ws://127.0.0.1:8765)"
                )
        if ssl_context is not None and not any(one.startswith("wss://") for one in urls):
            raise InvalidOperation(f"ssl_context is for a wss:// relay URL, got {url!r}")
        #: the relays this client may sync with (the nodes of one cluster, or one relay)
        self.urls: tuple[str, ...] = urls
        #: the one it connects to now, or next: it moves on to the next of ``urls`` when
        #: a connection to this one fails
        self.url: str | None = urls[0] if urls else None
        self.ssl_context = ssl_context
        self.token = token
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.batch_size = batch_size
        self._store = LocalStore(str(store), synchronous="FULL" if durable else "NORMAL")
        try:
            self._schema = self._initial_schema(schema)
        except BaseException:
            self._store.close()
            raise
        self._bus = EventBus()
        self._replica = Replica(self._store, self._schema, on_event=self._on_event)
        self._online = False
        self._closed = False
        self._want_online = asyncio.Event()
        self._want_online.set()
        self._reconnect_now = asyncio.Event()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._flushing = asyncio.Event()  #: set whenever a frame arrives or a connection ends
        self._wake: asyncio.Event | None = None
        self._session: SyncSession | None = None
        self._connection_task: asyncio.Task[bool] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self.last_error: str = ""
        self._auth_failed = False
        self._token_given = 0
        #: why the last connection was refused for good (cleared by a connection that
        #: gets through, or by a new token); ``sync()`` raises it at once
        self._failure: SyncError | None = None
        self._failed = asyncio.Event()

    def _initial_schema(self, schema: Schema | str | Path | None) -> Schema:
        if isinstance(schema, str | Path):
            schema = Schema.from_toml(schema)
        if schema is not None:
            with self._store.transaction():
                self._store.set_meta("schema", schema.to_wire())
            return schema
        cached = self._store.get_meta("schema")
        if cached is None:
            raise SchemaError(
                "no schema: pass schema= (a Schema or a TOML path), or open a store that "
                "has synced with a relay before"
            )
        return Schema.from_wire(cached)

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        """Start syncing in the background (when a relay URL is given). Works offline:
        the client keeps reconnecting with jittered backoff until the relay answers."""
        if self.url is not None:
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
            self._runner = self._tasks.create_task(self._run(), name="crdtsync-sync")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._tasks is not None:
            if self._runner is not None:
                self._runner.cancel()
            await self._tasks.__aexit__(None, None, None)
            self._tasks = None
        self.close()

    def close(self) -> None:
        """Close the local store. Everything already returned from a call is on disk."""
        if not self._closed:
            self._closed = True
            self._store.close()

    def _open(self) -> Replica:
        """The replica, unless this client is closed (its store with it)."""
        if self._closed:
            raise InvalidOperation(
                "this client is closed (its 'async with' block has ended, or close() was "
                "called): make a new Client on the same store to go on"
            )
        return self._replica

    # -- identity -----------------------------------------------------------------------

    @property
    def schema(self) -> Schema:
        return self._schema

    @property
    def replica_id(self) -> str:
        """This replica's permanent id (one per store)."""
        return self._replica.replica_id

    @property
    def replica(self) -> Replica:
        """The replica under this client: the entry points the sync layer drives."""
        return self._replica

    @property
    def online(self) -> bool:
        """True while connected to the relay."""
        return self._online

    # -- records ------------------------------------------------------------------------

    def create(self, object_name: str, values: Mapping[str, object]) -> str:
        """Create a record offline-first; return its permanent, globally unique id.

        Raises ``UnknownObject`` or ``ValidationError`` (naming each bad field); in
        that case nothing is stored or queued.
        """
        return self._open().create(object_name, values)

    def update(self, record_id: str, values: Mapping[str, object]) -> None:
        """Change fields of a record. ``text`` fields take the whole new text and are
        stored as a character diff. Raises ``RecordNotFound``, ``RecordDeleted``,
        ``RecordLocked`` or ``ValidationError``; nothing is queued then."""
        self._open().update(record_id, values)

    def delete(self, record_id: str) -> None:
        """Delete a record. Raises ``RecordNotFound``, ``RecordDeleted`` or ``RecordLocked``."""
        self._open().delete(record_id)

    def get(self, record_id: str) -> Record | None:
        """The record as this replica sees it, or ``None`` (unknown or deleted)."""
        return self._open().get(record_id)

    def records(self, object_name: str | None = None) -> list[Record]:
        """Every record (of one object type, if given)."""
        return self._open().records(object_name)

    def pending(self) -> list[PendingChange]:
        """Every record with unsynced changes, in the order they were made."""
        return self._open().pending()

    def summary(self) -> dict[str, dict[str, int]]:
        """``{object: {status: count}}`` for every object type in the schema."""
        return self._open().summary()

    def resolve(self, record_id: str, values: Mapping[str, object] | None = None) -> None:
        """Save fixes for a record in conflict on top of the latest server version and
        queue it again (see :meth:`Replica.resolve`)."""
        self._open().resolve(record_id, values)

    def dismiss(self, record_id: str) -> None:
        """Discard the record's local changes and restore the server's version."""
        self._open().dismiss(record_id)

    def events(self) -> EventStream:
        """A stream of the events emitted from now on (``async for event in ...``)."""
        return self._bus.subscribe()

    # -- sync ---------------------------------------------------------------------------

    def go_offline(self) -> None:
        """The "work offline" switch: disconnect and stay disconnected."""
        self._want_online.clear()
        if self._connection_task is not None:
            self._connection_task.cancel()

    def set_token(self, token: str) -> None:
        """Use a new token (e.g. after :class:`AuthenticationFailed`) and reconnect now."""
        self.token = token
        self._token_given += 1  # a connection still closing with the old token is not heard
        self._auth_failed = False
        self._failure = None
        self._failed.clear()
        if self._connection_task is not None:
            self._connection_task.cancel()
        self._reconnect_now.set()

    def go_online(self) -> None:
        """Reconnect now (and keep reconnecting) after :meth:`go_offline`."""
        self._want_online.set()
        self._reconnect_now.set()

    async def sync(self, timeout: float = 30.0) -> dict[str, dict[str, int]]:
        """Push every pending change and wait until the relay has answered them all and
        this replica has every remote change; return :meth:`summary`.

        Raises :class:`OfflineError` if there is no relay URL, the client is switched
        offline, or the relay cannot be reached within ``timeout`` seconds.
        """
        if self.url is None or self._tasks is None:
            raise OfflineError(
                "this client has no relay connection (no URL, or not started "
                "with 'async with client')"
            )
        if not self._want_online.is_set():
            raise OfflineError("the client is working offline: call go_online() first")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._until_ready()
                    self._idle.clear()
                    self._poke()
                    await self._idle.wait()
                    if await self._flushed():
                        break
        except TimeoutError:
            reason = f": {self.last_error}" if self.last_error else ""
            raise OfflineError(
                f"could not sync with {self.url} within {timeout} s{reason}"
            ) from None
        return self.summary()

    async def _until_ready(self) -> None:
        """Wait for a connection that is caught up; raise :class:`SyncError` at once if
        the relay refused this client for good."""
        while not self._ready.is_set():
            if self._failure is not None:
                raise self._failure
            ready = asyncio.ensure_future(self._ready.wait())
            failed = asyncio.ensure_future(self._failed.wait())
            try:
                await asyncio.wait((ready, failed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
                failed.cancel()
        if self._failure is not None and not self._ready.is_set():
            raise self._failure

    async def _flushed(self) -> bool:
        """Ask the relay to send everything it has accepted so far and wait for its
        answer: True once it came (every remote change acknowledged before is applied
        here then), False if the connection ended first (the caller tries again). A relay
        of protocol version 1 cannot be asked: True at once."""
        session = self._session
        if session is None:
            return False
        request_id = session.flush()
        if request_id is None:
            return session.state is SyncState.READY
        self._poke()
        while request_id not in session.flushed:
            if self._session is not session:
                return False
            self._flushing.clear()
            await self._flushing.wait()
        return True

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_event(self, event: Event) -> None:
        self._bus.publish(event)
        if isinstance(event, PendingChanged) and event.status is Status.PENDING:
            self._poke()

    def _set_online(self, online: bool, reason: str = "") -> None:
        if online != self._online:
            self._online = online
            self._bus.publish(ConnectivityChanged(online, reason))

    async def _run(self) -> None:
        attempt = 0
        while True:
            await self._want_online.wait()
            assert self._tasks is not None
            self._connection_task = self._tasks.create_task(self._connection())
            try:
                if not await self._connection_task:
                    self._next_relay()
                attempt = 0 if self.last_error == "" else attempt
            except asyncio.CancelledError:
                if self._runner is not None and self._runner.cancelling():
                    raise
            finally:
                self._connection_task = None
            self._reconnect_now.clear()
            ceiling = self.backoff_initial * 2**attempt
            if self._auth_failed:  # the same token is unlikely to work: retry slowly until
                # set_token() gives a new one (and reconnects at once)
                ceiling = self.backoff_max
            delay = random.uniform(0, min(self.backoff_max, ceiling))
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._reconnect_now.wait()

    def _next_relay(self) -> None:
        """After a connection that failed before it caught up: the next relay of the
        list is tried next (with one relay, the same one again)."""
        if len(self.urls) > 1 and self.url is not None:
            self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]

    async def _connection(self) -> bool:
        """One connection: handshake, catch up, then push and receive until it ends.
        True if it got that far (it was caught up at some point)."""
        assert self.url is not None
        token_given = self._token_given
        session = SyncSession(
            self._replica,
            self.token or "",
            batch_size=self.batch_size,
            on_event=self._bus.publish,
            on_schema=self._adopt_schema,
        )
        wake = asyncio.Event()
        reason = ""
        try:
            websocket = await connect(
                self.url,
                max_size=MAX_RELAY_FRAME_BYTES,
                compression=None,
                open_timeout=10,
                close_timeout=2,
                # ssl=None is refused for wss://: pass True (the default context) instead
                ssl=self.ssl_context or self.url.startswith("wss://") or None,
            )
            try:
                self._session, self._wake = session, wake
                wake.set()
                async with asyncio.TaskGroup() as tasks:
                    writer = tasks.create_task(self._write(websocket, session, wake))
                    await self._read(websocket, session, wake)
                    writer.cancel()
            finally:
                await _close(websocket)
        except Exception as exc:
            error = _cause(exc)  # the reader's or writer's, out of their task group
            if isinstance(error, _TRANSPORT_ERRORS):
                reason = f"{type(error).__name__}: {error}"
            elif isinstance(error, ProtocolError):
                reason = f"the relay sent a bad frame: {error}"
                log.warning("disconnecting: %s", reason)
            else:
                reason = f"sync failed: {type(error).__name__}: {error}"
                log.exception("sync connection failed")
        finally:
            reached = self._ready.is_set()
            if session.error is not None and token_given == self._token_given:
                reason = f"{session.error.code}: {session.error.message}"
                if session.error.code is ErrorCode.AUTH_FAILED:
                    self._auth_failed = True
                    self._bus.publish(AuthenticationFailed(session.error.message))
                if session.error.code in _PERMANENT:
                    self._fail(session.error.code.value, _PERMANENT[session.error.code], reason)
            self.last_error = reason
            self._session, self._wake = None, None
            self._ready.clear()
            self._flushing.set()
            session.connection_lost()
            self._set_online(False, reason or "disconnected")
        return reached

    async def _read(
        self, websocket: ClientConnection, session: SyncSession, wake: asyncio.Event
    ) -> None:
        async for message in websocket:
            if isinstance(message, str):
                raise ProtocolError(ErrorCode.MALFORMED_FRAME, "the relay sent a text frame")
            session.receive(message)
            if session.state is SyncState.FAILED:
                return
            if session.state is SyncState.READY and not self._ready.is_set():
                self.last_error = ""
                self._failure = None
                self._failed.clear()
                self._ready.set()
                self._set_online(True)
            self._flushing.set()
            wake.set()

    async def _write(
        self, websocket: ClientConnection, session: SyncSession, wake: asyncio.Event
    ) -> None:
        while True:
            await wake.wait()
            wake.clear()
            if not self._want_online.is_set():
                return  # switched offline: what is made from now on stays here until online
            session.push()
            for data in session.data_to_send():
                await websocket.send(data)
            if session.idle:
                self._idle.set()

    def _fail(self, code: str, advice: str, reason: str) -> None:
        """The relay refused this client for a reason retrying cannot fix: ``sync()``
        raises it at once, and the app hears of it."""
        message = f"{reason}. {advice}"
        self._failure = SyncError(code, message)
        self._failed.set()
        self._bus.publish(SyncFailed(code, message))

    def _adopt_schema(self, schema: Schema) -> None:
        """The relay's schema replaces the cached one; rules this process can run keep
        their functions (the relay enforces them all)."""
        known = {rule.name: rule for spec in self._schema.objects.values() for rule in spec.rules}
        objects = {}
        for name, spec in schema.objects.items():
            rules = tuple(known.get(rule.name, rule) for rule in spec.rules)
            objects[name] = type(spec)(spec.name, spec.fields, rules, spec.sharing, spec.label)
        adopted = Schema(objects)
        self._schema = adopted
        self._replica.schema = adopted
        with self._store.transaction():
            self._store.set_meta("schema", adopted.to_wire())


#: Refusals retrying cannot fix, with what to do about each.
_PERMANENT = {
    ErrorCode.AUTH_FAILED: "Get a new token (crdtsync token …) and pass it to set_token()",
    ErrorCode.UNSUPPORTED_VERSION: "Upgrade this client or the relay so that they share a "
    "protocol version",
    ErrorCode.NOT_AUTHENTICATED: "This client's handshake was refused: upgrade it",
    ErrorCode.UNKNOWN_OBJECT: "Point this client at the relay of its own app, or give it "
    "the relay's schema",
}

#: How a connection ends when the network or the relay goes away: retried, not logged.
_TRANSPORT_ERRORS = (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed)


async def _close(websocket: ClientConnection) -> None:
    """Close a connection that is over. One that already failed may fail again while
    closing (websockets aborting a transport asyncio has dropped): it is gone either
    way, and the reason it ended is the one that counts."""
    try:
        await websocket.close()
    except Exception:
        log.debug("closing a connection that had ended", exc_info=True)


def _cause(exc: BaseException) -> BaseException:
    """Why a connection ended, out of the (nested) exception groups of its reader and
    writer: the first error that is not the transport failing, if any; else the first
    (a relay that vanishes fails the reader and the writer at once: one lost connection)."""
    leaves = list(_leaves(exc))
    return next((e for e in leaves if not isinstance(e, _TRANSPORT_ERRORS)), leaves[0])


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
