"""Promises seen from the users' side: what alice's relay acknowledged is still there
after bob resolves, recovers or reconnects.

Every test runs a real ``crdtsync serve`` process on a small notes app
(``tests/fixtures/notes.toml``: a text ``Body``, a string ``Title``, an integer
``Count``, a unique ``Code``) and real clients over websockets on loopback; lost
replies go through a TCP proxy that cuts the connection.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from crdtsync_server.storage import read_records

from crdtsync import Client, Status, StoreError, UnresolvableReason
from tests.helpers.harness import ROOT, eventually
from tests.helpers.relay_process import ServeProcess, free_port
from tests.helpers.tcp_proxy import Direction, TcpProxy

pytestmark = pytest.mark.asyncio

NOTES = ROOT / "tests" / "fixtures" / "notes.toml"


@pytest.fixture
def notes(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "relay.sqlite3", free_port(), NOTES)
    process.start()
    yield process
    output = process.stop()
    assert "Traceback" not in output, output


def user(notes: ServeProcess, name: str, device: str = "") -> Client:
    return notes.client(name, notes.database.parent / f"{name}{device}.sqlite3")


async def shared_note(alice: Client, others: list[Client], values: dict[str, object]) -> str:
    """A note alice created that every other replica has synced."""
    rid = alice.create("Note", values)
    await alice.sync()
    for other in others:
        await other.sync()
        assert other.get(rid) is not None
    return rid


def conflicted_fields(client: Client, rid: str) -> list[str]:
    [change] = [c for c in client.pending() if c.record_id == rid]
    assert change.status is Status.CONFLICT, change
    assert change.problem is not None
    return [c.field for c in change.problem.conflicts]


# -- F1: resolving keeps the others' text edits ---------------------------------------


async def test_resolving_a_same_field_conflict_keeps_alices_acknowledged_text_edit(
    notes: ServeProcess,
) -> None:
    alice, bob = user(notes, "alice"), user(notes, "bob")
    async with alice, bob:
        rid = await shared_note(alice, [bob], {"Body": "hello", "Count": 1})
        bob.go_offline()
        alice.update(rid, {"Body": "hello from alice", "Count": 2})
        await alice.sync()
        bob.update(rid, {"Body": "bob says hello", "Count": 3})
        bob.go_online()
        await bob.sync()
        assert conflicted_fields(bob, rid) == ["Count"]
        # Text never conflicts: while Count is in conflict bob already sees both edits.
        assert bob.get(rid).fields["Body"] == "bob says hello from alice"  # type: ignore[union-attr]

        bob.resolve(rid, {"Count": 2})
        await bob.sync()
        await alice.sync()
        for replica in (alice, bob):
            record = replica.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert record.fields["Body"] == "bob says hello from alice"
            assert record.fields["Count"] == 2


async def test_resolving_a_validation_conflict_keeps_alices_acknowledged_text_edit(
    notes: ServeProcess,
) -> None:
    alice, bob = user(notes, "alice"), user(notes, "bob")
    async with alice, bob:
        taken = alice.create("Note", {"Code": "N-1"})
        rid = await shared_note(alice, [bob], {"Body": "hello"})
        bob.go_offline()
        alice.update(rid, {"Body": "hello from alice"})
        await alice.sync()
        bob.update(rid, {"Body": "bob says hello", "Code": "N-1"})  # N-1 is taken
        bob.go_online()
        await bob.sync()
        [change] = bob.pending()
        assert change.status is Status.CONFLICT and change.problem is not None
        assert [e.field for e in change.problem.errors] == ["Code"]

        bob.resolve(rid, {"Code": "N-2"})
        await bob.sync()
        await alice.sync()
        for replica in (alice, bob):
            record = replica.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert record.fields["Body"] == "bob says hello from alice"
            assert record.fields["Code"] == "N-2"
        assert alice.get(taken).fields["Code"] == "N-1"  # type: ignore[union-attr]


async def test_resolving_keeps_the_text_edits_of_two_other_users(notes: ServeProcess) -> None:
    alice, bob, carol = user(notes, "alice"), user(notes, "bob"), user(notes, "carol")
    async with alice, bob, carol:
        rid = await shared_note(alice, [bob, carol], {"Body": "one two three", "Count": 1})
        bob.go_offline()
        alice.update(rid, {"Body": "ONE two three", "Count": 2})
        await alice.sync()
        await carol.sync()
        carol.update(rid, {"Body": "ONE two three four"})
        await carol.sync()
        bob.update(rid, {"Body": "one 2 three", "Count": 3})
        bob.go_online()
        await bob.sync()
        assert conflicted_fields(bob, rid) == ["Count"]

        bob.resolve(rid)  # keep mine
        await bob.sync()
        for replica in (alice, carol):
            await replica.sync()
        for replica in (alice, bob, carol):
            record = replica.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert record.fields["Body"] == "ONE 2 three four"
            assert record.fields["Count"] == 3


# -- F2: resolve never overwrites newer edits silently ---------------------------------


async def test_resolve_after_newer_remote_edits_conflicts_instead_of_overwriting(
    notes: ServeProcess,
) -> None:
    alice, bob = user(notes, "alice"), user(notes, "bob")
    async with alice, bob:
        rid = await shared_note(alice, [bob], {"Title": "first", "Count": 0})
        bob.go_offline()
        bob.update(rid, {"Title": "bob's title", "Count": 1})
        alice.update(rid, {"Count": 2})
        await alice.sync()
        bob.go_online()
        await bob.sync()
        assert conflicted_fields(bob, rid) == ["Count"]

        alice.update(rid, {"Title": "alice's title", "Count": 3})
        await alice.sync()
        await bob.sync()
        # The conflict shows the current "theirs", not the one of the first verdict.
        [change] = bob.pending()
        assert change.problem is not None
        [count] = change.problem.conflicts
        assert (count.base, count.mine, count.theirs, count.changed_by) == (0, 1, 3, "alice")

        bob.resolve(rid, {"Count": 2})  # the stale "theirs" he noted down before
        await bob.sync()
        # Title was never resolved: alice changed it since bob's base, so it conflicts.
        assert conflicted_fields(bob, rid) == ["Title"]
        await alice.sync()
        assert alice.get(rid).fields["Title"] == "alice's title"  # type: ignore[union-attr]
        assert alice.get(rid).fields["Count"] == 3  # type: ignore[union-attr]

        bob.resolve(rid, {"Title": "alice's title"})
        await bob.sync()
        await alice.sync()
        for replica in (alice, bob):
            record = replica.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert record.fields["Title"] == "alice's title"
            assert record.fields["Count"] == 2  # what bob decided, knowing it was disputed


# -- F4, F5: replies lost on the way back ----------------------------------------------


def logged(notes: ServeProcess, change_id: str) -> bool:
    with closing(sqlite3.connect(f"file:{notes.database}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT 1 FROM changes WHERE change_id = ?", (change_id,)).fetchone()
    return row is not None


def relay_version(notes: ServeProcess, rid: str) -> int:
    with closing(sqlite3.connect(f"file:{notes.database}?mode=ro", uri=True)) as db:
        return read_records(db, [rid])[rid].version


async def lose_the_reply(
    notes: ServeProcess, proxy: TcpProxy, client: Client, change: Callable[[], object]
) -> object:
    """Make ``change`` on a connected ``client`` while every answer of the relay
    vanishes; return what ``change`` returned once the relay has stored it."""
    await client.sync()
    proxy.black_hole(Direction.DOWNSTREAM)
    result = change()
    [pending] = client.pending()
    await eventually(lambda: logged(notes, pending.change_id), timeout=10)
    return result


async def reconnect(proxy: TcpProxy, client: Client) -> None:
    proxy.cut_all()
    proxy.pass_through()
    await client.sync()


async def test_a_lost_ack_never_moves_a_version_back_and_the_next_edit_syncs(
    notes: ServeProcess,
) -> None:
    async with TcpProxy(notes.port) as proxy:
        alice = notes.client("alice", notes.database.parent / "alice.sqlite3", url=proxy.url)
        bob = user(notes, "bob")
        async with alice, bob:
            rid = await shared_note(alice, [bob], {"Title": "first", "Count": 1})
            await lose_the_reply(notes, proxy, alice, lambda: alice.update(rid, {"Count": 5}))
            bob.update(rid, {"Title": "bob's title"})
            await bob.sync()
            await reconnect(proxy, alice)

            record = alice.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert record.version == relay_version(notes, rid)  # bob's, not alice's older one
            assert dict(record.fields) == {"Title": "bob's title", "Count": 5, "Owner": "alice"}

            alice.update(rid, {"Title": "alice on top of bob"})  # she can see bob's title
            await alice.sync()
            assert alice.pending() == []
            await bob.sync()
            assert bob.get(rid).fields["Title"] == "alice on top of bob"  # type: ignore[union-attr]


@pytest.mark.parametrize("edited_since", [False, True])
async def test_a_record_deleted_while_its_create_ack_was_lost_does_not_linger(
    notes: ServeProcess, edited_since: bool
) -> None:
    async with TcpProxy(notes.port) as proxy:
        alice = notes.client("alice", notes.database.parent / "alice.sqlite3", url=proxy.url)
        bob = user(notes, "bob")
        async with alice, bob:
            await alice.sync()  # the first replica of an empty relay: cursor 0
            assert alice.replica.cursor == 0
            rid = str(
                await lose_the_reply(
                    notes, proxy, alice, lambda: alice.create("Note", {"Title": "short-lived"})
                )
            )
            if edited_since:
                alice.update(rid, {"Count": 7})
            await bob.sync()
            bob.delete(rid)
            await bob.sync()
            await reconnect(proxy, alice)

            if edited_since:  # her later edit cannot be saved: she is told, and dismisses it
                [change] = alice.pending()
                assert change.status is Status.UNRESOLVABLE
                assert change.problem is not None
                assert change.problem.reason is UnresolvableReason.DELETED
                alice.dismiss(rid)
            assert alice.get(rid) is None
            assert alice.pending() == []
            assert alice.replica.store.get_record(rid) is None


# -- F3: pushes larger than the relay reads --------------------------------------------


def no_client_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("crdtsync") and r.levelno >= logging.WARNING
    ]


async def test_a_hundred_large_records_created_offline_all_sync(
    notes: ServeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = user(notes, "alice"), user(notes, "bob")
    body = "lorem ipsum " * 5_000  # 60 KB: the hundred of them pass a 4 MiB frame
    ids = [alice.create("Note", {"Title": f"big {n}", "Body": body}) for n in range(100)]
    async with alice, bob:
        await alice.sync(timeout=60)
        assert alice.pending() == []
        await bob.sync(timeout=60)
        assert {r.id for r in bob.records("Note")} == set(ids)
        assert all(bob.get(rid).fields["Body"] == body for rid in ids)  # type: ignore[union-attr]
    assert no_client_errors(caplog) == []


async def test_a_change_too_large_to_ever_send_is_unresolvable_and_the_rest_syncs(
    notes: ServeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = user(notes, "alice"), user(notes, "bob")
    huge = alice.create("Note", {"Title": "huge", "Body": "x" * 5_000_000})
    small = alice.create("Note", {"Title": "small"})
    async with alice, bob:
        await alice.sync(timeout=30)
        [change] = alice.pending()
        assert change.record_id == huge and change.status is Status.UNRESOLVABLE
        assert change.problem is not None and "too large to sync" in change.problem.message
        assert "4.0 MiB" in change.problem.message  # the relay's limit, from its welcome
        await bob.sync()
        assert [r.id for r in bob.records("Note")] == [small]
        alice.dismiss(huge)
        assert alice.get(huge) is None and alice.pending() == []
    assert no_client_errors(caplog) == []


# -- F7: sync() means "I have everything acknowledged before" ---------------------------


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.2])
async def test_sync_returns_with_every_change_acknowledged_before_it_was_called(
    notes: ServeProcess, delay: float
) -> None:
    async with TcpProxy(notes.port) as proxy:
        alice = user(notes, "alice")
        bob = notes.client("bob", notes.database.parent / "bob.sqlite3", url=proxy.url)
        async with alice, bob:
            rid = await shared_note(alice, [bob], {"Title": "v0", "Count": 0})
            proxy.delay(delay)  # every chunk to and from bob now waits this long
            for n in range(1, 4):
                alice.update(rid, {"Title": f"v{n}", "Count": n})
                await alice.sync()  # acknowledged: on the relay before bob asks
                await bob.sync()
                assert bob.get(rid).fields == alice.get(rid).fields  # type: ignore[union-attr]
            created = [alice.create("Note", {"Title": f"new {n}"}) for n in range(5)]
            await alice.sync()
            await bob.sync()
            assert {r.id for r in bob.records("Note")} == {rid, *created}


# -- F6: one store, one client ---------------------------------------------------------


async def test_a_store_open_in_one_client_refuses_a_second_one_at_once(
    notes: ServeProcess,
) -> None:
    store = notes.database.parent / "alice.sqlite3"
    alice = notes.client("alice", store)
    async with alice:
        rid = alice.create("Note", {"Title": "mine"})
        with pytest.raises(StoreError, match="is open in another client"):
            notes.client("alice", store)
        # Another process is refused the same way, and its refusal harms nothing here.
        other = subprocess.run(
            [sys.executable, "-c", f"from crdtsync import Client; Client(store={str(store)!r})"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.returncode != 0 and "is open in another client" in other.stderr
        await alice.sync()
        assert alice.pending() == []
    again = notes.client("alice", store)  # closed: it opens again, with everything
    async with again:
        assert again.get(rid).fields["Title"] == "mine"  # type: ignore[union-attr]
