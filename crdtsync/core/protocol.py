"""The wire protocol: versioned msgpack frames between replicas and the relay.

This module is sans-I/O: it turns frames into bytes (:func:`encode`) and bytes into
frames (:func:`decode`), and nothing else. Every frame is one websocket binary
message holding a msgpack map whose ``"type"`` names the frame; the full description
is ``docs/protocol.md``.

Replica → relay: :class:`Hello`, :class:`Subscribe`, :class:`Push`, :class:`Flush`.
Relay → replica: :class:`Welcome`, :class:`Changes`, :class:`CaughtUp`,
:class:`Verdicts` (holding :class:`Ack`, :class:`Conflict`, :class:`Unresolvable`,
:class:`Rejected`), :class:`Flushed`, :class:`Error`.

Version 2 adds :class:`Flush` / :class:`Flushed` and ``welcome.max_frame_bytes``; a
relay speaking version 1 has neither, and a replica must then not send ``flush``.

:func:`decode` raises :class:`ProtocolError` with an :class:`ErrorCode` and a message
that names the offending part of the frame (``push.changes[2].delta: expected bytes``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import attrs
import msgpack

from crdtsync.core.exceptions import ProtocolError

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAX_FRAME_BYTES = 4 * 1024 * 1024  #: what a relay accepts from a replica
#: changes a relay decides in one push frame (the relay does one frame at a time, so this
#: bounds how long one connection keeps the others waiting)
MAX_CHANGES_PER_FRAME = 500
MAX_RELAY_FRAME_BYTES = 64 * 1024 * 1024  #: what a replica accepts from the relay


class ErrorCode(enum.StrEnum):
    """Machine-readable reasons in :class:`Error` frames and :class:`Rejected` verdicts."""

    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_FRAME_TYPE = "unknown_frame_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    AUTH_FAILED = "auth_failed"
    NOT_AUTHENTICATED = "not_authenticated"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_UPDATE = "invalid_update"
    OTHER_ROOT = "other_root"
    UNKNOWN_FIELD = "unknown_field"
    READ_ONLY_FIELD = "read_only_field"
    UNKNOWN_OBJECT = "unknown_object"
    MISSING_DEPENDENCIES = "missing_dependencies"
    FORGED_CLIENT_ID = "forged_client_id"
    DUPLICATE_RECORD = "duplicate_record"
    UNKNOWN_RECORD = "unknown_record"
    REFUSED_OPS = "refused_ops"
    UNKNOWN_ERROR = "unknown_error"  #: a code this side does not know (a newer peer's)
    INTERNAL_ERROR = "internal_error"
    TOO_SLOW = "too_slow"
    RATE_LIMITED = "rate_limited"  #: more frames per second than the relay allows


# -- validation helpers -----------------------------------------------------------------

T = TypeVar("T")
_E = TypeVar("_E", bound=enum.StrEnum)


def _malformed(where: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, f"{where}: {message}")


def _get(
    data: Mapping[str, Any],
    key: str,
    kind: type[T],
    where: str,
    *,
    optional: bool = False,
    default: Any = None,
) -> T:
    if key not in data or data[key] is None:
        if optional:
            return default  # type: ignore[no-any-return]
        raise _malformed(f"{where}.{key}", "missing")
    value = data[key]
    if kind is int and isinstance(value, bool):
        raise _malformed(f"{where}.{key}", "expected an integer, got a boolean")
    if not isinstance(value, kind):
        raise _malformed(
            f"{where}.{key}",
            f"expected {_KIND_NAMES.get(kind, kind.__name__)}, got {type(value).__name__}",
        )
    return value


_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    str: "a string",
    bytes: "bytes",
    list: "a list",
    dict: "a map",
    bool: "a boolean",
}


def _map(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(where, f"expected a map, got {type(value).__name__}")
    return value


def _list(
    data: Mapping[str, Any], key: str, where: str, item: Callable[[object, str], T]
) -> tuple[T, ...]:
    values = _get(data, key, list, where)
    return tuple(item(value, f"{where}.{key}[{index}]") for index, value in enumerate(values))


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _malformed(where, f"expected a string, got {type(value).__name__}")
    return value


def _shown(value: object) -> str:
    """A peer's value as an error message may show it: a string quoted and cut short,
    anything else by its type only (never the repr of data nested without bound)."""
    if isinstance(value, str):
        return repr(value[:40] + "…") if len(value) > 40 else repr(value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def _non_negative(value: int, where: str) -> int:
    if value < 0:
        raise _malformed(where, f"must not be negative, got {value}")
    return value


# -- frames -----------------------------------------------------------------------------


@attrs.frozen
class Hello:
    """Replica → relay, first frame: the versions it speaks, its token and identity."""

    TYPE: ClassVar[str] = "hello"
    versions: tuple[int, ...]
    token: str
    replica_id: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "versions": list(self.versions),
            "token": self.token,
            "replica": self.replica_id,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Hello:
        versions = _get(data, "versions", list, "hello")
        if not versions or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in versions
        ):
            raise _malformed("hello.versions", "expected a non-empty list of integers")
        replica = _get(data, "replica", str, "hello")
        if not 1 <= len(replica) <= 128:
            raise _malformed("hello.replica", "must be 1 to 128 characters")
        return cls(tuple(versions), _get(data, "token", str, "hello"), replica)


@attrs.frozen
class Welcome:
    """Relay → replica: the accepted version, who the connection is, the schema as this
    user sees it, and the objects this user's roles may read (``None``: not said)."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    user: str
    server_id: str
    schema: Mapping[str, Any]
    readable: tuple[str, ...] | None = None
    #: the largest message the relay reads from a replica (``None``: not said, version 1)
    max_frame_bytes: int | None = None
    #: the most changes it takes in one push frame (``None``: not said, version 1)
    max_changes_per_frame: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "type": self.TYPE,
            "version": self.version,
            "user": self.user,
            "server": self.server_id,
            "schema": dict(self.schema),
        }
        if self.readable is not None:
            wire["readable"] = list(self.readable)
        if self.max_frame_bytes is not None:
            wire["max_frame_bytes"] = self.max_frame_bytes
        if self.max_changes_per_frame is not None:
            wire["max_changes_per_frame"] = self.max_changes_per_frame
        return wire

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Welcome:
        readable = None
        if data.get("readable") is not None:
            readable = _list(data, "readable", "welcome", _str)
        limit = _get(data, "max_frame_bytes", int, "welcome", optional=True)
        if limit is not None and limit < 1024:
            raise _malformed("welcome.max_frame_bytes", f"must be at least 1024, got {limit}")
        changes = _get(data, "max_changes_per_frame", int, "welcome", optional=True)
        if changes is not None and changes < 1:
            raise _malformed("welcome.max_changes_per_frame", f"must be at least 1, got {changes}")
        return cls(
            _get(data, "version", int, "welcome"),
            _get(data, "user", str, "welcome"),
            _get(data, "server", str, "welcome"),
            _get(data, "schema", dict, "welcome"),
            readable,
            limit,
            changes,
        )


