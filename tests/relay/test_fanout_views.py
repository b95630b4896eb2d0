"""Fan-out by view: deciding once per record and role set sends every listener exactly
what deciding per listener sends.

A relay (in-memory SQLite) holds private, ``read`` and ``read_write`` records of several
owners, some shared with some users; listeners of many users, roles (some hiding fields),
admin claims and subscriptions are attached; then one push mixes updates (several per
record) and creates across all objects. Each listener's frames are compared, byte for
byte, with what the per-listener decision (:func:`reference_frames`, the fan-out as it
was before views) gives for the same accepted changes: the same records, the same
projections, in push order, and nothing at all when nothing is readable. With a policy
hook configured every decision is per listener again, and the frames are still the same.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Set
from pathlib import Path
from typing import Any

import attrs
import pytest
from crdtsync_server.config import RelayConfig
from crdtsync_server.fanout import FanOut, Listener
from crdtsync_server.policy import Action, Principal, RecordFacts
from crdtsync_server.relay import Relay
from crdtsync_server.storage import ChangeRow, RelayStorage, StoredRecord

from crdtsync.core.protocol import (
    Ack,
    Admin,
    AdminResult,
    ChangeFrame,
    Changes,
    RecordChange,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc

CONFIG = """
{hook}

[server]
secret = "fanout-views-secret-0123456789abcdef0123"

[objects.Memo]
sharing = "private"

[objects.Memo.fields]
Title  = {{ type = "string", max_length = 80 }}
Salary = {{ type = "integer", hidden = ["intern"] }}
Owner  = {{ type = "owner" }}

[objects.Notice]
sharing = "read"

[objects.Notice.fields]
Title  = {{ type = "string", max_length = 80 }}
Salary = {{ type = "integer", hidden = ["intern", "temp"] }}
Owner  = {{ type = "owner" }}

[objects.Wiki]
sharing = "read_write"

[objects.Wiki.fields]
Title  = {{ type = "string", max_length = 80 }}
Salary = {{ type = "integer", hidden = ["temp"] }}
Owner  = {{ type = "owner" }}

[roles.default]   # every user has it; here it grants nothing

[roles.staff]
Memo   = ["create", "read", "update", "delete"]
Notice = ["create", "read", "update", "delete"]
Wiki   = ["create", "read", "update", "delete"]

[roles.intern]
Memo   = ["read"]
Notice = ["read"]
Wiki   = ["read"]

[roles.temp]
Notice = ["read"]
Wiki   = ["read"]

