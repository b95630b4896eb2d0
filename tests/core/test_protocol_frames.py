"""The wire protocol on its own (sans I/O): every frame round-trips through msgpack, and
every malformed input is a ProtocolError with the right code and the offending path."""

from __future__ import annotations

import copy
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.core.exceptions import ProtocolError
from crdtsync.core.protocol import (
    FRAME_TYPES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Admin,
    AdminResult,
    CaughtUp,
    ChangeFrame,
    ChangeKind,
    Changes,
    Conflict,
    Error,
    ErrorCode,
    Flush,
    Flushed,
    Frame,
    Hello,
    Push,
    RecordChange,
    Rejected,
    Subscribe,
    Unresolvable,
    Verdicts,
    Welcome,
    WireConflict,
    WireFieldError,
    decode,
    encode,
    encode_changes,
    encode_items,
    plan_pushes,
)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def pack(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def decode_error(data: object, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def assert_malformed(wire: dict[str, Any], path: str, detail: str = "") -> None:
    """Decoding ``wire`` fails as malformed_frame with a message starting with ``path:``."""
    error = decode_error(pack(wire))
    assert error.code is ErrorCode.MALFORMED_FRAME, error
    assert error.message.startswith(f"{path}: "), error.message
    assert detail in error.message
    assert str(error) == f"malformed_frame: {error.message}"


# -- sample frames ----------------------------------------------------------------------

CREATE = ChangeFrame(
    change_id="c1",
    record_id="r1",
    object="Account",
    kind="create",
    base_version=0,
    field_bases={},
    delta=b"\x01\x02\x03",
)
UPDATE = ChangeFrame(
    change_id="c2",
    record_id="r1",
    object="Account",
    kind="update",
    base_version=41,
    field_bases={"Industry": 41, "Employees": 43},
    delta=b"\x00" * 57,
)
DELETE = ChangeFrame(
    change_id="c3",
    record_id="r2",
    object="Task",
    kind="delete",
    base_version=7,
    field_bases={},
    delta=b"",
)

SCHEMA_WIRE = {
    "Account": {
        "sharing": "read_write",
        "rules": [],
        "fields": {
            "Name": {"type": "string", "required": True, "max_length": 80},
            "Description": {"type": "text"},
            "Owner": {"type": "owner"},
        },
    }
}

FRAMES: dict[str, Frame] = {
    "hello": Hello((1,), "token-abc", "replica-1"),
    "hello-many-versions": Hello((1, 2, 7), "", "r" * 128),
    "welcome": Welcome(PROTOCOL_VERSION, "alice", "61fd263f8afc", SCHEMA_WIRE),
    "welcome-empty-schema": Welcome(1, "bob", "srv", {}),
    "welcome-readable": Welcome(1, "bob", "srv", {}, ("Account", "Task")),
    "welcome-limit": Welcome(2, "bob", "srv", {}, ("Account",), 4 * 1024 * 1024),
    "flush": Flush("f-1"),
    "flushed": Flushed("f-1", 45),
    "subscribe": Subscribe(("Account", "Contact"), 41),
    "subscribe-default-cursor": Subscribe(("Task",)),
    "subscribe-nothing": Subscribe((), 0),
    "push": Push((CREATE, UPDATE, DELETE)),
    "push-empty": Push(()),
    "changes": Changes(
        (
            RecordChange(
                record_id="r1", object="Account", version=44, update=b"\x01\x00", by="bob"
            ),
            RecordChange(record_id="r2", object="Task", version=45, deleted=True, by="bob"),
            RecordChange(record_id="r3", object="Contact", version=46, update=b"\x09"),
        )
    ),
    "changes-tombstone-no-by": Changes(
        (RecordChange(record_id="r4", object="Account", version=3, deleted=True),)
    ),
    "caught_up": CaughtUp(45),
    "caught_up-zero": CaughtUp(0),
    "verdicts": Verdicts(
        (
            Ack(change_id="c1", record_id="r1", version=46, update=b"\x01\x01"),
            Ack(change_id="c1b", record_id="r1b", version=47),
            Conflict(
                change_id="c2",
                record_id="r2",
                version=44,
                update=b"\x02" * 10,
                conflicts=(
                    WireConflict(field="Employees", base=10, mine=12, theirs=42, changed_by="bob"),
                    WireConflict(field="Industry", base=None, mine="Retail", theirs="Energy"),
                    WireConflict(field="Revenue", base="0.10", mine=None, theirs=[1, "x"]),
                ),
                errors=(
                    WireFieldError(field="Email", message="already used by another Contact"),
                    WireFieldError(field="", message="record-level rule failed"),
                ),
                message="changed by bob since you deleted it",
            ),
            Conflict(change_id="c2b", record_id="r2b", version=0),
            Unresolvable(
                change_id="c3", record_id="r3", reason="deleted", message="deleted elsewhere"
            ),
            Unresolvable(change_id="c4", record_id="r4", reason="forbidden"),
            Rejected(
                change_id="c5",
                record_id="r5",
                code=ErrorCode.READ_ONLY_FIELD,
                message="read-only: Email",
            ),
        )
    ),
    "verdicts-empty": Verdicts(()),
    "error": Error(ErrorCode.AUTH_FAILED, "the token has expired", fatal=True),
    "admin": Admin(request_id="q-1", action="share", record_id="r-1", user="bob", access="edit"),
    "admin_result": AdminResult(
        request_id="q-1", ok=True, message="share done", version=9, details={"owner": "alice"}
    ),
    "error-not-fatal": Error(ErrorCode.MALFORMED_FRAME, "push.changes[2].delta: expected bytes"),
}


@pytest.mark.parametrize("frame", list(FRAMES.values()), ids=list(FRAMES))
def test_every_frame_round_trips(frame: Frame) -> None:
    data = encode(frame)
    assert isinstance(data, bytes)
    decoded = decode(data)
    assert type(decoded) is type(frame)
    assert decoded == frame
    assert encode(decoded) == data


def test_every_frame_type_is_covered_by_the_round_trip_samples() -> None:
    assert {type(frame) for frame in FRAMES.values()} == set(FRAME_TYPES.values())
    verdicts = FRAMES["verdicts"]
    assert isinstance(verdicts, Verdicts)
    assert {type(v) for v in verdicts.items} == {Ack, Conflict, Unresolvable, Rejected}


def test_wire_shape_matches_the_documented_keys() -> None:
    wire = msgpack.unpackb(encode(FRAMES["push"]), raw=False)
    assert wire["type"] == "push"
    assert wire["changes"][1] == {
        "id": "c2",
        "record": "r1",
        "object": "Account",
        "kind": "update",
        "base": 41,
        "bases": {"Industry": 41, "Employees": 43},
        "delta": b"\x00" * 57,
    }
    tombstone = msgpack.unpackb(encode(FRAMES["changes"]), raw=False)["items"][1]
    assert tombstone == {
        "record": "r2",
        "object": "Task",
        "version": 45,
        "update": b"",
        "deleted": True,
        "by": "bob",
    }
    # "deleted" and "by" are only present when set.
    live = msgpack.unpackb(encode(FRAMES["changes"]), raw=False)["items"][2]
    assert "deleted" not in live and "by" not in live
    verdict_kinds = [
        item["verdict"] for item in msgpack.unpackb(encode(FRAMES["verdicts"]), raw=False)["items"]
    ]
    assert verdict_kinds == [
        "ack",
        "ack",
        "conflict",
        "conflict",
        "unresolvable",
        "unresolvable",
        "error",
    ]


def test_optional_keys_take_their_defaults_and_unknown_keys_are_ignored() -> None:
    frame = decode(
        pack(
            {
                "type": "push",
                "future": {"anything": [1, 2]},
                "changes": [
                    {
                        "id": "c",
                        "record": "r",
                        "object": "Account",
                        "kind": "create",
                        "base": 0,
                        "delta": b"d",
                        "extra": "ignored",
                    }
                ],
            }
        )
    )
    assert frame == Push(
        (
            ChangeFrame(
                change_id="c",
                record_id="r",
                object="Account",
                kind="create",
                base_version=0,
                field_bases={},
                delta=b"d",
            ),
        )
    )
    changes = decode(
        pack({"type": "changes", "items": [{"record": "r", "object": "Task", "version": 3}]})
    )
    assert changes == Changes((RecordChange(record_id="r", object="Task", version=3),))
    error = decode(pack({"type": "error", "code": "too_slow", "message": "m"}))
    assert error == Error(ErrorCode.TOO_SLOW, "m", fatal=False)


def test_nil_optional_keys_count_as_missing_and_take_their_defaults() -> None:
    """docs/protocol.md §1: "A key whose value is nil counts as missing. Where it is
    allowed, an optional key defaults to the value shown" ([] for conflicts/errors)."""
    frame = decode(
        pack(
            {
                "type": "verdicts",
                "items": [
                    {
                        "verdict": "conflict",
                        "id": "c",
                        "record": "r",
                        "version": 4,
                        "update": None,
                        "conflicts": None,
                        "errors": None,
                        "message": None,
                    }
                ],
            }
        )
    )
    assert frame == Verdicts((Conflict(change_id="c", record_id="r", version=4),))


def test_unknown_error_code_in_an_error_frame_reads_as_unknown_error() -> None:
    frame = decode(pack({"type": "error", "code": "brand_new_code", "message": "m", "fatal": True}))
    assert frame == Error(ErrorCode.UNKNOWN_ERROR, "m", fatal=True)


def test_unknown_error_code_in_an_error_verdict_reads_as_unknown_error() -> None:
    frame = decode(
        pack(
            {
                "type": "verdicts",
                "items": [
                    {"verdict": "error", "id": "c", "record": "r", "code": "new", "message": "m"}
                ],
            }
        )
    )
    assert frame == Verdicts(
        (Rejected(change_id="c", record_id="r", code=ErrorCode.UNKNOWN_ERROR, message="m"),)
    )


def test_bytearray_and_memoryview_input_are_accepted() -> None:
    data = encode(FRAMES["subscribe"])
    assert decode(bytearray(data)) == FRAMES["subscribe"]
    assert decode(memoryview(data)) == FRAMES["subscribe"]


# -- hypothesis: generated change frames round-trip ---------------------------------------

ids = st.text(min_size=1, max_size=128)
uint64 = st.integers(min_value=0, max_value=2**64 - 1)
int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)

change_frames = st.builds(
    ChangeFrame,
    change_id=ids,
    record_id=ids,
    object=st.text(max_size=40),
    kind=st.sampled_from(["create", "update", "delete"]),
    base_version=uint64,
    field_bases=st.dictionaries(st.text(max_size=20), int64, max_size=6),
    delta=st.binary(max_size=300),
)


@FUZZ
@given(st.lists(change_frames, max_size=5))
def test_generated_change_frames_round_trip(changes: list[ChangeFrame]) -> None:
    push = Push(tuple(changes))
    assert decode(encode(push)) == push


@FUZZ
@given(
    st.lists(
        st.builds(
            RecordChange,
            record_id=st.text(),
            object=st.text(),
            version=int64,
            update=st.binary(max_size=100),
            deleted=st.booleans(),
            by=st.none() | st.text(),
        ),
        max_size=5,
    )
)
def test_generated_record_changes_round_trip(items: list[RecordChange]) -> None:
    frame = Changes(tuple(items))
    assert decode(encode(frame)) == frame


# -- malformed input: the container ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x82\xa4type", id="truncated-map"),
        pytest.param(b"", id="empty"),
        pytest.param(pack({"type": "caught_up", "cursor": 1}) + b"\x00", id="trailing-bytes"),
        pytest.param(b"\x81\x01\x02", id="integer-map-key"),
        pytest.param(b"\xd9\x02\xff\xfe", id="invalid-utf8-string"),
    ],
)
def test_non_msgpack_bytes_are_malformed(data: bytes) -> None:
    error = decode_error(data)
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert error.message.startswith("not msgpack")


