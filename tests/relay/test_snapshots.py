"""A record's row is a snapshot; the log holds every change after it.

The common edit is only logged: the relay writes the record's row again after at most
``SNAPSHOT_EVERY`` such edits (or with any other change). Whatever reads the record —
a relay started again on the same file, a replica catching up from any cursor, a
compaction — must see every acknowledged edit, never only the row.
"""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crdtsync_server.config import RelayConfig
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import SNAPSHOT_EVERY, RelayStorage, read_records

from crdtsync.core.protocol import Ack, ChangeFrame, ChangeKind, Changes, Conflict, Verdict
from crdtsync.core.record import RecordDoc
from tests.helpers.sessions import FakeSession

CONFIG = RelayConfig.from_toml(Path(__file__).resolve().parents[2] / "server/example/app.toml")
ACCOUNT = CONFIG.schema.objects["Account"]
ALICE = Principal("alice", "alice-replica", ("default",))
BOB = Principal("bob", "bob-replica", ("default",))


class Editor:
    """One replica's documents, and the version of each record it last heard of."""

    def __init__(self, principal: Principal, client_id: int) -> None:
        self.session = FakeSession(principal)
        self.client_id = client_id
        self.docs: dict[str, RecordDoc] = {}
        self.known: dict[str, int] = {}
        self.ids = itertools.count()

    def create(self, relay: Relay, record_id: str, values: dict[str, Any]) -> Verdict:
        doc = self.docs[record_id] = RecordDoc(ACCOUNT, client_id=self.client_id)
        doc.write(values)
        return self.push(relay, [self.frame(record_id, ChangeKind.CREATE, doc.full_update())])[0]

    def edits(self, record_id: str, values: dict[str, Any]) -> ChangeFrame:
        delta = self.docs[record_id].write(values)
        return self.frame(record_id, ChangeKind.UPDATE, delta)

    def frame(self, record_id: str, kind: ChangeKind, delta: bytes) -> ChangeFrame:
        base = self.known.get(record_id, 0)
        return ChangeFrame(
            change_id=f"{self.session.principal.replica_id}-{next(self.ids)}",
            record_id=record_id,
            object="Account",
            kind=kind,
            base_version=base,
            field_bases={},
            delta=delta,
        )

    def push(self, relay: Relay, changes: list[ChangeFrame]) -> list[Verdict]:
        verdicts = list(relay.push(self.session, changes).items)  # type: ignore[arg-type]
        for verdict in verdicts:
            if isinstance(verdict, Ack):
                self.known[verdict.record_id] = verdict.version
        return verdicts


def open_relay(path: Path, **options: Any) -> Relay:
    """A relay on the database at ``path``, with the same CRDT client id as any other
    (two relays given the same changes store the same bytes)."""
    storage = RelayStorage(str(path))
    if storage.get_meta("client_id") is None:
        storage.set_meta("client_id", 777)
    return Relay(schema=CONFIG.schema, policy=CONFIG.policy, storage=storage, **options)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "relay.sqlite3"


def row_version(path: Path, record_id: str) -> int:
    """The version of the record's row (its snapshot), however far the log has gone."""
    with closing(sqlite3.connect(path)) as db:
        [version] = db.execute("SELECT version FROM records WHERE id = ?", (record_id,)).fetchone()
    return int(version)


def values_of(state: bytes) -> dict[str, Any]:
    return RecordDoc.from_update(ACCOUNT, state).read()


def caught_up(relay: Relay, principal: Principal, cursor: int) -> list[tuple[str, int, bytes]]:
    """(record, version, update) of each item a replica at ``cursor`` is sent, in order."""
    return [
        (item.record_id, item.version, item.update)
        for frame in relay.backlog(principal, ["Account"], cursor)
        if isinstance(frame, Changes)
        for item in frame.items
    ]


def test_edits_only_logged_are_all_there_when_the_relay_starts_again(database: Path) -> None:
    relay = open_relay(database)
    alice = Editor(ALICE, client_id=1001)
    created = alice.create(relay, "acme", {"Name": "Acme", "Employees": 1})
    assert isinstance(created, Ack)
    for employees in range(2, 12):
        [verdict] = alice.push(relay, [alice.edits("acme", {"Employees": employees})])
        assert isinstance(verdict, Ack)
    assert relay.metrics.changes_predicted == 10  # the edits took the path under test
    assert row_version(database, "acme") == created.version  # only logged
    live = relay._cache["acme"].stored.state
    relay.storage.close()

    again = open_relay(database)
    stored = again.storage.get_record("acme")
    assert stored is not None
    assert stored.version == alice.known["acme"]
    assert values_of(stored.state) == {"Name": "Acme", "Employees": 11, "Owner": "alice"}
    assert stored.state == live
    # bob, who has never synced, is sent alice's last edit with the record
    [(record_id, version, update)] = caught_up(again, BOB, 0)
    assert (record_id, version) == ("acme", alice.known["acme"])
    assert values_of(update) == {"Name": "Acme", "Employees": 11, "Owner": "alice"}
    # and an edit made on top of the last one is still decided as the common edit
    [verdict] = alice.push(again, [alice.edits("acme", {"Employees": 12})])
    assert isinstance(verdict, Ack) and again.metrics.changes_predicted == 1


