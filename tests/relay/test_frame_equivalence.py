"""A push frame is decided as if its changes came one at a time, the general way.

The relay decides, stores and fans out a push frame as a whole: the common edit is
decided by prediction and applied once per record per frame (``fastpath.py``), records
are written once per frame, the log in one statement, in one transaction. Whatever it
does per frame, the verdicts and everything stored must be those of pushing the same
changes one per frame, in the same order, each decided by ``merge.decide`` alone (no
prediction): a frame mixing accepted, conflicting, invalid, forbidden, zombie and
dependent changes, to the same and to different records, included.

Two relays on in-memory SQLite with the same CRDT client id get the same scripted
changes: one as frames, the other one change per push without prediction. Hypothesis
writes the script: two users editing offline, each frame built from what its user last
synced.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from crdtsync_server.config import RelayConfig
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.core.protocol import (
    Ack,
    Admin,
    ChangeFrame,
    ChangeKind,
    Conflict,
    ErrorCode,
    Rejected,
    Unresolvable,
)
from crdtsync.core.record import RecordDoc
from tests.helpers.sessions import FakeSession

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "server/example/app.toml"
CONFIG = RelayConfig.from_toml(EXAMPLE_CONFIG)
RELAY_CLIENT_ID = 777


@attrs.define
class Actor:
    """A user's replica: a document per record it knows, and the version it knows."""

    principal: Principal
    client_ids: Iterator[int]
    docs: dict[str, RecordDoc] = attrs.field(factory=dict)
    known: dict[str, int] = attrs.field(factory=dict)
    synced: dict[str, bytes] = attrs.field(factory=dict)  #: state vector last synced


def new_relay(*, predicting: bool = True, cache_records: int = 10_000) -> Relay:
    """A relay; ``predicting=False``: every change decided by :func:`merge.decide`, the
    general path (no prediction of the common shape)."""
    storage = RelayStorage(":memory:")
    storage.set_meta("client_id", RELAY_CLIENT_ID)
    relay = Relay(
        schema=CONFIG.schema, policy=CONFIG.policy, storage=storage, cache_records=cache_records
    )
    relay._pipeline.predicting = predicting
    return relay


def stored_rows(relay: Relay) -> dict[str, list[tuple[Any, ...]]]:
    """Every record as the relay reads it back (its row and the changes logged after it)
    and every other row it stored (the log without its wall-clock times)."""
    db = relay.storage._db
    ids = [str(row[0]) for row in db.execute("SELECT id FROM records ORDER BY id")]
    records = relay.storage.get_records(ids)
    queries = {
        "changes": "SELECT seq, record_id, object, change_id, replica, user, kind, fields, "
        "update_ FROM changes ORDER BY seq",
        "uniques": "SELECT * FROM uniques ORDER BY object, field, value",
        "refused_ops": "SELECT * FROM refused_ops ORDER BY record_id, client_id, start",
        "client_ids": "SELECT * FROM client_ids ORDER BY client_id",
    }
    rows = {name: [tuple(row) for row in db.execute(sql)] for name, sql in queries.items()}
    rows["records"] = [
        (r.id, r.object, r.state, r.version, r.deleted, r.created_by, r.owner)
        for r in (records[record_id] for record_id in ids)
    ]
    return rows


# -- the script ------------------------------------------------------------------------

ACCOUNT_VALUES = {
    "Employees": st.sampled_from([0, 5, 12, -3]),  # -3 breaks min = 0
    "Industry": st.sampled_from(["Energy", "Retail", "Mining"]),  # Mining is no choice
    "Name": st.sampled_from(["Acme", "Globex", "x" * 90]),  # 90 chars is too long
    "Active": st.booleans(),
}
CONTACT_VALUES = {
    "LastName": st.sampled_from(["Doe", "Roe", ""]),  # "" clears a required field
    "Email": st.sampled_from(["a@example.com", "b@example.com", None]),  # unique
    "Phone": st.sampled_from(["555", None]),  # email_or_phone: one of them is required
}

