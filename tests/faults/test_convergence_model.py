"""A model-based (hypothesis stateful) test of convergence, of "no zombie ops" and of
"no pending change is silently lost", in process, with the sans-I/O pair of
``test_sans_io_pair``: a real ``Relay`` on in-memory storage, real sessions and replicas,
frames passed as bytes.

Users alice and bob (1-2 devices each) and ivy (an ``intern``: ``Account.Revenue`` is
hidden from her, ``Account.Rating`` read-only) create, edit (plain fields and the
character-merged ``Description``), delete, resolve and dismiss records while devices go
offline and come back, frames are delivered a few at a time (a device may drop with
frames in flight), and an administrator shares, unshares, re-owns and deletes records.

The model keeps, per device, what the user meant (the last value written to each field,
the characters inserted into or removed from a text, the records deleted) and every
change a replica handed to the sync layer, with the values it carried. It checks:

* after every step: no change the relay refused (a verdict the replica received) is in
  the relay's log, and no value, character or delete of it is in the relay's state
  unless an accepted change wrote the same;
* at quiescence (every device online, settled, every conflict resolved or dismissed):
  every replica holds exactly the relay's values and versions for every record its user
  may read (by the model's own access rules), and nothing else; a fresh replica of each
  user gets the same; every intent the user did not dismiss or override reached the
  relay in an accepted change (or the relay holds it anyway), and is still there unless
  a later accepted change (or a deliberate removal of a text character) replaced it;
* no accepted change overwrote another device's acknowledged value of a field that the
  user never saw: the value it replaced on the relay was written by another device
  after the version the user last saw of that field, where "saw" is the version the
  record had on the device when the user first changed the field, or when they resolved
  a conflict that listed it (the conflict showing the relay's latest value then).

Steps include replies lost on the way back (a push reaches the relay, the connection
drops before its verdicts return) and a conflict resolved after someone else changed
one of its fields again.

Text values are made of unique CJK characters, one per edit, so "this insertion" and
"this removal" are exact facts that character-wise merging cannot blur.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import crdtsync_server.relay
import pytest
from crdtsync_server.config import RelayConfig
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import crdtsync.client.replica
from crdtsync.client.model import ChangeKind, Status
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncState
from crdtsync.core.exceptions import RecordLocked, ValidationError
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.protocol import (
    Admin,
    AdminResult,
    ChangeFrame,
    Conflict,
    Error,
    Hello,
    Rejected,
    Unresolvable,
    Verdicts,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc
from crdtsync.core.schema import ObjectSpec, Schema
from tests.helpers.faults import report, scaled
from tests.helpers.harness import EXAMPLE_CONFIG
from tests.helpers.pair import Pair, World, settle
from tests.helpers.postgres import PostgresServer

pytestmark = pytest.mark.faults

OBJECTS = ("Account", "Contact", "Opportunity", "Task")
USERS = {"alice": (), "bob": (), "ivy": ("intern",)}
T = TypeVar("T")
Choose = Callable[[Sequence[Any]], Any]
MISSING = object()


def totals() -> dict[str, int]:
    return {"examples": 0, "steps": 0, "changes": 0, "conflicts": 0, "refused": 0}


def scenarios() -> dict[str, int]:
    return {"concurrent_same_field": 0, "with_text": 0, "newer_remote": 0}


# -- plumbing: determinism, a replica that reports what it sends, a pipe in pieces -------


class Seeded:
    """Stands in for the ``uuid`` and ``secrets`` modules of the replica and the relay, so
    record, change and replica ids and CRDT client ids (which order concurrent CRDT
    writes) are the same whenever hypothesis replays or shrinks an example."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._random.getrandbits(128), version=4)

    def randbits(self, bits: int) -> int:
        return self._random.getrandbits(bits)


class Deterministic:
    """Patches the id sources for the life of one example."""

    TARGETS = ((crdtsync.client.replica, "uuid"), (crdtsync.client.replica, "secrets"))
    RELAY_TARGETS = ((crdtsync_server.relay, "uuid"), (crdtsync_server.relay, "secrets"))

    def __init__(self, seed: int) -> None:
        source = Seeded(seed)
        self._saved = [
            (module, name, getattr(module, name))
            for module, name in (*self.TARGETS, *self.RELAY_TARGETS)
        ]
        for module, name, _ in self._saved:
            setattr(module, name, source)

    def restore(self) -> None:
        for module, name, original in self._saved:
            setattr(module, name, original)


class TrackedReplica(Replica):
    """A replica that reports every change when it is first handed to the sync layer
    (the moment its content is fixed: a retransmission resends the same bytes)."""

    def __init__(
        self,
        store: LocalStore,
        schema: Schema,
        on_outgoing: Callable[[TrackedReplica, ChangeFrame], None],
        on_settled: Callable[[TrackedReplica, str, int | None], None],
    ) -> None:
        super().__init__(store, schema)
        self.on_outgoing = on_outgoing
        self.on_settled = on_settled

    def outgoing(self, limit: int | None = None) -> list[ChangeFrame]:
        out = super().outgoing(limit)
        for change in out:
            self.on_outgoing(self, change)
        return out

    def apply_acks(self, acks: Sequence[tuple[str, int, bytes | None]]) -> list[bool]:
        entries = [self.store.find_pending(change_id) for change_id, _, _ in acks]
        applied = super().apply_acks(acks)
        for (_, version, _), entry, done in zip(acks, entries, applied, strict=True):
            if done and entry is not None:
                self.on_settled(self, entry.record_id, version)  # what is left may be less
        return applied


class ModelWorld(World):
    def __init__(
        self,
        on_outgoing: Callable[[TrackedReplica, ChangeFrame], None],
        on_settled: Callable[[TrackedReplica, str, int | None], None],
    ) -> None:
        super().__init__()
        self.on_outgoing = on_outgoing
        self.on_settled = on_settled

    def replica(self, schema: Schema | None = None) -> TrackedReplica:
        store = LocalStore(":memory:")
        self._stores.append(store)
        return TrackedReplica(
            store, schema or self.config.schema, self.on_outgoing, self.on_settled
        )


class ClusterWorld(ModelWorld):
    """Three relays on one PostgreSQL database (``database``, empty), as three nodes
    would be; :attr:`storage` is a storage of its own reading what they committed."""

    def __init__(
        self,
        database: str,
        on_outgoing: Callable[[TrackedReplica, ChangeFrame], None],
        on_settled: Callable[[TrackedReplica, str, int | None], None],
        nodes: int = 3,
    ) -> None:
        super().__init__(on_outgoing, on_settled)
        self.storage.close()  # the in-memory relay is replaced by the nodes
        self.nodes = [
            Relay(
                schema=self.config.schema,
                policy=self.config.policy,
                storage=RelayStorage(database),
            )
            for _ in range(nodes)
        ]
        self.relay = self.nodes[0]
        self.storage = RelayStorage(database)

    @property
    def relays(self) -> list[Relay]:
        return self.nodes

    def close(self) -> None:
        super().close()
        for node in self.nodes:
            node.storage.close()


