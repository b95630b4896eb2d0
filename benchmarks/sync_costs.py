"""Sync costs: reconnect drain, resume, fan-out latency, relay memory and initial sync.

Each workload runs ``crdtsync serve`` in a subprocess on a fresh SQLite file (a copy of
a pre-filled one where it needs many stored records):

``drain``        a real :class:`crdtsync.Client` (SQLite store) makes ``drain_edits``
                 edits over ``drain_records`` records while offline, then comes back
                 online: seconds until :meth:`Client.sync` returns with nothing pending.
``storm``        ``storm_clients`` real clients (SQLite stores) each edit ``storm_edits``
                 records of their own once while offline, then all come online at
                 once: seconds until every client's pending changes are acknowledged,
                 relay CPU per change, client CPU per change received.
``resume``       a raw replica caught up at cursor C misses K changes (to K distinct
                 random records) in a store of N records: bytes and seconds from
                 ``subscribe(cursor=C)`` to ``caught_up``, for two N and several K.
``fanout``       one writer pushes single-field changes one at a time; latency from the
                 push being sent to each of ``fanout_subscribers`` raw replicas holding
                 the change (matched by record id and version): p50 / p99.
``fanout_pg2``   ``fanout`` with the writer on one relay and the subscribers on another,
                 both on one new PostgreSQL database (``--postgres-url``).
``memory``       the relay's RSS with ``store_records`` stored records: right after
                 storing them, after a restart, after reading records through its
                 bounded record cache, and with ``idle_clients`` idle connections; at the
                 default ``[server] cache_records`` and at ``small_cache``.
``initial_sync`` a new raw replica (cursor 0) receives all ``store_records`` records:
                 seconds and bytes to ``caught_up``, while another replica pushes a
                 change every ``WRITER_PERIOD`` (how long it waits for its acks); then,
                 in the first repetition only, a real :class:`crdtsync.Client` with a
                 SQLite store receives and stores them.

Records are filled fast by raw protocol clients (:class:`~benchmarks.clients.RelayConnection`):
creates pushed in frames of ``FILL_BATCH`` over ``FILL_CONNECTIONS`` websockets. A store
of ``store_records`` records is filled once per run and copied for each relay that needs it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import msgpack
import psutil
from crdtsync_server.auth import TokenAuthority
from crdtsync_server.config import RelayConfig
from websockets.asyncio.client import ClientConnection, connect

import crdtsync
from crdtsync.core.protocol import (
    MAX_CHANGES_PER_FRAME,
    MAX_RELAY_FRAME_BYTES,
    PROTOCOL_VERSION,
    Hello,
    Subscribe,
    Welcome,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc

from .clients import RelayConnection
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
from .loads import CONFIG, FIELD, OBJECT, Change, account, account_values
from .throughput import _merge_seconds, postgres_database

SIZES = (
    Size("drain_records", 1000, 200, "drain: records the offline client edits"),
    Size("drain_edits", 10_000, 2000, "drain: offline edits (spread over the records)"),
    Size("storm_clients", 10, 5, "storm: real clients that come online at once"),
    Size("storm_edits", 300, 60, "storm: offline edits per client (one per record)"),
    Size("resume_records", 10_000, 2000, "resume: the larger store N (the other is N/10)"),
    Size("resume_changes", 1000, 100, "resume: the largest K missed (also K/10, K/100, 0)"),
    Size("fanout_subscribers", 100, 20, "fanout: subscribed replicas"),
    Size("fanout_changes", 200, 50, "fanout: changes pushed one at a time"),
    Size("store_records", 100_000, 10_000, "memory, initial_sync: records stored in the relay"),
    Size("idle_clients", 200, 50, "memory: idle connections"),
    Size("small_cache", 1000, 1000, "memory: the smaller [server] cache_records also measured"),
)

LOCALHOST = "127.0.0.1"
FILL_CONNECTIONS = 4  #: websockets that fill a store, each its own replica and CRDT client id
FILL_BATCH = MAX_CHANGES_PER_FRAME  #: creates per push frame while filling (the relay's cap)
FILL_WINDOW = 2  #: push frames in flight per filling connection
FILL_CLIENT_ID = 7_000  #: filling connection c writes as CRDT client id FILL_CLIENT_ID + c
RESUME_TRIES = 3  #: resume: subscribes per (N, K), each on a fresh connection; median
FANOUT_RECORDS = 10  #: fanout: the writer's records, edited in turn
FANOUT_GAP = 0.005  #: fanout: seconds between one change reaching everyone and the next push
CONNECT_CONCURRENCY = 32  #: connections opened at once (idle clients, subscribers)
DEFAULT_CACHE: int = attrs.fields(RelayConfig).cache_records.default
WARM_RECORDS = 2 * DEFAULT_CACHE  #: memory: records read through the cache after a restart
WRITER_PERIOD = 0.1  #: initial_sync: seconds between another replica's pushes
TIMEOUT = 600.0  #: seconds any single wait may take before the workload fails


# -- relays in subprocesses ---------------------------------------------------------------


@dataclass(frozen=True)
class RunningRelay:
    url: str
    port: int
    pid: int
    authority: TokenAuthority
    directory: Path

    def token(self, user: str) -> str:
        return self.authority.issue(user)

    def rss(self) -> int:
        """The relay process's resident set size, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)


