"""Network faults between real clients and a real relay, injected by a TCP proxy.

Connections are cut at random points (between frames and inside them), delayed,
black-holed and replayed late from a stranded connection, while several replicas edit;
afterwards nothing is lost, nothing is applied twice and every replica converges to the
relay (convergence, exactly once, nothing stored damaged). A replica that stops reading is
closed with 1013 while the relay keeps serving everyone else, with bounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, closing
from pathlib import Path
from typing import Any

import attrs
import pytest
from crdtsync_server.database import is_postgres_url
from crdtsync_server.session import RelaySession
from crdtsync_server.storage import read_records
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crdtsync import Client, Schema, Status
from crdtsync.core.protocol import Ack, ChangeFrame, Changes, Error, ErrorCode, Push, Verdicts
from crdtsync.core.record import RecordDoc
from tests.helpers.faults import report, scaled
from tests.helpers.harness import (
    EXAMPLE_CONFIG,
    RawConnection,
    RelayHarness,
    eventually,
    open_relay_database,
)
from tests.helpers.tcp_proxy import Direction, ProxyCounts, TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

# -- helpers ---------------------------------------------------------------------------


def client_via(relay: RelayHarness, proxy: TcpProxy, user: str, store: str) -> Client:
    """A real client of ``relay`` whose every connection goes through ``proxy``."""
    return Client(
        proxy.url,
        token=relay.token(user),
        store=str(relay.tmp_path / f"{store}.sqlite3"),
        schema=EXAMPLE_CONFIG,
        backoff_initial=0.02,
        backoff_max=0.2,
    )


def integrity(database: str | Path) -> str:
    """SQLite's check of a file; a PostgreSQL database (which checks its own pages) is
    "ok" once the log is readable."""
    with closing(open_relay_database(database)) as db:
        if is_postgres_url(str(database)):
            db.execute("SELECT count(*) FROM changes").fetchone()
            return "ok"
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


@attrs.frozen
class RelayContents:
    """What the relay's database file holds, read directly (not through the relay)."""

    live: Mapping[str, Mapping[str, Any]]  #: record id -> field values
    deleted: frozenset[str]  #: tombstones
    changes: int  #: rows in the change log
    change_id_rows: Mapping[str, int]  #: change id -> rows logged under it

    @classmethod
    def read(cls, path: str | Path, schema: Schema) -> RelayContents:
        live: dict[str, Mapping[str, Any]] = {}
        deleted: set[str] = set()
        with closing(open_relay_database(path)) as db:
            for record_id, record in read_records(db).items():
                if record.deleted:
                    deleted.add(record_id)
                else:
                    spec = schema.object(record.object)
                    live[record_id] = RecordDoc.from_update(spec, record.state).read()
            [changes] = db.execute("SELECT COUNT(*) FROM changes").fetchone()
            change_id_rows = dict(
                db.execute(
                    "SELECT change_id, COUNT(*) FROM changes WHERE change_id IS NOT NULL "
                    "GROUP BY change_id"
                ).fetchall()
            )
        return cls(live, frozenset(deleted), changes, change_id_rows)


def replica_view(client: Client) -> dict[str, Mapping[str, Any]]:
    return {record.id: dict(record.fields) for record in client.records()}


def total(counts: list[ProxyCounts], name: str) -> int:
    return sum(getattr(c, name) for c in counts)


@asynccontextmanager
async def proxies_for(relay: RelayHarness, count: int) -> AsyncIterator[list[TcpProxy]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(TcpProxy(relay.port)) for _ in range(count)]


# -- several replicas edit through random cuts, truncations, delays and black holes ---


