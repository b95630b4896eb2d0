"""The merge decision: one function from (stored record, incoming change, principal,
policy) to a verdict.

:func:`decide` is where the relay refuses to auto-merge what breaks the rules. It

1. checks the object, the record's existence and the principal's permission;
2. parses the CRDT update and derives what it touches **from the update itself**
   (:mod:`anatomy`), refusing other roots, unknown or read-only fields, shapes the
   record model does not allow, CRDT client ids that belong to another replica, and
   missing dependencies;
3. detects concurrent edits: a non-text field that another replica changed since this
   change's base version, to a value other than this change's, is a conflict (equal
   values are not; ``text`` fields merge and never conflict);
4. applies the update to the record's document and validates the **merged** record:
   types and constraints of the touched fields, required fields, custom rules,
   ``unique`` and ``reference``.

Operations of a change refused as a conflict are remembered (``refused_ops``): a later
change carrying any of them again (a "zombie" op kept by a replica that did not rebuild
its document) is refused with ``refused_ops``, so a rejected write never takes effect.

It applies speculatively into the cached document (no per-change copy): when it
returns :class:`Refused` with ``dirty=True`` the caller must drop that document and
rebuild it from the store, so a refused update leaves no trace. pycrdt faults,
including ``pyo3_runtime.PanicException`` (a ``BaseException``), are contained here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import pycrdt

from crdtsync.core.conflicts import ConflictCodec
from crdtsync.core.exceptions import FieldError, UpdateDecodeError
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.protocol import (
    ChangeFrame,
    ChangeKind,
    Conflict,
    ErrorCode,
    Rejected,
    Unresolvable,
    UnresolvableReason,
    WireConflict,
    WireFieldError,
)
from crdtsync.core.record import UNREAD, ChangeTracker, RecordDoc
from crdtsync.core.schema import ObjectSpec, Schema
from crdtsync.core.yupdate import ParsedUpdate, parse_update

from .anatomy import TEXT, TEXT_TYPE_REF, Anatomy, ItemIndex, SharedType
from .limits import MAX_RECORD_BYTES
from .policy import Action, Policy, Principal, RecordFacts
from .storage import ChangeRow, RelayStorage, StoredRecord

HISTORY_PER_FIELD = 32  #: recent values kept per field for conflict details
#: Structs (and, separately, delete-set ranges) one change's delta may hold. Deciding
#: costs a few microseconds per struct on the relay's one thread: the bound keeps one
#: hostile frame from stalling every connection for seconds. A replica's delta of one
#: record holds its own edits since the last sync, far fewer.
MAX_UPDATE_STRUCTS = 100_000
#: as a module constant: on CPython 3.11 every ``FieldType.X`` lookup takes
#: ``EnumType.__getattr__``'s slow path (:func:`stored_fields` asks it for every change)
_TEXT = FieldType.TEXT


class MergeContext(Protocol):
    """The read-only lookups the decision needs (the relay's storage provides them)."""

    def change_fields(self, record_id: str, after: int = 0) -> list[ChangeRow]: ...
    def field_value_at(self, record_id: str, field: str, version: int) -> Any: ...
    def state_at(self, record_id: str, version: int) -> bytes | None: ...
    def access_gained_at(self, record_id: str, user: str) -> int: ...
    def unique_holder(self, object_name: str, field: str, value: Any) -> str | None: ...
    def live_record_exists(self, object_name: str, record_id: str) -> bool: ...
    def client_id_owner(self, client_id: int) -> str | None: ...
    def refused_by(self, record_id: str, client_id: int, start: int, end: int) -> str | None: ...


@attrs.define
class RecordState:
    """The relay's live view of one stored record: its document and item index.

    Its fields change only through its methods: :meth:`commit` after an accepted
    change, :meth:`commit_predicted` and :meth:`predicted_applied` for the common edit,
    :meth:`write_owner`, :meth:`forget_shares` and :meth:`now_stored` for an admin
    action, :meth:`snapshot` when its row is written, :meth:`carry_over` when a dirty
    document is rebuilt.
    """

    #: the record as stored, everything current except ``state``, which may lack
    #: predicted changes applied since (the push path reads this; :attr:`stored` is the
    #: record with its whole state)
    row: StoredRecord
    doc: RecordDoc
    index: ItemIndex
    #: the document's decoded values and undecodable fields, kept in step with it
    values: dict[str, Any] = attrs.field(factory=dict)
    problems: dict[str, str] = attrs.field(factory=dict)
    #: what each transaction on ``doc`` changed (an update is judged by its effect)
    changes: ChangeTracker | None = None

    def __attrs_post_init__(self) -> None:
        if self.changes is None:
            self.changes = self.doc.track_changes()

    shares: dict[str, int] | None = None  #: manual shares, loaded on first use
    #: the record's access facts, for a policy without a hook (they depend on the owner
    #: and the shares alone, not on the other values): kept until either changes
    facts: RecordFacts | None = None
    #: who may read and edit the record ((user, roles, admin) -> bool), as decided on
    #: the facts it holds (see :meth:`may_edit`)
    editors: tuple[RecordFacts, dict[tuple[str, frozenset[str], bool], bool]] | None = None
    #: field -> replica -> (version, user) of that replica's last write to it (lazy)
    writes: dict[str, dict[str | None, tuple[int, str | None]]] | None = None
    #: field -> recent (version, stored value) pairs, oldest first (lazy, bounded)
    history: dict[str, list[tuple[int, Any]]] = attrs.field(factory=dict)
    history_from: int = 0  #: versions before this are not in ``history``
    #: changes logged since the record's row was written (the row is a snapshot)
    behind: int = 0
    #: the length of ``row.state``, plus that of each update applied since: at least
    #: the length of the document's whole state (see :meth:`predicted_applied`)
    size_bound: int = 0
    _state_lags: bool = False  #: ``row.state`` lacks predicted changes applied since

    def may_edit(self, policy: Policy, principal: Principal, facts: RecordFacts) -> bool:
        """The principal may read and update the record whose access facts are
        ``facts``; remembered while the record's facts are these very ones (they are
        replaced whenever the owner or the shares change)."""
        memo = self.editors
        if memo is None or memo[0] is not facts:
            memo = self.editors = (facts, {})
        key = (principal.user, principal.role_set, principal.admin)
        allowed = memo[1].get(key)
        if allowed is None:
            allowed = memo[1][key] = policy.may_edit(principal, facts)
        return allowed

    @property
    def stored(self) -> StoredRecord:
        """The record as it stands, ``state`` the whole document (encoded here if
        predicted changes were applied since it last was)."""
        if self._state_lags:
            state = self.doc.full_update()
            self.row = self.row.at(self.row.version, state)
            self._state_lags, self.size_bound = False, len(state)
        return self.row

    def value_at(self, context: MergeContext, name: str, version: int) -> Any:
        """The stored value ``name`` had at ``version`` (from memory when recent)."""
        self.field_writes(context)
        if version < self.history_from:
            return context.field_value_at(self.row.id, name, version)
        value = None
        for seq, stored in self.history.get(name, ()):
            if seq > version:
                break
            value = stored
        return value

    def field_writes(
        self, context: MergeContext
    ) -> dict[str, dict[str | None, tuple[int, str | None]]]:
        """Who last wrote each field, per replica (loaded from the log once)."""
        if self.writes is None:
            self.writes = {}
            for row in context.change_fields(self.row.id):
                self.note_write(row.fields, row.seq, row.replica, row.user)
        return self.writes

    def note_write(
        self, fields: Mapping[str, Any], seq: int, replica: str | None, user: str | None
    ) -> None:
        if self.writes is None:
            return  # not loaded yet: the log has it
        for name, value in fields.items():
            self.writes.setdefault(name, {})[replica] = (seq, user)
            values = self.history.setdefault(name, [])
            values.append((seq, value))
            if len(values) > HISTORY_PER_FIELD:
                dropped, _ = values.pop(0)
                self.history_from = max(self.history_from, dropped + 1)

    @classmethod
    def load(cls, stored: StoredRecord, spec: ObjectSpec, relay_client_id: int) -> RecordState:
        """The record as stored, its document rebuilt from its whole state."""
        doc = RecordDoc.from_update(spec, stored.state, client_id=relay_client_id)
        values, problems = doc.read_checked()
        state = cls(stored, doc, ItemIndex.from_state(stored.state), values, problems)
        state.behind, state.size_bound = stored.behind, len(stored.state)
        return state

    @classmethod
    def created(cls, stored: StoredRecord, accepted: Accepted) -> RecordState:
        """The record an accepted create just built (its document indexed, not reloaded)."""
        assert accepted.doc is not None
        index = ItemIndex()
        if accepted.parsed is not None:
            index.commit(accepted.parsed)
        if accepted.relay_update:
            index.commit_bytes(accepted.relay_update)
        index.sync_deleted(parse_update(accepted.doc.deletions()).delete_set)
        state = cls(stored, accepted.doc, index, dict(accepted.values), dict(accepted.problems))
        state.size_bound = len(stored.state)
        state.shares = {}  # shares are given to records that exist: a new one has none
        return state

    def commit(
        self, stored: StoredRecord, accepted: Accepted, replica: str | None, user: str | None
    ) -> None:
        """Keep in step with an accepted change (already applied to ``doc``), stored as
        ``stored`` (its row is written): who wrote what, the values, and the item
        index."""
        self.now_stored(stored)
        self.note_write(accepted.fields, stored.version, replica, user)
        self.values = dict(accepted.values)
        self.problems = dict(accepted.problems)
        self.facts = None
        if accepted.parsed is not None:
            self.index.commit(accepted.parsed)
        if accepted.relay_update:
            self.index.commit_bytes(accepted.relay_update)
        # yrs may have deleted what no delete set names (a concurrent map entry): the
        # document's own delete set keeps the index exact.
        self.index.sync_deleted(parse_update(self.doc.deletions()).delete_set)

    def commit_predicted(
        self,
        version: int,
        *,
        fields: Mapping[str, Any],
        values: dict[str, Any],
        writes: list[tuple[int, int, str]],
        replaced: set[tuple[int, int]],
        replica: str | None,
        user: str | None,
    ) -> None:
        """Keep in step with a predicted change (:mod:`.fastpath`; applied later by
        :meth:`predicted_applied`), logged as version ``version`` and not written to the
        record's row: it wrote ``fields`` (stored values), the record's values are now
        ``values`` (taken, not copied); its items ``writes`` (client, clock, field) now
        stand, the items ``replaced`` are deleted (exactly the deletions yrs makes: the
        index stays exact)."""
        self.row = self.row.at(version)
        self.behind += 1
        self.note_write(fields, version, replica, user)
        self.values = values
        self.index.commit_entries(writes, replaced)

    def predicted_applied(self, updates: list[bytes]) -> None:
        """The predicted changes of ``updates`` were applied to ``doc``: ``row.state``
        lags behind it now. A predicted update adds to the document's whole state at most
        its own length (the same items and values; delete sets only merge), which
        keeps :attr:`size_bound` a bound without encoding the document."""
        self._state_lags = True
        self.size_bound += sum(map(len, updates))

    def snapshot(self) -> StoredRecord:
        """The record as it stands, for its row to be written now (:attr:`behind` 0)."""
        self.behind = 0
        return self.stored

    def write_owner(self, owner_field: str, user: str | None) -> bytes:
        """Write the owner field (an admin's ``set_owner``); returns the update."""
        update = self.doc.write({owner_field: user})
        if update:
            self.index.commit_bytes(update)
        self.values[owner_field] = user
        self.facts = None
        return update

    def load_shares(self, storage: RelayStorage) -> dict[str, int]:
        """The record's manual shares (read from ``storage`` on first use)."""
        if self.shares is None:
            self.shares = storage.shares_of(self.row.id)
        return self.shares

    def forget_shares(self) -> None:
        """The manual shares changed in the store: read them again on next use."""
        self.shares = None
        self.facts = None

    def now_stored(self, stored: StoredRecord) -> None:
        """The record's row is now ``stored``, written as it is (by an accepted change
        or an admin action)."""
        self.row, self._state_lags = stored, False
        self.behind, self.size_bound = 0, len(stored.state)
        self.facts = None

    def carry_over(self, old: RecordState) -> None:
        """Keep what ``old`` (a dropped document of this record) knew from the committed
        log: who wrote which field, recent values, and the shares."""
        self.writes, self.history, self.history_from = old.writes, old.history, old.history_from
        self.shares = old.shares


@attrs.frozen(kw_only=True)
class Accepted:
    """Merge it. ``update`` is what to log and fan out (the change plus the relay's own
    additions, which are also in ``relay_update`` for the ack)."""

    kind: ChangeKind
    fields: Mapping[str, Any]  #: touched field -> its stored value afterwards (None: text)
    values: Mapping[str, Any]  #: the merged record, canonical values
    update: bytes
    relay_update: bytes = b""
    parsed: ParsedUpdate | None = None
    doc: RecordDoc | None = None  #: the merged document (a new one for a create)
    state: bytes = b""  #: ``doc``'s whole state (what the relay stores)
    problems: Mapping[str, str] = attrs.field(factory=dict)  #: undecodable fields (none)


@attrs.frozen
class AlreadyDone:
    """Nothing to merge: the change's effect is already there (e.g. deleting a deleted
    record). Acknowledge with ``version``."""

    version: int


@attrs.frozen
class Refused:
    """Do not merge. ``dirty``: the cached document was touched and must be rebuilt."""

    verdict: Conflict | Unresolvable | Rejected
    dirty: bool = False
    refused_ops: ParsedUpdate | None = None  #: operations to refuse from now on (no zombies)


Decision = Accepted | AlreadyDone | Refused


def decide(
    change: ChangeFrame,
    state: RecordState | None,
    *,
    principal: Principal,
    schema: Schema,
    policy: Policy,
    context: MergeContext,
    relay_client_id: int,
    facts: RecordFacts | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Decision:
    """Decide what to do with ``change`` to the record in ``state`` (None: unknown).

    ``facts`` (owner, shares) is what the record's access depends on; ``schema`` is the
    full schema: the principal's view of it (hidden fields left out, read-only ones
    marked) comes from ``policy``. A record whose whole state would outgrow
    ``max_record_bytes`` is a validation conflict.
    """
    spec = schema.objects.get(change.object)
    view = policy.schema_for(principal).objects.get(change.object)
    if spec is None or view is None:
        return _rejected(change, ErrorCode.UNKNOWN_OBJECT, f"no object type {change.object!r}")
    if state is not None and state.row.object != change.object:
        real = facts or RecordFacts(object=state.row.object, record_id=change.record_id, owner=None)
        if state.row.deleted or not policy.allows(principal, Action.READ, real.object, real):
            return _forbidden(change, "you may not access this record")
        return _rejected(
            change,
            ErrorCode.UNKNOWN_RECORD,
            f"record {change.record_id} is a {state.row.object}, not a {change.object}",
        )
    if change.kind is ChangeKind.CREATE:
        if state is not None:
            return _rejected(
                change, ErrorCode.DUPLICATE_RECORD, f"record {change.record_id} already exists"
            )
        if not policy.allows(principal, Action.CREATE, change.object):
            return _forbidden(change, f"you may not create {change.object} records")
        return _merge(
            change,
            None,
            spec,
            view,
            principal=principal,
            schema=schema,
            context=context,
            relay_client_id=relay_client_id,
            hidden_now=policy.hidden_fields(principal, change.object),
            max_record_bytes=max_record_bytes,
        )
    if state is None:
        return _rejected(change, ErrorCode.UNKNOWN_RECORD, f"no record {change.record_id}")
    if state.row.deleted:
        if change.kind is ChangeKind.DELETE:
            return AlreadyDone(state.row.version)
        return Refused(
            Unresolvable(
                change_id=change.change_id,
                record_id=change.record_id,
                reason=UnresolvableReason.DELETED,
                message="deleted by someone else",
            )
        )
    if facts is None:
        facts = RecordFacts(object=change.object, record_id=change.record_id, owner=None)
    if not policy.allows(principal, Action.READ, change.object, facts):
        return _forbidden(change, "you no longer have access to this record")
    if change.kind is ChangeKind.DELETE:
        if not policy.allows(principal, Action.DELETE, change.object, facts):
            return _forbidden(change, f"you may not delete this {change.object}", readable=True)
        if change.delta:
            return _rejected(change, ErrorCode.MALFORMED_FRAME, "a delete carries no delta")
        return _delete(change, state, view, principal, context)
    if not policy.allows(principal, Action.UPDATE, change.object, facts):
        return _forbidden(change, f"you may not edit this {change.object}", readable=True)
    return _merge(
        change,
        state,
        spec,
        view,
        principal=principal,
        schema=schema,
        context=context,
        relay_client_id=relay_client_id,
        hidden_now=policy.hidden_fields(principal, change.object),
        max_record_bytes=max_record_bytes,
    )


def _forbidden(change: ChangeFrame, message: str, *, readable: bool = False) -> Refused:
    return Refused(
        Unresolvable(
            change_id=change.change_id,
            record_id=change.record_id,
            reason=UnresolvableReason.FORBIDDEN,
            message=message,
            readable=readable,
        )
    )


def _delete(
    change: ChangeFrame,
    state: RecordState,
    spec: ObjectSpec,
    principal: Principal,
    context: MergeContext,
) -> Decision:
    since = [
        c
        for c in context.change_fields(change.record_id, after=change.base_version)
        # Changes to fields this user cannot see count too (a delete would lose them);
        # the conflict then names who changed the record, not what.
        if c.replica != principal.replica_id and c.fields
    ]
    if not since:
        return Accepted(kind=ChangeKind.DELETE, fields={}, values={}, update=b"")
    changed = sorted({name for c in since for name in c.fields if name in spec.fields})
    shown = _revealable(change.base_version, change, principal, context)
    texts_then = None
    if any(spec.fields[name].type is FieldType.TEXT for name in changed):
        # The log keeps no text values: the base text comes from the logged updates.
        then = context.state_at(change.record_id, shown)
        texts_then = RecordDoc.from_update(spec, then) if then is not None else None

    def base(name: str) -> Any:
        if spec.fields[name].type is not FieldType.TEXT:
            return state.value_at(context, name, shown)
        if texts_then is None:
            return None  # compacted away: unknown
        return texts_then.stored_value(name) or None

    conflicts = tuple(
        WireConflict(
            field=name,
            base=base(name),
            mine=None,
            theirs=ConflictCodec(spec).normalize(name, state.doc.stored_value(name)),
            changed_by=next(c.user for c in reversed(since) if name in c.fields),
        )
        for name in changed
    )
    who = ", ".join(sorted({c.user or "someone else" for c in since}))
    return Refused(
        Conflict(
            change_id=change.change_id,
            record_id=change.record_id,
            version=state.stored.version,
            update=state.stored.state,
            conflicts=conflicts,
            message=f"changed by {who} since you deleted it",
        )
    )


def _merge(
    change: ChangeFrame,
    state: RecordState | None,
    spec: ObjectSpec,
    view: ObjectSpec,
    *,
    principal: Principal,
    schema: Schema,
    context: MergeContext,
    relay_client_id: int,
    hidden_now: frozenset[str] = frozenset(),
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Decision:
    """Merge an update (or a create: ``state`` is None) into the record, step by step;
    the first step that refuses decides."""
    creating = state is None
    parsed = _parsed_delta(change)
    if isinstance(parsed, Refused):
        return parsed
    refused = _forged_client_ids(change, parsed, principal, context, relay_client_id)
    if refused is not None:
        return refused
    ranges = parsed.client_ranges()
    index = state.index if state is not None else ItemIndex()
    refused = (
        _foreign_content_refused(change, parsed)
        or _resent_operations_refused(change, ranges, index)
        or _zombie_operations_refused(change, ranges, context)
    )
    if refused is not None:
        return refused
    delta = _without_hidden_deletes(change, state, principal, hidden_now)
    if delta is not change.delta:
        parsed = _reparsed(change, delta)
        if isinstance(parsed, Refused):
            return parsed
        ranges = parsed.client_ranges()
    anatomy = _checked_anatomy(change, parsed, ranges, index, view, creating)
    if isinstance(anatomy, Refused):
        return anatomy
    refused = _concurrent_edits_refused(change, state, view, anatomy, principal, context, parsed)
    refused = refused or _written_values_refused(change, state, anatomy, spec, view, parsed)
    if refused is not None:
        return refused
    applied = _applied(change, state, spec, delta, ranges, anatomy, relay_client_id)
    if isinstance(applied, Refused):
        return applied
    doc, effect = applied
    values, decode_problems = _merged_values(state, doc, anatomy, effect)
    relay_update = b""
    if creating:
        made = _creation_defaults(change, doc, spec, anatomy, values, principal)
        if isinstance(made, Refused):
            return made
        relay_update = made
    touched = set(anatomy.fields)
    if creating:
        touched |= set(values) | set(decode_problems)
    refused = _invalid_record_refused(
        change, state, spec, view, schema, values, decode_problems, touched, context, parsed
    )
    if refused is not None:
        return refused
    whole = doc.full_update()
    refused = _too_large_refused(change, state, whole, max_record_bytes, parsed)
    if refused is not None:
        return refused
    fields = stored_fields(spec, values, touched)
    update = pycrdt.merge_updates(delta, relay_update) if relay_update else delta
    return Accepted(
        kind=change.kind,
        fields=fields,
        values=values,
        update=bytes(update),
        relay_update=relay_update,
        parsed=parsed,
        doc=doc,
        state=whole,
        problems=decode_problems,
    )


def _rejected(
    change: ChangeFrame, code: ErrorCode, message: str, *, dirty: bool = False
) -> Refused:
    """A rejection of ``change`` (``dirty``: the cached document was touched)."""
    return Refused(
        Rejected(
            change_id=change.change_id, record_id=change.record_id, code=code, message=message
        ),
        dirty,
    )


def _validation_conflict(
    change: ChangeFrame,
    state: RecordState | None,
    errors: tuple[WireFieldError, ...],
    parsed: ParsedUpdate,
    *,
    dirty: bool,
) -> Refused:
    """A conflict over field errors: the record as stored, its operations refused from now on."""
    return Refused(
        Conflict(
            change_id=change.change_id,
            record_id=change.record_id,
            version=state.stored.version if state is not None else 0,
            update=state.stored.state if state is not None else b"",
            errors=errors,
        ),
        dirty=dirty,
        refused_ops=parsed,
    )


def _parsed_delta(change: ChangeFrame) -> ParsedUpdate | Refused:
    """Step: the change's CRDT update, parsed (refused if absent, undecodable or too big)."""
    if not change.delta:
        return _rejected(change, ErrorCode.INVALID_UPDATE, "the change carries no CRDT update")
    try:
        return parse_update(change.delta, max_structs=MAX_UPDATE_STRUCTS)
    except UpdateDecodeError as exc:
        return _rejected(change, ErrorCode.INVALID_UPDATE, f"undecodable CRDT update: {exc}")


def _forged_client_ids(
    change: ChangeFrame,
    parsed: ParsedUpdate,
    principal: Principal,
    context: MergeContext,
    relay_client_id: int,
) -> Refused | None:
    """Step: refuse CRDT client ids that belong to another replica (or the relay)."""
    for client in parsed.clients():
        owner = context.client_id_owner(client)
        if client == relay_client_id or (owner is not None and owner != principal.replica_id):
            return _rejected(
                change,
                ErrorCode.FORGED_CLIENT_ID,
                f"CRDT client id {client} belongs to another replica",
            )
    return None


def _foreign_content_refused(change: ChangeFrame, parsed: ParsedUpdate) -> Refused | None:
    """Step: refuse content a record never holds (see :data:`RECORD_CONTENT`)."""
    foreign = _foreign_content(parsed)
    if foreign is not None:
        return _rejected(change, ErrorCode.INVALID_UPDATE, foreign)
    return None


def _resent_operations_refused(
    change: ChangeFrame, ranges: Mapping[int, tuple[int, int]], index: ItemIndex
) -> Refused | None:
    """Step: refuse an update that re-sends clocks the record already holds."""
    overlap = _known_operations_resent(ranges, index)
    if overlap is not None:
        return _rejected(change, ErrorCode.INVALID_UPDATE, overlap)
    return None


def _zombie_operations_refused(
    change: ChangeFrame, ranges: Mapping[int, tuple[int, int]], context: MergeContext
) -> Refused | None:
    """Step: refuse operations the relay refused in an earlier change (no zombies)."""
    for client, (start, end) in ranges.items():
        earlier = context.refused_by(change.record_id, client, start, end)
        if earlier is not None and earlier != change.change_id:
            return _rejected(
                change,
                ErrorCode.REFUSED_OPS,
                f"the update carries operations the relay refused in change {earlier}; "
                "rebuild the record from the relay's version",
            )
    return None


def _without_hidden_deletes(
    change: ChangeFrame,
    state: RecordState | None,
    principal: Principal,
    hidden_now: frozenset[str],
) -> bytes:
    """Step: the delta less its deletions of items hidden from the replica (the delta
    itself, the same object, when there are none)."""
    hidden = hidden_now | principal.once_hidden.get(change.object, frozenset())
    if hidden and state is not None:
        # A reader of projected updates holds hidden items as GCs, and every delta it
        # sends repeats them as deletions: it cannot mean to delete what it never saw
        # (also after the field became visible to it: its placeholders stay).
        return state.index.strip_hidden_deletes(change.delta, hidden)
    return change.delta


def _reparsed(change: ChangeFrame, delta: bytes) -> ParsedUpdate | Refused:
    """Step: the stripped delta, parsed again."""
    try:
        return parse_update(delta)
    except UpdateDecodeError as exc:
        return _rejected(change, ErrorCode.INVALID_UPDATE, f"undecodable CRDT update: {exc}")


def _checked_anatomy(
    change: ChangeFrame,
    parsed: ParsedUpdate,
    ranges: Mapping[int, tuple[int, int]],
    index: ItemIndex,
    view: ObjectSpec,
    creating: bool,
) -> Anatomy | Refused:
    """Step: what the update touches, read from the update itself; refused if its shape
    is not the record model's or it depends on operations the relay does not have."""
    try:  # reads item values: a value the parser let through must not escape as a fault
        anatomy = index.analyse(parsed)
    except UpdateDecodeError as exc:
        return _rejected(change, ErrorCode.INVALID_UPDATE, f"undecodable CRDT update: {exc}")
    problem = _shape_problem(anatomy, view, creating=creating)
    if problem is not None:
        return _rejected(change, *problem)
    for client, (start, _end) in ranges.items():
        if start > index.end_clock(client):
            anatomy = attrs.evolve(anatomy, missing=True)
    if anatomy.missing:
        return _rejected(
            change,
            ErrorCode.MISSING_DEPENDENCIES,
            "the update depends on changes the relay does not have",
        )
    return anatomy


def _concurrent_edits_refused(
    change: ChangeFrame,
    state: RecordState | None,
    view: ObjectSpec,
    anatomy: Anatomy,
    principal: Principal,
    context: MergeContext,
    parsed: ParsedUpdate,
) -> Refused | None:
    """Step: a conflict if another replica changed a plain field since this change's base."""
    if state is None:
        return None
    conflicts = _concurrent_edits(change, state, view, anatomy, principal, context)
    if not conflicts:
        return None
    return Refused(
        Conflict(
            change_id=change.change_id,
            record_id=change.record_id,
            version=state.stored.version,
            update=state.stored.state,
            conflicts=conflicts,
        ),
        refused_ops=parsed,
    )


def _written_values_refused(
    change: ChangeFrame,
    state: RecordState | None,
    anatomy: Anatomy,
    spec: ObjectSpec,
    view: ObjectSpec,
    parsed: ParsedUpdate,
) -> Refused | None:
    """Step: a conflict if a plain value it writes breaks its own field's constraints."""
    # A plain value that breaks its own field's constraints, or is not written in the
    # form the schema stores it in, is refused before it is applied (whether or not it
    # would win): cheap, and nothing to rebuild.
    early = _written_value_errors(anatomy, spec)
    if not early:
        return None
    errors = tuple(
        WireFieldError(field=e.field, message=e.message) for e in _visible_errors(early, view)
    )
    return _validation_conflict(change, state, errors, parsed, dirty=False)


def _applied(
    change: ChangeFrame,
    state: RecordState | None,
    spec: ObjectSpec,
    delta: bytes,
    ranges: Mapping[int, tuple[int, int]],
    anatomy: Anatomy,
    relay_client_id: int,
) -> tuple[RecordDoc, Mapping[str, Any]] | Refused:
    """Step: the record's document with the delta applied (a new one for a create), and
    the plain values yrs reports it wrote (``{}`` for a create); refused if pycrdt refuses
    it, it lacks dependencies, or it changed fields it does not name."""
    doc = state.doc if state is not None else RecordDoc(spec, client_id=relay_client_id)
    if state is not None:
        assert state.changes is not None
        state.changes.take()  # forget what earlier transactions (the relay's own) did
    try:
        after = decode_state_vector(doc.apply_for_state(delta))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return _rejected(
            change, ErrorCode.INVALID_UPDATE, f"pycrdt refused the update: {exc}", dirty=True
        )
    for client, (_start, end) in ranges.items():
        if after.get(client, 0) < end:
            return _rejected(
                change,
                ErrorCode.MISSING_DEPENDENCIES,
                "the update depends on changes the relay does not have",
                dirty=True,
            )
    if state is None:
        return doc, {}
    # Judged by effect: every field the apply changed, as yrs reports it, must be one
    # the update names (and so one it was allowed to write, checked above).
    assert state.changes is not None
    effect = state.changes.take_values()
    unnamed = sorted(effect.keys() - anatomy.fields)
    if unnamed:
        return _rejected(
            change,
            ErrorCode.INVALID_UPDATE,
            f"the update changed fields its operations do not name: {', '.join(unnamed)}",
            dirty=True,
        )
    return doc, effect


def _merged_values(
    state: RecordState | None, doc: RecordDoc, anatomy: Anatomy, effect: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Step: the merged record's values and undecodable fields (for an update, only the
    touched fields are read again: from ``effect``, the plain values yrs reported the
    apply wrote, where it has them; from the document otherwise)."""
    if state is None:
        return doc.read_checked()
    known = {name: value for name, value in effect.items() if value is not UNREAD}
    fresh, fresh_problems = doc.read_checked(anatomy.fields, known=known)
    values = {k: v for k, v in state.values.items() if k not in anatomy.fields}
    values.update(fresh)
    decode_problems = {
        k: v for k, v in state.problems.items() if k not in anatomy.fields
    } | fresh_problems
    return values, decode_problems


def _creation_defaults(
    change: ChangeFrame,
    doc: RecordDoc,
    spec: ObjectSpec,
    anatomy: Anatomy,
    values: dict[str, Any],
    principal: Principal,
) -> bytes | Refused:
    """Step (create): the relay's own writes to a new record (owner fields, empty texts),
    as an update, added to ``values``; refused if it names another owner."""
    relay_update = b""
    defaults = {
        name: principal.user
        for name, field in spec.fields.items()
        if field.type is FieldType.OWNER and values.get(name) is None
    }
    # Every text field holds one Y.Text from the record's creation (an empty one
    # reads as no value): two replicas' first edits then merge into it, instead of
    # each creating its own and the map keeping one. The relay creates those the
    # create left out, e.g. fields hidden from the creator.
    texts = {
        name: ""
        for name, field in spec.fields.items()
        if field.type is FieldType.TEXT and name not in anatomy.fields
    }
    if defaults or texts:
        relay_update = doc.write({**texts, **defaults})
        values.update(defaults)
    owners = {values.get(name) for name, f in spec.fields.items() if f.type is FieldType.OWNER}
    if owners - {principal.user}:
        return Refused(
            Unresolvable(
                change_id=change.change_id,
                record_id=change.record_id,
                reason=UnresolvableReason.FORBIDDEN,
                message="you can only create records you own (an administrator can "
                "change the owner afterwards)",
            ),
            dirty=True,
        )
    return relay_update


def _invalid_record_refused(
    change: ChangeFrame,
    state: RecordState | None,
    spec: ObjectSpec,
    view: ObjectSpec,
    schema: Schema,
    values: Mapping[str, Any],
    decode_problems: Mapping[str, str],
    touched: set[str],
    context: MergeContext,
    parsed: ParsedUpdate,
) -> Refused | None:
    """Step: a conflict if the merged record breaks a rule: the touched fields' types and
    constraints, required fields, custom rules, ``unique`` and ``reference``."""
    errors = [FieldError(name, message) for name, message in decode_problems.items()]
    canonical_touched = {name: values.get(name) for name in touched if name not in decode_problems}
    _canonical, field_errors = spec.check_changes(canonical_touched, creating=True)
    errors += field_errors
    if not errors:
        errors += spec.check_record(values)
        errors += unique_and_reference_errors(change, spec, schema, values, touched, context)
    errors = _visible_errors(errors, view)
    if not errors:
        return None
    wire = tuple(WireFieldError(field=e.field, message=e.message) for e in errors)
    return _validation_conflict(change, state, wire, parsed, dirty=True)


def _too_large_refused(
    change: ChangeFrame,
    state: RecordState | None,
    whole: bytes,
    max_record_bytes: int,
    parsed: ParsedUpdate,
) -> Refused | None:
    """Step: a conflict if the record's whole state would outgrow ``max_record_bytes``."""
    if len(whole) <= max_record_bytes:
        return None
    error = WireFieldError(
        field="",
        message=f"the record would be {len(whole):,} bytes, more than the "
        f"{max_record_bytes:,} a record may hold: make it smaller",
    )
    return _validation_conflict(change, state, (error,), parsed, dirty=True)


def stored_fields(spec: ObjectSpec, values: Mapping[str, Any], touched: set[str]) -> dict[str, Any]:
    """Step: each touched field's stored value afterwards (None for a text) for the log."""
    fields, text = spec.fields, _TEXT
    stored: dict[str, Any] = {}
    for name in touched:
        kind = fields[name].type
        stored[name] = None if kind is text else kind.encode(values.get(name))
    return stored


#: The Yjs content a record is made of: ``any`` values in the ``fields`` map, a ``type``
#: (a Y.Text) per text field, ``string`` characters inside it, and ``deleted`` content.
#: JSON (legacy, and re-encoded by yrs unreadably: the record would no longer load),
#: binary, embed, format and subdocument content are not.
RECORD_CONTENT = frozenset({"any", "type", "string", "deleted"})


def _foreign_content(parsed: ParsedUpdate) -> str | None:
    """Why the update holds content a record never does, if it does."""
    for struct in parsed.structs:
        if struct.kind != "item":
            continue
        if struct.content not in RECORD_CONTENT:
            return (
                f"{struct.content} content (CRDT client {struct.client}, clock {struct.clock}) "
                "is not part of a record: fields hold plain values or a Y.Text of characters"
            )
        if struct.content == "type" and struct.type_ref != TEXT_TYPE_REF:
            return (
                f"a shared type other than Y.Text (type ref {struct.type_ref}; CRDT client "
                f"{struct.client}, clock {struct.clock}) is not part of a record"
            )
    return None


def _known_operations_resent(ranges: Mapping[int, tuple[int, int]], index: ItemIndex) -> str | None:
    """Why the update re-sends clocks the record already holds, if it does: yrs would keep
    only the part of such a struct past what it has, re-attached to the item before it,
    which is not the write the update encodes. Nothing honest re-sends."""
    for client, (start, _end) in ranges.items():
        known = index.end_clock(client)
        if start < known:
            return (
                f"the update re-sends operations the record already has (CRDT client "
                f"{client} from clock {start}; the record has it up to {known - 1}): send "
                "only operations past the record's state vector"
            )
    return None


def _written_value_errors(anatomy: Anatomy, spec: ObjectSpec) -> list[FieldError]:
    """Field errors of the plain values an update writes (types, lengths, picklists,
    ranges; clearing a required field), read from the update itself."""
    errors: list[FieldError] = []
    for name, raw in anatomy.written.items():
        field = spec.fields[name]
        if field.type is FieldType.TEXT or isinstance(raw, SharedType):
            continue
        form = field.type.stored_form_problem(raw)
        if form is not None:
            errors.append(FieldError(name, form))
            continue
        try:
            value = field.type.decode(raw)
        except (ValueError, TypeError) as exc:
            errors.append(FieldError(name, str(exc)))
            continue
        _canonical, problems = field.check(value)
        errors.extend(FieldError(name, problem) for problem in problems)
        if value is None and field.required:
            errors.append(FieldError(name, "is required"))
    return errors


def _visible_errors(errors: list[FieldError], view: ObjectSpec) -> list[FieldError]:
    """Errors about fields the principal may not read say so, without naming them."""
    visible = []
    for error in errors:
        if error.field and error.field not in view.fields:
            error = FieldError("", "the record breaks a rule on a field you cannot see")
        if error not in visible:
            visible.append(error)
    return visible


def _shape_problem(
    anatomy: Anatomy, spec: ObjectSpec, *, creating: bool
) -> tuple[ErrorCode, str] | None:
    if anatomy.other_roots:
        roots = ", ".join(sorted(anatomy.other_roots))
        return ErrorCode.OTHER_ROOT, f"the update writes to other roots than 'fields': {roots}"
    unknown = sorted(name for name in anatomy.fields if name not in spec.fields)
    if unknown:
        return ErrorCode.UNKNOWN_FIELD, f"no such field on {spec.name}: {', '.join(unknown)}"
    if not creating:
        read_only = sorted(
            name
            for name in anatomy.fields
            if spec.fields[name].read_only or spec.fields[name].type is FieldType.OWNER
        )
        if read_only:
            return ErrorCode.READ_ONLY_FIELD, f"read-only: {', '.join(read_only)}"
    if anatomy.bad_shape:
        return ErrorCode.INVALID_UPDATE, "; ".join(anatomy.bad_shape)
    for name, value in anatomy.written.items():
        is_text = spec.fields[name].type is FieldType.TEXT
        if is_text and value is not None and value != TEXT:
            return ErrorCode.INVALID_UPDATE, f"{name}: a text field must hold a collaborative text"
        if not is_text and isinstance(value, SharedType):
            return (
                ErrorCode.INVALID_UPDATE,
                f"{name}: a {spec.fields[name].type.value} field holds a plain value",
            )
    for name in anatomy.nested:
        if spec.fields[name].type is not FieldType.TEXT:
            return ErrorCode.INVALID_UPDATE, f"{name}: nested content in a non-text field"
    return None


def _concurrent_edits(
    change: ChangeFrame,
    state: RecordState,
    spec: ObjectSpec,
    anatomy: Anatomy,
    principal: Principal,
    context: MergeContext,
) -> tuple[WireConflict, ...]:
    plain = [
        name for name in sorted(anatomy.fields) if spec.fields[name].type is not FieldType.TEXT
    ]
    if not plain:
        return ()
    bases = {name: change.field_bases.get(name, change.base_version) for name in plain}
    if min(bases.values()) >= state.row.version:
        return ()  # nothing happened to the record since this change's base
    writes = state.field_writes(context)
    conflicts = []
    codec = ConflictCodec(spec)
    for name in plain:
        theirs_changes = sorted(
            (seq, user)
            for replica, (seq, user) in writes.get(name, {}).items()
            if replica != principal.replica_id and seq > bases[name]
        )
        if not theirs_changes:
            continue
        field_type = spec.fields[name].type
        theirs = state.doc.stored_value(name)
        mine = anatomy.written.get(name)
        if _same_value(field_type, mine, theirs):
            continue
        conflicts.append(
            WireConflict(
                field=name,
                base=state.value_at(
                    context, name, _revealable(bases[name], change, principal, context)
                ),
                mine=codec.normalize(name, mine),
                theirs=codec.normalize(name, theirs),
                changed_by=theirs_changes[-1][1],
            )
        )
    return tuple(conflicts)


def _revealable(
    version: int, change: ChangeFrame, principal: Principal, context: MergeContext
) -> int:
    """The version whose values a conflict may show for a base of ``version``: a base is
    the client's claim, so never one before the user last gained access to the record
    (they were sent the record whole then; what it held before is not theirs to see)."""
    return max(version, context.access_gained_at(change.record_id, principal.user))


def _same_value(field_type: FieldType, mine: Any, theirs: Any) -> bool:
    try:
        a, b = field_type.decode(mine), field_type.decode(theirs)
    except (ValueError, TypeError):
        return False
    return bool(a == b and type(a) is type(b))


def unique_and_reference_errors(
    change: ChangeFrame,
    spec: ObjectSpec,
    schema: Schema,
    values: Mapping[str, Any],
    touched: set[str] | frozenset[str],
    context: MergeContext,
) -> list[FieldError]:
    errors = []
    for name in sorted(touched):
        field = spec.fields[name]
        value = values.get(name)
        if value is None:
            continue
        if field.unique:
            holder = context.unique_holder(spec.name, name, field.type.encode(value))
            if holder is not None and holder != change.record_id:
                errors.append(FieldError(name, f"{value!r} is already used by another {spec.name}"))
        is_reference = field.type is FieldType.REFERENCE and field.to is not None
        if is_reference and not context.live_record_exists(str(field.to), value):
            errors.append(FieldError(name, f"no {field.to} with id {value}"))
    return errors


def decode_state_vector(state: bytes) -> dict[int, int]:
    """``{client: clock}`` from an encoded state vector.

    Run once per applied change on the relay's hot path, so the varuint reads are
    inlined (as in :mod:`crdtsync.core.yupdate`): a state vector is a varuint count, then
    that many (client, clock) varuint pairs."""
    out: dict[int, int] = {}
    pos = 0
    numbers: list[int] = []
    end = len(state)
    while pos < end:
        byte = state[pos]
        pos += 1
        if byte < 0x80:
            numbers.append(byte)
            continue
        value, shift = byte & 0x7F, 7
        while True:
            byte = state[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        numbers.append(value)
    if not numbers or len(numbers) != 1 + 2 * numbers[0]:
        raise ValueError("not an encoded state vector")
    for i in range(1, len(numbers), 2):
        out[numbers[i]] = numbers[i + 1]
    return out
