"""The record cache: recently used records as live documents, always at their latest version.

Every write goes through this relay, or, on a PostgreSQL database shared with other
relays, the relay forgets a cached record before it decides anything once another has
changed it (:mod:`.follower`): a cached record is the stored one (or newer than a row
read earlier in the same push). The least recently used records are dropped past the
cache's capacity.
"""

from __future__ import annotations

from collections import OrderedDict

from crdtsync.core.schema import Schema

from .merge import RecordState
from .storage import RelayStorage, StoredRecord


class RecordCache(OrderedDict[str, RecordState]):
    """Record id → :class:`~.merge.RecordState`, least recently used first (a plain
    ordered dict for lookups, so the push path's ``get`` costs no more than before)."""

    def __init__(
        self, storage: RelayStorage, schema: Schema, client_id: int, capacity: int
    ) -> None:
        super().__init__()
        self.storage = storage
        self.schema = schema
        self.client_id = client_id
        self.capacity = capacity

    def state(self, record_id: str, stored: StoredRecord, *, latest: bool = False) -> RecordState:
        """The live record ``stored`` is a row of, loaded (and cached) if need be
        (``latest``: the caller read ``stored`` just now, nothing has written the record
        since, so it is not read again)."""
        state = self.get(record_id)
        # Every write goes through this relay: a cached record is never older than a
        # stored row (it may be newer than a row read earlier in the same push).
        if state is not None and state.row.version >= stored.version:
            self.move_to_end(record_id)
            return state
        # Load the record as it is now, not as ``stored`` was when it was read: the cache
        # must only ever hold the latest version.
        now = None if latest else self.storage.get_record(record_id)
        if now is not None and now.version >= stored.version:
            stored = now
        state = RecordState.load(stored, self.schema.objects[stored.object], self.client_id)
        self.remember(record_id, state)
        return state

    def forget_document(self, record_id: str) -> None:
        """Drop a cached document a refused change was applied to. What the record keeps
        from the committed log (who wrote which field, recent values, shares) is kept
        for the reloaded record, which would otherwise read the whole log again."""
        old = self.pop(record_id, None)
        if old is None or old.writes is None:
            return
        stored = self.storage.get_record(record_id)
        if stored is None:
            return
        state = RecordState.load(stored, self.schema.objects[stored.object], self.client_id)
        state.carry_over(old)
        self.remember(record_id, state)

    def remember(self, record_id: str, state: RecordState) -> None:
        """Cache ``state`` as the most recently used record (dropping the least past the
        capacity)."""
        self[record_id] = state
        self.move_to_end(record_id)
        while len(self) > self.capacity:
            self.popitem(last=False)
