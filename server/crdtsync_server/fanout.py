"""Fan-out: accepted changes and access changes sent to the listeners that may read them.

The relay knows a connected replica only as a :class:`Listener` (who it is, which
objects it follows, where its fan-out frames go); every item is projected to the
fields that listener may read, and listeners that get the same items share one
encoded frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Protocol

import attrs

from crdtsync.core.protocol import Changes, Frame, RecordChange, Verdicts, encode

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

    def deliver_verdicts(self, verdicts: Verdicts, followups: Sequence[Frame]) -> None:
        """Queue the answer to one of its pushes, committed in a push group, and the
        frames that follow it (see ``PushPipeline.push``)."""
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
        self,
        origin: Listener | None,
        accepted: list[tuple[StoredRecord, ChangeRow]],
        facts: Mapping[str, RecordFacts] | None = None,
    ) -> None:
        """Send accepted changes to every other subscribed listener that may read them,
        projected to the fields each may read, in the order of the push.

        Nothing is built unless another listener follows an object of the push. Whether
        a record may be read is decided once per record and role set for objects whose
        read access depends only on the roles
        (:meth:`~.policy.Policy.read_depends_only_on_roles`; never for an admin), and
        per listener otherwise; the projection of an item once per role set; listeners
        that follow the same objects of the push with the same roles, all of them
        decided by role, share one list of items and one encoded frame.

        ``facts``: the access facts of records the caller knows them for (changes of other
        relays, whose records this relay does not hold): their documents are loaded only
        to project an update for a listener from whom fields are hidden.
        """
        objects = {stored.object for stored, _row in accepted}
        listeners = [
            s
            for s in self.listeners
            if s is not origin
            and s.principal is not None
            and not objects.isdisjoint(s.subscriptions)
        ]
        if not listeners:
            return
        followed: set[str] = set()
        for listener in listeners:
            followed.update(objects.intersection(listener.subscriptions))
        access, policy = self.access, self.policy
        per_record: dict[str, tuple[RecordState | None, RecordFacts]] = {}
        known: list[tuple[StoredRecord, RecordState | None, RecordFacts, RecordChange]] = []
        for stored, row in accepted:
            if stored.object not in followed:
                continue
            record = per_record.get(stored.id)
            if record is None:
                given = facts.get(stored.id) if facts is not None else None
                if given is not None:
                    record = per_record[stored.id] = (None, given)
                else:
                    state = self.cache.state(stored.id, stored)
                    record = per_record[stored.id] = (state, access.facts(stored, state))
            item = RecordChange(
                record_id=stored.id,
                object=stored.object,
                version=stored.version,
                update=row.update,
                deleted=stored.deleted,
                by=row.user,
            )
            known.append((stored, *record, item))
        by_roles = {name: policy.read_depends_only_on_roles(name) for name in followed}
        can_read, project, hidden_fields = access.can_read, access.project, policy.hidden_fields
        decided: dict[tuple[frozenset[str], str], bool] = {}  # (roles, record): readable
        projected: dict[tuple[frozenset[str], int], RecordChange] = {}  # (roles, index)
        hidden: dict[tuple[frozenset[str], str], frozenset[str]] = {}  # (roles, object)
        encoded: dict[tuple[int, ...], bytes] = {}  # listeners that get the same items share
        views: dict[tuple[frozenset[str], frozenset[str]], bytes | None] = {}

        def items_for(principal: Principal, follows: Set[str]) -> list[RecordChange]:
            roles, admin = principal.role_set, principal.admin
            items = []
            readable: dict[str, bool] = {}  # per record: a push often changes one many times
            for index, (stored, state, record_facts, item) in enumerate(known):
                if stored.object not in follows:
                    continue
                if by_roles[stored.object] and not admin:
                    key = (roles, stored.id)
                    may_read = decided.get(key)
                    if may_read is None:
                        may_read = decided[key] = can_read(principal, record_facts)
                else:
                    may_read = readable.get(stored.id)
                    if may_read is None:
                        may_read = readable[stored.id] = can_read(principal, record_facts)
                if not may_read:
                    continue
                out = projected.get((roles, index))
                if out is None:
                    fields = hidden.get((roles, stored.object))
                    if fields is None:
                        fields = hidden[roles, stored.object] = hidden_fields(
                            principal, stored.object
                        )
                    if fields:
                        if state is None:  # facts were given: the document is needed now
                            state = self.cache.state(stored.id, stored)
                        out = attrs.evolve(item, update=project(principal, state, item.update))
                    else:
                        out = item
                    projected[roles, index] = out
                items.append(out)
            return items

        def frame(items: list[RecordChange]) -> bytes | None:
            if not items:
                return None
            key = tuple(id(item) for item in items)
            data = encoded.get(key)
            if data is None:
                data = encoded[key] = encode(Changes(tuple(items)))
            return data

        for listener in listeners:
            principal = listener.principal
            assert principal is not None
            follows = frozenset(followed.intersection(listener.subscriptions))
            if not principal.admin and all(by_roles[name] for name in follows):
                view = (principal.role_set, follows)
                if view in views:
                    data = views[view]
                else:
                    data = views[view] = frame(items_for(principal, follows))
            else:
                data = frame(items_for(principal, follows))
            if data is not None:
                listener.deliver_fanout_encoded(data)

    def access_change(
        self,
        stored: StoredRecord,
        row: ChangeRow,
        before: RecordFacts | None,
        after: RecordFacts,
        changed: Mapping[str, bool] | None = None,
    ) -> None:
        """Tell every subscribed listener what an admin action changed for it: the record
        whole to one that gained access, ``revoked`` to one that lost it, the update (or
        the tombstone) to one that could and can read it. Without ``before`` (another
        relay's action on a record this one did not hold), ``changed`` says whose access
        it changed (user -> gained, from the access log); everyone else's is as it is now."""
        state = self.cache.state(stored.id, stored)
        for listener in list(self.listeners):
            principal = listener.principal
            if principal is None or stored.object not in listener.subscriptions:
                continue
            can = self.access.can_read(principal, after)
            if before is not None:
                could = self.access.can_read(principal, before)
            elif changed is not None and principal.user in changed:
                could = not changed[principal.user]
            else:
                could = can
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
