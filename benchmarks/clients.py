"""Lean load-generator clients: one for the crdtsync relay, one for a pycrdt-websocket room.

Both keep their own work small so that a 2-core machine measures the server: changes
are pre-generated (:mod:`benchmarks.loads`), frames are built with the library's own
protocol code, and incoming frames other than the ones awaited are only counted.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pycrdt
from websockets.asyncio.client import ClientConnection, connect

from crdtsync.core.protocol import (
    MAX_RELAY_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    ChangeFrame,
    Conflict,
    Hello,
    Push,
    Rejected,
    Subscribe,
    Unresolvable,
    Verdict,
    Verdicts,
    Welcome,
    decode,
    encode,
)

from .loads import OBJECT, Change


@dataclass
class Tally:
    """What one connection's pushes got back."""

    acks: int = 0
    conflicts: int = 0  #: conflict verdicts naming concurrently edited fields
    invalid: int = 0  #: conflict verdicts naming validation errors
    unresolvable: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    fanout_items: int = 0
    problem: str = ""  #: the first refusal's message

    @property
    def verdicts(self) -> int:
        return self.acks + self.refused

    @property
    def refused(self) -> int:
        return self.conflicts + self.invalid + self.unresolvable + sum(self.errors.values())

    def add(self, verdict: Verdict) -> None:
        if isinstance(verdict, Ack):
            self.acks += 1
            return
        if isinstance(verdict, Conflict) and verdict.conflicts:
            self.conflicts += 1
        elif isinstance(verdict, Conflict):
            self.invalid += 1
        elif isinstance(verdict, Unresolvable):
            self.unresolvable += 1
        elif isinstance(verdict, Rejected):
            self.errors[verdict.code.value] += 1
        if not self.problem:
            self.problem = f"{type(verdict).__name__}: {verdict!r}"[:300]

    def merge(self, other: Tally) -> None:
        self.acks += other.acks
        self.conflicts += other.conflicts
        self.invalid += other.invalid
        self.unresolvable += other.unresolvable
        self.errors.update(other.errors)
        self.fanout_items += other.fanout_items
        self.problem = self.problem or other.problem


