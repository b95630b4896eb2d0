"""Fan-out: accepted changes and access changes sent to the listeners that may read them.

The relay knows a connected replica only as a :class:`Listener` (who it is, which
objects it follows, where its fan-out frames go); every item is projected to the
fields that listener may read, and listeners that get the same items share one
encoded frame.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Protocol

import attrs

from crdtsync.core.protocol import Changes, RecordChange, encode

from .access import RecordAccess
from .cache import RecordCache
from .merge import RecordState
from .policy import Policy, Principal, RecordFacts
from .storage import ChangeRow, StoredRecord


class Listener(Protocol):
    """A connected replica as the relay knows it: who it is, which objects it follows,
    and where fanned-out frames go."""

    @property
    def principal(self) -> Principal | None: ...

    @property
    def subscriptions(self) -> Set[str]: ...

    def deliver_fanout_encoded(self, data: bytes) -> None:
        """Queue an encoded fan-out frame (shared by listeners that get the same one)."""
        ...


class FanOut:
    """Sends what changed to every listener (of ``listeners``) that may read it."""

    def __init__(
        self, listeners: set[Listener], policy: Policy, access: RecordAccess, cache: RecordCache
    ) -> None:
        self.listeners = listeners  #: the relay's registry itself (attach / detach)
        self.policy = policy
        self.access = access
        self.cache = cache

    def changes(
        self, origin: Listener | None, accepted: list[tuple[StoredRecord, ChangeRow]]
    ) -> None:
        """Send accepted changes to every other subscribed listener that may read them,
        projected to the fields each may read."""
        listeners = [s for s in self.listeners if s is not origin and s.principal is not None]
        if not listeners:
            return
        access = self.access
        per_record: dict[str, tuple[RecordState, RecordFacts]] = {}
        for stored, _row in accepted:
            if stored.id not in per_record:
                state = self.cache.state(stored.id, stored)
                per_record[stored.id] = (state, access.facts(stored, state))
        known = [
            (
                stored,
                row,
                *per_record[stored.id],
                RecordChange(
                    record_id=stored.id,
                    object=stored.object,
                    version=stored.version,
                    update=row.update,
                    deleted=stored.deleted,
                    by=row.user,
                ),
            )
            for stored, row in accepted
        ]
        can_read, project, hidden_fields = (
            access.can_read,
            access.project,
            self.policy.hidden_fields,
        )
        encoded: dict[tuple[int, ...], bytes] = {}  # listeners that get the same items share
        for listener in listeners:
            principal = listener.principal
            assert principal is not None
            subscriptions = listener.subscriptions
            items = []
            readable: dict[str, bool] = {}  # per record: a push often changes one many times
            for stored, _row, state, facts, item in known:
                if stored.object not in subscriptions:
                    continue
                may_read = readable.get(stored.id)
                if may_read is None:
                    may_read = readable[stored.id] = can_read(principal, facts)
                if not may_read:
                    continue
                if hidden_fields(principal, stored.object):
                    item = attrs.evolve(item, update=project(principal, state, item.update))
                items.append(item)
            if not items:
                continue
            key = tuple(id(item) for item in items)
            if key not in encoded:
                encoded[key] = encode(Changes(tuple(items)))
            listener.deliver_fanout_encoded(encoded[key])

    def access_change(
        self, stored: StoredRecord, row: ChangeRow, before: RecordFacts, after: RecordFacts
    ) -> None:
        """Tell every subscribed listener what an admin action changed for it: the record
        whole to one that gained access, ``revoked`` to one that lost it, the update (or
        the tombstone) to one that could and can read it."""
        state = self.cache.state(stored.id, stored)
        for listener in list(self.listeners):
            principal = listener.principal
            if principal is None or stored.object not in listener.subscriptions:
                continue
            could = self.access.can_read(principal, before)
            can = self.access.can_read(principal, after)
            base = RecordChange(
                record_id=stored.id, object=stored.object, version=stored.version, by=row.user
            )
            if could and not can:
                item = attrs.evolve(base, revoked=True)
            elif can and stored.deleted:
                item = attrs.evolve(base, deleted=True)
            elif can:
                update = stored.state if not could else row.update
                item = attrs.evolve(base, update=self.access.project(principal, state, update))
            else:
                continue
            listener.deliver_fanout_encoded(encode(Changes((item,))))
