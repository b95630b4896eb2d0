"""One suite for every relay storage backend: a SQLite file and a PostgreSQL database
must store, read back, roll back and compact the same way (``relay_database`` runs each
test on both)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pycrdt
import pytest
from crdtsync_server.database import is_postgres_url
from crdtsync_server.errors import StorageError
from crdtsync_server.storage import ChangeRow, RelayStorage, StoredRecord

from crdtsync.core.record import merged_state


@pytest.fixture
def storage(relay_database: str) -> Iterator[RelayStorage]:
    opened = RelayStorage(relay_database)
    yield opened
    opened.close()


def edits(*values: dict[str, Any]) -> list[bytes]:
    """The updates of writing each of ``values`` in turn to one record's ``fields``."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    fields = doc.get("fields", type=pycrdt.Map)
    out = []
    for written in values:
        before = doc.get_state()
        with doc.transaction():
            for key, value in written.items():
                fields[key] = value
        out.append(bytes(doc.get_update(before)))
    return out


def values_of(state: bytes) -> dict[str, Any]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(state)
    return dict(doc.get("fields", type=pycrdt.Map).to_py() or {})


def record(record_id: str, state: bytes, version: int, **extra: Any) -> StoredRecord:
    return StoredRecord(
        id=record_id,
        object="Account",
        state=state,
        version=version,
        created_by="alice",
        owner="alice",
        **extra,
    )


def change(seq: int, record_id: str, update: bytes, **fields: Any) -> ChangeRow:
    return ChangeRow(
        seq=seq,
        record_id=record_id,
        object="Account",
        change_id=f"c{seq}",
        replica="phone",
        user="alice",
        kind="update",
        fields=fields,
        update=update,
        at=1_000.0 + seq,
    )


def accept(storage: RelayStorage, record_id: str, update: bytes, **fields: Any) -> int:
    """Log one accepted change (its row written as a snapshot); returns its version."""
    with storage.transaction():
        seq = storage.next_seq()
        previous = storage.get_record(record_id)
        state = update if previous is None else merged_state(previous.state, [update])
        storage.put_record(record(record_id, state, seq))
        storage.add_change(change(seq, record_id, update, **fields))
    return seq


def test_a_record_reads_back_as_written_inside_its_transaction_and_after(
    storage: RelayStorage, relay_database: str
) -> None:
    (update,) = edits({"Name": "Acme", "Employees": 12})
    with storage.transaction():
        storage.put_record(record("r1", update, storage.next_seq()))
        assert storage.get_record("r1") == record("r1", update, 1)  # its own write
        assert storage.live_record_exists("Account", "r1")
    assert storage.get_record("r1") == record("r1", update, 1)
    assert storage.get_records(["r1", "nope"]) == {"r1": record("r1", update, 1)}
    assert not storage.live_record_exists("Contact", "r1")
    assert storage.get_record("nope") is None
    storage.close()
    again = RelayStorage(relay_database, create=False)
    try:
        assert again.get_record("r1") == record("r1", update, 1)
        assert values_of(again.get_record("r1").state) == {"Name": "Acme", "Employees": 12}
    finally:
        again.close()


def test_a_deleted_record_is_no_longer_live(storage: RelayStorage) -> None:
    (update,) = edits({"Name": "Acme"})
    accept(storage, "r1", update)
    with storage.transaction():
        storage.put_record(record("r1", update, storage.next_seq(), deleted=True))
    assert not storage.live_record_exists("Account", "r1")
    assert storage.get_record("r1") == record("r1", update, 2, deleted=True)


def test_a_snapshot_row_with_changes_logged_after_it_reads_as_their_merge(
    storage: RelayStorage,
) -> None:
    first, second, third = edits({"Name": "Acme"}, {"Employees": 3}, {"Name": "Acme Corp"})
    accept(storage, "r1", first, Name="Acme")
    with storage.transaction():  # logged only: the row stays the snapshot at version 1
        for update in (second, third):
            storage.add_change(change(storage.next_seq(), "r1", update))
    stood = storage.get_record("r1")
    assert stood is not None
    assert (stood.version, stood.behind) == (3, 2)
    assert values_of(stood.state) == {"Name": "Acme Corp", "Employees": 3}
    head = storage.record_heads(["r1"])["r1"]
    assert (head.version, head.state, head.owner) == (1, b"", "alice")
    assert storage.updates_since(["r1"], 1) == {"r1": [(2, second), (3, third)]}