@contextlib.contextmanager
def relay(
    options: Any,
    *,
    template: Path | None = None,
    cache_records: int | None = None,
    keep: Path | None = None,
) -> Iterator[RunningRelay]:
    """``crdtsync serve`` on a fresh database in a temporary directory (a copy of
    ``template`` if given), with ``[server] cache_records`` overridden if given. With
    ``keep``, the database is copied there once the relay has shut down."""
    secret = secrets.token_hex(32)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="crdtsync-bench-", dir=_db_dir(options)) as tmp:
        directory = Path(tmp)
        db = directory / "relay.sqlite3"
        if template is not None:
            _copy_database(template, db)
        argv = python_module(
            "crdtsync", "serve", "--config", str(_config(directory, cache_records)),
            "--db", str(db), "--host", LOCALHOST, "--port", str(port),
        )  # fmt: skip
        with ServerProcess(argv, port=port, env={"CRDTSYNC_SECRET": secret}) as server:
            url = f"ws://{LOCALHOST}:{port}"
            yield RunningRelay(url, port, server.pid, TokenAuthority(secret), directory)
        if keep is not None:
            _copy_database(db, keep)


def _db_dir(options: Any) -> str | None:
    return getattr(options, "db_dir", None)


def _config(directory: Path, cache_records: int | None) -> Path:
    """The example app's configuration, with ``cache_records`` set if given."""
    if cache_records is None:
        return CONFIG
    text = CONFIG.read_text()
    if "\n[server]\n" not in text:
        raise RuntimeError(f"{CONFIG} has no [server] table to override cache_records in")
    path = directory / "app.toml"
    path.write_text(text.replace("\n[server]\n", f"\n[server]\ncache_records = {cache_records}\n"))
    return path


def _copy_database(source: Path, target: Path) -> None:
    """Copy an SQLite database with its WAL (none after a clean shutdown)."""
    shutil.copyfile(source, target)
    for suffix in ("-wal", "-shm"):
        extra = source.with_name(source.name + suffix)
        if extra.exists():
            shutil.copyfile(extra, target.with_name(target.name + suffix))


def _database_bytes(directory: Path, name: str = "relay") -> int:
    """The size of ``{name}.sqlite3`` and its WAL in ``directory``."""
    return sum(path.stat().st_size for path in directory.glob(f"{name}.sqlite3*"))


def _profile(options: Any, name: str) -> Path | None:
    """Where ``--profile DIR`` wants this workload's relay profile (first repetition)."""
    directory = getattr(options, "profile", None)
    if directory is None or getattr(options, "repetition", 0) != 0:
        return None
    return Path(directory) / f"{name}.txt"


# -- filling a relay ----------------------------------------------------------------------


def record_id(index: int) -> str:
    return f"rec-{index:06d}"


def _connection_of(index: int) -> int:
    """Which filling connection creates (and later edits) record ``index``."""
    return index % FILL_CONNECTIONS


def creates(records: int, *, keep_docs: bool) -> tuple[list[list[Change]], dict[str, RecordDoc]]:
    """Each filling connection's creates and, with ``keep_docs``, every record's
    document (whose later writes are that record's updates, under the same CRDT client
    id; about 6 KB each, so not kept for large stores)."""
    per_connection: list[list[Change]] = [[] for _ in range(FILL_CONNECTIONS)]
    docs: dict[str, RecordDoc] = {}
    for index in range(records):
        rid = record_id(index)
        c = _connection_of(index)
        doc = RecordDoc(account(), client_id=FILL_CLIENT_ID + c)
        per_connection[c].append(
            Change(f"{rid}-c", rid, "create", None, doc.write(account_values(index)))
        )
        if keep_docs:
            docs[rid] = doc
    return per_connection, docs


