"""Parse Yjs / yrs binary updates (format v1) without applying them.

A relay that forwards CRDT updates from untrusted peers needs to look inside
an update *before* handing it to ``pycrdt`` (which would apply whatever it
can decode): which clients and clock ranges it claims, which root types and
map keys it writes, and what it deletes.  :func:`parse_update` decodes the
bytes produced by ``pycrdt.Doc.get_update()`` (yrs ``encode_v1``, Yjs
``encodeStateAsUpdate``) into a :class:`ParsedUpdate`, and raises
:class:`UpdateDecodeError` -- and nothing else -- for any input that is
truncated, malformed or absurd.

Layout (lib0 encoding; every integer is a varuint unless stated)::

    update    = numClients {numStructs client clock struct*numStructs} deleteSet
    struct    = info:u8 len                        -- info == 0 (GC) or 10 (Skip)
              | info:u8 [origin] [rightOrigin]     -- present if info & 0x80 / 0x40
                [parentInfo (rootName | parentId)  -- only if info & 0xC0 == 0
                 [parentSub]]                      -- ... and info & 0x20
                content(info & 0x1F)
    deleteSet = numClients {client numRanges {clock len}*numRanges}

Where this module follows what ``pycrdt`` (yrs 0.28, checked against
pycrdt 0.14.13) actually does rather than the Yjs reference, the code says
so in a comment marked ``pycrdt:``.  In short:

* String content length is counted in **UTF-16 code units** (as in Yjs),
  even though ``pycrdt.Text`` indexes by UTF-8 bytes.
* JSON content (ref 2, legacy Yjs) is decoded by yrs as *count + 1* strings
  and its clock length is count + 1; we do the same so that what the relay
  inspects is what pycrdt applies.
* An XmlHook type (type ref 5) carries no hook name in yrs (Yjs writes one).
* Only type refs 0-6, 9 (sub-document) and 15 (undefined) are accepted;
  yrs rejects the others (7, weak links, is not compiled into pycrdt).

Wherever yrs would silently reinterpret a value (it truncates clocks and
lengths to u32 and masks client ids to 53 bits, it treats content refs
16-31 as 0-15, it ignores trailing bytes), this parser rejects the input
instead, so that nothing accepted here means something else to pycrdt.
It does not validate the JSON text inside embed and format content (pycrdt
rejects invalid JSON there when applying) nor the shape of sub-document
options, so applying a parsed update can still fail.

Caveat for policy checks: an item whose ``info`` has an origin or right
origin does not encode its parent at all -- the receiver copies parent and
map key from the neighbouring item.  Map overwrites in pycrdt are encoded
this way (the new value's origin is the previous value for that key), so
for such items ``parent_root``, ``parent_id`` and ``parent_sub`` are
``None`` and the key they write can only be learned from the document the
neighbour lives in.
"""

from __future__ import annotations

import re
import struct as _struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import attrs

from crdtsync.core.exceptions import UpdateDecodeError

__all__ = [
    "MAX_ANY_DEPTH",
    "MAX_CLIENT_ID",
    "MAX_CLOCK",
    "ParsedUpdate",
    "StructInfo",
    "parse_update",
]

#: Largest clock (and clock + length) accepted.  pycrdt: yrs stores clocks and
#: lengths as u32 and silently wraps larger varuints, so they are rejected here.
MAX_CLOCK: Final = 0xFFFF_FFFF

#: Largest client id accepted.  pycrdt: yrs 0.28 masks client ids to 53 bits
#: (2**53 decodes as client 0), so anything wider is rejected here.
MAX_CLIENT_ID: Final = (1 << 53) - 1

#: Deepest nesting of arrays/objects accepted inside a lib0 ``any`` value.
#: pycrdt: yrs decodes ``any`` recursively without a limit; about 100 000
#: nested arrays (a 200 kB update) overflow its stack and crash the process.
MAX_ANY_DEPTH: Final = 64

_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

# info & 0x1F -> content name, for item refs 1..9.
_CONTENT: Final = (
    "",
    "deleted",
    "json",
    "binary",
    "string",
    "embed",
    "format",
    "type",
    "any",
    "doc",
)

# Type refs yrs 0.28 (as built into pycrdt) decodes: array, map, text, xml element,
# xml fragment, xml hook, xml text, sub-document, undefined.
_TYPE_REFS: Final = frozenset({0, 1, 2, 3, 4, 5, 6, 9, 15})
_TYPE_REF_XML_ELEMENT: Final = 3

# A varuint of 2..10 bytes: up to 9 bytes with the continue bit, then one without.
_LONG_VARUINT: Final = re.compile(rb"[\x80-\xff]{1,9}[\x00-\x7f]").match
_VARUINT_CACHE: dict[bytes, int] = {}
_VARUINT_CACHE_SIZE: Final = 4096