@pytest.mark.parametrize(
    ("value", "kind"),
    [([{"type": "hello"}], "list"), ("hello", "str"), (7, "int"), (None, "NoneType")],
)
def test_a_frame_that_is_not_a_map_is_malformed(value: object, kind: str) -> None:
    error = decode_error(pack(value))
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert error.message == f"a frame is a map, got {kind}"


def test_missing_type_is_an_unknown_frame_type() -> None:
    error = decode_error(pack({"cursor": 1}))
    assert error.code is ErrorCode.UNKNOWN_FRAME_TYPE
    assert error.message == "unknown frame type None"


@pytest.mark.parametrize(
    ("frame_type", "shown"),
    [
        ("bogus", "'bogus'"),
        ("Hello", "'Hello'"),
        ("", "''"),
        (1, "1"),
        (b"hello", "a bytes"),
        (["hello"], "a list"),
        ("h" * 100, repr("h" * 40 + "…")),
    ],
)
def test_unknown_frame_type(frame_type: object, shown: str) -> None:
    error = decode_error(pack({"type": frame_type, "cursor": 1}))
    assert error.code is ErrorCode.UNKNOWN_FRAME_TYPE
    assert error.message == f"unknown frame type {shown}"


def test_a_type_nested_a_thousand_deep_is_an_unknown_frame_type_not_a_recursion_error() -> None:
    nested: object = "hello"
    for _ in range(1000):
        nested = [nested]
    error = decode_error(pack({"type": nested}))
    assert error.code is ErrorCode.UNKNOWN_FRAME_TYPE
    assert error.message == "unknown frame type a list"