@attrs.frozen
class Subscribe:
    """Replica → relay: send me every change to these objects after ``cursor``."""

    TYPE: ClassVar[str] = "subscribe"
    objects: tuple[str, ...]
    cursor: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "objects": list(self.objects), "cursor": self.cursor}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Subscribe:
        objects = _list(data, "objects", "subscribe", _str)
        cursor = _non_negative(_get(data, "cursor", int, "subscribe"), "subscribe.cursor")
        return cls(objects, cursor)


class ChangeKind(enum.StrEnum):
    """What a change does to its record (``push.changes[i].kind``)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class UnresolvableReason(enum.StrEnum):
    """Why a change can never be merged (``unresolvable`` verdicts' ``reason``)."""

    DELETED = "deleted"  #: someone else deleted the record
    FORBIDDEN = "forbidden"  #: the user may no longer change (or read) the record


class AdminAction(enum.StrEnum):
    """What an :class:`Admin` request does to its record."""

    SHARE = "share"
    UNSHARE = "unshare"
    SET_OWNER = "set_owner"
    DELETE = "delete"
    ACCESS = "access"


#: ``kind`` on the wire -> the ChangeKind (the decoder's fast path)
_CHANGE_KINDS: dict[str, ChangeKind] = {kind.value: kind for kind in ChangeKind}


def _choice(kind: type[_E], value: str, where: str) -> _E:
    """``value`` as a member of the string enum ``kind``, or a decode error naming the choices."""
    try:
        return kind(value)
    except ValueError:
        *first, last = [member.value for member in kind]
        choices = f"{', '.join(first)} or {last}"
        raise _malformed(where, f"must be {choices}, got {_shown(value)}") from None


def _as_change_kind(kind: ChangeKind | str) -> ChangeKind:
    """A change's kind, given as one or by its value (an enum call costs a microsecond:
    not on the push path, whose decoder hands over members)."""
    return kind if type(kind) is ChangeKind else ChangeKind(kind)


@attrs.frozen(kw_only=True)
class ChangeFrame:
    """One pending change inside a :class:`Push`. ``change_id`` makes it idempotent."""

    change_id: str
    record_id: str
    object: str
    kind: ChangeKind = attrs.field(converter=_as_change_kind)
    base_version: int
    field_bases: Mapping[str, int]
    delta: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.change_id,
            "record": self.record_id,
            "object": self.object,
            "kind": self.kind.value,
            "base": self.base_version,
            "bases": dict(self.field_bases),
            "delta": self.delta,
        }

    @classmethod
    def from_wire_common(cls, value: Any) -> ChangeFrame | None:
        """The change a well-formed map describes, every field present with its exact
        type, as :meth:`from_wire` would decode it; ``None`` for anything else (then
        :meth:`from_wire` decodes it, or says precisely what is wrong). The relay's hot
        path: no error location is built for a change that needs none."""
        if type(value) is not dict:
            return None
        get = value.get
        change_id, record_id, object_name = get("id"), get("record"), get("object")
        kind, base, delta, bases = get("kind"), get("base"), get("delta"), get("bases")
        if (
            type(change_id) is not str
            or not 0 < len(change_id) <= 128
            or type(record_id) is not str
            or not 0 < len(record_id) <= 128
            or type(object_name) is not str
            or type(kind) is not str
            or kind not in _CHANGE_KINDS
            or type(base) is not int
            or base < 0
            or type(delta) is not bytes
        ):
            return None
        if bases is None:
            bases = {}
        elif type(bases) is not dict or not all(
            type(name) is str and type(at) is int for name, at in bases.items()
        ):
            return None
        return cls(
            change_id=change_id,
            record_id=record_id,
            object=object_name,
            kind=_CHANGE_KINDS[kind],
            base_version=base,
            field_bases=bases,
            delta=delta,
        )

    @classmethod
    def from_wire(cls, value: Any, where: str) -> ChangeFrame:
        data = _map(value, where)
        change_id = _get(data, "id", str, where)
        record_id = _get(data, "record", str, where)
        for name, text in (("id", change_id), ("record", record_id)):
            if not 1 <= len(text) <= 128:
                raise _malformed(f"{where}.{name}", "must be 1 to 128 characters")
        kind = _choice(ChangeKind, _get(data, "kind", str, where), f"{where}.kind")
        bases = _get(data, "bases", dict, where, optional=True, default={})
        for name, base in bases.items():
            if not isinstance(name, str) or isinstance(base, bool) or not isinstance(base, int):
                raise _malformed(f"{where}.bases", "expected a map of field name to version")
        return cls(
            change_id=change_id,
            record_id=record_id,
            object=_get(data, "object", str, where),
            kind=kind,
            base_version=_non_negative(_get(data, "base", int, where), f"{where}.base"),
            field_bases=bases,
            delta=_get(data, "delta", bytes, where),
        )