def test_the_log_answers_by_change_id_by_record_and_by_position(storage: RelayStorage) -> None:
    first, second = edits({"Name": "Acme"}, {"Name": "Acme Corp", "Employees": 5})
    accept(storage, "r1", first, Name="Acme")
    accept(storage, "r2", first, Name="Acme")
    accept(storage, "r1", second, Name="Acme Corp", Employees=5)
    assert storage.known_change_ids(["c1", "c3", "c9"]) == {"c1", "c3"}
    found = storage.find_change("c3")
    assert found == change(3, "r1", second, Name="Acme Corp", Employees=5)
    assert storage.find_change("c9") is None
    assert [row.seq for row in storage.changes_of("r1")] == [1, 3]
    assert [row.seq for row in storage.changes_of("r1", after=1)] == [3]
    described = storage.change_fields("r1")
    assert [(row.seq, row.update, dict(row.fields)) for row in described] == [
        (1, b"", {"Name": "Acme"}),
        (3, b"", {"Name": "Acme Corp", "Employees": 5}),
    ]
    assert storage.field_value_at("r1", "Name", 2) == "Acme"
    assert storage.field_value_at("r1", "Name", 3) == "Acme Corp"
    assert storage.field_value_at("r1", "Phone", 3) is None
    state_at_1 = storage.state_at("r1", 1)
    assert state_at_1 is not None and values_of(state_at_1) == {"Name": "Acme"}
    assert storage.record_ids_since(["Account"], 1) == ["r2", "r1"]  # oldest change first
    assert storage.record_ids_since(["Contact"], 0) == []


def test_a_transaction_of_many_records_and_changes_stores_every_one(
    storage: RelayStorage,
) -> None:
    count = 1_207
    updates = {f"r{i}": edits({"Name": f"Acme {i}", "Employees": i})[0] for i in range(count)}
    with storage.transaction():
        for record_id, update in updates.items():
            seq = storage.next_seq()
            storage.put_record(record(record_id, update, seq))
            storage.add_change(change(seq, record_id, update, Name=record_id))
    stored = storage.get_records(list(updates))
    assert {rid: values_of(r.state) for rid, r in stored.items()} == {
        f"r{i}": {"Name": f"Acme {i}", "Employees": i} for i in range(count)
    }
    logged = [storage.find_change(f"c{seq}") for seq in range(1, count + 1)]
    assert [row.record_id for row in logged if row is not None] == list(updates)
    assert storage.seq == count


def test_sequence_numbers_survive_a_reopen_and_a_rollback_gives_them_back(
    storage: RelayStorage, relay_database: str
) -> None:
    (update,) = edits({"Name": "Acme"})
    accept(storage, "r1", update)

    def failing_frame() -> None:
        with storage.transaction():
            storage.put_record(record("r2", update, storage.next_seq()))
            storage.add_change(change(storage.seq, "r2", update))
            raise RuntimeError("the frame fails")

    with pytest.raises(RuntimeError):
        failing_frame()
    assert storage.seq == 1
    assert storage.get_record("r2") is None and storage.known_change_ids(["c2"]) == set()
    storage.close()
    again = RelayStorage(relay_database)
    try:
        assert again.seq == 1
        assert again.next_seq() == 2
    finally:
        again.close()


def test_a_savepoint_undone_leaves_the_rest_of_its_transaction(storage: RelayStorage) -> None:
    first, second = edits({"Name": "Acme"}, {"Name": "Other"})

    def failing_frame() -> None:
        with storage.savepoint():
            storage.put_record(record("r2", second, storage.next_seq()))
            storage.add_change(change(storage.seq, "r2", second))
            storage.bind_client_id(77, "laptop")
            raise RuntimeError("this frame fails alone")

    with storage.transaction():
        storage.put_record(record("r1", first, storage.next_seq()))
        storage.add_change(change(storage.seq, "r1", first))
        with pytest.raises(RuntimeError):
            failing_frame()
    assert storage.seq == 1
    assert storage.get_record("r1") == record("r1", first, 1)
    assert storage.get_record("r2") is None
    assert storage.known_change_ids(["c1", "c2"]) == {"c1"}
    assert storage.client_id_owner(77) is None


def test_unique_values_name_their_holder_until_replaced(storage: RelayStorage) -> None:
    with storage.transaction():
        storage.set_uniques("Contact", "r1", {"Email": "a@example.com", "Phone": None})
    assert storage.unique_holder("Contact", "Email", "a@example.com") == "r1"
    assert storage.unique_holder("Contact", "Phone", None) is None
    with storage.transaction():
        storage.set_uniques("Contact", "r1", {"Email": "b@example.com"})
    assert storage.unique_holder("Contact", "Email", "a@example.com") is None
    assert storage.unique_holder("Contact", "Email", "b@example.com") == "r1"
    assert storage.unique_holder("Account", "Email", "b@example.com") is None


def test_a_client_id_stays_bound_to_the_first_replica_that_used_it(
    storage: RelayStorage, relay_database: str
) -> None:
    big = 2**53 + 7  # CRDT client ids are up to 53 bits: stored exactly
    with storage.transaction():
        storage.bind_client_id(big, "phone")
        storage.bind_client_id(big, "laptop")
    assert storage.client_id_owner(big) == "phone"
    storage.close()
    again = RelayStorage(relay_database)
    try:
        assert again.client_id_owner(big) == "phone"
        assert again.client_id_owner(5) is None
    finally:
        again.close()


def test_refused_operations_are_found_by_overlap(storage: RelayStorage) -> None:
    with storage.transaction():
        storage.add_refused("r1", "bad-change", {41: (10, 20)})
    assert storage.refused_by("r1", 41, 19, 25) == "bad-change"
    assert storage.refused_by("r1", 41, 20, 25) is None  # [10, 20) ends before 20
    assert storage.refused_by("r1", 42, 10, 20) is None
    assert storage.refused_by("r2", 41, 10, 20) is None


