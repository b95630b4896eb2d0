"""Unit tests of the relay's merge decision, :func:`crdtsync_server.merge.decide`.

No sockets: histories are built by pushing through :meth:`Relay.push` with a tiny fake
session (the relay's own storage path), and the change under test is then handed to
``decide`` directly, with a :class:`RecordState` freshly loaded from the relay's
storage and that storage as the :class:`MergeContext`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pycrdt
import pytest
from crdtsync_server.config import RelayConfig
from crdtsync_server.merge import (
    Accepted,
    AlreadyDone,
    Decision,
    RecordState,
    Refused,
    decide,
)
from crdtsync_server.policy import AccessPolicy, Policy, Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage

from crdtsync import Schema
from crdtsync.core.protocol import (
    Ack,
    Admin,
    ChangeFrame,
    Conflict,
    ErrorCode,
    Rejected,
    Unresolvable,
    Verdict,
    WireConflict,
    WireFieldError,
)
from crdtsync.core.record import RecordDoc
from crdtsync.core.yupdate import parse_update
from tests.helpers.sessions import FakeSession
from tests.helpers.updates import vu

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "server/example/app.toml"
SCHEMA = Schema.from_toml(EXAMPLE_CONFIG)
POLICY = RelayConfig.from_toml(EXAMPLE_CONFIG).policy

ALICE = Principal("alice", "replica-a")
BOB = Principal("bob", "replica-b")
A_CLIENT = 1001
B_CLIENT = 2002

ACCOUNT_ID = "acc-1"
CONTACT_ID = "con-1"


class Harness:
    """A relay on an in-memory SQLite database, and ``decide`` wired to its storage."""

    def __init__(self, schema: Schema = SCHEMA, policy: Policy = POLICY) -> None:
        self.schema = schema
        self.policy = policy
        self.storage = RelayStorage(":memory:")
        self.relay = Relay(schema=schema, policy=policy, storage=self.storage)
        self._ids = itertools.count(1)

    def frame(
        self,
        principal: Principal,
        record_id: str,
        object_name: str,
        kind: str,
        delta: bytes = b"",
        *,
        base: int = 0,
        bases: Mapping[str, int] | None = None,
    ) -> ChangeFrame:
        return ChangeFrame(
            change_id=f"{principal.replica_id}-{next(self._ids)}",
            record_id=record_id,
            object=object_name,
            kind=kind,
            base_version=base,
            field_bases=dict(bases or {}),
            delta=delta,
        )

    def state(self, record_id: str) -> RecordState | None:
        """The record as the relay would load it from its store (None: unknown)."""
        stored = self.storage.get_record(record_id)
        if stored is None:
            return None
        return RecordState.load(stored, self.schema.objects[stored.object], self.relay.client_id)

    def decide(
        self,
        principal: Principal,
        change: ChangeFrame,
        state: RecordState | None = None,
        *,
        policy: Policy | None = None,
    ) -> Decision:
        if state is None:
            state = self.state(change.record_id)
        return decide(
            change,
            state,
            principal=principal,
            schema=self.schema,
            policy=policy or self.policy,
            context=self.storage,
            relay_client_id=self.relay.client_id,
            facts=self.relay.facts(state.stored, state) if state is not None else None,
        )

    def push(self, principal: Principal, change: ChangeFrame) -> Verdict:
        (verdict,) = self.relay.push(FakeSession(principal), [change]).items  # type: ignore[arg-type]
        return verdict

    def values(self, record_id: str) -> dict[str, Any]:
        state = self.state(record_id)
        assert state is not None
        return state.doc.read()


class Replica:
    """A client replica's documents, as the client library would keep them."""

    def __init__(self, harness: Harness, principal: Principal, client_id: int) -> None:
        self.h = harness
        self.principal = principal
        self.client_id = client_id
        self.docs: dict[str, RecordDoc] = {}
        self.versions: dict[str, int] = {}

    def create(self, object_name: str, record_id: str, values: Mapping[str, Any]) -> ChangeFrame:
        doc = RecordDoc(self.h.schema.objects[object_name], client_id=self.client_id)
        self.docs[record_id] = doc
        self.versions[record_id] = 0
        return self.h.frame(self.principal, record_id, object_name, "create", doc.write(values))

    def open(self, record_id: str) -> None:
        """Load (or catch up with) the relay's current version of the record."""
        stored = self.h.storage.get_record(record_id)
        assert stored is not None
        if record_id in self.docs:
            self.docs[record_id].apply(stored.state)
        else:
            self.docs[record_id] = RecordDoc.from_update(
                self.h.schema.objects[stored.object], stored.state, client_id=self.client_id
            )
        self.versions[record_id] = stored.version

    def edit(
        self,
        record_id: str,
        values: Mapping[str, Any],
        *,
        base: int | None = None,
        bases: Mapping[str, int] | None = None,
    ) -> ChangeFrame:
        doc = self.docs[record_id]
        return self.h.frame(
            self.principal,
            record_id,
            doc.spec.name,
            "update",
            doc.write(values),
            base=self.versions[record_id] if base is None else base,
            bases=bases,
        )

    def delete(self, record_id: str, *, base: int | None = None) -> ChangeFrame:
        return self.h.frame(
            self.principal,
            record_id,
            self.docs[record_id].spec.name,
            "delete",
            base=self.versions[record_id] if base is None else base,
        )

    def push(self, change: ChangeFrame) -> Verdict:
        verdict = self.h.push(self.principal, change)
        if isinstance(verdict, Ack):
            self.versions[change.record_id] = verdict.version
            if change.kind != "delete":
                self.docs[change.record_id].apply(verdict.update)
        return verdict


