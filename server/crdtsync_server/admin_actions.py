"""Admin actions: an administrator's share, unshare, set_owner, delete and access report.

Each action goes the way of any change: it gets a version, is logged with who and
when (one transaction), and is fanned out (replicas that gain access receive the
record, replicas that lose it are told to forget it).
"""

from __future__ import annotations

import logging
import time

import attrs

from crdtsync.core.protocol import Admin, AdminAction, AdminResult, ChangeKind
from crdtsync.core.schema import Schema

from .access import RecordAccess
from .cache import RecordCache
from .fanout import FanOut
from .merge import RecordState
from .policy import Access, Policy, Principal, RecordFacts, owner_field
from .storage import ChangeRow, RelayStorage, StoredRecord

log = logging.getLogger("crdtsync.relay")

#: the admin actions that name a user
NEEDS_USER = frozenset({AdminAction.SHARE, AdminAction.UNSHARE, AdminAction.SET_OWNER})


class AdminActions:
    """Applies administrators' requests to records."""

    def __init__(
        self,
        *,
        schema: Schema,
        policy: Policy,
        storage: RelayStorage,
        cache: RecordCache,
        access: RecordAccess,
        fan_out: FanOut,
    ) -> None:
        self.schema = schema
        self.policy = policy
        self.storage = storage
        self.cache = cache
        self.access = access
        self.fan_out = fan_out

    def apply(self, principal: Principal, request: Admin) -> AdminResult:
        """Apply an administrator's action through the same path as any change: it gets
        a version, is logged with who and when, and is fanned out (replicas that gain
        access receive the record, replicas that lose it are told to forget it)."""

        def refuse(message: str) -> AdminResult:
            return AdminResult(request_id=request.request_id, ok=False, message=message)

        if not principal.admin:
            return refuse("only an administrator may do this (a token with the admin claim)")
        stored = self.storage.get_record(request.record_id)
        if stored is None:
            return refuse(f"no record {request.record_id}")
        state = self.cache.state(stored.id, stored)
        before = self.access.facts(stored, state)
        if request.action is AdminAction.ACCESS:
            return AdminResult(
                request_id=request.request_id,
                ok=True,
                version=stored.version,
                details=self._access_report(stored, before),
            )
        if stored.deleted:
            return refuse(f"record {stored.id} is deleted")
        if request.action in NEEDS_USER and not request.user:
            return refuse(f"{request.action} needs a user")
        owner_name = owner_field(self.schema, stored.object)
        if request.action is AdminAction.SET_OWNER and owner_name is None:
            return refuse(f"a {stored.object} has no owner field")
        try:
            new, row, after = self._store(principal, request, stored, state, before, owner_name)
        except Exception:
            self.cache.pop(stored.id, None)  # the document may hold an uncommitted write
            log.exception("admin %s on %s failed; nothing was stored", request.action, stored.id)
            return refuse("the relay could not store this action; nothing was changed")
        self.cache.remember(stored.id, state)
        self.fan_out.access_change(new, row, before, after)
        return AdminResult(
            request_id=request.request_id,
            ok=True,
            message=f"{request.action} done",
            version=new.version,
            details=self._access_report(new, after),
        )

    def _store(
        self,
        principal: Principal,
        request: Admin,
        stored: StoredRecord,
        state: RecordState,
        before: RecordFacts,
        owner_name: str | None,
    ) -> tuple[StoredRecord, ChangeRow, RecordFacts]:
        """Store one admin action (one transaction); returns the record, its log row and
        its access facts afterwards."""
        with self.storage.transaction():
            seq = self.storage.next_seq()
            update, fields, kind = b"", {}, str(request.action)
            if request.action is AdminAction.SHARE:
                level = Access.EDIT if request.access == "edit" else Access.READ
                self.storage.set_share(stored.id, str(request.user), int(level))
                state.forget_shares()  # reloaded from the store
            elif request.action is AdminAction.UNSHARE:
                self.storage.set_share(stored.id, str(request.user), None)
                state.forget_shares()
            elif request.action is AdminAction.SET_OWNER and owner_name is not None:
                update = state.write_owner(owner_name, request.user)
                fields, kind = {owner_name: request.user}, str(ChangeKind.UPDATE)
            new = attrs.evolve(
                stored,
                version=seq,
                state=state.doc.full_update() if update else stored.state,
                deleted=request.action is AdminAction.DELETE,
                owner=request.user if request.action is AdminAction.SET_OWNER else stored.owner,
            )
            if new.deleted:
                self.storage.set_uniques(stored.object, stored.id, {})
            self.storage.put_record(new)
            row = ChangeRow(
                seq=seq,
                record_id=stored.id,
                object=stored.object,
                change_id=None,
                replica="admin",
                user=principal.user,
                kind=kind,
                fields=fields,
                update=update,
                at=time.time(),
            )
            self.storage.add_change(row)
            state.now_stored(new)
            after = self.access.facts(new, state)
            for user in {before.owner, after.owner, request.user} - {None}:
                was = self.policy.record_access(str(user), before)
                now = self.policy.record_access(str(user), after)
                if (was >= Access.READ) != (now >= Access.READ):
                    self.storage.log_access(seq, stored.id, str(user), gained=now >= Access.READ)
        return new, row, after

    def _access_report(self, stored: StoredRecord, facts: RecordFacts) -> dict[str, object]:
        spec = self.schema.objects[stored.object]
        roles = {
            role: sorted(action.value for action in actions)
            for role, grants in self.policy.grants.items()
            for name, actions in grants.items()
            if name == stored.object
        }
        return {
            "record": stored.id,
            "object": stored.object,
            "deleted": stored.deleted,
            "owner": facts.owner,
            "sharing": spec.sharing,
            "shares": {user: level.name.lower() for user, level in sorted(facts.shares.items())},
            "roles": roles,
        }
