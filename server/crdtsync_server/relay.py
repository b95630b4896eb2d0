"""The relay's core: merges pushed changes, persists them, and fans them out.

:class:`Relay` owns the storage, a bounded cache of record documents, and the set of
connected :class:`Listener` objects (the sessions; the relay knows them only through
that protocol). It does no network I/O: transports feed bytes into sessions and send
what sessions queue. Every push is
decided change by change (:func:`~crdtsync_server.merge.decide`), committed in one
transaction (one fsync per push frame: group commit), and only then acknowledged and
fanned out, so an acknowledged change survives ``kill -9``.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence, Set
from typing import Protocol

import attrs
import pycrdt

from crdtsync.core.protocol import (
    MAX_RELAY_FRAME_BYTES,
    Ack,
    Admin,
    AdminAction,
    AdminResult,
    CaughtUp,
    ChangeFrame,
    ChangeKind,
    Changes,
    Conflict,
    ErrorCode,
    Frame,
    RecordChange,
    Rejected,
    Verdict,
    Verdicts,
    encode,
)
from crdtsync.core.schema import Schema

from .anatomy import ItemIndex
from .auth import Identity
from .limits import MAX_RECORD_BYTES
from .merge import Accepted, AlreadyDone, RecordState, Refused, decide
from .metrics import Metrics
from .policy import Access, Action, Policy, Principal, RecordFacts, owner_field
from .storage import ChangeRow, RelayStorage, StoredRecord

log = logging.getLogger("crdtsync.relay")

BACKLOG_BATCH = 500
BACKLOG_BATCH_BYTES = 1024 * 1024
#: no backlog frame is larger: what a replica reads in one message, less room for the rest
BACKLOG_MAX_FRAME_BYTES = MAX_RELAY_FRAME_BYTES - 64 * 1024

#: the admin actions that name a user
NEEDS_USER = frozenset({AdminAction.SHARE, AdminAction.UNSHARE, AdminAction.SET_OWNER})


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


@attrs.frozen
class Joined:
    """A replica was let in: who it is, the schema as it sees it, what it may read."""

    principal: Principal
    schema: Schema
    readable: tuple[str, ...]


@attrs.frozen
class JoinRefused:
    """A replica was turned away; the message says why, for the peer to read."""

    message: str


class Relay:
    """The relay's state. Not thread-safe: one relay belongs to one event loop."""

    def __init__(
        self,
        *,
        schema: Schema,
        policy: Policy,
        storage: RelayStorage,
        cache_records: int = 10_000,
        metrics: Metrics | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.schema = schema
        self.policy = policy
        self.storage = storage
        self.metrics = metrics or Metrics()
        self._cache: OrderedDict[str, RecordState] = OrderedDict()
        self._bound: dict[int, str] = {}  # CRDT client ids known to be bound, and to whom
        self._cache_records = cache_records
        self.max_record_bytes = max_record_bytes
        self.sessions: set[Listener] = set()
        with storage.transaction():
            self.server_id: str = storage.get_meta("server_id") or uuid.uuid4().hex
            storage.set_meta("server_id", self.server_id)
            self.client_id: int = storage.get_meta("client_id") or (secrets.randbits(53) or 1)
            storage.set_meta("client_id", self.client_id)
            storage.bind_client_id(self.client_id, "relay")

    # -- listeners --------------------------------------------------------------------

    def join(self, listener: Listener, replica_id: str, identity: Identity) -> Joined | JoinRefused:
        """Let a replica in (its ``hello`` was verified as ``identity``): bind the replica
        id to the user (one a replica of another user holds is refused), remember which
        fields are hidden from it now, and attach ``listener`` for fan-out."""
        owner = self.storage.replica_user(replica_id)
        if owner is not None and owner != identity.user:
            return JoinRefused("this replica id belongs to another user: use a store of your own")
        self.storage.bind_replica(replica_id, identity.user)
        principal = Principal(
            identity.user, replica_id, ("default", *identity.roles), admin=identity.admin
        )
        hidden = {name: self.policy.hidden_fields(principal, name) for name in self.schema.objects}
        self.storage.remember_hidden(replica_id, hidden)
        principal = attrs.evolve(principal, once_hidden=self.storage.ever_hidden(replica_id))
        self.attach(listener)
        return Joined(
            principal, self.policy.schema_for(principal), self.readable_objects(principal)
        )

    def attach(self, listener: Listener) -> None:
        self.sessions.add(listener)
        self.metrics.connections = len(self.sessions)

    def detach(self, listener: Listener) -> None:
        self.sessions.discard(listener)
        self.metrics.connections = len(self.sessions)

    # -- access -----------------------------------------------------------------------

    def facts(self, stored: StoredRecord, state: RecordState | None = None) -> RecordFacts:
        """What access to ``stored`` depends on: its owner and its manual shares.

        Without ``state``, a cached record is used if there is one; otherwise the stored
        row is enough and no document is loaded, unless a policy hook needs the values.
        """
        if state is None:
            state = self._cache.get(stored.id)
            if state is None and self.policy.hook is not None:
                state = self._state(stored.id, stored)
        if state is None:
            owner, values = stored.owner, {}
            shares = self.storage.shares_of(stored.id)
        else:
            owner_name = owner_field(self.schema, stored.object)
            owner, values = (state.values.get(owner_name) if owner_name else None), state.values
            if state.shares is None:
                state.shares = self.storage.shares_of(stored.id)
            shares = state.shares
        return RecordFacts(
            object=stored.object,
            record_id=stored.id,
            owner=owner or stored.created_by,
            shares={user: Access(level) for user, level in shares.items()},
            values=values,
        )

    def readable_objects(
        self, principal: Principal, objects: Iterable[str] | None = None
    ) -> tuple[str, ...]:
        """The objects (of ``objects``, default all) the principal's roles may read."""
        names = self.schema.objects if objects is None else objects
        return tuple(name for name in names if self.policy.allows(principal, Action.READ, name))

    def can_read(self, principal: Principal, facts: RecordFacts) -> bool:
        return self.policy.allows(principal, Action.READ, facts.object, facts)

    def project(self, principal: Principal, state: RecordState, update: bytes) -> bytes:
        """``update`` without the fields ``principal`` may not read."""
        hidden = self.policy.hidden_fields(principal, state.stored.object)
        if not hidden or not update:
            return update
        return state.index.project(update, hidden)

    # -- reading ------------------------------------------------------------------------

    def backlog(self, principal: Principal, objects: Iterable[str], cursor: int) -> Iterator[Frame]:
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
        readable = self.readable_objects(principal, objects)
        if cursor > self.storage.seq:
            cursor = 0
        events = self.storage.access_events(principal.user, cursor) if cursor else {}
        ids = self.storage.record_ids_since(readable, cursor)
        return self._backlog_frames(principal, ids, cursor, events, self.storage.seq)

    def _backlog_frames(
        self,
        principal: Principal,
        ids: list[str],
        cursor: int,
        events: dict[str, bool],
        caught_up: int,
    ) -> Iterator[Frame]:
        batch: list[RecordChange] = []
        size = 0
        for record_id in ids:
            stored = self.storage.get_record(record_id)
            if stored is None:
                continue
            item = self._catch_up_item(principal, stored, cursor, events.get(record_id))
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
        self, principal: Principal, stored: StoredRecord, cursor: int, gained: bool | None
    ) -> RecordChange | None:
        readable = self.can_read(principal, self.facts(stored))
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
        changes = [] if cursor == 0 or gained else self.storage.changes_of(stored.id, after=cursor)
        if cursor == 0 or gained or any(c.compacted for c in changes):
            update = stored.state  # a superset of the missed updates: same state after
        else:
            updates = [c.update for c in changes if c.update]
            update = (
                bytes(pycrdt.merge_updates(*updates))
                if len(updates) > 1
                else (updates[0] if updates else b"")
            )
        if self.policy.hidden_fields(principal, stored.object):
            update = self.project(principal, self._state(stored.id, stored), update)
        return RecordChange(
            record_id=stored.id, object=stored.object, version=stored.version, update=update
        )

    # -- pushing ------------------------------------------------------------------------

    def push(
        self,
        origin: Listener,
        changes: Sequence[ChangeFrame],
        followups: list[Frame] | None = None,
    ) -> Verdicts:
        """Decide, persist (one transaction) and fan out a batch of changes.

        ``followups`` receives frames the origin must be sent right after the verdicts:
        a tombstone for each retransmitted change whose record was deleted since it was
        accepted (a replica that never saw the delete, e.g. one resuming from cursor 0,
        would otherwise keep the record).
        """
        assert origin.principal is not None
        if followups is None:
            followups = []
        principal = origin.principal
        verdicts: list[Verdict] = []
        accepted: list[tuple[StoredRecord, ChangeRow]] = []
        touched_cache: list[str] = []
        started = time.perf_counter()
        try:
            with self.storage.transaction():
                changes = list(changes)
                # One query for the whole frame: which ids were seen before (retransmits).
                seen = self.storage.known_change_ids([c.change_id for c in changes])
                for change in changes:
                    verdict, outcome = self._push_one(
                        principal, change, touched_cache, seen, followups
                    )
                    seen.add(change.change_id)
                    verdicts.append(verdict)
                    if outcome is not None:
                        accepted.append(outcome)
        except Exception:
            log.exception("push of %d changes failed; nothing was stored", len(verdicts))
            for record_id in touched_cache:
                self._cache.pop(record_id, None)
            self.metrics.count("errored", len(verdicts))
            return Verdicts(
                tuple(
                    Rejected(
                        change_id=change.change_id,
                        record_id=change.record_id,
                        code=ErrorCode.INTERNAL_ERROR,
                        message="the relay could not store this change; retry later",
                    )
                    for change in changes
                )
            )
        self.metrics.observe_merge(time.perf_counter() - started, len(verdicts))
        for verdict in verdicts:
            self.metrics.count_verdict(verdict)
        if accepted:
            self._fan_out(origin, accepted)
        return Verdicts(tuple(verdicts))

    def _push_one(
        self,
        principal: Principal,
        change: ChangeFrame,
        touched_cache: list[str],
        seen: set[str],
        followups: list[Frame],
    ) -> tuple[Verdict, tuple[StoredRecord, ChangeRow] | None]:
        known = self.storage.find_change(change.change_id) if change.change_id in seen else None
        if known is not None:
            if known.record_id != change.record_id or known.replica != principal.replica_id:
                # Not a retransmission by the replica that made it: say nothing of it.
                return Rejected(
                    change_id=change.change_id,
                    record_id=change.record_id,
                    code=ErrorCode.MALFORMED_FRAME,
                    message="this change id was already used; every change needs a new one",
                ), None
            return self._retransmitted(principal, change, known, followups), None
        cached = self._cache.get(change.record_id)
        # Every write goes through this relay, so a cached record is the stored one.
        stored = cached.stored if cached is not None else self.storage.get_record(change.record_id)
        state = self._state(change.record_id, stored) if stored is not None else None
        facts = self.facts(stored, state) if stored is not None else None
        decision = decide(
            change,
            state,
            principal=principal,
            schema=self.schema,
            policy=self.policy,
            context=self.storage,
            relay_client_id=self.client_id,
            facts=facts,
            max_record_bytes=self.max_record_bytes,
        )
        if isinstance(decision, Refused):
            verdict = decision.verdict
            if isinstance(verdict, Conflict) and state is not None and verdict.update:
                verdict = attrs.evolve(
                    verdict, update=self.project(principal, state, verdict.update)
                )
            if decision.dirty:
                self._forget_document(change.record_id)
            if decision.refused_ops is not None:
                self.storage.add_refused(
                    change.record_id, change.change_id, decision.refused_ops.client_ranges()
                )
            return verdict, None
        if isinstance(decision, AlreadyDone):
            return Ack(
                change_id=change.change_id, record_id=change.record_id, version=decision.version
            ), None
        touched_cache.append(change.record_id)
        return self._store_accepted(principal, change, stored, state, decision)

    def _retransmitted(
        self, principal: Principal, change: ChangeFrame, known: ChangeRow, followups: list[Frame]
    ) -> Ack:
        """The answer to a change accepted before (its verdict was lost): an ack with its
        original version, and with what it added to the record, as far as the user may
        read it *now*. A user who lost access since gets the ack alone; a record deleted
        since also gets its tombstone (in ``followups``)."""
        stored = self.storage.get_record(known.record_id)
        update = b""
        if stored is not None and stored.deleted:
            followups.append(Changes((self._gone_since(principal, stored),)))
        elif stored is not None and self.can_read(principal, self.facts(stored)):
            # A compacted change's update is gone: the whole state holds it (and more the
            # user may read as well).
            update = stored.state if known.compacted else known.update
            if update:
                update = self.project(principal, self._state(stored.id, stored), update)
        return Ack(
            change_id=change.change_id, record_id=change.record_id, version=known.seq, update=update
        )

    def _gone_since(self, principal: Principal, stored: StoredRecord) -> RecordChange:
        """What a replica must learn of a record deleted after its change was accepted:
        the tombstone, or only that it may no longer read the record."""
        item = RecordChange(
            record_id=stored.id, object=stored.object, version=stored.version, deleted=True
        )
        if self.can_read(principal, self.facts(stored)):
            return item
        return attrs.evolve(item, deleted=False, revoked=True)

    def _store_accepted(
        self,
        principal: Principal,
        change: ChangeFrame,
        stored: StoredRecord | None,
        state: RecordState | None,
        decision: Accepted,
    ) -> tuple[Verdict, tuple[StoredRecord, ChangeRow]]:
        seq = self.storage.next_seq()
        spec = self.schema.objects[change.object]
        if decision.kind is ChangeKind.DELETE:
            assert stored is not None
            new = attrs.evolve(stored, version=seq, deleted=True)
            self.storage.set_uniques(change.object, change.record_id, {})
            self._cache.pop(change.record_id, None)
        else:
            assert decision.doc is not None
            owner_name = spec.owner_field
            new = StoredRecord(
                id=change.record_id,
                object=change.object,
                state=decision.state,
                version=seq,
                created_by=stored.created_by if stored is not None else principal.user,
                owner=(
                    stored.owner
                    if stored is not None
                    else (decision.values.get(owner_name) if owner_name else None)
                ),
            )
            unique = {
                name: spec.fields[name].type.encode(decision.values.get(name))
                for name, field in spec.fields.items()
                if field.unique
            }
            if unique and (state is None or set(unique) & set(decision.fields)):
                self.storage.set_uniques(change.object, change.record_id, unique)
            if decision.parsed is not None:
                for client in decision.parsed.clients():
                    if self._bound.get(client) != principal.replica_id:
                        self.storage.bind_client_id(client, principal.replica_id)
                        self._bound[client] = principal.replica_id
            if state is None:  # the document was just built: index it, don't reload it
                assert decision.doc is not None
                index = ItemIndex()
                if decision.parsed is not None:
                    index.commit(decision.parsed)
                if decision.relay_update:
                    index.commit_bytes(decision.relay_update)
                state = RecordState(
                    new, decision.doc, index, dict(decision.values), dict(decision.problems)
                )
            else:
                state.stored = new
                state.note_write(decision.fields, seq, principal.replica_id, principal.user)
                state.values = dict(decision.values)
                state.problems = dict(decision.problems)
                if decision.parsed is not None:
                    state.index.commit(decision.parsed)
                if decision.relay_update:
                    state.index.commit_bytes(decision.relay_update)
            self._remember(change.record_id, state)
        row = ChangeRow(
            seq=seq,
            record_id=change.record_id,
            object=change.object,
            change_id=change.change_id,
            replica=principal.replica_id,
            user=principal.user,
            kind=decision.kind,
            fields=dict(decision.fields),
            update=decision.update,
            at=time.time(),
        )
        self.storage.put_record(new)
        self.storage.add_change(row)
        relay_update = decision.relay_update
        if relay_update and state is not None:  # e.g. texts of fields hidden from the creator
            relay_update = self.project(principal, state, relay_update)
        verdict = Ack(
            change_id=change.change_id, record_id=change.record_id, version=seq, update=relay_update
        )
        return verdict, (new, row)

    def _fan_out(
        self, origin: Listener | None, accepted: list[tuple[StoredRecord, ChangeRow]]
    ) -> None:
        """Send accepted changes to every other subscribed session that may read them,
        projected to the fields each may read."""
        listeners = [s for s in self.sessions if s is not origin and s.principal is not None]
        if not listeners:
            return
        per_record: dict[str, tuple[RecordState, RecordFacts]] = {}
        for stored, _row in accepted:
            if stored.id not in per_record:
                state = self._state(stored.id, stored)
                per_record[stored.id] = (state, self.facts(stored, state))
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
        encoded: dict[tuple[int, ...], bytes] = {}  # sessions that get the same items share
        for session in listeners:
            principal = session.principal
            assert principal is not None
            items = []
            readable: dict[str, bool] = {}  # per record: a push often changes one many times
            for stored, _row, state, facts, item in known:
                if stored.object not in session.subscriptions:
                    continue
                may_read = readable.get(stored.id)
                if may_read is None:
                    may_read = readable[stored.id] = self.can_read(principal, facts)
                if not may_read:
                    continue
                if self.policy.hidden_fields(principal, stored.object):
                    item = attrs.evolve(item, update=self.project(principal, state, item.update))
                items.append(item)
            if not items:
                continue
            key = tuple(id(item) for item in items)
            if key not in encoded:
                encoded[key] = encode(Changes(tuple(items)))
            session.deliver_fanout_encoded(encoded[key])

    # -- administration -------------------------------------------------------------

    def admin(self, principal: Principal, request: Admin) -> AdminResult:
        """Apply an administrator's action through the same path as any change: it gets
        a version, is logged with who and when, and is fanned out (replicas that gain
        access receive the record, replicas that lose it are told to forget it)."""

        def refuse(message: str) -> AdminResult:
            return AdminResult(request_id=request.request_id, ok=False, message=message)

        if not principal.admin:
            return refuse("only an administrator may do this (a token with the admin claim)")
        stored = self.storage.get_record(request.record_id)
        if stored is None:
            return refuse(f"no record {request.record_id}")
        state = self._state(stored.id, stored)
        before = self.facts(stored, state)
        if request.action is AdminAction.ACCESS:
            return AdminResult(
                request_id=request.request_id,
                ok=True,
                version=stored.version,
                details=self._access_report(stored, before),
            )
        if stored.deleted:
            return refuse(f"record {stored.id} is deleted")
        if request.action in NEEDS_USER and not request.user:
            return refuse(f"{request.action} needs a user")
        owner_name = owner_field(self.schema, stored.object)
        if request.action is AdminAction.SET_OWNER and owner_name is None:
            return refuse(f"a {stored.object} has no owner field")
        try:
            new, row, after = self._apply_admin(
                principal, request, stored, state, before, owner_name
            )
        except Exception:
            self._cache.pop(stored.id, None)  # the document may hold an uncommitted write
            log.exception("admin %s on %s failed; nothing was stored", request.action, stored.id)
            return refuse("the relay could not store this action; nothing was changed")
        self._remember(stored.id, state)
        self._fan_out_access(new, row, before, after)
        return AdminResult(
            request_id=request.request_id,
            ok=True,
            message=f"{request.action} done",
            version=new.version,
            details=self._access_report(new, after),
        )

    def _apply_admin(
        self,
        principal: Principal,
        request: Admin,
        stored: StoredRecord,
        state: RecordState,
        before: RecordFacts,
        owner_name: str | None,
    ) -> tuple[StoredRecord, ChangeRow, RecordFacts]:
        """Store one admin action (one transaction); returns the record, its log row and
        its access facts afterwards."""
        with self.storage.transaction():
            seq = self.storage.next_seq()
            update, fields, kind = b"", {}, str(request.action)
            if request.action is AdminAction.SHARE:
                level = Access.EDIT if request.access == "edit" else Access.READ
                self.storage.set_share(stored.id, str(request.user), int(level))
                state.shares = None  # reloaded from the store
            elif request.action is AdminAction.UNSHARE:
                self.storage.set_share(stored.id, str(request.user), None)
                state.shares = None
            elif request.action is AdminAction.SET_OWNER and owner_name is not None:
                update = state.doc.write({owner_name: request.user})
                if update:
                    state.index.commit_bytes(update)
                state.values[owner_name] = request.user
                fields, kind = {owner_name: request.user}, str(ChangeKind.UPDATE)
            new = attrs.evolve(
                stored,
                version=seq,
                state=state.doc.full_update() if update else stored.state,
                deleted=request.action is AdminAction.DELETE,
                owner=request.user if request.action is AdminAction.SET_OWNER else stored.owner,
            )
            if new.deleted:
                self.storage.set_uniques(stored.object, stored.id, {})
            self.storage.put_record(new)
            row = ChangeRow(
                seq=seq,
                record_id=stored.id,
                object=stored.object,
                change_id=None,
                replica="admin",
                user=principal.user,
                kind=kind,
                fields=fields,
                update=update,
                at=time.time(),
            )
            self.storage.add_change(row)
            state.stored = new
            after = self.facts(new, state)
            for user in {before.owner, after.owner, request.user} - {None}:
                was = self.policy.record_access(str(user), before)
                now = self.policy.record_access(str(user), after)
                if (was >= Access.READ) != (now >= Access.READ):
                    self.storage.log_access(seq, stored.id, str(user), gained=now >= Access.READ)
        return new, row, after

    def _fan_out_access(
        self, stored: StoredRecord, row: ChangeRow, before: RecordFacts, after: RecordFacts
    ) -> None:
        state = self._state(stored.id, stored)
        for session in list(self.sessions):
            principal = session.principal
            if principal is None or stored.object not in session.subscriptions:
                continue
            could, can = self.can_read(principal, before), self.can_read(principal, after)
            base = RecordChange(
                record_id=stored.id, object=stored.object, version=stored.version, by=row.user
            )
            if could and not can:
                item = attrs.evolve(base, revoked=True)
            elif can and stored.deleted:
                item = attrs.evolve(base, deleted=True)
            elif can:
                update = stored.state if not could else row.update
                item = attrs.evolve(base, update=self.project(principal, state, update))
            else:
                continue
            session.deliver_fanout_encoded(encode(Changes((item,))))

    def _access_report(self, stored: StoredRecord, facts: RecordFacts) -> dict[str, object]:
        spec = self.schema.objects[stored.object]
        roles = {
            role: sorted(action.value for action in actions)
            for role, grants in self.policy.grants.items()
            for name, actions in grants.items()
            if name == stored.object
        }
        return {
            "record": stored.id,
            "object": stored.object,
            "deleted": stored.deleted,
            "owner": facts.owner,
            "sharing": spec.sharing,
            "shares": {user: level.name.lower() for user, level in sorted(facts.shares.items())},
            "roles": roles,
        }

    # -- record cache -------------------------------------------------------------------

    def _state(self, record_id: str, stored: StoredRecord) -> RecordState:
        state = self._cache.get(record_id)
        # Every write goes through this relay: a cached record is never older than a
        # stored row (it may be newer than a row read earlier in the same push).
        if state is not None and state.stored.version >= stored.version:
            self._cache.move_to_end(record_id)
            return state
        # Load the record as it is now, not as ``stored`` was when it was read: the cache
        # must only ever hold the latest version.
        latest = self.storage.get_record(record_id)
        if latest is not None and latest.version >= stored.version:
            stored = latest
        state = RecordState.load(stored, self.schema.objects[stored.object], self.client_id)
        self._remember(record_id, state)
        return state

    def _forget_document(self, record_id: str) -> None:
        """Drop a cached document a refused change was applied to. What the record keeps
        from the committed log (who wrote which field, recent values, shares) is kept
        for the reloaded record, which would otherwise read the whole log again."""
        old = self._cache.pop(record_id, None)
        if old is None or old.writes is None:
            return
        stored = self.storage.get_record(record_id)
        if stored is None:
            return
        state = RecordState.load(stored, self.schema.objects[stored.object], self.client_id)
        state.writes, state.history, state.history_from = old.writes, old.history, old.history_from
        state.shares = old.shares
        self._remember(record_id, state)

    def _remember(self, record_id: str, state: RecordState) -> None:
        self._cache[record_id] = state
        self._cache.move_to_end(record_id)
        while len(self._cache) > self._cache_records:
            self._cache.popitem(last=False)
