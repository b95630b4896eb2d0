"""Throughput: single-field record changes absorbed per second, all on the same updates.

Every workload replays the load of :mod:`benchmarks.loads` (``clients`` x ``records``
x ``edits`` single-field edits, generated once before any clock starts), and times
only the edits (records are created first, untimed):

``limit``        ``pycrdt.Doc.apply_update`` of each edit in-process, one Doc per record:
                 the physical limit of merging these updates in Python.
``peer``         pycrdt-websocket in a subprocess, one room per record, no validation and
                 no persistence; each client streams its updates as Yjs sync update
                 messages on one websocket per room, then a sync step 1 / step 2 round
                 trip on each proves the room applied them all.
``relay``        ``crdtsync serve`` in a subprocess on a fresh SQLite file (WAL,
                 ``synchronous=FULL``): each client on one websocket pushes its edits in
                 frames of ``batch`` with ``window`` frames in flight; a change counts when
                 its ack (validated, permission- and conflict-checked, durable) is back.
``relay_no_fanout`` the same, with clients subscribed to nothing: verdicts, no fan-out.
``relay_distinct`` the same number of edits per client, but every push frame edits
                 ``batch`` distinct records once each (as a real client sends: a record
                 has one pending change), and the ``window`` frames in flight share none.
``relay_pg``, ``relay_distinct_pg`` ``relay`` and ``relay_distinct`` with the relay on a
                 fresh PostgreSQL database (``--postgres-url``: the server to create it on)
                 instead of a SQLite file; ``relay_pg3``, ``relay_distinct_pg3`` the same
                 with three relays on the database, the clients spread over them (CPU
                 and stage figures summed over the three).
``relay_shared`` the same, with the records shared: up to 7 clients edit each record,
                 each client its own field (no conflicts expected; the count is reported).
``merge_core``   :meth:`Relay.push` in-process on ``:memory:`` SQLite (no network, no
                 fsync), plus ``merge.decide`` alone to separate deciding from storing.
``rejections``   the relay workload with 10 % invalid and 10 % conflicting changes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pycrdt
from crdtsync_server.auth import TokenAuthority
from crdtsync_server.config import RelayConfig
from crdtsync_server.merge import Accepted, RecordState, decide, decode_state_vector
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage

from crdtsync.core.protocol import Ack, ChangeFrame, Conflict, Verdict

from .clients import RelayConnection, RoomConnection, Tally
from .common import (
    Clock,
    Figures,
    ServerProcess,
    Size,
    Timed,
    Workload,
    free_port,
    py_spy,
    python_module,
    rate,
    relay_metrics,
    stage_figures,
)
from .loads import (
    CONFIG,
    OBJECT,
    SHARED_FIELDS,
    Change,
    ClientLoad,
    Load,
    own_records,
    schema,
    shared_records,
)
from .loads import with_rejections as rejection_load

SIZES = (
    Size("clients", 20, 20, "concurrent clients (replicas), each on its own websocket"),
    Size("records", 10, 5, "records per client"),
    Size("edits", 50, 20, "single-field edits per record"),
    Size("batch", 50, 50, "changes per push frame (relay, merge_core)"),
    Size("window", 4, 4, "push frames in flight per relay connection"),
)

LOCALHOST = "127.0.0.1"


def _load(options: Any) -> Load:
    return own_records(options.clients, options.records, options.edits)


# -- limit --------------------------------------------------------------------------------


def run_limit(options: Any) -> Figures:
    """``pycrdt.Doc.apply_update`` of every edit in-process (one Doc per record, created
    first): what merging these updates costs with nothing else around it."""
    load = _load(options)
    docs: dict[str, pycrdt.Doc[Any]] = {}
    for create in load.creates():
        docs[create.record] = pycrdt.Doc()
        docs[create.record].apply_update(create.delta)
    updates = [(docs[change.record], change.delta) for change in _round_robin(load)]
    started = time.perf_counter()
    for doc, update in updates:
        doc.apply_update(update)
    elapsed = time.perf_counter() - started
    _check_limit(docs, options.edits)
    return {
        "changes_per_s": rate(len(updates), elapsed),
        "us_per_change": 1e6 * elapsed / len(updates),
        "changes": len(updates),
    }


def _round_robin(load: Load) -> Iterator[Change]:
    """Every client's timed changes, interleaved one by one."""
    longest = max(len(client.timed) for client in load.clients)
    for i in range(longest):
        for client in load.clients:
            if i < len(client.timed):
                yield client.timed[i]


