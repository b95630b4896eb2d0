"""Hostile input (bounded, clear failure): floods of frames and connections, and every kind
of hostile frame, over real websockets on loopback (fixture ``relay``) where it matters,
sans I/O (a fake clock) where timing would make a socket test flaky.

Each hostile frame gets its precise error code; the connection is closed only when the
protocol says so (docs/protocol.md §5.9); the relay keeps serving a well-behaved client;
``PRAGMA integrity_check`` is ok and the records stored before are unchanged byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pycrdt
import pytest
from crdtsync_server.config import RelayConfig
from crdtsync_server.errors import ConfigError
from crdtsync_server.limits import Admission, FrameRateLimit
from crdtsync_server.relay import Relay
from crdtsync_server.session import CLOSE_POLICY_VIOLATION, RelaySession, SessionState
from crdtsync_server.storage import RelayStorage
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from crdtsync import Status
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.protocol import (
    Ack,
    CaughtUp,
    ChangeFrame,
    Changes,
    Error,
    ErrorCode,
    Hello,
    Push,
    Rejected,
    Subscribe,
    Verdicts,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc
from tests.helpers.faults import report
from tests.helpers.harness import EXAMPLE_CONFIG, RawConnection, RelayHarness, eventually

pytestmark = pytest.mark.faults

ALL_OBJECTS = ("Account", "Contact", "Opportunity", "Task")
MALLORY_CLIENT = 6001
ALICE_CLIENT = 6002


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def create_change(record_id: str, delta: bytes, object_name: str = "Account") -> ChangeFrame:
    return ChangeFrame(
        change_id=f"create-{record_id}",
        record_id=record_id,
        object=object_name,
        kind="create",
        base_version=0,
        field_bases={},
        delta=delta,
    )


def account_delta(client_id: int, name: str) -> bytes:
    doc = RecordDoc(EXAMPLE_SCHEMA.objects["Account"], client_id=client_id)
    return doc.write({"Name": name})


EXAMPLE_SCHEMA = RelayConfig.from_toml(EXAMPLE_CONFIG, database=":memory:").schema
EXAMPLE_TOML = tomllib.loads(EXAMPLE_CONFIG.read_text())


# == the frame rate limit, sans I/O ======================================================


class SansIoRelay:
    """A relay on in-memory SQLite and sessions on a fake clock."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.config = RelayConfig.from_toml(EXAMPLE_CONFIG, database=":memory:")
        self.storage = RelayStorage(":memory:")
        self.relay = Relay(
            schema=self.config.schema, policy=self.config.policy, storage=self.storage
        )
        self.authority = self.config.token_authority()
        self.clock = FakeClock()
        self.rate, self.burst = rate, burst

    def session(self, user: str) -> RelaySession:
        session = RelaySession(
            self.relay,
            self.authority,
            max_frame_bytes=self.config.max_frame_bytes,
            max_frames_per_second=self.rate,
            frame_burst=self.burst,
            clock=self.clock,
        )
        session.receive(encode(Hello((1,), self.authority.issue(user), f"{user}-phone")))
        session.receive(encode(Subscribe(ALL_OBJECTS, 0)))
        self.drain(session)
        return session

    @staticmethod
    def drain(session: RelaySession) -> list[Any]:
        frames = [decode(data) for data in session.data_to_send()]
        while session.has_more:
            frames += [decode(data) for data in session.data_to_send()]
        return frames


def test_token_bucket_passes_a_burst_then_the_rate_and_closes_a_sustained_flood() -> None:
    clock = FakeClock()
    limit = FrameRateLimit(10.0, 5, clock)
    assert [limit.admit() for _ in range(5)] == [Admission.PASS] * 5
    assert limit.admit() is Admission.REFUSE
    clock.now += 0.1  # one frame's worth of tokens
    assert limit.admit() is Admission.PASS
    assert limit.admit() is Admission.REFUSE
    clock.now += 10  # a long pause: a full bucket, and the refusals are forgiven
    assert [limit.admit() for _ in range(5)] == [Admission.PASS] * 5
    assert [limit.admit() for _ in range(4)] == [Admission.REFUSE] * 4
    assert limit.refused == 4
    clock.now += 0.05  # not enough for a token, and no pause: the flood goes on
    assert limit.admit() is Admission.CLOSE
    assert FrameRateLimit(0, 0, clock).admit() is Admission.PASS  # rate 0: no limit
    with pytest.raises(ValueError, match="burst"):
        FrameRateLimit(5.0, 0, clock)