# Encoded size (tag included) of the fixed-width lib0 any values, 0 for the others:
# 127 undefined, 126 null, 121 false, 120 true, 124 float32, 123 float64, 122 bigint64.
_ANY_FIXED_WIDTH: Final = tuple(
    {127: 1, 126: 1, 121: 1, 120: 1, 124: 5, 123: 9, 122: 9}.get(tag, 0) for tag in range(256)
)

# The fast path for common deltas (see _parse_common).  A varuint the general parser
# reads as one (1..10 bytes; its value is range-checked after the match).
_VARUINT: Final = rb"([\x80-\xff]{0,9}[\x00-\x7f])"
# A client section header: numStructs (1..127, one byte), client, clock.
_COMMON_SECTION: Final = re.compile(rb"[\x01-\x7f]" + _VARUINT + _VARUINT).match
# A map overwrite as pycrdt writes it: info 0x88 (origin, Any content; 0xA8 also sets the
# parentSub bit, which means nothing once there is an origin), origin id, one Any value
# of a fixed-width kind, a signed varint, or a string shorter than 128 bytes (whose
# length byte is the third group: the string itself is checked in Python).
_COMMON_ITEM: Final = re.compile(
    rb"[\x88\xa8]"
    + _VARUINT
    + _VARUINT
    + rb"\x01(?:[\x78\x79\x7e\x7f]|\x7c.{4}|[\x7a\x7b].{8}|\x7d[\x80-\xff]{0,9}[\x00-\x7f]"
    + rb"|\x77([\x00-\x7f]))",
    re.DOTALL,
).match
# A whole delete set of one client with one range (client, clock, length), ending the input.
_COMMON_DELETE_SET: Final = re.compile(
    rb"\x01" + _VARUINT + rb"\x01" + _VARUINT + _VARUINT
).fullmatch
# The commonest delta of all, whole: one section of one such item (its value not a
# string), then a delete set of one range.  Groups: client, clock, origin client, origin
# clock, the content (count and value), delete-set client, clock, length.
_COMMON_DELTA: Final = re.compile(
    rb"\x01\x01"
    + _VARUINT
    + _VARUINT
    + rb"[\x88\xa8]"
    + _VARUINT
    + _VARUINT
    + rb"(\x01(?:[\x78\x79\x7e\x7f]|\x7c.{4}|[\x7a\x7b].{8}|\x7d[\x80-\xff]{0,9}[\x00-\x7f]))"
    + rb"\x01"
    + _VARUINT
    + rb"\x01"
    + _VARUINT
    + _VARUINT,
    re.DOTALL,
).fullmatch

_EMPTY_DELETE_SET: Final[Mapping[int, tuple[tuple[int, int], ...]]] = MappingProxyType({})


@attrs.frozen
class StructInfo:
    """One struct of an update, as encoded (nothing is inferred from neighbours)."""

    client: int
    clock: int
    length: int
    """Number of clock ticks the struct covers."""
    kind: str
    """``"item"``, ``"gc"`` or ``"skip"``."""
    parent_root: str | None
    """Root type name, when the item encodes its parent as a root name."""
    parent_id: tuple[int, int] | None
    """``(client, clock)`` of the parent item, when the parent is a nested type."""
    parent_sub: str | None
    """Map key, when the item encodes one."""
    origin: tuple[int, int] | None
    right_origin: tuple[int, int] | None
    content: str
    """``deleted json binary string embed format type any doc``; ``""`` for gc/skip."""
    type_ref: int | None
    """For ``content == "type"``: the yrs type ref (0 array, 1 map, 2 text, ...)."""
    span: tuple[int, int] | None = None
    """For ``content == "any"``: where its values are in the update's bytes (see
    :meth:`ParsedUpdate.any_values`); decoded only on demand, off the hot path."""
    byte_span: tuple[int, int] | None = attrs.field(default=None, eq=False)
    """Where the whole struct is in the update's bytes: ``(offset of its info byte, end
    offset)``, so ``data[start:end]`` is the struct exactly as encoded (used to splice
    structs out of an update, see ``ItemIndex.project`` in the relay).  ``None`` only for
    a struct built by hand.  Not compared: two structs that describe the same thing are
    equal wherever they sit in a buffer."""