class Link(Pair):
    """A pair whose frames wait in two queues, so they can be delivered a few at a time
    and lost with the connection."""

    def __init__(
        self,
        world: World,
        replica: Replica,
        token: str,
        observe: Callable[[Link, object], None],
        relay: Relay | None = None,
    ) -> None:
        super().__init__(world, replica, token, relay=relay)
        self.observe = observe
        self.up: deque[bytes] = deque()
        self.down: deque[bytes] = deque()

    def collect(self) -> None:
        # What a relay's transport does every few ms: take in (and fan out) what other
        # relays on its database committed (nothing to do with one relay alone).
        self.server.relay.follow()
        self.client.push()  # what the client transport does whenever it wakes
        self.up.extend(self.client.data_to_send())
        self.down.extend(self.server.data_to_send())

    def deliver_up(self, count: int) -> int:
        moved = 0
        while self.up and moved < count and not self.closed:
            self.server.receive(self.up.popleft())
            moved += 1
        return moved

    def deliver_down(self, count: int) -> int:
        moved = 0
        while self.down and moved < count and not self.closed:
            data = self.down.popleft()
            frame = decode(data)
            self.observe(self, frame)
            self.client.receive(data)
            moved += 1
        return moved

    def step(self) -> bool:
        if self.closed:
            return False
        self.collect()
        moved = self.deliver_up(len(self.up))
        self.collect()
        moved += self.deliver_down(len(self.down))
        assert self.server.close_code is None, self.server.close_reason
        return moved > 0

    def disconnect(self) -> None:
        self.up.clear()  # frames in flight are lost with the connection
        self.down.clear()
        super().disconnect()


# -- the model -------------------------------------------------------------------------


@attrs.define
class Device:
    index: int
    user: str
    roles: tuple[str, ...]
    replica: TrackedReplica
    link: Link | None = None


@attrs.define
class SentChange:
    """A change as first handed to the sync layer."""

    change_id: str
    device: int
    record_id: str
    object: str
    kind: ChangeKind
    values: dict[str, Any]  #: plain field -> stored encoding of the value it writes
    added: set[str]  #: text characters it inserts
    removed: set[str]  #: text characters it removes
    sent_at: int
    #: plain field -> the record version the user had seen of it (see the module docstring)
    bases: dict[str, int] = attrs.field(factory=dict)
    seq: int | None = None  #: its version once the relay accepted it


def writes(name: str, value: Any) -> Callable[[SentChange], bool]:
    return lambda change: change.values.get(name, MISSING) == value


def inserts(char: str) -> Callable[[SentChange], bool]:
    return lambda change: char in change.added


def removes(char: str) -> Callable[[SentChange], bool]:
    return lambda change: char in change.removed


def encoded(spec: ObjectSpec, values: dict[str, Any]) -> dict[str, Any]:
    return {name: spec.fields[name].type.encode(value) for name, value in values.items()}


def text_of(spec: ObjectSpec, update: bytes | None, name: str) -> str:
    value = RecordDoc.from_update(spec, update or b"").stored_value(name)
    return value if isinstance(value, str) else ""