def test_frames_over_the_rate_are_dropped_with_a_non_fatal_error_and_the_session_recovers() -> None:
    world = SansIoRelay(rate=2.0, burst=4)
    session = world.session("mallory")  # the handshake took 2 of the 4 frames
    session.receive(encode(Subscribe((), 0)))
    session.receive(encode(Subscribe((), 0)))
    session.receive(encode(Push((create_change("r-dropped", account_delta(51, "Dropped")),))))
    frames = world.drain(session)  # the subscribes' backlogs are produced lazily
    [error] = [f for f in frames if isinstance(f, Error)]
    assert error.code is ErrorCode.RATE_LIMITED and not error.fatal
    assert "2 frames per second" in error.message and "dropped" in error.message
    assert not any(isinstance(f, Verdicts) for f in frames)  # the push was not handled
    assert world.storage.get_record("r-dropped") is None
    assert world.relay.metrics.frames_rate_limited == 1
    assert session.state is SessionState.READY and session.close_code is None

    world.clock.now += 0.5  # one token back: the same push goes through
    session.receive(encode(Push((create_change("r-dropped", account_delta(51, "Dropped")),))))
    [verdicts] = world.drain(session)
    assert isinstance(verdicts, Verdicts) and isinstance(verdicts.items[0], Ack)
    assert "crdtsync_frames_rate_limited_total 1" in world.relay.metrics.render()
    world.storage.close()


def test_a_sustained_flood_gets_a_fatal_rate_limited_and_close_1008_others_unaffected() -> None:
    world = SansIoRelay(rate=5.0, burst=10)
    flooder = world.session("mallory")
    bystander = world.session("alice")
    sent = 0
    while flooder.close_code is None:
        flooder.receive(encode(Subscribe((), 0)))
        sent += 1
        world.clock.now += 0.01  # 100 frames per second against a limit of 5
        assert sent < 100, "the flood was never ended"
    frames = world.drain(flooder)
    fatal = frames[-1]
    assert isinstance(fatal, Error) and fatal.fatal and fatal.code is ErrorCode.RATE_LIMITED
    refused = [f for f in frames if isinstance(f, Error) and not f.fatal]
    assert len(refused) == 9 and all(f.code is ErrorCode.RATE_LIMITED for f in refused)
    assert flooder.close_code == CLOSE_POLICY_VIOLATION == 1008
    assert flooder.close_reason.startswith("rate limit")
    assert flooder.state is SessionState.CLOSING
    flooder.receive(encode(Subscribe((), 0)))  # after the fatal error: ignored
    assert world.drain(flooder) == []

    bystander.receive(encode(Push((create_change("r-ok", account_delta(52, "Fine")),))))
    [verdicts] = world.drain(bystander)
    assert isinstance(verdicts, Verdicts) and isinstance(verdicts.items[0], Ack)
    assert world.storage.integrity_check() == "ok"
    world.storage.close()


def test_the_reference_client_backs_off_on_rate_limited_and_keeps_its_push(
    tmp_path: Path,
) -> None:
    store = LocalStore(":memory:")
    replica = Replica(store, EXAMPLE_SCHEMA)
    session = SyncSession(replica, "token")
    session.receive(encode(attrs.evolve(_welcome())))
    session.receive(encode(CaughtUp(0)))
    rid = replica.create("Account", {"Name": "Keep me"})
    session.push()
    assert [type(decode(d)) for d in session.data_to_send()][-1] is Push
    assert replica.get(rid).status is Status.SYNCING  # type: ignore[union-attr]

    session.receive(encode(Error(ErrorCode.RATE_LIMITED, "slow down")))

    assert session.state is SyncState.FAILED  # the transport reconnects with backoff
    session.connection_lost()
    [entry] = replica.pending()
    assert entry.record_id == rid and entry.status is Status.PENDING  # not rejected
    store.close()


