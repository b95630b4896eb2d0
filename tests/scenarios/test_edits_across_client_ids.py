"""A replica edits as one CRDT client id until it resolves or dismisses a conflict, and
then as a fresh one (the refused operations stay behind). A change of another record
made before that, and written again after it (a remote update the merge let win over
the user's unsent value), carries operations of both ids: the relay must judge it by
the value the user wants, not by an earlier write of theirs that the later one replaced.

Found by the convergence model (``tests/faults/test_convergence_model.py``).
"""

from __future__ import annotations

import pytest

from crdtsync.client.model import Status
from crdtsync.core.record import RecordDoc
from tests.helpers.pair import World, settle


@pytest.mark.parametrize("theirs", [None, "Technology"])
def test_an_edit_made_before_resolving_another_conflict_still_conflicts_with_a_newer_one(
    theirs: str | None,
) -> None:
    world = World()
    try:
        # bob's first client id orders before alice's: a plain merge lets alice's
        # concurrent write win, so bob's replica writes his value again (as a new id).
        alice = world.replica(client_id=2_000_000)
        bob = world.replica(client_id=1_000_000)
        alice_pair, bob_pair = world.connect(alice, "alice"), world.connect(bob, "bob")
        settle(alice_pair, bob_pair)
        acme = alice.create("Account", {"Name": "Acme", "Industry": "Retail"})
        other = alice.create("Account", {"Name": "Other"})
        settle(alice_pair, bob_pair)

        # bob's edit of `other` meets a conflict: he will resolve it later.
        bob_pair.disconnect()
        alice.update(other, {"Name": "Globex"})
        alice_pair.pump()
        bob.update(other, {"Name": "Initech"})
        bob_pair = world.connect(bob, "bob")
        settle(alice_pair, bob_pair)
        assert [c.status for c in bob.pending()] == [Status.CONFLICT]

        # Offline, bob changes Acme's Industry; alice changes it too, and syncs.
        bob_pair.disconnect()
        bob.update(acme, {"Industry": "Energy"})
        alice.update(acme, {"Industry": theirs})
        alice_pair.pump()
        bob.resolve(other)  # keeps "Initech"; bob edits as a new client id from now on

        bob_pair = world.connect(bob, "bob")
        settle(alice_pair, bob_pair)

        # bob never saw alice's Industry: his change is a conflict, not an overwrite.
        stored = world.storage.get_record(acme)
        assert stored is not None
        spec = world.config.schema.objects["Account"]
        assert RecordDoc.from_update(spec, stored.state).read().get("Industry") == theirs
        [change] = [c for c in bob.pending() if c.record_id == acme]
        assert change.status is Status.CONFLICT
        assert change.problem is not None
        [conflict] = change.problem.conflicts
        assert (conflict.field, conflict.mine, conflict.theirs) == ("Industry", "Energy", theirs)
    finally:
        world.close()