def test_text_instead_of_bytes_is_malformed() -> None:
    error = decode_error(encode(FRAMES["hello"]).decode("latin-1"))
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert "got text" in error.message


def test_frame_larger_than_max_bytes_is_too_large() -> None:
    data = encode(Push((attrs.evolve(CREATE, delta=b"\x00" * 1000),)))
    error = decode_error(data, max_bytes=len(data) - 1)
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert str(len(data)) in error.message and str(len(data) - 1) in error.message
    assert decode(data, max_bytes=len(data)) == decode(data)  # the bound is inclusive
    huge = b"\x00" * (MAX_FRAME_BYTES + 1)
    assert decode_error(huge).code is ErrorCode.FRAME_TOO_LARGE


# -- malformed input: every required field missing -----------------------------------------

VALID_CHANGE = CREATE.to_wire()
VALID_WIRE: dict[str, dict[str, Any]] = {
    "hello": FRAMES["hello"].to_wire(),
    "welcome": FRAMES["welcome"].to_wire(),
    "subscribe": FRAMES["subscribe"].to_wire(),
    "push": Push((CREATE, UPDATE)).to_wire(),
    "changes": FRAMES["changes"].to_wire(),
    "caught_up": FRAMES["caught_up"].to_wire(),
    "verdicts": FRAMES["verdicts"].to_wire(),
    "error": FRAMES["error"].to_wire(),
    "flush": FRAMES["flush"].to_wire(),
    "flushed": FRAMES["flushed"].to_wire(),
}

