"""The client state machine (SyncSession) against the relay's (RelaySession), with no
sockets: a Pair shuttles each side's ``data_to_send()`` into the other's ``receive()``
until both are quiet, in the style of h11's ConnectionPair. Several pairs can share one
Relay, which is how fan-out and resume are exercised."""

from __future__ import annotations

import msgpack
import pytest
from crdtsync_server.auth import TokenAuthority
from crdtsync_server.policy import Principal
from crdtsync_server.session import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    SessionState,
)

from crdtsync.client.model import FieldConflict, Status
from crdtsync.client.replica import Replica
from crdtsync.client.sync import SyncState
from crdtsync.core.protocol import (
    MAX_CHANGES_PER_FRAME,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    CaughtUp,
    ChangeFrame,
    Changes,
    Conflict,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Push,
    Subscribe,
    Verdicts,
    Welcome,
    WireConflict,
    decode,
    encode,
)
from crdtsync.core.schema import Schema
from tests.helpers.pair import ALL_OBJECTS, QUEUE_BOUND, Pair, World, settle


def online(
    world: World, user: str = "alice", *, max_queued_bytes: int = QUEUE_BOUND
) -> tuple[Replica, Pair]:
    """A fresh replica, connected and caught up."""
    replica = world.replica()
    pair = world.connect(replica, user, max_queued_bytes=max_queued_bytes)
    pair.pump()
    assert pair.client.state is SyncState.READY
    return replica, pair


# -- handshake ----------------------------------------------------------------------------


def test_handshake_reaches_ready_and_the_client_adopts_the_relay_schema(world: World) -> None:
    full = world.config.schema
    replica = world.replica(Schema({"Account": full.objects["Account"]}))  # an outdated cache
    adopted: list[Schema] = []

    def on_schema(schema: Schema) -> None:
        adopted.append(schema)
        replica.schema = schema

    pair = world.connect(replica, "alice", on_schema=on_schema)
    assert pair.client.state is SyncState.HELLO_SENT
    assert pair.server.state is SessionState.AWAITING_HELLO
    pair.pump()

    assert pair.client.state is SyncState.READY and pair.client.error is None
    assert pair.client.user == "alice"
    assert pair.client.idle
    assert pair.server.state is SessionState.READY and pair.server.close_code is None
    assert pair.server.principal == Principal("alice", replica.replica_id, ("default",))
    assert pair.server in world.relay.sessions
    assert [type(f) for f in pair.to_server] == [Hello, Subscribe]
    assert [type(f) for f in pair.to_client] == [Welcome, CaughtUp]
    hello, subscribe = pair.to_server
    assert isinstance(hello, Hello)
    assert hello.versions == SUPPORTED_VERSIONS and hello.replica_id == replica.replica_id
    welcome, caught_up = pair.to_client
    view = full.for_roles(frozenset({"default"}))  # the schema as alice's roles see it
    assert welcome == Welcome(
        PROTOCOL_VERSION,
        "alice",
        world.relay.server_id,
        view.to_wire(),
        ALL_OBJECTS,  # alice's roles may read every object
        MAX_FRAME_BYTES,  # the largest message the relay reads
        MAX_CHANGES_PER_FRAME,  # and the most changes it takes in one push
    )
    assert caught_up == CaughtUp(0)
    # The relay's schema was adopted before subscribing: every object is subscribed,
    # not just the one the replica's outdated schema knew.
    assert len(adopted) == 1
    assert adopted[0].to_wire() == view.to_wire()
    assert replica.schema is adopted[0]
    assert subscribe == Subscribe(ALL_OBJECTS, 0)
    assert pair.server.subscriptions == set(ALL_OBJECTS)


