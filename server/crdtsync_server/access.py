"""Access facts: what a record's access depends on, who may read it, and what of it.

:class:`RecordAccess` answers the relay's read checks (the backlog, fan-out, the push
pipeline and admin actions all ask it) from the policy, the stored rows and the
record cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from crdtsync.core.schema import Schema

from .cache import RecordCache
from .merge import RecordState
from .policy import Access, Action, Policy, Principal, RecordFacts, owner_field
from .storage import RelayStorage, StoredRecord


class RecordAccess:
    """Who may read which record, and its updates projected to what they may read."""

    def __init__(
        self, schema: Schema, policy: Policy, storage: RelayStorage, cache: RecordCache
    ) -> None:
        self.schema = schema
        self.policy = policy
        self.storage = storage
        self.cache = cache

    def facts(
        self,
        stored: StoredRecord,
        state: RecordState | None = None,
        shares: Mapping[str, int] | None = None,
    ) -> RecordFacts:
        """What access to ``stored`` depends on: its owner and its manual shares.

        Without ``state``, a cached record is used if there is one; otherwise the stored
        row is enough and no document is loaded, unless a policy hook needs the values
        (``shares``: the record's shares, if the caller read them already).
        """
        if state is None:
            state = self.cache.get(stored.id)
            if state is None and self.policy.hook is not None:
                state = self.cache.state(stored.id, stored)
        if state is None:
            owner, values = stored.owner, {}
            if shares is None:
                shares = self.storage.shares_of(stored.id)
        else:
            if state.facts is not None:
                return state.facts
            owner_name = owner_field(self.schema, stored.object)
            owner, values = (state.values.get(owner_name) if owner_name else None), state.values
            shares = state.load_shares(self.storage)
        facts = RecordFacts(
            object=stored.object,
            record_id=stored.id,
            owner=owner or stored.created_by,
            shares={user: Access(level) for user, level in shares.items()},
            values=values,
        )
        if state is not None and self.policy.hook is None:
            # Without a hook only the owner and the shares decide access: keep the facts
            # until either changes (RecordState forgets them then).
            state.facts = facts
        return facts

    def readable_objects(
        self, principal: Principal, objects: Iterable[str] | None = None
    ) -> tuple[str, ...]:
        """The objects (of ``objects``, default all) the principal's roles may read."""
        names = self.schema.objects if objects is None else objects
        return tuple(name for name in names if self.policy.allows(principal, Action.READ, name))

    def can_read(self, principal: Principal, facts: RecordFacts) -> bool:
        """The principal may read the record ``facts`` describe."""
        return self.policy.allows(principal, Action.READ, facts.object, facts)

    def project(self, principal: Principal, state: RecordState, update: bytes) -> bytes:
        """``update`` without the fields ``principal`` may not read."""
        hidden = self.policy.hidden_fields(principal, state.row.object)
        if not hidden or not update:
            return update
        return state.index.project(update, hidden)
