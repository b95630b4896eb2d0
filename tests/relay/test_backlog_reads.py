"""A replica's backlog is read a batch of records at a time: the rows, the shares and the
missed changes of up to 500 records in one query each, however many records it holds.

The relay runs on an in-memory SQLite store; what it executes is counted with SQLite's
own statement trace. What the replica receives is checked too: each record's missed
changes, merged, bring a copy at the cursor's state to the stored one.
"""

from __future__ import annotations

from pathlib import Path

from crdtsync_server.config import RelayConfig
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage

from crdtsync.core.protocol import CaughtUp, ChangeFrame, ChangeKind, Changes
from crdtsync.core.record import RecordDoc
from tests.helpers.sessions import FakeSession

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "server/example/app.toml"
CONFIG = RelayConfig.from_toml(EXAMPLE_CONFIG)
SPEC = CONFIG.schema.objects["Account"]
RECORDS = 300


def test_a_backlog_of_300_records_is_read_with_a_few_queries_and_brings_each_up_to_date() -> None:
    storage = RelayStorage(":memory:")
    relay = Relay(schema=CONFIG.schema, policy=CONFIG.policy, storage=storage)
    alice = FakeSession(Principal("alice", "replica-a"))
    docs = {f"acc-{n}": RecordDoc(SPEC, client_id=1_000 + n) for n in range(RECORDS)}
    creates = []
    for record_id, doc in docs.items():
        doc.write({"Name": record_id, "Employees": 1})
        creates.append(
            ChangeFrame(change_id=f"c-{record_id}", record_id=record_id, object="Account",
                        kind=ChangeKind.CREATE, base_version=0, field_bases={},
                        delta=doc.full_update())
        )  # fmt: skip
    relay.push(alice, creates)  # type: ignore[arg-type]
    cursor = relay.seq
    at_cursor = {rid: storage.get_record(rid).state for rid in docs}  # type: ignore[union-attr]
    edits = []
    for n, (record_id, doc) in enumerate(docs.items()):
        delta = doc.write({"Employees": 10 + n})
        edits.append(
            ChangeFrame(change_id=f"e-{record_id}", record_id=record_id, object="Account",
                        kind=ChangeKind.UPDATE, base_version=0, field_bases={}, delta=delta)
        )  # fmt: skip
    relay.push(alice, edits)  # type: ignore[arg-type]
    relay._cache.clear()  # as after a restart: nothing of them in memory

    statements: list[str] = []
    storage._db.connection.set_trace_callback(statements.append)
    frames = list(relay.backlog(Principal("bob", "replica-b"), ["Account"], cursor))
    storage._db.connection.set_trace_callback(None)

    assert isinstance(frames[-1], CaughtUp)
    items = [item for frame in frames if isinstance(frame, Changes) for item in frame.items]
    assert sorted(item.record_id for item in items) == sorted(docs)
    for item in items:
        copy = RecordDoc.from_update(SPEC, at_cursor[item.record_id])
        copy.apply(item.update)
        assert copy.read()["Employees"] == 10 + int(item.record_id.split("-")[1])
    reads = [sql for sql in statements if sql.startswith("SELECT")]
    assert len(reads) <= 10, reads  # per 500 records: rows, shares, missed changes