@attrs.frozen
class ParsedUpdate:
    """The structs and delete set of an update."""

    structs: tuple[StructInfo, ...]
    delete_set: Mapping[int, tuple[tuple[int, int], ...]]
    """client -> ((clock, length), ...), in encoded order."""
    data: bytes = attrs.field(default=b"", repr=False)
    """The update's bytes (for :meth:`any_values`)."""
    delete_set_at: int | None = attrs.field(default=None, eq=False, repr=False)
    """Byte offset where the delete set starts in :attr:`data` (``None`` if built by
    hand), so the delete set can be rewritten without touching the structs."""

    def any_values(self, struct: StructInfo) -> list[Any]:
        """The values an ``any`` item holds (a map entry holds one), decoded as pycrdt
        would: numbers as ``float`` or ``int``, ``undefined`` and ``null`` as ``None``."""
        if struct.span is None:
            return []
        pos = struct.span[0]
        count = self.data[pos]
        pos += 1
        if count == 1:  # a map entry's value
            return [_decode_any(self.data, pos, 0)[0]]
        if count & 0x80:
            count, pos = _varuint_tail(self.data, pos, count)
        values = []
        for _ in range(count):
            value, pos = _decode_any(self.data, pos, 0)
            values.append(value)
        return values

    def clients(self) -> frozenset[int]:
        """Clients that have structs (the delete set is not counted)."""
        return frozenset(s.client for s in self.structs)

    def client_ranges(self) -> dict[int, tuple[int, int]]:
        """client -> (first clock, end clock exclusive) over its structs (skips included)."""
        ranges: dict[int, tuple[int, int]] = {}
        for s in self.structs:
            first = ranges.get(s.client)
            start = s.clock if first is None else first[0]
            ranges[s.client] = (start, s.clock + s.length)
        return ranges

    def roots(self) -> frozenset[str]:
        """Every root type name that some struct names as its parent."""
        return frozenset(s.parent_root for s in self.structs if s.parent_root is not None)

    def root_keys(self, root: str) -> frozenset[str]:
        """Map keys (``parent_sub``) of the items whose ``parent_root`` is ``root``."""
        return frozenset(
            s.parent_sub for s in self.structs if s.parent_root == root and s.parent_sub is not None
        )


def parse_update(
    data: bytes | bytearray | memoryview, *, max_structs: int = 1_000_000
) -> ParsedUpdate:
    """Decode a v1 update; raise :class:`UpdateDecodeError` if it is not one.

    ``max_structs`` bounds the number of structs, and separately the number of
    delete-set ranges, so that a large hostile update cannot make the parser
    allocate without limit.
    """
    buf = data if type(data) is bytes else bytes(data)
    try:
        parsed = _parse_common(buf, max_structs)
        return parsed if parsed is not None else _parse(buf, max_structs)
    except IndexError:
        # Every read is ``buf[pos]``; running off the end is the only IndexError.
        raise UpdateDecodeError("unexpected end of input", len(buf)) from None
    except RecursionError:  # pragma: no cover - depth is capped far below the limit
        raise UpdateDecodeError("nesting too deep", 0) from None


def _parse_general(
    data: bytes | bytearray | memoryview, *, max_structs: int = 1_000_000
) -> ParsedUpdate:
    """:func:`parse_update` without the fast path for common deltas: what the tests
    compare the fast path with."""
    buf = data if type(data) is bytes else bytes(data)
    try:
        return _parse(buf, max_structs)
    except IndexError:
        raise UpdateDecodeError("unexpected end of input", len(buf)) from None
    except RecursionError:  # pragma: no cover - depth is capped far below the limit
        raise UpdateDecodeError("nesting too deep", 0) from None