def test_unsupported_protocol_version_gets_a_fatal_error_and_close_1002(world: World) -> None:
    replica = world.replica()
    pair = world.connect(replica)
    pair.client.data_to_send()  # replace the client's hello by one from the future
    pair.server.receive(encode(Hello((3, 99), world.token("alice"), replica.replica_id)))
    pair.pump()

    [error] = pair.to_client
    assert isinstance(error, Error)
    assert error.code is ErrorCode.UNSUPPORTED_VERSION and error.fatal
    assert "[3, 99]" in error.message
    assert pair.server.close_code == CLOSE_PROTOCOL_ERROR
    assert pair.server.state is SessionState.CLOSING
    assert pair.server.principal is None
    assert pair.server not in world.relay.sessions
    assert pair.client.state is SyncState.FAILED
    assert pair.client.error == error
    # A closing session ignores anything else, even a valid hello.
    pair.server.receive(encode(Hello((1,), world.token("alice"), replica.replica_id)))
    assert pair.server.data_to_send() == []
    assert pair.server.principal is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-jwt", "not valid"),
        (TokenAuthority("another relay's secret, long enough").issue("alice"), "not signed"),
        (None, "expired"),
    ],
    ids=["garbage", "wrong-secret", "expired"],
)
def test_bad_token_is_a_fatal_auth_failed_with_close_1008(
    world: World, token: str | None, reason: str
) -> None:
    token = token or world.authority.issue("alice", ttl=-60)
    replica = world.replica()
    pair = world.connect(replica, token=token)
    pair.pump()

    [error] = pair.to_client
    assert isinstance(error, Error)
    assert error.code is ErrorCode.AUTH_FAILED and error.fatal
    assert reason in error.message
    assert pair.server.close_code == CLOSE_POLICY_VIOLATION
    assert pair.server.close_reason == error.message[:120]
    assert pair.server.principal is None
    assert pair.server.state is SessionState.CLOSING
    assert world.relay.sessions == set()
    assert pair.client.state is SyncState.FAILED
    assert pair.client.error is not None and pair.client.error.code is ErrorCode.AUTH_FAILED
    assert pair.client.user is None


@pytest.mark.parametrize(
    "frame",
    [
        Subscribe(ALL_OBJECTS, 0),
        Push(
            (
                ChangeFrame(
                    change_id="c1",
                    record_id="r1",
                    object="Account",
                    kind="create",
                    base_version=0,
                    field_bases={},
                    delta=b"\x00",
                ),
            )
        ),
    ],
    ids=["subscribe", "push"],
)
def test_a_frame_before_hello_is_fatal_not_authenticated(world: World, frame: Frame) -> None:
    session = world.session()
    session.receive(encode(frame))

    [error] = [decode(data) for data in session.data_to_send()]
    assert error == Error(ErrorCode.NOT_AUTHENTICATED, "the first frame must be hello", fatal=True)
    assert session.close_code == CLOSE_PROTOCOL_ERROR
    assert session.state is SessionState.CLOSING
    assert session.principal is None
    assert session.subscriptions == set()
    assert world.storage.seq == 0
    session.receive(encode(Hello((1,), world.token("alice"), "late-hello")))
    assert session.data_to_send() == []
    assert session.principal is None


def test_malformed_frame_after_the_handshake_gets_a_non_fatal_error_and_the_session_keeps_working(
    world: World,
) -> None:
    replica, pair = online(world)
    bad_push = {
        "type": "push",
        "changes": [
            {
                "id": "c1",
                "record": "r1",
                "object": "Account",
                "kind": "create",
                "base": 0,
                "delta": "not bytes",
            }
        ],
    }
    cases: list[tuple[bytes | str, ErrorCode, str]] = [
        (b"\xc1", ErrorCode.MALFORMED_FRAME, "not msgpack"),
        (msgpack.packb(bad_push), ErrorCode.MALFORMED_FRAME, "push.changes[0].delta: "),
        ("a text message", ErrorCode.MALFORMED_FRAME, "got text"),
        (msgpack.packb({"type": "nope"}), ErrorCode.UNKNOWN_FRAME_TYPE, "'nope'"),
        (encode(CaughtUp(3)), ErrorCode.UNKNOWN_FRAME_TYPE, "'caught_up'"),
        (
            encode(Hello((1,), world.token("alice"), replica.replica_id)),
            ErrorCode.MALFORMED_FRAME,
            "hello was already received",
        ),
        (encode(Subscribe(("Planet",), 0)), ErrorCode.UNKNOWN_OBJECT, "Planet"),
    ]
    for data, code, text in cases:
        seen = len(pair.to_client)
        pair.server.receive(data)
        pair.pump()
        [error] = pair.to_client[seen:]
        assert isinstance(error, Error), error
        assert error.code is code and not error.fatal
        assert text in error.message
        assert pair.server.state is SessionState.READY and pair.server.close_code is None
        assert pair.client.state is SyncState.READY and pair.client.error is None
    assert world.relay.metrics.frames_rejected == len(cases)
    assert world.storage.seq == 0

    rid = replica.create("Account", {"Name": "Still here"})
    pair.pump()
    [ack] = pair.verdicts()
    assert isinstance(ack, Ack) and ack.record_id == rid and ack.version == 1
    record = replica.get(rid)
    assert record is not None and record.status is Status.SYNCED and record.version == 1


