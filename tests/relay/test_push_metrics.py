"""The relay's ``/metrics`` counts the time a push spends in each stage of its path:
decoding the frame, loading records, deciding, storing, committing and fanning out."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest
from crdtsync_server.metrics import PUSH_STAGES

from tests.helpers.harness import RelayHarness

pytestmark = pytest.mark.asyncio

STAGE = re.compile(r'^crdtsync_push_stage_seconds_total\{stage="(\w+)"\} (\S+)$', re.MULTILINE)
MERGE_SUM = re.compile(r"^crdtsync_merge_seconds_sum (\S+)$", re.MULTILINE)


def scrape(port: int) -> tuple[dict[str, float], float]:
    """Each push stage's seconds, and ``crdtsync_merge_seconds_sum``, from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    merge = MERGE_SUM.search(text)
    assert merge is not None, text
    return {stage: float(value) for stage, value in STAGE.findall(text)}, float(merge.group(1))


async def test_a_push_moves_every_stage_counter(relay: RelayHarness) -> None:
    stages, merge = await asyncio.to_thread(scrape, relay.port)
    assert set(stages) == set(PUSH_STAGES) == {
        "decode", "load", "decide", "store", "commit", "fanout",
    }  # fmt: skip
    alice, bob = relay.client("alice"), relay.client("bob")
    async with alice, bob:
        await bob.sync(timeout=10)  # subscribed: alice's change is fanned out to bob
        record = alice.create("Account", {"Name": "Staged", "Employees": 3})
        await alice.sync(timeout=10)
        await bob.sync(timeout=10)
        assert bob.get(record) is not None
        after, merge_after = await asyncio.to_thread(scrape, relay.port)
    moved = {stage: after[stage] - stages[stage] for stage in PUSH_STAGES}
    assert all(seconds > 0 for seconds in moved.values()), moved
    # The transaction's stages split the merge time, no more and no less.
    in_transaction = sum(moved[stage] for stage in ("load", "decide", "store", "commit"))
    assert in_transaction == pytest.approx(merge_after - merge, abs=1e-6)