def _check_limit(docs: dict[str, pycrdt.Doc[Any]], edits: int) -> None:
    for record, doc in docs.items():
        value = doc.get("fields", type=pycrdt.Map).get("Employees")
        if value != edits:
            raise AssertionError(f"{record}: Employees is {value!r} after the updates, not {edits}")


# -- peer: pycrdt-websocket ---------------------------------------------------------------


def run_peer(options: Any) -> Figures:
    """pycrdt-websocket relaying the same updates: changes/s = updates / wall time from
    the first send to the last room's sync step 2."""
    load = _load(options)
    port = free_port()
    argv = python_module("benchmarks.peer_server", "--port", str(port))
    with ServerProcess(argv, port=port) as server:
        return asyncio.run(_drive_peer(f"ws://{LOCALHOST}:{port}", load, server.pid))


async def _drive_peer(url: str, load: Load, pid: int) -> Figures:
    records = [record for client in load.clients for record in client.records]
    rooms: dict[str, RoomConnection] = {}
    async with AsyncExitStack() as stack:

        async def open_room(record: str) -> None:
            rooms[record] = await RoomConnection.open(f"{url}/{record}")
            stack.push_async_callback(rooms[record].close)

        await asyncio.gather(*(open_room(record) for record in records))
        for create in load.creates():
            await rooms[create.record].send(pycrdt.create_update_message(create.delta))
        await asyncio.gather(*(rooms[c.record].sync(_step1(c.delta)) for c in load.creates()))
        plans = [_peer_plan(client, rooms) for client in load.clients]
        with Clock(pid) as timed:
            await asyncio.gather(*(_peer_client(*plan) for plan in plans))
        missing = await _peer_missing(url, load)
        echoes = sum(room.echoes for room in rooms.values())
    changes = load.timed_changes
    return {
        "changes_per_s": rate(changes, timed.seconds),
        "changes": changes,
        **timed.figures(changes),
        "rooms": len(rooms),
        "echoes_received": echoes,
        "rooms_missing_updates": missing,
    }


PeerPlan = tuple[list[tuple[RoomConnection, bytes]], list[tuple[RoomConnection, bytes]]]


def _peer_plan(client: ClientLoad, rooms: dict[str, RoomConnection]) -> PeerPlan:
    """A client's pre-encoded update messages, and the sync step 1 of each of its rooms."""
    sends = [(rooms[c.record], pycrdt.create_update_message(c.delta)) for c in client.timed]
    syncs = [(rooms[record], _step1(state)) for record, state in client.states.items()]
    return sends, syncs


async def _peer_client(
    sends: list[tuple[RoomConnection, bytes]], syncs: list[tuple[RoomConnection, bytes]]
) -> None:
    for room, message in sends:
        await room.send(message)
    await asyncio.gather(*(room.sync(step1) for room, step1 in syncs))


def _step1(update: bytes) -> bytes:
    """A Yjs sync step 1 from a replica whose document holds ``update``."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(update)
    return pycrdt.create_sync_message(doc)


def _state_vector(update: bytes) -> dict[int, int]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(update)
    return decode_state_vector(doc.get_state())


async def _peer_missing(url: str, load: Load) -> int:
    """Rooms whose state vector (read on a fresh connection) lacks a client's updates."""
    missing = 0
    for client in load.clients:
        for record, state in client.states.items():
            probe = await RoomConnection.open(f"{url}/{record}")
            try:
                server = decode_state_vector(await probe.greeted())
            finally:
                await probe.close()
            wanted = _state_vector(state)[client.client_id]
            missing += server.get(client.client_id, 0) < wanted
    return missing


# -- relay: crdtsync serve ----------------------------------------------------------------


@dataclass
class RelayRun:
    tally: Tally
    timed: Timed
    merge_us: float  #: the relay's own time per change in Relay.push (from /metrics)
    stages: Figures  #: the relay's µs per change in each push stage (from /metrics)


def run_relay(options: Any) -> Figures:
    """Own records, durable relay: acknowledged changes / wall time."""
    run = _relay_run(options, _load(options), "relay")
    return _relay_figures(run, run.tally.acks)


