"""What a client spends on what it receives, in-process: no relay, no sockets.

``client_apply`` feeds a real client's sync state machine
(:class:`~crdtsync.client.sync.SyncSession` over the :class:`crdtsync.Client`'s replica and
SQLite store, ``synchronous=NORMAL`` as a client opens it) the encoded frames a relay
would send it, and times :meth:`SyncSession.receive` alone:

* **fan-out** (``us_per_received``): ``client_apply_frames`` ``changes`` frames of
  ``client_apply_items`` items each, every item another user's single-field edit
  (``Employees``) of a distinct record the client already holds and has no pending
  change of (the storm's fan-out, without the relay and the websockets);
* **acks** (``us_per_ack``): the client's own edits of as many records, pushed in frames
  of ``client_apply_items`` changes and acknowledged by ``verdicts`` frames.

Setup (untimed): the records are created on the relay's side as a client creates them
(the example app's ``Account``, its text field made empty) and reach the client in
``changes`` frames. Every record ends as the relay's copy holds it (checked).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crdtsync
from crdtsync.client.sync import SyncSession, SyncState
from crdtsync.core.protocol import (
    PROTOCOL_VERSION,
    Ack,
    CaughtUp,
    Changes,
    Push,
    RecordChange,
    Verdicts,
    Welcome,
    decode,
    encode,
)
from crdtsync.core.record import RecordDoc

from .common import Figures, Size, rate
from .loads import CONFIG, FIELD, OBJECT, account_values

NAME = "client_apply"
SIZES = (
    Size("client_apply_frames", 50, 10, "client_apply: frames received"),
    Size("client_apply_items", 200, 200, "client_apply: items per frame (distinct records)"),
)
RELAY_CLIENT_ID = 7  #: the CRDT client id the "relay" creates records as
OTHER_CLIENT_ID = 11  #: and another user edits them as


def _values(index: int) -> dict[str, Any]:
    """An account as the relay created it: its five fields and an empty ``Description``."""
    return {**account_values(index), "Description": ""}


@dataclass
class Receiving:
    """A client's sync session, ready, its store holding records as the relay created them
    (``relay``: the relay's documents, at ``version``), and ``frames``: the encoded
    ``changes`` frames of another user's edit of each record, not received yet."""

    client: crdtsync.Client
    session: SyncSession
    relay: dict[str, RecordDoc]
    ids: list[str]
    version: int
    frames: list[bytes]


@contextlib.contextmanager
def receiving(frames: int, items: int) -> Iterator[Receiving]:
    """:class:`Receiving` for ``frames`` frames of ``items`` records each (a temporary
    store, closed and removed afterwards)."""
    records = frames * items
    schema = crdtsync.Schema.from_toml(CONFIG)
    spec = schema.object(OBJECT)
    with tempfile.TemporaryDirectory() as directory:
        client = crdtsync.Client(store=str(Path(directory) / "c.sqlite3"), schema=schema)
        try:
            session = SyncSession(client.replica, "token", on_event=lambda event: None)
            session.receive(
                encode(Welcome(PROTOCOL_VERSION, "bench", "relay-1", schema.to_wire(), (OBJECT,)))
            )
            session.receive(encode(CaughtUp(0)))
            assert session.state is SyncState.READY
            session.data_to_send()  # hello, subscribe
            version = 0
            relay: dict[str, RecordDoc] = {}
            ids = [f"acct-{i:06d}" for i in range(records)]
            for start in range(0, records, items):
                batch = []
                for i in range(start, start + items):
                    doc = RecordDoc(spec, client_id=RELAY_CLIENT_ID)
                    doc.write(_values(i))
                    relay[ids[i]] = doc
                    version += 1
                    batch.append(
                        RecordChange(
                            record_id=ids[i],
                            object=OBJECT,
                            version=version,
                            update=doc.full_update(),
                        )
                    )
                session.receive(encode(Changes(tuple(batch))))
            # Another user edits every record once: frames of distinct records.
            encoded = []
            for start in range(0, records, items):
                batch = []
                for i in range(start, start + items):
                    doc = relay[ids[i]]
                    editor = RecordDoc.from_update(
                        spec, doc.full_update(), client_id=OTHER_CLIENT_ID + i
                    )
                    update = editor.write({FIELD: 10_000 + i})
                    doc.apply(update)
                    version += 1
                    batch.append(
                        RecordChange(
                            record_id=ids[i],
                            object=OBJECT,
                            version=version,
                            update=update,
                            by="bob",
                        )
                    )
                encoded.append(encode(Changes(tuple(batch))))
            yield Receiving(client, session, relay, ids, version, encoded)
        finally:
            client.close()


def run(options: Any) -> Figures:
    """a client receives fan-out and acks in-process: µs per received change and per ack"""
    frames, items = options.client_apply_frames, options.client_apply_items
    records = frames * items
    with receiving(frames, items) as bench:
        client, session, relay, ids = bench.client, bench.session, bench.relay, bench.ids
        version = bench.version
        per_frame = []
        for data in bench.frames:
            started = time.perf_counter()
            session.receive(data)
            per_frame.append(time.perf_counter() - started)
        received = sum(per_frame)
        # The client's own edits, pushed and acknowledged.
        for i, record_id in enumerate(ids):
            client.update(record_id, {FIELD: 30_000 + i})
        acked, acks = 0.0, 0
        while True:
            session.push()
            pushes = [decode(data) for data in session.data_to_send()]
            if not pushes:
                break
            for push in pushes:
                assert isinstance(push, Push)
                verdicts = []
                for change in push.changes:
                    version += 1
                    relay[change.record_id].apply(change.delta)
                    verdicts.append(
                        Ack(
                            change_id=change.change_id,
                            record_id=change.record_id,
                            version=version,
                        )
                    )
                data = encode(Verdicts(tuple(verdicts)))
                started = time.perf_counter()
                session.receive(data)
                acked += time.perf_counter() - started
                acks += len(verdicts)
        if client.pending():
            raise RuntimeError(f"client_apply: {len(client.pending())} changes left pending")
        wrong = sum(
            client.get(record_id).fields != relay[record_id].read()  # type: ignore[union-attr]
            for record_id in ids
        )
        if wrong or client.replica.cursor != version:
            raise RuntimeError(
                f"client_apply: {wrong} records differ from the relay's, cursor "
                f"{client.replica.cursor} (expected {version})"
            )
    return {
        "received": records,
        "received_per_s": rate(records, received),
        "us_per_received": 1e6 * received / records,
        "us_per_received_median_frame": 1e6 * statistics.median(per_frame) / items,
        "acks": acks,
        "us_per_ack": 1e6 * acked / acks if acks else 0.0,
    }
