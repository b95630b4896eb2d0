"""Access that changes while users are online or offline, administered through the
relay: shares, owner changes, deletes; and tokens that expire mid-session."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from crdtsync_server.admin_client import AdminClient
from crdtsync_server.errors import AdminError

from crdtsync import AccessLost, AuthenticationFailed, Client, Status, UnresolvableReason
from tests.helpers.harness import EXAMPLE_CONFIG, RelayHarness, TasksForPlannersOnly, eventually

pytestmark = pytest.mark.asyncio


def admin(relay: RelayHarness) -> AdminClient:
    return AdminClient(relay.url, relay.server.authority.issue("root", admin=True))


async def private_deal(alice: Client) -> str:
    """An Opportunity (private to its owner) that alice created and synced."""
    account = alice.create("Account", {"Name": "Acme"})
    deal = alice.create(
        "Opportunity", {"Name": "Deal", "Account": account, "Stage": "Proposal", "Amount": "10"}
    )
    await alice.sync()
    return deal


async def test_share_makes_a_private_record_arrive_and_unshare_removes_it(
    relay: RelayHarness,
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        deal = await private_deal(alice)
        await bob.sync()
        assert bob.get(deal) is None
        events = bob.events()
        await root.share(deal, "bob", access="read")
        await eventually(lambda: bob.get(deal) is not None)
        assert bob.get(deal).fields["Amount"] == alice.get(deal).fields["Amount"]  # type: ignore[union-attr]
        await root.unshare(deal, "bob")
        await eventually(lambda: bob.get(deal) is None)
        seen = []
        while (event := events.get_nowait()) is not None:
            seen.append(event)
        assert AccessLost(deal, "Opportunity") in seen


async def test_read_share_does_not_allow_editing(relay: RelayHarness) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        deal = await private_deal(alice)
        await root.share(deal, "bob", access="read")
        await bob.sync()
        bob.update(deal, {"Amount": "99"})
        await bob.sync()
        [change] = bob.pending()
        assert change.status is Status.UNRESOLVABLE
        assert change.problem is not None
        assert change.problem.reason is UnresolvableReason.FORBIDDEN
        await alice.sync()
        assert str(alice.get(deal).fields["Amount"]) == "10"  # type: ignore[union-attr]
        assert change.problem.readable
        bob.dismiss(deal)  # he may still read it: dismiss restores it, does not purge it
        record = bob.get(deal)
        assert record is not None and record.status is Status.SYNCED
        assert str(record.fields["Amount"]) == "10"


async def test_edit_revoked_while_offline_is_unresolvable_and_dismiss_purges(
    relay: RelayHarness,
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        deal = await private_deal(alice)
        await root.share(deal, "bob", access="edit")
        await bob.sync()
        bob.go_offline()
        bob.update(deal, {"Amount": "20"})
        await root.unshare(deal, "bob")
        bob.go_online()
        await bob.sync()
        [change] = bob.pending()
        assert change.status is Status.UNRESOLVABLE
        assert change.problem is not None
        assert change.problem.reason is UnresolvableReason.FORBIDDEN
        bob.dismiss(deal)
        assert bob.get(deal) is None and bob.pending() == []
        await alice.sync()
        assert str(alice.get(deal).fields["Amount"]) == "10"  # type: ignore[union-attr]


async def test_owner_changed_while_offline_makes_the_old_owners_edit_unresolvable(
    relay: RelayHarness,
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        deal = await private_deal(alice)
        alice.go_offline()
        alice.update(deal, {"Stage": "Qualification"})
        result = await root.set_owner(deal, "bob")
        assert result.details["owner"] == "bob"
        await bob.sync()
        assert bob.get(deal).fields["Owner"] == "bob"  # type: ignore[union-attr]
        alice.go_online()
        await alice.sync()
        [change] = alice.pending()
        assert change.status is Status.UNRESOLVABLE
        alice.dismiss(deal)
        assert alice.get(deal) is None


async def test_access_gained_while_offline_arrives_on_the_next_sync(relay: RelayHarness) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        await bob.sync()
        bob.go_offline()
        deal = await private_deal(alice)
        alice.update(deal, {"Amount": "42"})
        await alice.sync()
        await root.share(deal, "bob", access="read")
        bob.go_online()
        await bob.sync()
        record = bob.get(deal)
        assert record is not None
        assert str(record.fields["Amount"]) == "42"


async def test_admin_delete_reaches_every_reader(relay: RelayHarness) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        rid = alice.create("Account", {"Name": "Doomed"})
        await alice.sync()
        await bob.sync()
        await root.delete(rid)
        await eventually(lambda: alice.get(rid) is None and bob.get(rid) is None)


async def test_admin_actions_are_versioned_and_audited(relay: RelayHarness) -> None:
    alice = relay.client("alice")
    async with alice, admin(relay) as root:
        deal = await private_deal(alice)
        first = await root.share(deal, "bob", access="edit")
        second = await root.unshare(deal, "bob")
        assert second.version == first.version + 1
        access = await root.access(deal)
        assert access["owner"] == "alice" and access["shares"] == {}
        assert access["sharing"] == "private"
    rows = relay.storage.changes_of(deal)
    assert [(r.kind, r.user) for r in rows[-2:]] == [("share", "root"), ("unshare", "root")]
    assert all(r.at > 0 for r in rows)


async def test_admin_actions_need_an_admin_token(relay: RelayHarness) -> None:
    alice = relay.client("alice")
    async with alice:
        deal = await private_deal(alice)
    async with AdminClient(relay.url, relay.token("mallory")) as impostor:
        with pytest.raises(AdminError, match="administrator"):
            await impostor.share(deal, "mallory", access="edit")


async def test_token_expiring_mid_session_ends_it_and_keeps_pending_changes(
    tmp_path: Path,
) -> None:
    relay = RelayHarness(tmp_path, token_leeway=0)
    await relay.start()
    try:
        await _expire_mid_session(relay)
    finally:
        await relay.stop()


async def _expire_mid_session(relay: RelayHarness) -> None:
    short = relay.server.authority.issue("alice", ttl=3)
    expires_at = relay.server.authority.verify(short).expires_at
    assert expires_at is not None
    alice = Client(
        relay.url,
        token=short,
        store=str(relay.tmp_path / "a.sqlite3"),
        schema=relay.client("x").schema,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    async with alice:
        events = alice.events()
        await alice.sync()
        assert alice.online
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.1)
        rid = alice.create("Account", {"Name": "Written after expiry"})
        await eventually(lambda: not alice.online)
        seen = []
        while (event := events.get_nowait()) is not None:
            seen.append(event)
        assert any(isinstance(e, AuthenticationFailed) and "expired" in e.message for e in seen)
        assert [c.record_id for c in alice.pending()] == [rid]
        alice.set_token(relay.token("alice"))
        await alice.sync()
        assert alice.pending() == []


async def test_reader_without_a_hidden_field_edits_the_record_without_erasing_it(
    relay: RelayHarness,
) -> None:
    from decimal import Decimal

    alice = relay.client("alice")
    ivan = Client(
        relay.url,
        token=relay.server.authority.issue("ivan", roles=["intern"]),
        store=str(relay.tmp_path / "ivan.sqlite3"),
        schema=alice.schema,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    async with alice, ivan:
        rid = alice.create("Account", {"Name": "Acme", "Revenue": Decimal("987654.321")})
        await alice.sync()
        await ivan.sync()
        assert "Revenue" not in ivan.schema.object("Account").fields
        assert ivan.get(rid).fields == {"Name": "Acme", "Owner": "alice"}  # type: ignore[union-attr]
        ivan.update(rid, {"Name": "Acme Corp"})
        await ivan.sync()
        assert ivan.pending() == []
        await alice.sync()
        assert alice.get(rid).fields["Name"] == "Acme Corp"  # type: ignore[union-attr]
        assert alice.get(rid).fields["Revenue"] == Decimal("987654.321")  # type: ignore[union-attr]
        alice.update(rid, {"Revenue": Decimal("1"), "Industry": "Energy"})
        await alice.sync()
        await ivan.sync()
        assert ivan.get(rid).fields == {  # type: ignore[union-attr]
            "Name": "Acme Corp",
            "Industry": "Energy",
            "Owner": "alice",
        }


async def test_a_field_hidden_once_is_never_erased_by_that_replica(relay: RelayHarness) -> None:
    """A replica that synced as an intern holds placeholders for Revenue; after its user
    gets a token without the role, its edits must still not erase Revenue."""
    from decimal import Decimal

    alice = relay.client("alice")
    ivan = Client(
        relay.url,
        token=relay.server.authority.issue("ivan", roles=["intern"]),
        store=str(relay.tmp_path / "ivan.sqlite3"),
        schema=alice.schema,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    async with alice, ivan:
        rid = alice.create("Account", {"Name": "Acme", "Revenue": Decimal("5")})
        await alice.sync()
        await ivan.sync()
        ivan.set_token(relay.token("ivan"))  # promoted: no longer an intern
        await ivan.sync()
        ivan.update(rid, {"Name": "Acme Corp"})
        await ivan.sync()
        await alice.sync()
        assert alice.get(rid).fields["Name"] == "Acme Corp"  # type: ignore[union-attr]
        assert alice.get(rid).fields["Revenue"] == Decimal("5")  # type: ignore[union-attr]


async def test_a_field_that_becomes_readable_arrives_on_the_next_sync(relay: RelayHarness) -> None:
    from decimal import Decimal

    alice = relay.client("alice")
    ivan = Client(
        relay.url,
        token=relay.server.authority.issue("ivan", roles=["intern"]),
        store=str(relay.tmp_path / "ivan.sqlite3"),
        schema=alice.schema,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    async with alice, ivan:
        rid = alice.create("Account", {"Name": "Acme", "Revenue": Decimal("7")})
        await alice.sync()
        await ivan.sync()
        assert "Revenue" not in ivan.get(rid).fields  # type: ignore[union-attr]
        ivan.set_token(relay.token("ivan"))  # promoted
        await eventually(lambda: "Revenue" in ivan.schema.object("Account").fields)
        await ivan.sync()
        assert ivan.get(rid).fields["Revenue"] == Decimal("7")  # type: ignore[union-attr]


async def test_an_object_that_becomes_readable_arrives_whole_on_the_next_sync(
    tmp_path: Path,
) -> None:
    relay = TasksForPlannersOnly(tmp_path)
    await relay.start()
    try:
        planner = relay.server.authority.issue("alice", roles=["planner"])
        store = str(tmp_path / "a.sqlite3")
        alice = Client(relay.url, token=planner, store=store, schema=EXAMPLE_CONFIG)
        bob = relay.client("bob")
        async with alice, bob:
            old = alice.create("Task", {"Subject": "Old task", "Status": "Open"})
            busy = alice.create("Task", {"Subject": "Busy task", "Status": "Open"})
            alice.create("Account", {"Name": "Acme"})  # something bob may read, after them
            await alice.sync()
            await bob.sync()  # bob's cursor moves past the tasks: he may not read Tasks yet
            await eventually(lambda: len(bob.records("Account")) == 1)
            assert bob.records("Task") == [] and bob.replica.cursor > 2
            alice.update(busy, {"Priority": "High"})
            await alice.sync()

            bob.set_token(relay.server.authority.issue("bob", roles=["planner"]))  # promoted
            await eventually(lambda: len(bob.records("Task")) == 2)
            await bob.sync()
            mine = {r.id: r.fields for r in alice.records("Task")}
            assert set(mine) == {old, busy}
            assert {r.id: r.fields for r in bob.records("Task")} == mine  # whole records
    finally:
        await relay.stop()


async def test_an_object_no_longer_readable_is_forgotten_and_its_pending_edit_unresolvable(
    tmp_path: Path,
) -> None:
    relay = TasksForPlannersOnly(tmp_path)
    await relay.start()
    try:
        planner = relay.server.authority.issue("bob", roles=["planner"])
        store = str(tmp_path / "b.sqlite3")
        bob = Client(relay.url, token=planner, store=store, schema=EXAMPLE_CONFIG)
        lost: list[AccessLost] = []
        async with bob:
            events = bob.events()
            kept = bob.create("Task", {"Subject": "Synced task"})
            edited = bob.create("Task", {"Subject": "Edited task"})
            account = bob.create("Account", {"Name": "Acme"})
            await bob.sync()
            bob.go_offline()
            bob.update(edited, {"Status": "Done"})  # pending when the role goes away

            bob.set_token(relay.token("bob"))  # no longer a planner
            bob.go_online()
            await eventually(lambda: bob.get(kept) is None)
            change = next(c for c in bob.pending() if c.record_id == edited)
            assert change.status is Status.UNRESOLVABLE
            assert change.problem is not None
            assert change.problem.reason is UnresolvableReason.FORBIDDEN
            assert bob.get(account) is not None  # other objects are untouched
            bob.dismiss(edited)
            assert bob.records("Task") == [] and bob.pending() == []
            while (event := events.get_nowait()) is not None:
                if isinstance(event, AccessLost):
                    lost.append(event)
        assert {event.record_id for event in lost} == {kept, edited}
    finally:
        await relay.stop()