class Fillers:
    """The filling connections of one relay: they create the records and, knowing each
    record's version from their acks, can push updates to them later."""

    def __init__(self, connections: Sequence[RelayConnection], docs: dict[str, RecordDoc]):
        self.connections = list(connections)
        self.docs = docs
        self.seconds = 0.0  #: how long the creates took, from the first push to the last ack
        self._values = itertools.count(10_000)

    @classmethod
    async def fill(
        cls, target: RunningRelay, records: int, stack: AsyncExitStack, *, updatable: bool
    ) -> Fillers:
        """Open the connections (subscribed to nothing: no fan-out) and create
        ``records`` records; every create must be acknowledged. ``updatable``: keep the
        documents :meth:`update` needs."""
        per_connection, docs = creates(records, keep_docs=updatable)

        async def open_one(c: int) -> RelayConnection:
            connection = await RelayConnection.open(
                target.url, token=target.token(f"filler{c}"), replica=f"filler-{c}", objects=()
            )
            stack.push_async_callback(connection.close)
            return connection

        connections = await asyncio.gather(*(open_one(c) for c in range(FILL_CONNECTIONS)))
        fillers = cls(connections, docs)
        started = time.perf_counter()
        await fillers._push(per_connection)
        fillers.seconds = time.perf_counter() - started
        return fillers

    async def update(self, indexes: Sequence[int]) -> None:
        """One single-field update (``Employees``) to each record in ``indexes``."""
        per_connection: list[list[Change]] = [[] for _ in self.connections]
        for index in indexes:
            rid, value = record_id(index), next(self._values)
            delta = self.docs[rid].write({FIELD: value})
            change = Change(f"{rid}-u{value}", rid, "update", FIELD, delta)
            per_connection[_connection_of(index)].append(change)
        await self._push(per_connection)

    async def _push(self, per_connection: Sequence[Sequence[Change]]) -> None:
        for connection in self.connections:
            connection.reset_tally()
        await asyncio.gather(
            *(
                connection.push_all(changes, batch=FILL_BATCH, window=FILL_WINDOW)
                for connection, changes in zip(self.connections, per_connection, strict=True)
            )
        )
        for connection, changes in zip(self.connections, per_connection, strict=True):
            if connection.tally.acks != len(changes):
                raise RuntimeError(f"{connection.replica}: not acked: {connection.tally.problem}")


@dataclass(frozen=True)
class StoredTemplate:
    """A relay database holding ``records`` records, filled once per run."""

    records: int
    database: Path
    fill_seconds: float
    rss_empty: int  #: the filling relay's RSS before the first push
    rss_stored: int  #: ... and right after storing every record
    database_bytes: int


_TEMPLATES: dict[int, StoredTemplate] = {}
_TEMPLATE_DIR: tempfile.TemporaryDirectory[str] | None = None


def stored_template(options: Any, records: int) -> StoredTemplate:
    """The database of a relay that stored ``records`` records (filled on first use)."""
    global _TEMPLATE_DIR
    if records in _TEMPLATES:
        return _TEMPLATES[records]
    if _TEMPLATE_DIR is None:
        _TEMPLATE_DIR = tempfile.TemporaryDirectory(prefix="crdtsync-bench-", dir=_db_dir(options))
        atexit.register(_TEMPLATE_DIR.cleanup)
    database = Path(_TEMPLATE_DIR.name) / f"stored-{records}.sqlite3"
    print(f"  filling a relay with {records:,} records (once per run)", file=sys.stderr, flush=True)
    with relay(options, keep=database) as target:
        rss_empty = target.rss()

        async def fill() -> float:
            async with AsyncExitStack() as stack:
                fillers = await Fillers.fill(target, records, stack, updatable=False)
                return fillers.seconds

        with py_spy(target.pid, _profile(options, "fill")):
            seconds = asyncio.run(fill())
        time.sleep(0.2)
        rss_stored = target.rss()
        database_bytes = _database_bytes(target.directory)
    template = StoredTemplate(records, database, seconds, rss_empty, rss_stored, database_bytes)
    _TEMPLATES[records] = template
    return template


# -- a raw reading replica ----------------------------------------------------------------


@dataclass
class Backlog:
    """What one ``subscribe`` brought, up to its ``caught_up``."""

    cursor: int
    seconds: float
    bytes: int
    frames: int
    items: int
    first_frame_seconds: float