def _welcome() -> Any:
    from crdtsync.core.protocol import Welcome

    return Welcome(1, "alice", "srv", EXAMPLE_SCHEMA.to_wire())


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"max_frames_per_second": -1}, "max_frames_per_second must be a non-negative number"),
        ({"max_frames_per_second": "fast"}, "max_frames_per_second must be a non-negative"),
        ({"max_frames_per_second": float("inf")}, "max_frames_per_second must be"),
        ({"frame_burst": 0}, "frame_burst must be at least 1"),
        ({"frame_burst": 1.5}, "frame_burst must be a non-negative integer"),
        ({"max_connections": -3}, "max_connections must be a non-negative integer"),
        ({"max_connections": True}, "max_connections must be a non-negative integer"),
    ],
)
def test_flood_limits_are_validated_in_the_config(server: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig.from_dict({**EXAMPLE_TOML, "server": server})


def test_flood_limits_have_generous_defaults_and_can_be_set_or_turned_off() -> None:
    default = RelayConfig.from_dict({**EXAMPLE_TOML, "server": {}})
    assert default.max_frames_per_second >= 100 and default.frame_burst >= 200
    assert default.max_connections >= 500  # benchmarks hold 200 idle connections
    config = RelayConfig.from_dict(
        {
            **EXAMPLE_TOML,
            "server": {"max_frames_per_second": 0, "frame_burst": 3, "max_connections": 0},
        }
    )
    assert (config.max_frames_per_second, config.frame_burst, config.max_connections) == (0, 3, 0)


# == floods over real websockets ==========================================================


def stored_states(relay: RelayHarness) -> dict[str, bytes]:
    storage = relay.storage
    assert storage is not None
    records = {}
    for record_id in ("acc-mallory", "acc-alice", "acc-before"):
        stored = storage.get_record(record_id)
        if stored is not None:
            records[record_id] = stored.state
    return records


async def assert_relay_healthy(relay: RelayHarness, before: dict[str, bytes], user: str) -> None:
    """A well-behaved client syncs; the database is sound; stored records are untouched."""
    client = relay.client(user)
    async with client:
        rid = client.create("Account", {"Name": f"{user} was here"})
        await client.sync(timeout=10)
        assert client.get(rid).status is Status.SYNCED  # type: ignore[union-attr]
    storage = relay.storage
    assert storage is not None
    assert storage.integrity_check() == "ok"
    after = stored_states(relay)
    assert {k: after[k] for k in before} == before


async def seed_record(relay: RelayHarness) -> dict[str, bytes]:
    """A record stored before the attack (by alice, over the sync client)."""
    async with connect(relay.url) as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("alice"), replica="alice-seed")
        await raw.send(Push((create_change("acc-before", account_delta(7777, "Before")),)))
        [verdict] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
        assert isinstance(verdict, Ack)
    return stored_states(relay)


async def test_frame_flood_is_rate_limited_then_closed_with_1008_while_others_sync(
    tmp_path: Path,
) -> None:
    relay = RelayHarness(tmp_path, max_frames_per_second=20, frame_burst=10)
    await relay.start()
    try:
        before = await seed_record(relay)
        websocket = await connect(relay.url)
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("mallory"), replica="flooder")
        flood = encode(Subscribe((), 0))
        with contextlib.suppress(ConnectionClosed):
            for _ in range(500):
                await websocket.send(flood)
        frames: list[Any] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                frames.append(await raw.receive())
        await websocket.wait_closed()
        assert websocket.close_code == 1008
        assert websocket.close_reason.startswith("rate limit")
        errors = [f for f in frames if isinstance(f, Error)]
        assert errors[-1].fatal and errors[-1].code is ErrorCode.RATE_LIMITED
        assert len(errors) >= 2 and all(e.code is ErrorCode.RATE_LIMITED for e in errors)
        assert not any(e.fatal for e in errors[:-1])  # refused before it was closed
        assert relay.server.relay is not None
        assert relay.server.relay.metrics.frames_rate_limited == len(errors)
        await assert_relay_healthy(relay, before, "bob")
    finally:
        await relay.stop()


