"""Several relays on one PostgreSQL database, as users see them: what one node accepts
reaches clients of the others, every decision is made once across nodes, versions are
never skipped, and a client may move between nodes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from crdtsync_server import app, database
from crdtsync_server.admin_client import AdminClient
from crdtsync_server.errors import StorageError
from crdtsync_server.storage import ChangeRow, RelayStorage

from crdtsync import Client, Status
from crdtsync.core.protocol import Ack, Rejected
from tests.helpers.cluster import Cluster, RelayNode
from tests.helpers.harness import EXAMPLE_CONFIG, RelayHarness, eventually
from tests.helpers.postgres import private_postgres_server
from tests.helpers.wire import change, delta_writing, push_one, raw_session


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    with Cluster(postgres_url, tmp_path) as nodes:
        yield nodes


async def test_a_change_accepted_on_one_node_reaches_clients_of_the_others(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.nodes
    alice, bob = a.client("alice"), b.client("bob")
    async with alice, bob:
        await bob.sync(timeout=10)
        rid = alice.create("Account", {"Name": "Made on node A"})
        await alice.sync(timeout=10)
        await eventually(lambda: bob.get(rid) is not None)  # live, through node B
        assert bob.get(rid).fields["Name"] == "Made on node A"  # type: ignore[union-attr]
        alice.update(rid, {"Industry": "Energy"})
        await alice.sync(timeout=10)
        await eventually(lambda: bob.get(rid).fields.get("Industry") == "Energy")  # type: ignore[union-attr]
    carol = c.client("carol")
    async with carol:  # a client that connects to a third node later: its backlog
        await carol.sync(timeout=10)
        record = carol.get(rid)
        assert record is not None and record.fields["Industry"] == "Energy"


async def test_same_field_edited_on_two_nodes_at_once_is_one_acceptance_and_one_conflict(
    cluster: Cluster,
) -> None:
    a, b, _c = cluster.nodes
    alice, bob = a.client("alice"), b.client("bob")
    async with alice, bob:
        rid = alice.create("Account", {"Name": "Acme"})
        await alice.sync(timeout=10)
        await bob.sync(timeout=10)
        alice.go_offline()
        bob.go_offline()
        alice.update(rid, {"Name": "Acme by Alice"})
        bob.update(rid, {"Name": "Acme by Bob"})
        alice.go_online()
        bob.go_online()
        await asyncio.gather(alice.sync(timeout=10), bob.sync(timeout=10))
        statuses = sorted(
            change.status.value for client in (alice, bob) for change in client.pending()
        )
        assert statuses == [Status.CONFLICT.value]  # one accepted (no longer pending)
        winner = "Acme by Bob" if alice.pending() else "Acme by Alice"
        for client in (alice, bob):
            if not client.pending():
                assert client.get(rid).fields["Name"] == winner  # type: ignore[union-attr]


async def test_different_fields_edited_on_two_nodes_merge_on_every_node(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    alice, bob, carol = a.client("alice"), b.client("bob"), c.client("carol")
    async with alice, bob, carol:
        rid = alice.create("Account", {"Name": "Acme"})
        await alice.sync(timeout=10)
        await bob.sync(timeout=10)
        for round_ in range(5):  # each node decides on what the other stored just before
            alice.update(rid, {"Employees": round_})
            bob.update(rid, {"Industry": ("Energy", "Retail")[round_ % 2]})
            await asyncio.gather(alice.sync(timeout=10), bob.sync(timeout=10))
        expected = {"Name": "Acme", "Employees": 4, "Industry": "Energy"}
        for client in (alice, bob, carol):
            await client.sync(timeout=10)
            await eventually(lambda client=client: client.get(rid) is not None)
            record = client.get(rid)
            assert record is not None and record.status is Status.SYNCED
            assert {k: record.fields.get(k) for k in expected} == expected, client


async def test_a_unique_value_claimed_on_two_nodes_at_once_has_one_winner(
    cluster: Cluster,
) -> None:
    a, b, _c = cluster.nodes
    alice, bob = a.client("alice"), b.client("bob")
    async with alice, bob:
        alice.create("Contact", {"LastName": "A", "Email": "same@example.com"})
        bob.create("Contact", {"LastName": "B", "Email": "same@example.com"})
        await asyncio.gather(alice.sync(timeout=10), bob.sync(timeout=10))
        problems = [change for client in (alice, bob) for change in client.pending()]
        assert [change.status for change in problems] == [Status.CONFLICT]
        assert "Email" in str(problems[0].problem)


async def test_a_reference_to_a_record_deleted_on_another_node_is_a_conflict(
    cluster: Cluster, postgres_url: str
) -> None:
    """Alice's node holds the Account (she made it there); bob deletes it through another
    node; a Contact alice then links to it is refused as a conflict, and when the two
    race, the link is accepted only if it came before the delete: never a live link
    accepted after its target was deleted."""
    a, b, _c = cluster.nodes
    alice, bob = a.client("alice"), b.client("bob")
    reader = RelayStorage(postgres_url)
    try:
        async with alice, bob:
            target = alice.create("Account", {"Name": "Going away"})
            await alice.sync(timeout=10)
            await bob.sync(timeout=10)
            bob.delete(target)
            await bob.sync(timeout=10)
            alice.create("Contact", {"LastName": "Linked", "Phone": "1", "Account": target})
            await alice.sync(timeout=10)
            [refused] = alice.pending()
            assert refused.status is Status.CONFLICT
            assert f"no Account with id {target}" in str(refused.problem)
            alice.dismiss(refused.record_id)

            for round_ in range(6):  # the same, at once: either order, never both
                target = alice.create("Account", {"Name": f"Raced {round_}"})
                await alice.sync(timeout=10)
                await bob.sync(timeout=10)
                alice.go_offline()
                bob.go_offline()
                link = alice.create(
                    "Contact", {"LastName": f"Link {round_}", "Phone": "1", "Account": target}
                )
                bob.delete(target)
                alice.go_online()
                bob.go_online()
                await asyncio.gather(alice.sync(timeout=10), bob.sync(timeout=10))
                [deleted] = [row for row in reader.changes_of(target) if row.kind == "delete"]
                linked = reader.changes_of(link)
                if linked:
                    assert linked[0].seq < deleted.seq  # accepted only before the delete
                else:
                    [refused] = alice.pending()
                    assert refused.record_id == link and refused.status is Status.CONFLICT
                    alice.dismiss(link)
                assert alice.pending() == bob.pending() == []
    finally:
        reader.close()


async def test_a_change_compacted_before_another_node_took_it_in_still_reaches_its_clients(
    tmp_path: Path, postgres_url: str
) -> None:
    """Node B has not looked at the log yet when a compaction drops the update of a change
    node A accepted: bob, on node B, still gets the change (the record's whole state)."""
    cluster = Cluster(postgres_url, tmp_path)
    _a, b, _c = cluster.nodes
    # node B takes in others' changes only when asked
    b.server.listen_for_commits = False
    b.server.follow_interval = 3600
    with cluster:
        a = cluster.nodes[0]
        alice, bob = a.client("alice"), b.client("bob")
        async with alice, bob:
            rid = alice.create("Account", {"Name": "Acme", "Employees": 1})
            await alice.sync(timeout=10)
            await bob.sync(timeout=10)  # bob holds it; node B has seen everything so far
            alice.update(rid, {"Employees": 250, "Industry": "Energy"})
            await alice.sync(timeout=10)
            compactor = RelayStorage(postgres_url)
            try:
                assert compactor.compact(compactor.cluster_seq()) > 0
            finally:
                compactor.close()
            await bob.sync(timeout=10)  # node B takes in alice's change now
            record = bob.get(rid)
            assert record is not None
            assert (record.fields["Employees"], record.fields["Industry"]) == (250, "Energy")
            assert record.version == alice.get(rid).version  # type: ignore[union-attr]


@contextlib.contextmanager
def _second_node_never_polls(url: str, home: Path) -> Iterator[tuple[RelayNode, RelayNode]]:
    """Two nodes; node B looks for node A's commits only when their notices wake it."""
    cluster = Cluster(url, home, size=2)
    a, b = cluster.nodes
    b.server.follow_interval = b.server.listening_follow_interval = 3600
    with cluster:
        yield a, b


async def _made_by_one_reaches_the_other(maker: Client, waiter: Client, name: str) -> str:
    """``maker`` creates a record and syncs; ``waiter``, only waiting, receives it."""
    record_id = maker.create("Account", {"Name": name})
    await maker.sync(timeout=30)  # failed attempts are retried
    await eventually(lambda: waiter.get(record_id) is not None, 30)
    return record_id


async def _creates_and_is_acknowledged(client: Client, name: str) -> None:
    record_id = client.create("Account", {"Name": name})
    await client.sync(timeout=10)
    assert client.pending() == [] and client.get(record_id) is not None


def _metric(node: RelayNode, name: str) -> float:
    """The value of an unlabelled metric on the node's ``/metrics``."""
    _status, text = _get(f"http://127.0.0.1:{node.server.port}/metrics")
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(value)


def _cut_listeners(url: str) -> int:
    """End every relay's listening session (as a broken connection would)."""
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (database.LISTENER_NAME,),
        ).fetchone()
    return int(row[0]) if row else 0


