"""The common edit, proven acceptable from its bytes, applied once per record per frame.

Almost every change a replica pushes is the same shape: it overwrites a few plain
fields of a record it can edit, each new value placed right after the value it
replaces. For that shape the outcome of applying the update is known before pycrdt
sees it, so :meth:`Predictor.predict` decides the change from the parsed update and the relay's
record state alone, and the pipeline applies the record's accepted updates of the whole
push frame in one pycrdt transaction (:class:`Deferred`), checking afterwards that yrs
did exactly what was predicted.

The shape, every part of it checked (anything else is left to :func:`.merge.decide`):

* an ``update`` of an existing, live record of the object the change names, by a
  principal who may read and edit it and from whom no field of it is hidden;
* one CRDT client, not the relay's, not bound to another replica; its clocks start
  exactly where the record's end (nothing re-sent, nothing missing) and overlap no
  refused operations;
* every struct is an item of one plain (``any``) value, with an origin, no right origin
  and no parent of its own, whose origin is the **standing** entry of a field of the
  ``fields`` map (or the item before it in this update, for the same field): the item
  then becomes the rightmost entry of that key, the field's new value;
* the delete set deletes exactly those origins (the replaced values), besides what the
  record has already deleted;
* the fields are visible, editable (not read-only, not the owner) and not ``text``;
  nobody else changed them since the change's base; the written values, and the whole
  record with them, pass every rule (the same functions :func:`.merge.decide` runs).

"Standing" needs an exact index, one that knows every deletion of the document: a
record's index is built from its whole state (whose delete set is complete), takes the
document's delete set after every change decided the general way (yrs deletes a map
entry integrated beside a concurrent one of its own accord), and a predicted change adds
exactly the deletions yrs makes.

A prediction is a promise checked by effect: :meth:`Deferred.apply` applies the
record's accepted updates and compares what yrs reports it changed (the keys and their
values, and the state vector) with what was predicted. A mismatch raises
:class:`Mispredicted`: the pipeline then rolls the frame back and decides it again
change by change, so nothing decided on a wrong prediction is ever stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs

from crdtsync.core.exceptions import UpdateDecodeError
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.protocol import ChangeFrame, ChangeKind
from crdtsync.core.record import PLAIN_VALUES, UNREAD
from crdtsync.core.schema import ObjectSpec, Schema
from crdtsync.core.yupdate import Overwrite, StructInfo, common_overwrite, parse_update

from .anatomy import ENTRY
from .merge import (
    MAX_UPDATE_STRUCTS,
    MergeContext,
    RecordState,
    decode_state_vector,
    stored_fields,
    unique_and_reference_errors,
)
from .policy import Policy, Principal, RecordFacts

#: as a module constant: on CPython 3.11 every ``ChangeKind.X`` lookup takes
#: ``EnumType.__getattr__``'s slow path, and this is asked of every change
_UPDATE = ChangeKind.UPDATE


class Mispredicted(Exception):
    """yrs did not do what a prediction promised: decide the frame again, the general way."""


class Predicted(NamedTuple):
    """An accepted change of the common shape, not applied yet (a named tuple: one is
    made per change on the relay's hot path, at a third of an attrs instance's cost)."""

    update: bytes
    fields: dict[str, Any]  #: field -> its stored value after the change (what it wrote)
    values: dict[str, Any]  #: the record's values after the change (decoded)
    client: int
    end: int  #: the clock after the change's last item
    writes: list[tuple[int, int, str]]  #: (client, clock, field) of each item
    replaced: set[tuple[int, int]]  #: the items it deletes: the values it replaces
    raw: Mapping[str, Any]  #: field -> the value yrs will read back


class Predictor:
    """Decides changes of the common shape by prediction (:meth:`predict`), with what it
    reads of the schema and the policy cached per role set and object."""

    def __init__(self, schema: Schema, policy: Policy, relay_client_id: int) -> None:
        self.schema = schema
        self.policy = policy
        self.relay_client_id = relay_client_id
        #: (roles, object) -> (spec, the principal's view, the fields a prediction may
        #: write), or None if nothing of the object is predictable for those roles
        self._editable: dict[
            tuple[frozenset[str], str], tuple[ObjectSpec, ObjectSpec, frozenset[str]] | None
        ] = {}

    def editable(
        self, principal: Principal, name: str
    ) -> tuple[ObjectSpec, ObjectSpec, frozenset[str]] | None:
        """The object's spec, the principal's view of it and the fields a predicted
        change may write: visible, editable (not read-only, not the owner) and plain (not
        ``text``); None if the object is unknown to them or hides fields from them."""
        key = (principal.role_set, name)
        if key in self._editable:
            return self._editable[key]
        spec = self.schema.objects.get(name)
        view = self.policy.schema_for(principal).objects.get(name)
        found = None
        if spec is not None and view is not None and not self.policy.hidden_fields(principal, name):
            fields = frozenset(
                field_name
                for field_name, field in view.fields.items()
                if field_name in spec.fields
                and not field.read_only
                and field.type not in (FieldType.OWNER, FieldType.TEXT)
            )
            found = (spec, view, fields)
        self._editable[key] = found
        return found

    def predict(
        self,
        change: ChangeFrame,
        state: RecordState | None,
        facts: RecordFacts | None,
        *,
        principal: Principal,
        context: MergeContext,
    ) -> Predicted | None:
        """The acceptance of ``change`` if it has the common shape (module docstring) and
        passes every check; ``None`` if not (then :func:`.merge.decide` decides it)."""
        if (
            change.kind is not _UPDATE
            or not change.delta
            or state is None
            or facts is None
            or state.row.deleted
            or state.row.object != change.object
        ):
            return None
        name = change.object
        editable = self.editable(principal, name)
        if editable is None or principal.once_hidden.get(name):
            return None
        spec, view, predictable = editable
        if not state.may_edit(self.policy, principal, facts):
            return None
        return _predicted(
            change, state, spec, view, predictable, principal, self.schema, context,
            self.relay_client_id,
        )  # fmt: skip


def _predicted(
    change: ChangeFrame,
    state: RecordState,
    spec: ObjectSpec,
    view: ObjectSpec,
    predictable: frozenset[str],
    principal: Principal,
    schema: Schema,
    context: MergeContext,
    relay_client_id: int,
) -> Predicted | None:
    """The update attributed to the record's fields (the commonest delta read directly,
    anything else parsed), checked for the common shape, and the record with it checked
    against every rule (see :meth:`Predictor.predict`)."""
    one = common_overwrite(change.delta)
    if one is not None:
        found = _attribute_overwrite(one, change, state, principal, context, relay_client_id)
    else:
        found = _attribute(change, state, principal, context, relay_client_id)
    if found is None:
        return None
    keys, raw, origins, client, start = found

    touched = set(raw)
    if not touched <= predictable:
        return None
    if _changed_by_others(change, state, touched, principal, context):
        return None
    values = {k: v for k, v in state.values.items() if k not in touched}
    if state.problems or not _record_passes(change, spec, schema, raw, values, context):
        return None
    return Predicted(
        update=change.delta,
        fields=stored_fields(spec, values, touched),
        values=values,
        client=client,
        end=start + len(keys),
        writes=[(client, start + i, key) for i, key in enumerate(keys)],
        replaced=origins,
        raw=raw,
    )


#: What attributing an update to the record's fields finds: the key each item writes (in
#: order), field -> the value yrs will read back, the items it deletes (the values it
#: replaces), its one client and first clock.
_Attributed = tuple[list[str], dict[str, Any], set[tuple[int, int]], int, int]


def _takes_clocks(
    change: ChangeFrame,
    state: RecordState,
    client: int,
    start: int,
    end: int,
    principal: Principal,
    context: MergeContext,
    relay_client_id: int,
) -> bool:
    """``client``'s items ``[start, end)`` come next for the record: not the relay's
    client, its clocks start exactly where the record's end, the client id is not bound
    to another replica, and no refused operation is among them."""
    if client == relay_client_id or start != state.index.end_clock(client):
        return False
    owner = context.client_id_owner(client)
    if owner is not None and owner != principal.replica_id:
        return False
    return context.refused_by(change.record_id, client, start, end) is None


def _attribute_overwrite(
    one: Overwrite,
    change: ChangeFrame,
    state: RecordState,
    principal: Principal,
    context: MergeContext,
    relay_client_id: int,
) -> _Attributed | None:
    """:func:`_attribute` of the commonest delta (one plain value written over the
    standing one), read without struct objects."""
    client, start, origin, value = one.client, one.clock, one.origin, one.value
    if not _takes_clocks(
        change, state, client, start, start + 1, principal, context, relay_client_id
    ):
        return None
    index = state.index
    found = index.owner(origin)
    if found is None or found[1] != ENTRY or index.deleted(origin):
        return None
    if type(value) not in PLAIN_VALUES or index.newly_deleted(one.delete_set, limit=1) != {origin}:
        return None
    key = found[0]
    return [key], {key: value}, {origin}, client, start


def _attribute(
    change: ChangeFrame,
    state: RecordState,
    principal: Principal,
    context: MergeContext,
    relay_client_id: int,
) -> _Attributed | None:
    """The update's items attributed to the record's fields, if it has the common shape
    (module docstring): each item one plain value placed right after the standing entry
    of a field (or after this update's own last write to it), and the delete set exactly
    the values it replaces."""
    try:
        parsed = parse_update(change.delta, max_structs=MAX_UPDATE_STRUCTS)
    except UpdateDecodeError:
        return None
    structs = parsed.structs
    if not structs or not all(map(_plain_entry, structs)):
        return None
    client = structs[0].client
    start = structs[0].clock
    end = start + len(structs)
    if not _takes_clocks(change, state, client, start, end, principal, context, relay_client_id):
        return None
    index = state.index
    keys: list[str] = []
    raw: dict[str, Any] = {}
    latest: dict[str, int] = {}  # field -> clock of its item in this update so far
    origins: set[tuple[int, int]] = set()
    clock = start
    for struct in structs:
        if struct.client != client or struct.clock != clock:
            return None
        origin = struct.origin
        assert origin is not None
        if origin[0] == client and start <= origin[1] < clock:
            key = keys[origin[1] - start]
            if latest[key] != origin[1]:
                return None  # not the item this update last wrote to that field
        else:
            found = index.owner(origin)
            if found is None or found[1] != ENTRY or index.deleted(origin):
                return None
            key = found[0]
            if key in latest:
                return None  # a second write to the field, not after the first
        held = parsed.any_values(struct)
        if len(held) != 1 or type(held[0]) not in PLAIN_VALUES:
            return None
        keys.append(key)
        raw[key] = held[0]
        latest[key] = clock
        origins.add(origin)
        clock += 1
    if index.newly_deleted(parsed.delete_set, limit=len(origins)) != origins:
        return None
    return keys, raw, origins, client, start


def _record_passes(
    change: ChangeFrame,
    spec: ObjectSpec,
    schema: Schema,
    raw: Mapping[str, Any],
    values: dict[str, Any],
    context: MergeContext,
) -> bool:
    """Every written value is in its stored form, decodes and passes its field's checks
    (a required field is not cleared), and the record with them (``values`` gets them,
    decoded) passes the record's rules, ``unique`` and ``reference``: exactly when
    :func:`.merge.decide` finds no field error (its ``_written_value_errors`` and
    ``_invalid_record_refused``), checked once per value."""
    for name, stored in raw.items():
        field = spec.fields[name]
        if field.type.stored_form_problem(stored) is not None:
            return False
        try:
            value = field.type.decode(stored)
        except (ValueError, TypeError):
            return False
        _canonical, problems = field.check(value)
        if problems or (value is None and field.required):
            return False
        if value is not None:
            values[name] = value
    if spec.check_record(values):
        return False
    if spec.cross_checked_fields.isdisjoint(raw):
        return True
    return not unique_and_reference_errors(change, spec, schema, values, set(raw), context)


def _plain_entry(struct: StructInfo) -> bool:
    """The struct is one plain value placed after another item, naming no parent."""
    return (
        struct.kind == "item"
        and struct.content == "any"
        and struct.length == 1
        and struct.origin is not None
        and struct.right_origin is None
        and struct.parent_root is None
        and struct.parent_id is None
        and struct.parent_sub is None
    )


def _changed_by_others(
    change: ChangeFrame,
    state: RecordState,
    touched: set[str],
    principal: Principal,
    context: MergeContext,
) -> bool:
    """Someone else wrote one of the fields since the change's base (then the general
    path decides whether it is a conflict)."""
    bases = {name: change.field_bases.get(name, change.base_version) for name in touched}
    if min(bases.values()) >= state.row.version:
        return False
    writes = state.field_writes(context)
    return any(
        replica != principal.replica_id and seq > bases[name]
        for name in touched
        for replica, (seq, _user) in writes.get(name, {}).items()
    )


@attrs.define
class Deferred:
    """A record's predicted changes of one push frame, applied together by :meth:`apply`."""

    state: RecordState
    updates: list[bytes] = attrs.field(factory=list)
    raw: dict[str, Any] = attrs.field(factory=dict)  #: field -> predicted final value
    ends: dict[int, int] = attrs.field(factory=dict)  #: client -> predicted end clock

    def add(self, predicted: Predicted) -> None:
        self.updates.append(predicted.update)
        self.raw.update(predicted.raw)
        self.ends[predicted.client] = predicted.end

    def apply(self, max_record_bytes: int) -> None:
        """Apply the updates in one transaction and check that yrs did what was
        predicted; :class:`Mispredicted` if it did not (or the record outgrew
        ``max_record_bytes``: the general path says which change did). The record's
        whole state is encoded only if its size bound passes the limit."""
        doc, changes = self.state.doc, self.state.changes
        assert changes is not None
        changes.take()  # forget earlier transactions (the relay's own)
        try:
            after = decode_state_vector(doc.apply_all_for_state(self.updates))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise Mispredicted(f"pycrdt refused a predicted update: {exc}") from None
        effect = changes.take_values()
        if effect.keys() != self.raw.keys():
            raise Mispredicted(f"changed {sorted(effect)}, predicted {sorted(self.raw)}")
        for key, value in self.raw.items():
            seen = effect[key]
            if seen is UNREAD or type(seen) is not type(value) or seen != value:
                raise Mispredicted(f"{key} reads {seen!r}, predicted {value!r}")
        for client, end in self.ends.items():
            if after.get(client, 0) != end:
                raise Mispredicted(f"client {client} at {after.get(client, 0)}, predicted {end}")
        state = self.state
        state.predicted_applied(self.updates)
        if state.size_bound > max_record_bytes and len(state.stored.state) > max_record_bytes:
            raise Mispredicted("the record outgrew its limit")
