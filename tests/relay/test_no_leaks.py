"""A replica never receives, in any frame, a record, field or update it may not read.

Every message the relay sends is captured on its way to the socket (a tap on
``RelaySession.data_to_send``, which is all the transport ever sends) and filed under
the user of the session it goes to. The assertions look at those raw bytes (the
secret's encoded string must not occur), and at every CRDT update the frames carry,
applied alone to a fresh ``pycrdt`` document and accumulated per record the way a
replica would (the hidden field must not be there).

(a) hidden fields: ``Account.Revenue`` is hidden from role ``intern`` and
``Account.Rating`` read-only for it (``server/example/app.toml``);
(b) private records: an ``Opportunity`` is readable by its owner and whoever it is
shared with, nobody else;
(c) forged identity: replica ids, record ids, change ids and owners that belong to
someone else.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import pycrdt
import pytest
from crdtsync_server.admin_client import AdminClient
from crdtsync_server.app import RelayServer
from crdtsync_server.config import RelayConfig
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdtsync import Client, FieldType, Status, UnresolvableReason
from crdtsync.core.protocol import (
    Ack,
    CaughtUp,
    Changes,
    Conflict,
    Error,
    ErrorCode,
    Hello,
    Rejected,
    Unresolvable,
    Verdicts,
    Welcome,
    decode,
)
from tests.helpers.harness import (
    EXAMPLE_CONFIG,
    OnRelayThread,
    RawConnection,
    RelayHarness,
    Wire,
    eventually,
)
from tests.helpers.wire import (
    admin,
    assert_never_sent,
    change,
    delta_writing,
    fields_of,
    push_one,
    raw_session,
)

REVENUES = [
    Decimal("987654.321"),
    Decimal("876543.219"),
    Decimal("765432.198"),
    Decimal("654321.987"),
    Decimal("543219.876"),
]
AMOUNTS = [Decimal("4242.4242"), Decimal("5353.5353"), Decimal("6464.6464")]
DEAL_NAME = "Project Nightjar"


def encoded(value: Decimal) -> str:
    """How the value travels inside a CRDT update."""
    return str(FieldType.DECIMAL.encode(value))


REVENUE_SECRETS = [encoded(value) for value in REVENUES]


# -- what "nothing leaked" means -----------------------------------------------------------


def field(client: Client, record_id: str, name: str) -> object:
    record = client.get(record_id)
    return None if record is None else record.fields.get(name)


# -- relays, clients, raw connections -------------------------------------------------------


def intern(relay: RelayHarness, user: str = "ivan") -> Client:
    """A real replica of a user whose token carries the role ``intern``."""
    return Client(
        relay.url,
        token=relay.server.authority.issue(user, roles=["intern"]),
        store=str(relay.tmp_path / f"{user}.sqlite3"),
        schema=EXAMPLE_CONFIG,
        backoff_initial=0.05,
        backoff_max=0.5,
    )


def intern_token(relay: RelayHarness, user: str = "ivan") -> str:
    return relay.server.authority.issue(user, roles=["intern"])


async def sweep_backlogs(url: str, token: str, last: int) -> dict[int, list[Any]]:
    """The backlog a replica of ``token``'s user gets from every cursor 0..last."""
    backlogs = {}
    for cursor in range(last + 1):
        async with raw_session(url, token, cursor) as (_raw, backlog):
            backlogs[cursor] = backlog
    return backlogs


def stored_state(relay: RelayHarness, record_id: str) -> tuple[bytes, int, bool, int]:
    """What the relay holds for the record: state, version, deleted, number of changes."""
    storage = relay.storage
    assert storage is not None
    record = storage.get_record(record_id)
    assert record is not None
    return record.state, record.version, record.deleted, len(storage.changes_of(record_id))


def stored_values(relay: RelayHarness, record_id: str) -> dict[str, Any]:
    state = stored_state(relay, record_id)[0]
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(state)
    return fields_of(doc)


