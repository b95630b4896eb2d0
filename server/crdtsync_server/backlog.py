"""The backlog: what a subscribing replica missed since its cursor, a batch at a time.

:class:`Backlog` turns a ``subscribe`` (objects and a cursor) into :class:`Changes`
frames, then :class:`CaughtUp`, produced lazily as the session pulls them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pycrdt

from crdtsync.core.protocol import (
    MAX_RELAY_FRAME_BYTES,
    CaughtUp,
    Changes,
    Frame,
    RecordChange,
)

from .access import RecordAccess
from .cache import RecordCache
from .policy import Policy, Principal, RecordFacts
from .storage import RelayStorage, StoredRecord

log = logging.getLogger("crdtsync.relay")

BACKLOG_BATCH = 500
BACKLOG_BATCH_BYTES = 1024 * 1024
#: no backlog frame is larger: what a replica reads in one message, less room for the rest
BACKLOG_MAX_FRAME_BYTES = MAX_RELAY_FRAME_BYTES - 64 * 1024


class Backlog:
    """Catch-up for subscribing replicas, from the store (cost grows with what was missed)."""

    def __init__(
        self, policy: Policy, storage: RelayStorage, access: RecordAccess, cache: RecordCache
    ) -> None:
        self.policy = policy
        self.storage = storage
        self.access = access
        self.cache = cache

    def frames(self, principal: Principal, objects: Iterable[str], cursor: int) -> Iterator[Frame]:
        """What a replica that has seen everything up to ``cursor`` is missing, as
        :class:`Changes` frames, then :class:`CaughtUp`.

        The set of records is fixed now (a snapshot of ids); the frames are produced as
        they are pulled, reading each record's current row, so a large first sync is
        sent a batch at a time while the relay goes on serving others. With ``cursor``
        0 (or a cursor this relay never issued) every readable live record is sent
        whole; otherwise one merged update per readable record changed since (whole if
        the user gained access since), a tombstone for each readable record deleted
        since, and a ``revoked`` marker for each record the user lost access to since.
        Cost grows with what was missed, not with the store. Every update is projected
        to the fields the user may read.
        """
        readable = self.access.readable_objects(principal, objects)
        if cursor > self.storage.seq:
            cursor = 0
        events = self.storage.access_events(principal.user, cursor) if cursor else {}
        ids = self.storage.record_ids_since(readable, cursor)
        return self._frames(principal, ids, cursor, events, self.storage.seq)

    def _frames(
        self,
        principal: Principal,
        ids: list[str],
        cursor: int,
        events: dict[str, bool],
        caught_up: int,
    ) -> Iterator[Frame]:
        """The frames of :meth:`frames`, each batch read when it is pulled: the rows, the
        shares and the missed changes of ``BACKLOG_BATCH`` records at a time, one query
        each. From a cursor, a record's row is read without its state (a snapshot's
        version may lag) and the changes logged after the cursor complete it: its version
        is the later of the two, and the missed updates are what is sent (the whole
        state, read as it stands, only where the replica needs it)."""
        batch: list[RecordChange] = []
        size = 0
        for start in range(0, len(ids), BACKLOG_BATCH):
            chunk = ids[start : start + BACKLOG_BATCH]
            if cursor:
                rows = self.storage.record_heads(chunk)
                missed = self.storage.updates_since(list(rows), cursor)
            else:
                rows, missed = self.storage.get_records(chunk), {}
            uncached = [record_id for record_id in rows if record_id not in self.cache]
            shares = self.storage.shares_of_records(uncached) if uncached else {}
            for record_id in chunk:
                stored = rows.get(record_id)
                if stored is None:
                    continue
                logged = missed.get(record_id, [])
                if logged and logged[-1][0] > stored.version:
                    stored = stored.at(logged[-1][0])
                facts = self.access.facts(stored, shares=shares.get(record_id))
                item = self._catch_up_item(
                    principal, stored, cursor, events.get(record_id), facts, logged
                )
                if item is None:
                    continue
                item_size = len(item.update) + 128
                if item_size > BACKLOG_MAX_FRAME_BYTES:
                    # Stored before [server] max_record_bytes bounded records: no replica can
                    # read it, and sending it would end the connection with the rest unsent.
                    log.warning(
                        "record %s (%d bytes) is too large for a replica to receive: left out of "
                        "the backlog",
                        record_id,
                        item_size,
                    )
                    continue
                if batch and size + item_size > BACKLOG_MAX_FRAME_BYTES:
                    yield Changes(tuple(batch))
                    batch, size = [], 0
                batch.append(item)
                size += item_size
                if len(batch) >= BACKLOG_BATCH or size >= BACKLOG_BATCH_BYTES:
                    yield Changes(tuple(batch))
                    batch, size = [], 0
        if batch:
            yield Changes(tuple(batch))
        yield CaughtUp(caught_up)

    def _catch_up_item(
        self,
        principal: Principal,
        stored: StoredRecord,
        cursor: int,
        gained: bool | None,
        facts: RecordFacts,
        missed: list[tuple[int, bytes | None]],
    ) -> RecordChange | None:
        """What the replica must learn of one record since ``cursor`` (None: nothing);
        ``missed``: the ``(seq, update)`` of its changes since ``cursor`` (``None``: a
        compacted update). From a cursor, ``stored`` is its row at its latest version
        without its state: the whole state is read as it stands where it is needed."""
        readable = self.access.can_read(principal, facts)
        if cursor and not readable and gained is False:
            return RecordChange(
                record_id=stored.id, object=stored.object, version=stored.version, revoked=True
            )
        if stored.deleted:
            if cursor == 0 or not readable:
                return None
            return RecordChange(
                record_id=stored.id, object=stored.object, version=stored.version, deleted=True
            )
        if not readable:
            return None
        if cursor == 0:
            update = stored.state
        elif gained or any(update is None for _seq, update in missed):
            # A superset of the missed updates (same state after): the record as it stands.
            whole = self.storage.get_record(stored.id)
            update = whole.state if whole is not None else b""
        else:
            updates = [update for _seq, update in missed if update]
            update = (
                bytes(pycrdt.merge_updates(*updates))
                if len(updates) > 1
                else (updates[0] if updates else b"")
            )
        if self.policy.hidden_fields(principal, stored.object):
            update = self.access.project(principal, self.cache.state(stored.id, stored), update)
        return RecordChange(
            record_id=stored.id, object=stored.object, version=stored.version, update=update
        )