class RelayConnection:
    """One replica's websocket to the crdtsync relay.

    Pushes go out in frames of ``batch`` changes with at most ``window`` frames
    awaiting their verdicts. A change's ``base`` is the latest version this replica
    knows of the record (from acks and fan-out), or the first one for a ``stale``
    change; ``bases`` names its field with the same version.
    """

    def __init__(self, websocket: ClientConnection, replica: str) -> None:
        self.websocket = websocket
        self.replica = replica
        self.tally = Tally()
        self.versions: dict[str, int] = {}  #: latest known version of each record
        self.first_versions: dict[str, int] = {}
        self.edited: set[str] = set()  #: records with an acknowledged update (not create)
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()
        self._caught_up: asyncio.Future[int] | None = None
        self._progress = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, url: str, *, token: str, replica: str, objects: Sequence[str]
    ) -> RelayConnection:
        """Connect, say hello, subscribe to ``objects`` from cursor 0 and wait for caught_up."""
        websocket = await connect(url, compression=None, max_size=MAX_RELAY_FRAME_BYTES)
        try:
            await websocket.send(encode(Hello((PROTOCOL_VERSION,), token, replica)))
            welcome = decode(await websocket.recv(decode=False), max_bytes=MAX_RELAY_FRAME_BYTES)
            if not isinstance(welcome, Welcome):
                raise RuntimeError(f"expected welcome, got {welcome!r}")
            connection = cls(websocket, replica)
            connection._reader = asyncio.create_task(connection._read())
            await connection.subscribe(objects)
        except BaseException:
            await websocket.close()
            raise
        return connection

    async def subscribe(self, objects: Sequence[str]) -> int:
        self._caught_up = asyncio.get_running_loop().create_future()
        await self.websocket.send(encode(Subscribe(tuple(objects), 0)))
        return await self._caught_up

    async def close(self) -> None:
        await self.websocket.close()
        if self._reader is not None:
            await self._reader

    def reset_tally(self) -> None:
        self.tally = Tally()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is checked after each incoming frame."""
        while not condition():
            self._progress.clear()
            await self._progress.wait()

    async def push_all(self, changes: Sequence[Change], *, batch: int, window: int) -> None:
        """Push ``changes`` in order and wait for every verdict."""
        slots = asyncio.Semaphore(window)
        answered: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(changes), batch):
            await slots.acquire()
            frames = tuple(self._frame(change) for change in changes[start : start + batch])
            done: asyncio.Future[None] = loop.create_future()
            done.add_done_callback(lambda _: slots.release())
            self._pending.append(done)
            answered.append(done)
            await self.websocket.send(encode(Push(frames)))
        await asyncio.gather(*answered)

    def _frame(self, change: Change) -> ChangeFrame:
        known = self.first_versions if change.stale else self.versions
        base = known.get(change.record, 0) if change.kind != "create" else 0
        return ChangeFrame(
            change_id=change.change_id,
            record_id=change.record,
            object=OBJECT,
            kind=change.kind,
            base_version=base,
            field_bases={change.field: base} if change.field else {},
            delta=change.delta,
        )

    async def _read(self) -> None:
        try:
            async for message in self.websocket:
                if isinstance(message, str):
                    raise RuntimeError(f"{self.replica}: the relay sent a text message")
                self._receive(message)
                self._progress.set()
        finally:
            closed = ConnectionError(f"{self.replica}: the relay closed the connection")
            while self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_exception(closed)

    def _receive(self, message: bytes) -> None:
        payload = msgpack.unpackb(message, raw=False)
        kind = payload.get("type")
        if kind == "changes":
            self._seen(payload["items"])
        elif kind == "verdicts":
            self._verdicts(Verdicts.from_wire(payload))
        elif kind == "caught_up" and self._caught_up is not None:
            self._caught_up.set_result(int(payload["cursor"]))
        elif kind == "error":
            error = RuntimeError(f"{self.replica}: relay error {payload!r}")
            if self._pending:  # a push the relay could not read gets no verdicts
                self._pending.popleft().set_exception(error)
            else:
                raise error

    def _seen(self, items: list[dict[str, Any]]) -> None:
        self.tally.fanout_items += len(items)
        for item in items:
            self._know(item["record"], item["version"])

    def _know(self, record: str, version: int) -> None:
        self.first_versions.setdefault(record, version)
        if version > self.versions.get(record, 0):
            self.versions[record] = version

    def _verdicts(self, verdicts: Verdicts) -> None:
        for verdict in verdicts.items:
            self.tally.add(verdict)
            if isinstance(verdict, Ack):
                first = self.first_versions.setdefault(verdict.record_id, verdict.version)
                if verdict.version > first:
                    self.edited.add(verdict.record_id)
                self._know(verdict.record_id, verdict.version)
        self._pending.popleft().set_result(None)


class RoomConnection:
    """One websocket to one pycrdt-websocket room (one record's document).

    :meth:`sync` sends a Yjs sync step 1 and waits for the room's step 2: a room
    handles a connection's messages in order, so by then it has applied every update
    sent before. Updates the room broadcasts back are counted, not applied.
    """

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.echoes = 0
        self.server_state: bytes | None = None  #: the state vector of the room's step 1
        self._synced = asyncio.Event()
        self._greeted = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> RoomConnection:
        return cls(await connect(url, compression=None, max_size=None))

    async def greeted(self) -> bytes:
        """The state vector the room sent on connect (its sync step 1)."""
        await self._greeted.wait()
        assert self.server_state is not None
        return self.server_state

    async def send(self, message: bytes) -> None:
        await self.websocket.send(message)

    async def sync(self, step1: bytes) -> None:
        self._synced.clear()
        await self.websocket.send(step1)
        await self._synced.wait()

    async def close(self) -> None:
        await self.websocket.close()
        await self._reader

    async def _read(self) -> None:
        sync = pycrdt.YMessageType.SYNC
        async for message in self.websocket:
            if not isinstance(message, bytes) or len(message) < 2 or message[0] != sync:
                continue
            kind = message[1]
            if kind == pycrdt.YSyncMessageType.SYNC_UPDATE:
                self.echoes += 1
            elif kind == pycrdt.YSyncMessageType.SYNC_STEP2:
                self._synced.set()
            elif kind == pycrdt.YSyncMessageType.SYNC_STEP1 and self.server_state is None:
                self.server_state = bytes(pycrdt.read_message(message[2:]))
                self._greeted.set()
