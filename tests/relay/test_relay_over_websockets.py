"""The relay over real websockets: bad input gets precise errors while everyone else
keeps syncing; retransmissions apply once; resume sends only what was missed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from crdtsync import Status
from crdtsync.core.protocol import (
    Ack,
    CaughtUp,
    ChangeFrame,
    Changes,
    Error,
    ErrorCode,
    Hello,
    Push,
    Rejected,
    Verdicts,
)
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import RawConnection, RelayHarness

pytestmark = pytest.mark.asyncio


def account_create(relay: RelayHarness, record_id: str, name: str, client_id: int) -> ChangeFrame:
    doc = RecordDoc(relay.config.schema.object("Account"), client_id=client_id)
    doc.write({"Name": name})
    return ChangeFrame(
        change_id=f"change-{record_id}",
        record_id=record_id,
        object="Account",
        kind="create",
        base_version=0,
        field_bases={},
        delta=doc.full_update(),
    )


async def test_malformed_frame_gets_an_error_and_the_connection_keeps_working(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    async with raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("mallory"))
        await raw.send(b"\xc1 definitely not msgpack")
        error = await raw.receive()
        assert isinstance(error, Error) and not error.fatal
        assert error.code is ErrorCode.MALFORMED_FRAME
        await raw.send(msgpack.packb({"type": "push", "changes": [{"id": "x"}]}))
        error = await raw.receive()
        assert isinstance(error, Error) and "push.changes[0]" in error.message
        await raw.send(msgpack.packb({"type": "teleport"}))
        error = await raw.receive()
        assert isinstance(error, Error) and error.code is ErrorCode.UNKNOWN_FRAME_TYPE
        await raw.send(Push((account_create(relay, "r-ok", "Still fine", 1001),)))
        verdicts = await raw.receive()
        assert isinstance(verdicts, Verdicts) and isinstance(verdicts.items[0], Ack)


async def test_garbage_crdt_update_gets_an_error_verdict_while_another_client_syncs(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    alice = relay.client("alice")
    async with alice, raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("mallory"))
        garbage = ChangeFrame(
            change_id="bad-1",
            record_id="r-bad",
            object="Account",
            kind="create",
            base_version=0,
            field_bases={},
            delta=b"\x01\x02\x03garbage",
        )
        await raw.send(Push((garbage,)))
        [verdict] = (await raw.receive()).items  # type: ignore[attr-defined]
        assert isinstance(verdict, Rejected)
        assert verdict.code is ErrorCode.INVALID_UPDATE
        assert "undecodable" in verdict.message
        rid = alice.create("Account", {"Name": "Unbothered"})
        await alice.sync()
        assert alice.get(rid).status is Status.SYNCED  # type: ignore[union-attr]
        assert relay.storage.get_record("r-bad") is None
        assert relay.storage.integrity_check() == "ok"


async def test_update_touching_another_root_is_refused_and_stores_nothing(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    import pycrdt

    doc = pycrdt.Doc(client_id=4242)
    doc.get("fields", type=pycrdt.Map)["Name"] = "Acme"
    doc.get("secrets", type=pycrdt.Map)["admin"] = True
    change = ChangeFrame(
        change_id="c-root",
        record_id="r-root",
        object="Account",
        kind="create",
        base_version=0,
        field_bases={},
        delta=doc.get_update(),
    )
    async with raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("mallory"))
        await raw.send(Push((change,)))
        [verdict] = (await raw.receive()).items  # type: ignore[attr-defined]
        assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.OTHER_ROOT
        assert "secrets" in verdict.message
    assert relay.storage.get_record("r-root") is None


async def test_retransmitted_push_is_applied_once(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    change = account_create(relay, "r-once", "Once", 3003)
    acks = []
    for _attempt in range(2):  # the second connection resends what the first sent
        async with raw_connect() as websocket:
            raw = RawConnection(websocket)
            await raw.handshake(relay.token("alice"), replica="phone")
            await raw.send(Push((change,)))
            [verdict] = (await raw.receive()).items  # type: ignore[attr-defined]
            assert isinstance(verdict, Ack)
            acks.append(verdict.version)
    assert acks[0] == acks[1]
    storage = relay.storage
    assert storage is not None
    assert [c.change_id for c in storage.changes_of("r-once")] == ["change-r-once"]
    assert storage.seq == acks[0]


async def test_resume_after_reconnect_receives_only_what_was_missed(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    writer = relay.client("alice")
    async with writer:
        ids = [writer.create("Account", {"Name": f"Account {i}"}) for i in range(30)]
        await writer.sync()
        async with raw_connect() as websocket:
            frames = await RawConnection(websocket).handshake(relay.token("bob"))
        everything = [item for f in frames if isinstance(f, Changes) for item in f.items]
        assert len(everything) == 30
        cursor = frames[-1].cursor  # type: ignore[attr-defined]
        for n in range(3):
            writer.update(ids[7], {"Employees": n})
            await writer.sync()
        async with raw_connect() as websocket:
            frames = await RawConnection(websocket).handshake(relay.token("bob"), cursor=cursor)
        missed = [item for f in frames if isinstance(f, Changes) for item in f.items]
        assert [item.record_id for item in missed] == [ids[7]]
        assert isinstance(frames[-1], CaughtUp) and frames[-1].cursor == cursor + 3
        replica = RecordDoc(relay.config.schema.object("Account"))
        replica.apply(everything[7].update)
        replica.apply(missed[0].update)
        assert replica.read()["Employees"] == 2


async def test_unsupported_protocol_version_is_refused_at_the_handshake(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    async with raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.send(Hello((99,), relay.token("alice"), "future"))
        error = await raw.receive()
        assert isinstance(error, Error) and error.fatal
        assert error.code is ErrorCode.UNSUPPORTED_VERSION
        assert "99" in error.message
        await websocket.wait_closed()
        assert websocket.close_code == 1002


async def test_bad_token_is_refused_with_a_clear_reason(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    async with raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.send(Hello((1,), "not-a-token", "mallory"))
        error = await raw.receive()
        assert isinstance(error, Error) and error.code is ErrorCode.AUTH_FAILED
        await websocket.wait_closed()
        assert websocket.close_code == 1008


async def test_oversized_frame_closes_with_1009_and_the_relay_keeps_serving(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    websocket = await raw_connect()  # not "async with": the relay closes it first
    raw = RawConnection(websocket)
    await raw.handshake(relay.token("mallory"))
    await raw.send(b"\x00" * (relay.config.max_frame_bytes + 1))
    await websocket.wait_closed()
    assert websocket.close_code == 1009
    alice = relay.client("alice")
    async with alice:
        alice.create("Account", {"Name": "Still here"})
        await alice.sync()
        assert alice.pending() == []


async def test_identity_comes_from_the_token_not_from_the_frame(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    change = account_create(relay, "r-who", "Who", 5005)
    async with raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("alice"), replica="bob's phone")
        await raw.send(Push((change,)))
        await raw.receive()
    [row] = relay.storage.changes_of("r-who")
    assert row.user == "alice"
    bob = relay.client("bob")
    async with bob:
        await bob.sync()
        assert bob.get("r-who").fields["Owner"] == "alice"  # type: ignore[union-attr]


async def test_relay_refuses_operations_it_rejected_when_they_come_back(
    relay: RelayHarness, raw_connect: Callable[[], Any]
) -> None:
    """A replica that keeps a rejected write (no rebuild) and pushes it again inside a
    later change must not see it win on the relay (the zombie-op scenario)."""
    schema = relay.config.schema.object("Account")
    bob = relay.client("bob")
    async with bob, raw_connect() as websocket:
        raw = RawConnection(websocket)
        await raw.handshake(relay.token("mallory"), replica="zombie-phone")
        zombie = RecordDoc(schema, client_id=2**52)  # higher than bob's: it would win
        zombie.write({"Name": "Acme"})
        create = ChangeFrame(
            change_id="z-1",
            record_id="r-z",
            object="Account",
            kind="create",
            base_version=0,
            field_bases={},
            delta=zombie.full_update(),
        )
        await raw.send(Push((create,)))
        [ack] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
        assert isinstance(ack, Ack)
        await bob.sync()
        bob.update("r-z", {"Name": "Bob's name"})
        await bob.sync()
        relay_state = relay.storage.get_record("r-z").state  # type: ignore[union-attr]
        before = zombie.state()
        zombie.write({"Name": "Rejected name"})
        rejected_write = zombie.delta(before)
        conflict = ChangeFrame(
            change_id="z-2",
            record_id="r-z",
            object="Account",
            kind="update",
            base_version=1,
            field_bases={},
            delta=rejected_write,
        )
        await raw.send(Push((conflict,)))
        [verdict] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
        assert verdict.__class__.__name__ == "Conflict"
        # No rebuild: learn bob's version, edit another field, push everything since.
        zombie.apply(relay_state)
        zombie.write({"Industry": "Energy"})
        relay_view = RecordDoc.from_update(schema, relay_state)
        sneaky = ChangeFrame(
            change_id="z-3",
            record_id="r-z",
            object="Account",
            kind="update",
            base_version=2,
            field_bases={},
            delta=zombie.delta(relay_view.state()),
        )
        await raw.send(Push((sneaky,)))
        [verdict] = (await raw.receive_until(Verdicts))[-1].items  # type: ignore[attr-defined]
        assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.REFUSED_OPS
        await bob.sync()
        assert bob.get("r-z").fields["Name"] == "Bob's name"  # type: ignore[union-attr]
        assert "Industry" not in bob.get("r-z").fields  # type: ignore[union-attr]


async def test_a_backlog_larger_than_the_send_queue_is_sent_in_batches(tmp_path: Any) -> None:
    """The backlog is produced as the replica reads it: a first sync bigger than the
    relay's per-connection queue bound completes instead of being cut off as too slow."""
    relay = RelayHarness(tmp_path, max_queued_bytes=20_000)
    await relay.start()
    try:
        writer = relay.client("alice")
        async with writer:
            for i in range(600):
                writer.create("Account", {"Name": f"Account {i}", "Website": "x" * 100})
            await writer.sync(timeout=60)
        reader = relay.client("bob")
        async with reader:
            await reader.sync(timeout=60)
            assert len(reader.records("Account")) == 600
    finally:
        await relay.stop()
