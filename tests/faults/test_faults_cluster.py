"""Three ``crdtsync serve`` nodes on one PostgreSQL database, disturbed under load (the
kill -9 run is in ``test_faults_kill.py``):

* a random node frozen with ``SIGSTOP``: a client of another node still gets its change
  accepted within a bounded time (the frozen node may hold the sequence row: the others
  wait at most until PostgreSQL ends its idle transaction), and nothing is lost;
* PostgreSQL restarted: nodes and clients carry on by themselves, nothing lost;
* the log compacted (``crdtsync compact``) while the nodes serve: every replica, one
  resuming from before the compaction and a new one, ends with the database's records.

Each run ends as every run of :func:`~tests.helpers.under_load.edit_while_disrupting`:
nothing pending, every acknowledged version stored, every last edit there, no operation
logged twice, every client holding the same values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from crdtsync_server.database import IDLE_IN_TRANSACTION_TIMEOUT, LOCK_TIMEOUT, STALLED_AFTER

from crdtsync import Client
from tests.helpers.faults import report, scaled
from tests.helpers.harness import EXAMPLE_CONFIG, eventually
from tests.helpers.postgres import private_postgres_server
from tests.helpers.relay_process import SECRET, ServeProcess, free_port
from tests.helpers.under_load import edit_while_disrupting, fields_of

pytestmark = pytest.mark.faults

USERS = ("alice", "bob", "carol", "alice")  # alice twice: two devices

#: the longest a node frozen in its transaction can hold the others up: its session is
#: ended after the idle timeout (frozen between statements) or, by a node whose wait for
#: the lock ran out, once it has stalled STALLED_AFTER (frozen inside one); a push that
#: waited out the lock timeout meanwhile is retried by its client (plus backoff, the push)
FROZEN_BOUND = max(IDLE_IN_TRANSACTION_TIMEOUT, STALLED_AFTER) + LOCK_TIMEOUT + 5


@contextlib.contextmanager
def three_nodes(database: str, home: Path) -> Iterator[list[ServeProcess]]:
    nodes = [ServeProcess(database, free_port(), home=home) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def spread(nodes: list[ServeProcess], home: Path) -> list[Client]:
    """The writers, spread over the nodes, each given every node's URL (its own first)."""
    urls = [node.url for node in nodes]
    return [
        nodes[i % 3].client(user, home / f"c{i}.sqlite3", url=urls[i % 3 :] + urls[: i % 3])
        for i, user in enumerate(USERS)
    ]


@contextlib.asynccontextmanager
async def probes(nodes: list[ServeProcess], home: Path) -> AsyncIterator[list[Client]]:
    """One client of dave's on each node, and on that node only."""
    clients = [node.client("dave", home / f"probe{i}.sqlite3") for i, node in enumerate(nodes)]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
            await client.sync(timeout=20)
        yield clients


async def test_a_frozen_node_holds_the_others_up_only_for_a_bounded_time_and_loses_nothing(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(4242)
    waits: list[float] = []
    with three_nodes(postgres_url, tmp_path) as nodes:
        async with probes(nodes, tmp_path) as probe_of:

            async def freeze(check: Callable[[], None]) -> None:
                index = rng.randrange(3)
                victim = nodes[index]
                assert victim.process is not None
                victim.process.send_signal(signal.SIGSTOP)
                try:
                    probe = probe_of[(index + rng.randrange(1, 3)) % 3]  # on another node
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    rid = probe.create("Account", {"Name": f"While node {index} froze"})
                    await probe.sync(timeout=FROZEN_BOUND)
                    waits.append(loop.time() - started)
                    assert probe.pending() == [] and probe.get(rid) is not None
                    check()  # what was acknowledged anywhere is stored
                    await asyncio.sleep(rng.uniform(0.2, 1.5))  # frozen a while longer
                finally:
                    victim.process.send_signal(signal.SIGCONT)

            run = await edit_while_disrupting(
                spread(nodes, tmp_path), postgres_url, freeze, rng, rounds=scaled(3)
            )
    assert run.disruptions == scaled(3) and run.edits > 100
    assert max(waits) < FROZEN_BOUND
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    report("cluster_sigstop", freezes=run.disruptions, edits=run.edits,
           longest_wait_s=round(max(waits), 2), acked_checked=run.checked)  # fmt: skip


async def test_nodes_and_clients_carry_on_by_themselves_through_postgresql_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real restart of the server (a private one: the machine's is shared) while the
    nodes serve writers: what was in flight fails and is retried, nothing is lost."""
    rng = random.Random(5151)
    with (
        private_postgres_server() as server,
        server.database() as url,
        three_nodes(url, tmp_path) as nodes,
    ):

        async def restart(check: Callable[[], None]) -> None:
            await asyncio.to_thread(server.restart)
            check()

        run = await edit_while_disrupting(
            spread(nodes, tmp_path), url, restart, rng, rounds=scaled(2)
        )
        for node in nodes:
            assert node.process is not None and node.process.poll() is None  # alive
    assert run.disruptions == scaled(2) and run.edits > 100
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    report("cluster_postgresql_restart", restarts=run.disruptions, edits=run.edits,
           acked_checked=run.checked)  # fmt: skip


def compact(database: str) -> dict[str, int]:
    """``crdtsync compact`` of everything logged so far, as an operator runs it."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "crdtsync", "compact", "--config", str(EXAMPLE_CONFIG)),
            *("--db", database, "--through", str(10**9)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CRDTSYNC_SECRET": SECRET},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


async def test_compaction_while_the_nodes_serve_keeps_every_replicas_records(
    tmp_path: Path, postgres_url: str
) -> None:
    rng = random.Random(6363)
    dropped: list[int] = []
    with three_nodes(postgres_url, tmp_path) as nodes:
        away = nodes[2].client("bob", tmp_path / "away.sqlite3")
        async with away:  # a device that synced once, then stays away while others write
            await away.sync(timeout=20)
            away.go_offline()

        async def compaction(check: Callable[[], None]) -> None:
            result = await asyncio.to_thread(compact, postgres_url)
            assert result["compacted_through"] <= result["latest_version"]
            dropped.append(result["updates_dropped"])
            check()

        run = await edit_while_disrupting(
            spread(nodes, tmp_path), postgres_url, compaction, rng, rounds=scaled(3)
        )
        assert sum(dropped) > 0
        back = nodes[0].client("bob", tmp_path / "away.sqlite3")  # resumes past compaction
        fresh = nodes[1].client("bob", tmp_path / "fresh.sqlite3")
        writer = nodes[2].client("alice", tmp_path / "c0.sqlite3")  # one of the writers
        async with back, fresh, writer:
            for client in (back, fresh, writer):
                await client.sync(timeout=30)
            truth = fields_of(writer)
            assert truth and fields_of(back) == truth and fields_of(fresh) == truth
            versions = {r.id: r.version for r in writer.records("Account")}
            await eventually(
                lambda: all(
                    {r.id: r.version for r in c.records("Account")} == versions
                    for c in (back, fresh)
                )
            )
    report("cluster_compaction", compactions=run.disruptions, edits=run.edits,
           updates_dropped=sum(dropped))  # fmt: skip
