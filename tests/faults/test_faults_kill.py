"""``kill -9`` under load (convergence, durability, exactly once).

* The relay is killed again and again while several clients keep editing; each time,
  before it restarts, every version a client holds as acknowledged is in the relay's
  database. Afterwards every client's pending change has been applied exactly once,
  every last edit is on the relay, and every replica holds the relay's values.
* A client process is killed again and again mid-push and mid-apply of a stream of
  remote changes; reopening its store loses no edit it made and duplicates nothing.

Both check ``PRAGMA integrity_check`` of every database after every kill. Counts scale
with ``CRDTSYNC_FAULT_SCALE`` (see ``tests/helpers/faults.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crdtsync import Client, Schema
from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from tests.helpers.faults import report, scaled
from tests.helpers.harness import EXAMPLE_CONFIG, ROOT, eventually
from tests.helpers.relay_process import SECRET, ServeProcess, free_port
from tests.helpers.under_load import (
    assert_each_operation_logged_once,
    assert_integrity,
    edit_while_disrupting,
)

pytestmark = pytest.mark.faults

USERS = ("alice", "bob", "carol", "alice")  # alice twice: two devices


async def test_acknowledged_changes_survive_repeated_kill_9_of_the_relay_under_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = ServeProcess(tmp_path / "relay.sqlite3", free_port())
    relay.start()
    rng = random.Random(2026)
    clients = [relay.client(user, tmp_path / f"c{i}.sqlite3") for i, user in enumerate(USERS)]

    async def kill_and_restart(check: Callable[[], None]) -> None:
        assert relay.process is not None
        relay.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(relay.process.wait)
        check()
        assert_integrity(relay.database)
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # clients retry meanwhile
        await asyncio.to_thread(relay.start)  # same database, same port

    try:
        run = await edit_while_disrupting(clients, relay.database, kill_and_restart, rng)
    finally:
        relay.stop()
    for path in [relay.database, *(tmp_path / f"c{i}.sqlite3" for i in range(len(USERS)))]:
        assert_integrity(path)
    assert run.disruptions == scaled(4) and run.edits > 100
    # A relay going away is retried quietly: no error (and no traceback) in the log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    report("relay_kill9", kills=run.disruptions, edits=run.edits, changes_logged=run.logged,
           acked_checked=run.checked)  # fmt: skip


async def test_acknowledged_changes_survive_repeated_kill_9_of_random_nodes_under_load(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, with three ``crdtsync serve`` nodes on one PostgreSQL database and the
    clients spread over them (each given every node's URL); a random node is killed."""
    nodes = [ServeProcess(postgres_url, free_port(), home=tmp_path) for _ in range(3)]
    for node in nodes:
        node.start()
    urls = [node.url for node in nodes]
    rng = random.Random(1717)
    clients = [
        nodes[i % 3].client(user, tmp_path / f"c{i}.sqlite3", url=urls[i % 3 :] + urls[: i % 3])
        for i, user in enumerate(USERS)
    ]

    async def kill_and_restart(check: Callable[[], None]) -> None:
        victim = rng.choice(nodes)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)
        check()  # the others keep accepting meanwhile
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # its clients move meanwhile
        await asyncio.to_thread(victim.start)  # same database, same port

    try:
        run = await edit_while_disrupting(clients, postgres_url, kill_and_restart, rng)
    finally:
        for node in nodes:
            node.stop()
    for i in range(len(USERS)):
        assert_integrity(tmp_path / f"c{i}.sqlite3")
    assert run.disruptions == scaled(4) and run.edits > 100
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    report("cluster_kill9", kills=run.disruptions, edits=run.edits, changes_logged=run.logged,
           acked_checked=run.checked)  # fmt: skip


# -- a client process killed mid-push and mid-apply -----------------------------------------

CLIENT_SCRIPT = """
import asyncio, random, sys
from crdtsync import Client, Schema
from crdtsync.client.replica import Replica

url, token, store, config, seed = sys.argv[1:6]

async def main():
    rng = random.Random(int(seed))
    async with Client(url, token=token, store=store, schema=config,
                      backoff_initial=0.05, backoff_max=0.2) as client:
        mine = [r.id for r in client.records("Account") if r.fields["Name"].startswith("Carol")]
        n = int(seed) * 100_000
        while True:
            n += 1
            if len(mine) < 6 or rng.random() < 0.1:
                print("making create", n, flush=True)
                mine.append(client.create("Account", {"Name": f"Carol {n}", "Employees": n}))
                print("made", mine[-1], n, flush=True)
            else:
                rid = rng.choice(mine)
                print("making", rid, n, flush=True)
                client.update(rid, {"Employees": n})
                print("made", rid, n, flush=True)
            await asyncio.sleep(rng.uniform(0, 0.004))

asyncio.run(main())
"""