async def test_a_change_on_one_node_reaches_a_waiting_client_of_another_at_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Node B never polls here: its client bob gets alice's changes, made on node A,
    because node A's commits wake node B (also after B's listening connection was cut:
    what was committed meanwhile comes once it listens again)."""
    with _second_node_never_polls(postgres_url, tmp_path) as (a, b):
        alice, bob = a.client("alice"), b.client("bob")
        async with alice, bob:
            await bob.sync(timeout=10)
            await _made_by_one_reaches_the_other(alice, bob, "Heard at once")
            listener_a, listener_b = a.server.commit_listener, b.server.commit_listener
            assert listener_a is not None and listener_b is not None
            assert listener_a.heard == 0  # its own commits wake nobody
            assert listener_b.heard >= 1
            assert _metric(b, "crdtsync_cluster_notices_total") == listener_b.heard
            assert _metric(b, "crdtsync_cluster_listening") == 1
            assert await asyncio.to_thread(_cut_listeners, postgres_url) == 2
            await _made_by_one_reaches_the_other(alice, bob, "Committed while B was deaf")
            await eventually(lambda: listener_b.listening, 10)
            await _made_by_one_reaches_the_other(alice, bob, "Heard again")


async def test_a_listener_that_stopped_reading_is_ended_before_it_fills_the_notice_queue(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay's listening session whose relay stopped reading (here: a connection that
    never reads again) blocks writing notices to it and holds back PostgreSQL's
    notification queue; the running relays end it, the queue empties, commits go on."""
    monkeypatch.setattr(database, "NOTICE_QUEUE_LIMIT", 0.001)
    monkeypatch.setattr(app, "NOTICE_QUEUE_CHECK_INTERVAL", 0.2)
    stuck = psycopg.connect(postgres_url, autocommit=True, application_name=database.LISTENER_NAME)
    try:
        stuck.execute(f"LISTEN {database.COMMITS_CHANNEL}")  # ... and never reads again
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            for _ in range(4000):  # ~32 MB: more than the sockets between them hold
                admin.execute(
                    "SELECT pg_notify(%s, repeat('x', 7900))", (database.COMMITS_CHANNEL,)
                )
            session = "SELECT wait_event FROM pg_stat_activity WHERE pid = %s"
            pid = stuck.info.backend_pid

            def stuck_state() -> str | None:
                row = admin.execute(session, (pid,)).fetchone()
                return row[0] if row else "ended"

            def queue_usage() -> float:
                row = admin.execute("SELECT pg_notification_queue_usage()").fetchone()
                return float(row[0]) if row else 0.0

            await eventually(lambda: stuck_state() == "ClientWrite", 10)
            assert queue_usage() > 0.001
            with Cluster(postgres_url, tmp_path, size=1) as cluster:
                await eventually(lambda: stuck_state() == "ended", 10, stuck_state)
                await eventually(lambda: queue_usage() == 0.0, 10, queue_usage)
                [node] = cluster.nodes
                assert _metric(node, "crdtsync_cluster_listeners_ended_total") >= 1
                async with cluster.nodes[0].client("alice") as alice:
                    await _creates_and_is_acknowledged(alice, "Committed with its notice")
    finally:
        stuck.close()