async def test_a_short_burst_over_the_rate_is_refused_but_the_connection_carries_on(
    tmp_path: Path,
) -> None:
    relay = RelayHarness(tmp_path, max_frames_per_second=4, frame_burst=6)
    await relay.start()
    try:
        async with connect(relay.url) as websocket:
            raw = RawConnection(websocket)
            await raw.handshake(relay.token("mallory"), replica="bursty")  # 2 of 6
            for _ in range(6):
                await raw.send(Subscribe((), 0))
            answers = [await raw.receive() for _ in range(6)]
            refused = [a for a in answers if isinstance(a, Error)]
            assert refused, answers
            assert all(e.code is ErrorCode.RATE_LIMITED and not e.fatal for e in refused)
            await asyncio.sleep(0.6)  # two tokens back
            await raw.send(Push((create_change("r-later", account_delta(61, "Later")),)))
            [ack] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
            assert isinstance(ack, Ack)
    finally:
        await relay.stop()


async def http_get(relay: RelayHarness, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_connection_flood_beyond_max_connections_is_refused_with_503(
    tmp_path: Path,
) -> None:
    relay = RelayHarness(tmp_path, max_connections=4)
    await relay.start()
    try:
        before = await seed_record(relay)
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(connect(relay.url))
            await RawConnection(first).handshake(relay.token("alice"), replica="first")

            async def attempt() -> Any:
                try:
                    return await stack.enter_async_context(connect(relay.url))
                except InvalidStatus as exc:
                    return exc

            outcomes = await asyncio.gather(*(attempt() for _ in range(30)))
            refused = [o for o in outcomes if isinstance(o, InvalidStatus)]
            assert len(outcomes) - len(refused) == 3  # 4 places, one taken by ``first``
            for exc in refused:
                assert exc.response.status_code == 503
                assert exc.response.headers["Retry-After"] == "5"
                assert b"too many connections" in exc.response.body
            assert await http_get(relay, "/healthz") == (200, "ok\n")
            status, metrics = await http_get(relay, "/metrics")
            assert status == 200
            assert f"crdtsync_connections_refused_total {len(refused)}" in metrics

            # The connections already open keep working.
            raw = RawConnection(first)
            await raw.send(Push((create_change("r-first", account_delta(71, "First")),)))
            [ack] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
            assert isinstance(ack, Ack)
        # Every connection closed: places free up, and a client syncs again.
        await eventually(lambda: not relay.server._admitted)
        await assert_relay_healthy(relay, before, "bob")
        report("connection_flood", attempts=len(outcomes), refused_503=len(refused))
    finally:
        await relay.stop()


# == each hostile frame over websockets ===================================================


@attrs.frozen
class Attack:
    name: str
    build: Callable[[Hostile], bytes | str]
    code: ErrorCode | None  #: None: closed by the websocket layer, no error frame
    verdict: bool = False  #: the code comes in an error verdict, not an error frame
    close: int | None = None  #: the connection is closed with this code
    before_handshake: bool = False


class Hostile:
    """Mallory's view of the relay after the setup: her record ``acc-mallory`` (CRDT
    client 6001, bound to her replica) and alice's ``acc-alice`` (client 6002)."""

    def __init__(self, relay: RelayHarness, version: int, state: bytes) -> None:
        self.relay = relay
        self.version = version
        self.state = state

    def push(self, delta: bytes, *, kind: str = "update", record: str = "acc-mallory") -> bytes:
        change = ChangeFrame(
            change_id=f"hostile-{kind}-{record}",
            record_id=record,
            object="Account",
            kind=kind,
            base_version=self.version if kind == "update" else 0,
            field_bases={},
            delta=delta,
        )
        return encode(Push((change,)))

    def edit(self, roots: dict[str, dict[str, Any]], client: int = MALLORY_CLIENT) -> bytes:
        """An update of ``acc-mallory`` written with pycrdt directly (no validation)."""
        doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client)
        doc.apply_update(self.state)
        before = doc.get_state()
        with doc.transaction():
            for root, entries in roots.items():
                target = doc.get(root, type=pycrdt.Map)
                for key, value in entries.items():
                    target[key] = value
        return bytes(doc.get_update(before))

    def skipping_an_edit(self) -> bytes:
        doc = RecordDoc.from_update(
            EXAMPLE_SCHEMA.objects["Account"], self.state, client_id=MALLORY_CLIENT
        )
        doc.write({"Name": "never sent"})
        before = doc.state()
        doc.write({"Name": "depends on it"})
        return doc.delta(before)


