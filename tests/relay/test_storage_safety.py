"""Storage safety: compaction of the relay's change log keeps every replica's state
byte-for-byte, survives ``kill -9`` at any point, and both stores open their first
released format (``tests/fixtures/*_format1.sql``, written by crdtsync at format 1) by
migrating it, refusing formats they do not know."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pycrdt
import pytest
from crdtsync_server.errors import StorageError
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import FORMAT_VERSION, RelayStorage, StoredRecord

from crdtsync import Schema, Status
from crdtsync.apps.cli import main as cli_main
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.core.exceptions import RecordDeleted, RecordLocked, StoreError
from crdtsync.core.protocol import Changes
from tests.helpers.faults import report, scaled
from tests.helpers.harness import EXAMPLE_CONFIG, ROOT, RelayHarness, eventually
from tests.helpers.pair import ALL_OBJECTS, Pair, World, settle

pytestmark = pytest.mark.faults

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# -- a relay with history, in a file ------------------------------------------------------


class FileWorld(World):
    """The sans-I/O world with the relay's storage in a file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.storage.close()
        self.storage = RelayStorage(str(path))
        self.relay = Relay(
            schema=self.config.schema, policy=self.config.policy, storage=self.storage
        )


def make_history(world: World, rng: random.Random, steps: int) -> list[str]:
    """Two users on three replicas create, edit (plain and text fields) and delete
    Accounts, going offline now and then; conflicts are dismissed. Returns the ids."""
    users = ("alice", "alice", "bob")
    replicas = [world.replica() for _ in users]
    pairs: list[Pair | None] = [world.connect(r, u) for r, u in zip(replicas, users, strict=True)]
    settle(*[p for p in pairs if p is not None])
    ids: list[str] = []
    for step in range(steps):
        i = rng.randrange(len(replicas))
        replica = replicas[i]
        live = [r.id for r in replica.records("Account")]
        op = rng.random()
        try:
            if op < 0.15 or not live:
                ids.append(replica.create("Account", {"Name": f"Acct {step}", "Employees": step}))
            elif op < 0.6:
                replica.update(rng.choice(live), {"Employees": rng.randrange(1000)})
            elif op < 0.85:
                rid = rng.choice(live)
                text = str((replica.get(rid) or _never()).fields.get("Description") or "")
                cut = rng.randrange(len(text) + 1)
                replica.update(rid, {"Description": text[:cut] + f"<{step}>" + text[cut:]})
            elif op < 0.9:
                replica.delete(rng.choice(live))
            elif pairs[i] is not None:
                pairs[i].disconnect()  # type: ignore[union-attr]
                pairs[i] = None
            else:
                pairs[i] = world.connect(replica, users[i])
        except (RecordLocked, RecordDeleted):
            pass  # the replica said no at once, nothing queued
        settle(*[p for p in pairs if p is not None])
        for replica in replicas:
            for change in replica.pending():
                if change.status in (Status.CONFLICT, Status.UNRESOLVABLE):
                    replica.dismiss(change.record_id)
    for i, replica in enumerate(replicas):
        if pairs[i] is None:
            pairs[i] = world.connect(replica, users[i])
    settle(*[p for p in pairs if p is not None])
    return ids


def _never() -> object:
    raise AssertionError("a listed record has no row")


def state_at(log: Log, record_id: str, version: int) -> bytes:
    """The record's full update as of ``version``, from the (uncompacted) log."""
    updates = [u for seq, rid, u in log if rid == record_id and seq <= version and u]
    return bytes(pycrdt.merge_updates(*updates)) if updates else b""


Log = list[tuple[int, str, bytes]]  #: (seq, record id, update) of every change


def resumed_states(
    relay: Relay, principal: Principal, log_copy: Log
) -> dict[tuple[int, str], bytes]:
    """For every cursor: each record's state on a replica that held the record as of
    that cursor and then resumed, encoded by pycrdt (deterministic for equal states)."""
    states: dict[tuple[int, str], bytes] = {}
    for cursor in range(relay.storage.seq + 1):
        for frame in relay.backlog(principal, ALL_OBJECTS, cursor):
            if not isinstance(frame, Changes):
                continue
            for item in frame.items:
                if item.deleted or item.revoked:
                    states[cursor, item.record_id] = b"deleted" if item.deleted else b"revoked"
                    continue
                doc: pycrdt.Doc[object] = pycrdt.Doc()
                for update in (state_at(log_copy, item.record_id, cursor), item.update):
                    if update:
                        doc.apply_update(update)
                states[cursor, item.record_id] = doc.get_update()
    return states


def raw_log(storage: RelayStorage) -> Log:
    rows = storage._db.execute("SELECT seq, record_id, update_ FROM changes ORDER BY seq")
    return [(int(seq), str(rid), bytes(u or b"")) for seq, rid, u in rows]


