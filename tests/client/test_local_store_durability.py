"""Pending changes and local records survive closing the store and ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crdtsync import Client, Schema, SchemaError, Status, StoreError
from crdtsync.client.store import LocalStore
from tests.helpers.harness import EXAMPLE_CONFIG, push_and_ack


def test_records_and_pending_changes_survive_reopening(schema: Schema, store_path: str) -> None:
    client = Client(store=store_path, schema=schema)
    synced = client.create("Account", {"Name": "Synced"})
    push_and_ack(client)
    client.update(synced, {"Industry": "Energy"})
    new = client.create("Contact", {"LastName": "Lovelace", "Phone": "123"})
    before_pending, before_records = client.pending(), client.records()
    client.close()

    reopened = Client(store=store_path, schema=schema)
    assert reopened.pending() == before_pending
    assert reopened.records() == before_records
    assert reopened.get(new).status is Status.PENDING  # type: ignore[union-attr]
    reopened.close()


def test_a_change_in_flight_when_the_process_died_is_pending_again_with_its_id(
    schema: Schema, store_path: str
) -> None:
    client = Client(store=store_path, schema=schema)
    rid = client.create("Account", {"Name": "In flight"})
    [sent] = client.replica.outgoing()  # sent; the process dies before the verdict
    assert client.get(rid).status is Status.SYNCING  # type: ignore[union-attr]
    client.close()  # no connection_lost: nothing requeued it

    reopened = Client(store=store_path, schema=schema)
    assert reopened.get(rid).status is Status.PENDING  # type: ignore[union-attr]
    [again] = reopened.replica.outgoing()  # retransmitted, so the relay applies it once
    assert (again.change_id, again.delta) == (sent.change_id, sent.delta)
    reopened.close()


def test_replica_identity_and_client_id_survive_reopening(schema: Schema, store_path: str) -> None:
    client = Client(store=store_path, schema=schema)
    identity = (client.replica_id, client.replica.client_id)
    client.close()
    reopened = Client(store=store_path, schema=schema)
    assert (reopened.replica_id, reopened.replica.client_id) == identity
    reopened.close()


def test_reopening_without_a_schema_uses_the_cached_one(schema: Schema, store_path: str) -> None:
    Client(store=store_path, schema=schema).close()
    reopened = Client(store=store_path)
    assert reopened.schema.to_wire() == schema.to_wire()
    rid = reopened.create("Account", {"Name": "Acme"})
    assert reopened.get(rid) is not None
    reopened.close()


def test_a_new_store_without_a_schema_is_a_clear_error(store_path: str) -> None:
    with pytest.raises(SchemaError, match="no schema"):
        Client(store=store_path)


def test_a_file_that_is_not_a_store_is_refused_clearly(tmp_path: Path, schema: Schema) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt"):
        Client(store=str(bogus), schema=schema)
    assert bogus.read_bytes().startswith(b"these are my notes")


def test_a_store_of_a_newer_format_is_refused(store_path: str, schema: Schema) -> None:
    store = LocalStore(store_path)
    with store.transaction():
        store.set_meta("format_version", 99)
    store.close()
    with pytest.raises(StoreError, match="format 99"):
        Client(store=store_path, schema=schema)


def test_memory_store_works_and_is_private(schema: Schema) -> None:
    one, two = Client(store=":memory:", schema=schema), Client(store=":memory:", schema=schema)
    one.create("Account", {"Name": "Only here"})
    assert len(one.records()) == 1 and two.records() == []
    one.close()
    two.close()


WRITER = textwrap.dedent(
    """
    import sys
    from crdtsync import Client, Schema

    client = Client(store=sys.argv[1], schema=Schema.from_toml(sys.argv[2]))
    rid = client.create("Account", {"Name": "Acme", "Employees": 0})
    print("created", rid, flush=True)
    for n in range(1, 100_000):
        client.update(rid, {"Employees": n})
        task = client.create("Task", {"Subject": f"task {n}"})
        print("done", n, task, flush=True)
    """
)


def test_pending_changes_survive_kill_9_of_the_client_process(
    tmp_path: Path, schema: Schema
) -> None:
    store_path = str(tmp_path / "killed.sqlite3")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    process = subprocess.Popen(
        [sys.executable, str(script), store_path, str(EXAMPLE_CONFIG)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline().split()
    assert first[0] == "created"
    rid = first[1]
    confirmed: list[tuple[int, str]] = []
    while len(confirmed) < 40:
        line = process.stdout.readline().split()
        confirmed.append((int(line[1]), line[2]))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    # What it printed before the kill and this test had not read yet was confirmed too.
    for rest in process.stdout.read().splitlines():
        line = rest.split()
        if len(line) == 3:  # not a line the kill cut short
            confirmed.append((int(line[1]), line[2]))

    client = Client(store=store_path, schema=schema)
    assert client.replica.store.integrity_check() == "ok"
    account = client.get(rid)
    assert account is not None
    last_confirmed = confirmed[-1][0]
    # Every edit that returned before the kill is there; at most the one in progress more.
    assert account.fields["Employees"] in (last_confirmed, last_confirmed + 1)
    pending_ids = [change.record_id for change in client.pending()]
    assert pending_ids[0] == rid
    assert {task for _, task in confirmed} <= set(pending_ids)
    assert len(pending_ids) == len(set(pending_ids))
    client.close()