def run_relay_distinct(options: Any) -> Figures:
    """As ``relay``, but each push frame edits ``batch`` distinct records once each."""
    load, records, edits = distinct_load(options)
    run = _relay_run(options, load, "relay_distinct")
    return {
        **_relay_figures(run, run.tally.acks),
        "records_per_client": records,
        "edits_per_record": edits,
        "changes": load.timed_changes,
    }


def distinct_load(options: Any) -> tuple[Load, int, int]:
    """The own-records load reshaped so that no push frame touches a record twice: each
    client's ``records`` x ``edits`` changes (rounded up to whole frames of ``batch``)
    as F frames over ``batch`` x N records, each record edited F / N times, where N is
    the smallest divisor of F that is at least ``window`` (or F): edit-major order makes
    each frame ``batch`` distinct records, and N frames in a row (all those in flight at
    once) share none. Returns the load, records per client and edits per record."""
    frames = -(-(options.records * options.edits) // options.batch)
    spread = min(options.window, frames)
    rounds = next(n for n in range(spread, frames + 1) if frames % n == 0)
    records = options.batch * rounds
    edits = frames // rounds
    load = own_records(options.clients, records, edits)
    span = options.batch * spread  # the changes of the frames in flight at once
    for client in load.clients:
        for start in range(0, len(client.timed), options.batch):
            window = client.timed[start : start + span]
            if len({change.record for change in window}) != len(window):
                raise AssertionError(f"relay_distinct: frames from {start} share a record")
    return load, records, edits


def run_relay_pg(options: Any) -> Figures:
    """As ``relay``, on a PostgreSQL database."""
    return _postgres_run(options, _load(options), "relay_pg")


def run_relay_pg3(options: Any) -> Figures:
    """As ``relay_pg``, on three relays on one database, the clients spread over them."""
    return _postgres_run(options, _load(options), "relay_pg3", nodes=3)


def run_relay_distinct_pg(options: Any) -> Figures:
    """As ``relay_distinct``, on a PostgreSQL database."""
    return _postgres_run(options, distinct_load(options)[0], "relay_distinct_pg")


def run_relay_distinct_pg3(options: Any) -> Figures:
    """As ``relay_distinct_pg``, on three relays on one database."""
    return _postgres_run(options, distinct_load(options)[0], "relay_distinct_pg3", nodes=3)


def _postgres_run(options: Any, load: Load, name: str, nodes: int = 1) -> Figures:
    """The relay figures of ``load`` on ``nodes`` relays on a new PostgreSQL database (a
    note instead, when no server answers at ``--postgres-url``)."""
    with postgres_database(options.postgres_url) as database:
        if database is None:
            return {"note": f"no PostgreSQL server at {options.postgres_url}"}
        run = _relay_run(options, load, name, database=database, nodes=nodes)
    return _relay_figures(run, run.tally.acks)


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str | None]:
    """A new database on the PostgreSQL ``server`` (a URL to connect to for creating
    it) for the block, dropped afterwards; ``None`` if the server does not answer."""
    import psycopg

    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    name = f"crdtsync_bench_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            parts = urlsplit(server)
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_relay_no_fanout(options: Any) -> Figures:
    """As ``relay``, but the clients subscribe to nothing: no fan-out, only verdicts."""
    quiet = argparse.Namespace(**{**vars(options), "subscribe": []})
    run = _relay_run(quiet, _load(options), "relay_no_fanout")
    return _relay_figures(run, run.tally.acks)


def run_relay_shared(options: Any) -> Figures:
    """All clients on a few shared records, each client its own field."""
    load = shared_records(options.clients, options.records, options.edits)
    run = _relay_run(options, load, "relay_shared")
    shared = sum(1 for _create in load.creates())
    return {**_relay_figures(run, run.tally.acks), "shared_records": shared}


def _relay_figures(run: RelayRun, changes: int) -> Figures:
    tally = run.tally
    return {
        "changes_per_s": rate(changes, run.timed.seconds),
        "acked": tally.acks,
        "refused": tally.refused,
        "conflicts": tally.conflicts,
        **run.timed.figures(tally.verdicts),
        "server_merge_us_per_change": run.merge_us,
        **run.stages,
        "fanout_items_received": tally.fanout_items,
        "first_refusal": tally.problem or "-",
    }