class ConvergenceModel(RuleBasedStateMachine):
    totals = totals()
    #: how often the targeted scenarios ran: a field changed on two devices, one offline
    #: (and the text with it); a field of a conflict changed again before its resolve
    scenarios = scenarios()

    def __init__(self) -> None:
        super().__init__()
        self.ids = Deterministic(seed=20260101)
        self.world = self._make_world()
        self.schema = self.world.config.schema
        self.devices: list[Device] = []
        self.by_replica: dict[int, Device] = {}
        self.sent: dict[str, SentChange] = {}
        self.refused: dict[str, SentChange] = {}
        # What each device's user meant, and when (the model clock).
        self.intents: dict[tuple[int, str, str], tuple[Any, int]] = {}
        #: intents the replica stopped carrying because the relay held the value already
        #: (someone else wrote the same): the intent as it was, and the relay's version
        self.held: dict[tuple[int, str, str], tuple[tuple[Any, int], int]] = {}
        self.seen_base: dict[tuple[int, str, str], int] = {}
        self.text_adds: dict[tuple[int, str, str], int] = {}
        self.text_removals: dict[tuple[int, str, str], int] = {}
        self.delete_intents: dict[tuple[int, str], int] = {}
        self.removed_on_purpose: dict[str, set[str]] = {}
        self.shares: dict[str, dict[str, str]] = {}
        self.admin_deleted: set[str] = set()
        self.clock = 0
        self.quiet_at = 0
        self.counter = 0
        self.rng = random.Random(0)
        self.steps = 0
        self.conflicts = 0
        self.clean = True
        self.admins = [self.world.session(relay) for relay in self.world.relays]
        for admin in self.admins:
            admin.receive(
                encode(Hello((1,), self.world.authority.issue("root", admin=True), "admin-console"))
            )
            admin.data_to_send()

    def _make_world(self) -> ModelWorld:
        return ModelWorld(self._capture, self._settled)

    def _node(self) -> Relay | None:
        """The relay a new connection goes to (one at random, if there are several)."""
        relays = self.world.relays
        return relays[self.rng.randrange(len(relays))] if len(relays) > 1 else None

    # -- hooks ----------------------------------------------------------------------------

    def _capture(self, replica: TrackedReplica, change: ChangeFrame) -> None:
        if change.change_id in self.sent:
            return  # a retransmission: same id, same bytes
        device = self.by_replica[id(replica)]
        entry = replica.store.get_pending(change.record_id)
        row = replica.store.get_record(change.record_id)
        assert entry is not None and row is not None
        spec = replica.schema.object(change.object)
        values: dict[str, Any] = {}
        added: set[str] = set()
        removed: set[str] = set()
        bases: dict[str, int] = {}
        if change.kind is not ChangeKind.DELETE:
            for name, edit in entry.changes.items():
                field = spec.fields.get(name)
                if field is not None and field.type is not FieldType.TEXT:
                    values[name] = edit.new
            bases = {
                name: self.seen_base.get((device.index, change.record_id, name), 0)
                for name in values
            }
            for name in spec.text_fields:
                server, local = text_of(spec, row.server, name), text_of(spec, row.local, name)
                added |= set(local) - set(server)
                removed |= set(server) - set(local)
        self.sent[change.change_id] = SentChange(
            change_id=change.change_id,
            device=device.index,
            record_id=change.record_id,
            object=change.object,
            kind=change.kind,
            values=values,
            added=added,
            removed=removed,
            sent_at=self.clock,
            bases=bases if change.kind is not ChangeKind.DELETE else {},
        )

    def _settled(self, replica: TrackedReplica, record_id: str, acked: int | None) -> None:
        device = self.by_replica.get(id(replica))
        if device is not None and device.index >= 0:
            self._note_held(device, record_id, acked)

    def _note_held(self, device: Device, record_id: str, acked: int | None = None) -> None:
        """After the replica settled (part of) the record's entry (an ack, a resolve): an
        intent its entry no longer carries, that no accepted change of the device
        carried either, was dropped because the relay held that value already (a field
        equal to the server's leaves the change), or it went out with the change just
        ``acked`` (before the user set the same value again). Check that against the
        relay's own record at the version the device holds (or the one acked), and
        remember that version: the intent reached the relay there, as if carried by a
        change of that version."""
        row = device.replica.store.get_record(record_id)
        if row is None or row.deleted or row.server is None:
            return
        entry = device.replica.store.get_pending(record_id)
        spec = self.schema.objects[row.object]
        relay: dict[int, dict[str, Any]] = {}
        for version in sorted({row.version, acked or row.version}):
            state = self.world.storage.state_at(record_id, version)
            assert state is not None
            relay[version] = encoded(spec, RecordDoc.from_update(spec, state).read())
        for key, intent in self.intents.items():
            if key[:2] != (device.index, record_id):
                continue
            name = key[2]
            value, since = intent
            if entry is not None and name in entry.changes:
                continue  # still to be sent
            if key in self.held and self.held[key][0] == intent:
                continue
            if self._carried(device.index, record_id, since, writes(name, value)):
                continue
            at = [version for version, values in relay.items() if values.get(name) == value]
            assert at, (
                f"device {device.index}: the replica stopped carrying {name}={value!r} of "
                f"{record_id}, but the relay held "
                + ", ".join(f"{v.get(name)!r} at version {n}" for n, v in relay.items())
            )
            self.held[key] = (intent, max(at))

    def _observe(self, link: Link, frame: object) -> None:
        assert not isinstance(frame, Error), f"an honest replica got an error frame: {frame}"
        if not isinstance(frame, Verdicts):
            return
        for verdict in frame.items:
            assert not isinstance(verdict, Rejected), f"an honest change was rejected: {verdict}"
            if isinstance(verdict, Conflict | Unresolvable):
                self.refused[verdict.change_id] = self.sent[verdict.change_id]
                if isinstance(verdict, Conflict):
                    self.conflicts += 1

    # -- helpers --------------------------------------------------------------------------

    def _begin(self) -> None:
        self.clean = False
        self.clock += 1
        self.steps += 1

    def _pick(self, items: Sequence[T], pick: int) -> T:
        return items[pick % len(items)]

    def _connect(self, device: Device) -> None:
        token = self.world.authority.issue(device.user, roles=device.roles)
        device.link = Link(self.world, device.replica, token, self._observe, self._node())

    def _links(self) -> list[Link]:
        return [d.link for d in self.devices if d.link is not None]

    def _token(self) -> str:
        self.counter += 1
        return chr(0x4E00 + self.counter)  # one unique CJK character per insertion

    def _unique_email(self) -> str:
        self.counter += 1
        return f"u{self.counter}@ex.com"

    def _spec(self, device: Device, object_name: str) -> ObjectSpec:
        return device.replica.schema.object(object_name)

    def _writable(self, device: Device, object_name: str) -> list[str]:
        spec = self._spec(device, object_name)
        return [
            name
            for name, field in spec.fields.items()
            if not field.read_only and field.type not in (FieldType.OWNER, FieldType.TEXT)
        ]

    def _value(self, device: Device, object_name: str, name: str, choose: Choose) -> Any:
        if name == "Account":
            accounts = sorted(r.id for r in device.replica.records("Account"))
            optional = [None] if object_name == "Contact" else []
            if not accounts and not optional:
                return MISSING
            return choose([*optional, *accounts])
        pools: dict[str, list[Any]] = {
            "Name": ["Acme", "Globex", "Initech"],
            "Industry": [None, "Energy", "Retail", "Technology"],
            "Employees": [0, 10, 250],
            "Revenue": [None, "0", "12.50", "1E+3"],
            "Rating": [None, "Hot", "Warm", "Cold"],
            "Website": [None, "acme.example"],
            "Active": [None, True, False],
            "FirstName": [None, "Ann", "Bo"],
            "LastName": ["Smith", "Jones"],
            "Email": [None, "a@ex.com", "b@ex.com"],
            "Phone": [None, "555-0101"],
            "Birthdate": [None, date(1990, 1, 2)],
            "Stage": ["Prospecting", "Proposal", "Closed Won", "Closed Lost"],
            "Amount": [None, "10", "99.5"],
            "Probability": [None, 10, 50.5],
            "CloseDate": [None, date(2026, 5, 1)],
        }
        return choose(pools[name])

    def _local(self, device: Device, record_id: str) -> dict[str, Any]:
        record = device.replica.get(record_id)
        assert record is not None
        return encoded(self._spec(device, record.object), dict(record.fields))

    def _version(self, device: Device, record_id: str) -> int:
        record = device.replica.get(record_id)
        assert record is not None
        return record.version

    def _status(self, device: Device, record_id: str) -> Status:
        record = device.replica.get(record_id)
        assert record is not None
        return record.status

    def _note_text(self, device: Device, record_id: str, before: str, after: str) -> None:
        for char in set(after) - set(before):
            self.text_adds[(device.index, record_id, char)] = self.clock
        for char in set(before) - set(after):
            self.text_adds.pop((device.index, record_id, char), None)
            self.text_removals[(device.index, record_id, char)] = self.clock
            self.removed_on_purpose.setdefault(record_id, set()).add(char)

    def _accepted(self) -> list[SentChange]:
        for change in self.sent.values():
            if change.seq is None:
                row = self.world.storage.find_change(change.change_id)
                if row is not None:
                    change.seq = row.seq
        return [c for c in self.sent.values() if c.seq is not None]

    def _carried(
        self, device: int, record_id: str, since: int, test: Callable[[SentChange], bool]
    ) -> SentChange | None:
        """An accepted change of ``device`` to the record, first sent at or after
        ``since``, that passes ``test``."""
        for change in self._accepted():
            if (
                change.device == device
                and change.record_id == record_id
                and change.sent_at >= since
                and test(change)
            ):
                return change
        return None

    def _forget(self, device: Device, record_id: str) -> None:
        """The user discarded the record's local changes: intents not yet carried by an
        accepted change are dropped (the user chose to lose them)."""
        for key, (value, since) in list(self.intents.items()):
            if key[:2] == (device.index, record_id):
                name = key[2]
                if self.held.get(key, (None, 0))[0] == (value, since):
                    continue  # it reached the relay already
                if not self._carried(device.index, record_id, since, writes(name, value)):
                    del self.intents[key]
        for key, since in list(self.text_adds.items()):
            if key[:2] == (device.index, record_id):
                char = key[2]
                if not self._carried(device.index, record_id, since, inserts(char)):
                    del self.text_adds[key]
        for key, since in list(self.text_removals.items()):
            if key[:2] == (device.index, record_id):
                char = key[2]
                if not self._carried(device.index, record_id, since, removes(char)):
                    del self.text_removals[key]
        self.delete_intents.pop((device.index, record_id), None)

    def _relay_values(self, stored: Any) -> dict[str, Any]:
        spec = self.schema.objects[stored.object]
        return encoded(spec, RecordDoc.from_update(spec, stored.state).read())

    def _may_read(self, user: str, stored: Any) -> bool:
        """The model's own access rule: owner, sharing default, or a manual share (every
        role here may read every object)."""
        owner = self._relay_values(stored).get("Owner") or stored.created_by
        if owner == user or self.schema.objects[stored.object].sharing != "private":
            return True
        return user in self.shares.get(stored.id, {})

    def _expected(self, user: str, view: Schema) -> dict[str, tuple[str, dict[str, Any], int]]:
        storage = self.world.storage
        expected = {}
        for record_id in storage.record_ids_since(OBJECTS, 0):
            stored = storage.get_record(record_id)
            assert stored is not None
            if stored.deleted or not self._may_read(user, stored):
                continue
            visible = view.objects[stored.object].fields
            values = {k: v for k, v in self._relay_values(stored).items() if k in visible}
            expected[record_id] = (stored.object, values, stored.version)
        return expected

    def _holds(self, replica: Replica) -> dict[str, tuple[str, dict[str, Any], int]]:
        held = {}
        for record in replica.records():
            assert record.status is Status.SYNCED, (record.id, record.status)
            spec = replica.schema.object(record.object)
            held[record.id] = (record.object, encoded(spec, dict(record.fields)), record.version)
        return held

    # -- resolving ------------------------------------------------------------------------

    def _dismiss(self, device: Device, record_id: str) -> None:
        device.replica.dismiss(record_id)
        self._forget(device, record_id)

    def _attend(
        self, device: Device, record_id: str, choose: Choose, *, give_up: bool = False
    ) -> None:
        """Resolve (mine / theirs / a typed value, or fix what validation names) or
        dismiss a record that needs attention."""
        replica = device.replica
        [change] = [p for p in replica.pending() if p.record_id == record_id]
        assert change.status.locked and change.problem is not None
        if change.status is Status.UNRESOLVABLE or give_up:
            self._dismiss(device, record_id)
            return
        if change.kind is ChangeKind.DELETE:
            if choose(["resolve", "dismiss"]) == "resolve":
                replica.resolve(record_id)  # delete anyway: the delete intent stands
            else:
                self._dismiss(device, record_id)
            return
        if choose(["resolve", "resolve", "dismiss"]) == "dismiss":
            self._dismiss(device, record_id)
            return
        writable = self._writable(device, change.object)
        values: dict[str, Any] = {}
        for conflict in change.problem.conflicts:
            if conflict.field not in writable:
                continue
            how = choose(["mine", "theirs", "typed"])
            if how == "theirs":
                values[conflict.field] = conflict.theirs
            elif how == "typed":
                value = self._value(device, change.object, conflict.field, choose)
                if value is not MISSING:
                    values[conflict.field] = value
        for error in change.problem.errors:
            if error.field == "Email":  # taken, or the contact needs an Email or a Phone
                values["Email"] = self._unique_email()
            elif error.field == "CloseDate":
                values["CloseDate"] = date(2026, 6, 30)
            elif error.field == "Account" and change.object == "Contact":
                values["Account"] = None
            elif error.field == "Account":
                synced = [
                    r.id
                    for r in replica.records("Account")
                    if r.status is Status.SYNCED and r.id != values.get("Account")
                ]
                if not synced:
                    self._dismiss(device, record_id)
                    return
                values["Account"] = choose(sorted(synced))
            else:
                self._dismiss(device, record_id)
                return
        version = self._version(device, record_id)
        try:
            replica.resolve(record_id, values)
        except ValidationError:
            self._dismiss(device, record_id)
            return
        for name in {c.field for c in change.problem.conflicts} | set(values):
            self.seen_base[(device.index, record_id, name)] = version
        entry = replica.store.get_pending(record_id)
        assert entry is None or entry.status == Status.PENDING
        for name in {c.field for c in change.problem.conflicts} | set(values):
            edit = entry.changes.get(name) if entry is not None else None
            if edit is None:  # the relay holds that value already: nothing left to carry
                self.intents.pop((device.index, record_id, name), None)
            elif name in values:
                self.intents[(device.index, record_id, name)] = (edit.new, self.clock)
        self._note_held(device, record_id)

    # -- rules: setup and connectivity ----------------------------------------------------

    @initialize(alice=st.integers(1, 2), bob=st.integers(1, 2), seed=st.integers(0, 2**32 - 1))
    def start(self, alice: int, bob: int, seed: int) -> None:
        self.rng = random.Random(seed)
        for user, count in (("alice", alice), ("bob", bob), ("ivy", 1)):
            for _ in range(count):
                replica = self.world.replica()
                device = Device(len(self.devices), user, USERS[user], replica)
                self.devices.append(device)
                self.by_replica[id(replica)] = device
                self._connect(device)
        settle(*self._links())
        for device in self.devices:  # every device has adopted the relay's view once
            assert device.link is not None and device.link.client.state is SyncState.READY

    @precondition(lambda self: any(d.link is None for d in self.devices))
    @rule(pick=st.integers(0, 7))
    def connect(self, pick: int) -> None:
        self._begin()
        self._connect(self._pick([d for d in self.devices if d.link is None], pick))

    @precondition(lambda self: any(d.link is not None for d in self.devices))
    @rule(pick=st.integers(0, 7))
    def disconnect(self, pick: int) -> None:
        self._begin()
        device = self._pick([d for d in self.devices if d.link is not None], pick)
        assert device.link is not None
        device.link.disconnect()
        device.link = None

    @precondition(lambda self: any(d.link is not None for d in self.devices))
    @rule(pick=st.integers(0, 7), up=st.integers(0, 3), down=st.integers(0, 3))
    def deliver_some(self, pick: int, up: int, down: int) -> None:
        """Random delivery timing: a few frames each way."""
        self._begin()
        device = self._pick([d for d in self.devices if d.link is not None], pick)
        assert device.link is not None
        device.link.collect()
        device.link.deliver_up(up)
        device.link.collect()
        device.link.deliver_down(down)

    @precondition(lambda self: any(d.link is not None for d in self.devices))
    @rule()
    def settle_online(self) -> None:
        self._begin()
        settle(*self._links())

    @precondition(lambda self: any(d.link is not None for d in self.devices))
    @rule(pick=st.integers(0, 7))
    def lose_replies(self, pick: int) -> None:
        """A device's pushes reach the relay, and the connection drops before anything
        the relay sends back (verdicts, fan-out) arrives."""
        self._begin()
        device = self._pick([d for d in self.devices if d.link is not None], pick)
        assert device.link is not None
        device.link.collect()
        device.link.deliver_up(len(device.link.up))
        device.link.disconnect()
        device.link = None

    # -- rules: local edits ---------------------------------------------------------------

    @rule(pick=st.integers(0, 7), data=st.data())
    def create(self, pick: int, data: st.DataObject) -> None:
        self._begin()
        choose: Choose = lambda options: data.draw(st.sampled_from(options))  # noqa: E731
        device = self._pick(self.devices, pick)
        object_name = choose(["Account", "Account", "Contact", "Opportunity"])
        spec = self._spec(device, object_name)
        required = [n for n, f in spec.fields.items() if f.required]
        optional = [
            n
            for n, f in spec.fields.items()
            if not f.required and f.type is not FieldType.OWNER and n in spec.fields
        ]
        chosen = data.draw(st.lists(st.sampled_from(optional), unique=True, max_size=4))
        values: dict[str, Any] = {}
        for name in [*required, *chosen]:
            if spec.fields[name].type is FieldType.TEXT:
                values[name] = "".join(self._token() for _ in range(choose([0, 1, 2])))
                continue
            value = self._value(device, object_name, name, choose)
            if value is MISSING:
                return  # an Opportunity needs an Account this device holds
            if value is not None:
                values[name] = value
        record_id = device.replica.create(object_name, values)
        entry = device.replica.store.get_pending(record_id)
        assert entry is not None and entry.kind == ChangeKind.CREATE
        for name, edit in entry.changes.items():
            if spec.fields[name].type is FieldType.TEXT:
                self._note_text(device, record_id, "", edit.new or "")
            else:
                self.intents[(device.index, record_id, name)] = (edit.new, self.clock)
                self.seen_base[(device.index, record_id, name)] = 0

    @rule(pick=st.integers(0, 7), which=st.integers(0, 63), data=st.data())
    def update_fields(self, pick: int, which: int, data: st.DataObject) -> None:
        self._begin()
        choose: Choose = lambda options: data.draw(st.sampled_from(options))  # noqa: E731
        device = self._pick(self.devices, pick)
        records = sorted(device.replica.records(), key=lambda r: r.id)
        if not records:
            return
        record = self._pick(records, which)
        writable = self._writable(device, record.object)
        names = data.draw(st.lists(st.sampled_from(writable), min_size=1, max_size=2, unique=True))
        values = {}
        for name in names:
            value = self._value(device, record.object, name, choose)
            if value is not MISSING:
                values[name] = value
        if record.status.locked:
            with pytest.raises(RecordLocked):
                device.replica.update(record.id, values)
            return
        self._write(device, record.id, values)

    def _write(self, device: Device, record_id: str, values: dict[str, Any]) -> None:
        """``device``'s user changes plain fields of an unlocked record."""
        entry = device.replica.store.get_pending(record_id)
        version = self._version(device, record_id)
        before = self._local(device, record_id)
        device.replica.update(record_id, values)
        after = self._local(device, record_id)
        left = device.replica.store.get_pending(record_id)
        for name in values:
            if entry is None or name not in entry.changes:  # first changed since it synced
                self.seen_base[(device.index, record_id, name)] = version
            if left is None or name not in left.changes:  # edited back: no change of it
                self.intents.pop((device.index, record_id, name), None)
            elif after.get(name) != before.get(name):
                self.intents[(device.index, record_id, name)] = (after.get(name), self.clock)

    @rule(pick=st.integers(0, 7), other=st.integers(0, 7), which=st.integers(0, 63), data=st.data())
    def concurrent_same_field(self, pick: int, other: int, which: int, data: st.DataObject) -> None:
        """Two devices change the same field of a record, one of them offline (and maybe
        another field too), the online one syncs: the offline one's change will meet a
        conflict when it comes back."""
        self._begin()
        choose: Choose = lambda options: data.draw(st.sampled_from(options))  # noqa: E731
        offline = self._pick(self.devices, pick)
        if offline.link is None:
            self._connect(offline)  # so that it holds what the others made
        settle(*self._links())
        online = [d for d in self.devices if d is not offline and d.link is not None]
        if not online:
            return
        writer = self._pick(online, other)
        shared = sorted(
            record.id
            for record in offline.replica.records()
            if not record.status.locked
            and (theirs := writer.replica.get(record.id)) is not None
            and not theirs.status.locked
        )
        if not shared:
            return
        record_id = self._pick(shared, which)
        record = offline.replica.get(record_id)
        assert record is not None
        names = sorted(
            set(self._writable(offline, record.object)) & set(self._writable(writer, record.object))
        )
        if not names:
            return
        name = choose(names)
        if offline.link is not None:
            offline.link.disconnect()
            offline.link = None
        mine = self._value(offline, record.object, name, choose)
        theirs = self._value(writer, record.object, name, choose)
        if mine is MISSING or theirs is MISSING or mine == theirs:
            return
        values = {name: mine}
        extra = [n for n in self._writable(offline, record.object) if n != name]
        if extra and choose([True, False]):
            second = choose(extra)
            value = self._value(offline, record.object, second, choose)
            if value is not MISSING:
                values[second] = value
        self._write(offline, record_id, values)
        self._write(writer, record_id, {name: theirs})
        if record.object == "Account" and choose([True, False]):
            # Both edit the collaborative text too: it must merge whatever the conflict.
            self._edit_text(offline, record_id, data)
            self._edit_text(writer, record_id, data)
            self.scenarios["with_text"] += 1
        settle(*self._links())
        self.scenarios["concurrent_same_field"] += 1

    @rule(pick=st.integers(0, 7), which=st.integers(0, 63), data=st.data())
    def edit_text(self, pick: int, which: int, data: st.DataObject) -> None:
        """A character-level change of an Account's Description: insert a new character
        somewhere and/or remove one."""
        self._begin()
        device = self._pick(self.devices, pick)
        records = sorted(device.replica.records("Account"), key=lambda r: r.id)
        if not records:
            return
        record = self._pick(records, which)
        if record.status.locked:
            with pytest.raises(RecordLocked):
                device.replica.update(record.id, {"Description": "locked"})
            return
        self._edit_text(device, record.id, data)

    def _edit_text(self, device: Device, record_id: str, data: st.DataObject) -> None:
        """Insert a new character somewhere in an Account's Description and/or remove one."""
        record = device.replica.get(record_id)
        assert record is not None
        old = str(record.fields.get("Description") or "")
        new = old
        if old and data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(new) - 1))
            new = new[:at] + new[at + 1 :]
        if not old or new == old or data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(new)))
            new = new[:at] + self._token() + new[at:]
        device.replica.update(record_id, {"Description": new})
        local = device.replica.get(record_id)
        assert local is not None and (local.fields.get("Description") or "") == new
        self._note_text(device, record_id, old, new)

    @rule(pick=st.integers(0, 7), which=st.integers(0, 63))
    def delete(self, pick: int, which: int) -> None:
        self._begin()
        device = self._pick(self.devices, pick)
        records = sorted(device.replica.records(), key=lambda r: r.id)
        if not records:
            return
        record = self._pick(records, which)
        if record.status.locked:
            with pytest.raises(RecordLocked):
                device.replica.delete(record.id)
            return
        device.replica.delete(record.id)
        assert device.replica.get(record.id) is None
        # The delete supersedes the record's unsynced edits.
        for key in [k for k in self.intents if k[:2] == (device.index, record.id)]:
            del self.intents[key]
        for key in [k for k in self.text_adds if k[:2] == (device.index, record.id)]:
            del self.text_adds[key]
        for key in [k for k in self.text_removals if k[:2] == (device.index, record.id)]:
            del self.text_removals[key]
        self.delete_intents[(device.index, record.id)] = self.clock

    @rule(
        pick=st.integers(0, 7),
        which=st.integers(0, 63),
        bad=st.sampled_from(
            [
                ("Account", "Employees", -1),
                ("Account", "Industry", "Mining"),
                ("Account", "Name", "x" * 81),
                ("Contact", "Email", "not-an-email"),
                ("Opportunity", "Probability", 101),
            ]
        ),
    )
    def invalid_edit(self, pick: int, which: int, bad: tuple[str, str, Any]) -> None:
        """A locally invalid value fails at once and nothing is queued."""
        self._begin()
        device = self._pick(self.devices, pick)
        object_name, name, value = bad
        records = sorted(device.replica.records(object_name), key=lambda r: r.id)
        pending = device.replica.pending()
        held = self._holds_any(device.replica)
        if records and not self._pick(records, which).status.locked:
            with pytest.raises(ValidationError) as raised:
                device.replica.update(self._pick(records, which).id, {name: value})
        else:
            with pytest.raises(ValidationError) as raised:
                device.replica.create(object_name, {name: value})
        assert name in raised.value.fields
        assert device.replica.pending() == pending
        assert self._holds_any(device.replica) == held

    def _holds_any(self, replica: Replica) -> dict[str, Any]:
        return {r.id: (r.status, dict(r.fields)) for r in replica.records()}

    @precondition(
        lambda self: any(p.status.locked for d in self.devices for p in d.replica.pending())
    )
    @rule(pick=st.integers(0, 63), data=st.data())
    def attend(self, pick: int, data: st.DataObject) -> None:
        self._begin()
        locked = [
            (device, change.record_id)
            for device in self.devices
            for change in device.replica.pending()
            if change.status.locked
        ]
        device, record_id = self._pick(locked, pick)
        self._attend(device, record_id, lambda options: data.draw(st.sampled_from(options)))

    @precondition(
        lambda self: any(
            p.status is Status.CONFLICT and p.kind is not ChangeKind.DELETE
            for d in self.devices
            for p in d.replica.pending()
        )
    )
    @rule(pick=st.integers(0, 63), data=st.data())
    def newer_remote_then_resolve(self, pick: int, data: st.DataObject) -> None:
        """Someone else changes a field of a record in conflict again, the change reaches
        the conflicted device, and then its user attends to the conflict."""
        self._begin()
        conflicted = [
            (device, change.record_id)
            for device in self.devices
            for change in device.replica.pending()
            if change.status is Status.CONFLICT and change.kind is not ChangeKind.DELETE
        ]
        device, record_id = self._pick(conflicted, pick)
        choose: Choose = lambda options: data.draw(st.sampled_from(options))  # noqa: E731
        self._newer_remote(device, record_id, choose)
        self._attend(device, record_id, choose)

    def _newer_remote(self, device: Device, record_id: str, choose: Choose) -> None:
        """Another online device changes a field of ``device``'s change in conflict (one
        the conflict does not list, mostly: what a resolve must not overwrite unseen),
        and everything online settles."""
        [change] = [p for p in device.replica.pending() if p.record_id == record_id]
        assert change.problem is not None
        writers = [
            d
            for d in self.devices
            if d is not device
            and d.link is not None
            and (held := d.replica.get(record_id)) is not None
            and not held.status.locked
        ]
        if not writers:
            return
        writer = choose(writers)
        writable = self._writable(writer, change.object)
        names = sorted(n for n in change.changes if n in writable)
        disputed = {c.field for c in change.problem.conflicts}
        undisputed = [n for n in names if n not in disputed]
        if undisputed and choose([True, True, False]):
            names = undisputed
        if not names:
            return
        name = choose(names)
        value = self._value(writer, change.object, name, choose)
        if value is MISSING:
            return
        self._write(writer, record_id, {name: value})
        settle(*self._links())
        self.scenarios["newer_remote"] += 1

    # -- rules: administration ------------------------------------------------------------

    @precondition(lambda self: self.world.storage.cluster_seq() > 0)
    @rule(
        which=st.integers(0, 63),
        action=st.sampled_from(["share", "share", "unshare", "set_owner", "delete"]),
        user=st.sampled_from(sorted(USERS)),
        access=st.sampled_from(["read", "edit"]),
    )
    def admin_action(self, which: int, action: str, user: str, access: str) -> None:
        self._begin()
        storage = self.world.storage
        record_id = self._pick(storage.record_ids_since(OBJECTS, 0), which)
        stored = storage.get_record(record_id)
        assert stored is not None
        admin = self.admins[self.rng.randrange(len(self.admins))]
        admin.receive(
            encode(
                Admin(
                    request_id=f"a{self.clock}",
                    action=action,
                    record_id=record_id,
                    user=None if action == "delete" else user,
                    access=access if action == "share" else None,
                )
            )
        )
        [result] = [decode(data) for data in admin.data_to_send()]
        assert isinstance(result, AdminResult)
        if stored.deleted:
            assert not result.ok
            return
        assert result.ok, result.message
        if action == "share":
            self.shares.setdefault(record_id, {})[user] = access
        elif action == "unshare":
            self.shares.get(record_id, {}).pop(user, None)
        elif action == "delete":
            self.admin_deleted.add(record_id)

    # -- quiescence -----------------------------------------------------------------------

    @precondition(lambda self: self.clock - self.quiet_at >= 10)
    @rule()
    def quiesce(self) -> None:
        """Mid-run quiescence (at most every ten steps; the last one is in teardown)."""
        self._begin()
        self.quiet_at = self.clock
        self._quiesce()
        self._check_quiet()

    def _quiesce(self) -> None:
        for device in self.devices:
            if device.link is None:
                self._connect(device)
        for rounds in range(12):
            settle(*self._links())
            locked = [
                (device, change.record_id)
                for device in self.devices
                for change in device.replica.pending()
                if change.status.locked
            ]
            if not locked and not any(d.replica.pending() for d in self.devices):
                return
            for device, record_id in locked:
                entry = device.replica.store.get_pending(record_id)
                if entry is None or not Status(entry.status).locked:
                    continue  # settled meanwhile (e.g. deleted elsewhere, then dismissed)
                if (
                    rounds == 0
                    and entry.status == Status.CONFLICT
                    and entry.kind != ChangeKind.DELETE
                    and self.rng.random() < 0.8
                ):
                    self._newer_remote(device, record_id, self.rng.choice)
                    entry = device.replica.store.get_pending(record_id)
                    if entry is None or not Status(entry.status).locked:
                        continue
                self._attend(device, record_id, self.rng.choice, give_up=rounds >= 6)
        left = {d.index: d.replica.pending() for d in self.devices if d.replica.pending()}
        raise AssertionError(f"never quiet: {left}")

    def _check_quiet(self) -> None:
        storage = self.world.storage
        # Invariant 1: every replica holds exactly what its user may read, as stored.
        for device in self.devices:
            assert device.link is not None and device.link.client.idle
            assert device.replica.pending() == []
            expected = self._expected(device.user, device.replica.schema)
            held = self._holds(device.replica)
            assert held == expected, f"device {device.index} ({device.user}): " + "; ".join(
                f"{rid}: holds {held.get(rid)} relay {expected.get(rid)}"
                for rid in sorted(set(held) | set(expected))
                if held.get(rid) != expected.get(rid)
            )
        # No pending change silently lost.
        for (index, record_id, name), (value, since) in self.intents.items():
            stored = storage.get_record(record_id)
            assert stored is not None
            if stored.deleted or self._relay_values(stored).get(name) == value:
                continue  # e.g. an edit undone before it synced, or theirs taken
            carrier = self._carried(index, record_id, since, writes(name, value))
            held = self.held.get((index, record_id, name))
            if carrier is not None and carrier.seq is not None:
                reached = carrier.seq
            elif held is not None and held[0] == (value, since):
                reached = held[1]  # the relay held it anyway, at that version
            else:
                raise AssertionError(
                    f"device {index}: {name}={value!r} of {record_id} never reached the relay"
                )
            later = storage.changes_of(record_id, after=reached)
            assert any(name in row.fields for row in later), (
                f"device {index}: {name}={value!r} of {record_id} reached the relay at version "
                f"{reached} but the relay holds {self._relay_values(stored).get(name)!r} "
                "and no later change wrote it"
            )
        for (index, record_id, char), since in self.text_adds.items():
            carrier = self._carried(index, record_id, since, inserts(char))
            assert carrier is not None, f"device {index}: insertion {char!r} never reached"
            stored = storage.get_record(record_id)
            assert stored is not None
            if stored.deleted or char in str(self._relay_values(stored).get("Description", "")):
                continue
            assert char in self.removed_on_purpose.get(record_id, set()) and any(
                c.record_id == record_id and char in c.removed for c in self._accepted()
            ), f"device {index}: insertion {char!r} of {record_id} vanished"
        for (index, record_id, char), _since in self.text_removals.items():
            stored = storage.get_record(record_id)
            assert stored is not None
            if not stored.deleted:
                text = str(self._relay_values(stored).get("Description", ""))
                assert char not in text, f"device {index}: removal of {char!r} was undone"
        for (index, record_id), _since in self.delete_intents.items():
            stored = storage.get_record(record_id)
            assert stored is None or stored.deleted, f"device {index}: delete of {record_id} lost"
        self._no_silent_overwrites()

    def _no_silent_overwrites(self) -> None:
        """No accepted change replaced, unseen, a value another device had written."""
        storage = self.world.storage
        device_of = {d.replica.replica_id: d.index for d in self.devices}
        logs: dict[str, list[Any]] = {}
        for change in self._accepted():
            assert change.seq is not None
            logged = storage.find_change(change.change_id)
            assert logged is not None
            if change.record_id not in logs:
                logs[change.record_id] = storage.changes_of(change.record_id)
            for name, value in logged.fields.items():
                if name not in change.bases:
                    continue  # a text (merges), or a value the relay added
                earlier = [
                    row
                    for row in logs[change.record_id]
                    if row.seq < change.seq and name in row.fields
                ]
                if not earlier:
                    continue
                replaced = earlier[-1]
                if (
                    device_of.get(replaced.replica) == change.device
                    or replaced.replica == "admin"
                    or replaced.seq <= change.bases[name]
                    or replaced.fields[name] == value
                ):
                    continue
                raise AssertionError(
                    f"device {change.device}'s change {change.change_id} (version "
                    f"{change.seq}) overwrote {name}={replaced.fields[name]!r} of "
                    f"{change.record_id}, written by {replaced.user} as version {replaced.seq}, "
                    f"though its user had seen that field only at version {change.bases[name]}"
                )

    def _check_fresh_replicas(self) -> None:
        """A replica that starts from nothing gets the same records (the backlog)."""
        for user, roles in USERS.items():
            replica = self.world.replica()
            self.by_replica[id(replica)] = Device(-1, user, roles, replica)
            link = Link(
                self.world,
                replica,
                self.world.authority.issue(user, roles=roles),
                self._observe,
                self._node(),
            )
            settle(link)
            assert self._holds(replica) == self._expected(user, replica.schema), user
            link.disconnect()

    # -- invariant 2, after every step ----------------------------------------------------

    @invariant()
    def no_zombie_ops(self) -> None:
        storage = self.world.storage
        accepted = self._accepted()
        for change_id, change in self.refused.items():
            assert storage.find_change(change_id) is None, f"refused {change_id} was logged"
            stored = storage.get_record(change.record_id)
            if stored is None:
                continue
            others = [c for c in accepted if c.record_id == change.record_id]
            if change.kind is ChangeKind.DELETE:
                if stored.deleted:
                    assert change.record_id in self.admin_deleted or any(
                        c.kind is ChangeKind.DELETE for c in others
                    ), f"refused delete {change_id} took effect"
                continue
            if stored.deleted:
                continue
            values = self._relay_values(stored)
            for name, value in change.values.items():
                if values.get(name) != value or name == "Owner":
                    continue
                assert any(
                    c.values.get(name, None if c.kind is ChangeKind.CREATE else MISSING) == value
                    for c in others
                ), f"{name}={value!r} of refused {change_id} is on the relay"
            text = str(values.get("Description", ""))
            for char in change.added & set(text):
                assert any(char in c.added for c in others), (
                    f"insertion {char!r} of refused {change_id} is on the relay"
                )
            for char in change.removed - set(text):
                assert any(char in c.removed for c in others), (
                    f"removal of {char!r} of refused {change_id} took effect"
                )
        self.clean = True

    def teardown(self) -> None:
        try:
            if self.clean and self.devices:
                self._quiesce()
                self._check_quiet()
                self._check_fresh_replicas()
                self.no_zombie_ops()
                self.totals["examples"] += 1
                self.totals["steps"] += self.steps
                self.totals["changes"] += len(self.sent)
                self.totals["conflicts"] += self.conflicts
                self.totals["refused"] += len(self.refused)
        finally:
            self.world.close()
            self.ids.restore()


