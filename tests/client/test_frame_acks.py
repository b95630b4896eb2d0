"""The acks of a ``verdicts`` frame are applied per frame, not per ack.

The frame's outbox entries and their records are read in one query and written with
one statement of each kind, in the frame's one transaction: whatever the mix of
verdicts, the frame leaves the store, the cursor and the events as applying them one
by one would, and a frame killed anywhere leaves nothing of itself.
"""

from __future__ import annotations

from pathlib import Path

from crdtsync.client.events import Event, PendingChanged
from crdtsync.client.model import Status
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.protocol import (
    Ack,
    Changes,
    ErrorCode,
    Push,
    RecordChange,
    Rejected,
    Verdicts,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc
from crdtsync.core.schema import Schema
from tests.helpers.faults import run_until_killed
from tests.helpers.harness import EXAMPLE_CONFIG

SCHEMA = Schema.from_toml(EXAMPLE_CONFIG)
SPEC = SCHEMA.object("Account")
RELAY_CLIENT_ID = 5


def _pusher(path: Path, count: int, events: list[Event]) -> tuple[Replica, SyncSession]:
    """A replica holding ``count`` Accounts the relay made (versions 1..count), each
    edited once by the user, caught up."""
    replica = Replica(LocalStore(str(path)), SCHEMA, on_event=events.append)
    session = SyncSession(replica, "token")
    session.state = SyncState.READY
    items = []
    for n in range(count):
        doc = RecordDoc(SPEC, client_id=RELAY_CLIENT_ID)
        doc.write({"Name": f"R{n}", "Employees": n})
        items.append(
            RecordChange(
                record_id=f"r{n:03d}", object="Account", version=n + 1, update=doc.full_update()
            )
        )
    session.receive(encode(Changes(tuple(items))))
    for n in range(count):
        replica.update(f"r{n:03d}", {"Employees": 1000 + n})
    return replica, session


def _pushed(session: SyncSession) -> Push:
    session.push()
    (push,) = [frame for frame in map(decode, session.data_to_send()) if isinstance(frame, Push)]
    return push


def test_acks_of_a_frame_of_200_changes_leave_nothing_pending_and_every_record_at_its_acked_version_in_one_transaction(  # noqa: E501
    tmp_path: Path,
) -> None:
    events: list[Event] = []
    replica, session = _pusher(tmp_path / "r.sqlite3", 200, events)
    push = _pushed(session)
    assert len(push.changes) == 200
    acks = tuple(
        Ack(change_id=change.change_id, record_id=change.record_id, version=1000 + n)
        for n, change in enumerate(push.changes)
    )
    statements: list[str] = []
    replica.store._db.set_trace_callback(statements.append)
    events.clear()
    session.receive(encode(Verdicts(acks)))
    replica.store._db.set_trace_callback(None)

    assert replica.pending() == []
    assert replica.cursor == 1199
    assert {r.id: (r.version, r.fields["Employees"], r.status) for r in replica.records()} == {
        f"r{n:03d}": (1000 + n, 1000 + n, Status.SYNCED) for n in range(200)
    }
    assert [e for e in events if isinstance(e, PendingChanged)] == [
        PendingChanged(f"r{n:03d}", "Account", None) for n in range(200)
    ]
    # The frame's acks: one transaction, the entries read in one query.
    first = statements[: statements.index("COMMIT") + 1]
    assert [s for s in first if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    assert sum(s.startswith("DELETE FROM pending") for s in first) == 200
    assert sum("FROM pending p LEFT JOIN records r" in s for s in first) == 1
    replica.store.close()


def test_a_frame_of_acks_around_a_refusal_with_a_repeated_ack_applies_each_verdict_once_in_order(
    tmp_path: Path,
) -> None:
    events: list[Event] = []
    replica, session = _pusher(tmp_path / "r.sqlite3", 6, events)
    push = _pushed(session)
    ids = [change.change_id for change in push.changes]
    replica.update("r001", {"Name": "changed in flight"})  # what is left of it stays
    old_version = 1  # a retransmission's ack naming a version this replica has passed
    events.clear()
    session.receive(
        encode(
            Verdicts(
                (
                    Ack(change_id=ids[0], record_id="r000", version=50),
                    Ack(change_id=ids[1], record_id="r001", version=51),
                    Rejected(
                        change_id=ids[2],
                        record_id="r002",
                        code=ErrorCode.INTERNAL_ERROR,
                        message="retry",
                    ),
                    Ack(change_id=ids[3], record_id="r003", version=old_version),
                    Ack(change_id=ids[0], record_id="r000", version=60),  # repeated
                    Ack(change_id=ids[4], record_id="r004", version=53),
                    Ack(change_id=ids[5], record_id="r005", version=54),
                )
            )
        )
    )
    records = {r.id: r for r in replica.records()}
    assert {rid: r.version for rid, r in records.items()} == {
        "r000": 50,
        "r001": 51,
        "r002": 3,
        "r003": 4,  # never moved back
        "r004": 53,
        "r005": 54,
    }
    assert records["r001"].fields["Name"] == "changed in flight"
    assert replica.cursor == 60
    pending = {c.record_id: c for c in replica.pending()}
    assert set(pending) == {"r001", "r002"}
    assert pending["r001"].status is Status.SYNCING  # in the next batch already
    assert set(pending["r001"].changes) == {"Name"}
    # After the frame: the next batch goes (the two left) and is marked syncing.
    assert [(e.record_id, e.status) for e in events if isinstance(e, PendingChanged)] == [
        ("r000", None),
        ("r001", Status.PENDING),
        ("r002", Status.PENDING),
        ("r003", None),
        ("r004", None),
        ("r005", None),
        ("r001", Status.SYNCING),
        ("r002", Status.SYNCING),
    ]
    replica.store.close()


KILLED_MID_ACKS = """
import os, signal, sys
from crdtsync.client import store as store_module
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.schema import Schema

schema = Schema.from_toml(sys.argv[1])
replica = Replica(LocalStore(sys.argv[2]), schema)
session = SyncSession(replica, "token")
session.state = SyncState.READY
session._pushes.append({})
put_records = store_module.LocalStore.put_records

def killed(self, records):
    put_records(self, records)  # every entry removed, every record written, not committed
    os.kill(os.getpid(), signal.SIGKILL)

store_module.LocalStore.put_records = killed
session.receive(open(sys.argv[3], "rb").read())
"""


def test_a_kill_9_mid_frame_of_acks_leaves_every_change_to_resend_and_no_version_moved(
    tmp_path: Path,
) -> None:
    events: list[Event] = []
    path = tmp_path / "r.sqlite3"
    replica, session = _pusher(path, 20, events)
    push = _pushed(session)
    before_versions = {r.id: r.version for r in replica.records()}
    before_cursor = replica.cursor
    replica.store.close()
    frame = tmp_path / "verdicts.bin"
    frame.write_bytes(
        encode(
            Verdicts(
                tuple(
                    Ack(change_id=c.change_id, record_id=c.record_id, version=100 + n)
                    for n, c in enumerate(push.changes)
                )
            )
        )
    )

    run_until_killed(KILLED_MID_ACKS, EXAMPLE_CONFIG, path, frame)

    reopened = Replica(LocalStore(str(path)), SCHEMA)
    try:
        assert reopened.store.integrity_check() == "ok"
        assert reopened.cursor == before_cursor
        assert {r.id: r.version for r in reopened.records()} == before_versions
        # Nothing of the frame persisted: every change is pending, to resend as it was.
        assert [(c.record_id, c.status) for c in reopened.pending()] == [
            (f"r{n:03d}", Status.PENDING) for n in range(20)
        ]
        again = SyncSession(reopened, "token")
        again.state = SyncState.READY
        resent = _pushed(again)
        assert [c.change_id for c in resent.changes] == [c.change_id for c in push.changes]
        again.receive(frame.read_bytes())
        assert reopened.pending() == []
        assert {r.id: r.version for r in reopened.records()} == {
            f"r{n:03d}": 100 + n for n in range(20)
        }
        assert reopened.cursor == 119
    finally:
        reopened.store.close()