@attrs.frozen
class Push:
    """Replica → relay: pending changes, in the order they must be applied."""

    TYPE: ClassVar[str] = "push"
    changes: tuple[ChangeFrame, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "changes": [change.to_wire() for change in self.changes]}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Push:
        values = data.get("changes")
        if type(values) is list:
            common = ChangeFrame.from_wire_common
            changes = [common(value) for value in values]
            if None not in changes:
                return cls(tuple(changes))  # type: ignore[arg-type]
        return cls(_list(data, "changes", "push", ChangeFrame.from_wire))


@attrs.frozen(kw_only=True)
class PushPlan:
    """Changes laid out in push frames that each fit a size limit (see :func:`plan_pushes`)."""

    #: each encoded ``push`` frame with the changes it carries, in order
    frames: tuple[tuple[bytes, tuple[ChangeFrame, ...]], ...]
    #: changes too large to go in any frame, each with the size of a frame holding it alone
    too_large: tuple[tuple[ChangeFrame, int], ...]


_PUSH_HEAD = msgpack.packb({"type": "push", "changes": []}, use_bin_type=True)[:-1]


def plan_pushes(
    changes: Sequence[ChangeFrame], max_bytes: int, max_changes: int = MAX_CHANGES_PER_FRAME
) -> PushPlan:
    """Lay ``changes`` out, in order, in as few ``push`` frames as fit ``max_bytes`` each
    once encoded and hold at most ``max_changes`` (what the relay announces in
    ``welcome.max_frame_bytes`` and ``welcome.max_changes_per_frame``). A change that does
    not fit even alone is returned in ``too_large``, not sent."""
    frames: list[tuple[bytes, tuple[ChangeFrame, ...]]] = []
    too_large: list[tuple[ChangeFrame, int]] = []
    items: list[bytes] = []
    carried: list[ChangeFrame] = []
    size = 0

    def close_frame() -> None:
        nonlocal size
        if items:
            frames.append((_push_frame(items), tuple(carried)))
            items.clear()
            carried.clear()
            size = 0

    for change in changes:
        item = msgpack.packb(change.to_wire(), use_bin_type=True)
        alone = len(_PUSH_HEAD) + 1 + len(item)  # a one-item array header is one byte
        if alone > max_bytes:
            too_large.append((change, alone))
            continue
        full = len(items) >= max_changes
        if items and (full or size + len(item) + len(_PUSH_HEAD) + _ARRAY_HEADER_MAX > max_bytes):
            close_frame()
        items.append(item)
        carried.append(change)
        size += len(item)
    close_frame()
    return PushPlan(frames=tuple(frames), too_large=tuple(too_large))


