"""A ``changes`` frame is applied per record, not per item.

Records with no change of the user's are read in one query, staged, applied once at
the end of the frame (every update of a record in one pycrdt transaction) and written
in one statement; the others are applied item by item. Whatever the mix, the frame
leaves the store, the cursor and the events exactly as applying its items one by one
would, and a frame that fails or is killed anywhere leaves nothing of itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.client.events import Event, RemoteChangeArrived
from crdtsync.client.model import Status
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.protocol import Changes, RecordChange, encode
from crdtsync.core.record import RecordDoc
from crdtsync.core.schema import Schema
from tests.helpers.faults import run_until_killed
from tests.helpers.harness import EXAMPLE_CONFIG
from tests.helpers.pair import World

SCHEMA = Schema.from_toml(EXAMPLE_CONFIG)
SPEC = SCHEMA.object("Account")
RELAY_CLIENT_ID = 5


def test_a_frame_of_200_remote_changes_to_distinct_records_leaves_each_as_the_relay_holds_it(
    world: World,
) -> None:
    writer = world.replica()
    writer_pair = world.connect(writer)
    ids = [writer.create("Account", {"Name": f"A{i}", "Employees": i}) for i in range(200)]
    writer_pair.pump()
    reader = world.replica()
    events: list[Event] = []
    reader._on_event = events.append
    reader_pair = world.connect(reader, "bob")
    reader_pair.pump()
    events.clear()

    for i, record_id in enumerate(ids):
        writer.update(record_id, {"Employees": 1000 + i, "Active": i % 2 == 0})
    writer_pair.pump()
    before = len(reader_pair.to_client)
    reader_pair.pump()

    frames = [f for f in reader_pair.to_client[before:] if isinstance(f, Changes)]
    assert [len(frame.items) for frame in frames] == [200]  # one frame carried them all
    relay = {rid: world.storage.get_record(rid) for rid in ids}
    assert {r.id: (r.fields, r.version, r.status) for r in reader.records()} == {
        rid: (
            RecordDoc.from_update(SPEC, relay[rid].state).read(),  # type: ignore[union-attr]
            relay[rid].version,  # type: ignore[union-attr]
            Status.SYNCED,
        )
        for rid in ids
    }
    assert reader.cursor == frames[0].items[-1].version == writer.cursor
    assert [(e.record_id, e.kind, e.by) for e in events if isinstance(e, RemoteChangeArrived)] == [
        (rid, "update", "alice") for rid in ids
    ]
    # A record left as the relay holds it takes the user's next edit as any other.
    reader.update(ids[0], {"Employees": 5})
    reader_pair.pump()
    writer_pair.pump()
    assert writer.get(ids[0]).fields["Employees"] == 5  # type: ignore[union-attr]


# -- one frame against its items one by one ------------------------------------------------

#: records of the model: "a"… each (created by the relay, some held by the replica)
RECORDS = ("a", "b", "c", "d", "e")
ACTIONS = ("update", "update", "update", "stale", "delete", "revoke", "create")


class RelayModel:
    """The relay's side of a few records: each change an item of a frame."""

    def __init__(self) -> None:
        self.docs: dict[str, RecordDoc] = {}
        self.history: dict[str, list[RecordChange]] = {}
        self.version = 0

    def change(self, record_id: str, action: str, value: int) -> RecordChange | None:
        doc = self.docs.get(record_id)
        if action == "create" or doc is None:
            if doc is not None:
                return None
            doc = self.docs[record_id] = RecordDoc(SPEC, client_id=RELAY_CLIENT_ID)
            doc.write({"Name": record_id.upper(), "Employees": value, "Description": ""})
            return self._item(record_id, doc.full_update())
        if action == "stale":
            earlier = self.history.get(record_id)
            return earlier[value % len(earlier)] if earlier else None
        if action == "delete":
            del self.docs[record_id]
            return self._item(record_id, b"", deleted=True)
        if action == "revoke":
            return RecordChange(
                record_id=record_id, object="Account", version=self.version, revoked=True
            )
        state = doc.state()
        doc.write({"Employees": value} if value % 3 else {"Description": f"text {value}"})
        return self._item(record_id, doc.delta(state))

    def _item(self, record_id: str, update: bytes, *, deleted: bool = False) -> RecordChange:
        self.version += 1
        item = RecordChange(
            record_id=record_id,
            object="Account",
            version=self.version,
            update=update,
            deleted=deleted,
            by="bob",
        )
        self.history.setdefault(record_id, []).append(item)
        return item


def _store_rows(replica: Replica) -> tuple[Any, ...]:
    db = replica.store._db
    records = [tuple(row) for row in db.execute("SELECT * FROM records ORDER BY id")]
    pending = [tuple(row) for row in db.execute("SELECT * FROM pending ORDER BY record_id")]
    return records, pending, replica.cursor


