"""What other relays on the same database committed, taken in by this one.

Relays on one PostgreSQL database form a cluster: each decides the pushes of its own
connections, and every write transaction locks the sequence row first, so they decide
one at a time and versions commit in order (see ``RelayStorage.begin``). A relay learns
of the others' versions in two ways, and both come here, in log order::

    a transaction begins and finds the sequence ahead ─┐
    the follow timer finds it ahead (an idle relay)  ──┴─▶ ClusterFollower.caught_up(after, through)
        ─▶ the changes logged in (after, through]
        ─▶ every cached record they touched forgotten: decisions use the stored record
        ─▶ the changes fanned out to this relay's listeners, as if pushed here
           (one whose update a compaction dropped meanwhile: with the record's whole state)

Catching up happens before anything is decided in the transaction that found it, and a
relay's own verdicts are sent after its commit, so each listener still receives versions
in order. An administrator's action on another relay reaches this relay's listeners as
an access change (the record whole to those who gained access, ``revoked`` to those who
lost it, the update or tombstone to the others who may read it): whose access it changed
is the cached record's facts before it, or, for a record this relay did not hold, the
access log's entries at its version.
"""

from __future__ import annotations

import logging

import attrs

from crdtsync.core.protocol import ChangeKind

from .access import RecordAccess
from .cache import RecordCache
from .fanout import FanOut
from .policy import RecordFacts
from .storage import ChangeRow, RelayStorage, StoredRecord

log = logging.getLogger("crdtsync.relay")

#: the ``replica`` an administrator's action is logged under (see ``AdminActions``)
ADMIN_REPLICA = "admin"


class ClusterFollower:
    """Takes in other relays' changes (module docstring)."""

    def __init__(
        self, storage: RelayStorage, cache: RecordCache, access: RecordAccess, fan_out: FanOut
    ) -> None:
        self.storage = storage
        self.cache = cache
        self.access = access
        self.fan_out = fan_out

    def caught_up(self, after: int, through: int) -> None:
        """The changes logged in ``(after, through]`` were committed by other relays:
        forget what this relay cached of their records, then fan them out."""
        rows = self.storage.log_between(after, through)
        if not rows:
            return
        before: dict[str, RecordFacts | None] = {}
        for row in rows:
            state = self.cache.pop(row.record_id, None)
            if row.record_id not in before:
                before[row.record_id] = state.facts if state is not None else None
        records, facts = self._as_they_stand(list(before))
        wholes: dict[str, bytes] = {}
        pending: list[tuple[StoredRecord, ChangeRow]] = []
        for row in rows:
            record = records.get(row.record_id)
            if record is None:
                continue
            if row.replica != ADMIN_REPLICA:
                deleted = row.kind == ChangeKind.DELETE
                if row.compacted:  # a compaction dropped its update: the whole state holds it
                    row = attrs.evolve(row, update=self._whole(row.record_id, wholes))
                pending.append((attrs.evolve(record, version=row.seq, deleted=deleted), row))
                continue
            if pending:
                self.fan_out.changes(None, pending, facts)
                pending = []
            whole = self.storage.get_record(row.record_id)  # gained access: sent whole
            if whole is None:
                continue
            now = self.access.facts(whole)
            then = before[row.record_id]
            changed = None if then is not None else self.storage.access_changed_at(row.seq)
            at = attrs.evolve(whole, version=row.seq)
            self.fan_out.access_change(at, row, then, now, changed)
            before[row.record_id] = now
        if pending:
            self.fan_out.changes(None, pending, facts)

    def _whole(self, record_id: str, wholes: dict[str, bytes]) -> bytes:
        """The record's whole state as it stands (read once per catch-up)."""
        if record_id not in wholes:
            stored = self.storage.get_record(record_id)
            wholes[record_id] = stored.state if stored is not None else b""
        return wholes[record_id]

    def _as_they_stand(
        self, record_ids: list[str]
    ) -> tuple[dict[str, StoredRecord], dict[str, RecordFacts]]:
        """The records' rows as they stand and their access facts, without loading their
        documents (a relay following another's changes need not hold their records): the
        rows' heads and their shares, one query each. With a policy hook, which may read a
        record's values, the records are read whole and no facts are given (fan-out then
        loads what it needs)."""
        if self.access.policy.hook is not None:
            return self.storage.get_records(record_ids), {}
        heads = self.storage.record_heads(record_ids)
        shares = self.storage.shares_of_records(list(heads))
        facts = {
            record_id: self.access.facts(head, shares=shares[record_id])
            for record_id, head in heads.items()
        }
        return heads, facts
