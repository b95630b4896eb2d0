"""Record documents: one ``pycrdt.Doc`` per record, with a root map ``fields``.

:class:`RecordDoc` is the small, pure API the replica and the relay share:

* :meth:`RecordDoc.read` returns typed values (see :mod:`crdtsync.core.fieldtypes`);
* :meth:`RecordDoc.write` writes a set of field values in one transaction and returns
  the CRDT update it produced; a ``text`` field is written as a character diff against
  its current text, so concurrent edits of different parts both survive;
* :meth:`RecordDoc.delta` is the update a peer at a given state vector is missing;
* :meth:`RecordDoc.apply` integrates a remote update.

Nothing here knows about storage, networks or permissions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pycrdt

from .fieldtypes import FieldType
from .schema import ObjectSpec
from .textdiff import text_edits

FIELDS_ROOT = "fields"


class RecordDoc:
    """A record's CRDT document, typed by its :class:`~crdtsync.core.schema.ObjectSpec`."""

    __slots__ = ("_doc", "_fields", "spec")

    def __init__(self, spec: ObjectSpec, *, client_id: int | None = None) -> None:
        self.spec = spec
        self._doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        self._fields: pycrdt.Map[Any] = self._doc.get(FIELDS_ROOT, type=pycrdt.Map)

    @classmethod
    def from_update(
        cls, spec: ObjectSpec, update: bytes, *, client_id: int | None = None
    ) -> RecordDoc:
        """A document holding ``update`` (e.g. a stored full state), editing as ``client_id``."""
        record = cls(spec, client_id=client_id)
        if update:
            record._doc.apply_update(update)
        return record

    @property
    def client_id(self) -> int:
        return int(self._doc.client_id)

    def read(self) -> dict[str, Any]:
        """Every field that has a value, in schema order, decoded to its canonical value.

        Keys the schema does not know are left out; a stored value that does not
        decode raises ``ValueError`` naming the field.
        """
        values: dict[str, Any] = {}
        for name, spec in self.spec.fields.items():
            stored = self._fields.get(name)
            value = str(stored) if isinstance(stored, pycrdt.Text) else stored
            try:
                decoded = spec.type.decode(value)
            except ValueError as exc:
                raise ValueError(f"field {name!r}: {exc}") from None
            if _has_value(spec.type, decoded):
                values[name] = decoded
        return values

    def read_checked(
        self, names: Iterable[str] | None = None, *, known: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Like :meth:`read`, but a value that does not decode is reported, not raised:
        returns ``(values, {field: problem})`` (how the relay reads a merged record).
        ``names`` limits the reading to those fields (the ones a change touched).
        ``known`` gives raw values the map is known to hold (plain values a
        :class:`ChangeTracker` saw written): those are decoded without reading the map."""
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        fields = self.spec.fields
        wanted = fields.items() if names is None else ((n, fields[n]) for n in names if n in fields)
        known = known or {}
        # A whole read takes the map's entries at once (one call into yrs, where a get
        # per field costs a transaction each).
        lookup = dict(self._fields.items()).get if names is None else self._fields.get
        for name, spec in wanted:
            stored = known[name] if name in known else lookup(name)
            if isinstance(stored, pycrdt.Text):
                stored = str(stored) if spec.type is FieldType.TEXT else stored
            elif spec.type is FieldType.TEXT and stored is not None:
                problems[name] = "a text field must hold a collaborative text"
                continue
            try:
                decoded = spec.type.decode(stored)
            except (ValueError, TypeError) as exc:
                problems[name] = str(exc)
                continue
            if _has_value(spec.type, decoded):
                values[name] = decoded
        return values, problems

    def track_changes(self) -> ChangeTracker:
        """Start recording which keys of the ``fields`` map any transaction changes from
        now on (an entry set or deleted, or the content of a text under it edited), as
        yrs reports it: what an update *did*, whatever its bytes claim."""
        return ChangeTracker(self._fields)

    def stored_value(self, name: str) -> Any:
        """The raw value of a field as the map holds it (``str`` for a text)."""
        stored = self._fields.get(name)
        return str(stored) if isinstance(stored, pycrdt.Text) else stored

    def write(self, values: Mapping[str, Any]) -> bytes:
        """Write canonical ``values`` in one transaction; return the update it produced.

        The values must already be checked by the schema. Writing the value a field
        already holds produces no operation for it; an empty update (``b""``) means
        nothing changed. The update is the transaction's own (insertions and
        deletions it made), as a Yjs ``update`` event carries it.
        """
        updates: list[bytes] = []
        subscription = self._doc.observe(lambda event: updates.append(event.update))
        try:
            with self._doc.transaction():
                for name, value in values.items():
                    self._write_field(name, value)
        finally:
            self._doc.unobserve(subscription)
        return b"".join(bytes(update) for update in updates)

    def _write_field(self, name: str, value: Any) -> None:
        spec = self.spec.fields[name]
        current = self._fields.get(name)
        if spec.type is FieldType.TEXT:
            # A text keeps its one Y.Text for life (clearing it empties it): a new Y.Text
            # under the key would replace a concurrent writer's instead of merging with it.
            if isinstance(current, pycrdt.Text):
                _apply_text_diff(current, value or "")
            else:
                self._fields[name] = pycrdt.Text(value or "")
            return
        encoded = spec.type.encode(value)
        if name in self._fields and _same_stored(current, encoded, spec.type):
            return
        self._fields[name] = encoded

    def state(self) -> bytes:
        """The document's state vector."""
        return bytes(self._doc.get_state())

    def delta(self, state: bytes | None = None) -> bytes:
        """The update a peer whose state vector is ``state`` is missing (all of it if None)."""
        if state is None:
            return bytes(self._doc.get_update())
        return bytes(self._doc.get_update(state))

    def full_update(self) -> bytes:
        """The whole document as one update (what a store keeps)."""
        return bytes(self._doc.get_update())

    def apply(self, update: bytes) -> None:
        """Integrate a remote update (``b""``: nothing to do).

        Callers contain pycrdt faults at their boundary.
        """
        if update:
            self._doc.apply_update(update)

    def apply_for_state(self, update: bytes) -> bytes:
        """Integrate ``update`` and return the state vector afterwards, in one
        transaction (the relay's hot path: every pycrdt transaction costs microseconds).
        An update missing dependencies integrates "successfully" but leaves the state
        vector behind its clocks: that is how a caller tells.

        Callers contain pycrdt faults at their boundary.
        """
        return self.apply_all_for_state([update])

    def deletions(self) -> bytes:
        """An update holding the document's whole delete set and nothing else."""
        with self._doc.transaction():
            return bytes(self._doc.get_update(self._doc.get_state()))

    def apply_all_for_state(self, updates: list[bytes]) -> bytes:
        """:meth:`apply_for_state` of several updates, in order, in one transaction.

        The document is this object's own and nothing observes it through pycrdt's
        wrapper (a :class:`ChangeTracker` subscribes to yrs's events directly), so, when
        no transaction is open, it runs on the extension document the wrapper drives
        (:data:`_RawDoc`): one yrs transaction, none of the wrapper's bookkeeping. yrs
        calls the observers when it commits, as through the wrapper."""
        doc = self._doc
        if _RAW_APPLY and doc._txn is None and not doc._allow_multithreading:
            raw = doc._doc
            txn = raw.create_transaction()
            try:
                for update in updates:
                    if update:
                        raw.apply_update(txn, update)
                return bytes(raw.get_state(txn))
            finally:
                txn.commit()
                txn.drop()
        with doc.transaction():
            for update in updates:
                if update:
                    self._doc.apply_update(update)
            return bytes(self._doc.get_state())

    def copy(self, *, client_id: int | None = None) -> RecordDoc:
        """An independent document with the same content."""
        return RecordDoc.from_update(self.spec, self.full_update(), client_id=client_id)