def _view(replica: Replica) -> tuple[Any, ...]:
    """What the user sees (and the outbox the relay will get)."""
    return (
        {r.id: (r.fields, r.version, r.status) for r in replica.records()},
        [(c.record_id, c.kind, c.status, c.changes) for c in replica.pending()],
        replica.cursor,
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    held=st.lists(st.sampled_from(RECORDS), unique=True, max_size=4),
    edited=st.lists(st.sampled_from(RECORDS), unique=True, max_size=2),
    steps=st.lists(
        st.tuples(st.sampled_from(RECORDS), st.sampled_from(ACTIONS), st.integers(0, 50)),
        max_size=25,
    ),
    live=st.booleans(),
)
def test_a_frame_leaves_the_store_and_the_events_as_its_items_applied_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    held: list[str],
    edited: list[str],
    steps: list[tuple[str, str, int]],
    live: bool,
) -> None:
    directory = tmp_path_factory.mktemp("frame")
    relay = RelayModel()
    base = Replica(LocalStore(str(directory / "base.sqlite3")), SCHEMA)
    held_items = [relay.change(rid, "create", n) for n, rid in enumerate(held)]
    base.apply_changes([item for item in held_items if item is not None], advance_cursor=True)
    for record_id in edited:
        if record_id in held:
            base.update(record_id, {"Employees": 4242})  # the user's, not pushed
    base.store.close()
    items = [item for step in steps if (item := relay.change(*step)) is not None]

    one_by_one_events: list[Event] = []
    shutil.copy(directory / "base.sqlite3", directory / "one.sqlite3")
    one = Replica(
        LocalStore(str(directory / "one.sqlite3")), SCHEMA, on_event=one_by_one_events.append
    )
    for item in items:  # each in its own transaction, as before frames were staged
        if item.revoked:
            one.apply_revoked(item.record_id, item.object, item.version)
        else:
            one.apply_remote(
                item.record_id,
                item.object,
                item.version,
                item.update,
                deleted=item.deleted,
                by=item.by,
            )
        if live:
            one.advance_cursor(item.version)

    frame_events: list[Event] = []
    shutil.copy(directory / "base.sqlite3", directory / "frame.sqlite3")
    framed = Replica(
        LocalStore(str(directory / "frame.sqlite3")), SCHEMA, on_event=frame_events.append
    )
    framed.apply_changes(items, advance_cursor=live)

    try:
        assert frame_events == one_by_one_events
        assert _view(framed) == _view(one)
        assert _store_rows(framed) == _store_rows(one)
    finally:
        one.store.close()
        framed.store.close()


# -- failures ---------------------------------------------------------------------------------


def _receiver(path: Path, events: list[Event]) -> tuple[Replica, SyncSession, list[RecordDoc]]:
    """A replica holding ten Accounts the relay made, caught up (cursor 10)."""
    replica = Replica(LocalStore(str(path)), SCHEMA, on_event=events.append)
    session = SyncSession(replica, "token")
    session.state = SyncState.READY
    docs = []
    for n in range(10):
        doc = RecordDoc(SPEC, client_id=RELAY_CLIENT_ID + n)
        doc.write({"Name": f"R{n}", "Employees": n})
        docs.append(doc)
    session.receive(
        encode(
            Changes(
                tuple(
                    RecordChange(
                        record_id=f"r{n}", object="Account", version=n + 1, update=doc.full_update()
                    )
                    for n, doc in enumerate(docs)
                )
            )
        )
    )
    return replica, session, docs


def _edits(docs: list[RecordDoc], first_version: int) -> list[RecordChange]:
    items = []
    for n, doc in enumerate(docs):
        state = doc.state()
        doc.write({"Employees": 500 + n})
        items.append(
            RecordChange(
                record_id=f"r{n}",
                object="Account",
                version=first_version + n,
                update=doc.delta(state),
            )
        )
    return items


def test_a_frame_whose_last_staged_update_does_not_decode_leaves_nothing_of_it(
    tmp_path: Path,
) -> None:
    events: list[Event] = []
    replica, session, docs = _receiver(tmp_path / "r.sqlite3", events)
    before = _view(replica), _store_rows(replica)
    events.clear()
    items = _edits(docs, 11)
    # The last record's second item is garbage: it fails when the frame's staged
    # records are applied, after every item was taken.
    items.append(
        RecordChange(record_id="r9", object="Account", version=21, update=b"\x01\x02garbage")
    )
    with pytest.raises(ValueError, match="decode"):
        session.receive(encode(Changes(tuple(items))))
    assert events == []
    assert (_view(replica), _store_rows(replica)) == before
    replica.store.close()


KILLED_MID_FRAME = """
import os, signal, sys
from crdtsync.client import store as store_module
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.core.protocol import decode
from crdtsync.core.schema import Schema

schema = Schema.from_toml(sys.argv[1])
replica = Replica(LocalStore(sys.argv[2]), schema)
frame = decode(open(sys.argv[3], "rb").read())
put_records = store_module.LocalStore.put_records

def killed(self, records):
    put_records(self, records)  # every staged row written, the transaction open
    os.kill(os.getpid(), signal.SIGKILL)

store_module.LocalStore.put_records = killed
replica.apply_changes(frame.items, advance_cursor=True)
"""


def test_a_kill_9_mid_frame_leaves_the_cursor_before_the_frame_and_no_record_half_applied(
    tmp_path: Path,
) -> None:
    events: list[Event] = []
    path = tmp_path / "r.sqlite3"
    replica, _session, docs = _receiver(path, events)
    replica.advance_cursor(10)
    replica.update("r3", {"Employees": 77})  # a record applied item by item
    before = _view(replica), _store_rows(replica)
    replica.store.close()
    frame = tmp_path / "frame.bin"
    frame.write_bytes(encode(Changes(tuple(_edits(docs, 11)))))

    run_until_killed(KILLED_MID_FRAME, EXAMPLE_CONFIG, path, frame)

    reopened = Replica(LocalStore(str(path)), SCHEMA)
    try:
        assert reopened.store.integrity_check() == "ok"
        assert (_view(reopened), _store_rows(reopened)) == before
        # Sent again (the relay resends from the cursor), the frame applies whole.
        reopened.apply_changes(Changes.from_wire(_wire(frame)).items, advance_cursor=True)
        assert reopened.cursor == 20
        assert {r.id: r.fields["Employees"] for r in reopened.records()} == {
            f"r{n}": 77 if n == 3 else 500 + n for n in range(10)
        }
    finally:
        reopened.store.close()


def _wire(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = msgpack.unpackb(path.read_bytes(), raw=False)
    return data
