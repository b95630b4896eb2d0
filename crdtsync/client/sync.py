"""The replica's side of a relay connection, sans I/O.

A transport creates a :class:`SyncSession` per connection, sends what
:meth:`SyncSession.data_to_send` returns, feeds every message it reads to
:meth:`SyncSession.receive`, and calls :meth:`SyncSession.connection_lost` when the
connection ends. The session drives the :class:`~crdtsync.client.replica.Replica` through its
sync entry points::

    HELLO_SENT ──welcome──▶ CATCHING_UP ──caught_up──▶ READY ⇄ (push, verdicts)
        └──────── fatal error frame, rate_limited ──────▶ FAILED

In ``READY`` it pushes pending changes in the order they were made, one batch at a
time: a batch goes out in as many push frames as the relay's frame limit
(``welcome.max_frame_bytes``) needs, the relay answers each frame with one verdicts
frame, in order, and the next batch waits for the last answer. A change too large for
any frame is never sent: it becomes ``unresolvable`` with the reason, and the rest
syncs. Each verdict updates the replica; remote changes are applied as they arrive.
The cursor (the last relay version seen) is stored with the replica so a reconnect
resumes where it left off. :meth:`SyncSession.flush` asks the relay (protocol version
2) to confirm that everything it had accepted has been sent to this connection.
"""

from __future__ import annotations

import enum
import uuid
from collections import deque
from collections.abc import Callable

import attrs

from crdtsync.core.exceptions import ProtocolError
from crdtsync.core.protocol import (
    MAX_CHANGES_PER_FRAME,
    MAX_FRAME_BYTES,
    MAX_RELAY_FRAME_BYTES,
    SUPPORTED_VERSIONS,
    Ack,
    CaughtUp,
    ChangeFrame,
    Changes,
    Conflict,
    Error,
    ErrorCode,
    Flush,
    Flushed,
    Frame,
    Hello,
    Rejected,
    Subscribe,
    Unresolvable,
    Verdicts,
    Welcome,
    decode,
    encode,
    plan_pushes,
)
from crdtsync.core.schema import Schema