def _vu(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _nested_any(depth: int) -> bytes:
    """fields["Name"] = [[[...null...]]] nested ``depth`` deep, by hand (pycrdt itself
    overflows its stack on such input)."""
    item = b"\x28" + _vu(1) + _vu(6) + b"fields" + _vu(4) + b"Name"
    content = _vu(1) + b"\x75\x01" * depth + b"\x7e"
    return _vu(1) + _vu(1) + _vu(MALLORY_CLIENT + 1) + _vu(0) + item + content + b"\x00"


def _many_structs(count: int) -> bytes:
    """``count`` one-clock GC structs of a fresh client: 2 bytes each."""
    return _vu(1) + _vu(count) + _vu(MALLORY_CLIENT + 2) + _vu(0) + b"\x00\x01" * count + b"\x00"


def _bad_push_field_type(h: Hostile) -> bytes:
    change = ChangeFrame(
        change_id="c",
        record_id="r",
        object="Account",
        kind="create",
        base_version=0,
        field_bases={},
        delta=b"",
    ).to_wire()
    change["base"] = "0"
    return bytes(msgpack.packb({"type": "push", "changes": [change]}, use_bin_type=True))


ATTACKS = [
    Attack("malformed_msgpack", lambda h: b"\xc1\xc1\xc1", ErrorCode.MALFORMED_FRAME),
    Attack("wrong_field_type", _bad_push_field_type, ErrorCode.MALFORMED_FRAME),
    Attack("text_message", lambda h: "push please", ErrorCode.MALFORMED_FRAME),
    Attack(
        "unknown_frame_type",
        lambda h: bytes(msgpack.packb({"type": "teleport"})),
        ErrorCode.UNKNOWN_FRAME_TYPE,
    ),
    Attack("relay_only_frame", lambda h: encode(CaughtUp(1)), ErrorCode.UNKNOWN_FRAME_TYPE),
    Attack(
        "second_hello",
        lambda h: encode(Hello((1,), h.relay.token("mallory"), "again")),
        ErrorCode.MALFORMED_FRAME,
    ),
    Attack(
        "unknown_object_subscribe",
        lambda h: encode(Subscribe(("Planet",), 0)),
        ErrorCode.UNKNOWN_OBJECT,
    ),
    Attack(
        "version_mismatch",
        lambda h: encode(Hello((0, 3, 99), h.relay.token("mallory"), "mallory-phone")),
        ErrorCode.UNSUPPORTED_VERSION,
        close=1002,
        before_handshake=True,
    ),
    Attack(
        "push_before_hello",
        lambda h: h.push(account_delta(MALLORY_CLIENT, "x"), kind="create", record="r-early"),
        ErrorCode.NOT_AUTHENTICATED,
        close=1002,
        before_handshake=True,
    ),
    Attack(
        "undecodable_update",
        lambda h: h.push(b"\x01\x02\x03 not a yjs update"),
        ErrorCode.INVALID_UPDATE,
        verdict=True,
    ),
    Attack(
        "other_root",
        lambda h: h.push(h.edit({"fields": {"Name": "x"}, "secrets": {"admin": True}})),
        ErrorCode.OTHER_ROOT,
        verdict=True,
    ),
    Attack(
        "unknown_field",
        lambda h: h.push(h.edit({"fields": {"Salary": 1_000_000}})),
        ErrorCode.UNKNOWN_FIELD,
        verdict=True,
    ),
    Attack(
        "read_only_field",
        lambda h: h.push(h.edit({"fields": {"Owner": "alice"}})),
        ErrorCode.READ_ONLY_FIELD,
        verdict=True,
    ),
    Attack(
        "forged_client_id",
        lambda h: h.push(h.edit({"fields": {"Name": "Alice's, really"}}, client=ALICE_CLIENT)),
        ErrorCode.FORGED_CLIENT_ID,
        verdict=True,
    ),
    Attack(
        "missing_dependencies",
        lambda h: h.push(h.skipping_an_edit()),
        ErrorCode.MISSING_DEPENDENCIES,
        verdict=True,
    ),
    Attack(
        "deeply_nested_update",
        lambda h: h.push(_nested_any(100_000), kind="create", record="r-nested"),
        ErrorCode.INVALID_UPDATE,
        verdict=True,
    ),
    Attack(
        "huge_update",  # 3 MB: 1.5 million structs, refused before any is read
        lambda h: h.push(_many_structs(1_500_000), kind="create", record="r-huge"),
        ErrorCode.INVALID_UPDATE,
        verdict=True,
    ),
    Attack(
        "oversized_frame",
        lambda h: b"\x00" * (h.relay.config.max_frame_bytes + 1),
        None,
        close=1009,
    ),
]


async def _setup(relay: RelayHarness) -> Hostile:
    """alice stores acc-alice under CRDT client 6002; mallory stores acc-mallory under
    client 6001 (binding it to her replica)."""
    for user, client, record in (
        ("alice", ALICE_CLIENT, "acc-alice"),
        ("mallory", MALLORY_CLIENT, "acc-mallory"),
    ):
        async with connect(relay.url) as websocket:
            raw = RawConnection(websocket)
            await raw.handshake(relay.token(user), replica=f"{user}-phone")
            await raw.send(Push((create_change(record, account_delta(client, user.title())),)))
            [ack] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
            assert isinstance(ack, Ack), ack
    storage = relay.storage
    assert storage is not None
    stored = storage.get_record("acc-mallory")
    assert stored is not None
    return Hostile(relay, stored.version, stored.state)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_hostile_frame_gets_its_precise_error_and_harms_nothing(
    relay: RelayHarness, attack: Attack
) -> None:
    hostile = await _setup(relay)
    before = stored_states(relay)
    websocket = await connect(relay.url, max_size=None)
    try:
        raw = RawConnection(websocket)
        if not attack.before_handshake:
            await raw.handshake(relay.token("mallory"), replica="mallory-phone")
        await raw.send(attack.build(hostile))
        if attack.code is not None:
            answer = await raw.receive(timeout=10)
            if attack.verdict:
                assert isinstance(answer, Verdicts), answer
                [verdict] = answer.items
                assert isinstance(verdict, Rejected), verdict
                assert verdict.code is attack.code, verdict
                assert verdict.message
            else:
                assert isinstance(answer, Error), answer
                assert answer.code is attack.code, answer
                assert answer.fatal is (attack.close is not None)
        if attack.close is not None:
            await websocket.wait_closed()
            assert websocket.close_code == attack.close
        else:  # the connection carries on: the next frame is handled
            await raw.send(
                Push((create_change("r-after", account_delta(MALLORY_CLIENT, "After")),))
            )
            [ack] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
            assert isinstance(ack, Ack), ack
    finally:
        if websocket.state is not State.CLOSED:
            await websocket.close()
    await assert_relay_healthy(relay, before, "bob")
    storage = relay.storage
    assert storage is not None
    for refused in ("r-early", "r-nested", "r-huge"):
        assert storage.get_record(refused) is None


def test_every_listed_attack_has_a_distinct_name() -> None:
    assert len({a.name for a in ATTACKS}) == len(ATTACKS)


async def test_many_hostile_frames_in_a_row_leave_the_relay_serving(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    """The non-fatal attacks one after another on one connection, while alice syncs."""
    hostile = await _setup(relay)
    before = stored_states(relay)
    alice = relay.client("alice")
    async with alice, raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("mallory"), replica="mallory-phone")
        sent = 0
        for attack in ATTACKS:
            if attack.close is not None or attack.before_handshake:
                continue
            await raw.send(attack.build(hostile))
            answer = await raw.receive(timeout=10)
            while isinstance(answer, Changes):  # alice's records, fanned out
                answer = await raw.receive(timeout=10)
            code = answer.items[0].code if isinstance(answer, Verdicts) else answer.code  # type: ignore[attr-defined]
            assert code is attack.code, (attack.name, answer)
            rid = alice.create("Account", {"Name": f"during {attack.name}"})
            await alice.sync(timeout=10)
            assert alice.get(rid).status is Status.SYNCED  # type: ignore[union-attr]
            sent += 1
    await assert_relay_healthy(relay, before, "bob")
    report("hostile_frames", kinds=len(ATTACKS), sent_in_a_row=sent)
