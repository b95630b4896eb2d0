from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtsync import Client, Schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "server" / "example" / "app.toml"


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


def push_and_ack(client: Client, first_version: int = 1) -> list[str]:
    """Play the relay accepting every pending change; return the record ids acked."""
    acked = []
    for version, change in enumerate(client.replica.outgoing(), start=first_version):
        assert client.replica.apply_ack(change.change_id, version)
        acked.append(change.record_id)
    return acked


@pytest.fixture
def synced_account(client: Client) -> tuple[Client, str]:
    """A client holding one Account ("Acme") that the relay accepted as version 1."""
    rid = client.create("Account", {"Name": "Acme"})
    assert push_and_ack(client) == [rid]
    return client, rid
