"""Raw protocol helpers for end-to-end checks of what the relay sends: hand-driven
sessions (:func:`raw_session`), one-change pushes, hand-made changes and CRDT deltas,
and :func:`assert_never_sent` (no secret, no hidden field in any frame)."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pycrdt
from crdtsync_server.admin_client import AdminClient
from websockets.asyncio.client import connect

from crdtsync.core.protocol import (
    MAX_RELAY_FRAME_BYTES,
    Ack,
    ChangeFrame,
    Changes,
    Conflict,
    Push,
    Verdicts,
    Welcome,
    decode,
)
from tests.helpers.harness import RawConnection, RelayHarness


def carried_updates(frame: object) -> Iterator[tuple[str, bytes]]:
    """(record id, CRDT update) of every update a frame carries."""
    if isinstance(frame, Changes):
        for item in frame.items:
            yield item.record_id, item.update
    elif isinstance(frame, Verdicts):
        for verdict in frame.items:
            if isinstance(verdict, Ack | Conflict):
                yield verdict.record_id, verdict.update


def fields_of(doc: pycrdt.Doc[Any]) -> dict[str, Any]:
    fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
    return dict(fields.to_py() or {})


def assert_never_sent(
    messages: Iterable[bytes],
    secrets: Iterable[str] = (),
    hidden: frozenset[str] = frozenset(),
    object_name: str = "Account",
) -> None:
    """No secret string in any message's bytes; no ``hidden`` field in any update the
    messages carry (alone, or accumulated per record), in a conflict or field error, or
    in the schema of a welcome."""
    secrets = list(secrets)
    replicas: dict[str, pycrdt.Doc[Any]] = {}
    for data in messages:
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} sent in {decode(data)!r}"
        frame = decode(data, max_bytes=MAX_RELAY_FRAME_BYTES)
        for record_id, update in carried_updates(frame):
            if not update:
                continue
            alone: pycrdt.Doc[Any] = pycrdt.Doc()
            alone.apply_update(update)
            assert not hidden & set(fields_of(alone)), f"hidden field in {frame!r}"
            replicas.setdefault(record_id, pycrdt.Doc()).apply_update(update)
        if isinstance(frame, Verdicts):
            for verdict in frame.items:
                if isinstance(verdict, Conflict):
                    named = {c.field for c in verdict.conflicts} | {e.field for e in verdict.errors}
                    assert not hidden & named, f"hidden field named in {verdict!r}"
        if isinstance(frame, Welcome) and object_name in frame.schema:
            assert not hidden & set(frame.schema[object_name]["fields"])
    for record_id, doc in replicas.items():
        values = fields_of(doc)
        assert not hidden & set(values), f"record {record_id} accumulated {values}"
        assert not any(secret in str(values) for secret in secrets), values


def admin(relay: RelayHarness) -> AdminClient:
    return AdminClient(relay.url, relay.server.authority.issue("root", admin=True))


@contextlib.asynccontextmanager
async def raw_session(url: str, token: str, cursor: int = 0, replica: str | None = None) -> Any:
    """A hand-driven, subscribed connection (as ``replica``: a new one unless given);
    yields it and the frames of its backlog."""
    async with connect(url, max_size=None) as websocket:
        raw = RawConnection(websocket)
        replica = replica or f"raw-{uuid.uuid4().hex}"
        backlog = await raw.handshake(token, replica=replica, cursor=cursor)
        yield raw, backlog


async def push_one(raw: RawConnection, change: ChangeFrame) -> Any:
    """Push one change; return its verdict (other frames in between are skipped)."""
    await raw.send(Push((change,)))
    [*_, verdicts] = await raw.receive_until(Verdicts)
    assert isinstance(verdicts, Verdicts)
    [verdict] = verdicts.items
    return verdict


def delta_writing(values: dict[str, Any], client_id: int | None = None) -> bytes:
    """A CRDT update writing ``values`` into the ``fields`` map, from a document of the
    writer's own (``client_id``: a fresh one unless given)."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id or secrets.randbits(53) or 1)
    fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
    with doc.transaction():
        for name, value in values.items():
            fields[name] = value
    return bytes(doc.get_update())


def change(
    record_id: str,
    object_name: str,
    kind: str,
    delta: bytes = b"",
    base: int = 0,
    change_id: str | None = None,
) -> ChangeFrame:
    return ChangeFrame(
        change_id=change_id or uuid.uuid4().hex,
        record_id=record_id,
        object=object_name,
        kind=kind,
        base_version=base,
        field_bases={},
        delta=delta,
    )