class BadStoredState(ValueError):
    """The stored state given to :func:`merged_state` does not decode (``__cause__``
    says why)."""


def merged_state(stored: bytes, updates: Iterable[bytes]) -> bytes:
    """The whole document (as :meth:`RecordDoc.full_update` encodes it) holding
    ``stored`` (a full update, or ``b""``) and then ``updates``, all applied in one
    transaction: what loading the document, applying each update and encoding it
    gives, at the cost of one document and two transactions.

    It goes under pycrdt's Python wrapper, whose documents and transactions cost more
    than the work itself (an ``anyio`` lock per document, bookkeeping per transaction),
    to the extension type the wrapper drives (:data:`_RawDoc`, when this pycrdt has it).
    Nothing observes the document: no callback or shared type is ever made on it.

    :class:`BadStoredState` if ``stored`` does not decode; an update that does not is
    reported as pycrdt reports it (``ValueError``).
    """
    if _RawDoc is None:
        return _merged_state_wrapped(stored, updates)
    doc = _RawDoc(None, None, None)
    txn = doc.create_transaction()
    try:
        if stored:
            try:
                doc.apply_update(txn, stored)
            except Exception as exc:
                raise BadStoredState(str(exc)) from exc
        for update in updates:
            if update:
                doc.apply_update(txn, update)
    finally:
        txn.commit()  # what the updates deleted is collected here
        txn.drop()
    txn = doc.create_transaction()
    try:
        return bytes(doc.get_update(txn, b"\x00"))
    finally:
        txn.commit()
        txn.drop()