def test_a_replica_belongs_to_its_first_user(storage: RelayStorage) -> None:
    storage.bind_replica("phone", "alice")
    storage.bind_replica("phone", "mallory")
    assert storage.replica_user("phone") == "alice"
    assert storage.replica_user("tablet") is None


def test_shares_are_set_changed_and_removed(storage: RelayStorage) -> None:
    with storage.transaction():
        storage.set_share("r1", "bob", 1)
        storage.set_share("r1", "carol", 1)
        storage.set_share("r1", "bob", 2)
    assert storage.shares_of("r1") == {"bob": 2, "carol": 1}
    with storage.transaction():
        storage.set_share("r1", "carol", None)
    assert storage.shares_of_records(["r1", "r2"]) == {"r1": {"bob": 2}, "r2": {}}


def test_access_changes_are_logged_per_user(storage: RelayStorage) -> None:
    with storage.transaction():
        storage.log_access(3, "r1", "bob", True)
        storage.log_access(5, "r1", "bob", False)
        storage.log_access(7, "r2", "bob", True)
        storage.log_access(8, "r1", "carol", True)
    assert storage.access_gained_at("r1", "bob") == 3
    assert storage.access_gained_at("r1", "dave") == 0
    assert storage.access_events("bob", 0) == {"r1": False, "r2": True}
    assert storage.access_events("bob", 5) == {"r2": True}


def test_hidden_fields_are_remembered_per_replica(storage: RelayStorage) -> None:
    storage.remember_hidden("phone", {"Account": frozenset({"Revenue"})})
    storage.remember_hidden("phone", {"Account": frozenset({"Revenue", "Phone"})})
    assert storage.ever_hidden("phone") == {"Account": frozenset({"Revenue", "Phone"})}
    assert storage.ever_hidden("laptop") == {}


def test_meta_values_keep_their_type(storage: RelayStorage) -> None:
    with storage.transaction():
        storage.set_meta("relay_client_id", 2**40 + 3)
        storage.set_meta("relay_id", "relay-1")
    assert storage.get_meta("relay_client_id") == 2**40 + 3
    assert storage.get_meta("relay_id") == "relay-1"
    assert storage.get_meta("absent", "default") == "default"


def test_compaction_keeps_every_records_state_and_every_changes_facts(
    storage: RelayStorage,
) -> None:
    first, second, third = edits({"Name": "Acme"}, {"Employees": 3}, {"Name": "Acme Corp"})
    accept(storage, "r1", first, Name="Acme")
    with storage.transaction():  # logged after the row's snapshot
        storage.add_change(change(storage.next_seq(), "r1", second, Employees=3))
    accept(storage, "r2", third, Name="Acme Corp")
    before = {rid: storage.get_record(rid) for rid in ("r1", "r2")}
    assert storage.compact(2, chunk=1) == 2
    assert storage.compacted_through() == 2
    after = {rid: storage.get_record(rid) for rid in ("r1", "r2")}
    for rid, was in before.items():
        now = after[rid]
        assert was is not None and now is not None
        assert values_of(now.state) == values_of(was.state)
        assert now.version == was.version
    compacted = storage.find_change("c2")
    assert compacted is not None and compacted.compacted and compacted.update == b""
    assert dict(compacted.fields) == {"Employees": 3}
    assert storage.find_change("c3") == change(3, "r2", third, Name="Acme Corp")
    assert storage.integrity_check() == "ok"


def test_the_last_change_before_a_moment_is_found(storage: RelayStorage) -> None:
    (update,) = edits({"Name": "Acme"})
    with storage.transaction():
        for _ in range(5):
            storage.add_change(change(storage.next_seq(), "r1", update))
    assert storage.seq_before(1_003.5) == 3  # changes are at 1001.0 … 1005.0
    assert storage.seq_before(1_000.0) == 0
    assert storage.seq_before(time.time()) == 5


def test_opening_without_create_refuses_a_database_with_no_relay_tables(
    relay_database: str,
) -> None:
    with pytest.raises(StorageError, match="no relay database there"):
        RelayStorage(relay_database, create=False)


def test_a_database_of_something_else_is_refused_and_left_alone(relay_database: str) -> None:
    if is_postgres_url(relay_database):
        with psycopg.connect(relay_database, autocommit=True) as other:
            other.execute("CREATE TABLE invoices (id integer)")
    else:
        with sqlite3.connect(relay_database) as other:
            other.execute("CREATE TABLE invoices (id integer)")
    with pytest.raises(StorageError, match="not a crdtsync relay database"):
        RelayStorage(relay_database)
    if is_postgres_url(relay_database):
        with psycopg.connect(relay_database) as other:
            tables = [
                row[0]
                for row in other.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            ]
    else:
        with sqlite3.connect(relay_database) as other:
            tables = [row[0] for row in other.execute("SELECT name FROM sqlite_master")]
    assert tables == ["invoices"]
