"""Typed events a client emits, and the bounded fan-out that delivers them.

Apps show these as pop-ups and live indicators. Each subscriber gets its own bounded
queue: a subscriber that stops reading loses its *oldest* events, and is told how many
with an :class:`EventsDropped` event, instead of growing memory without bound or
slowing the replica down.
"""

from __future__ import annotations

import asyncio

import attrs

from .model import ChangeKind, Problem, Status


@attrs.frozen
class ConnectivityChanged:
    online: bool
    reason: str = ""


@attrs.frozen
class SyncStarted:
    total: int


@attrs.frozen
class SyncProgress:
    done: int
    total: int


@attrs.frozen(kw_only=True)
class SyncFinished:
    accepted: int = 0
    conflicts: int = 0
    unresolvable: int = 0
    errors: int = 0


@attrs.frozen
class PendingChanged:
    """The pending entry of a record changed status (``None``: it left the list)."""

    record_id: str
    object: str
    status: Status | None


@attrs.frozen
class RecordNeedsAttention:
    """A record's change came back as conflict or unresolvable."""

    record_id: str
    object: str
    status: Status
    problem: Problem


@attrs.frozen
class RemoteChangeArrived:
    record_id: str
    object: str
    kind: ChangeKind
    by: str | None = None


@attrs.frozen
class AccessLost:
    """This user may no longer read the record: it was removed from this replica (a
    pending change of it stays listed as unresolvable until dismissed)."""

    record_id: str
    object: str


@attrs.frozen
class AuthenticationFailed:
    """The relay refused the token (expired, wrongly signed, malformed). Pending changes
    are kept; give the client a new token with ``set_token``."""

    message: str


@attrs.frozen
class SyncFailed:
    """The relay refused this client for a reason retrying cannot fix (``code``: the
    protocol's error code, e.g. ``auth_failed``); ``message`` says what to do. The client
    keeps its pending changes and tries again slowly (at once after ``set_token``)."""

    code: str
    message: str


@attrs.frozen
class EventsDropped:
    """This subscriber fell behind and ``count`` older events were discarded."""

    count: int


Event = (
    ConnectivityChanged
    | SyncStarted
    | SyncProgress
    | SyncFinished
    | PendingChanged
    | RecordNeedsAttention
    | RemoteChangeArrived
    | AccessLost
    | AuthenticationFailed
    | SyncFailed
    | EventsDropped
)


class EventStream:
    """An async iterator over the events published after it was created.

    Close it (``close()``, or use it as an ``async with`` block) to stop receiving.
    """

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._dropped = 0
        bus._streams.append(self)

    def _put(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped += 1
        if self._dropped and self._queue.qsize() < self._queue.maxsize - 1:
            self._queue.put_nowait(EventsDropped(self._dropped))
            self._dropped = 0
        self._queue.put_nowait(event)

    def get_nowait(self) -> Event | None:
        """The next queued event, or ``None`` if there is none yet."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        if self in self._bus._streams:
            self._bus._streams.remove(self)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._queue.get()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class EventBus:
    """Publishes events to every open :class:`EventStream`. ``publish`` never blocks."""

    def __init__(self, maxsize: int = 1000) -> None:
        self._maxsize = maxsize
        self._streams: list[EventStream] = []

    def publish(self, event: Event) -> None:
        for stream in self._streams:
            stream._put(event)

    def subscribe(self) -> EventStream:
        """A stream of every event published from now on."""
        return EventStream(self, self._maxsize)
