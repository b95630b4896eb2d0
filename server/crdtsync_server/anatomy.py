"""What a CRDT update does to a record, read from the update itself.

The relay never trusts a list of fields from a client: it parses the update
(:mod:`crdtsync.yupdate`) and attributes every item to the field it belongs to. In the
Yjs encoding an item names its parent only when it has no neighbours; otherwise it
inherits its origin's parent. Attribution therefore needs to know, for the record's
existing items, which field each belongs to and at which level (a map entry of
``fields``, or content nested inside a field's text). :class:`ItemIndex` keeps that
per record as sorted clock ranges per client, with the record's delete set, so a
delta's repetition of old deletions is not mistaken for a new edit.

:meth:`ItemIndex.analyse` is pure: it reads the index and a parsed update and returns
an :class:`Anatomy`. :meth:`ItemIndex.commit` records an update once it is applied.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from crdtsync.record import FIELDS_ROOT
from crdtsync.yupdate import ParsedUpdate, StructInfo, parse_update

TEXT_TYPE_REF = 2

ENTRY = 0  #: an item that is a map entry of the ``fields`` root
NESTED = 1  #: an item nested inside a field's value (text characters)
IGNORED = 2  #: garbage-collected or refused items: nothing to attribute

Owner = tuple[str, int]
_IGNORED: Owner = ("", IGNORED)


@attrs.frozen
class SharedType:
    """The value of a map entry that holds a shared type (``type_ref`` 2 is a Text)."""

    type_ref: int


TEXT = SharedType(TEXT_TYPE_REF)


@attrs.frozen(kw_only=True)
class Anatomy:
    """The fields an update touches, and how.

    ``written``      map entries it sets: field → the value of its last write there
                     (:data:`TEXT` for a collaborative text; ``None`` for null);
    ``nested``       fields whose nested content (characters of a text) it inserts;
    ``deleted``      fields whose existing items it newly deletes;
    ``other_roots``  root names other than ``fields`` it writes to;
    ``bad_shape``    descriptions of items the record model does not allow;
    ``missing``      it depends on items this record does not hold.
    """

    written: Mapping[str, Any] = attrs.field(factory=dict)
    nested: frozenset[str] = frozenset()
    deleted: frozenset[str] = frozenset()
    other_roots: frozenset[str] = frozenset()
    bad_shape: tuple[str, ...] = ()
    missing: bool = False

    @property
    def fields(self) -> frozenset[str]:
        """Every field the update changes in any way."""
        return frozenset(self.written) | self.nested | self.deleted


class _Ranges:
    """Sorted, non-overlapping clock ranges of one client, each with an owner."""

    __slots__ = ("ends", "owners", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.owners: list[Owner] = []

    def find(self, clock: int) -> Owner | None:
        i = bisect.bisect_right(self.starts, clock) - 1
        if i >= 0 and clock < self.ends[i]:
            return self.owners[i]
        return None

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int, Owner]]:
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.starts) and self.starts[i] < end:
            if self.ends[i] > start:
                yield self.starts[i], self.ends[i], self.owners[i]
            i += 1

    def add(self, start: int, end: int, owner: Owner) -> None:
        i = bisect.bisect_left(self.starts, start)
        if i < len(self.starts) and self.starts[i] == start:
            return  # already known (an update seen twice)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.owners.insert(i, owner)


class _DeleteSet:
    """Deleted clock ranges per client, kept sorted and merged."""

    def __init__(self) -> None:
        self._ranges: dict[int, list[tuple[int, int]]] = {}

    def add(self, client: int, start: int, end: int) -> None:
        ranges = self._ranges.setdefault(client, [])
        bisect.insort(ranges, (start, end))
        merged: list[tuple[int, int]] = []
        for s, e in ranges:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self._ranges[client] = merged

    def subtract(self, client: int, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` that are not deleted yet."""
        out = []
        cursor = start
        for s, e in self._ranges.get(client, ()):
            if e <= cursor:
                continue
            if s >= end:
                break
            if s > cursor:
                out.append((cursor, s))
            cursor = max(cursor, e)
            if cursor >= end:
                break
        if cursor < end:
            out.append((cursor, end))
        return out


