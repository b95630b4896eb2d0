from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from crdtsync_server.session import RelaySession

from crdtsync import Client, Schema
from tests.helpers.harness import (
    EXAMPLE_CONFIG,
    RelayHarness,
    Wire,
    push_and_ack,
)
from tests.helpers.pair import World
from tests.helpers.postgres import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def schema() -> Schema:
    return Schema.from_toml(EXAMPLE_CONFIG)


@pytest.fixture
def client(schema: Schema) -> Iterator[Client]:
    client = Client(store=":memory:", schema=schema)
    yield client
    client.close()


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "replica.sqlite3")


@pytest.fixture
def synced_account(client: Client) -> tuple[Client, str]:
    """A client holding one Account ("Acme") that the relay accepted as version 1."""
    rid = client.create("Account", {"Name": "Acme"})
    assert push_and_ack(client) == [rid]
    return client, rid


# -- PostgreSQL (the machine's server, else a private one; a fresh database per test) --


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    with postgres.database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def relay_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A relay database of each kind: a new SQLite file, a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "relay.sqlite3")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    with server.database() as url:
        yield url


# -- relay fixtures (real server, real websockets on loopback, real SQLite files) ------


@pytest.fixture
async def relay(tmp_path: Path, relay_database: str) -> AsyncIterator[RelayHarness]:
    """A relay on each kind of database (a SQLite file, a PostgreSQL database)."""
    harness = RelayHarness(tmp_path, relay_database)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


@pytest.fixture
def raw_connect(relay: RelayHarness) -> Callable[[], object]:
    from websockets.asyncio.client import connect

    def open_connection() -> object:
        return connect(relay.url, max_size=None)

    return open_connection


# -- the tap: every message a relay sends, by user --------------------------------------


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    tap = Wire()
    original = RelaySession.data_to_send

    def data_to_send(self: RelaySession) -> list[bytes]:
        out = original(self)
        user = self.principal.user if self.principal is not None else None
        tap.sent.extend((user, data) for data in out)
        return out

    monkeypatch.setattr(RelaySession, "data_to_send", data_to_send)
    return tap


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    yield world
    world.close()
