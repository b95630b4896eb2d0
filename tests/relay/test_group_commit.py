"""Group commit: the pushes of several connections handled in one turn of the event loop
are committed together (one transaction, one fsync), and nobody hears of any of them
before that commit.

The relay runs on a real SQLite file; ``defer`` is the hook the server gives it (the
event loop's ``call_soon``), here a list the test runs by hand, so "the loop comes
round" is a line of the test. A second connection to the file shows what is durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import pytest
from crdtsync_server import fanout
from crdtsync_server.config import RelayConfig
from crdtsync_server.pipeline import PushPipeline
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage

from crdtsync.core.protocol import (
    Ack,
    ChangeFrame,
    ChangeKind,
    Changes,
    ErrorCode,
    Frame,
    Rejected,
    Verdicts,
    decode,
)
from crdtsync.core.record import RecordDoc

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "server/example/app.toml"
CONFIG = RelayConfig.from_toml(EXAMPLE_CONFIG)
SPEC = CONFIG.schema.objects["Account"]


@attrs.define(eq=False)
class Listener:
    """A connection as the relay sees it, keeping what it is sent."""

    principal: Principal
    subscriptions: frozenset[str] = frozenset({"Account"})
    verdicts: list[Verdicts] = attrs.field(factory=list)
    fanout: list[bytes] = attrs.field(factory=list)
    #: what it received, in order: ("verdicts", [version...]) or ("changes", [record...])
    received: list[tuple[str, list[object]]] = attrs.field(factory=list)

    def deliver_fanout_encoded(self, data: bytes) -> None:
        self.fanout.append(data)
        frame = decode(data)
        assert isinstance(frame, Changes)
        self.received.append(("changes", [item.record_id for item in frame.items]))

    def deliver_verdicts(self, verdicts: Verdicts, followups: Sequence[Frame]) -> None:
        self.verdicts.append(verdicts)
        self.received.append(("verdicts", [verdict.record_id for verdict in verdicts.items]))


@attrs.define
class World:
    relay: Relay
    path: Path
    later: list[Callable[[], None]]
    ids: Iterator[int]

    def turn(self) -> None:
        """The event loop comes round: run what the relay deferred."""
        callbacks, self.later[:] = list(self.later), []
        for callback in callbacks:
            callback()

    def durable(self) -> list[tuple[str, str]]:
        """(change id, record id) of every committed change, seen from another connection."""
        with sqlite3.connect(self.path) as db:
            return [tuple(row) for row in db.execute("SELECT change_id, record_id FROM changes")]

    def create(self, listener: Listener, name: str) -> ChangeFrame:
        doc = RecordDoc(SPEC, client_id=next(self.ids))
        doc.write({"Name": name, "Employees": 1})
        return ChangeFrame(
            change_id=f"{listener.principal.replica_id}-{next(self.ids)}",
            record_id=f"acc-{name}",
            object="Account",
            kind=ChangeKind.CREATE,
            base_version=0,
            field_bases={},
            delta=doc.full_update(),
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "relay.sqlite3"
    later: list[Callable[[], None]] = []
    storage = RelayStorage(str(path))
    relay = Relay(schema=CONFIG.schema, policy=CONFIG.policy, storage=storage, defer=later.append)
    yield World(relay, path, later, iter(range(1_000, 1_000_000)))
    storage.close()


def listener(relay: Relay, user: str) -> Listener:
    connection = Listener(Principal(user, f"replica-{user}"))
    relay.attach(connection)
    return connection


def test_pushes_in_one_turn_are_committed_together_and_answered_only_then(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = world.relay
    alice, bob, carol = (listener(relay, user) for user in ("alice", "bob", "carol"))
    commits: list[int] = []
    commit = RelayStorage.commit

    def counted(self: RelayStorage) -> None:
        commits.append(1)
        commit(self)

    monkeypatch.setattr(RelayStorage, "commit", counted)
    first, second = world.create(alice, "one"), world.create(bob, "two")
    assert relay.push(alice, [first]) is None
    assert relay.push(bob, [second]) is None

    # Before the loop comes round: nothing durable, nobody answered, nothing fanned out.
    assert world.durable() == []
    assert alice.verdicts == bob.verdicts == [] and carol.fanout == []

    world.turn()
    assert len(commits) == 1  # one transaction for both pushes
    assert sorted(world.durable()) == sorted(
        [(first.change_id, first.record_id), (second.change_id, second.record_id)]
    )
    ((mine,),) = [v.items for v in alice.verdicts]
    ((theirs,),) = [v.items for v in bob.verdicts]
    assert isinstance(mine, Ack) and isinstance(theirs, Ack)
    assert mine.version < theirs.version  # in push order
    # each push fanned out once it was durable, in push order (together: one frame)
    assert carol.received == [("changes", [first.record_id, second.record_id])]


def test_a_group_reaches_each_listener_in_push_order_around_its_own_verdicts(
    world: World,
) -> None:
    """Every listener gets every other push of the group once, in push order, before or
    after its own verdicts as the pushes came; what lies between two of its own answers
    comes as one frame."""
    relay = world.relay
    alice, bob, carol, dave = (listener(relay, u) for u in ("alice", "bob", "carol", "dave"))
    pushers = ((alice, "one"), (bob, "two"), (carol, "three"))
    one, two, three = (world.create(who, name) for who, name in pushers)
    for (who, _name), change in zip(pushers, (one, two, three), strict=True):
        assert relay.push(who, [change]) is None
    world.turn()
    a, b, c = one.record_id, two.record_id, three.record_id
    assert dave.received == [("changes", [a, b, c])]
    assert alice.received == [("verdicts", [a]), ("changes", [b, c])]
    assert bob.received == [("changes", [a]), ("verdicts", [b]), ("changes", [c])]
    assert carol.received == [("changes", [a, b]), ("verdicts", [c])]


def test_a_groups_fan_out_comes_in_frames_of_bounded_size(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "MERGED_ITEMS", 2)
    relay = world.relay
    alice, dave = listener(relay, "alice"), listener(relay, "dave")
    changes = [world.create(alice, name) for name in ("one", "two", "three")]
    for change in changes:
        assert relay.push(alice, [change]) is None
    world.turn()
    a, b, c = (change.record_id for change in changes)
    assert dave.received == [("changes", [a, b]), ("changes", [c])]


def test_a_failing_frame_in_a_group_leaves_the_others_stored(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = world.relay
    alice, bob = listener(relay, "alice"), listener(relay, "bob")
    good, bad = world.create(alice, "good"), world.create(bob, "bad")
    decide_frame = PushPipeline._decide_frame

    def failing(self: PushPipeline, frame: object, *, predicting: bool) -> None:
        decide_frame(self, frame, predicting=predicting)  # type: ignore[arg-type]
        if frame.origin is bob:  # type: ignore[attr-defined]
            raise OSError("disk trouble while storing bob's frame")

    monkeypatch.setattr(PushPipeline, "_decide_frame", failing)
    relay.push(alice, [good])
    relay.push(bob, [bad])
    world.turn()

    (acked,) = alice.verdicts[0].items
    (refused,) = bob.verdicts[0].items
    assert isinstance(acked, Ack)
    assert isinstance(refused, Rejected) and refused.code is ErrorCode.INTERNAL_ERROR
    assert world.durable() == [(good.change_id, good.record_id)]
    assert relay.storage.get_record(bad.record_id) is None
    # bob's retry, once the trouble is gone, is stored
    monkeypatch.setattr(PushPipeline, "_decide_frame", decide_frame)
    relay.push(bob, [bad])
    world.turn()
    (retried,) = bob.verdicts[1].items
    assert isinstance(retried, Ack) and retried.version == acked.version + 1


def test_a_group_whose_commit_fails_stores_nothing_and_says_so_to_everyone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = world.relay
    alice, bob, carol = (listener(relay, user) for user in ("alice", "bob", "carol"))
    first, second = world.create(alice, "one"), world.create(bob, "two")
    commit = RelayStorage.commit

    def full_disk(self: RelayStorage) -> None:
        self._db.execute("SELECT 1")
        self.rollback()
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RelayStorage, "commit", full_disk)
    relay.push(alice, [first])
    relay.push(bob, [second])
    world.turn()

    for connection in (alice, bob):
        (verdict,) = connection.verdicts[0].items
        assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.INTERNAL_ERROR
    assert world.durable() == [] and carol.fanout == []
    assert relay.storage.get_record(first.record_id) is None
    assert relay.seq == 0  # no log position was handed out for good

    monkeypatch.setattr(RelayStorage, "commit", commit)
    relay.push(alice, [first])
    world.turn()
    (acked,) = alice.verdicts[1].items
    assert isinstance(acked, Ack) and acked.version == 1
    assert world.durable() == [(first.change_id, first.record_id)]


def test_reading_the_store_outside_a_push_settles_the_group_first(world: World) -> None:
    """A subscriber's backlog, the log position a flush reports, an admin action: each
    sees only what is durable, so the open group is committed and answered first."""
    relay = world.relay
    alice, bob = listener(relay, "alice"), listener(relay, "bob")
    change = world.create(alice, "seen")
    relay.push(alice, [change])
    assert alice.verdicts == []

    backlog = list(relay.backlog(bob.principal, ["Account"], 0))
    assert world.durable() == [(change.change_id, change.record_id)]
    assert len(alice.verdicts) == 1  # answered before bob was told
    assert any(change.record_id in repr(frame) for frame in backlog)

    another = world.create(alice, "flushed")
    relay.push(alice, [another])
    assert relay.seq == 2 and len(world.durable()) == 2 and len(alice.verdicts) == 2


def test_a_listener_that_fails_does_not_keep_the_rest_of_the_group_from_its_answers(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    relay = world.relay

    @attrs.define(eq=False)
    class Broken(Listener):
        def deliver_verdicts(self, verdicts: Verdicts, followups: Sequence[Frame]) -> None:
            raise RuntimeError("alice's connection is in a bad way")

    alice = Broken(Principal("alice", "replica-alice"))
    relay.attach(alice)
    bob = listener(relay, "bob")
    relay.push(alice, [world.create(alice, "one")])
    relay.push(bob, [world.create(bob, "two")])
    world.turn()
    (answer,) = bob.verdicts[0].items
    assert isinstance(answer, Ack)
    assert len(world.durable()) == 2  # alice's change is stored: her retry is acked
    assert "answering a push of 1 changes failed" in caplog.text