@attrs.define
class Editor:
    """One replica's edits: its own Tasks (created, edited, some deleted) and its own
    field of every shared Account, so replicas never edit the same field."""

    name: str
    client: Client
    field: str
    rng: random.Random
    expected: dict[str, dict[str, Any]] = attrs.field(factory=dict)  #: what it last wrote
    tasks: list[str] = attrs.field(factory=list)  #: its own Tasks, not yet deleted
    deleted: set[str] = attrs.field(factory=set)  #: its own Tasks it deleted
    edits: int = 0

    def value(self, n: int) -> object:
        if self.field == "Employees":
            return n
        if self.field == "Website":
            return f"https://{self.name}.example/{n}"
        if self.field == "Name":
            return f"{self.name} account, revision {n}"
        return f"{self.name} wrote revision {n}. " * self.rng.randint(1, 4)

    def edit(self, shared: list[str], n: int) -> None:
        own = self.tasks
        choice = self.rng.random()
        if choice < 0.5:
            rid = self.rng.choice(shared)
            value = self.value(n)
            self.client.update(rid, {self.field: value})
            self.expected.setdefault(rid, {})[self.field] = value
        elif choice < 0.7 or not own:
            values = {"Subject": f"{self.name} task {n}", "Status": "Open"}
            rid = self.client.create("Task", values)
            self.expected[rid] = dict(values)
            self.tasks.append(rid)
        elif choice < 0.92:
            rid = self.rng.choice(own)
            values = {
                "Status": self.rng.choice(["Open", "In Progress", "Done"]),
                "Notes": f"{self.name} note {n}",
            }
            self.client.update(rid, values)
            self.expected[rid].update(values)
        else:
            rid = self.rng.choice(own)
            self.client.delete(rid)
            del self.expected[rid]
            self.tasks.remove(rid)
            self.deleted.add(rid)
        self.edits += 1

    async def run(self, shared: list[str], until: asyncio.Event) -> None:
        """Edit every few milliseconds until ``until`` is set (the faults are over)."""
        n = 0
        while not until.is_set():
            self.edit(shared, n)
            n += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.03))


async def inject_faults(
    proxies: list[TcpProxy], rng: random.Random, count: int, done: asyncio.Event
) -> None:
    """``count`` faults, each on one randomly chosen replica's proxy; then set ``done``."""
    for _ in range(count):
        await asyncio.sleep(rng.uniform(0.01, 0.06))
        proxy = rng.choice(proxies)
        direction = rng.choice(list(Direction))
        fault = rng.choice(["cut", "truncate", "truncate", "delay", "black_hole"])
        if fault == "cut":
            proxy.cut_all()
        elif fault == "truncate":  # usually inside a frame: see ProxyCounts.truncations
            proxy.cut_after(rng.randrange(0, 3000), direction)
        elif fault == "delay":
            proxy.delay(rng.uniform(0.002, 0.03))
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            proxy.delay(0.0)
        else:  # the path dies silently, until the proxy gives up on it
            proxy.black_hole(direction)
            await asyncio.sleep(rng.uniform(0.02, 0.15))
            proxy.cut_all()
            proxy.pass_through()
    done.set()


async def test_replicas_converge_without_loss_or_duplicates_through_random_cuts(
    relay: RelayHarness,
) -> None:
    rng = random.Random(20_240_611)
    names = [
        ("alice", "alice-phone"),
        ("alice", "alice-laptop"),
        ("bob", "bob"),
        ("carol", "carol"),
    ]
    fields = ["Employees", "Name", "Website", "Description"]
    async with asyncio.timeout(30 + scaled(10)), proxies_for(relay, len(names)) as proxies:
        clients = [
            client_via(relay, proxy, user, store)
            for proxy, (user, store) in zip(proxies, names, strict=True)
        ]
        editors = [
            Editor(store, client, field, random.Random(rng.random()))
            for client, (_, store), field in zip(clients, names, fields, strict=True)
        ]
        async with AsyncExitStack() as running:
            for client in clients:
                await running.enter_async_context(client)
            shared = [clients[0].create("Account", {"Name": f"Shared {i}"}) for i in range(4)]
            await clients[0].sync(timeout=10)
            for client in clients[1:]:
                await client.sync(timeout=10)
                assert set(shared) <= set(replica_view(client))

            faults_done = asyncio.Event()
            async with asyncio.TaskGroup() as chaos:
                for editor in editors:
                    chaos.create_task(editor.run(shared, until=faults_done))
                chaos.create_task(inject_faults(proxies, rng, scaled(40), faults_done))

            for proxy in proxies:
                proxy.pass_through()
            relay_holds = await converge(relay, clients)

        counts = [proxy.counts for proxy in proxies]
        assert total(counts, "cuts") >= scaled(10)
        assert total(counts, "truncations") >= 1

        # Exactly once: no change id in the relay's log twice.
        assert [cid for cid, n in relay_holds.change_id_rows.items() if n > 1] == []
        # Nothing lost: the last value each replica wrote to each field is the relay's,
        # and what it deleted is deleted (or, created and deleted offline, never sent).
        checked = 0
        for editor in editors:
            for rid, values in editor.expected.items():
                stored = relay_holds.live[rid]
                assert {field: stored.get(field) for field in values} == values, rid
                checked += 1
            for rid in editor.deleted:
                assert rid not in relay_holds.live, rid
                checked += 1
        # Nothing damaged.
        assert integrity(relay.config.database) == "ok"
        for _, store in names:
            assert integrity(relay.tmp_path / f"{store}.sqlite3") == "ok"

    report(
        "network_faults",
        replicas=len(clients),
        edits=sum(e.edits for e in editors),
        connections=total(counts, "connections"),
        cuts=total(counts, "cuts"),
        truncations=total(counts, "truncations"),
        changes_checked=relay_holds.changes,
        records_checked=checked,
    )


