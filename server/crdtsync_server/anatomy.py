"""What a CRDT update does to a record, read from the update itself.

The relay never trusts a list of fields from a client: it parses the update
(:mod:`crdtsync.core.yupdate`) and attributes every item to the field it belongs to. In the
Yjs encoding an item names its parent only when it has no neighbours; otherwise it
inherits its origin's parent. Attribution therefore needs to know, for the record's
existing items, which field each belongs to and at which level (a map entry of
``fields``, or content nested inside a field's text). :class:`ItemIndex` keeps that
per record as sorted clock ranges per client, with the record's delete set, so a
delta's repetition of old deletions is not mistaken for a new edit.

:meth:`ItemIndex.analyse` is pure: it reads the index and a parsed update and returns
an :class:`Anatomy`. :meth:`ItemIndex.commit` records an update once it is applied.

:meth:`ItemIndex.project` (and :func:`project_state` for a full state) uses the same
attribution to cut hidden fields out of an update: every struct of a hidden field becomes
a GC struct of the same clock length, so a reader integrates everything else normally and
never receives the hidden values (see the method for the procedure a relay follows).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from crdtsync.core.record import FIELDS_ROOT
from crdtsync.core.yupdate import ParsedUpdate, StructInfo, parse_update

TEXT_TYPE_REF = 2

ENTRY = 0  #: an item that is a map entry of the ``fields`` root
NESTED = 1  #: an item nested inside a field's value (text characters)
IGNORED = 2  #: garbage-collected or refused items: nothing to attribute

Owner = tuple[str, int]
_IGNORED: Owner = ("", IGNORED)
_NO_FIELDS: frozenset[str] = frozenset()


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

    #: every field the update changes in any way (derived when built: a
    #: ``cached_property`` would give this slotted class a ``__getattr__``, which puts
    #: every attribute read on CPython's slow path)
    fields: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    @fields.default
    def _fields(self) -> frozenset[str]:
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
        starts = self.starts
        if not starts or start > starts[-1]:  # the common case: a new item at the end
            starts.append(start)
            self.ends.append(end)
            self.owners.append(owner)
            return
        i = bisect.bisect_left(starts, start)
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
        ranges = self._ranges.get(client)
        if ranges and start < end:
            # The list is kept merged (no two ranges overlap or touch), so a range that
            # lies inside the last one changes nothing, and one that starts inside or
            # right after it (a delta repeats the document's whole delete set, which
            # grows at the end) only moves its end. Anything else: insert and re-merge.
            last_start, last_end = ranges[-1]
            if last_start <= start <= last_end:
                if end > last_end:
                    ranges[-1] = (last_start, end)
                return
        if ranges is None:
            ranges = self._ranges[client] = []
        bisect.insort(ranges, (start, end))
        merged: list[tuple[int, int]] = []
        for s, e in ranges:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self._ranges[client] = merged

    def add_one(self, client: int, clock: int) -> None:
        """Delete one clock (merged with its neighbours in place: no full re-merge)."""
        ranges = self._ranges.setdefault(client, [])
        i = bisect.bisect_right(ranges, (clock, clock + 1))
        if i > 0 and ranges[i - 1][1] > clock:
            return  # already deleted
        joins_left = i > 0 and ranges[i - 1][1] == clock
        joins_right = i < len(ranges) and ranges[i][0] == clock + 1
        if joins_left and joins_right:
            ranges[i - 1] = (ranges[i - 1][0], ranges[i][1])
            del ranges[i]
        elif joins_left:
            ranges[i - 1] = (ranges[i - 1][0], clock + 1)
        elif joins_right:
            ranges[i] = (clock, ranges[i][1])
        else:
            ranges.insert(i, (clock, clock + 1))

    def contains(self, client: int, clock: int) -> bool:
        ranges = self._ranges.get(client)
        if not ranges:
            return False
        i = bisect.bisect_right(ranges, (clock, float("inf"))) - 1
        return i >= 0 and ranges[i][0] <= clock < ranges[i][1]

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
        self._last: tuple[ParsedUpdate, dict[tuple[int, int], Owner]] | None = None

    @classmethod
    def from_state(cls, state: bytes) -> ItemIndex:
        """Index a record's full state (as the relay stores it)."""
        index = cls()
        if state:
            index.commit(parse_update(state))
        return index

    def analyse(self, parsed: ParsedUpdate) -> Anatomy:
        """What ``parsed`` would do to the record; the index is not changed (the last
        analysis is remembered, so committing the same update does not redo it)."""
        anatomy, owners = self._attribute(parsed)
        self._last = (parsed, owners)
        return anatomy

    def project(self, update: bytes, hidden: frozenset[str]) -> bytes:
        """``update`` with every struct of a field in ``hidden`` replaced by a GC struct.

        The update (a full state, a delta from ``Doc.get_update(state_vector)``, or
        several merged with ``pycrdt.merge_updates``) is parsed and attributed with this
        index exactly as :meth:`analyse` does; the index is not changed. Every item that
        belongs to a hidden field -- its map entry in ``fields``, earlier values of that
        entry, the characters of its text -- is replaced in place by a GC struct
        (``0x00`` + varuint length) covering the same clocks. The struct counts, client
        sections and the delete set are kept byte for byte, so the projected update
        advances a reader's state vector exactly as far as the original does. A reader
        integrates GC structs as already-collected content, and pycrdt also turns into a
        GC any later item whose origin lies in such a range, so later deltas still apply
        (and the hidden values still never appear).

        **Fails closed.** An item is also replaced when its owner cannot be resolved
        (it depends on an item neither the update nor this index holds) and when it
        belongs to no field at all (a root other than ``fields``, a key-less entry, the
        contents of collected or refused items). Only items attributed to a field not
        in ``hidden`` pass through. GC and skip structs pass through unchanged. If
        ``hidden`` is empty, ``update`` is empty, or no struct has to be replaced,
        ``update`` itself is returned (the same object, not a copy). A malformed update
        raises :class:`~crdtsync.core.yupdate.UpdateDecodeError`.

        **Procedure for a relay** sending a record to a reader who may not read
        ``hidden``:

        1. First sync: ``project(server_full_state, hidden)`` (or :func:`project_state`).
        2. Later: compute the delta from the *server's full document*, never from a
           projected copy: ``delta = server_doc.get_update(reader_state_vector)``, then
           ``index.project(delta, hidden)``. ``reader_state_vector`` may be the reader's
           own ``Doc.get_state()`` -- projection keeps clocks, so it names exactly what the
           reader holds -- or the server's state vector as of the last update sent.
        3. Project with an index of the server's document that holds at least
           everything the reader holds (every item below ``reader_state_vector``): the
           relay's index of the record, built with :meth:`from_state` and kept current
           with :meth:`commit` as updates are applied. Whether it already includes the
           delta's own items does not matter -- attribution looks in the update first,
           and an item's field never changes -- so the current index is right, and so
           is one from any moment at or after the reader's state. The same goes for
           projecting an incoming update before or after it is committed.
        4. An index that misses items the reader holds (a fresh ``ItemIndex()``, or an
           index older than the reader's state) is still safe but lossy: a visible
           item whose origin it does not know is cut as unresolvable, and the reader,
           whose state vector then covers those clocks, never receives it. Likewise,
           never compute deltas from a projected copy of the document.
        """
        if not hidden or not update:
            return update
        parsed = parse_update(update)
        owners = self._attribute(parsed)[1]
        return _splice_hidden(update, parsed, owners, hidden)

    def strip_hidden_deletes(self, update: bytes, hidden: frozenset[str]) -> bytes:
        """``update`` without the parts of its delete set that fall on items of a field
        in ``hidden``: what the relay must do to an update *from* a reader of projections.

        A Yjs/yrs update always carries its document's whole delete set, and pycrdt
        counts GC structs as deleted. A reader who integrated projected updates holds
        the hidden fields' items as GCs, so every ``get_update(state_vector)`` it sends
        "deletes" all of them: applied as is, it would erase the hidden fields on the
        server (and :meth:`analyse` reports them as deleted). A reader cannot mean to
        delete an item it never saw, so those ranges are dropped; deletions of visible
        items, of GC'd ranges, and of anything this index does not know (left for
        :meth:`analyse` to report as missing) are kept. The structs are kept byte for
        byte. Returns ``update`` itself (the same object) if nothing is dropped.
        """
        if not hidden or not update:
            return update
        parsed = parse_update(update)
        if not parsed.delete_set or parsed.delete_set_at is None:
            return update
        changed = False
        kept: list[tuple[int, list[tuple[int, int]]]] = []
        for client, ranges in parsed.delete_set.items():
            source = self._clients.get(client)
            out: list[tuple[int, int]] = []
            for clock, length in ranges:
                cursor, end = clock, clock + length
                if source is not None:
                    for s, e, (field, level) in source.overlapping(clock, end):
                        if level == IGNORED or field not in hidden:
                            continue
                        changed = True
                        if s > cursor:
                            out.append((cursor, s - cursor))
                        cursor = max(cursor, min(e, end))
                if cursor < end:
                    out.append((cursor, end - cursor))
            if out:
                kept.append((client, out))
        if not changed:
            return update
        encoded = bytearray(parsed.data[: parsed.delete_set_at])
        _put_varuint(encoded, len(kept))
        for client, out in kept:
            _put_varuint(encoded, client)
            _put_varuint(encoded, len(out))
            for clock, length in out:
                _put_varuint(encoded, clock)
                _put_varuint(encoded, length)
        return bytes(encoded)

    def commit(self, parsed: ParsedUpdate) -> None:
        """Record an update that has been applied to the record."""
        last = self._last
        owners = last[1] if last is not None and last[0] is parsed else self._attribute(parsed)[1]
        self._last = None
        clients = self._clients
        for struct in parsed.structs:
            owner = owners.get((struct.client, struct.clock))
            if owner is not None:
                known = clients.get(struct.client)
                if known is None:
                    known = clients[struct.client] = _Ranges()
                known.add(struct.clock, struct.clock + struct.length, owner)
        deleted = self._deleted
        for client, ranges in parsed.delete_set.items():
            for clock, length in ranges:
                deleted.add(client, clock, clock + length)

    def commit_bytes(self, update: bytes) -> None:
        """Record an update (given as bytes) that has been applied to the record."""
        self.commit(parse_update(update))

    def owner(self, item: tuple[int, int]) -> Owner | None:
        """The field and level of the record's item ``(client, clock)`` (None: unknown)."""
        ranges = self._clients.get(item[0])
        return ranges.find(item[1]) if ranges is not None else None

    def deleted(self, item: tuple[int, int]) -> bool:
        """The record's item ``(client, clock)`` is deleted, as far as the index knows."""
        return self._deleted.contains(item[0], item[1])

    def newly_deleted(
        self, delete_set: Mapping[int, tuple[tuple[int, int], ...]], *, limit: int
    ) -> set[tuple[int, int]] | None:
        """The clocks ``delete_set`` deletes that the record has not deleted yet, as
        ``(client, clock)`` items; ``None`` if there are more than ``limit``."""
        if len(delete_set) == 1:
            # The common edit's delta: one client, one range, one of whose clocks the
            # record has not deleted yet (the value it replaces), the rest deleted.
            [(client, ranges)] = delete_set.items()
            if len(ranges) == 1:
                [(clock, length)] = ranges
                fresh = self._deleted.subtract(client, clock, clock + length)
                if len(fresh) == 1 and fresh[0][1] - fresh[0][0] == 1 <= limit:
                    return {(client, fresh[0][0])}
        out: set[tuple[int, int]] = set()
        for client, ranges in delete_set.items():
            for clock, length in ranges:
                for start, end in self._deleted.subtract(client, clock, clock + length):
                    if len(out) + end - start > limit:
                        return None
                    out.update((client, c) for c in range(start, end))
        return out

    def commit_entries(
        self, writes: list[tuple[int, int, str]], replaced: set[tuple[int, int]]
    ) -> None:
        """Record an update whose items are known: each ``(client, clock, field)`` of
        ``writes`` a one-clock map entry of that field, and the items ``replaced`` deleted
        (see :mod:`.fastpath`)."""
        clients = self._clients
        for client, clock, field in writes:
            ranges = clients.get(client)
            if ranges is None:
                ranges = clients[client] = _Ranges()
            ranges.add(clock, clock + 1, (field, ENTRY))
        for client, clock in replaced:
            self._deleted.add_one(client, clock)

    def sync_deleted(self, delete_set: Mapping[int, tuple[tuple[int, int], ...]]) -> None:
        """Take the document's whole delete set as the index's: yrs deletes items of its
        own accord (a map entry integrated beside a concurrent one), which no update's
        delete set names."""
        deleted = _DeleteSet()
        for client, ranges in delete_set.items():
            for clock, length in sorted(ranges):
                deleted.add(client, clock, clock + length)
        self._deleted = deleted

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
        """The update's anatomy, and the owner of each of its structs it could resolve
        (keyed by ``(client, clock)``)."""
        common = self._attribute_common(parsed)
        return common if common is not None else self._attribute_general(parsed)

    def _attribute_common(
        self, parsed: ParsedUpdate
    ) -> tuple[Anatomy, dict[tuple[int, int], Owner]] | None:
        """:meth:`_attribute_general` for the common delta, or ``None`` if it is not one.

        The common delta is a few items that each follow an item this index already
        holds: map overwrites (whose origin is the key's previous value) and text
        appended after known characters. The general procedure resolves items against
        the update's own items first (``local``) and then the index, round after round.
        When no item's origin lies within the clock ranges of the update's own structs,
        the local lookup can never answer, so each item resolves in the first round,
        from the index, to exactly what this method finds. Anything else -- a GC or skip
        struct, an item with no origin (it names its parent), an origin inside the
        update or unknown to the index -- returns ``None`` and the general procedure
        decides. The delete set is then read as there, with the update's items standing
        in for ``local``. Equal results are property-tested.
        """
        structs = parsed.structs
        if not structs:
            return None
        spans: dict[int, tuple[int, int]] | None = None
        if len(structs) > 1:
            spans = parsed.client_ranges()
        clients = self._clients
        owners: dict[tuple[int, int], Owner] = {}
        last_write: dict[str, StructInfo] = {}
        nested: set[str] = set()
        for struct in structs:
            origin = struct.origin
            if origin is None or struct.kind != "item":
                return None
            origin_client, origin_clock = origin
            if spans is not None:
                span = spans.get(origin_client)
                if span is not None and span[0] <= origin_clock < span[1]:
                    return None
            source = clients.get(origin_client)
            if source is None:
                return None
            owner = source.find(origin_clock)
            if owner is None:
                return None
            owners[(struct.client, struct.clock)] = owner
            field, level = owner
            if level == ENTRY:
                previous = last_write.get(field)
                if previous is None or _write_rank(parsed, struct) >= _write_rank(parsed, previous):
                    last_write[field] = struct
            elif level == NESTED:
                nested.add(field)

        missing = False
        deleted: set[str] = set()
        for client, ranges in parsed.delete_set.items():
            source = clients.get(client)
            for clock, length in ranges:
                for start, end in self._deleted.subtract(client, clock, clock + length):
                    covered = 0
                    for struct in structs:  # the update's own items ("local")
                        if struct.client == client:
                            s, e = struct.clock, struct.clock + struct.length
                            if s < end and e > start:
                                covered += min(e, end) - max(s, start)
                                owner = owners[(client, s)]
                                if owner[1] != IGNORED:
                                    deleted.add(owner[0])
                    if source is not None:  # source.overlapping(start, end), inlined
                        starts = source.starts
                        i = bisect.bisect_right(starts, start) - 1
                        if i < 0:
                            i = 0
                        while i < len(starts) and starts[i] < end:
                            e = source.ends[i]
                            if e > start:
                                s = starts[i]
                                covered += (e if e < end else end) - (s if s > start else start)
                                field, level = source.owners[i]
                                if level != IGNORED:
                                    deleted.add(field)
                            i += 1
                    if covered < end - start:
                        missing = True
        anatomy = Anatomy(
            written={field: _entry_value(parsed, struct) for field, struct in last_write.items()},
            nested=frozenset(nested) if nested else _NO_FIELDS,
            deleted=frozenset(deleted) if deleted else _NO_FIELDS,
            missing=missing,
        )
        return anatomy, owners

    def _attribute_general(
        self, parsed: ParsedUpdate
    ) -> tuple[Anatomy, dict[tuple[int, int], Owner]]:
        """Attribute every struct of ``parsed``, whatever it holds (see the module)."""
        local: dict[int, _Ranges] = {}
        owners: dict[tuple[int, int], Owner] = {}
        last_write: dict[str, tuple[tuple[bool, int], StructInfo]] = {}
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
                    rank = _write_rank(parsed, struct)
                    previous = last_write.get(field)
                    if previous is None or rank >= previous[0]:
                        last_write[field] = (rank, struct)
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


