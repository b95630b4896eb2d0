"""Hearing at once what other relays on the same PostgreSQL database committed.

A relay's commit that moves the version sequence also sends a notice on
:data:`~.database.COMMITS_CHANNEL`, in the statement that writes the sequence row (the
server delivers it when, and only if, the transaction commits). Every relay listens on
a connection of its own, and a notice from another relay wakes its follower::

    relay A commits ── NOTIFY crdtsync_commits 'A-node 1042' ──▶ relay B's CommitListener
                                                                  └─▶ wake()
    relay B's follower: woken (or its interval ran out) ─▶ Relay.follow() on B's relay thread

A notice only says "look now": what the follower takes in is read from the log, as it
always was, so a notice that never arrives costs time, never a change. The follower
still looks by itself: every second while the listener listens (a safety net, should a
connection go quiet without breaking), every 50 ms while it does not. A listener whose
connection breaks (the server restarted, the network cut) connects again with backoff,
and once it listens again it wakes the follower once, for whatever was committed in
between.

Notices wait in PostgreSQL's notification queue, one for the whole server, until every
listener has read them: a relay that stops reading (frozen, cut off without its
connection breaking) would hold it back until it fills, and then every commit that
sends a notice would fail. So every relay ends, every ten seconds, the listening
sessions blocked on writing to their relay once the queue is notably in use
(``PostgresDatabase.end_stuck_listeners``); a live relay listens again at once.

The relay's own notices are ignored (each carries the committing connection's
:attr:`~.database.PostgresDatabase.node`): its own commits need no catching up. Notices
that arrive together wake the follower once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .database import COMMITS_CHANNEL, LISTENER_NAME

log = logging.getLogger("crdtsync.server")

#: Seconds before the first attempt to listen again after the connection broke; each
#: failed attempt doubles it, up to :data:`RETRY_MAX`.
RETRY_FIRST = 0.1
RETRY_MAX = 5.0


class CommitListener:
    """Listens for other relays' commit notices on a connection of its own and calls
    ``wake`` (on the event loop) for each burst of them; see the module docstring.

    :meth:`run` until cancelled; :attr:`listening` says whether it listens now."""

    def __init__(self, url: str, own_node: str, wake: Callable[[], None]) -> None:
        self._url = url
        self._own_node = own_node
        self._wake = wake
        #: LISTEN is in place: every commit from now on will be heard
        self.listening = False
        #: notices from other relays heard so far (for tests and metrics)
        self.heard = 0

    async def run(self) -> None:
        """Listen, and listen again whenever the connection breaks (until cancelled)."""
        delay = RETRY_FIRST
        failing = False
        while True:
            try:
                connection = await self._connect()
            except Exception as exc:  # noqa: BLE001 - the database is away: retry
                if not failing:
                    log.warning(
                        "cannot listen for other relays' commits (%s); looking for them "
                        "by polling meanwhile, and trying again",
                        _first_line(exc),
                    )
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if failing:
                log.info("listening for other relays' commits again")
            failing, delay = False, RETRY_FIRST
            try:
                await self._listen(connection)
            except Exception as exc:  # noqa: BLE001 - the connection broke: listen again
                log.warning(
                    "stopped hearing of other relays' commits (%s); listening again",
                    _first_line(exc),
                )
            finally:
                self.listening = False
                await _close(connection)

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=10,
            application_name=LISTENER_NAME,
            # a connection that goes quiet without breaking is noticed within ~25 s
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    async def _listen(self, connection: Any) -> None:
        """LISTEN, wake the follower once (for what was committed while this was not
        listening), then wake it for every other relay's notice."""
        await connection.execute(f"LISTEN {COMMITS_CHANNEL}")
        self.listening = True
        self._wake()
        async for notice in connection.notifies():
            node, _, _seq = notice.payload.partition(" ")
            if node != self._own_node:
                self.heard += 1
                self._wake()  # an asyncio.Event: notices that arrive together wake once


async def _close(connection: Any) -> None:
    try:
        await connection.close()
    except Exception:  # a broken connection may fail to close: it is gone
        log.debug("closing the listening connection failed", exc_info=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
