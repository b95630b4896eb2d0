"""The access model, cell by cell, through real connections.

Roles x sharing defaults x relationship to the record x action, each observed on real
``crdtsync.Client`` replicas talking to a real relay over loopback websockets:

* **read**: the record arrives at the user's replica after a sync (and does not when
  it may not be read);
* **update** / **delete**: the change is acknowledged and the creator's replica sees it,
  or it is refused as forbidden and nothing changes on the relay;
* **create**: acknowledged, or refused as forbidden.

The expected outcome comes from :func:`oracle`, written here from the documented rules
and never from the library's own policy code. Each test function runs one relay for
one (sharing, role) pair and drives every relationship and action through it.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from pathlib import Path
from types import TracebackType

import pycrdt
import pytest
from crdtsync_server.admin_client import AdminClient
from crdtsync_server.app import RelayServer
from crdtsync_server.config import RelayConfig
from websockets.asyncio.client import connect

from crdtsync import Client, Status, UnresolvableReason
from crdtsync.core.protocol import Ack, ChangeFrame, Hello, Push, Unresolvable, Verdicts, Welcome
from tests.helpers.harness import RawConnection, eventually

CONFIG = """
[server]
secret = "permission-matrix-secret-0123456789abcdef"

[objects.Memo]
sharing = "private"

[objects.Memo.fields]
Title = { type = "string", max_length = 80 }
Score = { type = "integer" }
Owner = { type = "owner" }

[objects.Notice]
sharing = "read"

[objects.Notice.fields]
Title = { type = "string", max_length = 80 }
Score = { type = "integer" }
Owner = { type = "owner" }

[objects.Wiki]
sharing = "read_write"

[objects.Wiki.fields]
Title = { type = "string", max_length = 80 }
Score = { type = "integer" }
Owner = { type = "owner" }

[roles.default]   # every user has it; here it grants nothing

[roles.full]
Memo   = ["create", "read", "update", "delete"]
Notice = ["create", "read", "update", "delete"]
Wiki   = ["create", "read", "update", "delete"]

[roles.reader]
Memo   = ["read"]
Notice = ["read"]
Wiki   = ["read"]
"""

OBJECT_BY_SHARING = {"private": "Memo", "read": "Notice", "read_write": "Wiki"}
RELATIONSHIPS = ("owner", "shared-read", "shared-edit", "other")
ACTIONS = ("create", "read", "update", "delete")

# -- the oracle: the documented rules, written out independently of the library --------

GRANTS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "full": frozenset(ACTIONS),
    "reader": frozenset({"read"}),
}


def oracle(role: str, sharing: str, relationship: str, action: str) -> bool:
    """May a user with ``role`` do ``action`` on a record of an object whose sharing
    default is ``sharing``, being its ``relationship``?"""
    actions = GRANTS["default"] | GRANTS[role]  # everyone also has the default role
    if action not in actions:
        return False
    if action == "create":
        return True
    owner = relationship == "owner"
    share = {"shared-read": "read", "shared-edit": "edit"}.get(relationship)
    if action == "read":
        return owner or sharing in ("read", "read_write") or share in ("read", "edit")
    return owner or sharing == "read_write" or share == "edit"


def test_oracle_follows_the_documented_rules_on_landmark_cells() -> None:
    assert oracle("full", "private", "owner", "delete")
    assert not oracle("full", "private", "other", "read")
    assert oracle("full", "private", "shared-read", "read")
    assert not oracle("full", "private", "shared-read", "update")
    assert oracle("full", "read", "other", "read")
    assert not oracle("full", "read", "other", "update")
    assert oracle("full", "read_write", "other", "delete")
    assert not oracle("reader", "read_write", "owner", "update")
    assert not oracle("reader", "private", "owner", "create")
    assert not oracle("default", "read_write", "owner", "read")


# -- a relay on the matrix configuration ---------------------------------------------------


class MatrixRelay:
    """A real relay (loopback websockets, SQLite file) on :data:`CONFIG`."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "matrix.toml"
        self.config_path.write_text(CONFIG)
        config = RelayConfig.from_toml(
            self.config_path, database=str(tmp_path / "relay.sqlite3"), port=0
        )
        self.server = RelayServer(config)

    async def __aenter__(self) -> MatrixRelay:
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

    def token(self, user: str, role: str) -> str:
        roles = () if role == "default" else (role,)
        return self.server.authority.issue(user, roles=roles)

    def client(self, user: str, role: str) -> Client:
        return Client(
            self.url,
            token=self.token(user, role),
            store=str(self.tmp_path / f"{user}.sqlite3"),
            schema=self.config_path,
            backoff_initial=0.05,
            backoff_max=0.5,
        )

    def admin(self) -> AdminClient:
        return AdminClient(self.url, self.server.authority.issue("root", admin=True))

    def stored(self, record_id: str) -> tuple[int, bool] | None:
        """(version, deleted) of the record in the relay's database, or None."""
        record = self.server.inspect(self.server.storage.get_record, record_id)
        return None if record is None else (record.version, record.deleted)

    def creator(self, record_id: str) -> str | None:
        record = self.server.inspect(self.server.storage.get_record, record_id)
        return None if record is None else record.created_by

    async def blind_push(self, user: str, role: str, change: ChangeFrame) -> object:
        """Push one change over a raw connection of ``user``: how a user writes to a
        record their replica never received."""
        async with connect(self.url, max_size=None) as websocket:
            raw = RawConnection(websocket)
            await raw.send(Hello((1,), self.token(user, role), f"blind-{uuid.uuid4().hex}"))
            assert isinstance(await raw.receive(), Welcome)
            await raw.send(Push((change,)))
            [*_, verdicts] = await raw.receive_until(Verdicts)
            assert isinstance(verdicts, Verdicts)
            [verdict] = verdicts.items
            return verdict


