"""Clients editing under load while something disrupts the relays (kill -9, SIGSTOP, a
PostgreSQL restart, a compaction), and the checks that nothing was lost or doubled:
shared by the fault suites."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import attrs
import pycrdt
from crdtsync_server.merge import decode_state_vector
from crdtsync_server.storage import read_records

from crdtsync import Client
from crdtsync.core.yupdate import parse_update
from tests.helpers.faults import scaled
from tests.helpers.harness import eventually, open_relay_database

#: one field per writer, so concurrent edits of a shared record never conflict
WRITER_FIELDS = ("Employees", "Rating", "Revenue", "Website")


def value_for(field: str, n: int) -> object:
    if field == "Website":
        return f"https://example.com/{n}"
    if field == "Revenue":
        return Decimal(f"{n}.50")
    if field == "Rating":
        return ("Hot", "Warm", "Cold")[n % 3]
    return n


def relay_rows(database: Path | str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """The rows of ``sql`` (``?`` placeholders) on a relay database: a SQLite file or a
    PostgreSQL URL, read directly (not through a relay)."""
    db = open_relay_database(database)
    try:
        return [tuple(row) for row in db.execute(sql, args)]
    finally:
        db.close()


def assert_integrity(path: Path) -> None:
    [(result,)] = relay_rows(path, "PRAGMA integrity_check")
    assert result == "ok", f"{path.name}: {result}"


def assert_each_operation_logged_once(database: Path | str) -> int:
    """No change id twice, and no CRDT operation in two logged changes of a record (a
    change applied twice under two ids would repeat its operations). Returns the count."""
    rows = relay_rows(database, "SELECT record_id, change_id, update_ FROM changes ORDER BY seq")
    ids = [change_id for _rid, change_id, _u in rows]
    assert len(ids) == len(set(ids))
    seen: dict[tuple[object, int], list[tuple[int, int, object]]] = {}
    for record_id, change_id, update in rows:
        if not update:
            continue
        for struct in parse_update(bytes(update)).structs:  # type: ignore[arg-type]
            if struct.kind == "skip":
                continue
            end = struct.clock + struct.length
            earlier = seen.setdefault((record_id, struct.client), [])
            for start, stop, other in earlier:
                assert stop <= struct.clock or start >= end, (
                    f"{record_id}: client {struct.client} clocks {struct.clock}..{end} "
                    f"logged by both {other} and {change_id}"
                )
            earlier.append((struct.clock, end, change_id))
    return len(rows)


def state_vector(update: bytes | None) -> dict[int, int]:
    return decode_state_vector(pycrdt.get_state(update)) if update else {}


def assert_acknowledged_versions_are_stored(clients: list[Client], database: Path | str) -> int:
    """Every record version a client holds as the relay's is in the relay's database,
    with every CRDT operation of it. Returns how many were checked."""
    with closing(open_relay_database(database)) as db:
        stored = {rid: (r.version, r.state) for rid, r in read_records(db).items()}
    logged = {
        (str(rid), int(seq))  # type: ignore[call-overload]
        for rid, seq in relay_rows(database, "SELECT record_id, seq FROM changes")
    }
    checked = 0
    for client in clients:
        for row in client.replica.store.list_records():
            if row.version == 0:
                continue  # never acknowledged
            assert row.id in stored, f"{row.id} was acknowledged but is not stored"
            version, state = stored[row.id]
            assert version >= row.version and (row.id, row.version) in logged
            relay_clock = state_vector(state)
            for client_id, clock in state_vector(row.server).items():
                assert relay_clock.get(client_id, 0) >= clock, f"{row.id}: acked ops lost"
            checked += 1
    return checked


def differences(clients: list[Client], truth: dict[str, dict[str, object]]) -> list[str]:
    """Where a client's records differ from ``truth`` (with the versions it holds)."""
    out = []
    for i, client in enumerate(clients):
        held = fields_of(client)
        for rid in sorted(set(held) | set(truth)):
            if held.get(rid) != truth.get(rid):
                record = client.get(rid)
                out.append(
                    f"client {i} holds {rid} at version {record and record.version}: "
                    f"{held.get(rid)} instead of {truth.get(rid)}"
                )
    return out


def fields_of(client: Client) -> dict[str, dict[str, object]]:
    return {record.id: dict(record.fields) for record in client.records("Account")}


@attrs.frozen
class DisruptedRun:
    """What :func:`edit_while_disrupting` counted."""

    edits: int
    disruptions: int
    logged: int  #: changes in the relay's log at the end
    checked: int  #: acknowledged versions found stored, over every check


async def edit_while_disrupting(
    clients: list[Client],
    database: Path | str,
    disrupt: Callable[[Callable[[], None]], Awaitable[None]],
    rng: random.Random,
    rounds: int | None = None,
) -> DisruptedRun:
    """Four writers (one field each) edit their own records and three shared ones while
    ``disrupt`` disrupts the relays (kills one, say, calls the check it is given while
    the relay is down: every version a client holds as acknowledged is in ``database``,
    and starts it again), ``rounds`` times (default :func:`scaled` (4)). Then: nothing
    is pending, every client holds the same values, every last edit is there, no
    operation was logged twice."""
    expected: dict[tuple[str, str], object] = {}
    edits = disruptions = checked = 0
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        own = {i: [c.create("Account", {"Name": f"Own {i}.{k}"}) for k in range(3)]
               for i, c in enumerate(clients)}  # fmt: skip
        shared = [clients[0].create("Account", {"Name": f"Shared {k}"}) for k in range(3)]
        for client in clients:
            await client.sync(timeout=20)
        total = 3 * len(clients) + 3
        await eventually(lambda: all(len(c.records("Account")) == total for c in clients), 20)
        stop = asyncio.Event()

        async def write(i: int, client: Client) -> None:
            nonlocal edits
            field = WRITER_FIELDS[i]
            while not stop.is_set():
                rid = rng.choice(own[i] + shared)
                value = value_for(field, edits)
                client.update(rid, {field: value})
                expected[rid, field] = value
                edits += 1
                await asyncio.sleep(rng.uniform(0.0, 0.01))

        def check() -> None:
            nonlocal checked
            checked += assert_acknowledged_versions_are_stored(clients, database)

        async with asyncio.TaskGroup() as group:
            for i, client in enumerate(clients):
                group.create_task(write(i, client))
            for _ in range(scaled(4) if rounds is None else rounds):
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                await disrupt(check)
                disruptions += 1
            await asyncio.sleep(0.3)
            stop.set()

        for _ in range(2):  # the second round brings what others pushed meanwhile
            for client in clients:
                await client.sync(timeout=30)
        await eventually(lambda: all(c.pending() == [] for c in clients), 20)
        truth = fields_of(clients[0])
        await eventually(lambda: not differences(clients, truth), 20, differences, clients, truth)
        for (rid, field), value in expected.items():
            assert truth[rid][field] == value, f"{rid}.{field}: last edit lost"
        logged = assert_each_operation_logged_once(database)
        check()
    return DisruptedRun(edits=edits, disruptions=disruptions, logged=logged, checked=checked)