def _relay_run(
    options: Any, load: Load, name: str, database: str | None = None, nodes: int = 1
) -> RelayRun:
    """The load pushed to ``nodes`` ``crdtsync serve`` processes on ``database`` (default:
    a new SQLite file, which takes one), the clients spread over them."""
    secret = secrets.token_hex(32)
    ports = [free_port() for _ in range(nodes)]
    profile = _profile_path(options, name)
    with (
        tempfile.TemporaryDirectory(prefix="crdtsync-bench-", dir=options.db_dir) as tmp,
        contextlib.ExitStack() as stack,
    ):
        pids = []
        for port in ports:
            argv = python_module(
                "crdtsync", "serve", "--config", str(CONFIG), "--db",
                database or str(Path(tmp) / "relay.sqlite3"), "--host", LOCALHOST,
                "--port", str(port),
            )  # fmt: skip
            server = ServerProcess(argv, port=port, env={"CRDTSYNC_SECRET": secret})
            pids.append(stack.enter_context(server).pid)
        driver = RelayDriver(ports, pids, TokenAuthority(secret), options)
        return asyncio.run(driver.run(load, profile))


def _profile_path(options: Any, name: str) -> Path | None:
    if options.profile is None or getattr(options, "repetition", 0) != 0:
        return None
    return Path(options.profile) / f"{name}.txt"


class RelayDriver:
    """Connects a load's clients to running relays (spread over them), creates their
    records, then times their pushes."""

    def __init__(
        self, ports: Sequence[int], pids: Sequence[int], authority: TokenAuthority, options: Any
    ) -> None:
        self.ports = list(ports)
        self.pids = list(pids)
        self.authority = authority
        self.batch = options.batch
        self.window = options.window
        subscribe = options.subscribe
        self.objects = list(schema().objects) if subscribe is None else list(subscribe)

    async def run(self, load: Load, profile: Path | None) -> RelayRun:
        async with AsyncExitStack() as stack:

            async def open_client(client: ClientLoad, index: int) -> RelayConnection:
                connection = await self._open(client, self.ports[index % len(self.ports)])
                stack.push_async_callback(connection.close)
                return connection

            connections = await asyncio.gather(
                *(open_client(c, i) for i, c in enumerate(load.clients))
            )
            by_replica = {c.replica: c for c in connections}
            await self._setup(load, connections)
            before = await asyncio.to_thread(self._metrics)
            with py_spy(self.pids[0], profile), Clock(*self.pids) as timed:
                await asyncio.gather(
                    *(
                        self._push(client, connection, by_replica)
                        for client, connection in zip(load.clients, connections, strict=True)
                    )
                )
            after = await asyncio.to_thread(self._metrics)
        tally = Tally()
        for connection in connections:
            tally.merge(connection.tally)
        return RelayRun(tally, timed, merge_us(before, after), stage_figures(before, after))

    def _metrics(self) -> dict[str, float]:
        """Every relay's ``/metrics`` samples, summed over the relays."""
        summed: dict[str, float] = collections.Counter()
        for port in self.ports:
            summed.update(relay_metrics(port))
        return dict(summed)

    async def _open(self, client: ClientLoad, port: int) -> RelayConnection:
        token = self.authority.issue(client.user)
        return await RelayConnection.open(
            f"ws://{LOCALHOST}:{port}", token=token, replica=client.replica, objects=self.objects
        )

    async def _setup(self, load: Load, connections: Sequence[RelayConnection]) -> None:
        """Create the records (untimed), until every client knows each record it edits."""
        pairs = list(zip(load.clients, connections, strict=True))
        await asyncio.gather(*(self._push_changes(conn, client.setup) for client, conn in pairs))
        await asyncio.gather(
            *(conn.until(functools.partial(_knows, conn, client.records)) for client, conn in pairs)
        )
        for connection in connections:
            if connection.tally.refused:
                raise RuntimeError(f"creating the records failed: {connection.tally.problem}")
            connection.reset_tally()

    async def _push(
        self,
        client: ClientLoad,
        connection: RelayConnection,
        by_replica: dict[str, RelayConnection],
    ) -> None:
        if client.gate is not None:
            gate = by_replica[client.gate]
            await gate.until(functools.partial(_edited, gate, client.records))
        await self._push_changes(connection, client.timed)

    async def _push_changes(self, connection: RelayConnection, changes: Sequence[Change]) -> None:
        await connection.push_all(changes, batch=self.batch, window=self.window)


