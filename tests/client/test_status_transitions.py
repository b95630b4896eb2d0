"""Status transitions driven through the entry points the sync layer uses, and locking."""

from __future__ import annotations

import pycrdt
import pytest

from crdtsync import (
    ChangeKind,
    Client,
    FieldChange,
    FieldConflict,
    FieldError,
    InvalidOperation,
    PendingChanged,
    Problem,
    RecordLocked,
    RecordNeedsAttention,
    RemoteChangeArrived,
    Status,
    UnresolvableReason,
    ValidationError,
)
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import push_and_ack

OTHER_CLIENT_ID = 1  # lower than any replica's random id: a zombie write of ours would win


class Relay:
    """A stand-in for the relay's copy of one record, to play verdicts back."""

    def __init__(self, client: Client, record_id: str) -> None:
        spec = client.schema.object(client.get(record_id).object)  # type: ignore[union-attr]
        self.doc = RecordDoc(spec)
        self.version = 0

    def accept(self, delta: bytes) -> int:
        self.doc.apply(delta)
        self.version += 1
        return self.version

    def edit_by_someone_else(self, values: dict[str, object]) -> bytes:
        other = self.doc.copy(client_id=OTHER_CLIENT_ID)
        update = other.write(values)
        self.accept(update)
        return update


@pytest.fixture
def relay_account(client: Client) -> tuple[Client, str, Relay]:
    rid = client.create("Account", {"Name": "Acme", "Employees": 10})
    relay = Relay(client, rid)
    [change] = client.replica.outgoing()
    assert client.replica.apply_ack(change.change_id, relay.accept(change.delta))
    return client, rid, relay


def conflict_on_name(client: Client, rid: str, relay: Relay) -> str:
    """Someone else renames the account while this client renames it offline."""
    theirs = relay.edit_by_someone_else({"Name": "Theirs"})
    client.update(rid, {"Name": "Mine"})
    [change] = client.replica.outgoing()
    problem = Problem(
        conflicts=(
            FieldConflict(
                field="Name", base="Acme", mine="Mine", theirs="Theirs", changed_by="bob"
            ),
        )
    )
    assert client.replica.apply_conflict(
        change.change_id, problem, version=relay.version, update=theirs
    )
    return change.change_id