async def test_a_waiting_client_gets_changes_from_another_node_after_postgresql_restarts(
    tmp_path: Path,
) -> None:
    """Node B never polls here: after a PostgreSQL restart its listening connection
    connects again by itself, and bob, on node B, gets what alice made on node A."""
    with (
        private_postgres_server() as server,  # one of its own: this test restarts it
        server.database() as url,
        _second_node_never_polls(url, tmp_path) as (a, b),
    ):
        alice, bob = a.client("alice"), b.client("bob")
        async with alice, bob:
            await bob.sync(timeout=10)
            await asyncio.to_thread(server.restart)
            await _made_by_one_reaches_the_other(alice, bob, "After the restart")


async def test_a_client_moving_between_nodes_keeps_its_cursor(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    alice = a.client("alice", url=[a.url, b.url])
    bob = c.client("bob")
    async with alice, bob:
        first = alice.create("Account", {"Name": "Before the move"})
        await alice.sync(timeout=10)
        cursor = alice.replica.cursor
        await a.stop_soon()  # node A goes away; alice moves to node B
        second = bob.create("Account", {"Name": "While alice moves"})
        await bob.sync(timeout=10)
        await alice.sync(timeout=10)
        assert alice.url == b.url
        assert alice.get(second) is not None and alice.get(first) is not None
        # the same cluster: she went on from her cursor, not from the start
        assert alice.replica.cursor > cursor


def test_versions_commit_in_order_across_relays(postgres_url: str) -> None:
    """A relay holding its transaction open makes another wait: versions are numbered
    and committed in one order, so a reader past version n has seen every one below."""
    first, second = RelayStorage(postgres_url), RelayStorage(postgres_url)
    reader = RelayStorage(postgres_url)
    try:
        first.begin()
        mine = first.next_seq()
        first.add_change(_row(mine, "from-first"))
        committed = threading.Event()

        def other_relay() -> None:
            with second.transaction():
                second.add_change(_row(second.next_seq(), "from-second"))
            committed.set()

        worker = threading.Thread(target=other_relay)
        worker.start()
        assert not committed.wait(0.5)  # it waits for the first relay's transaction
        assert [row.change_id for row in reader.log_between(0, 10)] == []
        first.commit()
        worker.join(timeout=10)
        assert committed.is_set()
        seen = [(row.seq, row.change_id) for row in reader.log_between(0, 10)]
        assert seen == [(1, "from-first"), (2, "from-second")]
    finally:
        for storage in (first, second, reader):
            storage.close()


def test_other_relays_hear_of_a_commit_only_once_it_is_committed(postgres_url: str) -> None:
    """A relay's commit sends one notice naming it and the version it committed
    through; a transaction rolled back sends none, and a commit that writes no version
    (nothing accepted) sends none either."""
    storage = RelayStorage(postgres_url)
    listening = psycopg.connect(postgres_url, autocommit=True)
    try:
        listening.execute(f"LISTEN {database.COMMITS_CHANNEL}")
        heard = lambda: [n.payload for n in listening.notifies(timeout=0.5)]  # noqa: E731
        storage.begin()
        storage.add_change(_row(storage.next_seq(), "rolled-back"))
        storage.rollback()
        with storage.transaction():
            storage.set_meta("unrelated", 1)
        assert heard() == []
        with storage.transaction():
            storage.add_change(_row(storage.next_seq(), "kept"))
            storage.add_change(_row(storage.next_seq(), "kept-too"))
        assert heard() == [f"{storage.node} {storage.seq}"]
        assert storage.seq == 2
    finally:
        listening.close()
        storage.close()


def _row(seq: int, change_id: str) -> ChangeRow:
    return ChangeRow(
        seq=seq,
        record_id=change_id,
        object="Account",
        change_id=change_id,
        replica="r",
        user="u",
        kind="create",
        fields={},
        update=b"",
        at=1.0,
    )


async def test_a_relay_whose_database_connection_was_cut_connects_again_by_itself(
    cluster: Cluster, postgres_url: str
) -> None:
    a, b, _c = cluster.nodes
    alice, bob = a.client("alice"), b.client("bob")
    async with alice, bob:
        before = alice.create("Account", {"Name": "Before the cut"})
        await alice.sync(timeout=10)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            cut = admin.execute(  # every relay's session, as a server restart would
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert cut is not None and cut[0] >= 3
        after = alice.create("Account", {"Name": "After the cut"})
        await alice.sync(timeout=15)  # a failed attempt is retried; nothing is lost
        assert alice.pending() == []
        await bob.sync(timeout=15)
        assert bob.get(before) is not None and bob.get(after) is not None


def test_versions_another_relay_committed_are_offered_until_they_are_taken_in(
    postgres_url: str,
) -> None:
    """A relay that fails to take in others' versions (its connection cut halfway) does
    not move past them: the next look offers them again."""
    writer, follower = RelayStorage(postgres_url), RelayStorage(postgres_url)
    offered: list[tuple[int, int]] = []

    def take_in(after: int, through: int) -> None:
        offered.append((after, through))
        if len(offered) == 1:
            raise ConnectionError("cut while reading the log")
        assert [row.change_id for row in follower.log_between(after, through)] == ["a", "b"]

    follower.on_behind = take_in
    try:
        with writer.transaction():
            writer.add_change(_row(writer.next_seq(), "a"))
            writer.add_change(_row(writer.next_seq(), "b"))
        with pytest.raises(ConnectionError):
            follower.follow()
        assert follower.seq == 0
        follower.follow()
        assert follower.seq == 2 and offered == [(0, 2), (0, 2)]
        with follower.transaction():  # a transaction that begins is caught up too
            assert follower.next_seq() == 3
    finally:
        writer.close()
        follower.close()


async def test_one_crdt_client_id_claimed_on_two_nodes_at_once_is_bound_to_one_replica(
    cluster: Cluster,
) -> None:
    a, b, _c = cluster.nodes
    shared_id = 987_654_321
    async with (
        raw_session(a.url, a.token("alice")) as (on_a, _),
        raw_session(b.url, b.token("bob")) as (on_b, _),
    ):
        verdicts = await asyncio.gather(
            push_one(on_a, change(new_id(), "Account", "create", delta_writing(
                {"Name": "Alice's"}, client_id=shared_id))),
            push_one(on_b, change(new_id(), "Account", "create", delta_writing(
                {"Name": "Bob's"}, client_id=shared_id))),
        )  # fmt: skip
    accepted = [v for v in verdicts if isinstance(v, Ack)]
    refused = [v for v in verdicts if isinstance(v, Rejected)]
    assert len(accepted) == 1 and len(refused) == 1, verdicts
    assert "client id" in refused[0].message


async def test_one_change_pushed_to_two_nodes_at_once_is_applied_once(
    cluster: Cluster, postgres_url: str
) -> None:
    a, b, _c = cluster.nodes
    replica = "alice-phone"
    pushed = change(new_id(), "Account", "create", delta_writing({"Name": "Once"}))
    async with (
        raw_session(a.url, a.token("alice"), replica=replica) as (on_a, _),
        raw_session(b.url, b.token("alice"), replica=replica) as (on_b, _),
    ):
        verdicts = await asyncio.gather(push_one(on_a, pushed), push_one(on_b, pushed))
    assert all(isinstance(v, Ack) for v in verdicts), verdicts
    assert verdicts[0].version == verdicts[1].version  # the retransmission's own version
    with psycopg.connect(postgres_url) as db:
        rows = db.execute(
            "SELECT count(*) FROM changes WHERE change_id = %s", (pushed.change_id,)
        ).fetchone()
    assert rows == (1,)


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_relay_with_another_configuration_is_refused_while_the_others_run(
    tmp_path: Path, postgres_url: str
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(EXAMPLE_CONFIG.read_text() + '\n[roles.auditor]\nAccount = ["read"]\n')
    with Cluster(postgres_url, tmp_path, size=1) as cluster:
        stranger = RelayNode(postgres_url, cluster.secret, tmp_path, config=other)
        with pytest.raises(StorageError, match="another configuration"):
            stranger.start()
        same = RelayNode(postgres_url, cluster.secret, tmp_path)
        same.start()  # the same configuration joins
        same.stop()
    # with every relay stopped, the configuration may change
    changed = RelayNode(postgres_url, cluster.secret, tmp_path, config=other)
    changed.start()
    changed.stop()


def test_a_relay_opening_the_database_does_not_wait_for_another_ones_transaction(
    postgres_url: str,
) -> None:
    """A node (re)started while the others write must not lock their tables: opening an
    existing database runs no DDL on them."""
    RelayStorage(postgres_url).close()  # the tables exist
    writer = RelayStorage(postgres_url)
    opened: list[RelayStorage] = []
    try:
        writer.begin()
        with writer.savepoint():  # rows written into the log, the transaction still open
            writer.add_change(_row(writer.next_seq(), "in-flight"))
        opener = threading.Thread(target=lambda: opened.append(RelayStorage(postgres_url)))
        opener.start()
        opener.join(timeout=3)
        assert opened, "opening the database waited for another relay's transaction"
        writer.commit()
    finally:
        if writer.in_transaction:
            writer.rollback()
        writer.close()
        for storage in opened:
            storage.close()


async def test_a_relay_waiting_for_the_database_still_answers_health_checks_and_pushes_after(
    tmp_path: Path, postgres_url: str
) -> None:
    """While another relay holds the sequence row, a push waits for it, and so does
    every decision: but the relay's event loop does not. ``/healthz`` and ``/metrics``
    answer at once, and the waiting push is acknowledged once the lock is released."""
    relay = RelayHarness(tmp_path, postgres_url)
    await relay.start()
    other = RelayStorage(postgres_url)
    try:
        alice = relay.client("alice")
        async with alice:
            await alice.sync(timeout=10)
            other.begin()  # another relay deciding: the sequence row is locked
            rid = alice.create("Account", {"Name": "Waits for the lock"})
            await eventually(lambda: alice.pending()[0].status is Status.SYNCING)
            for path in ("healthz", "metrics") * 3:
                started = asyncio.get_running_loop().time()
                status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{relay.port}/{path}")
                assert status == 200
                assert asyncio.get_running_loop().time() - started < 1.0, path
            assert alice.pending()[0].status is Status.SYNCING  # still waiting
            other.rollback()
            await alice.sync(timeout=10)
            assert alice.pending() == []
            assert relay.storage.get_record(rid) is not None
    finally:
        if other.in_transaction:
            other.rollback()
        other.close()
        await relay.stop()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status, response.read().decode()


async def test_relays_carry_on_by_themselves_after_postgresql_restarts(tmp_path: Path) -> None:
    with (
        private_postgres_server() as server,  # one of its own: this test restarts it
        server.database() as url,
        Cluster(url, tmp_path, size=2) as cluster,
    ):
        a, b = cluster.nodes
        alice, bob = a.client("alice"), b.client("bob")
        async with alice, bob:
            before = alice.create("Account", {"Name": "Before the restart"})
            await alice.sync(timeout=10)
            await asyncio.to_thread(server.restart)
            after = alice.create("Account", {"Name": "After the restart"})
            await alice.sync(timeout=30)  # failed attempts are retried; nothing is lost
            assert alice.pending() == []
            await bob.sync(timeout=30)
            assert bob.get(before) is not None and bob.get(after) is not None


async def test_a_relay_frozen_in_its_transaction_holds_the_others_up_only_for_a_bounded_time(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay stopped (SIGSTOP) in the middle of a transaction holds the sequence lock;
    the server ends its session once it has sat idle in the transaction for
    IDLE_IN_TRANSACTION_TIMEOUT (1 s here), and the other relays go on; nothing of the
    frozen transaction is kept."""
    with Cluster(postgres_url, tmp_path, size=1) as cluster:
        [node] = cluster.nodes
        monkeypatch.setattr(database, "IDLE_IN_TRANSACTION_TIMEOUT", 1)
        frozen = RelayStorage(postgres_url)  # a relay that stops right after this:
        frozen.begin()  # the sequence row locked
        frozen.add_change(_row(frozen.next_seq(), "never-committed"))
        with frozen.savepoint():
            pass  # its row is written, uncommitted
        bob = node.client("bob")
        async with bob:
            started = asyncio.get_running_loop().time()
            rid = bob.create("Account", {"Name": "Despite a frozen relay"})
            await bob.sync(timeout=15)
            assert bob.pending() == [] and bob.get(rid) is not None
            assert asyncio.get_running_loop().time() - started < 10
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            frozen.commit()  # its session was ended: nothing of it was kept
        frozen.close()
        reader = RelayStorage(postgres_url)
        try:
            assert reader.find_change("never-committed") is None
        finally:
            reader.close()


def _stop_in_the_middle_of_a_statement(url: str) -> psycopg.Connection[Any]:
    """A relay's session that took the sequence row and stopped while sending a
    statement (a pipelined query never followed by its sync): the server counts it as
    active, so its idle timeout never ends it."""
    stopped = psycopg.connect(url, autocommit=True, application_name=database.APPLICATION_NAME)
    stopped.execute("BEGIN")
    stopped.execute("SELECT value FROM meta WHERE key = 'seq' FOR UPDATE")
    stopped.execute("UPDATE meta SET value = value WHERE key = 'seq'")
    stopped.pgconn.enter_pipeline_mode()
    stopped.pgconn.send_query_params(b"SELECT 1", None)  # ... and nothing more
    stopped.pgconn.flush()
    return stopped


async def test_a_relay_stopped_in_the_middle_of_a_statement_is_ended_by_the_others(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay frozen while it sends a statement (here: a pipelined query never
    followed by its sync) counts as active, not idle: the server's idle timeout never ends
    it, and it holds the sequence row. A relay whose wait for the row runs out ends it
    (after STALLED_AFTER, 2 s here) and goes on; the stopped relay's work is rolled back."""
    monkeypatch.setattr(database, "LOCK_TIMEOUT", 1)
    monkeypatch.setattr(database, "STALLED_AFTER", 2)
    stopped: psycopg.Connection[Any] | None = None
    try:
        with Cluster(postgres_url, tmp_path, size=1) as cluster:
            bob = cluster.nodes[0].client("bob")
            async with bob:
                await bob.sync(timeout=10)
                stopped = _stop_in_the_middle_of_a_statement(postgres_url)
                started = asyncio.get_running_loop().time()
                rid = bob.create("Account", {"Name": "Past a stopped relay"})
                await bob.sync(timeout=20)
                assert bob.pending() == [] and bob.get(rid) is not None
                assert asyncio.get_running_loop().time() - started < 10
        assert stopped is not None
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            [(sessions,)] = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                (stopped.pgconn.backend_pid,),
            ).fetchall()
        assert sessions == 0  # its session was ended
    finally:
        if stopped is not None:
            stopped.close()


async def test_a_relay_started_while_a_stopped_relay_holds_the_sequence_row_starts_once_it_is_ended(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new node waits for the sequence row as a push would: once the relay stopped in
    the middle of a statement has been stopped for STALLED_AFTER (2 s here, the lock
    wait 1 s), it is ended and the new node starts and serves."""
    monkeypatch.setattr(database, "LOCK_TIMEOUT", 1)
    monkeypatch.setattr(database, "STALLED_AFTER", 2)
    RelayStorage(postgres_url).close()  # the tables
    stopped = _stop_in_the_middle_of_a_statement(postgres_url)
    try:
        cluster = Cluster(postgres_url, tmp_path, size=1)
        await asyncio.to_thread(cluster.__enter__)  # starting waits for the row
        try:
            async with cluster.nodes[0].client("alice") as alice:
                await _creates_and_is_acknowledged(alice, "Served by the new node")
        finally:
            await asyncio.to_thread(cluster.__exit__, None, None, None)
    finally:
        stopped.close()


async def test_an_administrators_action_on_one_node_reaches_clients_of_another(
    cluster: Cluster,
) -> None:
    a, b, _c = cluster.nodes
    alice, bob = a.client("alice"), b.client("bob")
    async with alice, bob:
        account = alice.create("Account", {"Name": "Acme"})
        deal = alice.create(
            "Opportunity", {"Name": "Wind farm", "Account": account, "Stage": "Proposal"}
        )
        await alice.sync(timeout=10)
        await bob.sync(timeout=10)
        assert bob.get(deal) is None and bob.get(account) is not None  # private, shared
        async with AdminClient(
            a.url, a.config.token_authority().issue("root", admin=True)
        ) as admin:
            await admin.share(deal, "bob", access="read")
            await eventually(lambda: bob.get(deal) is not None)  # the record, whole
            assert bob.get(deal).fields["Name"] == "Wind farm"  # type: ignore[union-attr]
            await admin.unshare(deal, "bob")
            await eventually(lambda: bob.get(deal) is None)  # revoked
            await admin.delete(account)
            await eventually(lambda: bob.get(account) is None)  # the tombstone
