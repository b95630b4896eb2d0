"""A frame from the relay is applied as one unit.

Every item of a ``changes`` frame (and every verdict of a ``verdicts`` frame) is stored
in one transaction with the cursor it reaches, and the events are reported after that
commit. If applying one item fails, nothing of the frame is stored or reported: the
user sees the records, the outbox and the cursor of before the frame, and a reconnect
gets everything (the relay sends it again from the cursor; changes in flight are resent
with the same ids and applied once).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycrdt
import pytest

from crdtsync.client.events import Event, PendingChanged, RemoteChangeArrived
from crdtsync.client.model import Status
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.protocol import Changes, RecordChange, Verdicts, encode
from crdtsync.core.record import RecordDoc
from tests.helpers.pair import World

RECORDS = 5
FAIL_AT = 3  #: the item of the frame whose application fails


class Fault(Exception):
    pass


class Receiver:
    """A replica on a file store, reopened as a restarted app would reopen it."""

    def __init__(self, world: World, path: Path) -> None:
        self.world = world
        self.path = path
        self.events: list[Event] = []
        self.replica = self._open()

    def _open(self) -> Replica:
        return Replica(
            LocalStore(str(self.path)), self.world.config.schema, on_event=self._on_event
        )

    def _on_event(self, event: Event) -> None:
        # reported after the commit: no transaction of the frame is open any more
        assert not self.replica.store._db.in_transaction
        self.events.append(event)

    def reopen(self) -> Replica:
        self.replica.store.close()
        self.replica = self._open()
        return self.replica

    def close(self) -> None:
        self.replica.store.close()

    def seen(self) -> tuple[int, dict[str, tuple[dict[str, Any], int, Status]]]:
        """What the user sees: the cursor and each record's fields, version, status."""
        return self.replica.cursor, {
            r.id: (r.fields, r.version, r.status) for r in self.replica.records()
        }