def compacted_seqs(storage: RelayStorage) -> set[int]:
    rows = storage._db.execute("SELECT seq FROM changes WHERE update_ IS NULL")
    return {int(seq) for (seq,) in rows}


def new_relay(world: World, storage: RelayStorage) -> Relay:
    return Relay(schema=world.config.schema, policy=world.config.policy, storage=storage)


def table_rows(path: Path, table: str, columns: str = "*") -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(f"SELECT {columns} FROM {table} ORDER BY rowid"))
    finally:
        db.close()


@pytest.fixture
def history(tmp_path: Path) -> Iterator[FileWorld]:
    world = FileWorld(tmp_path / "relay.sqlite3")
    make_history(world, random.Random(7), scaled(120))
    yield world
    world.close()


# -- compaction ---------------------------------------------------------------------------


def records_read_back(storage: RelayStorage) -> list[StoredRecord]:
    """Every record as the relay reads it: its row with the changes logged after it."""
    ids = [str(row[0]) for row in storage._db.execute("SELECT id FROM records ORDER BY id")]
    records = storage.get_records(ids)
    return [records[record_id] for record_id in ids]


def test_compaction_keeps_every_resumed_state_byte_for_byte(history: FileWorld) -> None:
    storage, relay = history.storage, history.relay
    principal = Principal("alice", "a-replica-of-alice", ("default",))
    log = raw_log(storage)
    assert len(log) > 60 and storage.seq > 60
    before = resumed_states(relay, principal, log)
    path, facts = Path(storage.path), "seq, change_id, fields, replica"
    records_before = records_read_back(storage)
    # Rows whose changes since are only logged: compaction must snapshot them first.
    assert any(record.behind for record in records_before)
    facts_before = table_rows(path, "changes", facts)
    through = storage.seq * 2 // 3

    dropped = storage.compact(through, chunk=7)

    assert dropped == sum(1 for seq, _rid, update in log if seq <= through)
    assert storage.compacted_through() == through
    assert compacted_seqs(storage) == {seq for seq, _rid, _u in log if seq <= through}
    after = resumed_states(new_relay(history, storage), principal, log)
    assert after == before  # every cursor, every record: the same bytes
    for (_cursor, record_id), state in after.items():
        stored = storage.get_record(record_id)
        assert stored is not None
        if stored.deleted:
            assert state == b"deleted"
            continue
        full: pycrdt.Doc[object] = pycrdt.Doc()
        full.apply_update(stored.state)
        assert state == full.get_update()  # and that is the stored record
    assert records_read_back(storage) == records_before
    row_versions = dict(table_rows(path, "records", "id, version"))
    assert all(seq <= row_versions[rid] for seq, rid, _u in log if seq <= through)
    assert table_rows(path, "changes", facts) == facts_before
    assert storage.integrity_check() == "ok"
    report("compaction", changes=len(log), compacted=dropped, resumed_states=len(after))


def test_a_replica_offline_across_a_compaction_resumes_to_the_relays_values(
    tmp_path: Path,
) -> None:
    world = FileWorld(tmp_path / "relay.sqlite3")
    try:
        rng = random.Random(11)
        make_history(world, rng, 30)
        late = world.replica()
        pair = world.connect(late, "bob")
        settle(pair)
        pair.disconnect()
        cursor = late.store.get_meta("cursor")
        make_history(world, rng, 40)  # more history while it is offline
        world.storage.compact(world.storage.seq)
        pair = world.connect(late, "bob")
        settle(pair)

        assert late.store.get_meta("cursor") == world.storage.seq > cursor
        fresh = world.replica()
        settle(world.connect(fresh, "bob"))
        mine = {r.id: r.fields for r in late.records("Account")}
        assert mine == {r.id: r.fields for r in fresh.records("Account")}
        assert len(mine) > 3
    finally:
        world.close()


def test_a_change_retransmitted_after_its_update_was_compacted_is_acked_once(
    tmp_path: Path,
) -> None:
    world = FileWorld(tmp_path / "relay.sqlite3")
    try:
        replica = world.replica()
        pair = world.connect(replica, "alice")
        settle(pair)
        rid = replica.create("Account", {"Name": "Acme"})
        pair.client.push()
        frames = pair.client.data_to_send()  # the push, lost with its verdict
        for data in frames:
            pair.server.receive(data)
        pair.server.data_to_send()
        pair.disconnect()
        assert world.storage.compact(world.storage.seq) == 1

        pair = world.connect(replica, "alice")
        settle(pair)  # the replica retransmits the same change id

        assert replica.pending() == []
        record = replica.get(rid)
        assert record is not None and record.status is Status.SYNCED
        assert world.storage._db.execute("SELECT count(*) FROM changes").fetchone()[0] == 1
        assert replica.store.get_record(rid).version == world.storage.seq == 1  # type: ignore[union-attr]
    finally:
        world.close()