# (frame, path to the map holding the key, key, path named in the message)
REQUIRED: list[tuple[str, tuple[Any, ...], str, str]] = [
    ("hello", (), "versions", "hello.versions"),
    ("hello", (), "token", "hello.token"),
    ("hello", (), "replica", "hello.replica"),
    ("welcome", (), "version", "welcome.version"),
    ("welcome", (), "user", "welcome.user"),
    ("welcome", (), "server", "welcome.server"),
    ("welcome", (), "schema", "welcome.schema"),
    ("subscribe", (), "objects", "subscribe.objects"),
    ("subscribe", (), "cursor", "subscribe.cursor"),
    ("push", (), "changes", "push.changes"),
    *[
        ("push", ("changes", 1), key, f"push.changes[1].{key}")
        for key in ("id", "record", "object", "kind", "base", "delta")
    ],
    ("changes", (), "items", "changes.items"),
    *[
        ("changes", ("items", 1), key, f"changes.items[1].{key}")
        for key in ("record", "object", "version")
    ],
    ("caught_up", (), "cursor", "caught_up.cursor"),
    ("verdicts", (), "items", "verdicts.items"),
    *[
        ("verdicts", ("items", 0), key, f"verdicts.items[0].{key}")
        for key in ("verdict", "id", "record", "version")
    ],
    *[
        ("verdicts", ("items", 2), key, f"verdicts.items[2].{key}")
        for key in ("id", "record", "version")
    ],
    ("verdicts", ("items", 2, "conflicts", 1), "field", "verdicts.items[2].conflicts[1].field"),
    ("verdicts", ("items", 2, "errors", 0), "field", "verdicts.items[2].errors[0].field"),
    ("verdicts", ("items", 2, "errors", 1), "message", "verdicts.items[2].errors[1].message"),
    *[
        ("verdicts", ("items", 4), key, f"verdicts.items[4].{key}")
        for key in ("id", "record", "reason")
    ],
    *[
        ("verdicts", ("items", 6), key, f"verdicts.items[6].{key}")
        for key in ("id", "record", "code", "message")
    ],
    ("error", (), "code", "error.code"),
    ("error", (), "message", "error.message"),
    ("flush", (), "id", "flush.id"),
    ("flushed", (), "id", "flushed.id"),
    ("flushed", (), "cursor", "flushed.cursor"),
]


def _with(frame: str, where: tuple[Any, ...], key: str, value: Any) -> dict[str, Any]:
    """A deep copy of a valid frame with ``key`` of the map at ``where`` set to ``value``
    (``_DELETE`` removes it)."""
    wire = copy.deepcopy(VALID_WIRE[frame])
    target: Any = wire
    for step in where:
        target = target[step]
    if value is _DELETE:
        del target[key]
    else:
        target[key] = value
    return wire


_DELETE = object()


def test_the_valid_wire_samples_decode() -> None:
    for wire in VALID_WIRE.values():
        decode(pack(wire))


@pytest.mark.parametrize(("frame", "where", "key", "path"), REQUIRED, ids=[r[3] for r in REQUIRED])
def test_each_required_field_missing(
    frame: str, where: tuple[Any, ...], key: str, path: str
) -> None:
    assert_malformed(_with(frame, where, key, _DELETE), path, "missing")


@pytest.mark.parametrize(("frame", "where", "key", "path"), REQUIRED, ids=[r[3] for r in REQUIRED])
def test_each_required_field_nil_counts_as_missing(
    frame: str, where: tuple[Any, ...], key: str, path: str
) -> None:
    assert_malformed(_with(frame, where, key, None), path, "missing")


# -- malformed input: wrong types ---------------------------------------------------------