async def converge(relay: RelayHarness, clients: list[Client]) -> RelayContents:
    """Sync every replica until none has anything pending and all hold exactly the
    relay's live records; return what the relay's database then holds."""
    schema = relay.config.schema

    async def settled() -> RelayContents | None:
        for client in clients:
            await client.sync(timeout=10)
        contents = RelayContents.read(relay.config.database, schema)
        if any(client.pending() for client in clients):
            return None
        if any(replica_view(client) != contents.live for client in clients):
            return None
        return contents

    for _ in range(20):
        contents = await settled()
        if contents is not None:
            return contents
        await asyncio.sleep(0.05)
    stuck = {c.replica_id: [p.status for p in c.pending()] for c in clients}
    live = RelayContents.read(relay.config.database, schema).live
    diverged = {
        c.replica_id: [
            rid
            for rid in set(live) | set(replica_view(c))
            if replica_view(c).get(rid) != live.get(rid)
        ]
        for c in clients
    }
    raise AssertionError(f"no convergence: pending {stuck}, diverged {diverged}")


# -- a push whose verdict is lost, or that arrives late from a dead connection ----------


def change_rows(relay: RelayHarness, change_id: str) -> int:
    """How many rows the relay's change log holds under ``change_id``."""
    with closing(open_relay_database(relay.config.database)) as db:
        [count] = db.execute("SELECT COUNT(*) FROM changes WHERE change_id = ?", (change_id,))
    return int(count[0])


def value_of(client: Client, record_id: str, field: str) -> Any:
    record = client.get(record_id)
    assert record is not None, record_id
    return record.fields.get(field)


def stored_version(relay: RelayHarness, record_id: str) -> int:
    with closing(open_relay_database(relay.config.database)) as db:
        record = read_records(db, [record_id]).get(record_id)
    return record.version if record is not None else 0


async def test_push_whose_verdict_was_lost_is_applied_once_after_reconnect(
    relay: RelayHarness,
) -> None:
    async with asyncio.timeout(20), TcpProxy(relay.port) as proxy:
        client = client_via(relay, proxy, "alice", "alice")
        async with client:
            existing = client.create("Account", {"Name": "Before"})
            await client.sync(timeout=10)

            proxy.black_hole(Direction.DOWNSTREAM)  # the relay's answers vanish
            created = client.create("Account", {"Name": "Sent once"})
            client.update(existing, {"Employees": 7})
            sent = {change.record_id: change.change_id for change in client.pending()}
            await eventually(lambda: all(change_rows(relay, cid) == 1 for cid in sent.values()))
            assert {change.status for change in client.pending()} == {Status.SYNCING}
            assert proxy.counts.dropped > 0

            assert proxy.cut_all() == 1
            proxy.pass_through()
            await client.sync(timeout=10)  # reconnects and sends both again, same ids

            assert proxy.counts.connections == 2
            assert client.pending() == []
            for record_id, change_id in sent.items():
                assert change_rows(relay, change_id) == 1
                record = client.get(record_id)
                assert record is not None and record.status is Status.SYNCED
                assert record.version == stored_version(relay, record_id)
            assert value_of(client, created, "Name") == "Sent once"
            assert value_of(client, existing, "Employees") == 7
            assert client.replica.cursor == max(stored_version(relay, r) for r in sent)