def _merged_state_wrapped(stored: bytes, updates: Iterable[bytes]) -> bytes:
    """:func:`merged_state` through pycrdt's public API."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    with doc.transaction():
        if stored:
            try:
                doc.apply_update(stored)
            except Exception as exc:
                raise BadStoredState(str(exc)) from exc
        for update in updates:
            if update:
                doc.apply_update(update)
    return bytes(doc.get_update())


def _raw_doc() -> Any:
    """pycrdt's extension document type, if it has the methods :func:`merged_state`
    uses and they behave as the wrapper does (checked once, on a sample); else ``None``."""
    try:
        from pycrdt._pycrdt import Doc as raw  # a private module: probed below
    except ImportError:
        return None
    try:
        sample: pycrdt.Doc[Any] = pycrdt.Doc()
        sample.get("m", type=pycrdt.Map)["k"] = "v"
        edit: pycrdt.Doc[Any] = pycrdt.Doc()
        edit.apply_update(sample.get_update())
        edit.get("m", type=pycrdt.Map)["k"] = "w"
        update = edit.get_update(sample.get_state())
        doc = raw(None, None, None)
        txn = doc.create_transaction()
        doc.apply_update(txn, sample.get_update())
        doc.apply_update(txn, update)
        txn.commit()
        txn.drop()
        txn = doc.create_transaction()
        got = bytes(doc.get_update(txn, b"\x00"))
        txn.commit()
        txn.drop()
    except Exception:  # noqa: BLE001 - not the API this expects: use the wrapper
        return None
    expected = _merged_state_wrapped(sample.get_update(), [update])
    return raw if got == expected else None


_RawDoc: Any = _raw_doc()


def _wrapper_exposes_its_transaction() -> bool:
    """The wrapper's ``Doc`` keeps what :meth:`RecordDoc.apply_all_for_state` checks
    before it goes under it (its open transaction, its threading mode, its extension
    document): private attributes, so checked once, on this pycrdt."""
    sample: pycrdt.Doc[Any] = pycrdt.Doc()
    return (
        getattr(sample, "_txn", False) is None
        and getattr(sample, "_allow_multithreading", None) is False
        and _RawDoc is not None
        and isinstance(getattr(sample, "_doc", None), _RawDoc)
    )


_RAW_APPLY: bool = _wrapper_exposes_its_transaction()


#: The raw values a map entry can hold that read back as themselves (pycrdt wraps shared
#: types and nothing else): a tracker's ``newValue`` of one of these is what ``Map.get``
#: returns afterwards.
PLAIN_VALUES: frozenset[type] = frozenset({int, float, str, bool, type(None)})


class ChangeTracker:
    """The keys of a ``fields`` map changed since the last :meth:`take` (see
    :meth:`RecordDoc.track_changes`), with the plain value each now holds.

    It subscribes to yrs's own deep events (``Map.integrated``): pycrdt's wrapper turns
    every event into Python objects, old and new values included, some 15 µs per
    transaction on the relay's hot path; the raw events cost about 1.5 µs. Subscribing is
    dearer than observing, so a tracker stays for the document's life."""

    __slots__ = ("_changed", "_subscription")

    def __init__(self, fields: pycrdt.Map[Any]) -> None:
        #: key -> its new plain value, or UNREAD (a shared value, or content inside it)
        self._changed: dict[str, Any] = {}
        changed = self._changed

        def observe(events: list[Any]) -> None:
            for event in events:
                path = event.path
                if path:  # inside a shared value under a key: the key changed
                    changed[str(path[0])] = UNREAD
                    continue
                for key, change in event.keys.items():
                    if change.get("action") == "delete":
                        changed[key] = None
                        continue
                    value = change.get("newValue", UNREAD)
                    changed[key] = value if type(value) in PLAIN_VALUES else UNREAD

        self._subscription = fields.integrated.observe_deep(observe)

    def take(self) -> set[str]:
        """The keys changed since the last call (and forget them)."""
        return set(self.take_values())

    def take_values(self) -> dict[str, Any]:
        """``{key: new plain value}`` of the keys changed since the last call (and forget
        them); a key whose value is a shared type or whose nested content changed maps to
        :data:`UNREAD` (read it from the map)."""
        changed = dict(self._changed)
        self._changed.clear()
        return changed


class _Unread:
    def __repr__(self) -> str:
        return "UNREAD"


UNREAD: Any = _Unread()  #: a changed key whose value a tracker did not see as plain


def _has_value(field_type: FieldType, decoded: object) -> bool:
    """An empty text is a text field with no value (every text field holds a Y.Text)."""
    return decoded is not None and not (field_type is FieldType.TEXT and decoded == "")


def _same_stored(current: object, encoded: object, field_type: FieldType) -> bool:
    """True if the map already stores ``encoded`` (pycrdt may read ints back as floats)."""
    if current is None or encoded is None:
        return current is encoded
    if isinstance(current, pycrdt.Text):
        return False
    try:
        decoded = field_type.decode(current)
    except ValueError:
        return False
    return bool(field_type.encode(decoded) == encoded)


def _apply_text_diff(text: pycrdt.Text, new: str) -> None:
    """Edit ``text`` into ``new`` with character inserts and deletes (:mod:`.textdiff`).

    pycrdt indexes text by UTF-8 byte offset, so character positions are converted, in
    one pass. Edits are applied from the end, where earlier offsets are still those of
    the old text.
    """
    old = str(text)
    edits = []
    char = byte = 0
    for start, end, insert in text_edits(old, new):
        byte += len(old[char:start].encode("utf-8"))
        removed = len(old[start:end].encode("utf-8"))
        edits.append((byte, byte + removed, insert))
        char, byte = end, byte + removed
    for start_byte, end_byte, insert in reversed(edits):
        if end_byte > start_byte:
            del text[start_byte:end_byte]
        if insert:
            text.insert(start_byte, insert)