WRONG: list[tuple[str, tuple[Any, ...], Any, Any, str, str]] = [
    # hello
    ("hello", (), "versions", "1", "hello.versions", "expected a list, got str"),
    ("hello", (), "versions", [], "hello.versions", "non-empty list of integers"),
    ("hello", (), "versions", [True], "hello.versions", "non-empty list of integers"),
    ("hello", (), "versions", [1, "2"], "hello.versions", "non-empty list of integers"),
    ("hello", (), "versions", [1.0], "hello.versions", "non-empty list of integers"),
    ("hello", (), "token", b"token", "hello.token", "expected a string, got bytes"),
    ("hello", (), "token", 5, "hello.token", "expected a string, got int"),
    ("hello", (), "replica", b"r1", "hello.replica", "expected a string, got bytes"),
    ("hello", (), "replica", "", "hello.replica", "1 to 128 characters"),
    ("hello", (), "replica", "r" * 129, "hello.replica", "1 to 128 characters"),
    # welcome
    ("welcome", (), "version", True, "welcome.version", "got a boolean"),
    ("welcome", (), "version", "1", "welcome.version", "expected an integer, got str"),
    ("welcome", (), "user", b"alice", "welcome.user", "expected a string, got bytes"),
    ("welcome", (), "server", 1, "welcome.server", "expected a string, got int"),
    ("welcome", (), "schema", [], "welcome.schema", "expected a map, got list"),
    # subscribe
    ("subscribe", (), "objects", "Account", "subscribe.objects", "expected a list, got str"),
    ("subscribe", (), "objects", {"Account": 1}, "subscribe.objects", "expected a list"),
    ("subscribe", (), "objects", ["Account", b"Task"], "subscribe.objects[1]", "got bytes"),
    ("subscribe", (), "objects", [None], "subscribe.objects[0]", "got NoneType"),
    ("subscribe", (), "cursor", True, "subscribe.cursor", "got a boolean"),
    ("subscribe", (), "cursor", False, "subscribe.cursor", "got a boolean"),
    ("subscribe", (), "cursor", -1, "subscribe.cursor", "must not be negative, got -1"),
    ("subscribe", (), "cursor", "0", "subscribe.cursor", "expected an integer, got str"),
    ("subscribe", (), "cursor", 1.5, "subscribe.cursor", "expected an integer, got float"),
    # push and its change entries
    ("push", (), "changes", {"c": 1}, "push.changes", "expected a list, got dict"),
    ("push", (), "changes", "c", "push.changes", "expected a list, got str"),
    ("push", ("changes",), 0, "c", "push.changes[0]", "expected a map, got str"),
    ("push", ("changes",), 1, [VALID_CHANGE], "push.changes[1]", "expected a map, got list"),
    ("push", ("changes", 1), "id", b"c2", "push.changes[1].id", "got bytes"),
    ("push", ("changes", 1), "id", "", "push.changes[1].id", "1 to 128 characters"),
    ("push", ("changes", 1), "id", "c" * 129, "push.changes[1].id", "1 to 128 characters"),
    ("push", ("changes", 1), "id", 2, "push.changes[1].id", "got int"),
    ("push", ("changes", 1), "record", b"r1", "push.changes[1].record", "got bytes"),
    ("push", ("changes", 1), "record", "", "push.changes[1].record", "1 to 128 characters"),
    ("push", ("changes", 1), "record", "x" * 129, "push.changes[1].record", "1 to 128"),
    ("push", ("changes", 1), "object", b"Account", "push.changes[1].object", "got bytes"),
    ("push", ("changes", 1), "object", ["Account"], "push.changes[1].object", "got list"),
    ("push", ("changes", 1), "kind", "upsert", "push.changes[1].kind", "'upsert'"),
    ("push", ("changes", 1), "kind", "CREATE", "push.changes[1].kind", "create, update or"),
    ("push", ("changes", 1), "kind", b"create", "push.changes[1].kind", "got bytes"),
    ("push", ("changes", 1), "kind", 1, "push.changes[1].kind", "got int"),
    ("push", ("changes", 1), "base", -1, "push.changes[1].base", "must not be negative"),
    ("push", ("changes", 1), "base", True, "push.changes[1].base", "got a boolean"),
    ("push", ("changes", 1), "base", "41", "push.changes[1].base", "got str"),
    ("push", ("changes", 1), "base", 4.0, "push.changes[1].base", "got float"),
    ("push", ("changes", 1), "bases", [], "push.changes[1].bases", "expected a map, got list"),
    ("push", ("changes", 1), "bases", {"Name": True}, "push.changes[1].bases", "field name"),
    ("push", ("changes", 1), "bases", {"Name": "1"}, "push.changes[1].bases", "field name"),
    ("push", ("changes", 1), "bases", {"Name": 1.5}, "push.changes[1].bases", "field name"),
    ("push", ("changes", 1), "bases", {b"Name": 1}, "push.changes[1].bases", "field name"),
    ("push", ("changes", 1), "delta", "text", "push.changes[1].delta", "expected bytes, got str"),
    ("push", ("changes", 1), "delta", [1, 2], "push.changes[1].delta", "expected bytes"),
    ("push", ("changes", 1), "delta", 0, "push.changes[1].delta", "expected bytes, got int"),
    # changes and record change entries
    ("changes", (), "items", "x", "changes.items", "expected a list"),
    ("changes", ("items",), 2, 5, "changes.items[2]", "expected a map, got int"),
    ("changes", ("items", 0), "record", b"r", "changes.items[0].record", "got bytes"),
    ("changes", ("items", 0), "object", 1, "changes.items[0].object", "got int"),
    ("changes", ("items", 0), "version", True, "changes.items[0].version", "got a boolean"),
    ("changes", ("items", 0), "version", "44", "changes.items[0].version", "got str"),
    ("changes", ("items", 0), "update", "u", "changes.items[0].update", "expected bytes"),
    ("changes", ("items", 1), "deleted", 1, "changes.items[1].deleted", "expected a boolean"),
    ("changes", ("items", 1), "deleted", "yes", "changes.items[1].deleted", "a boolean"),
    ("changes", ("items", 1), "by", b"bob", "changes.items[1].by", "got bytes"),
    # caught_up
    ("caught_up", (), "cursor", True, "caught_up.cursor", "got a boolean"),
    ("caught_up", (), "cursor", "45", "caught_up.cursor", "got str"),
    # verdicts
    ("verdicts", (), "items", {}, "verdicts.items", "expected a list"),
    ("verdicts", ("items",), 0, "ack", "verdicts.items[0]", "expected a map, got str"),
    ("verdicts", ("items", 0), "verdict", 1, "verdicts.items[0].verdict", "got int"),
    ("verdicts", ("items", 0), "version", True, "verdicts.items[0].version", "got a boolean"),
    ("verdicts", ("items", 0), "update", "u", "verdicts.items[0].update", "expected bytes"),
    ("verdicts", ("items", 0), "id", b"c1", "verdicts.items[0].id", "got bytes"),
    ("verdicts", ("items", 2), "conflicts", {}, "verdicts.items[2].conflicts", "a list"),
    ("verdicts", ("items", 2, "conflicts"), 0, 1, "verdicts.items[2].conflicts[0]", "a map"),
    (
        "verdicts",
        ("items", 2, "conflicts", 0),
        "changed_by",
        7,
        "verdicts.items[2].conflicts[0].changed_by",
        "got int",
    ),
    ("verdicts", ("items", 2), "errors", "e", "verdicts.items[2].errors", "a list"),
    ("verdicts", ("items", 2, "errors"), 1, [], "verdicts.items[2].errors[1]", "a map"),
    ("verdicts", ("items", 2), "message", 0, "verdicts.items[2].message", "got int"),
    ("verdicts", ("items", 4), "message", b"m", "verdicts.items[4].message", "got bytes"),
    ("verdicts", ("items", 6), "code", 3, "verdicts.items[6].code", "got int"),
    # error
    ("error", (), "code", 1, "error.code", "got int"),
    ("error", (), "message", b"m", "error.message", "got bytes"),
    ("error", (), "fatal", 1, "error.fatal", "expected a boolean, got int"),
    ("error", (), "fatal", "true", "error.fatal", "expected a boolean, got str"),
]


