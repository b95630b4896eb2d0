"""Pre-generated record changes: every throughput workload replays the same updates.

A load is built once per set of sizes (and cached), before any clock starts. Each
client has its own CRDT client id and its own records; a record is created by one
change (``Name`` and ``Employees``), then edited ``edits`` times, each edit a
:meth:`crdtsync.core.record.RecordDoc.write` of one field (``Employees = k``), so each
delta is one small Yjs update. Edits are ordered edit-major (edit 1 of every record,
then edit 2...), the order a client pushes them in.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from crdtsync.core.record import RecordDoc
from crdtsync.core.schema import ObjectSpec, Schema

from .common import REPO

CONFIG = REPO / "server" / "example" / "app.toml"
OBJECT = "Account"
FIELD = "Employees"
CLIENT_ID_BASE = 1_000  #: client c edits as CRDT client id CLIENT_ID_BASE + c
FORK_ID_BASE = 1 << 40  #: fresh CRDT client ids of invalid and conflicting changes

#: The Account fields the shared-records variant gives one client each, with the value
#: of its k-th write (consecutive values differ, so every write is an operation).
SHARED_FIELDS: dict[str, Callable[[int], Any]] = {
    "Employees": lambda k: k,
    "Website": lambda k: f"https://example.com/{k}",
    "Name": lambda k: f"Shared account {k}",
    "Active": lambda k: k % 2 == 0,
    "Industry": lambda k: ("Energy", "Retail", "Technology")[k % 3],
    "Rating": lambda k: ("Hot", "Warm", "Cold")[k % 3],
    "Revenue": lambda k: Decimal(1000 * k),
}


@dataclass(frozen=True)
class Change:
    """One change as a replica pushes it. ``stale``: its base is the record's first
    known version (the create), not the latest one."""

    change_id: str
    record: str
    kind: str  #: "create" or "update"
    field: str | None
    delta: bytes
    stale: bool = False


@dataclass(frozen=True)
class ClientLoad:
    """One replica's changes: ``setup`` is pushed before the clock starts, ``timed``
    while it runs. ``states`` is the replica's full document of each record it edits
    after all its edits (what a peer must have absorbed)."""

    index: int
    user: str
    replica: str
    client_id: int
    setup: tuple[Change, ...]
    timed: tuple[Change, ...]
    states: Mapping[str, bytes] = field(default_factory=dict)
    gate: str | None = None  #: start once replica ``gate`` has edited each of our records

    @property
    def records(self) -> tuple[str, ...]:
        """The records this client edits, in order."""
        return tuple(dict.fromkeys(change.record for change in self.timed))


@dataclass(frozen=True)
class Load:
    clients: tuple[ClientLoad, ...]

    @property
    def timed_changes(self) -> int:
        return sum(len(client.timed) for client in self.clients)

    def creates(self) -> Iterator[Change]:
        for client in self.clients:
            yield from (change for change in client.setup if change.kind == "create")


@functools.cache
def schema() -> Schema:
    return Schema.from_toml(CONFIG)


def account() -> ObjectSpec:
    return schema().objects[OBJECT]


def record_id(client: int, record: int) -> str:
    return f"acc-{client:03d}-{record:05d}"


@functools.cache
def own_records(clients: int, records: int, edits: int) -> Load:
    """Each client creates ``records`` records of its own and edits ``Employees`` on
    each of them ``edits`` times."""
    return Load(tuple(_own_client(c, records, edits) for c in range(clients)))


def _own_client(index: int, records: int, edits: int) -> ClientLoad:
    client_id = CLIENT_ID_BASE + index
    docs = {record_id(index, r): RecordDoc(account(), client_id=client_id) for r in range(records)}
    creates = tuple(
        Change(f"{rid}-c", rid, "create", None, doc.write({"Name": f"Account {rid}", FIELD: 0}))
        for rid, doc in docs.items()
    )
    timed = tuple(
        Change(f"{rid}-e{k}", rid, "update", FIELD, docs[rid].write({FIELD: k}))
        for k in range(1, edits + 1)
        for rid in docs
    )
    return ClientLoad(
        index=index,
        user=f"user{index:03d}",
        replica=f"replica-{index:03d}",
        client_id=client_id,
        setup=creates,
        timed=timed,
        states={rid: doc.full_update() for rid, doc in docs.items()},
    )


@functools.cache
def shared_records(clients: int, records: int, edits: int) -> Load:
    """The same edits per client, on shared records: clients form groups of ``F`` (the
    number of :data:`SHARED_FIELDS`); a group's ``records`` records are edited by all
    its clients, client ``c`` writing field ``SHARED_FIELDS[c % F]`` only, so up to
    ``F`` replicas edit each record concurrently and no edit conflicts. The first
    client of a group creates its records (all fields set)."""
    names = list(SHARED_FIELDS)
    initial = {name: value(0) for name, value in SHARED_FIELDS.items()}
    out = []
    creates: tuple[Change, ...] = ()
    for c in range(clients):
        group, name, client_id = c // len(names), names[c % len(names)], CLIENT_ID_BASE + c
        rids = [f"shared-{group:03d}-{r:05d}" for r in range(records)]
        if c % len(names) == 0:
            docs = {rid: RecordDoc(account(), client_id=client_id) for rid in rids}
            creates = tuple(
                Change(f"{rid}-c", rid, "create", None, docs[rid].write(initial)) for rid in rids
            )
        else:
            docs = {
                create.record: RecordDoc.from_update(account(), create.delta, client_id=client_id)
                for create in creates
            }
        timed = tuple(
            Change(f"{rid}-{c}-e{k}", rid, "update", name, docs[rid].write({name: value}))
            for k in range(1, edits + 1)
            for value in (SHARED_FIELDS[name](k),)
            for rid in rids
        )
        out.append(
            ClientLoad(
                index=c,
                user=f"user{c:03d}",
                replica=f"replica-{c:03d}",
                client_id=client_id,
                setup=creates if c % len(names) == 0 else (),
                timed=timed,
                states={rid: doc.full_update() for rid, doc in docs.items()},
            )
        )
    return Load(tuple(out))


@functools.cache
def with_rejections(clients: int, records: int, edits: int, every: int = 8) -> Load:
    """The own-records load plus, per ``every`` valid edits, one invalid change and one
    conflicting change (with ``every = 8``: 80 % valid, 10 % invalid, 10 % conflicting).

    An *invalid* change follows a valid edit of the same record on the same
    connection: ``Employees = -1`` (breaks ``min = 0``) or ``Industry = "Bogus"`` (not
    in the picklist), written with :meth:`RecordDoc.write` (which does not validate)
    on a copy of the record under a fresh CRDT client id, as a replica that threw its
    refused operations away would. A *conflicting* change comes from a second replica
    of the same user (a "rival" connection): ``Employees`` written on the record as
    created, pushed with that stale base once the owner has edited the record.
    """
    base = own_records(clients, records, edits)
    fresh = itertools.count(FORK_ID_BASE)
    out: list[ClientLoad] = []
    for client in base.clients:
        main = _with_invalid(client, every, fresh)
        out.append(main)
        out.append(_rival(client, len(client.timed) // every, fresh))
    return Load(tuple(out))


def _with_invalid(client: ClientLoad, every: int, fresh: Iterator[int]) -> ClientLoad:
    docs = {c.record: RecordDoc.from_update(account(), c.delta) for c in client.setup}
    timed: list[Change] = []
    for i, edit in enumerate(client.timed, start=1):
        docs[edit.record].apply(edit.delta)
        timed.append(edit)
        if i % every == 0:
            fork = RecordDoc.from_update(
                account(), docs[edit.record].full_update(), client_id=next(fresh)
            )
            name, value = (FIELD, -1) if (i // every) % 2 else ("Industry", "Bogus")
            delta = fork.write({name: value})
            timed.append(Change(f"{edit.record}-bad{i}", edit.record, "update", name, delta))
    return ClientLoad(
        index=client.index,
        user=client.user,
        replica=client.replica,
        client_id=client.client_id,
        setup=client.setup,
        timed=tuple(timed),
        states=client.states,
    )


def _rival(client: ClientLoad, count: int, fresh: Iterator[int]) -> ClientLoad:
    timed = []
    for i in range(count):
        create = client.setup[i % len(client.setup)]
        fork = RecordDoc.from_update(account(), create.delta, client_id=next(fresh))
        delta = fork.write({FIELD: 1_000_000 + i})
        timed.append(
            Change(f"{create.record}-rival{i}", create.record, "update", FIELD, delta, True)
        )
    return ClientLoad(
        index=client.index,
        user=client.user,
        replica=f"{client.replica}-rival",
        client_id=0,
        setup=(),
        timed=tuple(timed),
        gate=client.replica,
    )


def account_values(index: int) -> dict[str, Any]:
    """A plausible CRM account: five fields of the example app's ``Account`` (the stores
    and the first syncs of the sync-cost workloads are made of these)."""
    return {
        "Name": f"Account {index:06d}",
        "Industry": ("Energy", "Retail", "Technology")[index % 3],
        FIELD: index % 5000,
        "Website": f"https://account-{index:06d}.example.com",
        "Active": index % 2 == 0,
    }
