"""A remote change to a field the user has edited and not pushed yet.

In Yjs (and pycrdt) two concurrent writes of one map key settle by CRDT client id: with
a lower local client id, merging the remote write silently replaces the user's pending
value in the local document. The replica writes its unsent values again after every
remote update, so the user keeps seeing their edit and the next delta carries it, for
the relay to judge (here: a conflict whose ``mine`` is the user's value, never null).
Every plain field type, the local client id both lower and higher than the remote one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from crdtsync.client.model import Status
from crdtsync.client.replica import Replica
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import ROOT
from tests.helpers.pair import World, settle

ALL_TYPES = ROOT / "tests" / "fixtures" / "all_types.toml"
REMOTE_CLIENT_ID = 1_000_000
TZ = dt.timezone(dt.timedelta(hours=2))

#: field -> (value at the base, the local user's unpushed value, the remote user's value)
EDITS: dict[str, tuple[Any, Any, Any]] = {
    "Title": ("base", "mine", "theirs"),
    "Count": (1, 2, 3),
    "Big": (2**60, 2**60 + 1, 2**60 + 2),
    "Ratio": (0.5, 1.5, 2.5),
    "Price": (Decimal("1.00"), Decimal("2.50"), Decimal("3E+2")),
    "Done": (False, True, None),
    "Due": (dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)),
    "At": (
        dt.datetime(2026, 1, 1, 9, tzinfo=TZ),
        dt.datetime(2026, 1, 1, 10, tzinfo=TZ),
        dt.datetime(2026, 1, 1, 11, tzinfo=dt.UTC),
    ),
    "Kind": ("a", "b", "c"),
    "Email": ("a@ex.com", "b@ex.com", "c@ex.com"),
}


@pytest.fixture
def world() -> Iterator[World]:
    world = World(ALL_TYPES)
    yield world
    world.close()


def relay_after_delta(world: World, replica: Replica, record_id: str) -> dict[str, Any]:
    """The record as the relay would hold it with the pending change's delta merged in
    (the relay's current state plus the delta: what the delta carries, whoever's CRDT
    client id is higher)."""
    entry = replica.store.get_pending(record_id)
    stored = world.storage.get_record(record_id)
    assert entry is not None and stored is not None
    doc = RecordDoc.from_update(replica.schema.object("Thing"), stored.state)
    doc.apply(entry.delta)
    return doc.read()


@pytest.mark.parametrize("local_id", [10, 10**12], ids=["local-id-lower", "local-id-higher"])
@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_unpushed_edit_survives_a_remote_change_of_the_same_field(
    world: World, field: str, local_id: int
) -> None:
    base, mine, theirs = EDITS[field]
    alice = world.replica(client_id=REMOTE_CLIENT_ID)
    bob = world.replica(client_id=local_id)
    alice_pair, bob_pair = world.connect(alice, "alice"), world.connect(bob, "bob")
    settle(alice_pair, bob_pair)
    record_id = alice.create(
        "Thing", {"Title": "t", field: base} if field != "Title" else {field: base}
    )
    settle(alice_pair, bob_pair)
    bob_pair.disconnect()

    bob.update(record_id, {field: mine})
    alice.update(record_id, {field: theirs})
    settle(alice_pair)
    bob_pair = world.connect(bob, "bob")
    bob_pair.client.push = lambda: None  # type: ignore[method-assign] # catch up, push nothing yet
    settle(bob_pair)

    record = bob.get(record_id)
    assert record is not None and record.status is Status.PENDING
    assert record.fields.get(field) == mine  # the user still sees their edit
    assert relay_after_delta(world, bob, record_id).get(field) == mine  # the delta carries it

    del bob_pair.client.push
    settle(bob_pair)
    [change] = bob.pending()
    assert change.status is Status.CONFLICT and change.problem is not None
    [conflict] = change.problem.conflicts
    assert (conflict.field, conflict.mine, conflict.theirs) == (field, mine, theirs)
    assert conflict.base == base