def run_model(model: type[ConvergenceModel], examples: int, suite: str) -> None:
    """Run ``model`` for ``examples`` (scaled) examples and report what it did."""
    run_state_machine_as_test(
        model,
        settings=settings(
            max_examples=scaled(examples),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert model.totals["examples"] > 0
    report(suite, **model.totals, **model.scenarios)


def test_replicas_converge_with_no_zombie_ops_and_no_lost_changes() -> None:
    run_model(ConvergenceModel, 200, "convergence_model")


class ClusterConvergenceModel(ConvergenceModel):
    """The same model with three relays on one PostgreSQL database (a new one for each
    example): each connection, and each administrator's action, goes to a node picked at
    random, and a node takes in what the others committed whenever its connections are
    served. Convergence, no zombie ops and no lost change must hold across nodes."""

    totals = totals()
    scenarios = scenarios()
    server: ClassVar[PostgresServer | None] = None

    def _make_world(self) -> ModelWorld:
        assert self.server is not None, "set ClusterConvergenceModel.server first"
        self.databases = contextlib.ExitStack()
        url = self.databases.enter_context(self.server.database())
        return ClusterWorld(url, self._capture, self._settled)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.databases.close()


def test_replicas_on_random_nodes_of_a_cluster_converge_with_no_zombie_ops_and_no_lost_changes(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ClusterConvergenceModel, "server", postgres)
    run_model(ClusterConvergenceModel, 40, "convergence_model_cluster")


# -- regressions found by the model ------------------------------------------------------


def test_concurrent_first_edits_of_an_unset_text_field_both_survive() -> None:
    world = World()
    try:
        alice, bob = world.replica(), world.replica()
        alice_pair, bob_pair = world.connect(alice, "alice"), world.connect(bob, "bob")
        settle(alice_pair, bob_pair)
        rid = alice.create("Account", {"Name": "Acme"})
        settle(alice_pair, bob_pair)
        bob_pair.disconnect()
        alice.update(rid, {"Description": "from alice"})
        bob.update(rid, {"Description": "from bob"})
        alice_pair.pump()
        bob_pair = world.connect(bob, "bob")
        settle(alice_pair, bob_pair)
        [change] = bob.pending() or [None]
        assert change is None, change
        stored = world.storage.get_record(rid)
        assert stored is not None
        spec = world.config.schema.objects["Account"]
        text = RecordDoc.from_update(spec, stored.state).read()["Description"]
        assert "from alice" in text or "alice" in text
        assert "bob" in text, text
        for replica in (alice, bob):
            record = replica.get(rid)
            assert record is not None and record.fields["Description"] == text
    finally:
        world.close()


class HiddenTextWorld(World):
    """The example app with ``Account.Description`` hidden from interns."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        plain = 'Description = { type = "text" }'
        toml = EXAMPLE_CONFIG.read_text().replace(plain, plain[:-2] + ', hidden = ["intern"] }')
        assert 'hidden = ["intern"] }' in toml
        path = tmp_path / "app.toml"
        path.write_text(toml)
        self.config = RelayConfig.from_toml(path, database=":memory:")
        self.relay = Relay(
            schema=self.config.schema, policy=self.config.policy, storage=self.storage
        )


def test_concurrent_first_edits_of_a_text_field_hidden_from_the_creator_both_survive(
    tmp_path: Path,
) -> None:
    world = HiddenTextWorld(tmp_path)
    try:
        ivy, alice, bob = world.replica(), world.replica(), world.replica()
        ivy_pair = world.connect(ivy, token=world.authority.issue("ivy", ["intern"]))
        alice_pair, bob_pair = world.connect(alice, "alice"), world.connect(bob, "bob")
        settle(ivy_pair, alice_pair, bob_pair)
        assert "Description" not in ivy.schema.objects["Account"].fields
        rid = ivy.create("Account", {"Name": "Created by an intern"})
        settle(ivy_pair, alice_pair, bob_pair)
        bob_pair.disconnect()
        alice.update(rid, {"Description": "from alice"})
        bob.update(rid, {"Description": "from bob"})
        alice_pair.pump()
        bob_pair = world.connect(bob, "bob")
        settle(ivy_pair, alice_pair, bob_pair)

        assert alice.pending() == bob.pending() == []
        stored = world.storage.get_record(rid)
        assert stored is not None
        spec = world.config.schema.objects["Account"]
        text = RecordDoc.from_update(spec, stored.state).read()["Description"]
        assert "alice" in text and "bob" in text, text  # neither first edit was lost
        for replica in (alice, bob):
            record = replica.get(rid)
            assert record is not None and record.fields["Description"] == text
        record = ivy.get(rid)
        assert record is not None and "Description" not in record.fields
        row = ivy.store.get_record(rid)
        assert row is not None and row.server is not None
        assert b"Description" not in row.server + row.local  # not even the hidden field's name
    finally:
        world.close()


@pytest.mark.parametrize("refusal", ["conflict", "forbidden"])
def test_dismissing_a_refused_edit_of_a_record_deleted_meanwhile_removes_it(
    refusal: str,
) -> None:
    world = World()
    try:
        alice, bob = world.replica(), world.replica()
        alice_pair, bob_pair = world.connect(alice, "alice"), world.connect(bob, "bob")
        settle(alice_pair, bob_pair)
        if refusal == "forbidden":  # a Contact is read-only for anyone but its owner
            rid = alice.create("Contact", {"LastName": "Smith", "Email": "s@ex.com"})
            settle(alice_pair, bob_pair)
            bob.update(rid, {"FirstName": "Bo"})
        else:
            rid = alice.create("Account", {"Name": "Acme"})
            settle(alice_pair, bob_pair)
            alice.update(rid, {"Industry": "Energy"})
            alice_pair.pump()
            bob.update(rid, {"Industry": "Retail"})
        bob_pair.pump()
        [change] = bob.pending()
        assert change.status is (Status.CONFLICT if refusal == "conflict" else Status.UNRESOLVABLE)
        alice.delete(rid)
        settle(alice_pair, bob_pair)
        stored = world.storage.get_record(rid)
        assert stored is not None and stored.deleted
        [change] = bob.pending()
        assert change.status is Status.UNRESOLVABLE  # the record is gone: dismiss only
        bob.dismiss(rid)
        settle(alice_pair, bob_pair)
        assert bob.get(rid) is None and bob.pending() == []
    finally:
        world.close()