def last_edits(lines: list[str], into: dict[str, set[int]]) -> None:
    """For each record, the values its last edit may have left: the last one made and,
    when the process died inside the next call, that one too."""
    making: tuple[str, int] | None = None
    for line in lines:
        words = line.split()
        if words[:2] == ["making", "create"]:
            making = ("create", int(words[2]))
        elif words and words[0] == "making":
            making = (words[1], int(words[2]))
        elif words and words[0] == "made":
            into[words[1]] = {int(words[2])}
            making = None
    if making is not None and making[0] != "create":
        into[making[0]] = into.get(making[0], set()) | {making[1]}


async def test_a_client_killed_mid_push_and_mid_apply_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    relay = ServeProcess(tmp_path / "relay.sqlite3", free_port())
    relay.start()
    store = tmp_path / "carol.sqlite3"
    schema = Schema.from_toml(EXAMPLE_CONFIG)
    rng = random.Random(7)
    allowed: dict[str, set[int]] = {}
    kills = 0
    try:
        async with relay.client("bob", tmp_path / "bob.sqlite3") as bob:
            bob_ids = [bob.create("Account", {"Name": f"Bob {k}"}) for k in range(5)]
            await bob.sync(timeout=20)
            stop = asyncio.Event()

            async def stream() -> None:  # remote changes for carol to apply
                n = 0
                while not stop.is_set():
                    n += 1
                    bob.update(rng.choice(bob_ids), {"Employees": n})
                    await asyncio.sleep(0.002)

            async with asyncio.TaskGroup() as group:
                group.create_task(stream())
                for attempt in range(scaled(5)):
                    lines = await run_client_until_killed(relay, store, attempt + 1, rng.random)
                    kills += 1
                    last_edits(lines, allowed)
                    assert_integrity(store)
                    local = Replica(LocalStore(str(store)), schema)
                    try:  # every edit made before the kill is in the store
                        for rid, values in allowed.items():
                            record = local.get(rid)
                            assert record is not None, f"{rid} lost"
                            assert record.fields["Employees"] in values, f"{rid}: edit lost"
                        assert local.store.integrity_check() == "ok"
                    finally:
                        local.store.close()
                stop.set()
            await bob.sync(timeout=30)

        token = relay.token("carol")
        async with Client(relay_url(relay), token=token, store=str(store), schema=EXAMPLE_CONFIG,
                          backoff_initial=0.05) as carol:  # fmt: skip
            await carol.sync(timeout=30)
            await eventually(lambda: carol.pending() == [], 20)
            mine = {r.id: r.fields for r in carol.records("Account")}
        async with relay.client("dave", tmp_path / "dave.sqlite3") as dave:
            await dave.sync(timeout=30)
            relays = {r.id: r.fields for r in dave.records("Account")}
        assert mine == relays
        for rid, values in allowed.items():
            assert relays[rid]["Employees"] in values, f"{rid}: last edit lost"
        logged = assert_each_operation_logged_once(relay.database)
    finally:
        relay.stop()
    assert_integrity(relay.database)
    assert len(allowed) >= 6
    report("client_kill9", kills=kills, records_checked=len(allowed), changes_logged=logged)


def relay_url(relay: ServeProcess) -> str:
    return f"ws://127.0.0.1:{relay.port}"


async def run_client_until_killed(
    relay: ServeProcess, store: Path, seed: int, random_: Callable[[], float]
) -> list[str]:
    """Run the client script, ``kill -9`` it after a random while, return its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT_SCRIPT,
        relay_url(relay),
        relay.token("carol"),
        str(store),
        str(EXAMPLE_CONFIG),
        str(seed),
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "CRDTSYNC_SECRET": SECRET},
    )
    assert process.stdout is not None
    first = await process.stdout.readline()  # it is running and editing
    await asyncio.sleep(0.3 + random_() * 0.7)
    process.kill()
    output = first + await process.stdout.read()
    await process.wait()
    assert process.returncode == -signal.SIGKILL
    *lines, _partial = output.decode().split("\n")  # a line cut by the kill: its call never ran
    return lines