def _varuint_tail(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """Finish a varuint whose first byte ``first`` (at ``pos - 1``) had the continue bit."""
    start = pos - 1
    match = _LONG_VARUINT(buf, start)
    if match is None:
        if len(buf) - start >= 10:
            raise UpdateDecodeError("varuint longer than 10 bytes", start)
        raise UpdateDecodeError("unexpected end of input in varuint", start)
    value = _varuint_value(match.group())
    if value > _U64_MAX:
        raise UpdateDecodeError("varuint exceeds 64 bits", start)
    return value, match.end()


def _read_str(buf: bytes, pos: int, what: str) -> tuple[str, int]:
    """Read a varstring (varuint byte length + UTF-8)."""
    start = pos
    size = buf[pos]
    pos += 1
    if size & 0x80:
        size, pos = _varuint_tail(buf, pos, size)
    end = pos + size
    if end > len(buf):
        raise UpdateDecodeError(f"{what} of {size} bytes runs past the end of input", start)
    try:
        text = buf[pos:end].decode()
    except UnicodeDecodeError:
        raise UpdateDecodeError(f"{what} is not valid UTF-8", pos) from None
    return text, end


def _read_id(buf: bytes, pos: int, what: str) -> tuple[tuple[int, int], int]:
    start = pos
    client = buf[pos]
    pos += 1
    if client & 0x80:
        client, pos = _varuint_tail(buf, pos, client)
    clock = buf[pos]
    pos += 1
    if clock & 0x80:
        clock, pos = _varuint_tail(buf, pos, clock)
    if client > MAX_CLIENT_ID:
        raise UpdateDecodeError(f"{what} client id {client} exceeds 53 bits", start)
    if clock > MAX_CLOCK:
        raise UpdateDecodeError(f"{what} clock {clock} exceeds 32 bits", start)
    return (client, clock), pos


def _skip_any(buf: bytes, pos: int, depth: int) -> int:
    """Skip one lib0 ``any`` value; ``depth`` counts the enclosing arrays/objects."""
    start = pos
    tag = buf[pos]
    pos += 1
    if 120 <= tag <= 127:  # 128-255 are unknown tags (pycrdt refuses them too)
        # 127 undefined, 126 null, 121 false, 120 true: no payload.
        if tag == 125:  # signed varint, at most 10 bytes
            b = buf[pos]
            pos += 1
            if b & 0x80:
                limit = start + 11
                while True:
                    b = buf[pos]
                    pos += 1
                    if b < 0x80:
                        break
                    if pos >= limit:
                        raise UpdateDecodeError("varint longer than 10 bytes", start + 1)
        elif tag == 124:  # float32
            pos += 4
        elif tag == 123 or tag == 122:  # float64, bigint64
            pos += 8
        if pos > len(buf):
            raise UpdateDecodeError("unexpected end of input in number", start)
        return pos
    if tag == 119:  # string
        return _read_str(buf, pos, "any string")[1]
    if tag == 116:  # Uint8Array
        size = buf[pos]
        pos += 1
        if size & 0x80:
            size, pos = _varuint_tail(buf, pos, size)
        pos += size
        if pos > len(buf):
            raise UpdateDecodeError(f"any buffer of {size} bytes runs past the end of input", start)
        return pos
    if tag == 118 or tag == 117:  # object, array
        if depth >= MAX_ANY_DEPTH:
            raise UpdateDecodeError(f"any value nested deeper than {MAX_ANY_DEPTH}", start)
        count = buf[pos]
        pos += 1
        if count & 0x80:
            count, pos = _varuint_tail(buf, pos, count)
        depth += 1
        if tag == 117:
            if count > len(buf) - pos:
                raise UpdateDecodeError(f"any array of {count} values cannot fit", start)
            for _ in range(count):
                pos = _skip_any(buf, pos, depth)
        else:
            if count * 2 > len(buf) - pos:
                raise UpdateDecodeError(f"any object of {count} entries cannot fit", start)
            for _ in range(count):
                pos = _read_str(buf, pos, "any object key")[1]
                pos = _skip_any(buf, pos, depth)
        return pos
    raise UpdateDecodeError(f"unknown any tag {tag}", start)


def _varuint_value(raw: bytes) -> int:
    """The value of a whole varuint ``raw`` (matched by ``_VARUINT``), possibly above
    64 bits (the caller range-checks it). Multi-byte varuints are mostly client ids,
    which repeat: values within 64 bits are memoised."""
    value = _VARUINT_CACHE.get(raw)
    if value is None:
        value = 0
        shift = 0
        for b in raw:
            value |= (b & 0x7F) << shift
            shift += 7
        if value <= _U64_MAX:
            if len(_VARUINT_CACHE) >= _VARUINT_CACHE_SIZE:
                _VARUINT_CACHE.clear()
            _VARUINT_CACHE[raw] = value
    return value


def _overwrite(
    client: int,
    clock: int,
    origin: tuple[int, int],
    span: tuple[int, int],
    byte_span: tuple[int, int],
) -> StructInfo:
    """The struct of a map overwrite as the fast path reads it: one ``any`` value placed
    after ``origin``, no right origin, no parent of its own."""
    return StructInfo(
        client, clock, 1, "item", None, None, None, origin, None, "any", None, span, byte_span
    )


class Overwrite(NamedTuple):
    """The commonest delta of all, as :func:`common_overwrite` reads it: ``client``
    writes one map entry at ``clock``, right after the item ``origin`` (the key's value it
    replaces), holding ``value`` (a plain value, not a string), and the update's delete
    set is one range of one client."""

    client: int
    clock: int
    origin: tuple[int, int]
    value: Any
    delete_set: Mapping[int, tuple[tuple[int, int], ...]]


def common_overwrite(data: bytes) -> Overwrite | None:
    """The commonest delta read at the least cost (no struct or parsed-update objects),
    or ``None`` for anything else (:func:`parse_update` reads that). For an input it
    accepts, :func:`parse_update` gives one struct with these very fields and value, and
    this delete set (property-tested)."""
    match = _COMMON_DELTA(data)
    if match is None:
        return None
    values = _common_delta_values(match)
    if values is None:
        return None
    client, clock, origin_client, origin_clock, _, ds_client, ds_clock, ds_length = values
    value = _decode_any(data, match.start(5) + 1, 0)[0]  # after the count (1)
    deleted = {ds_client: ((ds_clock, ds_length),)}
    return Overwrite(client, clock, (origin_client, origin_clock), value, deleted)


def _common_delta_values(match: re.Match[bytes]) -> list[int] | None:
    """The numbers of a :data:`_COMMON_DELTA` match (the content group's first byte in
    its place), or ``None`` if one is beyond the bounds :func:`_parse` enforces."""
    varuint = _varuint_value
    values = [r[0] if len(r) == 1 else varuint(r) for r in match.groups()]
    client, clock, origin_client, origin_clock, _, ds_client, ds_clock, ds_length = values
    if (
        client > MAX_CLIENT_ID
        or clock >= MAX_CLOCK
        or origin_client > MAX_CLIENT_ID
        or origin_clock > MAX_CLOCK
        or ds_client > MAX_CLIENT_ID
        or ds_clock + ds_length > MAX_CLOCK
    ):
        return None
    return values


def _parse_common(buf: bytes, max_structs: int) -> ParsedUpdate | None:
    """The relay's common delta read cheaply, or ``None`` to leave it to :func:`_parse`.

    Almost every pushed change is a few map overwrites: each an Any item of one simple
    value whose origin is the key's previous value (so it encodes no parent), then the
    document's delete set.  Here each client section header and each such item is one
    regular-expression match, which costs less than reading it byte by byte in Python.
    This path only *accepts*: whatever it has not proven to be of that shape and within
    every limit :func:`_parse` enforces (id and clock bounds, a client's second
    section, ``max_structs``, UTF-8 strings) makes it return ``None``, and the general
    parser then reads the input from the start and gives the result or the error.  The
    delete set is read by :func:`_with_delete_set` whichever path read the structs.
    For inputs it accepts, the result equals :func:`_parse`'s (property-tested).
    """
    match = _COMMON_DELTA(buf)
    if match is not None:
        values = _common_delta_values(match)
        if max_structs < 1 or values is None:
            return None
        client, clock, origin_client, origin_clock, _, ds_client, ds_clock, ds_length = values
        content_at, ds_at = match.span(5)
        item = _overwrite(
            client, clock, (origin_client, origin_clock), (content_at, ds_at), (match.end(2), ds_at)
        )
        delete_set = MappingProxyType({ds_client: ((ds_clock, ds_length),)})
        return ParsedUpdate((item,), delete_set, buf, ds_at)

    n = len(buf)
    if not n or not 0 < buf[0] < 0x80:
        return None
    pos = 1
    structs: list[StructInfo] = []
    append = structs.append
    seen: set[int] = set()
    total = 0
    for _ in range(buf[0]):
        match = _COMMON_SECTION(buf, pos)
        if match is None:
            return None
        raw_client, raw_clock = match.groups()
        client = raw_client[0] if len(raw_client) == 1 else _varuint_value(raw_client)
        clock = raw_clock[0] if len(raw_clock) == 1 else _varuint_value(raw_clock)
        if client > MAX_CLIENT_ID or clock > MAX_CLOCK or client in seen:
            return None
        seen.add(client)
        num_structs = buf[pos]
        total += num_structs
        if total > max_structs:
            return None
        pos = match.end()
        for _ in range(num_structs):
            match = _COMMON_ITEM(buf, pos)
            if match is None:
                return None
            raw_client, raw_clock, size = match.groups()
            end = match.end()
            if size is not None:  # a string: its bytes follow the match
                start = end
                end += size[0]
                if end > n:
                    return None
                try:
                    buf[start:end].decode()
                except UnicodeDecodeError:
                    return None
            origin_client = raw_client[0] if len(raw_client) == 1 else _varuint_value(raw_client)
            origin_clock = raw_clock[0] if len(raw_clock) == 1 else _varuint_value(raw_clock)
            if origin_client > MAX_CLIENT_ID or origin_clock > MAX_CLOCK or clock >= MAX_CLOCK:
                return None
            append(
                _overwrite(
                    client, clock, (origin_client, origin_clock), (match.end(2), end), (pos, end)
                )
            )
            clock += 1
            pos = end
    # The delete set of a delta from a single writer: one client, one range.
    match = _COMMON_DELETE_SET(buf, pos)
    if match is not None:  # (one range is within max_structs: so was at least one struct)
        raw_client, raw_clock, raw_length = match.groups()
        client = raw_client[0] if len(raw_client) == 1 else _varuint_value(raw_client)
        clock = raw_clock[0] if len(raw_clock) == 1 else _varuint_value(raw_clock)
        length = raw_length[0] if len(raw_length) == 1 else _varuint_value(raw_length)
        if client <= MAX_CLIENT_ID and clock + length <= MAX_CLOCK:
            delete_set = MappingProxyType({client: ((clock, length),)})
            return ParsedUpdate(tuple(structs), delete_set, buf, pos)
    return _with_delete_set(buf, pos, max_structs, tuple(structs))


def _parse(buf: bytes, max_structs: int) -> ParsedUpdate:
    n = len(buf)
    tail = _varuint_tail
    read_str = _read_str
    new_struct = StructInfo
    pos = 0

    num_clients = buf[pos]
    pos += 1
    if num_clients & 0x80:
        num_clients, pos = tail(buf, pos, num_clients)
    # Each client section needs at least 3 bytes (numStructs, client, clock).
    if num_clients * 3 > n - pos:
        raise UpdateDecodeError(f"{num_clients} client sections cannot fit", 0)

    structs: list[StructInfo] = []
    append = structs.append
    seen: set[int] = set()
    total = 0
    for _ in range(num_clients):
        header = pos
        num_structs = buf[pos]
        pos += 1
        if num_structs & 0x80:
            num_structs, pos = tail(buf, pos, num_structs)
        client = buf[pos]
        pos += 1
        if client & 0x80:
            client, pos = tail(buf, pos, client)
        clock = buf[pos]
        pos += 1
        if clock & 0x80:
            clock, pos = tail(buf, pos, clock)
        if client > MAX_CLIENT_ID:
            raise UpdateDecodeError(f"client id {client} exceeds 53 bits", header)
        if client in seen:
            # pycrdt: yrs appends a repeated section to the first; a valid encoder never
            # writes one, and it would make per-client ranges ambiguous.
            raise UpdateDecodeError(f"client {client} has two struct sections", header)
        seen.add(client)
        if clock > MAX_CLOCK:
            raise UpdateDecodeError(f"clock {clock} exceeds 32 bits", header)
        # Every struct needs at least 2 bytes.
        if num_structs * 2 > n - pos:
            raise UpdateDecodeError(f"{num_structs} structs cannot fit", header)
        total += num_structs
        if total > max_structs:
            raise UpdateDecodeError(f"more than {max_structs} structs", header)

        for _ in range(num_structs):
            start = pos
            info = buf[pos]
            pos += 1
            ref = info & 0x1F
            if ref == 0 or ref == 10:
                # pycrdt: yrs only takes info == 0 / 10 as GC / Skip and fails on the same
                # refs with flag bits set (Yjs would ignore the flags); reject those.
                if info != ref:
                    raise UpdateDecodeError(f"flag bits set on a gc/skip struct ({info:#x})", start)
                length = buf[pos]
                pos += 1
                if length & 0x80:
                    length, pos = tail(buf, pos, length)
                if length == 0:
                    # pycrdt panics on a zero-length GC (a division by zero); neither Yjs
                    # nor yrs ever writes one.
                    raise UpdateDecodeError("a gc/skip struct of length 0", start)
                if clock + length > MAX_CLOCK:
                    raise UpdateDecodeError("struct end clock exceeds 32 bits", start)
                append(
                    new_struct(
                        client,
                        clock,
                        length,
                        "gc" if ref == 0 else "skip",
                        None,
                        None,
                        None,
                        None,
                        None,
                        "",
                        None,
                        None,
                        (start, pos),
                    )
                )
                clock += length
                continue
            if ref > 9:
                # pycrdt: yrs masks the content ref to 4 bits, so 16..25 would alias 0..9;
                # 11 (move) is not decodable by pycrdt either.
                raise UpdateDecodeError(f"unknown content ref {ref}", start)

            origin: tuple[int, int] | None = None
            right_origin: tuple[int, int] | None = None
            parent_root: str | None = None
            parent_id: tuple[int, int] | None = None
            parent_sub: str | None = None
            type_ref: int | None = None
            # The reads below are inlined copies of _read_id / _read_str: this is the
            # relay's hot path and a Python call costs as much as the read itself.
            if info & 0x80:
                at = pos
                id_client = buf[pos]
                pos += 1
                if id_client & 0x80:
                    id_client, pos = tail(buf, pos, id_client)
                id_clock = buf[pos]
                pos += 1
                if id_clock & 0x80:
                    id_clock, pos = tail(buf, pos, id_clock)
                if id_client > MAX_CLIENT_ID or id_clock > MAX_CLOCK:
                    _read_id(buf, at, "origin")  # raises the precise error
                origin = (id_client, id_clock)
            if info & 0x40:
                right_origin, pos = _read_id(buf, pos, "right origin")
            if not info & 0xC0:
                parent_info = buf[pos]
                pos += 1
                if parent_info == 1:
                    at = pos
                    size = buf[pos]
                    pos += 1
                    if size & 0x80:
                        size, pos = tail(buf, pos, size)
                    end = pos + size
                    if end > n:
                        read_str(buf, at, "root name")  # raises
                    try:
                        parent_root = buf[pos:end].decode()
                    except UnicodeDecodeError:
                        raise UpdateDecodeError("root name is not valid UTF-8", pos) from None
                    pos = end
                elif parent_info == 0:
                    parent_id, pos = _read_id(buf, pos, "parent")
                else:
                    # Yjs/yrs treat anything but 1 as "parent is an id"; encoders write 0.
                    raise UpdateDecodeError(f"parent info {parent_info} is not 0 or 1", pos - 1)
                if info & 0x20:
                    at = pos
                    size = buf[pos]
                    pos += 1
                    if size & 0x80:
                        size, pos = tail(buf, pos, size)
                    end = pos + size
                    if end > n:
                        read_str(buf, at, "map key")  # raises
                    try:
                        parent_sub = buf[pos:end].decode()
                    except UnicodeDecodeError:
                        raise UpdateDecodeError("map key is not valid UTF-8", pos) from None
                    pos = end

            content_at = pos
            if ref == 8:  # Any: count + count lib0 values
                length = buf[pos]
                pos += 1
                if length & 0x80:
                    length, pos = tail(buf, pos, length)
                if length > n - pos:
                    raise UpdateDecodeError(f"{length} any values cannot fit", content_at)
                for _ in range(length):
                    # Fast paths for the common scalars; everything else via _skip_any.
                    tag = buf[pos]
                    if tag == 119:
                        at = pos
                        size = buf[pos + 1]
                        pos += 2
                        if size & 0x80:
                            size, pos = tail(buf, pos, size)
                        end = pos + size
                        if end > n:
                            _skip_any(buf, at, 0)  # raises
                        try:
                            buf[pos:end].decode()
                        except UnicodeDecodeError:
                            raise UpdateDecodeError("any string is not valid UTF-8", pos) from None
                        pos = end
                    else:
                        width = _ANY_FIXED_WIDTH[tag]
                        if width and pos + width <= n:
                            pos += width
                        else:
                            pos = _skip_any(buf, pos, 0)
            elif ref == 4:  # String: length in UTF-16 code units
                size = buf[pos]
                pos += 1
                if size & 0x80:
                    size, pos = tail(buf, pos, size)
                end = pos + size
                if end > n:
                    raise UpdateDecodeError(
                        f"string of {size} bytes runs past the end of input", content_at
                    )
                raw = buf[pos:end]
                if raw.isascii():
                    length = size
                else:
                    try:
                        text = raw.decode()
                    except UnicodeDecodeError:
                        raise UpdateDecodeError("string is not valid UTF-8", pos) from None
                    # pycrdt: clocks count UTF-16 code units, like Yjs (verified against the
                    # state vector), although pycrdt.Text indexes by UTF-8 bytes.
                    length = len(text.encode("utf-16-le")) >> 1
                pos = end
            elif ref == 1:  # Deleted: length
                length = buf[pos]
                pos += 1
                if length & 0x80:
                    length, pos = tail(buf, pos, length)
            elif ref == 7:  # Type
                type_ref = buf[pos]
                pos += 1
                if type_ref & 0x80:
                    type_ref, pos = tail(buf, pos, type_ref)
                if type_ref not in _TYPE_REFS:
                    raise UpdateDecodeError(f"unknown type ref {type_ref}", content_at)
                # pycrdt: only XmlElement carries a name; yrs reads none for XmlHook (5),
                # although Yjs writes the hook name.
                if type_ref == _TYPE_REF_XML_ELEMENT:
                    pos = read_str(buf, pos, "xml element name")[1]
                length = 1
            elif ref == 3:  # Binary
                size = buf[pos]
                pos += 1
                if size & 0x80:
                    size, pos = tail(buf, pos, size)
                pos += size
                if pos > n:
                    raise UpdateDecodeError(
                        f"binary of {size} bytes runs past the end of input", content_at
                    )
                length = 1
            elif ref == 6:  # Format: key + JSON value
                pos = read_str(buf, pos, "format key")[1]
                pos = read_str(buf, pos, "format value")[1]
                length = 1
            elif ref == 5:  # Embed: JSON
                pos = read_str(buf, pos, "embed")[1]
                length = 1
            elif ref == 9:  # Doc: guid + options (any)
                pos = read_str(buf, pos, "doc guid")[1]
                pos = _skip_any(buf, pos, 0)
                length = 1
            else:  # ref == 2, JSON: legacy Yjs
                count = buf[pos]
                pos += 1
                if count & 0x80:
                    count, pos = tail(buf, pos, count)
                # pycrdt: yrs 0.28 reads count + 1 strings here (Yjs writes count), and the
                # item's length is the number of strings read.  Follow yrs.
                length = count + 1
                if length > n - pos:
                    raise UpdateDecodeError(f"{length} json strings cannot fit", content_at)
                for _ in range(length):
                    pos = read_str(buf, pos, "json string")[1]

            if length == 0:
                # An item that takes no clock: Yjs never writes one, and yrs would take it
                # as something else than what it says (a write of nothing, yet a new version).
                raise UpdateDecodeError(f"an item of length 0 ({_CONTENT[ref]} content)", start)
            if clock + length > MAX_CLOCK:
                raise UpdateDecodeError("struct end clock exceeds 32 bits", start)
            append(
                new_struct(
                    client,
                    clock,
                    length,
                    "item",
                    parent_root,
                    parent_id,
                    parent_sub,
                    origin,
                    right_origin,
                    _CONTENT[ref],
                    type_ref,
                    (content_at, pos) if ref == 8 else None,
                    (start, pos),
                )
            )
            clock += length

    return _with_delete_set(buf, pos, max_structs, tuple(structs))


def _with_delete_set(
    buf: bytes, pos: int, max_structs: int, structs: tuple[StructInfo, ...]
) -> ParsedUpdate:
    """Read the delete set at ``pos`` (the end of the struct sections) and return the
    update.  Shared by the general parser and the fast path, so a delete set is read
    (and refused) the same way whichever path read the structs."""
    n = len(buf)
    tail = _varuint_tail
    ds_at = pos
    num_ds = buf[pos]
    pos += 1
    if num_ds & 0x80:
        num_ds, pos = tail(buf, pos, num_ds)
    delete_set: Mapping[int, tuple[tuple[int, int], ...]]
    if num_ds == 0:
        delete_set = _EMPTY_DELETE_SET
    else:
        if num_ds * 2 > n - pos:
            raise UpdateDecodeError(f"{num_ds} delete-set clients cannot fit", ds_at)
        ds: dict[int, tuple[tuple[int, int], ...]] = {}
        total = 0
        for _ in range(num_ds):
            header = pos
            client = buf[pos]
            pos += 1
            if client & 0x80:
                client, pos = tail(buf, pos, client)
            num_ranges = buf[pos]
            pos += 1
            if num_ranges & 0x80:
                num_ranges, pos = tail(buf, pos, num_ranges)
            if client > MAX_CLIENT_ID:
                raise UpdateDecodeError(f"delete-set client id {client} exceeds 53 bits", header)
            if client in ds:
                raise UpdateDecodeError(f"client {client} appears twice in the delete set", header)
            if num_ranges * 2 > n - pos:
                raise UpdateDecodeError(f"{num_ranges} delete ranges cannot fit", header)
            total += num_ranges
            if total > max_structs:
                raise UpdateDecodeError(f"more than {max_structs} delete ranges", header)
            ranges: list[tuple[int, int]] = []
            for _ in range(num_ranges):
                at = pos
                r_clock = buf[pos]
                pos += 1
                if r_clock & 0x80:
                    r_clock, pos = tail(buf, pos, r_clock)
                r_len = buf[pos]
                pos += 1
                if r_len & 0x80:
                    r_len, pos = tail(buf, pos, r_len)
                if r_clock + r_len > MAX_CLOCK:
                    raise UpdateDecodeError("delete range end exceeds 32 bits", at)
                ranges.append((r_clock, r_len))
            ds[client] = tuple(ranges)
        delete_set = MappingProxyType(ds)

    if pos != n:
        # pycrdt: yrs ignores trailing bytes; we refuse them.
        raise UpdateDecodeError(f"{n - pos} trailing bytes after the delete set", pos)
    return ParsedUpdate(structs, delete_set, buf, ds_at)


def _decode_any(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """Decode one lib0 ``any`` value that :func:`_skip_any` already validated."""
    tag = buf[pos]
    pos += 1
    if tag in (127, 126):
        return None, pos
    if tag == 121:
        return False, pos
    if tag == 120:
        return True, pos
    if tag == 125:  # signed varint: sign in bit 6 of the first byte
        byte = buf[pos]
        pos += 1
        negative = bool(byte & 0x40)
        number = byte & 0x3F
        shift = 6
        while byte & 0x80:
            byte = buf[pos]
            pos += 1
            number |= (byte & 0x7F) << shift
            shift += 7
        return (-number if negative else number), pos
    if tag == 124:
        return _struct.unpack(">f", buf[pos : pos + 4])[0], pos + 4
    if tag == 123:
        return _struct.unpack(">d", buf[pos : pos + 8])[0], pos + 8
    if tag == 122:
        return _struct.unpack(">q", buf[pos : pos + 8])[0], pos + 8
    if tag == 119:
        text, pos = _read_str(buf, pos, "any string")
        return text, pos
    if tag == 116:
        size = buf[pos]
        pos += 1
        if size & 0x80:
            size, pos = _varuint_tail(buf, pos, size)
        return bytes(buf[pos : pos + size]), pos + size
    count = buf[pos]
    pos += 1
    if count & 0x80:
        count, pos = _varuint_tail(buf, pos, count)
    if depth >= MAX_ANY_DEPTH:
        raise UpdateDecodeError(f"any value nested deeper than {MAX_ANY_DEPTH}", pos)
    if tag == 117:
        items = []
        for _ in range(count):
            item, pos = _decode_any(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    entries = {}
    for _ in range(count):
        key, pos = _read_str(buf, pos, "any object key")
        entries[key], pos = _decode_any(buf, pos, depth + 1)
    return entries, pos