@pytest.mark.parametrize(
    ("frame", "where", "key", "value", "path", "detail"),
    WRONG,
    ids=[f"{w[4]}={w[3]!r}"[:60] for w in WRONG],
)
def test_wrong_type_in_field(
    frame: str, where: tuple[Any, ...], key: Any, value: Any, path: str, detail: str
) -> None:
    assert_malformed(_with(frame, where, key, value), path, detail)


def test_the_first_bad_change_entry_is_named() -> None:
    wire = copy.deepcopy(VALID_WIRE["push"])
    wire["changes"].append(dict(VALID_CHANGE, delta="also bad"))
    wire["changes"][1]["delta"] = "text"
    assert_malformed(wire, "push.changes[1].delta", "expected bytes, got str")


def test_unknown_verdict() -> None:
    wire = _with("verdicts", ("items", 3), "verdict", "maybe")
    assert_malformed(wire, "verdicts.items[3].verdict", "unknown verdict 'maybe'")


@pytest.mark.parametrize("reason", ["gone", "Deleted", "", "conflict"])
def test_unresolvable_reason_other_than_deleted_or_forbidden(reason: str) -> None:
    wire = _with("verdicts", ("items", 5), "reason", reason)
    assert_malformed(wire, "verdicts.items[5].reason", f"got {reason!r}")


# -- fuzz: decode only ever raises ProtocolError ---------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpackable = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


def _all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _all_keys(v)}
    return set()