def fail_at(replica: Replica, name: str, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ``k``-th call of ``replica.<name>`` raise, after the ones before it ran."""
    original: Callable[..., Any] = getattr(replica, name)
    calls = 0

    def faulty(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == k:
            raise Fault(f"{name} #{k}")
        return original(*args, **kwargs)

    monkeypatch.setattr(replica, name, faulty)


def test_a_changes_frame_that_fails_midway_leaves_nothing_of_it(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = world.replica()
    writer_pair = world.connect(writer)
    ids = [writer.create("Account", {"Name": f"A{i}", "Employees": i}) for i in range(RECORDS)]
    writer_pair.pump()
    receiver = Receiver(world, tmp_path / "receiver.sqlite3")
    pair = world.connect(receiver.replica)
    pair.pump()
    before = receiver.seen()
    assert len(before[1]) == RECORDS
    receiver.events.clear()

    for i, record_id in enumerate(ids):
        writer.update(record_id, {"Employees": 100 + i})
    writer_pair.pump()
    fail_at(receiver.replica, "apply_remote", FAIL_AT, monkeypatch)
    with pytest.raises(Fault):
        pair.step()
    frame = pair.to_client[-1]
    assert isinstance(frame, Changes) and len(frame.items) == RECORDS  # one frame, all five
    assert receiver.events == []  # nothing of the frame is reported
    assert receiver.seen() == before  # nor stored: no record, and not the cursor
    pair.disconnect()
    monkeypatch.undo()

    assert receiver.seen() == before
    replica = receiver.reopen()  # what a restart finds on disk: the same
    assert receiver.seen() == before
    world.connect(replica).pump()
    cursor, records = receiver.seen()
    assert cursor == writer.cursor > before[0]
    assert {rid: fields["Employees"] for rid, (fields, _, _) in records.items()} == {
        rid: 100 + i for i, rid in enumerate(ids)
    }
    assert {r.id: r.fields for r in writer.records()} == {
        rid: fields for rid, (fields, _, _) in records.items()
    }
    receiver.close()


def test_events_of_a_changes_frame_come_after_its_commit_in_order(
    world: World, tmp_path: Path
) -> None:
    writer = world.replica()
    writer_pair = world.connect(writer)
    ids = [writer.create("Account", {"Name": f"A{i}"}) for i in range(RECORDS)]
    writer_pair.pump()
    receiver = Receiver(world, tmp_path / "receiver.sqlite3")
    pair = world.connect(receiver.replica)
    pair.pump()
    receiver.events.clear()
    for record_id in ids:
        writer.update(record_id, {"Employees": 7})
    writer_pair.pump()
    pair.pump()
    assert [
        (e.record_id, e.kind) for e in receiver.events if isinstance(e, RemoteChangeArrived)
    ] == [(record_id, "update") for record_id in ids]
    receiver.close()


def test_a_verdicts_frame_that_fails_midway_leaves_nothing_of_it(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(world, tmp_path / "pusher.sqlite3")
    ids = [
        receiver.replica.create("Account", {"Name": f"A{i}", "Employees": i})
        for i in range(RECORDS)
    ]
    pair = world.connect(receiver.replica)
    pair.pump()
    assert receiver.replica.pending() == []
    for i, record_id in enumerate(ids):
        receiver.replica.update(record_id, {"Employees": 100 + i})
    before_cursor = receiver.replica.cursor
    before_versions = {r.id: r.version for r in receiver.replica.records()}
    receiver.events.clear()

    # The frame's acks are applied together: the third one's merge fails.
    fail_at(receiver.replica, "_merged", FAIL_AT, monkeypatch)
    with pytest.raises(Fault):
        pair.pump()
    frame = pair.to_client[-1]
    assert isinstance(frame, Verdicts) and len(frame.items) == RECORDS
    # Only the changes going out were reported (pending -> syncing), no verdict.
    assert all(
        isinstance(e, PendingChanged) and e.status is Status.SYNCING for e in receiver.events
    )
    assert receiver.replica.cursor == before_cursor
    assert {r.id: r.version for r in receiver.replica.records()} == before_versions
    assert [c.record_id for c in receiver.replica.pending()] == ids  # all still in flight
    pair.disconnect()
    monkeypatch.undo()

    replica = receiver.reopen()
    assert [(c.record_id, c.status) for c in replica.pending()] == [
        (record_id, Status.PENDING) for record_id in ids
    ]
    relay_versions = {rid: world.storage.get_record(rid).version for rid in ids}  # type: ignore[union-attr]
    again = world.connect(replica)
    again.pump()
    assert replica.pending() == []
    # Each change was applied by the relay once (the resend was a retransmission).
    assert {rid: world.storage.get_record(rid).version for rid in ids} == relay_versions  # type: ignore[union-attr]
    assert {r.id: (r.fields["Employees"], r.version) for r in replica.records()} == {
        rid: (100 + i, relay_versions[rid]) for i, rid in enumerate(ids)
    }
    receiver.close()


def test_several_items_of_one_record_in_a_frame_all_apply(world: World, tmp_path: Path) -> None:
    """Successive versions of one record in one frame (its document is loaded once for
    all of them), around another record's, and a user's pending edit of a third kept."""
    schema = world.config.schema
    receiver = Receiver(world, tmp_path / "receiver.sqlite3")
    replica = receiver.replica
    session = SyncSession(replica, "token")
    session.state = SyncState.READY
    docs = {
        rid: RecordDoc(schema.object("Account"), client_id=77 + n) for n, rid in enumerate("abc")
    }
    for rid, doc in docs.items():
        doc.write({"Name": rid.upper(), "Employees": 0})
    session.receive(
        encode(
            Changes(
                tuple(
                    RecordChange(
                        record_id=rid, object="Account", version=n + 1, update=doc.full_update()
                    )
                    for n, (rid, doc) in enumerate(docs.items())
                )
            )
        )
    )
    replica.update("c", {"Employees": 99})  # the user's, not pushed
    items: list[RecordChange] = []
    version = 3
    for rid, employees in [("a", 1), ("a", 2), ("b", 5), ("a", 3), ("c", 6), ("c", 7)]:
        version += 1
        doc = docs[rid]
        state = bytes(pycrdt.get_state(doc.full_update()))
        doc.write({"Employees": employees})
        update = doc.delta(state)
        items.append(RecordChange(record_id=rid, object="Account", version=version, update=update))
    receiver.events.clear()
    session.receive(encode(Changes(tuple(items))))
    assert replica.cursor == version
    seen = {r.id: (r.fields["Employees"], r.version, r.status) for r in replica.records()}
    assert seen == {
        "a": (3, 7, Status.SYNCED),
        "b": (5, 6, Status.SYNCED),
        "c": (99, 9, Status.PENDING),  # the user's unpushed value stays on top
    }
    assert [e.record_id for e in receiver.events if isinstance(e, RemoteChangeArrived)] == [
        "a",
        "a",
        "b",
        "a",
        "c",
        "c",
    ]
    receiver.reopen()
    assert {r.id: r.fields["Employees"] for r in receiver.replica.records()} == {
        "a": 3,
        "b": 5,
        "c": 99,
    }
    receiver.close()