def _knows(connection: RelayConnection, records: Sequence[str]) -> bool:
    return all(record in connection.versions for record in records)


def _edited(connection: RelayConnection, records: Sequence[str]) -> bool:
    return all(record in connection.edited for record in records)


def _merge_seconds(port: int) -> tuple[float, int]:
    """``crdtsync_merge_seconds`` sum and count from the relay's ``/metrics``."""
    values = relay_metrics(port, LOCALHOST)
    return values["crdtsync_merge_seconds_sum"], int(values["crdtsync_merge_seconds_count"])


def merge_us(before: dict[str, float], after: dict[str, float]) -> float:
    """The relay's µs per change in ``Relay.push`` up to the commit, between two
    :func:`~benchmarks.common.relay_metrics` snapshots."""
    changes = after["crdtsync_merge_seconds_count"] - before["crdtsync_merge_seconds_count"]
    spent = after["crdtsync_merge_seconds_sum"] - before["crdtsync_merge_seconds_sum"]
    return 1e6 * spent / changes if changes else 0.0


# -- merge core: in-process ---------------------------------------------------------------


@dataclass(frozen=True)
class FakeSession:
    """What :meth:`Relay.push` needs of a session (no fan-out goes to it)."""

    principal: Principal
    subscriptions: frozenset[str] = frozenset()


class InProcessRelay:
    """A :class:`Relay` on ``:memory:`` SQLite, pushed to directly, with each client's
    known record versions (from its acks) as a replica keeps them."""

    def __init__(self) -> None:
        config = RelayConfig.from_toml(CONFIG)
        self.schema, self.policy = config.schema, config.policy
        self.storage = RelayStorage(":memory:")
        self.relay = Relay(schema=self.schema, policy=self.policy, storage=self.storage)
        self.sessions: dict[str, FakeSession] = {}
        self.versions: dict[str, int] = {}
        self.first_versions: dict[str, int] = {}

    def session(self, client: ClientLoad) -> FakeSession:
        if client.replica not in self.sessions:
            self.sessions[client.replica] = FakeSession(Principal(client.user, client.replica))
        return self.sessions[client.replica]

    def setup(self, load: Load) -> None:
        for client in load.clients:
            if client.setup:
                verdicts = self.push(client, client.setup)
                if not all(isinstance(v, Ack) for v in verdicts):
                    raise RuntimeError(f"creating the records failed: {verdicts!r}")

    def frame(self, change: Change) -> ChangeFrame:
        known = self.first_versions if change.stale else self.versions
        base = known.get(change.record, 0) if change.kind != "create" else 0
        return ChangeFrame(
            change_id=change.change_id,
            record_id=change.record,
            object=OBJECT,
            kind=change.kind,
            base_version=base,
            field_bases={change.field: base} if change.field else {},
            delta=change.delta,
        )

    def push(self, client: ClientLoad, changes: Sequence[Change]) -> tuple[Verdict, ...]:
        frames = [self.frame(change) for change in changes]
        verdicts = self.relay.push(self.session(client), frames).items  # type: ignore[arg-type]
        for verdict in verdicts:
            if isinstance(verdict, Ack):
                self.first_versions.setdefault(verdict.record_id, verdict.version)
                self.versions[verdict.record_id] = verdict.version
        return verdicts


def run_merge_core(options: Any) -> Figures:
    """:meth:`Relay.push` in-process: changes/s and µs per change; then ``merge.decide``
    alone (with the record facts it needs), to separate deciding from storing."""
    load = _load(options)
    core = InProcessRelay()
    core.setup(load)
    batches = list(_batches(load, options.batch))
    acked = 0
    started = time.perf_counter()
    for client, batch in batches:
        acked += sum(isinstance(v, Ack) for v in core.push(client, batch))
    elapsed = time.perf_counter() - started
    changes = sum(len(batch) for _client, batch in batches)
    if acked != changes:
        raise AssertionError(f"merge_core: {changes - acked} of {changes} changes not acked")
    return {
        "changes_per_s": rate(changes, elapsed),
        "us_per_change": 1e6 * elapsed / changes,
        **_decide_only(load),
    }