ops = st.one_of(
    st.tuples(st.just("create_account"), st.sampled_from(["Acme", "Initech", "y" * 90])),
    st.tuples(
        st.just("create_contact"),
        st.sampled_from(["a@example.com", "b@example.com", None]),
        st.integers(0, 7),  # the account it references, among the known ones (or none)
    ),
    # an edit sends its own operations, or (True) all since the user's last sync, as
    # a replica's pending entry does (and with them any refused ones it kept: zombies)
    st.tuples(st.just("edit"), st.integers(0, 7), st.data(), st.booleans()),
    st.tuples(st.just("text"), st.integers(0, 7), st.sampled_from(["hello", "", "hi there"])),
    st.tuples(st.just("delete"), st.integers(0, 7)),
)
frames = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob"]),
        st.lists(ops, min_size=1, max_size=8),
        st.booleans(),  # after the frame, does the user rebuild its documents?
    ),
    min_size=1,
    max_size=6,
)


class Script:
    """Turns drawn operations into the change frames the users push."""

    def __init__(self) -> None:
        self.actors = {
            "alice": Actor(Principal("alice", "replica-a"), itertools.count(1_001, 100)),
            "bob": Actor(Principal("bob", "replica-b"), itertools.count(2_002, 100)),
        }
        self.ids = itertools.count(1)
        self.objects: dict[str, str] = {}  # record id -> object, for every record made

    def changes(self, actor: Actor, drawn: list[Any]) -> list[ChangeFrame]:
        out: list[ChangeFrame] = []
        for op in drawn:
            change = self._change(actor, op)
            if change is not None:
                out.append(change)
        return out

    def _change(self, actor: Actor, op: tuple[Any, ...]) -> ChangeFrame | None:
        kind = op[0]
        if kind == "create_account":
            return self._create(actor, "Account", {"Name": op[1], "Employees": 1})
        if kind == "create_contact":
            accounts = [r for r, o in self.objects.items() if o == "Account"]
            values: dict[str, Any] = {"LastName": "Doe", "Email": op[1], "Phone": "555"}
            if accounts:
                values["Account"] = accounts[op[2] % len(accounts)]
            return self._create(actor, "Contact", values)
        known = sorted(actor.docs)
        if not known:
            return None
        record_id = known[op[1] % len(known)]
        doc = actor.docs[record_id]
        object_name = self.objects[record_id]
        base = actor.known.get(record_id, 0)
        if kind == "delete":
            del actor.docs[record_id]
            return self._frame(actor, record_id, object_name, ChangeKind.DELETE, b"", base, {})
        if kind == "text":
            if object_name != "Account":
                return None
            delta = doc.write({"Description": op[2]})
            name = "Description"
        else:
            values_of = ACCOUNT_VALUES if object_name == "Account" else CONTACT_VALUES
            name = op[2].draw(st.sampled_from(sorted(values_of)))
            delta = doc.write({name: op[2].draw(values_of[name])})
            if delta and op[3] and record_id in actor.synced:
                delta = doc.delta(actor.synced[record_id])
        if not delta:
            return None
        return self._frame(
            actor, record_id, object_name, ChangeKind.UPDATE, delta, base, {name: base}
        )

    def _create(self, actor: Actor, object_name: str, values: dict[str, Any]) -> ChangeFrame:
        record_id = f"{object_name.lower()}-{next(self.ids)}"
        self.objects[record_id] = object_name
        doc = RecordDoc(CONFIG.schema.objects[object_name], client_id=next(actor.client_ids))
        doc.write({k: v for k, v in values.items() if v is not None})
        actor.docs[record_id] = doc
        return self._frame(
            actor, record_id, object_name, ChangeKind.CREATE, doc.full_update(), 0, {}
        )

    def _frame(
        self,
        actor: Actor,
        record_id: str,
        object_name: str,
        kind: ChangeKind,
        delta: bytes,
        base: int,
        bases: dict[str, int],
    ) -> ChangeFrame:
        return ChangeFrame(
            change_id=f"{actor.principal.replica_id}-{next(self.ids)}",
            record_id=record_id,
            object=object_name,
            kind=kind,
            base_version=base,
            field_bases=bases,
            delta=delta,
        )

    def sync(self, actor: Actor, relay: Relay, *, rebuild: bool) -> None:
        """The user receives every record's stored state. ``rebuild``: its documents are
        rebuilt from it with a fresh CRDT client id (what a replica does after a refusal);
        otherwise it keeps them, refused operations included (a zombie-keeping replica)."""
        for record_id, object_name in self.objects.items():
            stored = relay.storage.get_record(record_id)
            if stored is None or stored.deleted:
                actor.docs.pop(record_id, None)
                continue
            spec = CONFIG.schema.objects[object_name]
            doc = actor.docs.get(record_id)
            if rebuild or doc is None:
                actor.docs[record_id] = RecordDoc.from_update(
                    spec, stored.state, client_id=next(actor.client_ids)
                )
            else:
                doc.apply(stored.state)
            actor.known[record_id] = stored.version
            actor.synced[record_id] = RecordDoc.from_update(spec, stored.state).state()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=frames, cache_records=st.sampled_from([10_000, 2]))