def test_a_record_row_is_written_again_after_at_most_SNAPSHOT_EVERY_logged_edits(
    database: Path,
) -> None:
    relay = open_relay(database)
    alice = Editor(ALICE, client_id=1001)
    alice.create(relay, "acme", {"Name": "Acme", "Employees": 0})
    lags = []
    for employees in range(1, 2 * SNAPSHOT_EVERY + 1):
        alice.push(relay, [alice.edits("acme", {"Employees": employees})])
        stored = relay.storage.get_record("acme")
        assert stored is not None and stored.version == alice.known["acme"]
        lags.append(stored.behind)
    assert max(lags) == SNAPSHOT_EVERY - 1
    assert lags.count(0) == 2  # once per SNAPSHOT_EVERY edits
    assert row_version(database, "acme") == alice.known["acme"]
    assert relay.metrics.changes_predicted == 2 * SNAPSHOT_EVERY


def test_a_replica_resuming_after_a_record_row_still_gets_the_edits_logged_since(
    database: Path,
) -> None:
    """Catching up lists records by their last change, row or log: an edit logged after
    a row older than the cursor is sent, and in version order (a replica moves its
    cursor to each item it receives)."""
    relay = open_relay(database)
    alice = Editor(ALICE, client_id=1001)
    first = alice.create(relay, "first", {"Name": "First", "Employees": 1})
    second = alice.create(relay, "second", {"Name": "Second", "Employees": 1})
    [edit] = alice.push(relay, [alice.edits("first", {"Employees": 2})])
    assert isinstance(first, Ack) and isinstance(second, Ack) and isinstance(edit, Ack)
    assert row_version(database, "first") == first.version < second.version < edit.version

    from_start = caught_up(relay, BOB, 0)
    assert [(rid, version) for rid, version, _u in from_start] == [
        ("second", second.version),
        ("first", edit.version),
    ]
    resumed = caught_up(relay, BOB, second.version)
    assert [(rid, version) for rid, version, _u in resumed] == [("first", edit.version)]
    merged = RecordDoc.from_update(ACCOUNT, relay.storage.state_at("first", first.version) or b"")
    merged.apply(resumed[0][2])
    assert merged.read() == {"Name": "First", "Employees": 2, "Owner": "alice"}


def test_the_common_edit_past_the_record_size_limit_is_refused_as_any_edit_is(
    tmp_path: Path,
) -> None:
    """The relay does not encode a record after each common edit: it keeps a bound of
    its size, and must still refuse the edit that takes the record past the limit,
    exactly as the general path does."""
    limit = 300
    relays = {
        predicting: open_relay(tmp_path / f"{predicting}.sqlite3", max_record_bytes=limit)
        for predicting in (True, False)
    }
    relays[False]._pipeline.predicting = False
    verdicts: dict[bool, list[Verdict]] = {}
    for predicting, relay in relays.items():
        alice = Editor(ALICE, client_id=1001)
        alice.create(relay, "acme", {"Name": "Acme"})
        verdicts[predicting] = [
            verdict
            for n in range(1, 26)
            for verdict in alice.push(relay, [alice.edits("acme", {"Website": "w" * 10 * n})])
        ]
    assert verdicts[True] == verdicts[False]
    refused = [v for v in verdicts[True] if not isinstance(v, Ack)]
    # the first refusal is the size conflict (the edits after it build on a refused one)
    assert refused and isinstance(refused[0], Conflict)
    assert "bytes" in refused[0].errors[0].message
    assert relays[True].metrics.changes_predicted > 0
    for relay in relays.values():
        stored = relay.storage.get_record("acme")
        assert stored is not None and len(stored.state) <= limit
    assert read_records(relays[True].storage._db) == read_records(relays[False].storage._db)


def test_a_replica_resuming_after_a_restart_gets_the_logged_edits_without_hidden_fields(
    database: Path,
) -> None:
    """An intern may not read ``Revenue``: the edits logged after a record's row reach
    them projected, from a relay that holds nothing in memory (started again)."""
    intern = Principal("ivan", "ivan-replica", ("default", "intern"))
    relay = open_relay(database)
    alice = Editor(ALICE, client_id=1001)
    created = alice.create(relay, "acme", {"Name": "Acme", "Employees": 1, "Revenue": "100"})
    assert isinstance(created, Ack)
    [(_rid, _version, first)] = caught_up(relay, intern, 0)
    seen = RecordDoc.from_update(ACCOUNT, first)
    assert "Revenue" not in seen.read()
    for employees in (2, 3, 4):
        alice.push(relay, [alice.edits("acme", {"Employees": employees, "Revenue": "200"})])
    assert relay.metrics.changes_predicted == 3
    relay.storage.close()

    again = open_relay(database)
    [(record_id, version, update)] = caught_up(again, intern, created.version)
    assert (record_id, version) == ("acme", alice.known["acme"])
    seen.apply(update)
    assert seen.read() == {"Name": "Acme", "Employees": 4, "Owner": "alice"}
    [(_rid, _version, everything)] = caught_up(again, BOB, created.version)
    bobs = RecordDoc.from_update(ACCOUNT, again.storage.state_at("acme", created.version) or b"")
    bobs.apply(everything)
    assert bobs.read()["Revenue"] == Decimal("200") and bobs.read()["Employees"] == 4