COMPACT_SCRIPT = """
import sys, time
from crdtsync_server.storage import RelayStorage

set_meta = RelayStorage.set_meta

def set_meta_slowly(self, key, value):
    set_meta(self, key, value)
    time.sleep(0.002)  # inside the chunk's open transaction: most kills land there

RelayStorage.set_meta = set_meta_slowly
storage = RelayStorage(sys.argv[1])
print("started", flush=True)
storage.compact(int(sys.argv[2]), chunk=int(sys.argv[3]))
print("done", flush=True)
"""


def run_compaction(path: str, through: int, kill_after: float | None) -> tuple[bool, float]:
    """Compact ``path`` in a child process, one change per transaction, and ``kill -9``
    it ``kill_after`` seconds after it started compacting (None: let it finish). Returns
    whether it was killed before it finished, and how long it compacted."""
    process = subprocess.Popen(
        [sys.executable, "-c", COMPACT_SCRIPT, path, str(through), "1"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stdout.readline() == b"started\n"
    started = time.monotonic()
    if kill_after is None:
        assert process.stdout.readline() == b"done\n"
        assert process.wait(timeout=60) == 0
        return False, time.monotonic() - started
    time.sleep(kill_after)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return killed, time.monotonic() - started


def test_compaction_killed_at_any_point_leaves_a_consistent_database(tmp_path: Path) -> None:
    world = FileWorld(tmp_path / "history.sqlite3")
    make_history(world, random.Random(3), 150)  # a soak kills more often, not longer
    principal = Principal("bob", "a-replica-of-bob", ("default",))
    log = raw_log(world.storage)
    before = resumed_states(world.relay, principal, log)
    history, through = Path(world.storage.path), world.storage.seq
    world.close()  # checkpoints: the history is all in the main file
    path = tmp_path / "relay.sqlite3"
    shutil.copyfile(history, path)
    _, duration = run_compaction(str(path), through, None)  # kill somewhere inside a run
    rng = random.Random(5)
    kills = partial = 0
    for _attempt in range(scaled(6)):
        for leftover in tmp_path.glob("relay.sqlite3*"):
            leftover.unlink()
        shutil.copyfile(history, path)  # every attempt starts uncompacted
        killed, _ = run_compaction(str(path), through, rng.uniform(0.1, 0.9) * duration)
        kills += killed

        storage = RelayStorage(str(path))  # opens cleanly after the kill
        try:
            assert storage.integrity_check() == "ok"
            done = storage.compacted_through()
            partial += 0 < done < through
            # a prefix of the log is compacted, each row whole or compacted
            assert compacted_seqs(storage) == {seq for seq, _r, _u in log if seq <= done}
            assert resumed_states(new_relay(world, storage), principal, log) == before
            assert storage.compact(through) == through - done  # finishing it works too
            assert resumed_states(new_relay(world, storage), principal, log) == before
        finally:
            storage.close()
    assert kills >= scaled(3) and partial >= 1, "runs ended before the kill: lengthen them"
    report("compaction_kill9", kills=kills, killed_mid_way=partial, changes=len(log))


def test_compact_command_drops_old_updates_and_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = FileWorld(tmp_path / "relay.sqlite3")
    make_history(world, random.Random(1), 20)
    seq = world.storage.seq
    world.close()
    base = ["compact", "--config", str(EXAMPLE_CONFIG), "--db", str(tmp_path / "relay.sqlite3")]

    assert cli_main([*base, "--older-than", "1d"]) == 0
    assert '"updates_dropped": 0' in capsys.readouterr().out  # nothing is a day old
    assert cli_main([*base, "--through", str(seq)]) == 0
    out = capsys.readouterr().out
    assert f'"compacted_through": {seq}' in out and '"updates_dropped": 0' not in out
    assert cli_main([*base, "--older-than", "soon"]) == 2
    assert "--older-than" in capsys.readouterr().err


# -- formats and migrations ---------------------------------------------------------------


def restore(fixture: str, path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript((FIXTURES / fixture).read_text())
    db.close()
    return path


def test_the_first_relay_format_migrates_keeping_every_row(tmp_path: Path) -> None:
    path = restore("relay_format1.sql", tmp_path / "relay.sqlite3")
    tables = ("records", "changes", "uniques", "client_ids", "refused_ops", "replicas")
    before = {table: table_rows(path, table) for table in tables}
    assert before["changes"] and before["refused_ops"]  # the fixture has history

    storage = RelayStorage(str(path))
    try:
        assert storage.get_meta("format_version") == FORMAT_VERSION == 3
        assert storage.integrity_check() == "ok"
        after = {table: table_rows(path, table) for table in tables}
        assert after == before
        assert storage.compact(storage.seq) == len(before["changes"])  # the new format works
    finally:
        storage.close()


async def test_a_replica_on_the_first_store_format_syncs_with_a_migrated_relay(
    tmp_path: Path,
) -> None:
    restore("relay_format1.sql", tmp_path / "relay.sqlite3")
    restore("alice_format1.sql", tmp_path / "alice.sqlite3")
    harness = RelayHarness(tmp_path)
    await harness.start()
    try:
        alice = harness.client("alice")
        async with alice:
            pending = {p.record_id: p for p in alice.pending()}
            assert len(pending) == 3  # made offline at format 1: two edits and a conflict
            await alice.sync()
            [conflict] = [p for p in alice.pending() if p.status is Status.CONFLICT]
            alice.resolve(conflict.record_id, {"Employees": 25})
            await eventually(lambda: alice.pending() == [])
            names = {r.fields["Name"] for r in alice.records("Account")}
        bob = harness.client("bob")
        async with bob:
            await bob.sync()
            accounts = {r.fields["Name"]: r.fields for r in bob.records("Account")}
        assert names == set(accounts) >= {"Acme", "Globex Corp", "Offline Inc"}
        assert accounts["Acme"]["Employees"] == 25
        assert accounts["Globex Corp"]["Industry"] == "Retail"
    finally:
        await harness.stop()


@pytest.mark.parametrize("store", ["relay", "replica"])
@pytest.mark.parametrize(
    ("packed", "message"),
    [
        ("63", r"format 99 is newer than this crdtsync reads \(\d\)"),  # msgpack 99
        ("00", r"format 0 is not one crdtsync ever wrote"),
        ("A3312E30", r"format '1.0' is not one crdtsync ever wrote"),  # a string
    ],
)
def test_an_unknown_format_is_refused_saying_why(
    tmp_path: Path, store: str, packed: str, message: str
) -> None:
    path = tmp_path / "db.sqlite3"
    opener = RelayStorage if store == "relay" else LocalStore
    opener(str(path)).close()
    db = sqlite3.connect(path)
    db.execute(f"UPDATE meta SET value = X'{packed}' WHERE key = 'format_version'")
    db.commit()
    db.close()

    with pytest.raises((StorageError, StoreError), match=message):
        opener(str(path))


@pytest.mark.parametrize("store", ["relay", "replica"])
def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path, store: str) -> None:
    path = tmp_path / "other.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()

    with pytest.raises((StorageError, StoreError), match="tables of something else"):
        RelayStorage(str(path)) if store == "relay" else LocalStore(str(path))
    assert [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")] == [
        "invoices"
    ]


def test_client_store_opens_the_first_format_with_its_pending_changes(tmp_path: Path) -> None:
    path = restore("alice_format1.sql", tmp_path / "alice.sqlite3")
    replica = Replica(LocalStore(str(path)), Schema.from_toml(EXAMPLE_CONFIG))
    try:
        kinds = sorted((p.kind.value, p.status.value) for p in replica.pending())
        assert kinds == [("create", "pending"), ("update", "conflict"), ("update", "pending")]
        assert replica.store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        replica.store.close()


async def test_compaction_while_the_relay_serves_loses_nothing(tmp_path: Path) -> None:
    harness = RelayHarness(tmp_path)
    await harness.start()
    db = str(tmp_path / "relay.sqlite3")
    compactions = 0
    try:
        async with harness.client("bob") as bob:
            await bob.sync()
            bob.go_offline()  # bob misses everything below, compacted while he is away
            async with harness.client("alice") as alice:
                ids = [alice.create("Account", {"Name": f"Busy {k}"}) for k in range(5)]
                edits = scaled(60)
                for n in range(edits):
                    alice.update(ids[n % 5], {"Employees": n, "Description": f"edit {n}"})
                    if n % 10 == 9:
                        await alice.sync()
                        through = RelayStorage(db)  # a second connection, as the CLI has
                        try:
                            await asyncio.to_thread(through.compact, through.seq)
                        finally:
                            through.close()
                        compactions += 1
                    await asyncio.sleep(0)
                await alice.sync()
                await eventually(lambda: alice.pending() == [])
                truth = {r.id: r.fields for r in alice.records("Account")}
            bob.go_online()
            await bob.sync()
            assert {r.id: r.fields for r in bob.records("Account")} == truth
            assert [truth[rid]["Employees"] for rid in ids] == list(range(edits - 5, edits))
        storage = RelayStorage(db)
        try:
            assert storage.integrity_check() == "ok"
            assert storage.compacted_through() > 0 and compacted_seqs(storage)
        finally:
            storage.close()
    finally:
        await harness.stop()
    assert compactions >= 6