@pytest.mark.parametrize(
    "stale_arrives",
    ["after_the_retransmission", "before_the_retransmission"],
)
async def test_push_from_a_stranded_connection_is_applied_once_whenever_it_arrives(
    relay: RelayHarness, stale_arrives: str
) -> None:
    """TCP never reorders bytes within a connection, but across connections it can: the
    client's old connection dies on its side while the relay's side is still open with
    the push in flight, so the same change reaches the relay twice, in either order."""
    async with asyncio.timeout(20), TcpProxy(relay.port) as proxy:
        client = client_via(relay, proxy, "alice", "alice")
        watcher = client_via(relay, proxy, "bob", "bob")
        async with client, watcher:
            existing = client.create("Account", {"Name": "Before"})
            await client.sync(timeout=10)
            await watcher.sync(timeout=10)

            proxy.hold_upstream()
            created = client.create("Account", {"Name": "Twice in flight"})
            client.update(existing, {"Employees": 42})
            sent = {change.record_id: change.change_id for change in client.pending()}
            await eventually(lambda: {c.status for c in client.pending()} == {Status.SYNCING})
            await eventually(lambda: proxy.held_bytes > 0)
            assert proxy.strand() == 2  # the client's link and the watcher's

            if stale_arrives == "before_the_retransmission":
                proxy.black_hole(Direction.UPSTREAM)  # new links get nowhere for now
                assert await proxy.deliver_stranded() > 0
                await eventually(lambda: all(change_rows(relay, c) == 1 for c in sent.values()))
                proxy.cut_all()
                proxy.pass_through()
                await client.sync(timeout=10)
            else:
                await client.sync(timeout=10)
                assert all(change_rows(relay, c) == 1 for c in sent.values())
                answered = proxy.counts.dropped
                assert await proxy.deliver_stranded() > 0
                # The relay answers the stale push on the stranded link (and drops nothing).
                await eventually(lambda: proxy.counts.dropped > answered)
                proxy.cut_all()
            await watcher.sync(timeout=10)

            assert proxy.counts.delivered_late > 0
            assert client.pending() == []
            for record_id, change_id in sent.items():
                assert change_rows(relay, change_id) == 1
                version = stored_version(relay, record_id)
                for replica in (client, watcher):
                    record = replica.get(record_id)
                    assert record is not None and record.status is Status.SYNCED
                    assert record.version == version
            for replica in (client, watcher):
                assert value_of(replica, created, "Name") == "Twice in flight"
                assert value_of(replica, existing, "Employees") == 42


# -- a replica that stops reading ---------------------------------------------------------


async def open_unread_socket(port: int) -> socket.socket:
    """A connected socket with a small receive buffer, so a reader that stops reading
    pushes back on the relay after little data."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def session_of(relay: RelayHarness, user: str) -> RelaySession:
    """The relay's session for ``user``'s only connection."""
    assert relay.server.relay is not None
    [session] = [
        s
        for s in relay.server.inspect(list, relay.server.relay.sessions)
        if s.principal is not None and s.principal.user == user
    ]
    return session


async def read_until_closed(connection: RawConnection) -> list[object]:
    frames: list[object] = []
    try:
        while True:
            frames.append(await connection.receive(timeout=5))
    except ConnectionClosed:
        return frames


async def test_a_replica_that_stops_reading_is_closed_with_1013_and_the_relay_keeps_serving(
    tmp_path: Path,
) -> None:
    bound = 64 * 1024
    relay = RelayHarness(tmp_path, max_queued_bytes=bound)
    await relay.start()
    try:
        async with asyncio.timeout(30):
            await slow_reader_is_shed(relay, bound)
    finally:
        await relay.stop()


async def slow_reader_is_shed(relay: RelayHarness, bound: int) -> None:
    sock = await open_unread_socket(relay.port)
    # max_queue=1: the websockets client stops reading the socket after one unread frame.
    async with connect(relay.url, sock=sock, max_size=None, max_queue=1) as websocket:
        slow = RawConnection(websocket)
        await slow.handshake(relay.token("slowpoke"))
        session = session_of(relay, "slowpoke")

        pusher = relay.client("alice")
        bystander = relay.client("bob")
        async with pusher, bystander:
            created: list[str] = []
            most_queued = 0

            async def push_batch() -> None:
                nonlocal most_queued
                for _ in range(20):  # one fan-out frame of about 40 kB, under the bound
                    values = {"Name": f"Big {len(created)}", "Description": "x" * 2_000}
                    created.append(pusher.create("Account", values))
                await pusher.sync(timeout=10)
                # What the relay holds for the slow reader (its outbox; the kernel's and
                # the websockets library's buffers aside), once the push was fanned out.
                most_queued = max(most_queued, session._queued_bytes)

            while session.close_code is None:
                await push_batch()
                assert len(created) < 2_000, "the slow reader was never closed"
            shed_after = len(created)
            for _ in range(10):  # the relay keeps serving, and stops queueing for it
                await push_batch()
            assert most_queued <= bound
            assert pusher.pending() == []
            await bystander.sync(timeout=10)
            assert {r.id for r in bystander.records("Account")} == set(created)

        # The slow reader reads again: what was queued, then the reason, then 1013.
        frames = await read_until_closed(slow)
    assert websocket.close_code == 1013
    assert relay.server.relay is not None
    sessions = relay.server.relay.sessions
    await eventually(lambda: session not in sessions)  # the relay forgot it
    *fanned_out, error = frames
    assert isinstance(error, Error) and error.fatal and error.code is ErrorCode.TOO_SLOW
    assert all(isinstance(frame, Changes) for frame in fanned_out)
    received = {item.record_id for f in fanned_out if isinstance(f, Changes) for item in f.items}
    assert received and received <= set(created[:shed_after])  # none made after the close
    report(
        "network_faults_slow_reader",
        max_queued_bytes=bound,
        most_queued_bytes=most_queued,
        changes_pushed=len(created),
        changes_before_close=shed_after,
        changes_received_by_slow_reader=len(received),
    )


async def test_a_replica_whose_send_stays_blocked_is_disconnected_after_the_send_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that stops reading while what the relay queues for it stays under the
    bound: once a send to it has been blocked for the send timeout, the relay drops the
    connection (and forgets the session), and keeps serving the others."""
    relay = RelayHarness(tmp_path)
    await relay.start()
    relay.server.send_timeout = 1.0
    try:
        async with asyncio.timeout(30), slowpoke_and_pusher(relay) as (unread, pusher, session):
            assert relay.server.relay is not None
            sessions = relay.server.relay.sessions
            shrink_send_buffer(relay, unread.local_address[1])
            for start in range(0, 40, 10):  # ~1 MB of fan-out: more than sockets take
                batch = [big_account_create(relay, start + i, 25_000) for i in range(10)]
                await pusher.send(Push(tuple(batch)))
                await pusher.receive_until(Verdicts)
            assert session in sessions and session.close_code is None  # not too slow
            await eventually(lambda: session not in sessions, timeout=10)
            await pusher.send(Push((big_account_create(relay, 80, 10),)))
            *_, verdicts = await pusher.receive_until(Verdicts)  # the relay keeps serving
            assert isinstance(verdicts, Verdicts)
            assert [type(v) for v in verdicts.items] == [Ack]
            unread.transport.abort()  # the relay reset it: no closing handshake to wait for
    finally:
        await relay.stop()
    assert "closing a replica that stopped reading for 1 s" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@asynccontextmanager
