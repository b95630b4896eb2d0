"""The client's sync state machine (sans I/O), fed frames by hand."""

from __future__ import annotations

from crdtsync import Client, Schema, Status
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.protocol import (
    CaughtUp,
    Changes,
    Error,
    ErrorCode,
    Push,
    RecordChange,
    Welcome,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc


def welcome(schema: Schema, server: str = "relay-1") -> bytes:
    return encode(Welcome(1, "alice", server, schema.to_wire()))


def account_update(schema: Schema, name: str) -> bytes:
    doc = RecordDoc(schema.object("Account"), client_id=77)
    doc.write({"Name": name})
    return doc.full_update()


def test_backlog_items_do_not_move_the_cursor_until_caught_up(client: Client) -> None:
    schema = client.schema
    session = SyncSession(client.replica, "token")
    session.receive(welcome(schema))
    items = (
        RecordChange(
            record_id="b", object="Account", version=7, update=account_update(schema, "B")
        ),
        RecordChange(
            record_id="a", object="Account", version=9, update=account_update(schema, "A")
        ),
    )
    session.receive(encode(Changes(items[:1])))
    assert client.replica.cursor == 0  # a lost connection now must not skip "a"'s history
    session.receive(encode(Changes(items[1:])))
    assert client.replica.cursor == 0
    session.receive(encode(CaughtUp(9)))
    assert client.replica.cursor == 9
    assert session.state is SyncState.READY
    live = RecordChange(
        record_id="c", object="Account", version=10, update=account_update(schema, "C")
    )
    session.receive(encode(Changes((live,))))
    assert client.replica.cursor == 10
    assert {r.fields["Name"] for r in client.records()} == {"A", "B", "C"}


def test_a_relay_with_another_identity_resets_the_cursor(client: Client) -> None:
    session = SyncSession(client.replica, "token")
    session.receive(welcome(client.schema, server="relay-1"))
    session.receive(encode(CaughtUp(42)))
    assert client.replica.cursor == 42
    again = SyncSession(client.replica, "token")
    again.data_to_send()
    again.receive(welcome(client.schema, server="relay-2"))
    subscribe = decode(again.data_to_send()[-1])
    assert subscribe.cursor == 0  # type: ignore[union-attr]


def test_push_refused_as_unreadable_marks_its_changes_unresolvable(client: Client) -> None:
    session = SyncSession(client.replica, "token")
    session.receive(welcome(client.schema))
    rid = client.create("Account", {"Name": "Acme"})
    session.receive(encode(CaughtUp(0)))
    sent = [decode(data) for data in session.data_to_send()]
    assert isinstance(sent[-1], Push)
    session.receive(encode(Error(ErrorCode.MALFORMED_FRAME, "push.changes[0]: bad")))
    [change] = client.pending()
    assert change.record_id == rid
    assert change.status is Status.UNRESOLVABLE
    assert change.problem is not None and "malformed_frame" in change.problem.message


def test_fatal_error_fails_the_session(client: Client) -> None:
    session = SyncSession(client.replica, "token")
    session.receive(encode(Error(ErrorCode.AUTH_FAILED, "the token has expired", fatal=True)))
    assert session.state is SyncState.FAILED
    assert session.error is not None and session.error.message == "the token has expired"