@dataclass
class RawReplica:
    """One replica's websocket that only reads: ``hello``, then ``subscribe`` at a
    cursor, counting the bytes, frames and record changes that arrive. ``on_item`` is
    called with each record change's (record, version, arrival time)."""

    websocket: ClientConnection
    on_item: Callable[[str, int, float], None] | None = None
    bytes: int = 0
    frames: int = 0
    items: int = 0
    first_frame_at: float | None = None
    _caught_up: asyncio.Future[Backlog] | None = None
    _started: float = 0.0
    _reader: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def open(
        cls,
        target: RunningRelay,
        user: str,
        replica: str,
        on_item: Callable[[str, int, float], None] | None = None,
    ) -> RawReplica:
        websocket = await connect(target.url, compression=None, max_size=MAX_RELAY_FRAME_BYTES)
        try:
            await websocket.send(encode(Hello((PROTOCOL_VERSION,), target.token(user), replica)))
            welcome = decode(await websocket.recv(decode=False), max_bytes=MAX_RELAY_FRAME_BYTES)
            if not isinstance(welcome, Welcome):
                raise RuntimeError(f"expected welcome, got {welcome!r}")
        except BaseException:
            await websocket.close()
            raise
        opened = cls(websocket, on_item)
        opened._reader = asyncio.create_task(opened._read())
        return opened

    async def subscribe(self, objects: Sequence[str], cursor: int) -> Backlog:
        """Subscribe at ``cursor``; wait for ``caught_up`` and say what came before it."""
        self.bytes = self.frames = self.items = 0
        self.first_frame_at = None
        self._caught_up = asyncio.get_running_loop().create_future()
        self._started = time.perf_counter()
        await self.websocket.send(encode(Subscribe(tuple(objects), cursor)))
        async with asyncio.timeout(TIMEOUT):
            return await self._caught_up

    async def close(self) -> None:
        await self.websocket.close()
        if self._reader is not None:
            with contextlib.suppress(ConnectionError):
                await self._reader

    async def _read(self) -> None:
        try:
            async for message in self.websocket:
                now = time.perf_counter()
                if isinstance(message, str):
                    raise RuntimeError("the relay sent a text message")
                self.bytes += len(message)
                self.frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = now
                self._receive(msgpack.unpackb(message, raw=False), now)
        except Exception as exc:
            if self._caught_up is not None and not self._caught_up.done():
                self._caught_up.set_exception(exc)  # the subscribe raises it
                return
            raise
        finally:
            if self._caught_up is not None and not self._caught_up.done():
                self._caught_up.set_exception(ConnectionError("the relay closed the connection"))

    def _receive(self, payload: dict[str, Any], now: float) -> None:
        kind = payload.get("type")
        if kind == "changes":
            items = payload["items"]
            self.items += len(items)
            if self.on_item is not None:
                for item in items:
                    self.on_item(item["record"], item["version"], now)
        elif kind == "caught_up" and self._caught_up is not None and not self._caught_up.done():
            first = (self.first_frame_at or now) - self._started
            seconds = now - self._started
            cursor = int(payload["cursor"])
            backlog = Backlog(cursor, seconds, self.bytes, self.frames, self.items, first)
            self._caught_up.set_result(backlog)
        elif kind == "error":
            raise RuntimeError(f"relay error {payload!r}")


async def open_replicas(
    target: RunningRelay,
    count: int,
    prefix: str,
    stack: AsyncExitStack,
    on_item: Callable[[str, int, float], None] | None = None,
) -> list[RawReplica]:
    """``count`` raw replicas (users ``{prefix}000``...), opened a few at a time."""
    slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(i: int) -> RawReplica:
        async with slots:
            replica = await RawReplica.open(
                target, f"{prefix}{i:03d}", f"{prefix}-{i:03d}", on_item
            )
        stack.push_async_callback(replica.close)
        return replica

    return list(await asyncio.gather(*(open_one(i) for i in range(count))))


async def relay_cursor(target: RunningRelay) -> int:
    """The relay's last sequence number (a subscribe to nothing answers it)."""
    probe = await RawReplica.open(target, "probe", "probe")
    try:
        return (await probe.subscribe((), 0)).cursor
    finally:
        await probe.close()


# -- drain --------------------------------------------------------------------------------


def run_drain(options: Any) -> Figures:
    """A client's offline edits synced on reconnect: seconds from ``go_online()`` until
    ``sync()`` returns with nothing pending."""
    with relay(options) as target:
        return asyncio.run(_drain(target, options))


async def _drain(target: RunningRelay, options: Any) -> Figures:
    records, edits = options.drain_records, options.drain_edits
    store = target.directory / "client.sqlite3"
    client = crdtsync.Client(target.url, token=target.token("alice"), store=store, schema=CONFIG)
    async with client:
        ids = [client.create(OBJECT, account_values(i)) for i in range(records)]
        await client.sync(timeout=TIMEOUT)
        client.go_offline()
        started = time.perf_counter()
        for k in range(edits):
            client.update(ids[k % records], {FIELD: 10_000 + k})
        edit_seconds = time.perf_counter() - started
        queued = len(client.pending())
        with py_spy(target.pid, _profile(options, "drain")), Clock(target.pid) as timed:
            client.go_online()
            await client.sync(timeout=TIMEOUT)
        left = client.pending()
        synced = client.summary()[OBJECT]["synced"]
    if left or synced != records:
        raise RuntimeError(f"drain: {len(left)} changes still pending, {synced} records synced")
    return {
        "seconds": timed.seconds,
        "edits_per_s": rate(edits, timed.seconds),
        "edits": edits,
        "changes_pushed": queued,
        "changes_per_s": rate(queued, timed.seconds),
        "server_cpu_pct": timed.figures(queued)["server_cpu_pct"],
        "client_cpu_pct": timed.figures(queued)["client_cpu_pct"],
        "offline_edit_us": 1e6 * edit_seconds / edits,
    }


# -- storm --------------------------------------------------------------------------------


def run_storm(options: Any) -> Figures:
    """Many real clients with offline edits come online at once: seconds until every
    client's pending changes are acknowledged, relay CPU per change, client CPU per
    change received.

    Setup (untimed): ``storm_clients`` :class:`crdtsync.Client` objects, each with its
    own user and SQLite store, create ``storm_edits`` records each and sync until every
    client holds every record. Each then goes offline and edits each of **its own
    pre-created records once** (``Employees``): one pending change per record. Timed:
    all call ``go_online()`` together; ``seconds`` ends when the last client's
    ``sync()`` has returned with ``pending()`` empty; the clock (relay and benchmark
    CPU, the relay's ``/metrics``) runs on until every client has also received every
    other client's edits (``seconds_all_received``).
    """
    with relay(options) as target:
        return asyncio.run(_storm(target, options))


