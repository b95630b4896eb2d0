"""What only a PostgreSQL database needs of the relay's storage: lookups that stay index
lookups while the log grows from empty.

psycopg prepares a statement it has run five times, and the server then caches one
generic plan for it, chosen for the tables as they were when it was made. A relay starts
on an empty log: a plan cached then scans the whole log, and went on doing so for every
push frame's retransmission check as the log grew (22 ms a frame at 26,000 changes,
found by the ``relay_pg`` benchmark). The server counts the sequential scans of each
table (``pg_stat_user_tables``): none may come from those lookups.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from crdtsync_server.storage import ChangeRow, RelayStorage

from crdtsync.core.protocol import ChangeKind


def _row(seq: int) -> ChangeRow:
    return ChangeRow(
        seq=seq,
        record_id=f"record-{seq % 100}",
        object="Account",
        change_id=f"change-{seq}",
        replica="replica",
        user="alice",
        kind=ChangeKind.UPDATE,
        fields={},
        update=b"\x00",
        at=0.0,
    )


@pytest.fixture
def storage(postgres_url: str) -> Iterator[RelayStorage]:
    storage = RelayStorage(postgres_url)
    yield storage
    storage.close()


def _log_scans(storage: RelayStorage, url: str) -> int:
    """Sequential scans of the change log so far (the relay's own counts flushed first)."""
    storage._db.execute("SELECT pg_stat_force_next_flush()")
    with psycopg.connect(url, autocommit=True) as reader:
        row = reader.execute(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'changes'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _push_frames(storage: RelayStorage, frames: int, per_frame: int) -> None:
    """What a push does to the log: check the frame's change ids, then log them."""
    for _ in range(frames):
        with storage.transaction():
            ids = [f"change-{storage.seq + i + 1}" for i in range(per_frame)]
            assert storage.known_change_ids(ids) == set()
            for _change_id in ids:
                storage.add_change(_row(storage.next_seq()))


def test_the_retransmission_check_stays_an_index_lookup_as_the_log_grows(
    storage: RelayStorage, postgres_url: str
) -> None:
    _push_frames(storage, frames=20, per_frame=50)  # the statement is prepared on a small log
    _push_frames(storage, frames=40, per_frame=500)  # the log grows to 21,000 changes
    before = _log_scans(storage, postgres_url)
    seen = storage.known_change_ids([f"change-{n}" for n in range(5_000, 5_050)])
    assert seen == {f"change-{n}" for n in range(5_000, 5_050)}
    _push_frames(storage, frames=3, per_frame=50)
    assert _log_scans(storage, postgres_url) == before