_ARRAY_HEADER_MAX = 5  #: a msgpack array header takes at most 5 bytes


def _push_frame(items: Sequence[bytes]) -> bytes:
    """The bytes of a ``push`` frame whose change entries are already encoded."""
    count = len(items)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 2**16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return bytes(_PUSH_HEAD) + header + b"".join(items)


@attrs.frozen(kw_only=True)
class RecordChange:
    """A record as the relay changed it: ``update`` brings a replica from its previous
    version of the record to ``version``; ``deleted`` marks a tombstone; ``revoked``
    says this replica may no longer read the record (it must forget it)."""

    record_id: str
    object: str
    version: int
    update: bytes = b""
    deleted: bool = False
    revoked: bool = False
    by: str | None = None

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "record": self.record_id,
            "object": self.object,
            "version": self.version,
            "update": self.update,
        }
        if self.deleted:
            data["deleted"] = True
        if self.revoked:
            data["revoked"] = True
        if self.by is not None:
            data["by"] = self.by
        return data

    @classmethod
    def from_wire(cls, value: Any, where: str) -> RecordChange:
        data = _map(value, where)
        # The common item (a fan-out's: no flag, every value of its exact type) needs no
        # check more; anything else is checked key by key, with an error naming it.
        record, obj, version = data.get("record"), data.get("object"), data.get("version")
        update, by = data.get("update", b""), data.get("by")
        if (
            type(record) is str
            and type(obj) is str
            and type(version) is int
            and type(update) is bytes
            and (by is None or type(by) is str)
            and "deleted" not in data
            and "revoked" not in data
        ):
            return cls(record_id=record, object=obj, version=version, update=update, by=by)
        return cls(
            record_id=_get(data, "record", str, where),
            object=_get(data, "object", str, where),
            version=_get(data, "version", int, where),
            update=_get(data, "update", bytes, where, optional=True, default=b""),
            deleted=_get(data, "deleted", bool, where, optional=True, default=False),
            revoked=_get(data, "revoked", bool, where, optional=True, default=False),
            by=_get(data, "by", str, where, optional=True),
        )