async def _storm(target: RunningRelay, options: Any) -> Figures:
    count, edits = options.storm_clients, options.storm_edits
    clients = [
        crdtsync.Client(
            target.url,
            token=target.token(f"storm{c:03d}"),
            store=target.directory / f"storm-{c:03d}.sqlite3",
            schema=CONFIG,
        )
        for c in range(count)
    ]
    received = _count_received(clients)
    async with AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        own = [
            [client.create(OBJECT, account_values(c * edits + i)) for i in range(edits)]
            for c, client in enumerate(clients)
        ]
        for _round in range(2):  # the second round: what others pushed after one's sync
            await asyncio.gather(*(client.sync(timeout=TIMEOUT) for client in clients))
        for client in clients:
            client.go_offline()
        await _until(lambda: not any(client.online for client in clients))
        for ids, client in zip(own, clients, strict=True):
            for i, rid in enumerate(ids):
                client.update(rid, {FIELD: 20_000 + i})
        queued = sum(len(client.pending()) for client in clients)
        received[:] = [0] * count
        before = await asyncio.to_thread(relay_metrics, target.port)
        with py_spy(target.pid, _profile(options, "storm")), Clock(target.pid) as timed:
            started = time.perf_counter()
            for client in clients:
                client.go_online()
            drained = await asyncio.gather(*(_drained(client, started) for client in clients))
            await asyncio.gather(*(client.sync(timeout=TIMEOUT) for client in clients))
        after = await asyncio.to_thread(relay_metrics, target.port)
        wrong = _storm_check(clients, own)
    if queued != count * edits or wrong:
        raise RuntimeError(f"storm: {queued} changes queued, {wrong} records not as edited")
    items = sum(received)
    return {
        "seconds": max(drained),
        "changes_per_s": rate(queued, max(drained)),
        "seconds_all_received": timed.seconds,
        "changes": queued,
        "items_received": items,
        "items_expected": count * (count - 1) * edits,
        "server_cpu_us_per_change": 1e6 * timed.server_cpu / queued,
        "client_cpu_us_per_received": 1e6 * timed.client_cpu / items if items else 0.0,
        "server_cpu_pct": 100 * timed.server_cpu / timed.seconds,
        "client_cpu_pct": 100 * timed.client_cpu / timed.seconds,
        **stage_figures(before, after),
    }


def _count_received(clients: Sequence[crdtsync.Client]) -> list[int]:
    """Count, per client, the items of ``changes`` frames it applies (live fan-out and
    any backlog on reconnect): every call of its replica's ``apply_remote``."""
    received = [0] * len(clients)
    for index, client in enumerate(clients):
        replica = client.replica
        apply_remote = replica.apply_remote

        def counted(*args: Any, _index: int = index, _apply: Any = apply_remote, **kw: Any) -> Any:
            received[_index] += 1
            return _apply(*args, **kw)

        replica.apply_remote = counted  # type: ignore[method-assign]
    return received


