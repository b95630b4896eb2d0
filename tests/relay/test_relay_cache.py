"""The relay's record cache only ever holds the latest version of a record."""

from __future__ import annotations

import attrs
from crdtsync_server.config import RelayConfig
from crdtsync_server.policy import Principal
from crdtsync_server.relay import Relay
from crdtsync_server.storage import RelayStorage

from crdtsync.core.protocol import Ack, ChangeFrame, Changes, Conflict, decode
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import EXAMPLE_CONFIG


@attrs.define(eq=False)
class Listener:
    """A session stand-in subscribed to Accounts, collecting what is fanned out to it."""

    principal: Principal
    subscriptions: frozenset[str] = frozenset({"Account"})
    received: list[Changes] = attrs.field(factory=list)

    def deliver_fanout_encoded(self, data: bytes) -> None:
        frame = decode(data)
        assert isinstance(frame, Changes)
        self.received.append(frame)


def test_a_refused_change_followed_by_fan_out_does_not_leave_a_stale_record_cached() -> None:
    """A push that accepts an edit and then refuses an invalid one (which drops the
    cached document) fans the accepted edit out; later edits must still apply to the
    latest version, not to a version reloaded from the earlier accepted row."""
    config = RelayConfig.from_toml(EXAMPLE_CONFIG)
    relay = Relay(schema=config.schema, policy=config.policy, storage=RelayStorage(":memory:"))
    alice = Listener(Principal("alice", "phone"), frozenset())
    bob = Listener(Principal("bob", "laptop"))
    relay.sessions.add(bob)  # type: ignore[arg-type]
    spec = config.schema.object("Account")
    doc = RecordDoc(spec, client_id=4001)
    doc.write({"Name": "Acme"})
    n = iter(range(1000))

    def frame(delta: bytes, kind: str = "update") -> ChangeFrame:
        return ChangeFrame(
            change_id=f"c{next(n)}",
            record_id="r",
            object="Account",
            kind=kind,
            base_version=0,
            field_bases={},
            delta=delta,
        )

    [created] = relay.push(alice, [frame(doc.full_update(), "create")]).items  # type: ignore[arg-type]
    assert isinstance(created, Ack)
    first = frame(doc.write({"Employees": 1}))
    second = frame(doc.write({"Employees": 2}))
    fork = RecordDoc.from_update(spec, doc.full_update(), client_id=4002)
    invalid = frame(fork.write({"Employees": -1}))
    verdicts = relay.push(alice, [first, second, invalid]).items  # type: ignore[arg-type]
    assert [type(v) for v in verdicts] == [Ack, Ack, Conflict]
    assert bob.received  # the fan-out ran after the cached document was dropped
    [third] = relay.push(alice, [frame(doc.write({"Employees": 3}))]).items  # type: ignore[arg-type]
    assert isinstance(third, Ack), third


def test_an_invalid_plain_value_is_refused_before_it_touches_the_cached_document() -> None:
    from crdtsync_server.merge import RecordState, Refused, decide

    config = RelayConfig.from_toml(EXAMPLE_CONFIG)
    relay = Relay(schema=config.schema, policy=config.policy, storage=RelayStorage(":memory:"))
    alice = Listener(Principal("alice", "phone"), frozenset())
    spec = config.schema.object("Account")
    doc = RecordDoc(spec, client_id=4001)
    doc.write({"Name": "Acme"})
    create = ChangeFrame(
        change_id="c0",
        record_id="r",
        object="Account",
        kind="create",
        base_version=0,
        field_bases={},
        delta=doc.full_update(),
    )
    assert isinstance(relay.push(alice, [create]).items[0], Ack)  # type: ignore[arg-type]
    stored = relay.storage.get_record("r")
    assert stored is not None
    state = RecordState.load(stored, spec, relay.client_id)
    before = state.doc.full_update()
    bad = ChangeFrame(
        change_id="c1",
        record_id="r",
        object="Account",
        kind="update",
        base_version=stored.version,
        field_bases={},
        delta=doc.write({"Industry": "Mining", "Employees": -5}),
    )
    decision = decide(
        bad,
        state,
        principal=alice.principal,
        schema=config.schema,
        policy=config.policy,
        context=relay.storage,
        relay_client_id=relay.client_id,
        facts=relay.facts(stored, state),
    )
    assert isinstance(decision, Refused) and not decision.dirty
    assert isinstance(decision.verdict, Conflict)
    assert {e.field for e in decision.verdict.errors} == {"Industry", "Employees"}
    assert state.doc.full_update() == before
