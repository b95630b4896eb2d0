"""The app's live state, driven by the Client's events: sans-I/O.

:class:`LiveFeed` keeps what the header shows (online, the progress of a running sync,
why the connection is down) and turns each :mod:`crdtsync.client.events` event into the
pushes open pages need:

* :class:`StatusPush` — the connection indicator or the progress bar changed;
* :class:`ChangedPush` — records or pending changes changed: live pages re-render;
* :class:`AlertPush` — records need attention: the pop-up. While a sync runs, the
  records that come back in conflict or unresolvable are collected and alerted
  together when it finishes; outside a sync (a remote delete arriving while catching
  up, access revoked) they are alerted at once.

Call :meth:`LiveFeed.handle` with each event; it returns the pushes to send, in order.
"""

from __future__ import annotations

import attrs

from crdtsync.client.events import (
    AccessLost,
    AuthenticationFailed,
    ConnectivityChanged,
    Event,
    EventsDropped,
    PendingChanged,
    RecordNeedsAttention,
    RemoteChangeArrived,
    SyncFailed,
    SyncFinished,
    SyncProgress,
    SyncStarted,
)


@attrs.frozen
class StatusPush:
    """The header changed (connection, progress)."""


@attrs.frozen
class ChangedPush:
    """Records or pending changes changed."""


@attrs.frozen
class AlertPush:
    """These records need the user's attention (conflict or unresolvable)."""

    needs_attention: tuple[RecordNeedsAttention, ...]


Push = StatusPush | ChangedPush | AlertPush


class LiveFeed:
    """The header state and the pushes of one app (one client)."""

    def __init__(self, *, online: bool = False) -> None:
        self.online = online
        self.progress: tuple[int, int] | None = None  #: (done, total) while a sync runs
        self.problem = ""  #: why the connection is down (when known)
        self.failure = ""  #: why the relay refused this client for good, and what to do
        self._attention: dict[str, RecordNeedsAttention] = {}

    def handle(self, event: Event) -> list[Push]:
        """The pushes ``event`` calls for (possibly none)."""
        if isinstance(event, ConnectivityChanged):
            self.online = event.online
            self.problem = "" if event.online else event.reason
            if event.online:
                self.failure = ""
            if not event.online:
                self.progress = None
            return [StatusPush()]
        if isinstance(event, SyncStarted):
            self.progress = (0, event.total)
            return [StatusPush(), ChangedPush()]
        if isinstance(event, SyncProgress):
            self.progress = (event.done, event.total)
            return [StatusPush(), ChangedPush()]
        if isinstance(event, SyncFinished):
            self.progress = None
            return [StatusPush(), ChangedPush(), *self._flush()]
        if isinstance(event, RecordNeedsAttention):
            self._attention[event.record_id] = event
            return [ChangedPush()] if self.progress is not None else [ChangedPush(), *self._flush()]
        if isinstance(event, AuthenticationFailed):
            self.problem = f"the relay refused the token: {event.message}"
            return [StatusPush()]
        if isinstance(event, SyncFailed):
            self.failure = event.message
            return [StatusPush()]
        if isinstance(event, PendingChanged | RemoteChangeArrived | AccessLost):
            return [ChangedPush()]
        if isinstance(event, EventsDropped):
            return [StatusPush(), ChangedPush()]
        return []

    def _flush(self) -> list[Push]:
        if not self._attention:
            return []
        alert = AlertPush(tuple(self._attention.values()))
        self._attention.clear()
        return [alert]