async def _drained(client: crdtsync.Client, started: float) -> float:
    """Seconds from ``started`` until the client's ``sync()`` returned with nothing pending."""
    await client.sync(timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    if client.pending():
        raise RuntimeError(f"storm: {len(client.pending())} changes pending after sync()")
    return seconds


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


def _storm_check(clients: Sequence[crdtsync.Client], own: Sequence[Sequence[str]]) -> int:
    """Records (over all clients' stores) that do not hold their owner's offline edit."""
    wrong = 0
    for client in clients:
        for ids in own:
            for i, rid in enumerate(ids):
                record = client.get(rid)
                wrong += record is None or record.fields.get(FIELD) != 20_000 + i
    return wrong


# -- resume -------------------------------------------------------------------------------


def missed_counts(largest: int) -> list[int]:
    """The K values of resume: 0, K/100, K/10 and K (without duplicates)."""
    return sorted({0, largest // 100, largest // 10, largest})


def run_resume(options: Any) -> Figures:
    """Bytes and seconds for a replica at cursor C to catch up after K changes, in
    stores of N/10 and N records."""
    stores = sorted({max(1, options.resume_records // 10), options.resume_records})
    counts = missed_counts(options.resume_changes)
    rng = random.Random(1234 + getattr(options, "repetition", 0))
    figures: Figures = {}
    for records in stores:
        with relay(options) as target:
            results = asyncio.run(_resume(target, records, counts, rng))
        for missed, backlog in results.items():
            figures[f"n{records}_k{missed}_ms"] = 1e3 * backlog.seconds
            figures[f"n{records}_k{missed}_kb"] = backlog.bytes / 1024
    small, large, most = stores[0], stores[-1], counts[-1]
    fewest = next((k for k in counts if k > 0), most)
    figures[f"ms_ratio_n{large}_vs_n{small}_at_k{most}"] = _ratio(
        figures[f"n{large}_k{most}_ms"], figures[f"n{small}_k{most}_ms"]
    )
    figures[f"ms_ratio_k{most}_vs_k{fewest}_at_n{large}"] = _ratio(
        figures[f"n{large}_k{most}_ms"], figures[f"n{large}_k{fewest}_ms"]
    )
    return figures


def _ratio(a: Any, b: Any) -> float:
    return float(a) / float(b) if b else 0.0


async def _resume(
    target: RunningRelay,
    records: int,
    counts: Sequence[int],
    rng: random.Random,
) -> dict[int, Backlog]:
    async with AsyncExitStack() as stack:
        fillers = await Fillers.fill(target, records, stack, updatable=True)
        return {missed: await _missed(target, fillers, missed, rng) for missed in counts}


async def _missed(
    target: RunningRelay, fillers: Fillers, missed: int, rng: random.Random
) -> Backlog:
    """Note the relay's cursor, change ``missed`` distinct random records, then resume
    from that cursor ``RESUME_TRIES`` times: the median seconds and bytes."""
    cursor = await relay_cursor(target)
    records = len(fillers.docs)
    if missed <= records:
        chosen = rng.sample(range(records), missed)
    else:
        chosen = rng.choices(range(records), k=missed)
    await fillers.update(chosen)
    tries = [await _resume_once(target, cursor) for _ in range(RESUME_TRIES)]
    expected = len(set(chosen))
    if any(backlog.items != expected for backlog in tries):
        raise RuntimeError(
            f"resume: expected {expected} records after {missed} changes, "
            f"got {[b.items for b in tries]}"
        )
    return Backlog(
        cursor=tries[0].cursor,
        seconds=statistics.median(backlog.seconds for backlog in tries),
        bytes=int(statistics.median(backlog.bytes for backlog in tries)),
        frames=tries[0].frames,
        items=expected,
        first_frame_seconds=tries[0].first_frame_seconds,
    )


async def _resume_once(target: RunningRelay, cursor: int) -> Backlog:
    """A fresh connection (handshake untimed) that subscribes at ``cursor``."""
    replica = await RawReplica.open(target, "reader", "reader")
    try:
        return await replica.subscribe((OBJECT,), cursor)
    finally:
        await replica.close()


# -- fan-out ------------------------------------------------------------------------------


class Board:
    """When each (record, version) reached each subscriber."""

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.arrivals: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        self._waiting: dict[tuple[str, int], asyncio.Future[None]] = {}

    def arrived(self, record: str, version: int, at: float) -> None:
        key = (record, version)
        times = self.arrivals[key]
        times.append(at)
        if len(times) >= self.subscribers and key in self._waiting:
            self._waiting.pop(key).set_result(None)

    async def everyone_has(self, record: str, version: int) -> None:
        key = (record, version)
        if len(self.arrivals[key]) >= self.subscribers:
            return
        self._waiting[key] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(30):
            await self._waiting[key]


def run_fanout(options: Any) -> Figures:
    """Latency from a push being sent to each subscriber receiving the change."""
    with relay(options) as target:
        return asyncio.run(_fanout(target, options))


def run_fanout_pg2(options: Any) -> Figures:
    """``fanout`` across two relays on one PostgreSQL database: the writer on one, the
    subscribers on the other (a note instead, when no server answers)."""
    with postgres_database(options.postgres_url) as database:
        if database is None:
            return {"note": f"no PostgreSQL server at {options.postgres_url}"}
        with relays_on(database, 2) as (writes, reads):
            return asyncio.run(_fanout(reads, options, writes=writes))


@contextlib.contextmanager
def relays_on(database: str, count: int) -> Iterator[list[RunningRelay]]:
    """``count`` ``crdtsync serve`` processes on one (PostgreSQL) ``database``."""
    secret = secrets.token_hex(32)
    with (
        tempfile.TemporaryDirectory(prefix="crdtsync-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        running = []
        for _ in range(count):
            port = free_port()
            argv = python_module(
                "crdtsync", "serve", "--config", str(CONFIG), "--db", database,
                "--host", LOCALHOST, "--port", str(port),
            )  # fmt: skip
            server = stack.enter_context(
                ServerProcess(argv, port=port, env={"CRDTSYNC_SECRET": secret})
            )
            url = f"ws://{LOCALHOST}:{port}"
            running.append(RunningRelay(url, port, server.pid, TokenAuthority(secret), Path(tmp)))
        yield running


async def _fanout(
    target: RunningRelay, options: Any, writes: RunningRelay | None = None
) -> Figures:
    """Fan-out latency to subscribers of ``target``, the writer on ``writes`` (default:
    ``target`` too)."""
    subscribers, count = options.fanout_subscribers, options.fanout_changes
    board = Board(subscribers)
    writes = writes or target
    async with AsyncExitStack() as stack:
        writer = await RelayConnection.open(
            writes.url, token=writes.token("writer"), replica="writer", objects=()
        )
        stack.push_async_callback(writer.close)
        docs = {
            record_id(i): RecordDoc(account(), client_id=FILL_CLIENT_ID)
            for i in range(FANOUT_RECORDS)
        }
        setup = [
            Change(f"{rid}-c", rid, "create", None, doc.write(account_values(i)))
            for i, (rid, doc) in enumerate(docs.items())
        ]
        await writer.push_all(setup, batch=len(setup), window=1)
        rids = list(docs)
        changes = [
            Change(f"{rid}-u{k}", rid, "update", FIELD, docs[rid].write({FIELD: 10_000 + k}))
            for k in range(1, count + 1)
            for rid in (rids[k % len(rids)],)
        ]
        replicas = await open_replicas(target, subscribers, "sub", stack, board.arrived)
        await asyncio.gather(*(replica.subscribe((OBJECT,), 0) for replica in replicas))
        writer.reset_tally()
        before = await asyncio.to_thread(_merge_seconds, writes.port)
        sent: list[tuple[str, int, float, float]] = []  # record, version, sent at, acked at
        with (
            py_spy(target.pid, _profile(options, "fanout")),
            Clock(*{target.pid, writes.pid}) as timed,
        ):
            for change in changes:
                started = time.perf_counter()
                await writer.push_all([change], batch=1, window=1)
                acked = time.perf_counter()
                version = writer.versions[change.record]
                sent.append((change.record, version, started, acked))
                await board.everyone_has(change.record, version)
                await asyncio.sleep(FANOUT_GAP)
        after = await asyncio.to_thread(_merge_seconds, writes.port)
    if writer.tally.acks != count:
        raise RuntimeError(f"fanout: {count - writer.tally.acks} refused: {writer.tally.problem}")
    pairs, last, acks = [], [], []
    for record, version, started, acked in sent:
        times = board.arrivals[(record, version)]
        pairs += [at - started for at in times]
        last.append(max(times) - started)
        acks.append(acked - started)
    return {
        "p50_ms": 1e3 * percentile(pairs, 50),
        "p99_ms": 1e3 * percentile(pairs, 99),
        "max_ms": 1e3 * max(pairs),
        "everyone_p50_ms": 1e3 * percentile(last, 50),
        "everyone_p99_ms": 1e3 * percentile(last, 99),
        "ack_p50_ms": 1e3 * percentile(acks, 50),
        "server_push_ms": 1e3 * (after[0] - before[0]) / max(1, after[1] - before[1]),
        "pairs": len(pairs),
        "subscribers": subscribers,
        "changes": count,
        "server_cpu_pct": timed.figures(count)["server_cpu_pct"],
        "server_cpu_us_per_delivery": 1e6 * timed.server_cpu / len(pairs),
        "client_cpu_pct": timed.figures(count)["client_cpu_pct"],
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# -- memory -------------------------------------------------------------------------------


def run_memory(options: Any) -> Figures:
    """The relay's RSS with many stored records, its bounded record cache, and idle
    connections."""
    template = stored_template(options, options.store_records)
    warm = min(template.records, WARM_RECORDS)
    figures: Figures = {
        "records": template.records,
        "database_mb": template.database_bytes / 2**20,
        "fill_records_per_s": rate(template.records, template.fill_seconds),
        "rss_empty_mb": template.rss_empty / 2**20,
        "rss_after_storing_mb": template.rss_stored / 2**20,
    }
    for prefix, cache in (("", None), ("small_cache_", options.small_cache)):
        with relay(options, template=template.database, cache_records=cache) as target:
            rss = asyncio.run(_memory(target, options.idle_clients, warm))
        figures[f"{prefix}rss_restart_mb"] = rss[0] / 2**20
        figures[f"{prefix}rss_warm_mb"] = rss[1] / 2**20
        figures[f"{prefix}rss_idle_clients_mb"] = rss[2] / 2**20
        if not prefix:
            figures["kb_per_idle_client"] = (rss[2] - rss[1]) / 1024 / options.idle_clients
    figures.update(
        cache_records=DEFAULT_CACHE,
        small_cache_records=options.small_cache,
        warm_records=warm,
        idle_clients=options.idle_clients,
    )
    return figures


async def _memory(target: RunningRelay, clients: int, warm: int) -> tuple[int, int, int]:
    """RSS after a restart, after reading the ``warm`` latest records (one resume:
    each goes through the record cache), and with ``clients`` idle connections."""
    await asyncio.sleep(0.2)
    restarted = target.rss()
    cursor = await relay_cursor(target)
    reader = await RawReplica.open(target, "reader", "reader")
    try:
        backlog = await reader.subscribe((OBJECT,), max(0, cursor - warm))
    finally:
        await reader.close()
    if backlog.items < warm:
        raise RuntimeError(f"memory: read {backlog.items} records, not {warm}")
    await asyncio.sleep(0.2)
    warmed = target.rss()
    async with AsyncExitStack() as stack:
        replicas = await open_replicas(target, clients, "idle", stack)
        await asyncio.gather(*(replica.subscribe((OBJECT,), cursor) for replica in replicas))
        await asyncio.sleep(0.5)
        idle = target.rss()
    return restarted, warmed, idle


# -- initial sync -------------------------------------------------------------------------


def run_initial_sync(options: Any) -> Figures:
    """A new replica receives every stored record: a raw replica (the relay's cost and
    the bytes, while another replica keeps pushing), then, in the first repetition
    only, a real client storing them."""
    template = stored_template(options, options.store_records)
    with relay(options, template=template.database) as target:
        raw, timed, acks = asyncio.run(_raw_initial_sync(target, options))
    if raw.items != template.records + 1:  # and the writer's record
        raise RuntimeError(f"initial sync: {raw.items} records, not {template.records + 1}")
    figures: Figures = {
        "records": template.records,
        "raw_seconds": raw.seconds,
        "raw_records_per_s": rate(raw.items, raw.seconds),
        "raw_mb": raw.bytes / 2**20,
        "raw_bytes_per_record": raw.bytes / raw.items,
        "raw_frames": raw.frames,
        "raw_first_frame_s": raw.first_frame_seconds,
        "server_cpu_pct": timed.figures(raw.items)["server_cpu_pct"],
        "other_push_max_ack_ms": 1e3 * max(acks),
        "other_pushes": len(acks),
    }
    if getattr(options, "repetition", 0) == 0:
        with relay(options, template=template.database) as target:
            figures.update(asyncio.run(_client_initial_sync(target, template.records)))
    return figures


async def _raw_initial_sync(
    target: RunningRelay, options: Any
) -> tuple[Backlog, Timed, list[float]]:
    """The newcomer's backlog, timed, while a writer pushes one change every
    ``WRITER_PERIOD`` seconds (the seconds each waited for its ack)."""
    async with AsyncExitStack() as stack:
        writer = await RelayConnection.open(
            target.url, token=target.token("writer"), replica="writer", objects=()
        )
        stack.push_async_callback(writer.close)
        doc = RecordDoc(account(), client_id=FILL_CLIENT_ID + FILL_CONNECTIONS)
        rid = "writer-record"
        await writer.push_all(
            [Change(f"{rid}-c", rid, "create", None, doc.write(account_values(0)))],
            batch=1,
            window=1,
        )
        replica = await RawReplica.open(target, "newcomer", "newcomer")
        stack.push_async_callback(replica.close)
        acks: list[float] = []
        done = asyncio.Event()

        async def write() -> None:
            for k in itertools.count(1):
                if done.is_set():
                    return
                change = Change(f"{rid}-u{k}", rid, "update", FIELD, doc.write({FIELD: k}))
                started = time.perf_counter()
                await writer.push_all([change], batch=1, window=1)
                acks.append(time.perf_counter() - started)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WRITER_PERIOD):
                        await done.wait()

        profile = _profile(options, "initial_sync")
        with py_spy(target.pid, profile), Clock(target.pid) as timed:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(write())
                await asyncio.sleep(WRITER_PERIOD / 2)  # the writer is waiting for its next turn
                backlog = await replica.subscribe((OBJECT,), 0)
                done.set()
    return backlog, timed, acks


async def _client_initial_sync(target: RunningRelay, records: int) -> Figures:
    store = target.directory / "client.sqlite3"
    client = crdtsync.Client(target.url, token=target.token("newcomer"), store=store, schema=CONFIG)
    with Clock(target.pid) as timed:
        async with client:
            await client.sync(timeout=TIMEOUT)
            synced = client.summary()[OBJECT]["synced"]
    if synced != records:
        raise RuntimeError(f"initial sync: the client holds {synced} records, not {records}")
    return {
        "client_seconds": timed.seconds,
        "client_records_per_s": rate(records, timed.seconds),
        "client_cpu_s": timed.client_cpu,
        "client_cpu_us_per_record": 1e6 * timed.client_cpu / records,
        "client_store_mb": _database_bytes(target.directory, "client") / 2**20,
    }


# -- registry -----------------------------------------------------------------------------


WORKLOADS = (
    Workload("drain", run_drain, "client with offline edits comes online: seconds to drain"),
    Workload("storm", run_storm, "many clients with offline edits come online at once"),
    Workload("resume", run_resume, "catch up after missing K changes in a store of N records"),
    Workload("fanout", run_fanout, "1 writer, many subscribers: push-to-receive latency"),
    Workload(
        "fanout_pg2", run_fanout_pg2, "as fanout, writer and subscribers on two PostgreSQL relays"
    ),
    Workload("memory", run_memory, "relay RSS with many stored records and idle clients"),
    Workload("initial_sync", run_initial_sync, "a new replica receives every stored record"),
)