# -- pushing and fan-out ------------------------------------------------------------------


def test_a_pushed_create_is_acked_and_fanned_out_to_a_second_replica(world: World) -> None:
    alice, alice_pair = online(world, "alice")
    bob, bob_pair = online(world, "bob")

    rid = alice.create("Account", {"Name": "Acme", "Employees": 10})
    settle(alice_pair, bob_pair)

    [push] = alice_pair.sent(Push)
    assert [c.record_id for c in push.changes] == [rid]
    [ack] = alice_pair.verdicts()
    assert isinstance(ack, Ack)
    assert (ack.change_id, ack.record_id, ack.version) == (push.changes[0].change_id, rid, 1)
    assert ack.update  # the relay filled in the owner
    expected = {"Name": "Acme", "Employees": 10, "Owner": "alice"}
    mine = alice.get(rid)
    assert mine is not None
    assert (mine.fields, mine.status, mine.version) == (expected, Status.SYNCED, 1)
    assert alice.pending() == [] and alice.cursor == 1

    assert alice_pair.received(Changes) == []  # the pusher gets verdicts, not its own fan-out
    [item] = bob_pair.received_items()
    assert (item.record_id, item.object, item.version, item.by) == (rid, "Account", 1, "alice")
    assert not item.deleted
    theirs = bob.get(rid)
    assert theirs is not None
    assert (theirs.fields, theirs.status, theirs.version) == (expected, Status.SYNCED, 1)
    assert bob.cursor == 1
    assert world.storage.seq == 1


def test_a_retransmitted_push_is_applied_once(world: World) -> None:
    alice, first = online(world, "alice")
    bob, watcher = online(world, "bob")
    rid = alice.create("Account", {"Name": "Acme"})

    # The relay processes the push, then the connection drops before the verdicts arrive.
    first.client.push()
    [data] = first.client.data_to_send()
    original = decode(data)
    assert isinstance(original, Push)
    first.server.receive(data)
    [lost] = [decode(d) for d in first.server.data_to_send()]
    first.disconnect()
    assert isinstance(lost, Verdicts)
    [original_ack] = lost.items
    assert isinstance(original_ack, Ack) and original_ack.version == 1
    assert world.storage.seq == 1
    pending = alice.get(rid)
    assert pending is not None and pending.status is Status.PENDING and pending.version == 0

    second = world.connect(alice, "alice")
    settle(second, watcher)

    [resent] = second.sent(Push)
    assert resent == original  # same change id, same delta, same bases
    [ack] = second.verdicts()
    assert isinstance(ack, Ack)
    assert (ack.change_id, ack.record_id, ack.version) == (
        original_ack.change_id,
        rid,
        original_ack.version,
    )
    assert world.storage.seq == 1
    assert [c.change_id for c in world.storage.changes_of(rid)] == [original_ack.change_id]
    record = alice.get(rid)
    assert record is not None
    assert (record.status, record.version) == (Status.SYNCED, original_ack.version)
    assert record.fields == {"Name": "Acme", "Owner": "alice"}
    assert alice.pending() == []
    # Other replicas saw the change exactly once.
    assert [(i.record_id, i.version) for i in watcher.received_items()] == [(rid, 1)]
    assert bob.get(rid) is not None


def test_resume_sends_only_the_records_changed_since_the_cursor(world: World) -> None:
    n, k = 6, 3
    alice, alice_pair = online(world, "alice")
    bob, bob_pair = online(world, "bob")
    rids = [alice.create("Account", {"Name": f"Account {i}"}) for i in range(n)]
    settle(alice_pair, bob_pair)
    assert len(bob_pair.received_items()) == n
    assert bob.cursor == n
    bob_pair.disconnect()

    target = rids[2]
    for employees in range(1, k + 1):  # k separate changes while bob is away
        alice.update(target, {"Employees": employees})
        alice_pair.pump()
    assert world.storage.seq == n + k
    assert len(alice_pair.verdicts()) == n + k

    back = world.connect(bob, "bob")
    back.pump()
    assert back.sent(Subscribe) == [Subscribe(ALL_OBJECTS, n)]
    [item] = back.received_items()
    assert (item.record_id, item.version, item.by) == (target, n + k, None)
    assert back.received(CaughtUp) == [CaughtUp(n + k)]
    assert bob.cursor == n + k
    record = bob.get(target)
    assert record is not None
    assert record.fields["Employees"] == k and record.version == n + k

    carol = world.replica()
    fresh = world.connect(carol, "carol")
    fresh.pump()
    assert fresh.sent(Subscribe) == [Subscribe(ALL_OBJECTS, 0)]
    items = fresh.received_items()
    assert len(items) == n
    assert {i.record_id for i in items} == set(rids)
    assert carol.cursor == n + k
    assert {r.id: r.fields for r in carol.records("Account")} == {
        r.id: r.fields for r in alice.records("Account")
    }