def project_state(state: bytes, hidden: frozenset[str]) -> bytes:
    """A record's full ``state`` with the fields in ``hidden`` cut out (see
    :meth:`ItemIndex.project`). A full state is self-contained, so it is attributed
    against itself alone (the same as with ``ItemIndex.from_state(state)``)."""
    return ItemIndex().project(state, hidden)


def _put_varuint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _gc_struct(length: int) -> bytes:
    """A GC struct covering ``length`` clocks: info byte 0, then a varuint."""
    out = bytearray(b"\x00")
    _put_varuint(out, length)
    return bytes(out)


def _splice_hidden(
    update: bytes,
    parsed: ParsedUpdate,
    owners: Mapping[tuple[int, int], Owner],
    hidden: frozenset[str],
) -> bytes:
    """``update`` with the items to hide replaced by GC structs (``update`` if none)."""
    data = parsed.data
    parts: list[bytes] = []
    done = 0
    for struct in parsed.structs:
        if struct.kind != "item":
            continue
        owner = owners.get((struct.client, struct.clock))
        if owner is not None and owner[1] != IGNORED and owner[0] not in hidden:
            continue
        span = struct.byte_span
        if span is None:  # pragma: no cover - parse_update always sets it
            raise ValueError("struct without a byte span")
        parts.append(data[done : span[0]])
        parts.append(_gc_struct(struct.length))
        done = span[1]
    if not parts:
        return update
    parts.append(data[done:])
    return b"".join(parts)


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


def _write_rank(parsed: ParsedUpdate, struct: StructInfo) -> tuple[bool, int]:
    """How a map entry item ranks as "the value the update writes" to its field: one
    still standing beats one the update itself deletes (an earlier write the same
    replica replaced), then the later clock.

    Clocks order one client's items only, and an update may carry items of several: a
    replica that switched to a fresh client id (after a resolve or a dismiss) and wrote
    a field again sends its replaced earlier write too, deleted, under the old id and
    often at a higher clock than the new write.
    """
    return (not _deleted_in(parsed, struct), struct.clock)


def _deleted_in(parsed: ParsedUpdate, struct: StructInfo) -> bool:
    """True if ``struct`` is deleted by the update that carries it."""
    if struct.content == "deleted":
        return True
    return any(
        clock <= struct.clock < clock + length
        for clock, length in parsed.delete_set.get(struct.client, ())
    )


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
