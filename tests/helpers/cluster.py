"""Several relays on one PostgreSQL database, in this process: each in a thread of its
own with its own event loop (as each would be a process of its own: a relay waiting for
another's transaction blocks only its own loop)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from crdtsync import Client
from tests.helpers.harness import EXAMPLE_CONFIG


class RelayNode:
    """One relay on ``database`` in a thread (:meth:`start`, :meth:`stop`)."""

    def __init__(
        self, database: str, secret: str, home: Path, config: Path = EXAMPLE_CONFIG
    ) -> None:
        from crdtsync_server.app import RelayServer
        from crdtsync_server.config import RelayConfig

        self.home = home
        self.config = RelayConfig.from_toml(config, database=database, port=0, secret=secret)
        self.server = RelayServer(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> None:
        started: Future[None] = Future()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                await self.server.start()
            except Exception as exc:  # noqa: BLE001 (handed to the thread that waits)
                started.set_exception(exc)
                return
            started.set_result(None)
            try:
                await self._stopped.wait()
            finally:
                await self.server.close()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        started.result(timeout=30)

    def stop(self) -> None:
        """Close the relay (connections closed with 1001, the database closed)."""
        if self._thread is None:
            return
        assert self._loop is not None and self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=30)
        self._thread = None

    async def stop_soon(self) -> None:
        """:meth:`stop` from a test's event loop, which must keep running meanwhile (its
        clients answer the relay's closing handshakes)."""
        await asyncio.to_thread(self.stop)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def token(self, user: str) -> str:
        return self.config.token_authority().issue(user)

    def client(self, user: str, store: str | None = None, **options: Any) -> Client:
        """A client of ``user`` on this relay (``url=`` a list for several)."""
        options.setdefault("backoff_initial", 0.05)
        options.setdefault("backoff_max", 0.3)
        url = options.pop("url", None) or self.url
        return Client(
            url,
            token=self.token(user),
            store=store or str(self.home / f"{user}.sqlite3"),
            schema=EXAMPLE_CONFIG,
            **options,
        )


class Cluster:
    """``size`` relays on one PostgreSQL database, sharing one secret."""

    def __init__(self, database: str, home: Path, size: int = 3) -> None:
        self.secret = secrets.token_urlsafe(48)
        self.nodes = [RelayNode(database, self.secret, home) for _ in range(size)]

    def __enter__(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for node in self.nodes:
            node.stop()
