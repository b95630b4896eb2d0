"""Offline behaviour of a replica: create / update / delete, the outbox and its rules."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from crdtsync import (
    ChangeKind,
    Client,
    FieldChange,
    RecordDeleted,
    RecordNotFound,
    Status,
    UnknownObject,
    ValidationError,
)


def test_create_returns_a_permanent_unique_id_and_queues_a_create(client: Client) -> None:
    ids = {client.create("Account", {"Name": f"A{i}"}) for i in range(50)}
    assert len(ids) == 50
    rid = next(iter(ids))
    assert uuid.UUID(rid).version == 4
    record = client.get(rid)
    assert record is not None
    assert record.status is Status.PENDING
    [change] = [c for c in client.pending() if c.record_id == rid]
    assert change.kind is ChangeKind.CREATE
    assert change.changes["Name"] == FieldChange(None, record.fields["Name"])


def test_typed_values_read_back_exactly_from_the_local_store(client: Client) -> None:
    rid = client.create(
        "Account", {"Name": "Acme", "Employees": 2**60, "Revenue": Decimal("0.10"), "Active": True}
    )
    fields = client.get(rid).fields  # type: ignore[union-attr]
    assert fields["Employees"] == 2**60 and type(fields["Employees"]) is int
    assert str(fields["Revenue"]) == "0.10"
    assert fields["Active"] is True


def test_invalid_create_raises_naming_each_field_and_queues_nothing(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.create("Account", {"Industry": "Mining", "Employees": "many"})
    assert set(info.value.fields) == {"Industry", "Employees", "Name"}  # Name is required
    assert "Industry" in str(info.value) and "Employees" in str(info.value)
    assert client.pending() == []
    assert client.records() == []


def test_missing_required_field_is_reported_by_name(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.create("Contact", {"Email": "a@b.example"})
    assert info.value.fields == ("LastName",)


def test_custom_rule_runs_locally_on_create(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.create("Contact", {"LastName": "Nobody"})
    assert info.value.fields == ("Email",)
    assert "Email or a Phone" in str(info.value)


def test_unknown_object_is_a_clear_error(client: Client) -> None:
    with pytest.raises(UnknownObject, match="Lead"):
        client.create("Lead", {"Name": "x"})
    with pytest.raises(UnknownObject, match="Lead"):
        client.records("Lead")


def test_unknown_field_and_wrong_type_on_update_change_nothing(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    before = client.pending()
    with pytest.raises(ValidationError) as info:
        client.update(rid, {"Colour": "red", "Employees": 1.5})
    assert set(info.value.fields) == {"Colour", "Employees"}
    assert client.pending() == before
    assert client.get(rid).fields == {"Name": "Acme"}  # type: ignore[union-attr]


def test_clearing_a_required_field_is_refused(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    with pytest.raises(ValidationError) as info:
        client.update(rid, {"Name": None})
    assert info.value.fields == ("Name",)


def test_editing_an_unknown_record_raises_record_not_found(client: Client) -> None:
    with pytest.raises(RecordNotFound, match="nope"):
        client.update("nope", {"Name": "x"})
    with pytest.raises(RecordNotFound):
        client.delete("nope")
    assert client.get("nope") is None


def test_successive_edits_coalesce_into_one_entry_keeping_the_create(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    client.update(rid, {"Industry": "Energy"})
    client.update(rid, {"Industry": "Retail", "Employees": 10})
    [change] = client.pending()
    assert change.kind is ChangeKind.CREATE
    assert change.changes == {
        "Name": FieldChange(None, "Acme"),
        "Industry": FieldChange(None, "Retail"),
        "Employees": FieldChange(None, 10),
    }


def test_create_then_delete_offline_cancels_out(client: Client) -> None:
    keep = client.create("Account", {"Name": "Keep"})
    gone = client.create("Account", {"Name": "Gone"})
    client.update(gone, {"Industry": "Energy"})
    client.delete(gone)
    assert [c.record_id for c in client.pending()] == [keep]
    assert client.get(gone) is None
    assert [r.id for r in client.records()] == [keep]


def test_update_of_a_deleted_record_raises_record_deleted(
    synced_account: tuple[Client, str],
) -> None:
    client, rid = synced_account
    client.delete(rid)
    with pytest.raises(RecordDeleted):
        client.update(rid, {"Name": "x"})
    with pytest.raises(RecordDeleted):
        client.delete(rid)


def test_delete_supersedes_edits_of_a_synced_record(synced_account: tuple[Client, str]) -> None:
    client, rid = synced_account
    client.update(rid, {"Industry": "Energy"})
    client.delete(rid)
    [change] = client.pending()
    assert change.kind is ChangeKind.DELETE
    assert change.changes == {}
    assert change.base_version == 1
    assert client.get(rid) is None
    assert client.records() == []


def test_update_of_a_synced_record_lists_old_and_new_values(
    synced_account: tuple[Client, str],
) -> None:
    client, rid = synced_account
    assert client.pending() == []
    assert client.get(rid).status is Status.SYNCED  # type: ignore[union-attr]
    client.update(rid, {"Name": "Acme Corp"})
    client.update(rid, {"Name": "Acme Inc", "Employees": 5})
    [change] = client.pending()
    assert change.kind is ChangeKind.UPDATE
    assert change.base_version == 1
    assert change.changes == {
        "Name": FieldChange("Acme", "Acme Inc"),
        "Employees": FieldChange(None, 5),
    }


def test_writing_the_current_values_queues_nothing(synced_account: tuple[Client, str]) -> None:
    client, rid = synced_account
    client.update(rid, {"Name": "Acme"})
    assert client.pending() == []


def test_pending_lists_records_in_the_order_changes_were_first_made(client: Client) -> None:
    first = client.create("Account", {"Name": "First"})
    second = client.create("Account", {"Name": "Second"})
    client.update(first, {"Industry": "Energy"})
    assert [c.record_id for c in client.pending()] == [first, second]


def test_summary_counts_each_object_by_status(synced_account: tuple[Client, str]) -> None:
    client, synced = synced_account
    client.create("Account", {"Name": "New"})
    client.create("Task", {"Subject": "Call"})
    summary = client.summary()
    assert summary["Account"]["pending"] == 1
    assert summary["Account"]["synced"] == 1
    assert summary["Task"]["pending"] == 1
    assert summary["Contact"] == {s.value: 0 for s in Status}
    assert client.get(synced).status is Status.SYNCED  # type: ignore[union-attr]


def test_text_field_update_is_stored_as_a_character_diff(client: Client) -> None:
    rid = client.create("Task", {"Subject": "Call", "Notes": "Ask about wind farms."})
    client.update(rid, {"Notes": "Ask about solar and wind farms."})
    assert client.get(rid).fields["Notes"] == "Ask about solar and wind farms."  # type: ignore[union-attr]


def test_records_filters_by_object(client: Client) -> None:
    a = client.create("Account", {"Name": "A"})
    t = client.create("Task", {"Subject": "T"})
    assert [r.id for r in client.records("Account")] == [a]
    assert [r.id for r in client.records("Task")] == [t]
    assert {r.id for r in client.records()} == {a, t}


def test_shortening_a_text_field_is_queued(synced_account: tuple[Client, str]) -> None:
    client, rid = synced_account
    client.update(rid, {"Description": "hello world"})
    [out] = client.replica.outgoing()
    client.replica.apply_ack(out.change_id, 2)
    client.update(rid, {"Description": "hello"})
    [change] = client.pending()
    assert change.changes == {"Description": FieldChange("hello world", "hello")}