from .events import Event, SyncFinished, SyncProgress, SyncStarted
from .model import Problem, UnresolvableReason
from .replica import Replica


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
        #: the push frames sent and not answered yet, oldest first, by change id
        self._pushes: deque[dict[str, ChangeFrame]] = deque()
        self._tally: SyncTally | None = None
        self.version = 1  #: the protocol version the relay chose (from ``welcome``)
        self.max_frame_bytes = MAX_FRAME_BYTES  #: the relay's limit for our messages
        self.max_changes_per_frame = MAX_CHANGES_PER_FRAME  #: and for changes per push
        self.flushed: set[str] = set()  #: flush requests the relay has answered
        self._send(Hello(SUPPORTED_VERSIONS, token, replica.replica_id))

    # -- I/O boundary -----------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    @property
    def idle(self) -> bool:
        """Caught up, nothing in flight, and nothing that could be pushed now."""
        return (
            self.state is SyncState.READY and not self._pushes and not self.replica.has_pushable()
        )

    def receive(self, data: bytes) -> None:
        """Handle one message from the relay. A malformed frame from the relay is a
        protocol error: :class:`ProtocolError` is raised and the transport should close."""
        frame = decode(data, max_bytes=MAX_RELAY_FRAME_BYTES)
        self._handle(frame)

    def connection_lost(self) -> None:
        """Changes in flight go back to pending; they are resent with the same ids."""
        self._pushes.clear()
        self.replica.requeue_inflight()
        if self._tally is not None:
            self._finish()

    def push(self) -> None:
        """Send the next batch of pending changes, if ready and none is in flight."""
        if self.state is not SyncState.READY or self._pushes:
            return
        outgoing = self.replica.outgoing(self.batch_size)
        if not outgoing:
            if self._tally is not None:
                self._finish()
            return
        if self._tally is None:
            self._tally = SyncTally(total=self.replica.count_unsynced())
            self._emit(SyncStarted(self._tally.total))
        plan = plan_pushes(outgoing, self.max_frame_bytes, self.max_changes_per_frame)
        for change, size in plan.too_large:
            self.replica.apply_unsendable(change.change_id, size=size, limit=self.max_frame_bytes)
            self._tally.done += 1
            self._tally.unresolvable += 1
        for data, carried in plan.frames:
            self._pushes.append({change.change_id: change for change in carried})
            self._outbox.append(data)
        if not plan.frames:
            self.push()  # every change of the batch was too large: on to the next one

    def flush(self) -> str | None:
        """Ask the relay to confirm that every change it has accepted so far has been
        sent to this connection; return the request id (see :attr:`flushed`), or
        ``None`` if the relay's protocol version has no ``flush``."""
        if self.state is not SyncState.READY or self.version < 2:
            return None
        request_id = uuid.uuid4().hex
        self._send(Flush(request_id))
        return request_id

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
            elif self._pushes:
                # The relay could not read our oldest push: it will not answer its changes.
                with self.replica.applying():
                    for change_id in self._pushes[0]:
                        self.replica.apply_rejected(change_id, frame.code, frame.message)
                self._pushes.popleft()
                self.push()
            return
        if isinstance(frame, Welcome):
            self._welcome(frame)
        elif isinstance(frame, Changes):
            self._changes(frame)
        elif isinstance(frame, CaughtUp):
            self.replica.advance_cursor(frame.cursor)
            self.state = SyncState.READY
            self.push()
        elif isinstance(frame, Verdicts):
            self._verdicts(frame)
        elif isinstance(frame, Flushed):
            self.flushed.add(frame.request_id)
        else:
            raise ProtocolError(
                ErrorCode.UNKNOWN_FRAME_TYPE, f"a relay does not send {type(frame).TYPE!r} frames"
            )

    def _welcome(self, welcome: Welcome) -> None:
        if self.state is not SyncState.HELLO_SENT:
            raise ProtocolError(ErrorCode.MALFORMED_FRAME, "welcome received twice")
        self.user = welcome.user
        self.version = welcome.version
        if welcome.max_frame_bytes is not None:
            self.max_frame_bytes = welcome.max_frame_bytes
        if welcome.max_changes_per_frame is not None:
            self.max_changes_per_frame = welcome.max_changes_per_frame
        if self.replica.server_id != welcome.server_id:
            # Another relay (or a relay whose database was replaced): start over.
            self.replica.reset_cursor(welcome.server_id)
        schema = Schema.from_wire(welcome.schema)
        foreign = sorted(self.replica.objects_held() - set(schema.objects))
        if foreign:
            # Records of an app the relay does not run can never sync: say so, once.
            self.state = SyncState.FAILED
            self.error = Error(
                ErrorCode.UNKNOWN_OBJECT,
                f"the relay has no object type {', '.join(map(repr, foreign))}, which this "
                "client holds records of: the client and the relay are set up for different "
                "apps (check the schema the client was given and the relay's config)",
                fatal=True,
            )
            return
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

    def _changes(self, frame: Changes) -> None:
        """Apply a frame of remote changes as one unit (see :meth:`Replica.applying`):
        all of it and the cursor past it, or, if applying an item raises, none of it."""
        # A backlog is ordered by record, not by version: the cursor moves only at
        # caught_up. Live fan-out arrives in version order.
        self.replica.apply_changes(frame.items, advance_cursor=self.state is SyncState.READY)

    def _verdicts(self, frame: Verdicts) -> None:
        """Apply a frame of verdicts as one unit (see :meth:`Replica.applying`). If
        applying one raises, none of them is stored: the connection ends, the changes
        in flight go back to pending and are resent with the same ids."""
        answered = dict(self._pushes[0]) if self._pushes else {}
        done = SyncTally()
        acks: list[Ack] = []  # a run of acks, applied together (Replica.apply_acks)

        def apply_acks() -> None:
            applied = self.replica.apply_acks(
                [(ack.change_id, ack.version, ack.update) for ack in acks]
            )
            done.accepted += sum(applied)
            for ack in acks:
                self.replica.advance_cursor(ack.version)
            acks.clear()

        with self.replica.applying():
            for verdict in frame.items:
                answered.pop(verdict.change_id, None)
                done.done += 1
                if isinstance(verdict, Ack):
                    acks.append(verdict)
                    continue
                if acks:  # the acks before this verdict are applied before it
                    apply_acks()
                if isinstance(verdict, Conflict):
                    problem = self.replica.conflict_problem(verdict)
                    self.replica.apply_conflict(
                        verdict.change_id, problem, version=verdict.version, update=verdict.update
                    )
                    done.conflicts += 1
                elif isinstance(verdict, Unresolvable):
                    self.replica.apply_unresolvable(
                        verdict.change_id,
                        Problem(
                            reason=UnresolvableReason(verdict.reason),
                            message=verdict.message,
                            readable=verdict.readable,
                        ),
                    )
                    done.unresolvable += 1
                elif isinstance(verdict, Rejected):
                    self.replica.apply_rejected(verdict.change_id, verdict.code, verdict.message)
                    done.errors += 1
            if acks:
                apply_acks()
            # Whatever the relay did not answer is sent again later, with the same id.
            if answered:
                self.replica.requeue_inflight(set(answered))
        if self._pushes:
            self._pushes.popleft()
        tally = self._tally or SyncTally()
        tally.done += done.done
        tally.accepted += done.accepted
        tally.conflicts += done.conflicts
        tally.unresolvable += done.unresolvable
        tally.errors += done.errors
        self._tally = tally
        self._emit(SyncProgress(tally.done, max(tally.total, tally.done)))
        self.push()

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