def _batches(load: Load, size: int) -> Iterator[tuple[ClientLoad, list[Change]]]:
    """Each client's timed changes in frames of ``size``, clients taking turns."""
    per_client = [
        [(client, list(client.timed[i : i + size])) for i in range(0, len(client.timed), size)]
        for client in load.clients
    ]
    for turn in range(max(len(frames) for frames in per_client)):
        for frames in per_client:
            if turn < len(frames):
                yield frames[turn]


def _decide_only(load: Load) -> Figures:
    """``Relay.facts`` + ``merge.decide`` + the item index commit per change, on cached
    record states, with nothing written to storage."""
    core = InProcessRelay()
    core.setup(load)
    relay, storage = core.relay, core.storage
    states: dict[str, RecordState] = {}
    for create in load.creates():
        stored = storage.get_record(create.record)
        assert stored is not None
        states[create.record] = RecordState.load(
            stored, core.schema.objects[OBJECT], relay.client_id
        )
    facts_s = decide_s = index_s = 0.0
    changes = list(_round_robin_with_clients(load))
    for client, change in changes:
        state = states[change.record]
        principal = core.session(client).principal
        frame = core.frame(change)
        t0 = time.perf_counter()
        facts = relay.facts(state.stored, state)
        t1 = time.perf_counter()
        decision = decide(
            frame, state, principal=principal, schema=core.schema, policy=core.policy,
            context=storage, relay_client_id=relay.client_id, facts=facts,
        )  # fmt: skip
        t2 = time.perf_counter()
        if not isinstance(decision, Accepted) or decision.parsed is None:
            raise AssertionError(f"decide refused {change.change_id}: {decision!r}")
        state.index.commit(decision.parsed)
        t3 = time.perf_counter()
        facts_s, decide_s, index_s = facts_s + t1 - t0, decide_s + t2 - t1, index_s + t3 - t2
    count = len(changes)
    return {
        "facts_us_per_change": 1e6 * facts_s / count,
        "decide_us_per_change": 1e6 * decide_s / count,
        "index_us_per_change": 1e6 * index_s / count,
    }


def _round_robin_with_clients(load: Load) -> Iterator[tuple[ClientLoad, Change]]:
    owner = {change.change_id: client for client in load.clients for change in client.timed}
    for change in _round_robin(load):
        yield owner[change.change_id], change


# -- rejections ---------------------------------------------------------------------------


def run_rejections(options: Any) -> Figures:
    """The relay workload with 10 % invalid and 10 % conflicting changes: rates of
    accepted, rejected and all changes over the same wall time, and, in-process, the
    relay's cost of one change by verdict (frames of one change each)."""
    load = rejection_load(options.clients, options.records, options.edits)
    run = _relay_run(options, load, "rejections")
    tally, seconds = run.tally, run.timed.seconds
    return {
        "changes_per_s": rate(tally.verdicts, seconds),
        "accepted_per_s": rate(tally.acks, seconds),
        "rejected_per_s": rate(tally.refused, seconds),
        "acked": tally.acks,
        "invalid": tally.invalid,
        "conflicts": tally.conflicts,
        "other_refusals": tally.unresolvable + sum(tally.errors.values()),
        **run.timed.figures(tally.verdicts),
        "server_merge_us_per_change": run.merge_us,
        **run.stages,
        **_cost_by_verdict(load),
    }


def _cost_by_verdict(load: Load) -> Figures:
    """µs of :meth:`Relay.push` per change, one change per push, by verdict."""
    core = InProcessRelay()
    core.setup(load)
    spent: dict[str, list[float]] = collections.defaultdict(list)
    for client, change in _rejection_order(load):
        started = time.perf_counter()
        (verdict,) = core.push(client, [change])
        spent[_verdict_kind(verdict)].append(time.perf_counter() - started)
    us = {kind: 1e6 * sum(times) / len(times) for kind, times in spent.items()}
    accepted, conflict, invalid = (us.get(k, 0.0) for k in ("accepted", "conflict", "invalid"))
    return {
        "core_us_accepted": accepted,
        "core_us_conflict": conflict,
        "core_us_invalid": invalid,
        "core_rejected_vs_accepted_cost": max(conflict, invalid) / accepted if accepted else 0.0,
        "core_other_verdicts": len(spent.get("other", ())),
    }


def _verdict_kind(verdict: Verdict) -> str:
    if isinstance(verdict, Ack):
        return "accepted"
    if isinstance(verdict, Conflict):
        return "conflict" if verdict.conflicts else "invalid"
    return "other"