async def private_deal(alice: Client, amount: Decimal = AMOUNTS[0]) -> str:
    account = alice.create("Account", {"Name": "Acme"})
    deal = alice.create(
        "Opportunity",
        {"Name": DEAL_NAME, "Account": account, "Stage": "Proposal", "Amount": amount},
    )
    await alice.sync()
    assert alice.pending() == []
    return deal


# == (a) hidden fields ======================================================================


async def test_intern_welcome_schema_leaves_out_hidden_fields_and_marks_read_only_ones(
    relay: RelayHarness, wire: Wire
) -> None:
    async with raw_session(relay.url, intern_token(relay)):
        pass
    async with raw_session(relay.url, relay.token("alice")):
        pass
    [ivan_welcome] = [f for f in wire.frames_to("ivan") if isinstance(f, Welcome)]
    [alice_welcome] = [f for f in wire.frames_to("alice") if isinstance(f, Welcome)]
    ivan_fields = ivan_welcome.schema["Account"]["fields"]
    assert "Revenue" not in ivan_fields
    assert ivan_fields["Rating"].get("read_only") is True
    assert "Revenue" in alice_welcome.schema["Account"]["fields"]
    assert not any(b"Revenue" in data for data in wire.to("ivan"))


async def test_hidden_field_never_reaches_an_intern_on_first_sync_fan_out_or_resume(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, ivan = relay.client("alice"), intern(relay)
    async with alice, ivan:
        acct = alice.create(
            "Account",
            {
                "Name": "Acme",
                "Revenue": REVENUES[0],
                "Rating": "Warm",
                "Employees": 10,
                "Description": "Public notes",
            },
        )
        await alice.sync()

        await ivan.sync()  # first sync, cursor 0
        first = ivan.get(acct)
        assert first is not None and first.fields["Name"] == "Acme"
        assert "Revenue" not in first.fields
        assert "Revenue" not in ivan.schema.objects["Account"].fields

        # live fan-out: a Revenue-only edit, then Revenue together with visible fields
        alice.update(acct, {"Revenue": REVENUES[1]})
        await alice.sync()
        alice.update(
            acct,
            {"Revenue": REVENUES[2], "Employees": 11, "Description": "Public notes, revised"},
        )
        await alice.sync()
        await eventually(lambda: field(ivan, acct, "Employees") == 11)
        assert field(ivan, acct, "Description") == "Public notes, revised"

        # resume (cursor > 0) after edits made while the intern was away
        ivan.go_offline()
        await eventually(lambda: not ivan.online)
        assert ivan.replica.cursor > 0
        alice.update(acct, {"Revenue": REVENUES[3], "Name": "Acme Corp"})
        await alice.sync()
        alice.update(acct, {"Revenue": REVENUES[4], "Description": "Final public notes"})
        await alice.sync()
        ivan.go_online()
        await ivan.sync()
        record = ivan.get(acct)
        assert record is not None
        assert record.fields["Name"] == "Acme Corp"
        assert record.fields["Description"] == "Final public notes"
        assert "Revenue" not in record.fields
        expected = {k: v for k, v in alice.get(acct).fields.items() if k != "Revenue"}  # type: ignore[union-attr]
        assert dict(record.fields) == expected

    # every backlog the intern could ask for, from each cursor the relay ever issued
    last = relay.storage.seq
    backlogs = await sweep_backlogs(relay.url, intern_token(relay), last)
    assert any(
        isinstance(f, Changes) and any(i.record_id == acct for i in f.items) for f in backlogs[0]
    )
    assert all(isinstance(backlog[-1], CaughtUp) for backlog in backlogs.values())
    assert wire.record_changes_to("ivan", acct)
    assert_never_sent(wire.to("ivan"), REVENUE_SECRETS, frozenset({"Revenue"}))
    assert stored_values(relay, acct)["Revenue"] == REVENUE_SECRETS[-1]  # it was written


async def test_conflict_verdict_for_an_intern_carries_no_hidden_field(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, ivan = relay.client("alice"), intern(relay)
    async with alice, ivan:
        acct = alice.create("Account", {"Name": "Acme", "Revenue": REVENUES[0]})
        await alice.sync()
        await ivan.sync()
        ivan.go_offline()
        ivan.update(acct, {"Name": "Acme (Ivan)"})
        alice.update(acct, {"Name": "Acme (Alice)", "Revenue": REVENUES[1]})
        await alice.sync()
        ivan.go_online()
        await ivan.sync()

        [pending] = ivan.pending()
        assert pending.status is Status.CONFLICT
        assert pending.problem is not None
        assert [(c.field, c.theirs) for c in pending.problem.conflicts] == [
            ("Name", "Acme (Alice)")
        ]
        verdicts = [
            v
            for f in wire.frames_to("ivan")
            if isinstance(f, Verdicts)
            for v in f.items
            if isinstance(v, Conflict)
        ]
        assert verdicts and all(v.update for v in verdicts)  # the rebase state was sent

        # resolving on top of the projected record keeps the hidden value intact
        ivan.resolve(acct)
        await ivan.sync()
        assert ivan.pending() == []
        await eventually(lambda: field(alice, acct, "Name") == "Acme (Ivan)")
        assert field(alice, acct, "Revenue") == REVENUES[1]
        assert stored_values(relay, acct)["Revenue"] == encoded(REVENUES[1])

    assert_never_sent(wire.to("ivan"), REVENUE_SECRETS, frozenset({"Revenue"}))


async def test_delete_conflict_verdict_for_an_intern_names_no_hidden_field_or_value(
    relay: RelayHarness, wire: Wire
) -> None:
    """An intern deletes an Account while someone else changes its Revenue: the
    conflict verdict must not carry the hidden field's name or its old/new values."""
    alice, ivan = relay.client("alice"), intern(relay)
    async with alice, ivan:
        acct = alice.create("Account", {"Name": "Acme", "Revenue": REVENUES[0]})
        await alice.sync()
        await ivan.sync()
        ivan.go_offline()
        ivan.delete(acct)
        alice.update(acct, {"Revenue": REVENUES[1]})
        await alice.sync()
        ivan.go_online()
        await ivan.sync()
        assert stored_state(relay, acct)[2] is False  # the concurrent delete was not applied
        [pending] = ivan.pending()
        assert pending.status is Status.CONFLICT
        assert pending.problem is not None
        assert all(c.field != "Revenue" for c in pending.problem.conflicts)

    assert_never_sent(wire.to("ivan"), REVENUE_SECRETS, frozenset({"Revenue"}))


async def test_admin_share_and_owner_change_send_an_intern_no_hidden_field(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, ivan = relay.client("alice"), intern(relay)
    async with alice, ivan, admin(relay) as root:
        acct = alice.create("Account", {"Name": "Acme", "Revenue": REVENUES[0]})
        await alice.sync()
        await ivan.sync()
        alice.update(acct, {"Revenue": REVENUES[1]})
        await alice.sync()
        await root.share(acct, "ivan", access="edit")
        await root.set_owner(acct, "ivan")
        await eventually(lambda: field(ivan, acct, "Owner") == "ivan")
        await root.unshare(acct, "ivan")
        await root.set_owner(acct, "alice")
        await eventually(lambda: field(ivan, acct, "Owner") == "alice")
        assert "Revenue" not in ivan.get(acct).fields  # type: ignore[union-attr]

    assert_never_sent(wire.to("ivan"), REVENUE_SECRETS, frozenset({"Revenue"}))


PRIVATE_HIDDEN_CONFIG = """
[server]
secret = "no-leaks-secret-0123456789abcdef0123"

[objects.Deal]
sharing = "private"

[objects.Deal.fields]
Name   = { type = "string", max_length = 80 }
Margin = { type = "decimal", hidden = ["intern"] }
Owner  = { type = "owner" }

[roles.default]
Deal = ["create", "read", "update", "delete"]

[roles.intern]
"""

MARGINS = [Decimal("31415.926535"), Decimal("27182.818284"), Decimal("14142.135623")]


class ConfiguredRelay:
    """A real relay on a configuration written by the test (cf. ``RelayHarness``)."""

    def __init__(self, tmp_path: Path, text: str) -> None:
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "app.toml"
        self.config_path.write_text(text)
        config = RelayConfig.from_toml(
            self.config_path, database=str(tmp_path / "relay.sqlite3"), port=0
        )
        self.server = RelayServer(config)

    async def __aenter__(self) -> ConfiguredRelay:
        await self.server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.server.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    @property
    def storage(self) -> Any:
        """The running relay's storage, used on the relay's thread."""
        return OnRelayThread(self.server, self.server.storage)

    def client(self, user: str, roles: tuple[str, ...] = ()) -> Client:
        return Client(
            self.url,
            token=self.server.authority.issue(user, roles=roles),
            store=str(self.tmp_path / f"{user}.sqlite3"),
            schema=self.config_path,
            backoff_initial=0.05,
            backoff_max=0.5,
        )


async def test_private_record_shared_with_an_intern_arrives_without_its_hidden_field(
    tmp_path: Path, wire: Wire
) -> None:
    """Gaining access sends the whole record: live (admin share) and on resume."""
    async with ConfiguredRelay(tmp_path, PRIVATE_HIDDEN_CONFIG) as relay:
        alice, ivan = relay.client("alice"), relay.client("ivan", ("intern",))
        root = AdminClient(relay.url, relay.server.authority.issue("root", admin=True))
        async with alice, ivan, root:
            deal = alice.create("Deal", {"Name": "Nightjar", "Margin": MARGINS[0]})
            await alice.sync()
            await ivan.sync()
            assert ivan.get(deal) is None
            await root.share(deal, "ivan", access="read")  # live: the whole state
            await eventually(lambda: field(ivan, deal, "Name") == "Nightjar")
            alice.update(deal, {"Margin": MARGINS[1], "Name": "Nightjar II"})
            await alice.sync()
            await eventually(lambda: field(ivan, deal, "Name") == "Nightjar II")
            await root.unshare(deal, "ivan")
            await eventually(lambda: ivan.get(deal) is None)
            ivan.go_offline()
            await eventually(lambda: not ivan.online)
            alice.update(deal, {"Margin": MARGINS[2], "Name": "Nightjar III"})
            await alice.sync()
            await root.share(deal, "ivan", access="read")
            ivan.go_online()
            await ivan.sync()  # resume: access gained since, so the whole state
            record = ivan.get(deal)
            assert record is not None and record.fields["Name"] == "Nightjar III"
            assert "Margin" not in record.fields
        last = relay.storage.seq
        token = relay.server.authority.issue("ivan", roles=["intern"])
        for cursor in range(last + 1):
            async with connect(relay.url, max_size=None) as websocket:
                await RawConnection(websocket).handshake(
                    token, replica=f"sweep-{cursor}", cursor=cursor, objects=("Deal",)
                )

    assert_never_sent(wire.to("ivan"), [encoded(m) for m in MARGINS], frozenset({"Margin"}), "Deal")


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ({"Revenue": encoded(Decimal("1.5"))}, ErrorCode.UNKNOWN_FIELD),
        ({"Rating": "Hot"}, ErrorCode.READ_ONLY_FIELD),
        ({"Name": "Renamed", "Revenue": encoded(Decimal("2.5"))}, ErrorCode.UNKNOWN_FIELD),
    ],
)
async def test_intern_push_writing_a_hidden_or_read_only_field_is_refused_and_stores_nothing(
    relay: RelayHarness, written: dict[str, Any], code: ErrorCode
) -> None:
    alice = relay.client("alice")
    async with alice:
        acct = alice.create("Account", {"Name": "Acme", "Revenue": REVENUES[0], "Rating": "Warm"})
        await alice.sync()
    before = stored_state(relay, acct)
    async with raw_session(relay.url, intern_token(relay)) as (raw, _backlog):
        verdict = await push_one(
            raw, change(acct, "Account", "update", delta_writing(written), base=before[1])
        )
    assert isinstance(verdict, Rejected) and verdict.code is code, verdict
    assert stored_state(relay, acct) == before
    assert stored_values(relay, acct)["Revenue"] == encoded(REVENUES[0])


async def test_intern_create_with_a_hidden_field_is_refused_and_stores_nothing(
    relay: RelayHarness,
) -> None:
    record_id = str(uuid.uuid4())
    async with raw_session(relay.url, intern_token(relay)) as (raw, _backlog):
        delta = delta_writing({"Name": "Intern Inc", "Revenue": encoded(Decimal("3.5"))})
        verdict = await push_one(raw, change(record_id, "Account", "create", delta))
    assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.UNKNOWN_FIELD, verdict
    assert relay.storage.get_record(record_id) is None
    assert relay.storage.changes_of(record_id) == []


# == (b) private records =====================================================================


async def test_private_record_never_appears_in_any_frame_to_a_user_it_is_not_shared_with(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, bob, carol = relay.client("alice"), relay.client("bob"), relay.client("carol")
    async with alice, bob, carol, admin(relay) as root:
        await bob.sync()
        deal = await private_deal(alice)
        await bob.sync()  # live, and a fresh sync
        async with raw_session(relay.url, relay.token("bob")):
            pass  # initial sync (cursor 0) of another replica of bob's

        alice.update(deal, {"Amount": AMOUNTS[1], "Stage": "Qualification"})  # fan-out
        await alice.sync()
        bob.go_offline()
        await eventually(lambda: not bob.online)
        alice.update(deal, {"Amount": AMOUNTS[2]})
        await alice.sync()
        await root.share(deal, "carol", access="edit")  # a share to someone else
        await eventually(lambda: carol.get(deal) is not None)
        carol.update(deal, {"Stage": "Prospecting"})
        await carol.sync()
        await root.unshare(deal, "carol")
        await eventually(lambda: carol.get(deal) is None)
        bob.go_online()
        await bob.sync()  # resume (cursor > 0)
        alice.delete(deal)  # no tombstone for a record bob never saw
        await alice.sync()
        await bob.sync()
        assert bob.get(deal) is None
        assert [r.object for r in bob.records()] == ["Account"]

    await sweep_backlogs(relay.url, relay.token("bob"), relay.storage.seq)
    secrets_ = [deal, DEAL_NAME, *(encoded(amount) for amount in AMOUNTS)]
    assert_never_sent(wire.to("bob"), secrets_)
    assert any(deal.encode() in data for data in wire.to("carol"))  # it did happen


async def test_after_an_unshare_the_revoked_marker_carries_no_field_data(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        deal = await private_deal(alice)
        await root.share(deal, "bob", access="read")
        await eventually(lambda: bob.get(deal) is not None)
        shared_at = relay.storage.seq
        await root.unshare(deal, "bob")  # live revocation
        await eventually(lambda: bob.get(deal) is None)
        unshared_at = relay.storage.seq
        alice.update(deal, {"Amount": AMOUNTS[1], "Name": "Renamed after the unshare"})
        await alice.sync()
        await bob.sync()
        assert bob.get(deal) is None
        # resume from before the share, from between, and from after the unshare
        revoked_on_resume = []
        for cursor in (0, shared_at - 1, shared_at, unshared_at):
            async with raw_session(relay.url, relay.token("bob"), cursor) as (_raw, backlog):
                revoked_on_resume += [
                    item
                    for frame in backlog
                    if isinstance(frame, Changes)
                    for item in frame.items
                    if item.record_id == deal
                ]

    about_deal = wire.record_changes_to("bob", deal)
    first_revoked = next(i for i, item in enumerate(about_deal) if item.revoked)
    after_unshare = about_deal[first_revoked:]
    assert after_unshare and all(item.revoked and item.update == b"" for item in after_unshare)
    assert revoked_on_resume and all(
        item.revoked and item.update == b"" for item in revoked_on_resume
    )
    assert not any(b"Renamed after the unshare" in data for data in wire.to("bob"))
    assert not any(encoded(AMOUNTS[1]).encode() in data for data in wire.to("bob"))


async def test_record_unshared_then_deleted_while_offline_is_forgotten_on_resume(
    relay: RelayHarness,
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob, admin(relay) as root:
        deal = await private_deal(alice)
        await root.share(deal, "bob", access="read")
        await eventually(lambda: bob.get(deal) is not None)
        bob.go_offline()
        await eventually(lambda: not bob.online)
        await root.unshare(deal, "bob")
        alice.delete(deal)
        await alice.sync()
        bob.go_online()
        await bob.sync()
        assert bob.get(deal) is None, "bob keeps a private record he lost access to"


# == (c) forged identity =====================================================================


async def test_hello_with_another_users_replica_id_is_refused_and_sends_no_data(
    relay: RelayHarness, raw_connect: Callable[[], Any], wire: Wire
) -> None:
    alice = relay.client("alice")
    async with alice:
        await private_deal(alice)
        async with raw_connect() as websocket:
            raw = RawConnection(websocket)
            await raw.send(Hello((1,), relay.token("bob"), alice.replica_id))
            refusal = await raw.receive()
            assert isinstance(refusal, Error) and refusal.fatal
            assert refusal.code is ErrorCode.AUTH_FAILED
            with pytest.raises(ConnectionClosed):
                await raw.receive()
    assert relay.storage.replica_user(alice.replica_id) == "alice"
    assert wire.to("bob") == []
    refused = [data for who, data in wire.sent if who is None]
    assert [type(decode(data)) for data in refused] == [Error]


async def test_push_claiming_another_users_private_record_gets_no_data_back(
    relay: RelayHarness, wire: Wire
) -> None:
    alice = relay.client("alice")
    async with alice:
        deal = await private_deal(alice)
    before = stored_state(relay, deal)
    forged = delta_writing({"Name": "Mine now", "Stage": "Closed Lost", "Account": deal})
    async with raw_session(relay.url, relay.token("bob")) as (raw, _backlog):
        as_create = await push_one(raw, change(deal, "Opportunity", "create", forged))
        as_update = await push_one(raw, change(deal, "Opportunity", "update", forged, before[1]))
        as_delete = await push_one(raw, change(deal, "Opportunity", "delete", base=before[1]))
    assert isinstance(as_create, Rejected) and as_create.code is ErrorCode.DUPLICATE_RECORD
    for verdict in (as_update, as_delete):
        assert isinstance(verdict, Unresolvable) and verdict.reason == "forbidden", verdict
    assert stored_state(relay, deal) == before
    assert_never_sent(wire.to("bob"), [DEAL_NAME, encoded(AMOUNTS[0])])


async def test_push_naming_the_wrong_object_for_an_unreadable_record_does_not_reveal_its_type(
    relay: RelayHarness, wire: Wire
) -> None:
    alice = relay.client("alice")
    async with alice:
        deal = await private_deal(alice)
    before = stored_state(relay, deal)
    forged = delta_writing({"Name": "Mine now"})
    async with raw_session(relay.url, relay.token("bob")) as (raw, _backlog):
        verdict = await push_one(raw, change(deal, "Account", "update", forged, before[1]))
    assert not isinstance(verdict, Ack)
    assert "Opportunity" not in getattr(verdict, "message", ""), (
        f"bob, who may not read {deal}, is told its object type: {verdict!r}"
    )
    assert stored_state(relay, deal) == before


@pytest.mark.parametrize("who", ["bob", "ivan"])
async def test_replaying_another_users_change_id_returns_none_of_its_data(
    relay: RelayHarness, wire: Wire, who: str
) -> None:
    """Idempotent retransmission must not become a way to read someone else's change:
    bob (no access to alice's Opportunity) and ivan (an intern, Revenue hidden) send a
    change id of alice's with its record id."""
    alice = relay.client("alice")
    async with alice:
        if who == "bob":
            record_id, object_name = await private_deal(alice), "Opportunity"
            secrets_ = [DEAL_NAME, encoded(AMOUNTS[0])]
        else:
            record_id = alice.create("Account", {"Name": "Acme", "Revenue": REVENUES[0]})
            object_name, secrets_ = "Account", [REVENUE_SECRETS[0]]
            await alice.sync()
    [created] = relay.storage.changes_of(record_id)
    token = relay.token("bob") if who == "bob" else intern_token(relay)
    async with raw_session(relay.url, token) as (raw, _backlog):
        replay = change(record_id, object_name, "update", b"", 0, created.change_id)
        verdict = await push_one(raw, replay)
    assert not (isinstance(verdict, Ack) and verdict.update), (
        f"{who} got alice's change back: {verdict!r}"
    )
    hidden = frozenset({"Revenue"}) if who == "ivan" else frozenset()  # bob may see Revenue
    assert_never_sent(wire.to(who), secrets_, hidden)


async def test_create_with_another_user_as_owner_is_forbidden_and_not_stored(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob:
        await alice.sync()
        await bob.sync()
        account = bob.create("Account", {"Name": "Bob's", "Owner": "alice"})
        await bob.sync()
        [pending] = bob.pending()
        assert pending.status is Status.UNRESOLVABLE
        assert pending.problem is not None
        assert pending.problem.reason is UnresolvableReason.FORBIDDEN
        await alice.sync()
        assert alice.get(account) is None
    assert relay.storage.get_record(account) is None
    assert not any(account.encode() in data for data in wire.to("alice"))


async def test_the_user_recorded_for_a_change_is_the_tokens_user(
    relay: RelayHarness, wire: Wire
) -> None:
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob:
        await alice.sync()
        account = bob.create("Account", {"Name": "Bob's"})
        await bob.sync()
        await eventually(lambda: alice.get(account) is not None)
        assert field(alice, account, "Owner") == "bob"
    # a hand-driven replica of bob's edits it: the frames carry no user, the token does
    async with raw_session(relay.url, relay.token("bob")) as (raw, _backlog):
        version = stored_state(relay, account)[1]
        verdict = await push_one(
            raw,
            change(account, "Account", "update", delta_writing({"Website": "b.example"}), version),
        )
    assert isinstance(verdict, Ack), verdict
    storage = relay.storage
    assert storage is not None
    assert storage.get_record(account).created_by == "bob"  # type: ignore[union-attr]
    rows = storage.changes_of(account)
    assert [(row.kind, row.user) for row in rows] == [("create", "bob"), ("update", "bob")]
    assert rows[0].replica == bob.replica_id
    fanned_out = wire.record_changes_to("alice", account)
    assert fanned_out and {item.by for item in fanned_out} == {"bob"}


async def test_update_with_another_replicas_crdt_client_id_is_refused(
    relay: RelayHarness,
) -> None:
    alice = relay.client("alice")
    async with alice:
        account = alice.create("Account", {"Name": "Acme"})
        await alice.sync()
    before = stored_state(relay, account)
    forged = delta_writing({"Website": "forged.example"}, client_id=alice.replica.client_id)
    async with raw_session(relay.url, relay.token("bob")) as (raw, _backlog):
        verdict = await push_one(raw, change(account, "Account", "update", forged, before[1]))
    assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.FORGED_CLIENT_ID, verdict
    assert stored_state(relay, account) == before