@attrs.frozen
class Changes:
    """Relay → replica: record changes (a fan-out, or a batch of a resume backlog)."""

    TYPE: ClassVar[str] = "changes"
    items: tuple[RecordChange, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "items": [item.to_wire() for item in self.items]}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Changes:
        return cls(_list(data, "items", "changes", RecordChange.from_wire))


@attrs.frozen
class CaughtUp:
    """Relay → replica: the backlog after a subscribe is complete up to ``cursor``."""

    TYPE: ClassVar[str] = "caught_up"
    cursor: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "cursor": self.cursor}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> CaughtUp:
        return cls(_get(data, "cursor", int, "caught_up"))


# -- verdicts ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Ack:
    """Accepted as ``version``; ``update`` holds what the relay added (e.g. the owner)."""

    KIND: ClassVar[str] = "ack"
    change_id: str
    record_id: str
    version: int
    update: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        return {
            "verdict": self.KIND,
            "id": self.change_id,
            "record": self.record_id,
            "version": self.version,
            "update": self.update,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], where: str) -> Ack:
        return cls(
            change_id=_get(data, "id", str, where),
            record_id=_get(data, "record", str, where),
            version=_get(data, "version", int, where),
            update=_get(data, "update", bytes, where, optional=True, default=b""),
        )


@attrs.frozen(kw_only=True)
class WireConflict:
    """One field in conflict; values in their stored encoding (see ``fieldtypes``)."""

    field: str
    base: Any
    mine: Any
    theirs: Any
    changed_by: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "base": self.base,
            "mine": self.mine,
            "theirs": self.theirs,
            "changed_by": self.changed_by,
        }

    @classmethod
    def from_wire(cls, value: object, where: str) -> WireConflict:
        data = _map(value, where)
        return cls(
            field=_get(data, "field", str, where),
            base=data.get("base"),
            mine=data.get("mine"),
            theirs=data.get("theirs"),
            changed_by=_get(data, "changed_by", str, where, optional=True),
        )


@attrs.frozen(kw_only=True)
class WireFieldError:
    field: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}

    @classmethod
    def from_wire(cls, value: object, where: str) -> WireFieldError:
        data = _map(value, where)
        return cls(field=_get(data, "field", str, where), message=_get(data, "message", str, where))


@attrs.frozen(kw_only=True)
class Conflict:
    """Not merged: same-field edits by someone else and/or validation errors. ``update``
    is the relay's current state of the record (at ``version``) to rebase on."""

    KIND: ClassVar[str] = "conflict"
    change_id: str
    record_id: str
    version: int
    update: bytes = b""
    conflicts: tuple[WireConflict, ...] = ()
    errors: tuple[WireFieldError, ...] = ()
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "verdict": self.KIND,
            "id": self.change_id,
            "record": self.record_id,
            "version": self.version,
            "update": self.update,
            "conflicts": [c.to_wire() for c in self.conflicts],
            "errors": [e.to_wire() for e in self.errors],
            "message": self.message,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], where: str) -> Conflict:
        return cls(
            change_id=_get(data, "id", str, where),
            record_id=_get(data, "record", str, where),
            version=_get(data, "version", int, where),
            update=_get(data, "update", bytes, where, optional=True, default=b""),
            conflicts=_list(data, "conflicts", where, WireConflict.from_wire)
            if data.get("conflicts") is not None
            else (),
            errors=_list(data, "errors", where, WireFieldError.from_wire)
            if data.get("errors") is not None
            else (),
            message=_get(data, "message", str, where, optional=True, default=""),
        )