# -- flow control ---------------------------------------------------------------------------


def test_a_slow_consumer_is_closed_with_1013_and_too_slow(world: World) -> None:
    bound = 8 * 1024
    alice, alice_pair = online(world, "alice")
    bob, slow = online(world, "bob", max_queued_bytes=bound)

    created = 0
    while slow.server.close_code is None:  # bob never reads while alice keeps pushing
        alice.create("Account", {"Name": f"A{created}", "Description": "x" * 2000})
        alice_pair.pump()
        created += 1
        assert created < 20, "the outbox bound was never reached"

    assert created > 1  # something was queued before the bound was hit
    assert slow.server.close_code == CLOSE_TRY_AGAIN_LATER
    assert slow.server.state is SessionState.CLOSING
    assert slow.server.close_reason.startswith("too slow")
    assert slow.wakes > 0
    # The pusher is unaffected: every change was acked.
    assert world.storage.seq == created
    acks = alice_pair.verdicts()
    assert all(isinstance(v, Ack) for v in acks)
    assert [v.version for v in acks if isinstance(v, Ack)] == list(range(1, created + 1))
    assert alice_pair.server.state is SessionState.READY

    slow.pump()  # the transport flushes what was queued, then closes
    *fanned_out, error = slow.to_client[2:]  # after welcome and caught_up
    assert isinstance(error, Error)
    assert error == Error(ErrorCode.TOO_SLOW, error.message, fatal=True)
    assert all(isinstance(f, Changes) for f in fanned_out)
    assert 0 < len(fanned_out) < created
    assert sum(len(encode(f)) for f in fanned_out) <= bound
    assert slow.client.state is SyncState.FAILED
    assert slow.client.error == error
    assert slow.closed and slow.server not in world.relay.sessions
    assert len(bob.records("Account")) == len(fanned_out)

    alice.create("Account", {"Name": "after the close"})
    alice_pair.pump()
    assert slow.server.data_to_send() == []


# -- conflicts ------------------------------------------------------------------------------


def test_a_conflict_verdict_reaches_the_replica_with_base_mine_theirs_and_changed_by(
    world: World,
) -> None:
    alice, alice_pair = online(world, "alice")
    bob, bob_pair = online(world, "bob")
    rid = alice.create("Account", {"Name": "Acme", "Industry": "Technology"})
    settle(alice_pair, bob_pair)
    assert bob.get(rid) is not None

    alice.update(rid, {"Industry": "Energy"})
    bob.update(rid, {"Industry": "Retail"})
    bob_pair.pump()  # bob's edit reaches the relay first
    bob_ack = bob_pair.verdicts()[-1]
    assert isinstance(bob_ack, Ack) and (bob_ack.record_id, bob_ack.version) == (rid, 2)
    alice_pair.pump()

    verdict = alice_pair.verdicts()[-1]
    assert isinstance(verdict, Conflict)
    assert (verdict.record_id, verdict.version, verdict.errors) == (rid, 2, ())
    assert verdict.conflicts == (
        WireConflict(
            field="Industry", base="Technology", mine="Energy", theirs="Retail", changed_by="bob"
        ),
    )
    record = alice.get(rid)
    assert record is not None
    assert (record.status, record.version) == (Status.CONFLICT, 2)
    [change] = alice.pending()
    assert change.status is Status.CONFLICT
    assert change.problem is not None
    assert change.problem.conflicts == (
        FieldConflict(
            field="Industry", base="Technology", mine="Energy", theirs="Retail", changed_by="bob"
        ),
    )
    assert world.storage.seq == 2  # the refused change was not stored
    assert alice_pair.client.state is SyncState.READY and alice_pair.client.idle

    # Resolving ("keep mine") sends a new change on top of version 2; bob receives it.
    alice.resolve(rid)
    settle(alice_pair, bob_pair)
    final = alice_pair.verdicts()[-1]
    assert isinstance(final, Ack) and final.version == 3
    for replica in (alice, bob):
        synced = replica.get(rid)
        assert synced is not None
        assert (synced.status, synced.version, synced.fields["Industry"]) == (
            Status.SYNCED,
            3,
            "Energy",
        )