async def slowpoke_and_pusher(
    relay: RelayHarness,
) -> AsyncIterator[tuple[ClientConnection, RawConnection, RelaySession]]:
    """Two raw connections: ``slowpoke`` on a socket it will not read (its websocket and
    its relay session are given too) and ``alice``'s, to push with."""
    sock = await open_unread_socket(relay.port)
    async with (
        connect(relay.url, sock=sock, max_size=None, max_queue=1) as unread,
        connect(relay.url, max_size=None) as writer,
    ):
        slow, pusher = RawConnection(unread), RawConnection(writer)
        await slow.handshake(relay.token("slowpoke"))
        await pusher.handshake(relay.token("alice"), replica="pusher")
        yield unread, pusher, session_of(relay, "slowpoke")


def shrink_send_buffer(relay: RelayHarness, client_port: int) -> None:
    """The relay's socket to the client at ``client_port`` given a small send buffer (as
    :func:`open_unread_socket` gives the client a small receive buffer), so a reader that
    stops reading blocks the relay's sends after little data."""
    [server_side] = [
        connection.transport.get_extra_info("socket")
        for connection in relay.server._admitted
        if connection.remote_address[1] == client_port
    ]
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def big_account_create(relay: RelayHarness, n: int, text_bytes: int) -> ChangeFrame:
    doc = RecordDoc(relay.config.schema.object("Account"), client_id=777_000)
    doc.write({"Name": f"Big {n}", "Description": "x" * text_bytes})
    return ChangeFrame(
        change_id=f"big-{n}",
        record_id=f"r-big-{n}",
        object="Account",
        kind="create",
        base_version=0,
        field_bases={},
        delta=doc.full_update(),
    )


async def test_a_reader_shed_while_a_send_blocks_still_gets_too_slow_before_1013(
    tmp_path: Path,
) -> None:
    """Regression: the relay's writer, blocked sending to a reader that stopped reading,
    found the session closed as too slow when the send returned and closed with 1013 at
    once, dropping the frames queued meanwhile, the ``too_slow`` error among them."""
    relay = RelayHarness(tmp_path, max_queued_bytes=64 * 1024)
    await relay.start()
    try:
        async with asyncio.timeout(20), slowpoke_and_pusher(relay) as (unread, pusher, session):
            slow = RawConnection(unread)
            pushed = 0
            while session.close_code is None:  # fan-out frames of about 60 kB each
                batch = [big_account_create(relay, pushed + i, 6_000) for i in range(10)]
                await pusher.send(Push(tuple(batch)))
                await pusher.receive_until(Verdicts)
                pushed += len(batch)
                assert pushed < 5_000, "the unread connection was never shed"
            frames = await read_until_closed(slow)
            assert unread.close_code == 1013
            assert isinstance(frames[-1], Error) and frames[-1].code is ErrorCode.TOO_SLOW
    finally:
        await relay.stop()
