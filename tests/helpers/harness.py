"""A real relay on loopback for end-to-end tests (:class:`RelayHarness`), raw websocket
connections speaking the wire protocol (:class:`RawConnection`, :class:`Wire`), and
:func:`eventually` for waiting on what arrives asynchronously."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crdtsync import Client
from crdtsync.core.protocol import MAX_RELAY_FRAME_BYTES, Changes, RecordChange, decode

ROOT = Path(__file__).resolve().parents[2]


EXAMPLE_CONFIG = ROOT / "server" / "example" / "app.toml"


def push_and_ack(client: Client, first_version: int = 1) -> list[str]:
    """Play the relay accepting every pending change; return the record ids acked."""
    acked = []
    for version, change in enumerate(client.replica.outgoing(), start=first_version):
        assert client.replica.apply_ack(change.change_id, version)
        acked.append(change.record_id)
    return acked


class RelayHarness:
    """Starts the relay on a free loopback port and makes clients for it."""

    def __init__(self, tmp_path: Path, database: str | None = None, **overrides: object) -> None:
        """A relay on ``database`` (default: a SQLite file in ``tmp_path``); a PostgreSQL
        database gets a random secret (there is no file to keep one beside)."""
        from crdtsync_server.app import RelayServer
        from crdtsync_server.config import RelayConfig
        from crdtsync_server.database import is_postgres_url

        self.tmp_path = tmp_path
        self.database = database or str(tmp_path / "relay.sqlite3")
        if is_postgres_url(self.database):
            overrides.setdefault("secret", secrets.token_urlsafe(48))
        self.overrides = overrides
        self.config = RelayConfig.from_toml(
            EXAMPLE_CONFIG, database=self.database, port=0, **overrides
        )
        self.server = RelayServer(self.config)
        self.port = 0

    async def start(self) -> None:
        from crdtsync_server.app import RelayServer
        from crdtsync_server.config import RelayConfig

        if self.port:  # restart on the same port and database
            self.config = RelayConfig.from_toml(
                EXAMPLE_CONFIG, database=self.database, port=self.port, **self.overrides
            )
            self.server = RelayServer(self.config)
        await self.server.start()
        self.port = self.server.port

    async def stop(self) -> None:
        await self.server.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Any:
        """The running relay's storage, used on the relay's thread."""
        return OnRelayThread(self.server, self.server.storage)

    def token(self, user: str) -> str:

        return self.server.authority.issue(user)

    def client(
        self, user: str, store: str | None = None, *, url: str | None = None, **options: object
    ) -> Client:
        """A client of ``user`` (its own store), on the relay or on ``url`` (a proxy)."""
        path = store or str(self.tmp_path / f"{user}.sqlite3")
        options.setdefault("backoff_initial", 0.05)
        options.setdefault("backoff_max", 0.5)
        return Client(
            url or self.url, token=self.token(user), store=path, schema=EXAMPLE_CONFIG, **options
        )  # type: ignore[arg-type]


class OnRelayThread:
    """An object of a running relay (its storage, say), each use of it made on the
    relay's thread, where it belongs: a test reads it without racing the relay."""

    def __init__(self, server: Any, target: object) -> None:
        assert target is not None, "the relay is not started"
        self._server = server
        self._target = target

    def __getattr__(self, name: str) -> Any:
        server = self._server
        value = server.inspect(getattr, self._target, name)
        if not callable(value):
            return value

        def on_relay_thread(*args: Any, **kwargs: Any) -> Any:
            return server.inspect(lambda: value(*args, **kwargs))

        return on_relay_thread


async def eventually(
    check: Callable[[], object],
    timeout: float = 5.0,
    explain: Callable[..., object] | None = None,
    *args: object,
) -> None:
    """Wait until ``check()`` is truthy (polling), or fail with what it last returned
    (and what ``explain(*args)`` says, if given)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            why = "" if explain is None else f": {explain(*args)}"
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r}){why}")
        await asyncio.sleep(0.02)


class RawConnection:
    """A hand-driven protocol connection, for frames a well-behaved client never sends."""

    def __init__(self, websocket: object) -> None:
        self.websocket = websocket

    async def send(self, frame: object) -> None:
        from crdtsync.core.protocol import encode

        await self.websocket.send(frame if isinstance(frame, bytes | str) else encode(frame))  # type: ignore[attr-defined,arg-type]

    async def receive(self, timeout: float = 5.0) -> object:
        from crdtsync.core.protocol import decode

        async with asyncio.timeout(timeout):
            return decode(await self.websocket.recv())  # type: ignore[attr-defined]

    async def receive_until(self, kind: type, timeout: float = 5.0) -> list[object]:
        """Every frame up to and including the first of type ``kind``."""
        frames = []
        while True:
            frame = await self.receive(timeout)
            frames.append(frame)
            if isinstance(frame, kind):
                return frames

    async def handshake(
        self,
        token: str,
        replica: str = "raw-replica",
        cursor: int = 0,
        objects: tuple[str, ...] = ("Account", "Contact", "Opportunity", "Task"),
    ) -> list[object]:
        from crdtsync.core.protocol import CaughtUp, Hello, Subscribe, Welcome

        await self.send(Hello((1,), token, replica))
        welcome = await self.receive()
        assert isinstance(welcome, Welcome), welcome
        await self.send(Subscribe(objects, cursor))
        return await self.receive_until(CaughtUp)


class Wire:
    """Every message the relay sent, filed under the user of the receiving session
    (``None`` before a hello succeeded)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | None, bytes]] = []

    def to(self, user: str) -> list[bytes]:
        return [data for who, data in self.sent if who == user]

    def frames_to(self, user: str) -> list[Any]:
        return [decode(data, max_bytes=MAX_RELAY_FRAME_BYTES) for data in self.to(user)]

    def record_changes_to(self, user: str, record_id: str) -> list[RecordChange]:
        return [
            item
            for frame in self.frames_to(user)
            if isinstance(frame, Changes)
            for item in frame.items
            if item.record_id == record_id
        ]


class TasksForPlannersOnly(RelayHarness):
    """The example app where only the ``planner`` role may see Tasks."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        from crdtsync_server.app import RelayServer
        from crdtsync_server.config import RelayConfig

        line = 'Task        = ["create", "read", "update", "delete"]'
        toml = EXAMPLE_CONFIG.read_text()
        assert toml.count(line) == 1
        toml = toml.replace(line, "") + f"\n[roles.planner]\n{line}\n"
        path = tmp_path / "planners.toml"
        path.write_text(toml)
        self.config = RelayConfig.from_toml(path, database=str(tmp_path / "relay.sqlite3"), port=0)
        self.server = RelayServer(self.config)


def open_relay_database(database: str | Path) -> Any:
    """A connection to read a relay database (or a client store) directly, not through a
    relay: a SQLite file read-only, or the PostgreSQL database (``?`` placeholders work
    on both). Close it after use."""
    import sqlite3

    from crdtsync_server.database import PostgresDatabase, is_postgres_url

    if is_postgres_url(str(database)):
        return PostgresDatabase(str(database))
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True)
