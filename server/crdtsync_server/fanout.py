"""Fan-out: accepted changes and access changes sent to the listeners that may read them.

The relay knows a connected replica only as a :class:`Listener` (who it is, which
objects it follows, where its fan-out frames go); every item is projected to the
fields that listener may read, and listeners that get the same items share one
encoded frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Protocol

import attrs

from crdtsync.core.protocol import (
    Changes,
    Frame,
    RecordChange,
    Verdicts,
    encode,
    encode_changes,
    encode_items,
)

from .access import RecordAccess
from .cache import RecordCache
from .merge import RecordState
from .policy import Policy, Principal, RecordFacts
from .storage import ChangeRow, StoredRecord

log = logging.getLogger("crdtsync.relay")


#: A listener's fan-out of one push group goes out in frames of at most this many items
#: and (roughly) this many bytes of updates, as a backlog's do; one push's never splits.
MERGED_ITEMS = 500
MERGED_BYTES = 1024 * 1024


@attrs.define
class _Held:
    """A listener's fan-out of a push group not sent yet: runs of encoded items (one per
    push), how many items and (roughly) how many bytes of updates."""

    runs: list[bytes] = attrs.field(factory=list)
    items: int = 0
    size: int = 0


class _Encoded:
    """The ``changes`` frames of one fan-out. Listeners that get the same items (the
    same list of them: :meth:`FanOut._items` shares one per view) share one frame, and a
    group's frame of a listener is put together from runs of items, each run (one
    push's items for one view) encoded once."""

    def __init__(self) -> None:
        self._frames: dict[tuple[int, ...], bytes] = {}  #: by the ids of their items
        #: id of a run -> (the run, kept alive so its id stays its own; its bytes)
        self._runs: dict[int, tuple[list[RecordChange], bytes]] = {}

    def frame(self, items: list[RecordChange]) -> bytes:
        """The frame of one push's ``items`` (the items are alive as long as the frame
        is: the caller holds them)."""
        key = tuple(map(id, items))
        data = self._frames.get(key)
        if data is None:
            data = self._frames[key] = encode(Changes(tuple(items)))
        return data

    def run(self, items: list[RecordChange]) -> bytes:
        """One push's ``items``, encoded for :func:`~crdtsync.core.protocol.encode_changes`."""
        found = self._runs.get(id(items))
        if found is None:
            found = self._runs[id(items)] = (items, encode_items(items))
        return found[1]


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
        projected to the fields each may read, in the order of the push (one frame each;
        see :meth:`_items` for what is decided once and shared)."""
        encoded = _Encoded()
        for listener, items in self._items(origin, accepted, facts):
            listener.deliver_fanout_encoded(encoded.frame(items))

    def changes_of_group(
        self,
        pushes: Sequence[tuple[Listener, list[tuple[StoredRecord, ChangeRow]]]],
        answer: Callable[[int], None],
    ) -> None:
        """The fan-out of a push group's frames, committed together, with their answers:
        ``answer(i)`` sends push ``i``'s verdicts to its origin, in push order.

        Each listener receives exactly what :meth:`changes` of each push would send it,
        in the same order relative to its own verdicts, in as few frames as possible:
        what the group's pushes send a listener accumulates, and goes out as one frame
        before its own push is answered, when it reaches :data:`MERGED_ITEMS` items or
        :data:`MERGED_BYTES` bytes of updates, or once the group is done. A push whose
        fan-out fails is logged; the others' still go out."""
        held: dict[Listener, _Held] = {}
        encoded = _Encoded()

        def flush(listener: Listener) -> None:
            frame = held.pop(listener, None)
            if frame is None:
                return
            try:
                listener.deliver_fanout_encoded(encode_changes(frame.runs, frame.items))
            except Exception:
                log.exception("fanning out %d changes to a listener failed", frame.items)

        for index, (origin, accepted) in enumerate(pushes):
            flush(origin)
            answer(index)
            if not accepted:
                continue
            try:
                found = self._items(origin, accepted)
            except Exception:
                log.exception("fanning out a push of %d changes failed", len(accepted))
                continue
            size = sum(len(row.update) for _stored, row in accepted)
            for listener, items in found:
                frame = held.get(listener)
                if frame is not None and (
                    frame.items + len(items) > MERGED_ITEMS or frame.size + size > MERGED_BYTES
                ):
                    flush(listener)
                    frame = None
                if frame is None:
                    frame = held[listener] = _Held()
                frame.runs.append(encoded.run(items))
                frame.items += len(items)
                frame.size += size
        for listener in list(held):
            flush(listener)

    def _items(
        self,
        origin: Listener | None,
        accepted: list[tuple[StoredRecord, ChangeRow]],
        facts: Mapping[str, RecordFacts] | None = None,
    ) -> list[tuple[Listener, list[RecordChange]]]:
        """What each other subscribed listener may read of accepted changes (each item
        projected to the fields it may read), in the order of the push; listeners that get
        nothing are left out.

        Nothing is built unless another listener follows an object of the push. Whether
        a record may be read is decided once per record and role set for objects whose
        read access depends only on the roles
        (:meth:`~.policy.Policy.read_depends_only_on_roles`; never for an admin), and
        per listener otherwise; the projection of an item once per role set; listeners
        that follow the same objects of the push with the same roles, all of them
        decided by role, share one list of items (and so one encoded frame).

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
            return []
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
        views: dict[tuple[frozenset[str], frozenset[str]], list[RecordChange]] = {}

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

        found: list[tuple[Listener, list[RecordChange]]] = []
        for listener in listeners:
            principal = listener.principal
            assert principal is not None
            follows = frozenset(followed.intersection(listener.subscriptions))
            if not principal.admin and all(by_roles[name] for name in follows):
                view = (principal.role_set, follows)
                items = views.get(view)
                if items is None:
                    items = views[view] = items_for(principal, follows)
            else:
                items = items_for(principal, follows)
            if items:
                found.append((listener, items))
        return found

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