PROTOCOL_KEYS = sorted(set().union(*(_all_keys(wire) for wire in VALID_WIRE.values())))
protocol_values = st.recursive(
    scalars
    | st.sampled_from(
        ["create", "update", "delete", "ack", "conflict", "unresolvable", "error", "deleted"]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(PROTOCOL_KEYS), children, max_size=6)
    ),
    max_leaves=12,
)
frame_like = st.builds(
    lambda frame_type, fields: {**fields, "type": frame_type},
    st.sampled_from(sorted(FRAME_TYPES)),
    st.dictionaries(st.sampled_from(PROTOCOL_KEYS), protocol_values, max_size=8),
)


def _decode_or_protocol_error(data: bytes) -> None:
    try:
        frame = decode(data)
    except ProtocolError as exc:
        error = exc
    else:
        assert isinstance(frame, tuple(FRAME_TYPES.values()))
        return
    assert isinstance(error.code, ErrorCode)
    assert error.message


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@FUZZ
@given(msgpackable)
def test_fuzz_random_msgpack_structures_only_raise_protocol_error(value: Any) -> None:
    _decode_or_protocol_error(pack(value))


@FUZZ
@given(frame_like)
def test_fuzz_frame_shaped_maps_only_raise_protocol_error(value: dict[str, Any]) -> None:
    _decode_or_protocol_error(pack(value))


@FUZZ
@given(st.sampled_from(sorted(VALID_WIRE)), st.data())
def test_fuzz_valid_frames_with_one_nested_value_replaced(frame: str, data: st.DataObject) -> None:
    wire = copy.deepcopy(VALID_WIRE[frame])
    target: Any = wire
    while True:
        keys = sorted(k for k in target if k != "type") if isinstance(target, dict) else None
        slots = keys if keys is not None else list(range(len(target)))
        if not slots:
            break
        slot = data.draw(st.sampled_from(slots))
        child = target[slot]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            target = child
            continue
        target[slot] = data.draw(protocol_values)
        break
    _decode_or_protocol_error(pack(wire))


@FUZZ
@given(st.sampled_from(sorted(VALID_WIRE)), st.data())
def test_fuzz_truncated_and_flipped_frames_only_raise_protocol_error(
    frame: str, data: st.DataObject
) -> None:
    encoded = bytearray(pack(VALID_WIRE[frame]))
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    _decode_or_protocol_error(bytes(encoded[:cut]))


def test_welcome_readable_is_optional_and_must_be_a_list_of_object_names() -> None:
    wire = Welcome(1, "bob", "srv", {}).to_wire()
    assert "readable" not in wire  # a relay that does not say
    assert decode(pack(wire)) == Welcome(1, "bob", "srv", {}, None)
    assert_malformed({**wire, "readable": "Account"}, "welcome.readable")
    assert_malformed({**wire, "readable": ["Account", 7]}, "welcome.readable[1]")


def test_welcome_max_frame_bytes_is_optional_and_must_be_a_sensible_size() -> None:
    wire = Welcome(2, "bob", "srv", {}).to_wire()
    assert "max_frame_bytes" not in wire
    assert decode(pack({**wire, "max_frame_bytes": 65536})).max_frame_bytes == 65536  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match=r"welcome\.max_frame_bytes: must be at least 1024"):
        decode(pack({**wire, "max_frame_bytes": 10}))


def _change(n: int, size: int) -> ChangeFrame:
    return ChangeFrame(
        change_id=f"c{n}",
        record_id=f"r{n}",
        object="Account",
        kind="update",
        base_version=1,
        field_bases={"Name": 1},
        delta=bytes(size),
    )


@given(
    sizes=st.lists(st.integers(0, 6000), max_size=40),
    limit=st.integers(1024, 20_000),
)
def test_planned_pushes_fit_the_limit_keep_the_order_and_leave_out_only_what_cannot_fit(
    sizes: list[int], limit: int
) -> None:
    changes = [_change(n, size) for n, size in enumerate(sizes)]
    plan = plan_pushes(changes, limit)
    sent = []
    for data, carried in plan.frames:
        assert len(data) <= limit and carried
        assert decode(data, max_bytes=limit) == Push(carried)
        sent.extend(carried)
    for change, size in plan.too_large:
        assert size == len(encode(Push((change,)))) > limit
    too_large = {change.change_id for change, _ in plan.too_large}
    assert sent == [c for c in changes if c.change_id not in too_large]
    # Greedy: a frame ends only where its next change would not have fitted (give or take
    # the few bytes a longer array header may take).
    for (_data, a), (_next, b) in zip(plan.frames, plan.frames[1:], strict=False):
        assert len(encode(Push((*a, b[0])))) > limit - 4


def test_a_push_of_many_changes_is_one_frame_when_it_fits() -> None:
    changes = [_change(n, 10) for n in range(700)]  # past 16 and 2**4 items
    plan = plan_pushes(changes, 4 * 1024 * 1024, max_changes=1000)
    [(data, carried)] = plan.frames
    assert carried == tuple(changes) and data == encode(Push(tuple(changes)))