@attrs.frozen(kw_only=True)
class Unresolvable:
    """Not merged, for good: ``reason`` is ``deleted`` or ``forbidden``. ``readable``
    says the user may still read the record (forbidden to change it, not to see it)."""

    KIND: ClassVar[str] = "unresolvable"
    change_id: str
    record_id: str
    reason: UnresolvableReason = attrs.field(converter=UnresolvableReason)
    message: str = ""
    readable: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "verdict": self.KIND,
            "id": self.change_id,
            "record": self.record_id,
            "reason": self.reason.value,
            "message": self.message,
            "readable": self.readable,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], where: str) -> Unresolvable:
        reason = _choice(UnresolvableReason, _get(data, "reason", str, where), f"{where}.reason")
        return cls(
            change_id=_get(data, "id", str, where),
            record_id=_get(data, "record", str, where),
            reason=reason,
            message=_get(data, "message", str, where, optional=True, default=""),
            readable=_get(data, "readable", bool, where, optional=True, default=False),
        )


@attrs.frozen(kw_only=True)
class Rejected:
    """The change itself is malformed or hostile (an ``error`` verdict with a code)."""

    KIND: ClassVar[str] = "error"
    change_id: str
    record_id: str
    code: ErrorCode
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "verdict": self.KIND,
            "id": self.change_id,
            "record": self.record_id,
            "code": self.code.value,
            "message": self.message,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], where: str) -> Rejected:
        code = _get(data, "code", str, where)
        try:
            error_code = ErrorCode(code)
        except ValueError:  # a newer relay's code: a permanent error all the same
            error_code = ErrorCode.UNKNOWN_ERROR
        return cls(
            change_id=_get(data, "id", str, where),
            record_id=_get(data, "record", str, where),
            code=error_code,
            message=_get(data, "message", str, where),
        )


Verdict = Ack | Conflict | Unresolvable | Rejected
_VERDICTS: dict[str, Any] = {v.KIND: v for v in (Ack, Conflict, Unresolvable, Rejected)}


def _verdict(value: object, where: str) -> Verdict:
    data = _map(value, where)
    kind = _get(data, "verdict", str, where)
    if kind not in _VERDICTS:
        raise _malformed(f"{where}.verdict", f"unknown verdict {_shown(kind)}")
    verdict: Verdict = _VERDICTS[kind].from_wire(data, where)
    return verdict


@attrs.frozen
class Verdicts:
    """Relay → replica: one verdict per pushed change, in push order."""

    TYPE: ClassVar[str] = "verdicts"
    items: tuple[Verdict, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "items": [item.to_wire() for item in self.items]}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Verdicts:
        return cls(_list(data, "items", "verdicts", _verdict))


