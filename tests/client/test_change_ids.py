"""Change ids: unique, and ordered by the time they were made (the relay indexes every
change id it logs; ids that grow keep that index growing at its end)."""

from __future__ import annotations

import itertools
import re
import time

from crdtsync.client.store import new_change_id


def test_change_ids_made_later_sort_later_and_never_repeat() -> None:
    batches = []
    for _ in range(5):
        batches.append([new_change_id() for _ in range(1_000)])
        time.sleep(0.002)  # the next batch is made at least a millisecond later
    every = [change_id for batch in batches for change_id in batch]
    assert len(set(every)) == len(every)
    assert all(re.fullmatch(r"[0-9a-f]{32}", change_id) for change_id in every)
    for earlier, later in itertools.pairwise(batches):
        assert max(earlier) < min(later)


def test_a_change_id_starts_with_the_milliseconds_it_was_made_at() -> None:
    before = time.time_ns() // 1_000_000
    change_id = new_change_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(change_id[:12], 16) <= after