def _rejection_order(load: Load) -> Iterator[tuple[ClientLoad, Change]]:
    """Each main client's changes, then its rival's conflicting ones interleaved after
    the first full round of edits, so each conflicting change really is stale."""
    rivals = {client.gate: client for client in load.clients if client.gate is not None}
    for client in load.clients:
        if client.gate is not None:
            continue
        rival = rivals.get(client.replica)
        pending = list(rival.timed) if rival else []
        first_round = 2 * len(client.records)
        for i, change in enumerate(client.timed):
            yield client, change
            if rival is not None and i >= first_round and pending and i % 9 == 0:
                yield rival, pending.pop(0)
        for change in pending:
            assert rival is not None
            yield rival, change


# -- registry -----------------------------------------------------------------------------


WORKLOADS = (
    Workload("limit", run_limit, "pycrdt Doc.apply_update in-process (the physical limit)"),
    Workload("peer", run_peer, "pycrdt-websocket rooms, no validation, no persistence"),
    Workload("relay", run_relay, "crdtsync relay, own records, durable, every change acked"),
    Workload(
        "relay_distinct",
        run_relay_distinct,
        "as relay, each push frame edits distinct records (as real clients push)",
    ),
    Workload("relay_pg", run_relay_pg, "as relay, on a PostgreSQL database"),
    Workload("relay_distinct_pg", run_relay_distinct_pg, "as relay_distinct, on PostgreSQL"),
    Workload("relay_pg3", run_relay_pg3, "as relay_pg, three relays on one database"),
    Workload("relay_distinct_pg3", run_relay_distinct_pg3, "as relay_distinct_pg, three relays"),
    Workload("relay_no_fanout", run_relay_no_fanout, "as relay, clients subscribe to nothing"),
    Workload(
        "relay_shared",
        run_relay_shared,
        f"crdtsync relay, up to {len(SHARED_FIELDS)} clients per record, own fields",
    ),
    Workload("merge_core", run_merge_core, "Relay.push in-process on :memory:, and decide alone"),
    Workload("rejections", run_rejections, "relay with 10% invalid and 10% conflicting changes"),
)


def add_arguments(parser: Any) -> None:
    """Flags of the throughput workloads beyond their sizes."""
    parser.add_argument(
        "--db-dir",
        default=os.environ.get("CRDTSYNC_BENCH_DB_DIR"),
        help="where the relay's temporary databases go (default: the system temp dir)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CRDTSYNC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server the *_pg workloads create their databases on (a URL to "
        "connect to for that)",
    )
    parser.add_argument(
        "--subscribe",
        nargs="*",
        metavar="OBJECT",
        help="objects each relay client subscribes to (default: all, like the reference "
        "client; with none, no fan-out)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the relay with py-spy during the first repetition (collapsed stacks)",
    )


def summarize(results: dict[str, Figures]) -> Figures:
    """``ratio_vs_peer`` and ``ratio_vs_limit`` of the relay's changes/s, and each relay
    variant's rate over the peer's."""

    def per_s(name: str) -> float:
        value = results.get(name, {}).get("changes_per_s", 0.0)
        return float(value) if isinstance(value, int | float) else 0.0

    out: Figures = {}
    relay, peer, limit = per_s("relay"), per_s("peer"), per_s("limit")
    if relay and peer:
        out["ratio_vs_peer"] = relay / peer
    if relay and limit:
        out["ratio_vs_limit"] = relay / limit
    if per_s("relay_distinct") and peer:
        out["distinct_ratio_vs_peer"] = per_s("relay_distinct") / peer
    if per_s("relay_no_fanout") and peer:
        out["no_fanout_ratio_vs_peer"] = per_s("relay_no_fanout") / peer
    if per_s("relay_shared") and peer:
        out["shared_ratio_vs_peer"] = per_s("relay_shared") / peer
    if per_s("rejections") and relay:
        out["rejections_vs_relay"] = per_s("rejections") / relay
    if per_s("relay_pg") and peer:
        out["pg_ratio_vs_peer"] = per_s("relay_pg") / peer
    if per_s("relay_distinct_pg") and peer:
        out["pg_distinct_ratio_vs_peer"] = per_s("relay_distinct_pg") / peer
    if per_s("relay_pg") and relay:
        out["pg_vs_sqlite"] = per_s("relay_pg") / relay
    return out