def test_a_frame_gets_the_verdicts_and_stored_state_of_its_changes_one_at_a_time(
    script: list[tuple[str, list[Any], bool]], cache_records: int
) -> None:
    """Also with a record cache of two records, which lets records go in the middle of a
    frame (predicted changes not applied yet included) and reads them back."""
    whole, single = new_relay(cache_records=cache_records), new_relay(predicting=False)
    users = Script()
    for name, drawn, rebuild in script:
        actor = users.actors[name]
        changes = users.changes(actor, drawn)
        if not changes:
            continue
        session = FakeSession(actor.principal)
        as_frame = list(whole.push(session, changes).items)  # type: ignore[arg-type]
        one_by_one = [
            v
            for change in changes
            for v in single.push(session, [change]).items  # type: ignore[arg-type]
        ]
        assert as_frame == one_by_one
        assert stored_rows(whole) == stored_rows(single)
        # Only the pushing user syncs: the other one stays offline, its bases go stale.
        users.sync(actor, whole, rebuild=rebuild)


def test_a_mixed_frame_gets_the_verdicts_of_its_changes_one_at_a_time() -> None:
    """One frame holding a stale same-field edit, an invalid edit, an edit depending on
    it, a forbidden edit, a create and a contact referencing it, and a zombie (the
    refused write again, under a new edit): each verdict as if pushed alone."""
    whole, single = new_relay(), new_relay(predicting=False)
    users = Script()
    alice, bob = users.actors["alice"], users.actors["bob"]
    setup = [users._create(alice, "Account", {"Name": "Acme", "Employees": 1})]
    setup.append(users._create(alice, "Contact", {"LastName": "Doe", "Phone": "555"}))
    for relay in (whole, single):
        relay.push(FakeSession(alice.principal), setup)  # type: ignore[arg-type]
    users.sync(alice, whole, rebuild=True)
    users.sync(bob, whole, rebuild=True)
    account, contact = setup[0].record_id, setup[1].record_id
    spec = CONFIG.schema.objects["Account"]
    stored = whole.storage.get_record(account)
    assert stored is not None
    base, base_state = stored.version, stored.state

    # alice's edit of Employees is acknowledged ...
    first = users._frame(
        alice, account, "Account", ChangeKind.UPDATE,
        alice.docs[account].write({"Employees": 7}), base, {"Employees": base},
    )  # fmt: skip
    for relay in (whole, single):
        relay.push(FakeSession(alice.principal), [first])  # type: ignore[arg-type]

    # ... while bob, offline since ``base``, builds one frame of everything
    def fresh() -> RecordDoc:
        return RecordDoc.from_update(spec, base_state, client_id=next(bob.client_ids))

    def edit(doc: RecordDoc, name: str, value: Any) -> ChangeFrame:
        return users._frame(
            bob, account, "Account", ChangeKind.UPDATE, doc.write({name: value}), base,
            {name: base},
        )  # fmt: skip

    chained = bob.docs[account]
    stale = edit(fresh(), "Employees", 9)
    invalid = edit(chained, "Industry", "Mining")
    dependent = edit(chained, "Active", True)
    forbidden = users._frame(
        bob, contact, "Contact", ChangeKind.UPDATE, bob.docs[contact].write({"Phone": "556"}),
        bob.known[contact], {"Phone": bob.known[contact]},
    )  # fmt: skip
    created = users._create(bob, "Account", {"Name": "Globex", "Employees": 2})
    referencing = users._create(
        bob, "Contact", {"LastName": "Roe", "Phone": "1", "Account": created.record_id}
    )
    keeper = fresh()
    keeper.apply(invalid.delta)  # a replica that kept the refused write
    keeper.write({"Website": "example.com"})
    zombie = users._frame(
        bob, account, "Account", ChangeKind.UPDATE, keeper.delta(bob.synced[account]), base,
        {"Website": base},
    )  # fmt: skip
    changes = [stale, invalid, dependent, forbidden, created, referencing, zombie]

    session = FakeSession(bob.principal)
    as_frame = list(whole.push(session, changes).items)  # type: ignore[arg-type]
    one_by_one = [v for c in changes for v in single.push(session, [c]).items]  # type: ignore[arg-type]
    assert as_frame == one_by_one
    assert stored_rows(whole) == stored_rows(single)
    assert whole.metrics.changes_predicted > 0
    got = dict(zip(["stale", "invalid", "dependent", "forbidden", "created", "referencing",
                    "zombie"], as_frame, strict=True))  # fmt: skip
    assert isinstance(got["stale"], Conflict) and got["stale"].conflicts[0].field == "Employees"
    assert isinstance(got["invalid"], Conflict) and got["invalid"].errors
    assert isinstance(got["dependent"], Rejected)
    assert got["dependent"].code is ErrorCode.MISSING_DEPENDENCIES
    assert isinstance(got["forbidden"], Unresolvable)  # alice's contacts are read-only to bob
    assert isinstance(got["created"], Ack) and isinstance(got["referencing"], Ack)
    assert isinstance(got["zombie"], Rejected) and got["zombie"].code is ErrorCode.REFUSED_OPS