[roles.auditor]
"""

HOOK = 'policy = "tests.relay.test_fanout_views:SecretNoticesAndAuditors"'

OBJECTS = ("Memo", "Notice", "Wiki")
USERS = ("alice", "bob", "carol", "ivan", "ian", "tina", "dave", "root")
ROLE_SETS: tuple[tuple[str, ...], ...] = (
    ("staff",),
    ("intern",),
    ("temp",),
    ("intern", "temp"),
    ("staff", "intern"),
    ("auditor",),
    (),
)


class SecretNoticesAndAuditors:
    """Notices titled "Secret..." are read by staff only; auditors read everything."""

    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: RecordFacts | None,
        declared: bool,
    ) -> bool | None:
        if action is not Action.READ:
            return None
        if "auditor" in principal.roles:
            return True
        title = str(record.values.get("Title", "")) if record is not None else ""
        if object_name == "Notice" and title.startswith("Secret"):
            return declared and "staff" in principal.roles
        return None


@attrs.define(eq=False)
class FakeListener:
    """A listener that keeps the frames fanned out to it."""

    principal: Principal | None
    subscriptions: Set[str]
    frames: list[bytes] = attrs.field(factory=list)

    def deliver_fanout_encoded(self, data: bytes) -> None:
        self.frames.append(data)


def reference_frames(
    fan_out: FanOut,
    listener: Listener,
    origin: Listener | None,
    accepted: list[tuple[StoredRecord, ChangeRow]],
) -> list[bytes]:
    """What the per-listener fan-out sends ``listener``: each accepted change of an
    object it follows and a record it may read (asked for this listener), projected to
    the fields it may read, in push order."""
    principal = listener.principal
    if listener is origin or principal is None:
        return []
    items = []
    for stored, row in accepted:
        if stored.object not in listener.subscriptions:
            continue
        state = fan_out.cache.state(stored.id, stored)
        if not fan_out.access.can_read(principal, fan_out.access.facts(stored, state)):
            continue
        items.append(
            RecordChange(
                record_id=stored.id,
                object=stored.object,
                version=stored.version,
                update=fan_out.access.project(principal, state, row.update),
                deleted=stored.deleted,
                by=row.user,
            )
        )
    return [encode(Changes(tuple(items)))] if items else []


class Rig:
    """A relay on the test configuration, its records, and a way to push as anyone."""

    def __init__(self, tmp_path: Path, *, hook: bool) -> None:
        path = tmp_path / "app.toml"
        path.write_text(CONFIG.format(hook=HOOK if hook else ""))
        self.config = RelayConfig.from_toml(path, database=":memory:")
        self.storage = RelayStorage(":memory:")
        self.relay = Relay(
            schema=self.config.schema, policy=self.config.policy, storage=self.storage
        )
        self.ids = itertools.count()
        self.client_ids = itertools.count(1000)
        self.docs: dict[str, RecordDoc] = {}  #: per record, its latest writer's replica
        self.writer: dict[str, str] = {}
        self.client_id: dict[str, int] = {}
        self.objects: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.admin = Principal("root", "root-console", ("default", "staff"), admin=True)

    def origin(self, user: str, roles: tuple[str, ...] = ("staff",)) -> FakeListener:
        replica = f"{user}-origin-{next(self.ids)}"
        self.storage.bind_replica(replica, user)
        return FakeListener(Principal(user, replica, ("default", *roles)), frozenset(OBJECTS))

    def create(self, writer: FakeListener, object_name: str, values: dict[str, Any]) -> ChangeFrame:
        record_id = f"{object_name.lower()}-{next(self.ids)}"
        self.objects[record_id] = object_name
        self.versions[record_id] = 0
        return ChangeFrame(
            change_id=f"c-{next(self.ids)}",
            record_id=record_id,
            object=object_name,
            kind="create",
            base_version=0,
            field_bases={},
            delta=self.doc(writer, record_id).write(values),
        )

    def update(self, writer: FakeListener, record_id: str, values: dict[str, Any]) -> ChangeFrame:
        return ChangeFrame(
            change_id=f"c-{next(self.ids)}",
            record_id=record_id,
            object=self.objects[record_id],
            kind="update",
            base_version=self.versions[record_id],
            field_bases={},
            delta=self.doc(writer, record_id).write(values),
        )

    def doc(self, writer: FakeListener, record_id: str) -> RecordDoc:
        """The writer's replica of the record (each replica writes as its own CRDT
        client id; only one replica writes a record between two syncs here)."""
        assert writer.principal is not None
        replica = writer.principal.replica_id
        if replica not in self.client_id:
            self.client_id[replica] = next(self.client_ids)
        doc = self.docs.get(record_id)
        if doc is None:
            spec = self.config.schema.objects[self.objects[record_id]]
            doc = RecordDoc(spec, client_id=self.client_id[replica])
        elif self.writer[record_id] != replica:
            doc = doc.copy(client_id=self.client_id[replica])
        self.docs[record_id], self.writer[record_id] = doc, replica
        return doc

    def push(self, origin: FakeListener, changes: list[ChangeFrame]) -> int:
        verdicts = self.relay.push(origin, changes)
        acked = [v for v in verdicts.items if isinstance(v, Ack)]
        for ack in acked:
            self.versions[ack.record_id] = max(self.versions[ack.record_id], ack.version)
        return len(acked)

    def share(self, record_id: str, user: str, access: str) -> None:
        result = self.relay.admin(
            self.admin,
            Admin(
                request_id=f"share-{next(self.ids)}",
                action="share",
                record_id=record_id,
                user=user,
                access=access,
            ),
        )
        assert isinstance(result, AdminResult) and result.ok, result


def title(rng: random.Random) -> str:
    return rng.choice(("Plan", "Secret plan", "Notes", "Secret notes")) + f" {rng.randrange(99)}"


@pytest.mark.parametrize("hook", [False, True], ids=["declarative", "hook"])
@pytest.mark.parametrize("seed", range(10))
def test_each_listener_gets_the_frames_the_per_listener_decision_gives(
    tmp_path: Path, seed: int, hook: bool
) -> None:
    rng = random.Random(seed)
    rig = Rig(tmp_path, hook=hook)
    writers = {user: rig.origin(user) for user in ("alice", "bob", "carol")}

    # records of every object by several owners, some shared with some users
    records: list[str] = []
    creator: dict[str, str] = {}
    for user, writer in writers.items():
        creates = [
            rig.create(writer, name, {"Title": title(rng), "Salary": rng.randrange(1000)})
            for name in OBJECTS
            for _ in range(3)
        ]
        assert rig.push(writer, creates) == len(creates)
        records += [change.record_id for change in creates]
        creator.update((change.record_id, user) for change in creates)
    for record_id in rng.sample(records, 10):
        rig.share(record_id, rng.choice(USERS), rng.choice(("read", "edit")))

    # listeners: different users, roles, admin claims and subscriptions (twins included)
    listeners: list[FakeListener] = []
    for n in range(24):
        user = rng.choice(USERS)
        roles = rng.choice(ROLE_SETS)
        follows = frozenset(rng.sample(OBJECTS, rng.randint(0, 3)))
        principal = Principal(
            user, f"{user}-{n}", ("default", *roles), admin=user == "root" or rng.random() < 0.1
        )
        listeners.append(FakeListener(principal, follows))
        if rng.random() < 0.3:  # a twin of the previous: same view, maybe another user
            twin = rng.choice((user, rng.choice(USERS)))
            listeners.append(FakeListener(attrs.evolve(principal, user=twin), follows))
    listeners.append(FakeListener(None, frozenset(OBJECTS)))  # not past its hello
    for listener in listeners:
        rig.relay.attach(listener)

    # one frame mixing objects, owners and repeated edits of a record, plus creates
    origin_user = rng.choice(tuple(writers))
    origin = writers[origin_user]
    rig.relay.attach(origin)
    editable = [r for r in records if creator[r] == origin_user or r.startswith("wiki")]
    frame = [
        rig.update(
            origin, rng.choice(editable), {"Title": title(rng), "Salary": rng.randrange(1000)}
        )
        for _ in range(30)
    ]
    for _ in range(3):  # creates among the updates (a record's updates keep their order)
        create = rig.create(origin, rng.choice(OBJECTS), {"Title": title(rng)})
        frame.insert(rng.randrange(len(frame) + 1), create)

    captured: list[list[tuple[StoredRecord, ChangeRow]]] = []
    fan_out = rig.relay._fan_out
    original = fan_out.changes

    def spy(origin: Listener | None, accepted: list[tuple[StoredRecord, ChangeRow]]) -> None:
        captured.append(list(accepted))
        original(origin, accepted)

    fan_out.changes = spy  # type: ignore[method-assign]
    accepted = rig.push(origin, frame)
    assert accepted >= 25  # most of the frame is accepted: the comparison means something
    [changes] = captured
    assert not origin.frames

    for listener in listeners:
        expected = reference_frames(fan_out, listener, origin, changes)
        assert listener.frames == expected, (listener.principal, listener.subscriptions)
    delivered = [
        item for listener in listeners for data in listener.frames for item in decode(data).items
    ]  # type: ignore[attr-defined]
    assert delivered  # somebody read something
    rig.storage.close()


@pytest.mark.parametrize("hook", [False, True], ids=["declarative", "hook"])
def test_the_policy_says_read_depends_only_on_roles_where_sharing_grants_read(
    tmp_path: Path, hook: bool
) -> None:
    policy = Rig(tmp_path, hook=hook).config.policy
    expected = {"Memo": False, "Notice": not hook, "Wiki": not hook, "Unknown": False}
    assert {name: policy.read_depends_only_on_roles(name) for name in expected} == expected


def test_a_push_nobody_else_follows_builds_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, hook=False)
    origin = rig.origin("alice")
    rig.relay.attach(origin)
    bystanders = [
        FakeListener(Principal("bob", "bob-1", ("default", "staff")), frozenset({"Wiki"})),
        FakeListener(Principal("carol", "carol-1", ("default", "staff")), frozenset()),
        FakeListener(None, frozenset(OBJECTS)),
    ]
    for listener in bystanders:
        rig.relay.attach(listener)
    captured: list[list[tuple[StoredRecord, ChangeRow]]] = []
    fan_out = rig.relay._fan_out
    fan_out.changes = lambda origin, accepted: captured.append(accepted)  # type: ignore[method-assign]
    frame = [
        rig.create(origin, "Memo", {"Title": "Plan"}),
        rig.create(origin, "Notice", {"Title": "News"}),
    ]
    assert rig.push(origin, frame) == 2
    [accepted] = captured

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"fan-out used {name} for a push nobody else follows")

    idle = FanOut(rig.relay.sessions, Untouchable(), Untouchable(), Untouchable())  # type: ignore[arg-type]
    idle.changes(origin, accepted)
    assert all(not listener.frames for listener in (origin, *bystanders))
    rig.storage.close()