class ItemIndex:
    """Which field each item of one record document belongs to."""

    def __init__(self) -> None:
        self._clients: dict[int, _Ranges] = {}
        self._deleted = _DeleteSet()

    @classmethod
    def from_state(cls, state: bytes) -> ItemIndex:
        """Index a record's full state (as the relay stores it)."""
        index = cls()
        if state:
            index.commit(parse_update(state))
        return index

    def analyse(self, parsed: ParsedUpdate) -> Anatomy:
        """What ``parsed`` would do to the record; the index is not changed."""
        return self._attribute(parsed)[0]

    def commit(self, parsed: ParsedUpdate) -> None:
        """Record an update that has been applied to the record."""
        _anatomy, owners = self._attribute(parsed)
        for struct in parsed.structs:
            owner = owners.get((struct.client, struct.clock))
            if owner is not None:
                self._clients.setdefault(struct.client, _Ranges()).add(
                    struct.clock, struct.clock + struct.length, owner
                )
        for client, ranges in parsed.delete_set.items():
            for clock, length in ranges:
                self._deleted.add(client, clock, clock + length)

    def commit_bytes(self, update: bytes) -> None:
        """Record an update (given as bytes) that has been applied to the record."""
        self.commit(parse_update(update))

    def end_clock(self, client: int) -> int:
        """The next clock this record expects from ``client`` (0 if it has none)."""
        ranges = self._clients.get(client)
        return ranges.ends[-1] if ranges is not None and ranges.ends else 0

    def _lookup(self, local: Mapping[int, _Ranges], target: tuple[int, int]) -> Owner | None:
        client, clock = target
        for source in (local.get(client), self._clients.get(client)):
            if source is not None:
                found = source.find(clock)
                if found is not None:
                    return found
        return None

    def _attribute(self, parsed: ParsedUpdate) -> tuple[Anatomy, dict[tuple[int, int], Owner]]:
        local: dict[int, _Ranges] = {}
        owners: dict[tuple[int, int], Owner] = {}
        last_write: dict[str, tuple[int, StructInfo]] = {}
        nested: set[str] = set()
        other_roots: set[str] = set()
        bad: list[str] = []

        def lookup(target: tuple[int, int]) -> Owner | None:
            return self._lookup(local, target)

        pending: list[StructInfo] = []
        for struct in parsed.structs:
            if struct.kind == "item":
                pending.append(struct)
            else:
                owners[(struct.client, struct.clock)] = _IGNORED
                local.setdefault(struct.client, _Ranges()).add(
                    struct.clock, struct.clock + struct.length, _IGNORED
                )
        # Items may point at items later in the same update: resolve until stable.
        while pending:
            unresolved = []
            for struct in pending:
                owner = _owner_of(struct, lookup, other_roots, bad)
                if owner is None:
                    unresolved.append(struct)
                    continue
                owners[(struct.client, struct.clock)] = owner
                local.setdefault(struct.client, _Ranges()).add(
                    struct.clock, struct.clock + struct.length, owner
                )
                field, level = owner
                if level == ENTRY:
                    previous = last_write.get(field)
                    if previous is None or struct.clock >= previous[0]:
                        last_write[field] = (struct.clock, struct)
                elif level == NESTED:
                    nested.add(field)
            if len(unresolved) == len(pending):
                break
            pending = unresolved
        missing = bool(pending)

        deleted: set[str] = set()
        for client, ranges in parsed.delete_set.items():
            for clock, length in ranges:
                for start, end in self._deleted.subtract(client, clock, clock + length):
                    covered = 0
                    for source in (local.get(client), self._clients.get(client)):
                        if source is None:
                            continue
                        for s, e, (field, level) in source.overlapping(start, end):
                            covered += min(e, end) - max(s, start)
                            if level != IGNORED:
                                deleted.add(field)
                    if covered < end - start:
                        missing = True
        written = {field: _entry_value(parsed, struct) for field, (_, struct) in last_write.items()}
        anatomy = Anatomy(
            written=written,
            nested=frozenset(nested),
            deleted=frozenset(deleted),
            other_roots=frozenset(other_roots),
            bad_shape=tuple(bad),
            missing=missing,
        )
        return anatomy, owners


def _owner_of(
    struct: StructInfo,
    lookup: Callable[[tuple[int, int]], Owner | None],
    other_roots: set[str],
    bad: list[str],
) -> Owner | None:
    """The field and level of an item, or ``None`` if what it points at is unknown."""
    if struct.parent_root is not None:
        if struct.parent_root != FIELDS_ROOT:
            other_roots.add(struct.parent_root)
            return _IGNORED
        if struct.parent_sub is None:
            bad.append(f"an item without a key in the {FIELDS_ROOT!r} map")
            return _IGNORED
        return (struct.parent_sub, ENTRY)
    if struct.parent_id is not None:
        parent = lookup(struct.parent_id)
        if parent is None:
            return None
        return _IGNORED if parent[1] == IGNORED else (parent[0], NESTED)
    neighbour_id = struct.origin if struct.origin is not None else struct.right_origin
    if neighbour_id is None:
        bad.append(f"an item ({struct.client}, {struct.clock}) with no parent and no neighbour")
        return _IGNORED
    # An item beside another has the same parent (and map key) as it.
    return lookup(neighbour_id)


def _entry_value(parsed: ParsedUpdate, struct: StructInfo) -> Any:
    """The value a map entry item sets (as pycrdt would read it back)."""
    if struct.content == "type":
        return SharedType(struct.type_ref if struct.type_ref is not None else -1)
    if struct.content == "any":
        values = parsed.any_values(struct)
        return values[-1] if values else None
    if struct.content == "string":
        return SharedType(-1)  # raw string content belongs in a text, not a map entry
    return None