def employees_edits(
    values: Iterable[int], *, rebuild: bool
) -> tuple[Relay, Relay, Actor, list[ChangeFrame]]:
    """A relay that predicts and one that does not, both holding alice's new Account, and
    alice's edits of its ``Employees`` to each of ``values`` in turn (each on the last),
    all based on the version she synced (``rebuild``: her document rebuilt then)."""
    whole, single = new_relay(), new_relay(predicting=False)
    users = Script()
    alice = users.actors["alice"]
    create = users._create(alice, "Account", {"Name": "Acme", "Employees": 1})
    for relay in (whole, single):
        relay.push(FakeSession(alice.principal), [create])  # type: ignore[arg-type]
    users.sync(alice, whole, rebuild=rebuild)
    rid = create.record_id
    base = alice.known[rid]
    changes = [
        users._frame(alice, rid, "Account", ChangeKind.UPDATE,
                     alice.docs[rid].write({"Employees": n}), base, {"Employees": base})
        for n in values
    ]  # fmt: skip
    return whole, single, alice, changes


@pytest.mark.parametrize("rebuild", [True, False])
def test_a_frame_editing_one_record_many_times_stores_each_version_once(rebuild: bool) -> None:
    """Ten edits of one record in one frame: ten log rows, the record row at the last
    version, the same bytes as ten pushes."""
    whole, single, alice, changes = employees_edits(range(2, 12), rebuild=rebuild)
    session = FakeSession(alice.principal)
    as_frame = list(whole.push(session, changes).items)  # type: ignore[arg-type]
    for change in changes:
        single.push(session, [change])  # type: ignore[arg-type]
    assert all(isinstance(v, Ack) for v in as_frame)
    assert whole.metrics.changes_predicted == 10  # none of them went the general way
    assert single.metrics.changes_predicted == 0
    rows = stored_rows(whole)
    assert rows == stored_rows(single)
    assert len(rows["changes"]) == 11
    (record,) = rows["records"]
    assert record[3] == max(v.version for v in as_frame if isinstance(v, Ack))
    assert (
        RecordDoc.from_update(CONFIG.schema.objects["Account"], record[2]).read()["Employees"] == 11
    )


