"""The push pipeline: a push frame's changes decided, stored, committed, answered.

Every change is decided in order (the common edit by prediction, :mod:`.fastpath`;
anything else by :func:`~.merge.decide`), the frame's accepted changes are stored in a
savepoint of the open transaction, and only once that transaction has committed are the
verdicts returned and the accepted changes fanned out, so an acknowledged change
survives ``kill -9``. With group commit (``defer``), the frames pushed before the event
loop comes round share one transaction and one fsync::

    push(A) ─┐                      ┌─▶ A's verdicts, A's fan-out
    push(B) ─┼─ one transaction ─ commit (one fsync) ─┼─▶ B's verdicts, B's fan-out
    push(C) ─┘   (a savepoint each)  └─▶ C's verdicts, C's fan-out

A frame that fails alone is rolled back to its savepoint (its changes get
``internal_error``; the others stay); a commit that fails fails every frame of the
group. A change id seen before is a retransmission: answered with its original verdict,
never applied twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from crdtsync.core.protocol import (
    Ack,
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
)
from crdtsync.core.schema import Schema

from .access import RecordAccess
from .cache import RecordCache
from .fanout import FanOut, Listener
from .fastpath import Deferred, Mispredicted, Predicted, Predictor
from .merge import Accepted, AlreadyDone, Decision, RecordState, Refused, decide
from .metrics import Metrics
from .policy import Policy, Principal, RecordFacts
from .storage import SNAPSHOT_EVERY, ChangeRow, RelayStorage, StoredRecord

log = logging.getLogger("crdtsync.relay")

#: as a module constant: on CPython 3.11 every ``ChangeKind.X`` lookup takes
#: ``EnumType.__getattr__``'s slow path, and a predicted change is logged as this
_UPDATE = ChangeKind.UPDATE


@attrs.define
class _Decided:
    """A push frame decided and stored in the open transaction, waiting for its commit."""

    origin: Listener
    changes: list[ChangeFrame] = attrs.field(factory=list)
    verdicts: list[Verdict] = attrs.field(factory=list)
    followups: list[Frame] = attrs.field(factory=list)
    accepted: list[tuple[StoredRecord, ChangeRow]] = attrs.field(factory=list)
    touched: list[str] = attrs.field(factory=list)  #: cached records it changed
    predicted: int = 0  #: accepted changes decided by prediction
    load_s: float = 0.0
    decide_s: float = 0.0
    store_s: float = 0.0
    commit_s: float = 0.0  #: its share of the group's commit

    def fail(self, changes: list[ChangeFrame]) -> None:
        """Nothing of it is stored: every change gets an internal-error verdict."""
        self.changes = changes
        self.verdicts = [
            Rejected(
                change_id=change.change_id,
                record_id=change.record_id,
                code=ErrorCode.INTERNAL_ERROR,
                message="the relay could not store this change; retry later",
            )
            for change in changes
        ]
        self.accepted, self.followups, self.predicted = [], [], 0


class PushPipeline:
    """Decides, stores and acknowledges pushed changes, then hands them to the fan-out."""

    def __init__(
        self,
        *,
        schema: Schema,
        policy: Policy,
        storage: RelayStorage,
        metrics: Metrics,
        cache: RecordCache,
        access: RecordAccess,
        fan_out: FanOut,
        client_id: int,
        max_record_bytes: int,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.schema = schema
        self.policy = policy
        self.storage = storage
        self.metrics = metrics
        self.cache = cache
        self.access = access
        self.fan_out = fan_out
        self.client_id = client_id
        self.max_record_bytes = max_record_bytes
        self._bound: dict[int, str] = {}  # CRDT client ids known to be bound, and to whom
        #: decide changes of the common shape by prediction (:mod:`.fastpath`)
        self.predicting = True
        self._predictor = Predictor(schema, policy, client_id)
        self._unique_fields: dict[str, tuple[str, ...]] = {}  # object -> its unique fields
        #: group commit: how to run :meth:`settle` later (e.g. the event loop's call_soon)
        self.defer = defer
        self._group: list[_Decided] = []  # the open push group, in push order

    def push(
        self,
        origin: Listener,
        changes: Sequence[ChangeFrame],
        followups: list[Frame] | None = None,
    ) -> Verdicts | None:
        """Decide, persist and fan out a batch of changes.

        ``followups`` receives frames the origin must be sent right after the verdicts:
        a tombstone for each retransmitted change whose record was deleted since it was
        accepted (a replica that never saw the delete, e.g. one resuming from cursor 0,
        would otherwise keep the record).

        Without ``defer`` the frame is committed (one fsync) and fanned out before this
        returns its verdicts. With ``defer`` (group commit) the frame joins the open push
        group and this returns ``None``: :meth:`settle` (deferred when the group opens)
        commits every frame of the group at once, then hands each origin its verdicts
        (``Listener.deliver_verdicts``) and fans the accepted changes out, in push order.
        Either way nothing is answered or fanned out before it is durable.

        Changes of the common shape are decided by prediction and applied once per
        record (:mod:`.fastpath`); if yrs does not do what was predicted, nothing of the
        frame is kept and it is decided again change by change.
        """
        assert origin.principal is not None
        opened = not self.storage.in_transaction
        if opened:
            try:
                self.storage.begin()
            except Exception:
                log.exception("push: cannot open a transaction; nothing was stored")
                frame = _Decided(origin)
                frame.fail(list(changes))
                self._answer([frame], deliver=False)
                return Verdicts(tuple(frame.verdicts))
        frame = self._decided(origin, list(changes))
        if self.defer is not None:
            self._group.append(frame)
            if opened:
                self.defer(self.settle)
            return None
        if opened:
            self._commit([frame])
        self._answer([frame], deliver=False)
        if followups is not None:
            followups.extend(frame.followups)
        return Verdicts(tuple(frame.verdicts))

    def settle(self) -> None:
        """Commit the open push group (if any) and answer it (see :meth:`push`). Anything
        that reads the store outside a push calls this first, so it only ever sees what
        is committed."""
        group, self._group = self._group, []
        if not group:
            return
        self._commit(group)
        self._answer(group, deliver=True)

    def _commit(self, group: list[_Decided]) -> None:
        """Commit the group's transaction; if that fails, nothing of it was stored: every
        change of the group gets an internal-error verdict."""
        started = time.perf_counter()
        try:
            self.storage.commit()
        except Exception:
            log.exception("committing %d push frames failed; nothing was stored", len(group))
            for frame in group:
                self._forget(frame.touched)
                frame.fail(frame.changes)
        seconds = time.perf_counter() - started
        total = sum(len(frame.changes) for frame in group) or 1
        for frame in group:
            frame.commit_s = seconds * len(frame.changes) / total

    def _answer(self, group: list[_Decided], *, deliver: bool) -> None:
        """Count, answer (``deliver``: through ``Listener.deliver_verdicts``) and fan out
        each committed frame of the group, in push order."""
        clock = time.perf_counter
        for frame in group:
            stages = frame.load_s + frame.decide_s + frame.store_s + frame.commit_s
            self.metrics.observe_merge(stages, len(frame.changes))
            self.metrics.observe_push(frame.load_s, frame.decide_s, frame.store_s, frame.commit_s)
            for verdict in frame.verdicts:
                self.metrics.count_verdict(verdict)
            self.metrics.changes_predicted += frame.predicted
        if not deliver:  # one frame, answered by the caller: its fan-out alone
            for frame in group:
                if not frame.accepted:
                    continue
                fanning = clock()
                try:
                    self.fan_out.changes(frame.origin, frame.accepted)
                except Exception:  # logged: the push is committed and answered anyway
                    log.exception("fanning out a push of %d changes failed", len(frame.changes))
                self.metrics.observe_stage("fanout", clock() - fanning)
            return
        answering = 0.0  # seconds spent answering, not fanning out

        def answer(index: int) -> None:
            # One frame's trouble (a listener that fails) must not keep the others of the
            # group from their answers: it is logged, and its replica retries.
            nonlocal answering
            started = clock()
            frame = group[index]
            try:
                verdicts = Verdicts(tuple(frame.verdicts))
                frame.origin.deliver_verdicts(verdicts, frame.followups)
            except Exception:
                log.exception("answering a push of %d changes failed", len(frame.changes))
            answering += clock() - started

        fanning = clock()
        self.fan_out.changes_of_group([(f.origin, f.accepted) for f in group], answer)
        if any(frame.accepted for frame in group):
            self.metrics.observe_stage("fanout", clock() - fanning - answering)

    def _decided(self, origin: Listener, changes: list[ChangeFrame]) -> _Decided:
        """The frame decided and stored inside the open transaction, in a savepoint of its
        own: a frame that fails (or whose prediction does not hold, then decided again
        change by change) leaves the rest of the group as it was."""
        frame = _Decided(origin, changes)
        try:
            self._decide_in_savepoint(frame, predicting=self.predicting)
            return frame
        except Mispredicted as exc:
            log.warning("push: %s; deciding the frame again change by change", exc)
            self.metrics.frames_mispredicted += 1
        except Exception:
            log.exception("push of %d changes failed; nothing was stored", len(changes))
            self._forget(frame.touched)
            frame.fail(changes)
            return frame
        self._forget(frame.touched)
        frame = _Decided(origin, changes)
        try:
            self._decide_in_savepoint(frame, predicting=False)
        except Exception:
            log.exception("push of %d changes failed; nothing was stored", len(changes))
            self._forget(frame.touched)
            frame.fail(changes)
        return frame

    def _decide_in_savepoint(self, frame: _Decided, *, predicting: bool) -> None:
        """:meth:`_decide_frame` in a savepoint; writing the frame's staged rows when it
        ends counts as storing."""
        with self.storage.savepoint():
            self._decide_frame(frame, predicting=predicting)
            flushing = time.perf_counter()
        frame.store_s += time.perf_counter() - flushing

    def _decide_frame(self, frame: _Decided, *, predicting: bool) -> None:
        """Decide and store every change of ``frame`` (inside a savepoint)."""
        origin = frame.origin
        assert origin.principal is not None
        principal = origin.principal
        changes, verdicts, accepted = frame.changes, frame.verdicts, frame.accepted
        touched_cache, followups = frame.touched, frame.followups
        deferred: dict[str, Deferred] = {}  # predicted changes per record, not applied yet
        # Seconds per stage (see metrics.PUSH_STAGES), summed over the frame: a clock
        # reading at each stage boundary, nothing per field.
        clock = time.perf_counter
        load_s = decide_s = store_s = 0.0
        mark = clock()
        # One query for the whole frame: which ids were seen before (retransmits); one
        # for the records the cache does not hold.
        seen = self.storage.known_change_ids([c.change_id for c in changes])
        cache, storage, predict = self.cache, self.storage, self._predictor.predict
        missing = [c.record_id for c in changes if c.record_id not in cache]
        prefetched = self.storage.get_records(missing) if missing else {}
        for change in changes:
            verdict, stored, state, facts = self._load(
                principal, change, seen, followups, deferred, prefetched
            )
            now = clock()
            load_s += now - mark
            mark = now
            if verdict is None:
                predicted = (
                    predict(change, state, facts, principal=principal, context=storage)
                    if predicting
                    else None
                )
                decision: Decision | None = None
                if predicted is None:
                    if state is not None:
                        # decided the general way: on the document as it is by now
                        if change.record_id in deferred:
                            self._apply_deferred(deferred.pop(change.record_id))
                        stored = state.stored
                    decision = self._decide(principal, change, state, facts)
                now = clock()
                decide_s += now - mark
                mark = now
                touched_cache.append(change.record_id)
                outcome: tuple[StoredRecord, ChangeRow] | None
                if predicted is not None:
                    assert state is not None
                    verdict, outcome = self._store_predicted(principal, change, state, predicted)
                    record = deferred.get(change.record_id)
                    if record is None:
                        record = deferred[change.record_id] = Deferred(state)
                    record.add(predicted)
                    frame.predicted += 1
                else:
                    assert decision is not None
                    verdict, outcome = self._conclude(
                        principal, change, stored, state, decision, touched_cache
                    )
                now = clock()
                store_s += now - mark
                mark = now
                if outcome is not None:
                    accepted.append(outcome)
            seen.add(change.change_id)
            verdicts.append(verdict)
        for record in deferred.values():
            self._apply_deferred(record)
        decide_s += clock() - mark
        frame.load_s, frame.decide_s, frame.store_s = load_s, decide_s, store_s

    def _forget(self, record_ids: list[str]) -> None:
        """After a rollback: drop what the cache and the bindings learnt from it."""
        for record_id in record_ids:
            self.cache.pop(record_id, None)
        self._bound.clear()

    def _apply_deferred(self, record: Deferred) -> None:
        """Apply a record's predicted changes (checked by effect). They are logged; the
        record's row is written again once it lags ``SNAPSHOT_EVERY`` changes behind."""
        record.apply(self.max_record_bytes)
        if record.state.behind >= SNAPSHOT_EVERY:
            self.storage.put_record(record.state.snapshot())

    def _load(
        self,
        principal: Principal,
        change: ChangeFrame,
        seen: set[str],
        followups: list[Frame],
        deferred: Mapping[str, Deferred],
        prefetched: dict[str, StoredRecord],
    ) -> tuple[Verdict | None, StoredRecord | None, RecordState | None, RecordFacts | None]:
        """The answer to a change id seen before (a retransmission, or a reused id), or
        what deciding the change needs: its record as stored, its state and access facts
        (``None`` each for a record that does not exist). ``prefetched``: rows of records
        the cache did not hold, read at the start of the frame (each used once, by the
        frame's first change of the record)."""
        known = self.storage.find_change(change.change_id) if change.change_id in seen else None
        if known is not None:
            if known.record_id != change.record_id or known.replica != principal.replica_id:
                # Not a retransmission by the replica that made it: say nothing of it.
                reused = Rejected(
                    change_id=change.change_id,
                    record_id=change.record_id,
                    code=ErrorCode.MALFORMED_FRAME,
                    message="this change id was already used; every change needs a new one",
                )
                return reused, None, None, None
            return self._retransmitted(principal, change, known, followups), None, None, None
        record_id = change.record_id
        fresh = prefetched.pop(record_id, None)  # good for the record's first change only
        pending = deferred.get(record_id)
        if pending is not None:
            # It has predicted changes not applied yet: its live state is that one, even
            # if the cache let it go meanwhile.
            state = pending.state
            self.cache.remember(record_id, state)
            return None, state.row, state, self.access.facts(state.row, state)
        cached = self.cache.get(record_id)
        # Every write goes through this relay, so a cached record is the stored one; one
        # read just now, before the frame wrote it, is the latest.
        stored: StoredRecord | None
        if cached is not None:
            stored = cached.row
        else:
            stored = fresh if fresh is not None else self.storage.get_record(record_id)
        if stored is None:
            return None, None, None, None
        state = self.cache.state(record_id, stored, latest=cached is None)
        return None, stored, state, self.access.facts(stored, state)

    def _decide(
        self,
        principal: Principal,
        change: ChangeFrame,
        state: RecordState | None,
        facts: RecordFacts | None,
    ) -> Decision:
        return decide(
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

    def _conclude(
        self,
        principal: Principal,
        change: ChangeFrame,
        stored: StoredRecord | None,
        state: RecordState | None,
        decision: Decision,
        touched_cache: list[str],
    ) -> tuple[Verdict, tuple[StoredRecord, ChangeRow] | None]:
        """The verdict of a decided change; an accepted one is stored."""
        if isinstance(decision, Refused):
            verdict = decision.verdict
            if isinstance(verdict, Conflict) and state is not None and verdict.update:
                verdict = attrs.evolve(
                    verdict, update=self.access.project(principal, state, verdict.update)
                )
            if decision.dirty:
                self.cache.forget_document(change.record_id)
            if decision.refused_ops is not None:
                self.storage.add_refused(
                    change.record_id, change.change_id, decision.refused_ops.client_ranges()
                )
            return verdict, None
        if isinstance(decision, AlreadyDone):
            return Ack(
                change_id=change.change_id, record_id=change.record_id, version=decision.version
            ), None
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
        elif stored is not None and self.access.can_read(principal, self.access.facts(stored)):
            # A compacted change's update is gone: the whole state holds it (and more the
            # user may read as well).
            update = stored.state if known.compacted else known.update
            if update:
                update = self.access.project(principal, self.cache.state(stored.id, stored), update)
        return Ack(
            change_id=change.change_id, record_id=change.record_id, version=known.seq, update=update
        )

    def _gone_since(self, principal: Principal, stored: StoredRecord) -> RecordChange:
        """What a replica must learn of a record deleted after its change was accepted:
        the tombstone, or only that it may no longer read the record."""
        item = RecordChange(
            record_id=stored.id, object=stored.object, version=stored.version, deleted=True
        )
        if self.access.can_read(principal, self.access.facts(stored)):
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
            self.cache.pop(change.record_id, None)
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
            self._store_uniques(change, decision.fields, decision.values, created=state is None)
            if decision.parsed is not None:
                self._bind(principal, decision.parsed.clients())
            if state is None:  # the document was just built: index it, don't reload it
                state = RecordState.created(new, decision)
            else:
                state.commit(new, decision, principal.replica_id, principal.user)
            self.cache.remember(change.record_id, state)
        self.storage.put_record(new)
        row = self._log(principal, change, seq, decision.kind, decision.fields, decision.update)
        relay_update = decision.relay_update
        if relay_update and state is not None:  # e.g. texts of fields hidden from the creator
            relay_update = self.access.project(principal, state, relay_update)
        verdict = Ack(
            change_id=change.change_id, record_id=change.record_id, version=seq, update=relay_update
        )
        return verdict, (new, row)

    def _store_predicted(
        self, principal: Principal, change: ChangeFrame, state: RecordState, predicted: Predicted
    ) -> tuple[Verdict, tuple[StoredRecord, ChangeRow]]:
        """Store a predicted change: its log row now, the record's row once its changes of
        the frame are applied (:meth:`_apply_deferred`)."""
        seq = self.storage.next_seq()
        fields = predicted.fields
        self._store_uniques(change, fields, predicted.values, created=False)
        self._bind(principal, (predicted.client,))
        state.commit_predicted(
            seq,
            fields=fields,
            values=predicted.values,
            writes=predicted.writes,
            replaced=predicted.replaced,
            replica=principal.replica_id,
            user=principal.user,
        )
        new = state.row  # its state: when applied, and in the log (a snapshot row, later)
        self.cache.remember(change.record_id, state)
        row = self._log(principal, change, seq, _UPDATE, fields, change.delta)
        verdict = Ack(change_id=change.change_id, record_id=change.record_id, version=seq)
        return verdict, (new, row)

    def _store_uniques(
        self,
        change: ChangeFrame,
        fields: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        created: bool,
    ) -> None:
        """The record's ``unique`` values (``values``: the record's, decoded), if the
        change touched one (it wrote ``fields``) or created the record."""
        names = self._unique_fields.get(change.object)
        spec = self.schema.objects[change.object]
        if names is None:
            names = self._unique_fields[change.object] = tuple(
                name for name, field in spec.fields.items() if field.unique
            )
        if names and (created or not fields.keys().isdisjoint(names)):
            unique = {name: spec.fields[name].type.encode(values.get(name)) for name in names}
            self.storage.set_uniques(change.object, change.record_id, unique)

    def _bind(self, principal: Principal, clients: Iterable[int]) -> None:
        """Bind the CRDT client ids to the principal's replica (first use wins)."""
        for client in clients:
            if self._bound.get(client) != principal.replica_id:
                self.storage.bind_client_id(client, principal.replica_id)
                self._bound[client] = principal.replica_id

    def _log(
        self,
        principal: Principal,
        change: ChangeFrame,
        seq: int,
        kind: ChangeKind,
        fields: Mapping[str, Any],
        update: bytes,
    ) -> ChangeRow:
        """Log an accepted change: its version ``seq``, the ``fields`` it wrote (their
        stored values) and the ``update`` to log and fan out."""
        row = ChangeRow(
            seq=seq,
            record_id=change.record_id,
            object=change.object,
            change_id=change.change_id,
            replica=principal.replica_id,
            user=principal.user,
            kind=kind,
            fields=fields,
            update=update,
            at=time.time(),
        )
        self.storage.add_change(row)
        return row