def test_pushes_hold_at_most_the_changes_the_relay_takes_per_frame() -> None:
    changes = [_change(n, 10) for n in range(1201)]
    plan = plan_pushes(changes, 4 * 1024 * 1024)  # MAX_CHANGES_PER_FRAME: 500
    assert [len(carried) for _data, carried in plan.frames] == [500, 500, 201]
    assert [c for _data, carried in plan.frames for c in carried] == changes


# -- the push decoder's fast path ---------------------------------------------------------

_WIRE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2**64),
    st.text(max_size=3),
    st.text(min_size=120, max_size=140),
    st.binary(max_size=4),
    st.sampled_from(["create", "update", "delete", "upsert"]),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(-1, 3), max_size=2),
    st.lists(st.integers(), max_size=2),
)
_CHANGE_MAPS = st.fixed_dictionaries(
    {},
    optional={
        key: _WIRE_VALUES for key in ("id", "record", "object", "kind", "base", "bases", "delta")
    },
)


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(_CHANGE_MAPS, _WIRE_VALUES))
def test_the_common_change_decoder_agrees_with_the_full_decoder(value: object) -> None:
    """Whatever the fast path decodes, the full decoder decodes the same way; whatever it
    declines, the full decoder decodes or refuses with its precise message."""
    common = ChangeFrame.from_wire_common(value)
    try:
        full = ChangeFrame.from_wire(value, "push.changes[0]")
    except ProtocolError:
        assert common is None
        return
    if common is not None:
        assert common == full


@given(
    change_id=st.text(min_size=1, max_size=128),
    kind=st.sampled_from(list(ChangeKind)),
    base=st.integers(0, 2**63),
    bases=st.dictionaries(st.text(max_size=5), st.integers(0, 99), max_size=3),
    delta=st.binary(max_size=8),
)
def test_a_well_formed_change_takes_the_common_decoder(
    change_id: str, kind: ChangeKind, base: int, bases: dict[str, int], delta: bytes
) -> None:
    change = ChangeFrame(
        change_id=change_id, record_id="r-1", object="Account", kind=kind,
        base_version=base, field_bases=bases, delta=delta,
    )  # fmt: skip
    wire = msgpack.unpackb(msgpack.packb(change.to_wire()), raw=False)
    assert ChangeFrame.from_wire_common(wire) == change
    decoded = decode(encode(Push((change, change))))
    assert decoded == Push((change, change))


def test_a_push_with_one_odd_change_is_refused_where_it_is_odd() -> None:
    good = ChangeFrame(
        change_id="c-1", record_id="r-1", object="Account", kind=ChangeKind.UPDATE,
        base_version=1, field_bases={}, delta=b"\x00",
    ).to_wire()  # fmt: skip
    bad = dict(good, base=True)
    with pytest.raises(ProtocolError, match=r"push\.changes\[1\]\.base: expected an integer"):
        Push.from_wire({"type": "push", "changes": [good, bad]})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("version", True, "expected an integer, got a boolean"),
        ("version", 1.5, "expected an integer, got float"),
        ("update", "text", "expected bytes, got str"),
        ("record", b"r", "expected a string, got bytes"),
        ("by", 7, "expected a string, got int"),
        ("deleted", "yes", "expected a boolean, got str"),
    ],
)
def test_a_change_item_of_the_common_shape_with_a_value_of_another_type_is_refused_by_key(
    key: str, value: object, message: str
) -> None:
    item = {"record": "r", "object": "Account", "version": 3, "update": b"u", "by": "bob"}
    with pytest.raises(ProtocolError, match=rf"changes\.items\[0\]\.{key}: {message}"):
        decode(pack({"type": "changes", "items": [{**item, key: value}]}))


@pytest.mark.parametrize("sizes", [(), (0,), (1,), (15,), (10, 6), (16,), (40_000, 30_000)])
def test_a_changes_frame_put_together_from_encoded_runs_is_the_frame_encoded_whole(
    sizes: tuple[int, ...],
) -> None:
    """The relay encodes each push's fan-out items once and joins runs of them per
    replica: the bytes are those of the frame encoded whole, whatever the count (msgpack's
    array header changes at 16 and at 65,536 items)."""
    runs, items = [], []
    for run, size in enumerate(sizes):
        chunk = [
            RecordChange(record_id=f"r{run}-{i}", object="Account", version=i, update=b"u", by="u")
            for i in range(size)
        ]
        runs.append(encode_items(chunk))
        items += chunk
    data = encode_changes(runs, len(items))
    assert data == encode(Changes(tuple(items)))
    frame = decode(data, max_bytes=len(data))
    assert isinstance(frame, Changes) and list(frame.items) == items
