"""One replica's connection to the relay, sans I/O.

A transport calls :meth:`RelaySession.receive` with each message it reads and sends
whatever :meth:`RelaySession.data_to_send` returns afterwards; the relay may also
queue frames into a session at any time (fan-out), after which the session calls its
``wake`` callback so the transport sends them. When :attr:`RelaySession.close_code`
is set the transport must send what is queued, then close with that code and
:attr:`RelaySession.close_reason`.

States::

    AWAITING_HELLO ──hello ok──▶ READY ──fatal error / too slow──▶ CLOSING
          └──bad hello / auth failed / unsupported version──▶ CLOSING

In ``READY`` a malformed frame gets a non-fatal ``error`` frame and the connection
carries on; only a broken handshake, a consumer too slow to keep up, or a sustained
flood of frames ends it.

Every incoming message first passes the connection's :class:`~.limits.FrameRateLimit`:
a frame over the rate is not handled at all (non-fatal ``rate_limited`` error); a
replica that keeps flooding gets a fatal ``rate_limited`` and close 1008. The limit is
off unless ``max_frames_per_second`` is given (the websocket transport passes the
configured one, by default :data:`~.limits.MAX_FRAMES_PER_SECOND`), so in-process uses
that pump frames as fast as they can are not throttled.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from crdtsync.core.exceptions import ProtocolError
from crdtsync.core.protocol import (
    MAX_CHANGES_PER_FRAME,
    SUPPORTED_VERSIONS,
    Admin,
    CaughtUp,
    Error,
    ErrorCode,
    Flush,
    Flushed,
    Frame,
    Hello,
    Push,
    Subscribe,
    Verdicts,
    Welcome,
    decode,
    encode,
)

from .auth import TokenAuthority
from .errors import AuthError
from .limits import FRAME_BURST, Admission, FrameRateLimit
from .policy import Principal
from .relay import JoinRefused, Relay

log = logging.getLogger("crdtsync.session")

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_PROTOCOL_ERROR = 1002


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    READY = "ready"
    CLOSING = "closing"


class RelaySession:
    """The relay's side of one connection."""

    def __init__(
        self,
        relay: Relay,
        authority: TokenAuthority,
        *,
        max_frame_bytes: int,
        max_changes_per_frame: int = MAX_CHANGES_PER_FRAME,
        max_queued_bytes: int = 64 * 1024 * 1024,
        max_frames_per_second: float = 0,
        frame_burst: int = FRAME_BURST,
        clock: Callable[[], float] = time.monotonic,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.relay = relay
        self.authority = authority
        self.max_frame_bytes = max_frame_bytes
        self.max_changes_per_frame = max_changes_per_frame
        self.max_queued_bytes = max_queued_bytes
        self.wake = wake
        self.rate_limit = FrameRateLimit(max_frames_per_second, frame_burst, clock)
        self.state = SessionState.AWAITING_HELLO
        self.principal: Principal | None = None
        self.subscriptions: set[str] = set()
        self.close_code: int | None = None
        self.close_reason = ""
        self.expires_at: float | None = None
        #: each pending subscribe's frames (ending with caught_up), pulled lazily, in order
        self._backlogs: deque[Iterator[Frame]] = deque()
        #: the objects each pending subscribe is catching up on (one backlog per object)
        self._catching_up: deque[frozenset[str]] = deque()
        self._held: list[bytes] = []  # fan-out waiting for the backlog to complete
        self._held_bytes = 0
        self._outbox: deque[bytes] = deque()
        self._queued_bytes = 0

    # -- output -------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Every queued message, in order; the queue is emptied. While a backlog is
        being sent, each call with nothing else queued adds its next frame (see
        :attr:`has_more`)."""
        if not self._outbox and self._backlogs and self.state is SessionState.READY:
            self._next_backlog_frame()
        out = list(self._outbox)
        self._outbox.clear()
        self._queued_bytes = 0
        return out

    @property
    def has_more(self) -> bool:
        """A backlog is still being produced: call :meth:`data_to_send` again (after
        letting other connections run)."""
        return bool(self._backlogs) and self.state is SessionState.READY

    def _next_backlog_frame(self) -> None:
        frame = next(self._backlogs[0], None)
        if frame is not None:
            self.deliver(frame)
        if frame is None or isinstance(frame, CaughtUp):
            # This subscribe is answered; the next one's backlog (if any) comes next.
            self._backlogs.popleft()
            self._catching_up.popleft()
            if self._backlogs:
                return
            held, self._held = self._held, []
            self._held_bytes = 0
            for data in held:  # fan-out that happened meanwhile, now in order
                self._outbox.append(data)
                self._queued_bytes += len(data)
            return

    def deliver_fanout(self, frame: Frame) -> None:
        """Queue a fan-out frame; while a backlog is being sent it waits until the
        backlog is complete (it must not overtake the records it changes)."""
        self.deliver_fanout_encoded(encode(frame))

    def deliver_fanout_encoded(self, data: bytes) -> None:
        """:meth:`deliver_fanout` for a frame already encoded (shared by sessions)."""
        if not self._backlogs:
            self._queue(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self.max_queued_bytes:
            self._fail(
                ErrorCode.TOO_SLOW,
                "too slow: the replica does not read its frames",
                CLOSE_TRY_AGAIN_LATER,
            )

    def deliver_verdicts(self, verdicts: Verdicts, followups: Sequence[Frame]) -> None:
        """Queue the answer to a push, then the frames that must follow it."""
        self.deliver(verdicts)
        for followup in followups:
            self.deliver(followup)

    def deliver(self, frame: Frame) -> None:
        """Queue a frame for the replica now (a reply, a backlog frame): unlike
        :meth:`deliver_fanout` it does not wait for a backlog. A session whose queue
        outgrows its bound is closed as too slow instead of growing memory."""
        if self.state is SessionState.CLOSING:
            return
        self._queue(encode(frame))

    def _queue(self, data: bytes) -> None:
        if self.state is SessionState.CLOSING:
            return
        # One frame always fits (however big): the bound is on frames piling up unread.
        if self._outbox and self._queued_bytes + len(data) > self.max_queued_bytes:
            self._fail(
                ErrorCode.TOO_SLOW,
                "too slow: the replica does not read its frames",
                CLOSE_TRY_AGAIN_LATER,
            )
            return
        self._outbox.append(data)
        self._queued_bytes += len(data)
        self.wake()

    # -- input --------------------------------------------------------------------------

    def receive(self, data: bytes | str) -> None:
        """Handle one message from the replica."""
        if self.state is SessionState.CLOSING:
            return
        admission = self.rate_limit.admit()
        if admission is not Admission.PASS:
            self._rate_limited(admission)
            return
        try:
            if isinstance(data, str):
                raise ProtocolError(
                    ErrorCode.MALFORMED_FRAME, "frames are binary messages, got text"
                )
            started = time.perf_counter()
            frame = decode(data, max_bytes=self.max_frame_bytes)
            if type(frame) is Push:
                self.relay.metrics.observe_stage("decode", time.perf_counter() - started)
            self._handle(frame)
        except ProtocolError as exc:
            self.relay.metrics.frames_rejected += 1
            if self.state is SessionState.AWAITING_HELLO:
                self._fail(exc.code, exc.message, CLOSE_PROTOCOL_ERROR)
            else:
                self.deliver(Error(exc.code, exc.message))

    def _rate_limited(self, admission: Admission) -> None:
        """A frame over the rate: not decoded, not handled; say so, or end a flood."""
        self.relay.metrics.frames_rate_limited += 1
        rate = f"{self.rate_limit.rate:g}"
        if admission is Admission.CLOSE:
            self._fail(
                ErrorCode.RATE_LIMITED,
                f"rate limit: kept sending more than {rate} frames per second",
                CLOSE_POLICY_VIOLATION,
            )
            return
        self.deliver(
            Error(
                ErrorCode.RATE_LIMITED,
                f"rate limit: more than {rate} frames per second; this frame was dropped "
                "unread, send it again later",
            )
        )

    def _handle(self, frame: Frame) -> None:
        if self.state is SessionState.AWAITING_HELLO:
            if not isinstance(frame, Hello):
                raise ProtocolError(ErrorCode.NOT_AUTHENTICATED, "the first frame must be hello")
            self._hello(frame)
        elif isinstance(frame, Subscribe):
            self._subscribe(frame)
        elif isinstance(frame, Push):
            assert self.principal is not None
            if len(frame.changes) > self.max_changes_per_frame:
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"push of {len(frame.changes)} changes: at most "
                    f"{self.max_changes_per_frame} per frame (welcome.max_changes_per_frame)",
                )
            followups: list[Frame] = []
            verdicts = self.relay.push(self, frame.changes, followups)
            if verdicts is not None:  # else they come to deliver_verdicts (group commit)
                self.deliver_verdicts(verdicts, followups)
        elif isinstance(frame, Flush):
            # Behind any backlog and the fan-out held for it, like a fan-out frame: when it
            # arrives, everything accepted before it has been sent.
            self.deliver_fanout(Flushed(frame.request_id, self.relay.seq))
        elif isinstance(frame, Admin):
            assert self.principal is not None
            self.deliver(self.relay.admin(self.principal, frame))
        elif isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.MALFORMED_FRAME, "hello was already received")
        else:
            raise ProtocolError(
                ErrorCode.UNKNOWN_FRAME_TYPE, f"a replica does not send {type(frame).TYPE!r} frames"
            )

    def _hello(self, hello: Hello) -> None:
        versions = sorted(set(hello.versions) & set(SUPPORTED_VERSIONS))
        if not versions:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version: replica speaks {list(hello.versions)}, "
                f"relay speaks {list(SUPPORTED_VERSIONS)}",
            )
        try:
            identity = self.authority.verify(hello.token)
        except AuthError as exc:
            # Why, for the operator; never the token itself.
            log.warning("refused a token from replica %r: %s", hello.replica_id[:64], exc)
            self._fail(ErrorCode.AUTH_FAILED, str(exc), CLOSE_POLICY_VIOLATION)
            return
        joined = self.relay.join(self, hello.replica_id, identity)
        if isinstance(joined, JoinRefused):
            self._fail(ErrorCode.AUTH_FAILED, joined.message, CLOSE_POLICY_VIOLATION)
            return
        self.principal = joined.principal
        if identity.expires_at is not None:  # the same leeway the handshake allowed
            self.expires_at = identity.expires_at + self.authority.leeway
        self.state = SessionState.READY
        self.deliver(
            Welcome(
                versions[-1],
                identity.user,
                self.relay.server_id,
                joined.schema.to_wire(),
                joined.readable,
                self.max_frame_bytes if versions[-1] >= 2 else None,
                self.max_changes_per_frame if versions[-1] >= 2 else None,
            )
        )

    def expire(self) -> None:
        """The token ran out while connected: end the session with a clear reason."""
        if self.state is not SessionState.CLOSING:
            self._fail(ErrorCode.AUTH_FAILED, "the token has expired", CLOSE_POLICY_VIOLATION)

    def _subscribe(self, subscribe: Subscribe) -> None:
        assert self.principal is not None
        unknown = [name for name in subscribe.objects if name not in self.relay.schema.objects]
        if unknown:
            raise ProtocolError(ErrorCode.UNKNOWN_OBJECT, f"no object type(s) {', '.join(unknown)}")
        busy = sorted(
            name for name in subscribe.objects if any(name in c for c in self._catching_up)
        )
        if busy:
            # Each backlog lists the records it will send: one per object at a time keeps
            # what a connection can make the relay hold and do bounded.
            raise ProtocolError(
                ErrorCode.MALFORMED_FRAME,
                f"subscribe: {', '.join(busy)} still catching up on this connection (one "
                "subscribe per object until its caught_up)",
            )
        self.subscriptions.update(subscribe.objects)
        backlog = self.relay.backlog(self.principal, subscribe.objects, subscribe.cursor)
        self._backlogs.append(backlog)
        self._catching_up.append(frozenset(subscribe.objects))
        self.wake()

    def _fail(self, code: ErrorCode, message: str, close_code: int) -> None:
        self._outbox.append(encode(Error(code, message, fatal=True)))
        self.state = SessionState.CLOSING
        self.close_code = close_code
        self.close_reason = message[:120]
        self.wake()  # the transport sends the error, then closes

    def connection_lost(self) -> None:
        """The transport closed; the relay forgets this session."""
        self.state = SessionState.CLOSING
        self.relay.detach(self)
