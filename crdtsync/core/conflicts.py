"""How the values of a conflict are carried: one codec for the relay, which builds
conflict verdicts, and the client, which decodes them for the user and keeps them in
its store.

A conflict (:class:`~crdtsync.core.protocol.WireConflict`, on the wire and in a client's
store alike) carries each of ``base``, ``mine`` and ``theirs`` in its field type's
stored encoding (:meth:`~crdtsync.core.fieldtypes.FieldType.encode`), the form a
record's CRDT document holds. A field the schema does not have (or a record of an
object type the replica does not know) has no type to read its values by: they pass
through unchanged.
"""

from __future__ import annotations

from typing import Any

import attrs

from .fieldtypes import FieldType
from .schema import ObjectSpec


@attrs.frozen
class ConflictCodec:
    """Encodes and decodes the values of conflicts about records of one object type
    (``spec``; ``None`` if it is unknown).

    ``decode(encode(v)) == v`` for every value ``v`` of a field's type. A value that
    does not decode (a relay or a store of another version wrote it) is kept as it came,
    by :meth:`decode` and then by :meth:`encode`, so a conflict is always shown and
    stored, never refused for a value.
    """

    spec: ObjectSpec | None

    def field_type(self, field: str) -> FieldType | None:
        """The type of ``field``, or ``None`` if the schema does not have it."""
        known = None if self.spec is None else self.spec.fields.get(field)
        return None if known is None else known.type

    def encode(self, field: str, value: Any) -> Any:
        """``value`` (as the field type reads it) as a conflict carries it."""
        field_type = self.field_type(field)
        if field_type is None:
            return value
        try:
            return field_type.encode(value)
        except (ValueError, TypeError, AttributeError):
            return value  # not a value of the type: one decode kept as it came

    def decode(self, field: str, carried: Any) -> Any:
        """A carried value as the field type reads it (kept as it came if it does not
        decode)."""
        field_type = self.field_type(field)
        if field_type is None:
            return carried
        try:
            return field_type.decode(carried)
        except (ValueError, TypeError):
            return carried

    def normalize(self, field: str, stored: Any) -> Any:
        """A value read from a record's document as a conflict carries it: in the form
        the schema writes it (pycrdt reads a small integer back as a float: it goes as
        an integer again), or ``None`` if it does not decode. For the relay, whose
        documents may hold what an older or foreign replica wrote."""
        field_type = self.field_type(field)
        if field_type is None:
            return stored
        try:
            return field_type.encode(field_type.decode(stored))
        except (ValueError, TypeError):
            return None