@attrs.frozen
class Error:
    """Relay → replica: the connection did something wrong. ``fatal``: it is closed next."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    fatal: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "code": self.code.value,
            "message": self.message,
            "fatal": self.fatal,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Error:
        code = _get(data, "code", str, "error")
        try:
            error_code = ErrorCode(code)
        except ValueError:  # a newer relay's code
            error_code = ErrorCode.UNKNOWN_ERROR
        return cls(
            error_code,
            _get(data, "message", str, "error"),
            _get(data, "fatal", bool, "error", optional=True, default=False),
        )


@attrs.frozen
class Flush:
    """Replica → relay (version 2): answer :class:`Flushed` once every change the relay
    had accepted when it read this frame has been sent to this connection."""

    TYPE: ClassVar[str] = "flush"
    request_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.request_id}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Flush:
        request_id = _get(data, "id", str, "flush")
        if not 1 <= len(request_id) <= 128:
            raise _malformed("flush.id", "must be 1 to 128 characters")
        return cls(request_id)


@attrs.frozen
class Flushed:
    """Relay → replica (version 2): the answer to :class:`Flush` ``request_id``; every
    change up to ``cursor`` that this replica may read has been sent before it."""

    TYPE: ClassVar[str] = "flushed"
    request_id: str
    cursor: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.request_id, "cursor": self.cursor}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Flushed:
        return cls(
            _get(data, "id", str, "flushed"),
            _non_negative(_get(data, "cursor", int, "flushed"), "flushed.cursor"),
        )


@attrs.frozen(kw_only=True)
class Admin:
    """Administrator → relay: an admin action on one record (``share``, ``unshare``,
    ``set_owner``, ``delete``, ``access``). Only a connection whose token carries the
    ``admin`` claim may send it."""

    TYPE: ClassVar[str] = "admin"
    request_id: str
    action: AdminAction = attrs.field(converter=AdminAction)
    record_id: str
    user: str | None = None
    access: str | None = None  #: for ``share``: ``read`` or ``edit``

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "id": self.request_id,
            "action": self.action.value,
            "record": self.record_id,
            "user": self.user,
            "access": self.access,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Admin:
        action = _choice(AdminAction, _get(data, "action", str, "admin"), "admin.action")
        access = _get(data, "access", str, "admin", optional=True)
        if access is not None and access not in ("read", "edit"):
            raise _malformed("admin.access", f"must be read or edit, got {_shown(access)}")
        return cls(
            request_id=_get(data, "id", str, "admin"),
            action=action,
            record_id=_get(data, "record", str, "admin"),
            user=_get(data, "user", str, "admin", optional=True),
            access=access,
        )


@attrs.frozen(kw_only=True)
class AdminResult:
    """Relay → administrator: the outcome of an :class:`Admin` request."""

    TYPE: ClassVar[str] = "admin_result"
    request_id: str
    ok: bool
    message: str = ""
    version: int = 0
    details: Mapping[str, Any] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "id": self.request_id,
            "ok": self.ok,
            "message": self.message,
            "version": self.version,
            "details": dict(self.details),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> AdminResult:
        return cls(
            request_id=_get(data, "id", str, "admin_result"),
            ok=_get(data, "ok", bool, "admin_result"),
            message=_get(data, "message", str, "admin_result", optional=True, default=""),
            version=_get(data, "version", int, "admin_result", optional=True, default=0),
            details=_get(data, "details", dict, "admin_result", optional=True, default={}),
        )


Frame = (
    Hello
    | Welcome
    | Subscribe
    | Push
    | Changes
    | CaughtUp
    | Verdicts
    | Flush
    | Flushed
    | Error
    | Admin
    | AdminResult
)
FRAME_TYPES: dict[str, Any] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Subscribe,
        Push,
        Changes,
        CaughtUp,
        Verdicts,
        Flush,
        Flushed,
        Error,
        Admin,
        AdminResult,
    )
}


def encode(frame: Frame) -> bytes:
    """The bytes of one frame (one websocket binary message)."""
    return bytes(msgpack.packb(frame.to_wire(), use_bin_type=True))


def encode_items(items: Iterable[RecordChange]) -> bytes:
    """``changes`` items' bytes, one after the other, for :func:`encode_changes`."""
    return b"".join(msgpack.packb(item.to_wire(), use_bin_type=True) for item in items)


#: ``{"type": "changes", "items": [`` as msgpack writes it, up to the array's header
_CHANGES_HEAD = bytes(msgpack.packb({"type": Changes.TYPE, "items": []}))[:-1]


def encode_changes(parts: Sequence[bytes], count: int) -> bytes:
    """``encode(Changes(...))`` of ``count`` items already encoded in ``parts`` (each
    from :func:`encode_items`): a relay that sends the same runs of items to many
    replicas, in different combinations, encodes each run once."""
    if count < 16:
        head = bytes((0x90 | count,))
    elif count < 1 << 16:
        head = b"\xdc" + count.to_bytes(2, "big")
    else:
        head = b"\xdd" + count.to_bytes(4, "big")
    return b"".join((_CHANGES_HEAD, head, *parts))


def decode(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Parse one frame; :class:`ProtocolError` says precisely what is wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frames are binary messages, got text")
    if len(data) > max_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(data)} bytes exceeds {max_bytes}"
        )
    try:
        payload = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=100_000,
            max_map_len=100_000,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for bad input
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, f"not msgpack: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME, f"a frame is a map, got {type(payload).__name__}"
        )
    frame_type = payload.get("type")
    cls = FRAME_TYPES.get(frame_type) if isinstance(frame_type, str) else None
    if cls is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type {_shown(frame_type)}"
        )
    frame: Frame = cls.from_wire(payload)
    return frame