def raw_delta(
    state: bytes,
    client_id: int,
    *,
    fields: Mapping[str, Any] | None = None,
    roots: Mapping[str, Mapping[str, Any]] | None = None,
) -> bytes:
    """An update written with pycrdt directly, the way a hostile client could."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
    if state:
        doc.apply_update(state)
    before = doc.get_state()
    with doc.transaction():
        for root, entries in {"fields": fields or {}, **(roots or {})}.items():
            if not entries:
                continue
            target = doc.get(root, type=pycrdt.Map)
            for key, value in entries.items():
                target[key] = value
    return bytes(doc.get_update(before))


def expect_rejected(decision: Decision, code: ErrorCode) -> Refused:
    assert isinstance(decision, Refused), decision
    assert isinstance(decision.verdict, Rejected), decision.verdict
    assert decision.verdict.code is code, decision.verdict
    return decision


def expect_conflict(decision: Decision) -> Conflict:
    assert isinstance(decision, Refused), decision
    assert isinstance(decision.verdict, Conflict), decision.verdict
    return decision.verdict


def expect_unresolvable(decision: Decision, reason: str) -> Unresolvable:
    assert isinstance(decision, Refused), decision
    assert isinstance(decision.verdict, Unresolvable), decision.verdict
    assert decision.verdict.reason == reason
    return decision.verdict


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.storage.close()


@pytest.fixture
def alice(h: Harness) -> Replica:
    return Replica(h, ALICE, A_CLIENT)


@pytest.fixture
def bob(h: Harness) -> Replica:
    return Replica(h, BOB, B_CLIENT)


@pytest.fixture
def account(h: Harness, alice: Replica, bob: Replica) -> str:
    """An Account created by alice (version 1), opened by bob at version 1."""
    change = alice.create(
        "Account", ACCOUNT_ID, {"Name": "Acme", "Industry": "Technology", "Description": "Hello"}
    )
    assert isinstance(alice.push(change), Ack)
    bob.open(ACCOUNT_ID)
    return ACCOUNT_ID


@pytest.fixture
def contact(h: Harness, alice: Replica, bob: Replica) -> str:
    """A Contact with an Email and a Phone, created by alice, shared with bob for
    editing (Contacts are read-only to non-owners by default), opened by bob."""
    change = alice.create(
        "Contact",
        CONTACT_ID,
        {"LastName": "Ng", "Email": "ann@example.com", "Phone": "555-0100"},
    )
    assert isinstance(alice.push(change), Ack)
    admin = Principal("root", "console", admin=True)
    shared = h.relay.admin(
        admin,
        Admin(request_id="s1", action="share", record_id=CONTACT_ID, user="bob", access="edit"),
    )
    assert shared.ok, shared
    bob.open(CONTACT_ID)
    return CONTACT_ID


# -- creates and what a change touches --------------------------------------------------


def test_valid_create_is_accepted_and_owner_defaults_to_principal_via_relay_update(
    h: Harness, alice: Replica
) -> None:
    decision = h.decide(ALICE, alice.create("Account", "acc-new", {"Name": "Acme"}))

    assert isinstance(decision, Accepted)
    assert decision.kind == "create"
    assert decision.values["Owner"] == "alice"
    assert decision.fields == {"Name": "Acme", "Owner": "alice"}
    assert decision.relay_update
    assert parse_update(decision.relay_update).clients() == {h.relay.client_id}
    # What is logged and fanned out holds both the change and the relay's addition.
    merged = RecordDoc.from_update(SCHEMA.objects["Account"], decision.update).read()
    assert merged == {"Name": "Acme", "Owner": "alice"}


def test_create_with_explicit_owner_keeps_it_and_adds_no_relay_update(
    h: Harness, alice: Replica
) -> None:
    values = {"Name": "A", "Owner": "alice", "Description": ""}  # every text, as replicas do
    decision = h.decide(ALICE, alice.create("Account", "acc-new", values))

    assert isinstance(decision, Accepted)
    assert decision.values["Owner"] == "alice"
    assert decision.relay_update == b""


def test_create_leaving_out_a_text_field_gets_its_one_text_from_the_relay(
    h: Harness, alice: Replica
) -> None:
    decision = h.decide(ALICE, alice.create("Account", "acc-new", {"Name": "A", "Owner": "alice"}))

    assert isinstance(decision, Accepted)
    assert "Description" not in decision.values  # an empty text is no value
    doc = pycrdt.Doc()
    doc.apply_update(decision.relay_update)
    text = doc.get("fields", type=pycrdt.Map).get("Description")
    assert isinstance(text, pycrdt.Text) and str(text) == ""


def test_creating_a_record_owned_by_someone_else_is_forbidden(h: Harness, alice: Replica) -> None:
    decision = h.decide(ALICE, alice.create("Account", "acc-new", {"Name": "A", "Owner": "carol"}))

    assert isinstance(decision, Refused)
    assert isinstance(decision.verdict, Unresolvable)
    assert decision.verdict.reason == "forbidden"
    assert "records you own" in decision.verdict.message


def test_touched_fields_are_derived_from_the_update_not_from_field_bases(
    h: Harness, alice: Replica, account: str
) -> None:
    delta = alice.docs[account].write({"Name": "Acme Corp", "Description": "Hello there"})

    results = []
    for bases in ({}, {"Industry": 0, "Website": 0, "Employees": 1}, {"Name": 1}):
        change = h.frame(ALICE, account, "Account", "update", delta, base=1, bases=bases)
        decision = h.decide(ALICE, change)
        assert isinstance(decision, Accepted), decision
        results.append(dict(decision.fields))

    assert results[0] == {"Name": "Acme Corp", "Description": None}
    assert results[1] == results[0]
    assert results[2] == results[0]


# -- the shape of the update ------------------------------------------------------------


def test_update_touching_another_root_is_rejected_other_root_and_changes_nothing(
    h: Harness, account: str
) -> None:
    stored = h.storage.get_record(account)
    assert stored is not None
    delta = raw_delta(stored.state, B_CLIENT, fields={"Name": "Hijacked"}, roots={"meta": {"x": 1}})
    state = h.state(account)
    assert state is not None
    before = state.doc.full_update()

    decision = h.decide(BOB, h.frame(BOB, account, "Account", "update", delta, base=1), state)

    refused = expect_rejected(decision, ErrorCode.OTHER_ROOT)
    assert "meta" in refused.verdict.message
    assert not refused.dirty
    assert state.doc.full_update() == before
    assert state.doc.read()["Name"] == "Acme"
    assert h.storage.get_record(account) == stored


def test_unknown_field_is_rejected(h: Harness, account: str) -> None:
    stored = h.storage.get_record(account)
    assert stored is not None
    delta = raw_delta(stored.state, B_CLIENT, fields={"Bogus": "x"})

    decision = h.decide(BOB, h.frame(BOB, account, "Account", "update", delta, base=1))

    refused = expect_rejected(decision, ErrorCode.UNKNOWN_FIELD)
    assert "Bogus" in refused.verdict.message


READ_ONLY_SCHEMA = Schema.from_dict(
    {
        "objects": {
            "Badge": {
                "fields": {
                    "Name": {"type": "string"},
                    "Serial": {"type": "string", "read_only": True},
                }
            }
        }
    }
)
READ_ONLY_POLICY = AccessPolicy.from_config(
    {"default": {"Badge": ["create", "read", "update", "delete"]}}, READ_ONLY_SCHEMA
)


def test_read_only_field_is_allowed_on_create_but_rejected_on_update() -> None:
    h = Harness(READ_ONLY_SCHEMA, READ_ONLY_POLICY)
    alice = Replica(h, ALICE, A_CLIENT)

    create = alice.create("Badge", "b-1", {"Name": "Door", "Serial": "S-1"})
    decision = h.decide(ALICE, create)
    assert isinstance(decision, Accepted)
    assert decision.fields["Serial"] == "S-1"
    assert isinstance(alice.push(create), Ack)

    refused = expect_rejected(
        h.decide(ALICE, alice.edit("b-1", {"Serial": "S-2"})), ErrorCode.READ_ONLY_FIELD
    )
    assert "Serial" in refused.verdict.message
    h.storage.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [("Description", "a plain string"), ("Name", pycrdt.Text("a text"))],
    ids=["plain-value-in-text-field", "text-in-string-field"],
)
def test_value_of_the_wrong_shape_is_invalid_update(
    h: Harness, account: str, field: str, value: Any
) -> None:
    stored = h.storage.get_record(account)
    assert stored is not None
    delta = raw_delta(stored.state, B_CLIENT, fields={field: value})

    decision = h.decide(BOB, h.frame(BOB, account, "Account", "update", delta, base=1))

    refused = expect_rejected(decision, ErrorCode.INVALID_UPDATE)
    assert field in refused.verdict.message


@pytest.mark.parametrize("kind", ["create", "update"])
@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        (
            "Employees",
            "5",
            "an integer up to 2**53 - 1 is stored as a number, not as the string '5'",
        ),
        ("Employees", 2**60, "an integer beyond 2**53 - 1 is stored as a decimal string"),
        ("Revenue", 12.5, "a decimal is stored as a string in str(Decimal) form, e.g. '12.50'"),
        ("Revenue", 12, "a decimal is stored as a string in str(Decimal) form"),
        ("Revenue", " 12.50", "a decimal is stored as str(Decimal) writes it: '12.50', not"),
    ],
    ids=[
        "small-int-as-string",
        "big-int-as-number",
        "decimal-as-float",
        "decimal-as-int",
        "decimal-padded",
    ],
)
def test_a_value_not_in_its_stored_form_is_a_validation_conflict_naming_the_form(
    h: Harness, account: str, kind: str, field: str, raw: Any, message: str
) -> None:
    if kind == "update":
        stored = h.storage.get_record(account)
        assert stored is not None
        delta = raw_delta(stored.state, B_CLIENT, fields={field: raw})
        change = h.frame(BOB, account, "Account", "update", delta, base=1)
    else:
        delta = raw_delta(b"", B_CLIENT, fields={"Name": "Raw", field: raw})
        change = h.frame(BOB, "acc-raw", "Account", "create", delta)

    conflict = expect_conflict(h.decide(BOB, change))

    assert [e.field for e in conflict.errors] == [field]
    assert conflict.errors[0].message.startswith(message), conflict.errors[0].message


@pytest.mark.parametrize("kind", ["create", "update"])
def test_an_integer_written_as_a_float_with_no_fraction_is_accepted(
    h: Harness, account: str, kind: str
) -> None:
    """Yjs writes numbers past 2**31 as floats; pycrdt reads small integers as floats."""
    if kind == "update":
        stored = h.storage.get_record(account)
        assert stored is not None
        delta = raw_delta(stored.state, B_CLIENT, fields={"Employees": float(2**40)})
        change = h.frame(BOB, account, "Account", "update", delta, base=1)
    else:
        delta = raw_delta(b"", B_CLIENT, fields={"Name": "Raw", "Employees": float(2**40)})
        change = h.frame(BOB, "acc-raw", "Account", "create", delta)

    decision = h.decide(BOB, change)

    assert isinstance(decision, Accepted), decision
    assert decision.values["Employees"] == 2**40
    assert type(decision.values["Employees"]) is int


@pytest.mark.parametrize("kind", ["create", "update"])
def test_garbage_delta_is_invalid_update_with_a_message(
    h: Harness, account: str, kind: str
) -> None:
    record_id = account if kind == "update" else "acc-new"
    change = h.frame(BOB, record_id, "Account", kind, b"\xff\xff\xff\x01garbage", base=1)

    refused = expect_rejected(h.decide(BOB, change), ErrorCode.INVALID_UPDATE)
    assert refused.verdict.message.startswith("undecodable CRDT update: ")
    assert len(refused.verdict.message) > len("undecodable CRDT update: ")


@pytest.mark.parametrize("kind", ["create", "update"])
def test_empty_delta_is_invalid_update(h: Harness, account: str, kind: str) -> None:
    record_id = account if kind == "update" else "acc-new"
    change = h.frame(BOB, record_id, "Account", kind, b"", base=1)

    refused = expect_rejected(h.decide(BOB, change), ErrorCode.INVALID_UPDATE)
    assert refused.verdict.message


# -- CRDT client ids and dependencies ---------------------------------------------------


def test_client_id_bound_to_another_replica_in_storage_is_forged(h: Harness) -> None:
    h.storage.bind_client_id(4242, "replica-a")
    doc = RecordDoc(SCHEMA.objects["Account"], client_id=4242)
    change = h.frame(BOB, "acc-new", "Account", "create", doc.write({"Name": "X"}))

    refused = expect_rejected(h.decide(BOB, change), ErrorCode.FORGED_CLIENT_ID)
    assert "4242" in refused.verdict.message
    # The replica that owns the id may use it.
    assert isinstance(h.decide(ALICE, change), Accepted)


def test_client_id_first_used_by_another_replica_is_forged(
    h: Harness, alice: Replica, account: str
) -> None:
    # alice's accepted create bound A_CLIENT to replica-a; bob reuses it on a new record.
    impostor = Replica(h, BOB, A_CLIENT)
    change = impostor.create("Account", "acc-2", {"Name": "Evil"})

    expect_rejected(h.decide(BOB, change), ErrorCode.FORGED_CLIENT_ID)
    # ... and on the existing record too.
    stored = h.storage.get_record(account)
    assert stored is not None
    delta = raw_delta(stored.state, A_CLIENT, fields={"Name": "Evil"})
    edit = h.frame(BOB, account, "Account", "update", delta, base=1)
    expect_rejected(h.decide(BOB, edit), ErrorCode.FORGED_CLIENT_ID)


def test_relays_own_client_id_is_forged(h: Harness) -> None:
    doc = RecordDoc(SCHEMA.objects["Account"], client_id=h.relay.client_id)
    change = h.frame(BOB, "acc-new", "Account", "create", doc.write({"Name": "X"}))
    expect_rejected(h.decide(BOB, change), ErrorCode.FORGED_CLIENT_ID)

    # Even when no storage row binds it: decide checks relay_client_id itself.
    storage = RelayStorage(":memory:")
    try:
        doc = RecordDoc(SCHEMA.objects["Account"], client_id=777)
        change = h.frame(BOB, "acc-new", "Account", "create", doc.write({"Name": "X"}))
        decision = decide(
            change,
            None,
            principal=BOB,
            schema=SCHEMA,
            policy=POLICY,
            context=storage,
            relay_client_id=777,
        )
        expect_rejected(decision, ErrorCode.FORGED_CLIENT_ID)
    finally:
        storage.close()


@pytest.mark.parametrize("second_client", [A_CLIENT, A_CLIENT + 1], ids=["same", "new"])
def test_delta_without_its_dependencies_is_missing_dependencies_and_leaves_doc_clean(
    h: Harness, alice: Replica, account: str, second_client: int
) -> None:
    first = alice.edit(account, {"Description": "Hello draft"})
    # The second edit depends on the first's characters; it may come from the same CRDT
    # client or from a new one the replica uses after a restart.
    writer = alice.docs[account].copy(client_id=second_client)
    second = h.frame(
        ALICE,
        account,
        "Account",
        "update",
        writer.write({"Description": "Hello draft two"}),
        base=1,
    )
    state = h.state(account)
    assert state is not None
    before_doc, before_values = state.doc.full_update(), state.doc.read()

    refused = expect_rejected(h.decide(ALICE, second, state), ErrorCode.MISSING_DEPENDENCIES)

    # Detected from the update before applying: the cached document is still clean.
    assert not refused.dirty
    assert state.doc.full_update() == before_doc
    assert state.doc.read() == before_values
    # Through the relay: refused, then accepted once its dependency has arrived.
    assert isinstance(h.push(ALICE, second), Rejected)
    assert isinstance(h.push(ALICE, first), Ack)
    assert isinstance(h.push(ALICE, second), Ack)
    assert h.values(account)["Description"] == "Hello draft two"


def test_re_sending_operations_the_record_has_is_invalid_update(h: Harness, alice: Replica) -> None:
    """yrs keeps only the part of such a struct past what it has, re-attached to the item
    before it: not the write the update encodes. Nothing honest re-sends."""
    created = alice.create("Account", "acc-9", {"Name": "Acme", "Industry": "Technology"})
    assert isinstance(alice.push(created), Ack)
    third = alice.edit("acc-9", {"Industry": "Retail"})
    again = attrs.evolve(third, delta=bytes(pycrdt.merge_updates(created.delta, third.delta)))

    refused = expect_rejected(h.decide(ALICE, again), ErrorCode.INVALID_UPDATE)

    assert "re-sends operations the record already has" in refused.verdict.message
    assert not refused.dirty


def with_skip_first(update: bytes, skip: int, start: int) -> bytes:
    """``update`` (one client's structs, from ``start + skip``) preceded by a Skip struct
    of ``skip`` clocks, so that it starts at ``start``: a gap inside the update."""
    parsed = parse_update(update)
    [client] = parsed.clients()
    spans = [s.byte_span for s in parsed.structs]
    assert all(span is not None for span in spans) and parsed.delete_set_at is not None
    body = b"".join(update[a:b] for a, b in spans)  # type: ignore[misc]
    head = vu(1) + vu(len(spans) + 1) + vu(client) + vu(start)
    return head + bytes([10]) + vu(skip) + body + update[parsed.delete_set_at :]


def test_gap_found_only_when_applying_is_missing_dependencies_with_dirty_doc(
    h: Harness, alice: Replica
) -> None:
    created = alice.create("Account", "acc-9", {"Name": "Acme", "Industry": "Technology"})
    assert isinstance(alice.push(created), Ack)
    second = alice.edit("acc-9", {"Website": "acme.test"})
    third = alice.edit("acc-9", {"Industry": "Retail"})
    # The third edit after a Skip over the second: the update starts where the record
    # ends, so the gap shows only once pycrdt holds the third edit as pending.
    [(start, end)] = parse_update(second.delta).client_ranges().values()
    gapped = attrs.evolve(third, delta=with_skip_first(third.delta, end - start, start))
    state = h.state("acc-9")
    assert state is not None

    refused = expect_rejected(h.decide(ALICE, gapped, state), ErrorCode.MISSING_DEPENDENCIES)

    assert refused.dirty
    assert h.values("acc-9") == {"Name": "Acme", "Industry": "Technology", "Owner": "alice"}
    # The relay drops its touched document: once the gap is filled both merge cleanly.
    assert isinstance(h.push(ALICE, gapped), Rejected)
    assert isinstance(h.push(ALICE, second), Ack)
    assert isinstance(h.push(ALICE, third), Ack)
    assert h.values("acc-9") == {
        "Name": "Acme",
        "Industry": "Retail",
        "Website": "acme.test",
        "Owner": "alice",
    }


# -- concurrent edits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "base", "theirs", "mine"),
    [
        ("Industry", "Retail", "Energy", "Technology"),
        ("Employees", 10, 11, 12),  # pycrdt reads numbers back as floats
        ("Active", True, False, None),
        ("Revenue", "1.50", "2.00", "3.25"),  # decimals are stored as strings
    ],
)
def test_concurrent_same_field_edit_with_different_value_is_a_conflict(
    h: Harness,
    alice: Replica,
    bob: Replica,
    account: str,
    field: str,
    base: Any,
    theirs: Any,
    mine: Any,
) -> None:
    spec = SCHEMA.objects["Account"].fields[field]
    assert isinstance(alice.push(alice.edit(account, {field: spec.type.decode(base)})), Ack)
    bob.open(account)
    assert isinstance(bob.push(bob.edit(account, {field: spec.type.decode(theirs)})), Ack)
    state = h.state(account)
    assert state is not None
    before = state.doc.full_update()

    change = alice.edit(account, {field: spec.type.decode(mine)}, base=2)
    decision = h.decide(ALICE, change, state)

    conflict = expect_conflict(decision)
    assert conflict.conflicts == (
        WireConflict(field=field, base=base, mine=mine, theirs=theirs, changed_by="bob"),
    )
    assert all(type(c.theirs) is type(theirs) for c in conflict.conflicts)
    assert conflict.version == 3
    assert conflict.update == h.storage.get_record(account).state  # type: ignore[union-attr]
    assert isinstance(decision, Refused)
    assert not decision.dirty
    assert decision.refused_ops is not None
    assert state.doc.full_update() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("Industry", "Energy"), ("Employees", 42), ("Active", False), ("Revenue", "9.99")],
)
def test_concurrent_same_field_edit_with_the_same_value_is_not_a_conflict(
    h: Harness, alice: Replica, bob: Replica, account: str, field: str, value: Any
) -> None:
    canonical = SCHEMA.objects["Account"].fields[field].type.decode(value)
    assert isinstance(bob.push(bob.edit(account, {field: canonical})), Ack)

    decision = h.decide(ALICE, alice.edit(account, {field: canonical}, base=1))

    assert isinstance(decision, Accepted), decision
    assert decision.values[field] == canonical


def test_concurrent_text_edits_merge_and_never_conflict(
    h: Harness, alice: Replica, bob: Replica, account: str
) -> None:
    assert isinstance(bob.push(bob.edit(account, {"Description": "Hello world"})), Ack)

    decision = h.decide(ALICE, alice.edit(account, {"Description": "Hey, Hello"}, base=1))

    assert isinstance(decision, Accepted), decision
    assert decision.fields == {"Description": None}
    assert decision.values["Description"] == "Hey, Hello world"


def test_same_replica_editing_a_field_again_is_not_a_conflict(
    h: Harness, alice: Replica, account: str
) -> None:
    assert isinstance(alice.push(alice.edit(account, {"Industry": "Energy"})), Ack)

    # Still based on version 1 (e.g. queued before the first ack arrived).
    decision = h.decide(ALICE, alice.edit(account, {"Industry": "Retail"}, base=1))

    assert isinstance(decision, Accepted), decision
    assert decision.values["Industry"] == "Retail"


def test_field_base_at_or_after_the_other_replicas_change_is_not_a_conflict(
    h: Harness, alice: Replica, bob: Replica, account: str
) -> None:
    assert isinstance(bob.push(bob.edit(account, {"Industry": "Energy"})), Ack)
    alice.docs[account].apply(h.storage.get_record(account).state)  # type: ignore[union-attr]
    delta = alice.docs[account].write({"Industry": "Retail"})

    def decide_with(bases: Mapping[str, int]) -> Decision:
        return h.decide(
            ALICE, h.frame(ALICE, account, "Account", "update", delta, base=1, bases=bases)
        )

    stale = expect_conflict(decide_with({"Industry": 1}))
    assert [c.field for c in stale.conflicts] == ["Industry"]
    for seen in (2, 3):
        decision = decide_with({"Industry": seen})
        assert isinstance(decision, Accepted), decision
        assert decision.values["Industry"] == "Retail"


# -- validation of the merged record ----------------------------------------------------


def test_rule_broken_only_by_the_combination_of_two_edits_is_a_conflict(
    h: Harness, alice: Replica, bob: Replica, contact: str
) -> None:
    assert isinstance(bob.push(bob.edit(contact, {"Email": None})), Ack)

    decision = h.decide(ALICE, alice.edit(contact, {"Phone": None}, base=1))

    conflict = expect_conflict(decision)
    assert conflict.conflicts == ()
    assert conflict.errors == (
        WireFieldError(field="Email", message="a contact needs an Email or a Phone"),
    )
    assert isinstance(decision, Refused)
    assert decision.dirty


def test_unique_email_taken_by_another_record_is_a_conflict(
    h: Harness, bob: Replica, contact: str
) -> None:
    change = bob.create("Contact", "con-2", {"LastName": "Bo", "Email": "ann@example.com"})

    conflict = expect_conflict(h.decide(BOB, change))

    assert [e.field for e in conflict.errors] == ["Email"]
    assert "already used" in conflict.errors[0].message


def test_reference_to_a_missing_account_is_a_conflict(
    h: Harness, bob: Replica, account: str
) -> None:
    missing = bob.create("Contact", "con-2", {"LastName": "Bo", "Phone": "1", "Account": "nope"})
    conflict = expect_conflict(h.decide(BOB, missing))
    assert conflict.errors == (WireFieldError(field="Account", message="no Account with id nope"),)

    present = bob.create("Contact", "con-3", {"LastName": "Bo", "Phone": "1", "Account": account})
    assert isinstance(h.decide(BOB, present), Accepted)


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"Industry": "Mining"}, "Industry", "'Mining' is not one of Energy, Retail, Technology"),
        ({"Employees": -5}, "Employees", "must be at least 0"),
    ],
    ids=["picklist", "range"],
)
def test_constraint_violation_from_a_client_that_skipped_validation_is_a_conflict(
    h: Harness,
    alice: Replica,
    account: str,
    values: dict[str, Any],
    field: str,
    message: str,
) -> None:
    on_create = Replica(h, BOB, B_CLIENT).create("Account", "acc-2", {"Name": "B", **values})
    on_update = alice.edit(account, values)

    for principal, change in ((BOB, on_create), (ALICE, on_update)):
        conflict = expect_conflict(h.decide(principal, change))
        assert conflict.errors == (WireFieldError(field=field, message=message),)


# -- record existence -------------------------------------------------------------------


def test_create_of_an_existing_id_is_duplicate_record(
    h: Harness, bob: Replica, account: str
) -> None:
    change = Replica(h, BOB, B_CLIENT + 1).create("Account", account, {"Name": "Again"})
    expect_rejected(h.decide(BOB, change), ErrorCode.DUPLICATE_RECORD)


def test_update_of_an_unknown_record_is_unknown_record(h: Harness) -> None:
    delta = RecordDoc(SCHEMA.objects["Account"], client_id=B_CLIENT).write({"Name": "X"})
    change = h.frame(BOB, "nowhere", "Account", "update", delta, base=1)
    expect_rejected(h.decide(BOB, change), ErrorCode.UNKNOWN_RECORD)


def test_object_mismatch_is_unknown_record(h: Harness, bob: Replica, account: str) -> None:
    stored = h.storage.get_record(account)
    assert stored is not None
    delta = raw_delta(stored.state, B_CLIENT, fields={"LastName": "X"})
    change = h.frame(BOB, account, "Contact", "update", delta, base=1)

    refused = expect_rejected(h.decide(BOB, change), ErrorCode.UNKNOWN_RECORD)
    assert "Account" in refused.verdict.message


def test_unknown_object_is_unknown_object(h: Harness) -> None:
    delta = RecordDoc(SCHEMA.objects["Account"], client_id=B_CLIENT).write({"Name": "X"})
    change = h.frame(BOB, "lead-1", "Lead", "create", delta)
    expect_rejected(h.decide(BOB, change), ErrorCode.UNKNOWN_OBJECT)


# -- deletes ----------------------------------------------------------------------------


def test_edit_or_delete_of_a_deleted_record(
    h: Harness, alice: Replica, bob: Replica, account: str
) -> None:
    deleted = alice.push(alice.delete(account))
    assert isinstance(deleted, Ack)

    expect_unresolvable(h.decide(BOB, bob.edit(account, {"Name": "Late"})), "deleted")
    assert h.decide(BOB, bob.delete(account)) == AlreadyDone(deleted.version)


def test_delete_of_a_record_changed_by_another_replica_since_base_is_a_conflict(
    h: Harness, alice: Replica, bob: Replica, account: str
) -> None:
    assert isinstance(bob.push(bob.edit(account, {"Name": "Acme Corp"})), Ack)

    conflict = expect_conflict(h.decide(ALICE, alice.delete(account, base=1)))

    assert "bob" in conflict.message
    assert conflict.conflicts == (
        WireConflict(field="Name", base="Acme", mine=None, theirs="Acme Corp", changed_by="bob"),
    )
    assert conflict.version == 2


def test_a_delete_conflict_on_a_text_field_gives_the_text_at_the_base(
    h: Harness, alice: Replica, bob: Replica, account: str
) -> None:
    assert isinstance(alice.push(alice.edit(account, {"Description": "n1"})), Ack)  # v2
    bob.open(account)  # bob sees "n1", then adds to it
    assert isinstance(bob.push(bob.edit(account, {"Description": "n1 and n2"})), Ack)

    conflict = expect_conflict(h.decide(ALICE, alice.delete(account, base=2)))

    assert conflict.conflicts == (
        WireConflict(
            field="Description", base="n1", mine=None, theirs="n1 and n2", changed_by="bob"
        ),
    )


def test_delete_with_no_changes_by_others_since_base_is_accepted(
    h: Harness, alice: Replica, account: str
) -> None:
    decision = h.decide(ALICE, alice.delete(account))
    assert isinstance(decision, Accepted)
    assert decision.kind == "delete"

    # The deleter's own later changes do not count as someone else's.
    assert isinstance(alice.push(alice.edit(account, {"Name": "Mine"})), Ack)
    decision = h.decide(ALICE, alice.delete(account, base=1))
    assert isinstance(decision, Accepted)
    assert decision.kind == "delete"


# -- permissions ------------------------------------------------------------------------


def test_create_update_delete_without_permission_are_forbidden(
    h: Harness, bob: Replica, account: str
) -> None:
    read_only = AccessPolicy.from_config({"default": {"Account": ["read"]}, "intern": {}}, SCHEMA)
    create = Replica(h, BOB, B_CLIENT + 1).create("Account", "acc-2", {"Name": "New"})
    update = bob.edit(account, {"Name": "Changed"})
    delete = bob.delete(account)

    for change in (create, update, delete):
        expect_unresolvable(h.decide(BOB, change, policy=read_only), "forbidden")
        # The same change is fine under the full policy: permission is what refused it.
        assert isinstance(h.decide(BOB, change), Accepted)


# -- faults and leaving no trace --------------------------------------------------------


class FakePanic(BaseException):
    """Stands for ``pyo3_runtime.PanicException``: a ``BaseException``, not an ``Exception``."""


def test_pycrdt_panic_during_apply_is_contained_as_invalid_update(
    h: Harness, alice: Replica, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    change = alice.edit(account, {"Name": "Boom"})

    def panic(self: RecordDoc, update: bytes) -> bytes:
        raise FakePanic("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(RecordDoc, "apply_for_state", panic)
    refused = expect_rejected(h.decide(ALICE, change), ErrorCode.INVALID_UPDATE)
    assert refused.dirty
    assert "unwrap" in refused.verdict.message


@pytest.mark.parametrize("fault", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_during_apply_propagate(
    h: Harness,
    alice: Replica,
    account: str,
    monkeypatch: pytest.MonkeyPatch,
    fault: type[BaseException],
) -> None:
    change = alice.edit(account, {"Name": "Boom"})

    def interrupted(self: RecordDoc, update: bytes) -> bytes:
        raise fault()

    monkeypatch.setattr(RecordDoc, "apply_for_state", interrupted)
    with pytest.raises(fault):
        h.decide(ALICE, change)


def test_refused_update_leaves_no_trace(
    h: Harness, alice: Replica, bob: Replica, contact: str
) -> None:
    assert isinstance(bob.push(bob.edit(contact, {"Email": None})), Ack)
    expected = {"LastName": "Ng", "Phone": "555-0100", "Owner": "alice"}
    state = h.state(contact)
    assert state is not None
    change = alice.edit(contact, {"Phone": None}, base=1)

    decision = h.decide(ALICE, change, state)

    expect_conflict(decision)
    assert isinstance(decision, Refused)
    assert decision.dirty
    assert "Phone" not in state.doc.read()  # applied speculatively: hence dirty=True
    assert h.values(contact) == expected
    # Through the relay, which drops its cached document: the next change merges onto
    # the pre-change record.
    assert isinstance(h.push(ALICE, change), Conflict)
    assert h.values(contact) == expected
    assert isinstance(bob.push(bob.edit(contact, {"FirstName": "Ann"})), Ack)
    assert h.values(contact) == {**expected, "FirstName": "Ann"}
