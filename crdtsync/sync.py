"""The replica's side of a relay connection, sans I/O.

A transport creates a :class:`SyncSession` per connection, sends what
:meth:`SyncSession.data_to_send` returns, feeds every message it reads to
:meth:`SyncSession.receive`, and calls :meth:`SyncSession.connection_lost` when the
connection ends. The session drives the :class:`~crdtsync.replica.Replica` through its
sync entry points::

    HELLO_SENT ──welcome──▶ CATCHING_UP ──caught_up──▶ READY ⇄ (push, verdicts)
        └──────── fatal error frame, rate_limited ──────▶ FAILED

In ``READY`` it pushes pending changes in the order they were made, at most one push
frame in flight; each verdict updates the replica; remote changes are applied as they
arrive. The cursor (the last relay version seen) is stored with the replica so a
reconnect resumes where it left off.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from .events import Event, SyncFinished, SyncProgress, SyncStarted
from .exceptions import FieldError
from .model import FieldConflict, Problem, UnresolvableReason
from .protocol import (
    MAX_RELAY_FRAME_BYTES,
    SUPPORTED_VERSIONS,
    Ack,
    CaughtUp,
    ChangeFrame,
    Changes,
    Conflict,
    Error,
    ErrorCode,
    Frame,
    Hello,
    ProtocolError,
    Push,
    Rejected,
    Subscribe,
    Unresolvable,
    Verdicts,
    Welcome,
    decode,
    encode,
)
from .replica import Replica
from .schema import Schema


class SyncState(enum.Enum):
    HELLO_SENT = "hello_sent"
    CATCHING_UP = "catching_up"
    READY = "ready"
    FAILED = "failed"


@attrs.define
class SyncTally:
    """What one run of pushes achieved, from start to idle."""

    total: int = 0
    done: int = 0
    accepted: int = 0
    conflicts: int = 0
    unresolvable: int = 0
    errors: int = 0


class SyncSession:
    """One connection's sync state machine."""

    def __init__(
        self,
        replica: Replica,
        token: str,
        *,
        batch_size: int = 200,
        on_event: Callable[[Event], None] = lambda event: None,
        on_schema: Callable[[Schema], None] = lambda schema: None,
    ) -> None:
        self.replica = replica
        self.batch_size = batch_size
        self.state = SyncState.HELLO_SENT
        self.user: str | None = None
        self.error: Error | None = None
        self._emit = on_event
        self._on_schema = on_schema
        self._outbox: list[bytes] = []
        self._inflight: dict[str, ChangeFrame] = {}
        self._tally: SyncTally | None = None
        self._send(Hello(SUPPORTED_VERSIONS, token, replica.replica_id))

    # -- I/O boundary -----------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    @property
    def idle(self) -> bool:
        """Caught up, nothing in flight, and nothing that could be pushed now."""
        return (
            self.state is SyncState.READY and not self._inflight and not self.replica.has_pushable()
        )

    def receive(self, data: bytes) -> None:
        """Handle one message from the relay. A malformed frame from the relay is a
        protocol error: :class:`ProtocolError` is raised and the transport should close."""
        frame = decode(data, max_bytes=MAX_RELAY_FRAME_BYTES)
        self._handle(frame)

    def connection_lost(self) -> None:
        """Changes in flight go back to pending; they are resent with the same ids."""
        self._inflight.clear()
        self.replica.requeue_inflight()
        if self._tally is not None:
            self._finish()

    def push(self) -> None:
        """Send the next batch of pending changes, if ready and none is in flight."""
        if self.state is not SyncState.READY or self._inflight:
            return
        outgoing = self.replica.outgoing(self.batch_size)
        if not outgoing:
            if self._tally is not None:
                self._finish()
            return
        if self._tally is None:
            self._tally = SyncTally(total=self.replica.count_unsynced())
            self._emit(SyncStarted(self._tally.total))
        frames = tuple(
            ChangeFrame(
                change_id=change.change_id,
                record_id=change.record_id,
                object=change.object,
                kind=change.kind.value,
                base_version=change.base_version,
                field_bases=change.field_bases,
                delta=change.delta,
            )
            for change in outgoing
        )
        self._inflight = {frame.change_id: frame for frame in frames}
        self._send(Push(frames))

    # -- frames -------------------------------------------------------------------------

    def _send(self, frame: Frame) -> None:
        self._outbox.append(encode(frame))

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Error):
            if frame.fatal or frame.code is ErrorCode.RATE_LIMITED:
                # rate_limited: the relay dropped a frame unread. Give up this connection;
                # the transport reconnects with backoff and resends what was in flight.
                self.state = SyncState.FAILED
                self.error = frame
            elif self._inflight:
                # The relay could not read our push: it will not answer those changes.
                for change_id in list(self._inflight):
                    self.replica.apply_rejected(change_id, frame.code.value, frame.message)
                self._inflight.clear()
            return
        if isinstance(frame, Welcome):
            self._welcome(frame)
        elif isinstance(frame, Changes):
            for item in frame.items:
                if item.object not in self.replica.schema.objects:
                    continue
                if item.revoked:
                    self.replica.apply_revoked(item.record_id, item.object, item.version)
                else:
                    self.replica.apply_remote(
                        item.record_id,
                        item.object,
                        item.version,
                        item.update,
                        deleted=item.deleted,
                        by=item.by,
                    )
                # A backlog is ordered by record, not by version: the cursor moves only
                # at caught_up. Live fan-out arrives in version order.
                if self.state is SyncState.READY:
                    self.replica.advance_cursor(item.version)
        elif isinstance(frame, CaughtUp):
            self.replica.advance_cursor(frame.cursor)
            self.state = SyncState.READY
            self.push()
        elif isinstance(frame, Verdicts):
            self._verdicts(frame)
        else:
            raise ProtocolError(
                ErrorCode.UNKNOWN_FRAME_TYPE, f"a relay does not send {type(frame).TYPE!r} frames"
            )

    def _welcome(self, welcome: Welcome) -> None:
        if self.state is not SyncState.HELLO_SENT:
            raise ProtocolError(ErrorCode.MALFORMED_FRAME, "welcome received twice")
        self.user = welcome.user
        if self.replica.store.get_meta("server_id") != welcome.server_id:
            # Another relay (or a relay whose database was replaced): start over.
            self.replica.reset_cursor(welcome.server_id)
        schema = Schema.from_wire(welcome.schema)
        gained = self.replica.fields_gained(schema) | self.replica.objects_gained(welcome.readable)
        lost = self.replica.objects_lost(welcome.readable)
        self._on_schema(schema)
        if lost:  # e.g. a role taken away: what this user may no longer read goes
            self.replica.revoke_objects(lost)
        if gained:
            # Fields (or whole objects) this replica could not read before: the records
            # it holds have only placeholders for them, and records it skipped are behind
            # its cursor, so fetch those objects again, whole.
            self.replica.forget_synced_records(gained)
        self.replica.remember_view(schema, welcome.readable)
        self.state = SyncState.CATCHING_UP
        self._send(Subscribe(tuple(self.replica.schema.objects), self.replica.cursor))

    def _verdicts(self, frame: Verdicts) -> None:
        tally = self._tally or SyncTally()
        for verdict in frame.items:
            self._inflight.pop(verdict.change_id, None)
            tally.done += 1
            if isinstance(verdict, Ack):
                if self.replica.apply_ack(verdict.change_id, verdict.version, verdict.update):
                    tally.accepted += 1
                self.replica.advance_cursor(verdict.version)
            elif isinstance(verdict, Conflict):
                problem = self._problem(verdict)
                self.replica.apply_conflict(
                    verdict.change_id, problem, version=verdict.version, update=verdict.update
                )
                tally.conflicts += 1
            elif isinstance(verdict, Unresolvable):
                self.replica.apply_unresolvable(
                    verdict.change_id,
                    Problem(
                        reason=UnresolvableReason(verdict.reason),
                        message=verdict.message,
                        readable=verdict.readable,
                    ),
                )
                tally.unresolvable += 1
            elif isinstance(verdict, Rejected):
                self.replica.apply_rejected(verdict.change_id, verdict.code.value, verdict.message)
                tally.errors += 1
        # Whatever the relay did not answer is sent again later, with the same id.
        if self._inflight:
            self._inflight.clear()
            self.replica.requeue_inflight()
        self._tally = tally
        self._emit(SyncProgress(tally.done, max(tally.total, tally.done)))
        self.push()

    def _problem(self, verdict: Conflict) -> Problem:
        record = self.replica.store.get_record(verdict.record_id)
        spec = self.replica.schema.objects.get(record.object) if record is not None else None

        def value(field: str, raw: object) -> object:
            if spec is None or field not in spec.fields:
                return raw
            try:
                return spec.fields[field].type.decode(raw)
            except ValueError:
                return raw

        return Problem(
            conflicts=tuple(
                FieldConflict(
                    field=c.field,
                    base=value(c.field, c.base),
                    mine=value(c.field, c.mine),
                    theirs=value(c.field, c.theirs),
                    changed_by=c.changed_by,
                )
                for c in verdict.conflicts
            ),
            errors=tuple(FieldError(e.field, e.message) for e in verdict.errors),
            message=verdict.message,
        )

    def _finish(self) -> None:
        tally = self._tally or SyncTally()
        self._tally = None
        self._emit(
            SyncFinished(
                accepted=tally.accepted,
                conflicts=tally.conflicts,
                unresolvable=tally.unresolvable,
                errors=tally.errors,
            )
        )
