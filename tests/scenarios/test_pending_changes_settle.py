"""Pending changes that must settle into something an app can show: values that cannot
be stored, edits undone before they synced, a record deleted while its create was in
flight. Public API, a real relay over websockets on loopback."""

from __future__ import annotations

import pytest

from crdtsync import ChangeKind, Client, Status, ValidationError
from tests.helpers.harness import RelayHarness, eventually
from tests.helpers.tcp_proxy import TcpProxy

# -- F9: strings that are not text ---------------------------------------------------


@pytest.mark.parametrize(
    ("object_name", "values", "field"),
    [
        ("Account", {"Name": "bad \ud800"}, "Name"),
        ("Account", {"Name": "Acme", "Description": "lone \udc80 low half"}, "Description"),
        ("Contact", {"LastName": "Smith", "Email": "a\ud83d@ex.com"}, "Email"),
    ],
)
def test_a_string_with_an_unpaired_surrogate_is_a_validation_error_naming_the_field(
    client: Client, object_name: str, values: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        client.create(object_name, values)
    assert raised.value.fields == (field,)
    assert "unpaired surrogate" in str(raised.value)
    assert client.pending() == [] and client.records() == []


def test_an_update_with_an_unpaired_surrogate_changes_nothing(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme", "Description": "fine"})
    before = client.pending()
    for values in ({"Name": "x\udfff"}, {"Description": "fine \ud800"}):
        with pytest.raises(ValidationError, match="unpaired surrogate"):
            client.update(rid, values)
    assert client.pending() == before
    assert client.get(rid).fields["Description"] == "fine"  # type: ignore[union-attr]


# -- F11: an edit undone before it synced ----------------------------------------------


async def test_a_field_edited_back_to_its_synced_value_is_no_change(relay: RelayHarness) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob:
        rid = alice.create("Account", {"Name": "Acme", "Employees": 1, "Description": "hi"})
        await alice.sync()
        await bob.sync()
        alice.go_offline()
        alice.update(rid, {"Employees": 2})
        alice.update(rid, {"Employees": 1})
        alice.update(rid, {"Description": "hi there"})
        alice.update(rid, {"Description": "hi"})
        assert alice.pending() == []  # nothing left to sync
        assert alice.get(rid).status is Status.SYNCED  # type: ignore[union-attr]

        alice.update(rid, {"Employees": 5, "Industry": "Energy"})
        alice.update(rid, {"Employees": 1})  # undone; the Industry edit stays
        [change] = alice.pending()
        assert set(change.changes) == {"Industry"}

        bob.update(rid, {"Employees": 40})  # while alice's undone edit sits offline
        await bob.sync()
        alice.go_online()
        await alice.sync()
        assert alice.pending() == []  # no conflict over a value she no longer changes
        await bob.sync()
        for replica in (alice, bob):
            record = replica.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert (record.fields["Employees"], record.fields["Industry"]) == (40, "Energy")


def test_a_field_of_a_new_record_set_and_cleared_offline_is_not_listed(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme", "Industry": "Energy"})
    client.update(rid, {"Industry": None})
    [change] = client.pending()
    assert change.kind is ChangeKind.CREATE and set(change.changes) == {"Name"}
    assert client.get(rid).fields == {"Name": "Acme"}  # type: ignore[union-attr]


# -- F10: deleted while its create was in flight, and the create refused ----------------


async def test_a_create_refused_after_it_was_deleted_here_leaves_nothing(
    relay: RelayHarness,
) -> None:
    async with TcpProxy(relay.port) as proxy:
        alice = relay.client("alice", url=proxy.url)
        bob = relay.client("bob")
        async with alice, bob:
            bob.create("Contact", {"LastName": "Taken", "Email": "same@ex.com"})
            await bob.sync()
            await alice.sync()
            proxy.delay(0.3)  # the verdict takes its time
            rid = alice.create("Contact", {"LastName": "Mine", "Email": "same@ex.com"})
            await eventually(lambda: [c.status for c in alice.pending()] == [Status.SYNCING])
            alice.delete(rid)
            assert alice.get(rid) is None
            await eventually(lambda: alice.pending() == [])  # refused (unique): nothing left
            proxy.pass_through()
            await alice.sync()
            assert alice.pending() == [] and alice.get(rid) is None
            assert alice.replica.store.get_record(rid) is None
            assert relay.storage.get_record(rid) is None
