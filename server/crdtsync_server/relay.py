"""The relay: one coordinator wiring the jobs that merge, persist and fan out changes.

:class:`Relay` owns the storage, the registry of connected :class:`~.fanout.Listener`
objects (the sessions: the relay knows them only through that protocol) and the parts
that do the work, each in its own module:

* :mod:`.cache` — the record cache (live documents, latest version only);
* :mod:`.access` — access facts: who may read which record, and what of it;
* :mod:`.backlog` — what a subscribing replica missed since its cursor;
* :mod:`.pipeline` — pushes: decided (:mod:`.merge`), stored in one transaction,
  acknowledged;
* :mod:`.fanout` — accepted changes and access changes sent to the listeners;
* :mod:`.admin_actions` — administrators' actions on records.

It does no network I/O: transports feed bytes into sessions and send what sessions
queue. An acknowledged change has been committed (one fsync per push frame) before it
is fanned out, so it survives ``kill -9``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import attrs

from crdtsync.core.protocol import Admin, AdminResult, ChangeFrame, Frame, Verdicts
from crdtsync.core.schema import Schema

from .access import RecordAccess
from .admin_actions import AdminActions
from .auth import Identity
from .backlog import Backlog
from .cache import RecordCache
from .fanout import FanOut, Listener
from .follower import ClusterFollower
from .limits import MAX_RECORD_BYTES
from .merge import RecordState
from .metrics import Metrics
from .pipeline import PushPipeline
from .policy import Policy, Principal, RecordFacts
from .storage import RelayStorage, StoredRecord

__all__ = ["JoinRefused", "Joined", "Listener", "Relay"]


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
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``defer`` turns on group commit: the pushes made before it runs what it is
        given (an event loop's ``call_soon``) are committed together, with one fsync
        (see :meth:`.pipeline.PushPipeline.push`)."""
        self.schema = schema
        self.policy = policy
        self.storage = storage
        self.metrics = metrics or Metrics()
        self.max_record_bytes = max_record_bytes
        #: the connected listeners (sessions), for fan-out
        self.sessions: set[Listener] = set()
        with storage.transaction():
            self.server_id: str = storage.get_meta("server_id") or uuid.uuid4().hex
            storage.set_meta("server_id", self.server_id)
            self.client_id: int = storage.get_meta("client_id") or (secrets.randbits(53) or 1)
            storage.set_meta("client_id", self.client_id)
            storage.bind_client_id(self.client_id, "relay")
        self._cache = RecordCache(storage, schema, self.client_id, cache_records)
        self.access = RecordAccess(schema, policy, storage, self._cache)
        self._backlog = Backlog(policy, storage, self.access, self._cache)
        self._fan_out = FanOut(self.sessions, policy, self.access, self._cache)
        self.follower = ClusterFollower(storage, self._cache, self.access, self._fan_out)
        storage.on_behind = self.follower.caught_up
        self._pipeline = PushPipeline(
            schema=schema,
            policy=policy,
            storage=storage,
            metrics=self.metrics,
            cache=self._cache,
            access=self.access,
            fan_out=self._fan_out,
            client_id=self.client_id,
            max_record_bytes=max_record_bytes,
            defer=defer,
        )
        self._admin = AdminActions(
            schema=schema,
            policy=policy,
            storage=storage,
            cache=self._cache,
            access=self.access,
            fan_out=self._fan_out,
        )

    @property
    def seq(self) -> int:
        """The log position of the latest stored change (what a replica's cursor reaches
        once it has everything accepted so far); an open push group is settled first,
        so it is always a durable position, and what other relays on the database
        committed is taken in (and fanned out) first, so it is the cluster's."""
        self.settle()
        self.follow()
        return self.storage.seq

    # -- listeners --------------------------------------------------------------------

    def join(self, listener: Listener, replica_id: str, identity: Identity) -> Joined | JoinRefused:
        """Let a replica in (its ``hello`` was verified as ``identity``): bind the replica
        id to the user (one a replica of another user holds is refused), remember which
        fields are hidden from it now, and attach ``listener`` for fan-out."""
        self.settle()
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

    # -- access (see .access) -----------------------------------------------------------

    def facts(self, stored: StoredRecord, state: RecordState | None = None) -> RecordFacts:
        """What access to ``stored`` depends on (:meth:`.access.RecordAccess.facts`)."""
        return self.access.facts(stored, state)

    def readable_objects(
        self, principal: Principal, objects: Iterable[str] | None = None
    ) -> tuple[str, ...]:
        """The objects (of ``objects``, default all) the principal's roles may read."""
        return self.access.readable_objects(principal, objects)

    def can_read(self, principal: Principal, facts: RecordFacts) -> bool:
        return self.access.can_read(principal, facts)

    def project(self, principal: Principal, state: RecordState, update: bytes) -> bytes:
        """``update`` without the fields ``principal`` may not read."""
        return self.access.project(principal, state, update)

    # -- the jobs -----------------------------------------------------------------------

    def backlog(self, principal: Principal, objects: Iterable[str], cursor: int) -> Iterator[Frame]:
        """What a replica that has seen everything up to ``cursor`` is missing, as
        ``changes`` frames, then ``caught_up`` (:meth:`.backlog.Backlog.frames`). Each
        frame is read from what is committed (an open push group is settled first)."""
        self.settle()
        self.follow()  # live items from other relays start after what the backlog reads
        frames = self._backlog.frames(principal, objects, cursor)
        while True:
            self.settle()
            frame = next(frames, None)
            if frame is None:
                return
            yield frame

    def push(
        self,
        origin: Listener,
        changes: Sequence[ChangeFrame],
        followups: list[Frame] | None = None,
    ) -> Verdicts | None:
        """Decide, persist and fan out a batch of changes
        (:meth:`.pipeline.PushPipeline.push`; ``followups`` receives frames the origin
        must be sent right after the verdicts). ``None``: the push joined a push group,
        whose verdicts go to ``origin.deliver_verdicts`` once it is committed."""
        return self._pipeline.push(origin, changes, followups)

    def settle(self) -> None:
        """Commit and answer the open push group, if any (group commit): whatever reads
        the store outside a push calls this first, so it sees only what is durable."""
        self._pipeline.settle()

    def follow(self) -> None:
        """Take in what other relays on the same database committed since this one last
        looked (:mod:`.follower`); nothing to do on SQLite, or while a push group is
        open (its transaction caught up when it began)."""
        if not self.storage.in_transaction:
            self.storage.follow()

    def admin(self, principal: Principal, request: Admin) -> AdminResult:
        """Apply an administrator's action (:meth:`.admin_actions.AdminActions.apply`)."""
        self.settle()
        return self._admin.apply(principal, request)