def test_a_prediction_yrs_does_not_keep_sends_the_frame_back_to_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If applying a record's predicted changes does anything else (here: yrs is made to
    write one more field), nothing decided on the prediction is stored or cached: the
    frame is decided again change by change, with the verdicts and rows of the general
    path, and the stray write is nowhere."""
    whole, single, alice, changes = employees_edits((5, 6), rebuild=True)
    rid = changes[0].record_id
    applied = RecordDoc.apply_all_for_state
    strays: list[str] = []

    def misbehaving(self: RecordDoc, updates: list[bytes]) -> bytes:
        if not strays:
            strays.append("stray")
            self.write({"Website": "stray.example.com"})
        return applied(self, updates)

    monkeypatch.setattr(RecordDoc, "apply_all_for_state", misbehaving)
    session = FakeSession(alice.principal)
    as_frame = list(whole.push(session, changes).items)  # type: ignore[arg-type]
    one_by_one = [v for c in changes for v in single.push(session, [c]).items]  # type: ignore[arg-type]

    assert strays  # the prediction was applied, and did not hold
    assert whole.metrics.frames_mispredicted == 1
    assert as_frame == one_by_one and all(isinstance(v, Ack) for v in as_frame)
    assert stored_rows(whole) == stored_rows(single)
    stored = whole.storage.get_record(rid)
    assert stored is not None
    values = RecordDoc.from_update(CONFIG.schema.objects["Account"], stored.state).read()
    assert values["Employees"] == 6 and "Website" not in values
    cached = whole._cache.get(rid)
    assert cached is None or "Website" not in cached.doc.read()


def test_an_edit_that_breaks_a_record_rule_is_a_conflict_in_a_frame_too() -> None:
    """The common edit of one field is still judged with the whole record: clearing the
    phone of a contact without an email breaks ``email_or_phone``, and clearing a
    required name breaks ``required``, whether the frame is predicted or not."""
    whole, single = new_relay(), new_relay(predicting=False)
    users = Script()
    alice = users.actors["alice"]
    setup = [
        users._create(alice, "Contact", {"LastName": "Doe", "Phone": "555"}),
        users._create(alice, "Account", {"Name": "Acme", "Employees": 1}),
    ]
    for relay in (whole, single):
        relay.push(FakeSession(alice.principal), setup)  # type: ignore[arg-type]
    users.sync(alice, whole, rebuild=True)
    contact, account = (c.record_id for c in setup)
    changes = [
        users._frame(alice, contact, "Contact", ChangeKind.UPDATE,
                     alice.docs[contact].write({"Phone": None}), alice.known[contact],
                     {"Phone": alice.known[contact]}),
        users._frame(alice, account, "Account", ChangeKind.UPDATE,
                     alice.docs[account].write({"Name": None}), alice.known[account],
                     {"Name": alice.known[account]}),
        users._frame(alice, account, "Account", ChangeKind.UPDATE,
                     RecordDoc.from_update(CONFIG.schema.objects["Account"],
                                           whole.storage.get_record(account).state,  # type: ignore[union-attr]
                                           client_id=next(alice.client_ids))
                     .write({"Employees": 9}), alice.known[account],
                     {"Employees": alice.known[account]}),
    ]  # fmt: skip
    session = FakeSession(alice.principal)
    as_frame = list(whole.push(session, changes).items)  # type: ignore[arg-type]
    one_by_one = [v for c in changes for v in single.push(session, [c]).items]  # type: ignore[arg-type]
    assert as_frame == one_by_one
    assert stored_rows(whole) == stored_rows(single)
    rule, required, fine = as_frame
    assert isinstance(rule, Conflict) and rule.errors
    assert isinstance(required, Conflict)
    assert [e.message for e in required.errors] == ["is required"]
    assert isinstance(fine, Ack)


def test_a_frame_reads_the_records_the_relay_does_not_hold_at_once() -> None:
    """After a restart (an empty record cache), a frame of edits to 30 records reads
    their rows and the changes logged after them with one query, and decides them as a
    warm relay does."""
    whole, warm = new_relay(), new_relay(predicting=False)
    users = Script()
    alice = users.actors["alice"]
    creates = [
        users._create(alice, "Account", {"Name": f"n{n}", "Employees": 1}) for n in range(30)
    ]
    for relay in (whole, warm):
        relay.push(FakeSession(alice.principal), creates)  # type: ignore[arg-type]
    users.sync(alice, whole, rebuild=True)
    changes = [
        users._frame(alice, c.record_id, "Account", ChangeKind.UPDATE,
                     alice.docs[c.record_id].write({"Employees": 5}), alice.known[c.record_id],
                     {"Employees": alice.known[c.record_id]})
        for c in creates
    ]  # fmt: skip
    whole._cache.clear()  # as after a restart
    statements: list[str] = []
    whole.storage._db.connection.set_trace_callback(statements.append)
    as_frame = list(whole.push(FakeSession(alice.principal), changes).items)  # type: ignore[arg-type]
    whole.storage._db.connection.set_trace_callback(None)
    assert as_frame == list(warm.push(FakeSession(alice.principal), changes).items)  # type: ignore[arg-type]
    assert stored_rows(whole) == stored_rows(warm)
    reads = [sql for sql in statements if "FROM records r" in sql]
    assert len(reads) == 1 and all(c.record_id in reads[0] for c in creates)
    assert "FROM changes c JOIN records" in reads[0]  # the rows and their tails at once
    assert whole.metrics.changes_predicted == 30


def test_a_record_the_cache_lets_go_in_the_middle_of_a_frame_keeps_its_predicted_changes() -> None:
    """A cache of two records and a frame editing A, B, C, then A again on top of its
    first edit: A's first, predicted edit is not applied yet when the cache drops A;
    the second edit must still see it."""
    whole, single = new_relay(cache_records=2), new_relay(predicting=False)
    users = Script()
    alice = users.actors["alice"]
    creates = [users._create(alice, "Account", {"Name": n, "Employees": 1}) for n in "ABC"]
    for relay in (whole, single):
        relay.push(FakeSession(alice.principal), creates)  # type: ignore[arg-type]
    users.sync(alice, whole, rebuild=True)
    a, b, c = (create.record_id for create in creates)

    def edit(record_id: str, value: int) -> ChangeFrame:
        base = alice.known[record_id]
        delta = alice.docs[record_id].write({"Employees": value})
        return users._frame(
            alice, record_id, "Account", ChangeKind.UPDATE, delta, base, {"Employees": base}
        )

    changes = [edit(a, 2), edit(b, 3), edit(c, 4), edit(a, 5)]
    session = FakeSession(alice.principal)
    as_frame = list(whole.push(session, changes).items)  # type: ignore[arg-type]
    one_by_one = [v for ch in changes for v in single.push(session, [ch]).items]  # type: ignore[arg-type]
    assert all(isinstance(v, Ack) for v in as_frame)
    assert as_frame == one_by_one
    assert stored_rows(whole) == stored_rows(single)


def test_an_edit_right_after_the_editor_lost_access_is_refused_not_predicted() -> None:
    """The prediction remembers who may edit a record for the access facts it decided
    on: an unshare between two of bob's edits must reach the second one, and a share
    again the third."""
    relay = new_relay()
    users = Script()
    alice, bob = users.actors["alice"], users.actors["bob"]
    admin = FakeSession(Principal("root", "replica-root", admin=True))
    contact = users._create(alice, "Contact", {"LastName": "Doe", "Phone": "555"})
    relay.push(FakeSession(alice.principal), [contact])  # type: ignore[arg-type]
    users.sync(bob, relay, rebuild=True)
    rid = contact.record_id

    def sharing(action: str) -> None:
        request = Admin(
            request_id=f"{action}-{next(users.ids)}", action=action, record_id=rid,
            user="bob", access="edit" if action == "share" else None,
        )  # fmt: skip
        result = relay.admin(admin.principal, request)
        assert result.ok, result

    def bob_edits(phone: str) -> Any:
        base = bob.known[rid]
        delta = bob.docs[rid].write({"Phone": phone})
        change = users._frame(bob, rid, "Contact", ChangeKind.UPDATE, delta, base, {"Phone": base})
        [verdict] = relay.push(FakeSession(bob.principal), [change]).items  # type: ignore[arg-type]
        if isinstance(verdict, Ack):
            bob.known[rid] = verdict.version
        return verdict

    sharing("share")
    assert isinstance(bob_edits("556"), Ack)
    assert relay.metrics.changes_predicted == 1
    sharing("unshare")
    refused = bob_edits("557")
    assert isinstance(refused, Unresolvable)
    assert relay.metrics.changes_predicted == 1
    users.sync(bob, relay, rebuild=True)
    sharing("share")
    assert isinstance(bob_edits("558"), Ack)
    stored = relay.storage.get_record(rid)
    assert stored is not None
    assert (
        RecordDoc.from_update(CONFIG.schema.objects["Contact"], stored.state).read()["Phone"]
        == "558"
    )