def test_outgoing_marks_changes_syncing_until_acked(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    [change] = client.replica.outgoing()
    assert change.kind is ChangeKind.CREATE and change.record_id == rid
    assert client.get(rid).status is Status.SYNCING  # type: ignore[union-attr]
    assert client.pending()[0].status is Status.SYNCING
    assert client.replica.outgoing() == []
    assert client.replica.apply_ack(change.change_id, 7)
    assert client.pending() == []
    record = client.get(rid)
    assert record is not None and record.status is Status.SYNCED and record.version == 7


def test_duplicate_ack_is_ignored(client: Client) -> None:
    client.create("Account", {"Name": "Acme"})
    [change] = client.replica.outgoing()
    assert client.replica.apply_ack(change.change_id, 1)
    assert not client.replica.apply_ack(change.change_id, 2)
    assert client.records()[0].version == 1


def test_edit_while_syncing_stays_queued_after_the_ack(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    [sent] = client.replica.outgoing()
    client.update(rid, {"Industry": "Energy"})
    assert client.get(rid).status is Status.SYNCING  # type: ignore[union-attr]
    client.replica.apply_ack(sent.change_id, 1)
    [rest] = client.pending()
    assert rest.status is Status.PENDING
    assert rest.kind is ChangeKind.UPDATE
    assert rest.changes == {"Industry": FieldChange(None, "Energy")}
    assert rest.change_id != sent.change_id
    [again] = client.replica.outgoing()
    relay = RecordDoc(client.schema.object("Account"))
    relay.apply(sent.delta)
    relay.apply(again.delta)
    assert relay.read() == {"Name": "Acme", "Industry": "Energy"}


def test_requeued_change_is_resent_with_the_same_id_and_content(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    [first] = client.replica.outgoing()
    assert client.replica.requeue_inflight() == 1
    assert client.get(rid).status is Status.PENDING  # type: ignore[union-attr]
    client.update(rid, {"Employees": 3})  # made after the first send
    [second] = client.replica.outgoing()
    assert (second.change_id, second.delta) == (first.change_id, first.delta)
    client.replica.apply_ack(second.change_id, 1)
    [rest] = client.replica.outgoing()
    assert rest.change_id != first.change_id
    relay = RecordDoc(client.schema.object("Account"))
    relay.apply(second.delta)
    relay.apply(rest.delta)
    assert relay.read() == {"Name": "Acme", "Employees": 3}


def test_conflict_locks_the_record_and_lists_base_mine_theirs(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    events = client.events()
    conflict_on_name(client, rid, relay)
    [change] = client.pending()
    assert change.status is Status.CONFLICT
    assert change.problem is not None
    assert change.problem.conflicts[0] == FieldConflict(
        field="Name", base="Acme", mine="Mine", theirs="Theirs", changed_by="bob"
    )
    with pytest.raises(RecordLocked, match="conflict"):
        client.update(rid, {"Employees": 11})
    with pytest.raises(RecordLocked):
        client.delete(rid)
    assert client.replica.outgoing() == []
    seen = []
    while (event := events.get_nowait()) is not None:
        seen.append(event)
    assert PendingChanged(rid, "Account", Status.CONFLICT) in seen
    attention = [e for e in seen if isinstance(e, RecordNeedsAttention)]
    assert attention and attention[0].status is Status.CONFLICT
    assert summary_status(client, "conflict") == 1


def test_record_in_conflict_shows_the_users_values_whoever_wins_the_crdt_merge(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    other = relay.doc.copy(client_id=2**53 - 1)  # higher than ours: theirs wins a plain merge
    theirs = other.write({"Name": "Theirs"})
    relay.accept(theirs)
    client.update(rid, {"Name": "Mine"})
    [change] = client.replica.outgoing()
    problem = Problem(
        conflicts=(FieldConflict(field="Name", base="Acme", mine="Mine", theirs="Theirs"),)
    )
    client.replica.apply_conflict(change.change_id, problem, version=relay.version, update=theirs)
    record = client.get(rid)
    assert record is not None and record.status is Status.CONFLICT
    assert record.fields["Name"] == "Mine"  # as the pending change lists it
    client.resolve(rid, {})
    [resolved] = client.replica.outgoing()
    relay.accept(resolved.delta)
    assert relay.doc.read()["Name"] == "Mine"


def summary_status(client: Client, status: str) -> int:
    return client.summary()["Account"][status]


def test_resolve_rebases_fixes_on_the_latest_server_version(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    conflict_on_name(client, rid, relay)
    client.resolve(rid, {"Name": "Agreed"})
    [change] = client.pending()
    assert change.status is Status.PENDING
    assert change.base_version == relay.version
    assert change.changes["Name"] == FieldChange("Theirs", "Agreed")
    [out] = client.replica.outgoing()
    client.replica.apply_ack(out.change_id, relay.accept(out.delta))
    assert relay.doc.read()["Name"] == "Agreed"
    assert client.get(rid).fields == relay.doc.read()  # type: ignore[union-attr]


def test_resolve_taking_theirs_never_revives_the_rejected_write(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    conflict_on_name(client, rid, relay)
    old_client_id = client.replica.client_id
    client.resolve(rid, {"Name": "Theirs", "Employees": 12})
    assert client.replica.client_id != old_client_id
    [out] = client.replica.outgoing()
    relay.accept(out.delta)
    assert relay.doc.read()["Name"] == "Theirs"
    assert relay.doc.read()["Employees"] == 12


def test_dismiss_restores_the_server_version_and_the_rejected_write_stays_dead(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    conflict_on_name(client, rid, relay)
    client.dismiss(rid)
    record = client.get(rid)
    assert record is not None and record.status is Status.SYNCED
    assert record.fields["Name"] == "Theirs"
    # A later edit of another field must not carry the rejected "Mine" along.
    client.update(rid, {"Industry": "Energy"})
    [out] = client.replica.outgoing()
    relay.accept(out.delta)
    assert relay.doc.read()["Name"] == "Theirs"
    assert relay.doc.read()["Industry"] == "Energy"


def test_resolve_that_is_still_invalid_keeps_the_conflict(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    conflict_on_name(client, rid, relay)
    with pytest.raises(ValidationError) as info:
        client.resolve(rid, {"Employees": -1})
    assert info.value.fields == ("Employees",)
    assert client.pending()[0].status is Status.CONFLICT


def test_validation_conflict_carries_messages(relay_account: tuple[Client, str, Relay]) -> None:
    client, rid, _ = relay_account
    client.update(rid, {"Employees": 20})
    [out] = client.replica.outgoing()
    problem = Problem(errors=(FieldError("Employees", "must be at most 15"),))
    client.replica.apply_conflict(out.change_id, problem, version=1)
    [change] = client.pending()
    assert change.status is Status.CONFLICT
    assert change.problem is not None
    assert change.problem.errors == (FieldError("Employees", "must be at most 15"),)
    assert "must be at most 15" in change.problem.describe()


def test_unresolvable_can_only_be_dismissed_which_removes_the_record(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, _ = relay_account
    client.update(rid, {"Name": "Mine"})
    [out] = client.replica.outgoing()
    client.replica.apply_unresolvable(out.change_id, Problem(reason=UnresolvableReason.DELETED))
    assert client.get(rid).status is Status.UNRESOLVABLE  # type: ignore[union-attr]
    with pytest.raises(RecordLocked, match="dismiss"):
        client.update(rid, {"Name": "Again"})
    with pytest.raises(InvalidOperation, match="only be dismissed"):
        client.resolve(rid, {"Name": "x"})
    assert "deleted by someone else" in client.pending()[0].problem.describe()  # type: ignore[union-attr]
    client.dismiss(rid)
    assert client.get(rid) is None
    assert client.pending() == []


def test_delete_in_conflict_resolves_as_delete_anyway_or_dismisses_as_keep(
    client: Client,
) -> None:
    keep = client.create("Account", {"Name": "Keep"})
    drop = client.create("Account", {"Name": "Drop"})
    push_and_ack(client)
    client.delete(keep)
    client.delete(drop)
    outgoing = client.replica.outgoing()
    for change in outgoing:
        problem = Problem(message="changed by someone else since you deleted it")
        client.replica.apply_conflict(change.change_id, problem, version=5)
    with pytest.raises(InvalidOperation, match="no values"):
        client.resolve(drop, {"Name": "x"})
    client.resolve(drop)
    client.dismiss(keep)
    assert client.get(keep) is not None and client.get(keep).status is Status.SYNCED  # type: ignore[union-attr]
    [change] = client.pending()
    assert (change.record_id, change.kind, change.base_version) == (drop, ChangeKind.DELETE, 5)
    [out] = client.replica.outgoing()
    client.replica.apply_ack(out.change_id, 6)
    assert client.get(drop) is None and client.pending() == []


def test_resolve_and_dismiss_refuse_records_without_a_problem(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    with pytest.raises(InvalidOperation, match="no conflict"):
        client.resolve(rid, {})
    client.replica.outgoing()
    with pytest.raises(InvalidOperation, match="syncing"):
        client.dismiss(rid)


def test_dismiss_of_a_never_synced_create_removes_it(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    [out] = client.replica.outgoing()
    client.replica.apply_conflict(out.change_id, Problem(message="duplicate"), version=0)
    client.dismiss(rid)
    assert client.get(rid) is None and client.pending() == []


def test_remote_record_arrives_as_synced(client: Client) -> None:
    doc = RecordDoc(client.schema.object("Account"), client_id=OTHER_CLIENT_ID)
    doc.write({"Name": "Remote"})
    events = client.events()
    client.replica.apply_remote("r-1", "Account", 3, doc.full_update())
    record = client.get("r-1")
    assert record is not None
    assert (record.fields, record.status, record.version) == ({"Name": "Remote"}, Status.SYNCED, 3)
    assert events.get_nowait() == RemoteChangeArrived("r-1", "Account", ChangeKind.CREATE)


def test_remote_edit_of_another_field_merges_under_a_pending_edit(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, relay = relay_account
    client.update(rid, {"Industry": "Retail"})
    theirs = relay.edit_by_someone_else({"Employees": 99})
    client.replica.apply_remote(rid, "Account", relay.version, theirs)
    record = client.get(rid)
    assert record is not None and record.status is Status.PENDING
    assert record.fields == {"Name": "Acme", "Industry": "Retail", "Employees": 99}
    [change] = client.pending()
    assert change.changes == {"Industry": FieldChange(None, "Retail")}
    [out] = client.replica.outgoing()
    relay.accept(out.delta)
    assert relay.doc.read() == record.fields


def test_remote_delete_makes_a_pending_edit_unresolvable(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, _ = relay_account
    client.update(rid, {"Name": "Mine"})
    client.replica.apply_remote(rid, "Account", 9, deleted=True)
    [change] = client.pending()
    assert change.status is Status.UNRESOLVABLE
    assert change.problem is not None and change.problem.reason is UnresolvableReason.DELETED


def test_remote_delete_of_a_pending_edit_alerts_the_user(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, _ = relay_account
    client.update(rid, {"Name": "Mine"})
    events = client.events()
    client.replica.apply_remote(rid, "Account", 9, deleted=True)
    seen = []
    while (event := events.get_nowait()) is not None:
        seen.append(event)
    assert PendingChanged(rid, "Account", Status.UNRESOLVABLE) in seen
    [attention] = [e for e in seen if isinstance(e, RecordNeedsAttention)]
    assert attention.status is Status.UNRESOLVABLE
    assert attention.problem.reason is UnresolvableReason.DELETED


def test_remote_delete_of_a_clean_record_removes_it(
    relay_account: tuple[Client, str, Relay],
) -> None:
    client, rid, _ = relay_account
    client.replica.apply_remote(rid, "Account", 9, deleted=True)
    assert client.get(rid) is None and client.records() == []


def test_stale_remote_update_is_ignored(relay_account: tuple[Client, str, Relay]) -> None:
    client, rid, relay = relay_account
    stale = relay.edit_by_someone_else({"Name": "Old news"})
    client.replica.apply_remote(rid, "Account", 0, stale)
    assert client.get(rid).fields["Name"] == "Acme"  # type: ignore[union-attr]


def test_text_edits_of_both_sides_merge_character_wise(client: Client) -> None:
    rid = client.create("Task", {"Subject": "Call", "Notes": "Ask about wind."})
    relay = Relay(client, rid)
    [out] = client.replica.outgoing()
    client.replica.apply_ack(out.change_id, relay.accept(out.delta))
    theirs = relay.edit_by_someone_else({"Notes": "Ask about wind. Bring the contract."})
    client.update(rid, {"Notes": "Please ask about wind."})
    client.replica.apply_remote(rid, "Task", relay.version, theirs)
    merged = "Please ask about wind. Bring the contract."
    assert client.get(rid).fields["Notes"] == merged  # type: ignore[union-attr]
    [out] = client.replica.outgoing()
    relay.accept(out.delta)
    assert relay.doc.read()["Notes"] == merged


def test_client_id_fits_javascript_numbers(client: Client) -> None:
    assert 0 < client.replica.client_id < 2**53
    doc = pycrdt.Doc(client_id=client.replica.client_id)
    assert doc.client_id == client.replica.client_id


def test_delete_while_a_create_is_in_flight_is_sent_after_its_ack(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    [create] = client.replica.outgoing()
    client.delete(rid)
    assert client.get(rid) is None
    assert client.pending()[0].kind is ChangeKind.DELETE
    client.replica.requeue_inflight()
    [resent] = client.replica.outgoing()
    assert (resent.kind, resent.change_id) == (ChangeKind.CREATE, create.change_id)
    client.replica.apply_ack(resent.change_id, 1)
    [delete] = client.replica.outgoing()
    assert (delete.kind, delete.base_version) == (ChangeKind.DELETE, 1)
    client.replica.apply_ack(delete.change_id, 2)
    assert client.pending() == [] and client.records() == []