def title_delta(title: str) -> bytes:
    """A CRDT update writing ``Title``, from a document of the writer's own."""
    doc: pycrdt.Doc[object] = pycrdt.Doc(client_id=secrets.randbits(53) or 1)
    fields: pycrdt.Map[object] = doc.get("fields", type=pycrdt.Map)
    fields["Title"] = title
    return bytes(doc.get_update())


def field(client: Client, record_id: str, name: str) -> object:
    """A field of the record as ``client`` sees it (None if it has no such record)."""
    record = client.get(record_id)
    return None if record is None else record.fields.get(name)


def refused_as_forbidden(client: Client, record_id: str) -> bool:
    """True if the client's pending change of ``record_id`` is unresolvable (forbidden);
    False if none is pending (it was acknowledged); anything else fails the test."""
    pending = [change for change in client.pending() if change.record_id == record_id]
    if not pending:
        return False
    [change] = pending
    assert change.status is Status.UNRESOLVABLE, change
    assert change.problem is not None and change.problem.reason is UnresolvableReason.FORBIDDEN
    return True


def verdict_allows(verdict: object) -> bool:
    """An ack allows; an unresolvable (forbidden) refuses; anything else fails."""
    if isinstance(verdict, Ack):
        return True
    assert isinstance(verdict, Unresolvable) and verdict.reason == "forbidden", verdict
    return False


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["default", "full", "reader"])
@pytest.mark.parametrize("sharing", ["private", "read", "read_write"])
async def test_each_relationship_and_action_gets_what_the_access_rules_allow(
    tmp_path: Path, sharing: str, role: str
) -> None:
    object_name = OBJECT_BY_SHARING[sharing]
    users = {relationship: f"{role}-{relationship}" for relationship in RELATIONSHIPS}
    observed: dict[tuple[str, ...], bool] = {}
    wanted: dict[tuple[str, ...], bool] = {}

    async with MatrixRelay(tmp_path) as relay, contextlib.AsyncExitStack() as stack:
        root = await stack.enter_async_context(relay.admin())
        # olga (role full) creates every record and watches what the relay stored.
        olga = await stack.enter_async_context(relay.client("olga", "full"))
        records = {
            (relationship, purpose): olga.create(
                object_name, {"Title": f"{relationship} {purpose}", "Score": 1}
            )
            for relationship in RELATIONSHIPS
            for purpose in ("update", "delete")
        }
        await olga.sync()
        assert olga.pending() == []
        for purpose in ("update", "delete"):
            owned = records["owner", purpose]
            await root.share(owned, "olga", access="read")  # olga keeps watching it
            await root.set_owner(owned, users["owner"])
            await root.share(records["shared-read", purpose], users["shared-read"], access="read")
            await root.share(records["shared-edit", purpose], users["shared-edit"], access="edit")
        await olga.sync()
        await eventually(lambda: all(olga.get(rid) is not None for rid in records.values()))
        await eventually(lambda: field(olga, records["owner", "update"], "Owner") == users["owner"])

        # read: exactly the records the rules allow arrive, no others.
        clients: dict[str, Client] = {}
        visible: dict[str, set[str]] = {}
        for relationship, user in users.items():
            client = clients[relationship] = relay.client(user, role)
            await stack.enter_async_context(client)
            await client.sync()
            visible[relationship] = {record.id for record in client.records(object_name)}
            for (record_relationship, purpose), rid in records.items():
                seen_as = relationship if record_relationship == relationship else "other"
                key = ("read", relationship, f"{record_relationship} {purpose} record")
                observed[key] = rid in visible[relationship]
                wanted[key] = oracle(role, sharing, seen_as, "read")

        for relationship, user in users.items():
            client = clients[relationship]
            # update
            rid = records[relationship, "update"]
            before = relay.stored(rid)
            new_title = f"edited by {user}"
            if rid in visible[relationship]:
                client.update(rid, {"Title": new_title})
                await client.sync()
                allowed = not refused_as_forbidden(client, rid)
            else:
                allowed = verdict_allows(
                    await relay.blind_push(
                        user,
                        role,
                        ChangeFrame(
                            change_id=uuid.uuid4().hex,
                            record_id=rid,
                            object=object_name,
                            kind="update",
                            base_version=before[0] if before else 0,
                            field_bases={},
                            delta=title_delta(new_title),
                        ),
                    )
                )
            if allowed:
                await eventually(
                    lambda rid=rid, title=new_title: field(olga, rid, "Title") == title
                )
            else:
                assert relay.stored(rid) == before, f"refused update of {rid} changed it"
                assert field(olga, rid, "Title") == f"{relationship} update"
            observed["update", relationship] = allowed
            wanted["update", relationship] = oracle(role, sharing, relationship, "update")

            # delete
            rid = records[relationship, "delete"]
            before = relay.stored(rid)
            if rid in visible[relationship]:
                client.delete(rid)
                await client.sync()
                allowed = not refused_as_forbidden(client, rid)
            else:
                allowed = verdict_allows(
                    await relay.blind_push(
                        user,
                        role,
                        ChangeFrame(
                            change_id=uuid.uuid4().hex,
                            record_id=rid,
                            object=object_name,
                            kind="delete",
                            base_version=before[0] if before else 0,
                            field_bases={},
                            delta=b"",
                        ),
                    )
                )
            if allowed:
                await eventually(lambda rid=rid: olga.get(rid) is None)
                stored = relay.stored(rid)
                assert stored is not None and stored[1], f"acked delete of {rid} not stored"
            else:
                assert relay.stored(rid) == before, f"refused delete of {rid} changed it"
                assert olga.get(rid) is not None
            observed["delete", relationship] = allowed
            wanted["delete", relationship] = oracle(role, sharing, relationship, "delete")

            # create
            created = client.create(object_name, {"Title": f"made by {user}"})
            await client.sync()
            allowed = not refused_as_forbidden(client, created)
            if allowed:
                assert relay.creator(created) == user
                access = await root.access(created)
                assert access["owner"] == user
            else:
                assert relay.stored(created) is None, "a refused create was stored"
            observed["create", relationship] = allowed
            wanted["create", relationship] = oracle(role, sharing, relationship, "create")

    assert observed == wanted
