"""crdtsync.core.yupdate parses real pycrdt v1 updates and rejects hostile bytes cleanly."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.core.yupdate import (
    MAX_ANY_DEPTH,
    ParsedUpdate,
    StructInfo,
    UpdateDecodeError,
    _parse_common,
    _parse_general,
    common_overwrite,
    parse_update,
)
from tests.helpers.updates import one_client, root_item, vs, vu

# --------------------------------------------------------------------------- helpers


TRUE_ENTRY = root_item(8, vu(1) + b"\x78", key="z")  # fields["z"] = True


def read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def state_vector(doc: pycrdt.Doc[Any]) -> dict[int, int]:
    """Decode ``doc.get_state()``: count, then (client, clock) pairs."""
    data = doc.get_state()
    count, pos = read_varuint(data, 0)
    sv = {}
    for _ in range(count):
        client, pos = read_varuint(data, pos)
        sv[client], pos = read_varuint(data, pos)
    assert pos == len(data)
    return sv


def pycrdt_state_after_applying(update: bytes) -> dict[int, int]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(update)
    return state_vector(doc)


def end_clocks(parsed: ParsedUpdate) -> dict[int, int]:
    return {client: end for client, (_, end) in parsed.client_ranges().items()}


def new_doc(client_id: int) -> pycrdt.Doc[Any]:
    return pycrdt.Doc(client_id=client_id)


def assert_only_decode_errors(data: bytes) -> None:
    """Parsing either succeeds or raises UpdateDecodeError with an in-range offset."""
    error: UpdateDecodeError | None = None
    try:
        parse_update(data)
    except UpdateDecodeError as exc:
        error = exc
    if error is not None:
        assert 0 <= error.offset <= len(data)


ALL_VALUES: dict[str, Any] = {
    "small_int": 7,
    "negative_int": -3,
    "zero": 0,
    "int_2_53": 2**53,
    "bigint": 2**53 + 1,  # pycrdt encodes this one as a lib0 bigint64
    "int64_max": 2**63 - 1,
    "float32": 1.5,
    "float64": 0.1,
    "huge_float": 1e300,
    "ascii": "hello",
    "empty": "",
    "emoji": "héllo 😀 wörld 🎉",
    "true": True,
    "false": False,
    "none": None,
    "nested": {"a": [1, 2.5, "x", None, {"b": [True, False]}], "c": {}},
    "list": [1, "two", 3.0, [4, [5]], b"\x00\xff"],
    "bytes": b"\x00\x01\xfe\xff",
}

# --------------------------------------------------------------------------- real updates


def test_map_value_of_every_type_is_one_any_item_keyed_by_its_field() -> None:
    doc = new_doc(101)
    fields = doc.get("fields", type=pycrdt.Map)
    with doc.transaction():
        for key, value in ALL_VALUES.items():
            fields[key] = value

    parsed = parse_update(doc.get_update())

    assert len(parsed.structs) == len(ALL_VALUES)
    for struct in parsed.structs:
        assert struct.kind == "item"
        assert struct.content == "any"
        assert struct.length == 1
        assert struct.parent_root == "fields"
        assert struct.parent_id is None
        assert struct.origin is None and struct.right_origin is None
    assert parsed.roots() == {"fields"}
    assert parsed.root_keys("fields") == set(ALL_VALUES)
    assert parsed.root_keys("other") == frozenset()
    assert parsed.clients() == {101}
    assert parsed.client_ranges() == {101: (0, len(ALL_VALUES))}
    assert end_clocks(parsed) == state_vector(doc)
    assert dict(parsed.delete_set) == {}


def test_first_single_key_update_is_fully_described() -> None:
    doc = new_doc(5)
    doc.get("fields", type=pycrdt.Map)["title"] = "hi"

    update = doc.get_update()
    parsed = parse_update(update)

    [struct] = parsed.structs
    assert parsed == ParsedUpdate(
        structs=(
            StructInfo(
                5, 0, 1, "item", "fields", None, "title", None, None, "any", None, struct.span
            ),
        ),
        delete_set={},
        data=update,
    )
    assert parsed.any_values(struct) == ["hi"]


@pytest.mark.parametrize(
    "value",
    [
        0,
        3,
        -70000,
        2**31,
        2**53 + 1,
        -(2**60) - 1,
        1.5,
        "héllo 😀",
        "",
        None,
        True,
        False,
        b"\x00\xff",
        [1, "a", [None]],
        {"k": {"n": 2.5}},
    ],
)
def test_any_values_decode_as_pycrdt_reads_them(value: object) -> None:
    doc = new_doc(7)
    fields = doc.get("fields", type=pycrdt.Map)
    fields["v"] = value
    parsed = parse_update(doc.get_update())
    [struct] = parsed.structs
    peer = new_doc(8)
    peer.apply_update(doc.get_update())
    assert parsed.any_values(struct) == [peer.get("fields", type=pycrdt.Map)["v"]]


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "accents: héllo çà",
        "emoji 😀",
        "😀😀😀",
        "mixed é😀x",
        "cjk 漢字かな",
        "flags 🇫🇷 and zwj 👩‍👩‍👧",
        "\x00nul",
    ],
)
def test_string_clock_length_is_utf16_code_units(text: str) -> None:
    doc = new_doc(9)
    body = doc.get("body", type=pycrdt.Text)
    body += text

    parsed = parse_update(doc.get_update())

    utf16_units = len(text.encode("utf-16-le")) // 2
    [struct] = parsed.structs
    assert struct.content == "string"
    assert struct.parent_root == "body"
    assert struct.length == utf16_units
    # The state vector (pycrdt's own clock) agrees, although pycrdt.Text indexes by UTF-8 bytes.
    assert state_vector(doc) == {9: utf16_units}
    assert len(body) == len(text.encode())


def test_text_insert_in_middle_has_origin_and_right_origin() -> None:
    doc = new_doc(3)
    body = doc.get("body", type=pycrdt.Text)
    body += "ac"
    before = doc.get_state()
    body.insert(1, "😀")  # byte index 1, between "a" and "c"

    parsed = parse_update(doc.get_update(before))

    [struct] = parsed.structs
    assert (struct.client, struct.clock, struct.length) == (3, 2, 2)
    assert struct.origin == (3, 0)
    assert struct.right_origin == (3, 1)
    assert struct.parent_root is None  # parent is implied by the neighbours, not encoded


def test_text_deletion_is_reported_in_utf16_clocks_in_the_delete_set() -> None:
    doc = new_doc(4)
    body = doc.get("body", type=pycrdt.Text)
    body += "a😀b"  # clocks: a=0, 😀=1..2, b=3
    before = doc.get_state()
    del body[1:5]  # UTF-8 bytes of the emoji

    delta = parse_update(doc.get_update(before))
    assert delta.structs == ()
    assert dict(delta.delete_set) == {4: ((1, 2),)}

    full = parse_update(doc.get_update())
    assert dict(full.delete_set) == {4: ((1, 2),)}
    assert [(s.clock, s.length, s.content) for s in full.structs] == [
        (0, 1, "string"),
        (1, 2, "deleted"),
        (3, 1, "string"),
    ]
    assert end_clocks(full) == state_vector(doc) == {4: 4}


def test_map_deletions_and_overwrites_fill_the_delete_set() -> None:
    doc = new_doc(12)
    fields = doc.get("fields", type=pycrdt.Map)
    fields["a"] = 1  # clock 0
    fields["b"] = 2  # clock 1
    fields["c"] = 3  # clock 2
    del fields["a"]
    fields["c"] = 4  # clock 3, deletes clock 2

    parsed = parse_update(doc.get_update())

    assert dict(parsed.delete_set) == {12: ((0, 1), (2, 1))}
    assert parsed.root_keys("fields") == {"a", "b", "c"}
    assert end_clocks(parsed) == state_vector(doc) == {12: 4}


def test_map_overwrite_delta_names_neither_root_nor_key() -> None:
    """The relay cannot learn the key of an overwrite from the update alone."""
    doc = new_doc(13)
    fields = doc.get("fields", type=pycrdt.Map)
    fields["status"] = "open"
    before = doc.get_state()
    fields["status"] = "closed"

    parsed = parse_update(doc.get_update(before))

    [struct] = parsed.structs
    assert struct.origin == (13, 0)  # the previous value of "status"
    assert struct.parent_root is None and struct.parent_sub is None
    assert parsed.roots() == frozenset()
    assert parsed.root_keys("fields") == frozenset()
    assert dict(parsed.delete_set) == {13: ((0, 1),)}


def test_delta_reports_the_clock_it_starts_at() -> None:
    doc = new_doc(21)
    fields = doc.get("fields", type=pycrdt.Map)
    for i in range(5):
        fields[f"k{i}"] = i
    before = state_vector(doc)
    since = doc.get_state()
    fields["later"] = "x"
    fields["again"] = "y"

    parsed = parse_update(doc.get_update(since))

    assert before == {21: 5}
    assert parsed.client_ranges() == {21: (5, 7)}
    assert [s.clock for s in parsed.structs] == [5, 6]
    assert parsed.root_keys("fields") == {"later", "again"}


def test_nested_types_in_root_map_link_children_by_parent_id() -> None:
    doc = new_doc(30)
    fields = doc.get("fields", type=pycrdt.Map)
    with doc.transaction():
        fields["m"] = pycrdt.Map({"inner": 1})
        fields["a"] = pycrdt.Array([1, 2, 3])
        fields["t"] = pycrdt.Text("x😀")

    parsed = parse_update(doc.get_update())

    types = {s.parent_sub: s for s in parsed.structs if s.content == "type"}
    assert {key: s.type_ref for key, s in types.items()} == {"m": 1, "a": 0, "t": 2}
    assert all(s.parent_root == "fields" for s in types.values())
    children = [s for s in parsed.structs if s.parent_id is not None]
    by_parent = {s.parent_id: s for s in children}
    m_id = (30, types["m"].clock)
    a_id = (30, types["a"].clock)
    t_id = (30, types["t"].clock)
    assert by_parent[m_id].parent_sub == "inner"
    assert by_parent[a_id].content == "any" and by_parent[a_id].length == 3
    assert by_parent[t_id].content == "string" and by_parent[t_id].length == 3
    assert parsed.roots() == {"fields"}
    assert parsed.root_keys("fields") == {"m", "a", "t"}
    assert end_clocks(parsed) == state_vector(doc)


def test_several_roots_are_all_reported() -> None:
    doc = new_doc(40)
    with doc.transaction():
        doc.get("fields", type=pycrdt.Map)["x"] = 1
        doc.get("meta", type=pycrdt.Map)["v"] = 2
        doc.get("body", type=pycrdt.Text).insert(0, "text")
        doc.get("items", type=pycrdt.Array).append("y")

    parsed = parse_update(doc.get_update())

    assert parsed.roots() == {"fields", "meta", "body", "items"}
    assert parsed.root_keys("fields") == {"x"}
    assert parsed.root_keys("meta") == {"v"}
    assert parsed.root_keys("body") == frozenset()


def test_xml_and_rich_text_content_kinds() -> None:
    doc = new_doc(50)
    with doc.transaction():
        frag = doc.get("xml", type=pycrdt.XmlFragment)
        frag.children.append(pycrdt.XmlElement("p", {"class": "c"}, [pycrdt.XmlText("hi")]))
        text = doc.get("rich", type=pycrdt.Text)
        text.insert(0, "bold", attrs={"bold": True})
        text.insert_embed(4, {"img": "x.png"})

    parsed = parse_update(doc.get_update())

    kinds = {s.content for s in parsed.structs}
    assert {"type", "any", "string", "format", "embed"} <= kinds
    assert {s.type_ref for s in parsed.structs if s.content == "type"} == {3, 6}
    assert parsed.roots() == {"xml", "rich"}
    assert end_clocks(parsed) == state_vector(doc)


def test_subdocument_is_doc_content() -> None:
    doc = new_doc(60)
    doc.get("fields", type=pycrdt.Map)["sub"] = pycrdt.Doc()

    parsed = parse_update(doc.get_update())

    [struct] = parsed.structs
    assert (struct.content, struct.length, struct.parent_sub) == ("doc", 1, "sub")
    # The sub-document options hold a lib0 varint (tag 125), which the parser skipped.
    assert b"encoding\x7d" in doc.get_update()


def test_merged_updates_from_several_clients() -> None:
    docs = [new_doc(c) for c in (71, 72, 73)]
    for i, doc in enumerate(docs):
        fields = doc.get("fields", type=pycrdt.Map)
        fields[f"from{i}"] = i
        fields["shared"] = f"v{i}"
        doc.get("body", type=pycrdt.Text).insert(0, "é" * (i + 1))
    del docs[0].get("fields", type=pycrdt.Map)["from0"]

    merged = pycrdt.merge_updates(*(d.get_update() for d in docs))
    parsed = parse_update(merged)

    assert parsed.clients() == {71, 72, 73}
    assert parsed.client_ranges() == {71: (0, 3), 72: (0, 4), 73: (0, 5)}
    assert end_clocks(parsed) == pycrdt_state_after_applying(merged)
    assert dict(parsed.delete_set) == {71: ((0, 1),)}
    assert parsed.roots() == {"fields", "body"}
    assert parsed.root_keys("fields") == {"from0", "from1", "from2", "shared"}


def test_merging_non_adjacent_deltas_leaves_a_skip() -> None:
    doc = new_doc(80)
    fields = doc.get("fields", type=pycrdt.Map)
    fields["a"] = 1
    only_a = doc.get_update()
    fields["b"] = 2
    after_b = doc.get_state()
    fields["c"] = 3
    only_c = doc.get_update(after_b)

    parsed = parse_update(pycrdt.merge_updates(only_a, only_c))

    assert [(s.kind, s.clock, s.length) for s in parsed.structs] == [
        ("item", 0, 1),
        ("skip", 1, 1),
        ("item", 2, 1),
    ]
    assert parsed.client_ranges() == {80: (0, 3)}
    assert parsed.root_keys("fields") == {"a", "c"}


def test_accepts_bytearray_and_memoryview() -> None:
    doc = new_doc(90)
    doc.get("fields", type=pycrdt.Map)["k"] = "v"
    update = doc.get_update()

    assert parse_update(bytearray(update)) == parse_update(update)
    assert parse_update(memoryview(update)) == parse_update(update)


# --------------------------------------------------------------------------- pycrdt quirks


def test_json_content_is_read_as_count_plus_one_strings_like_pycrdt() -> None:
    # yrs 0.28 reads count + 1 strings for legacy JSON content (Yjs writes count).
    update = one_client(7, 0, [root_item(2, vu(1) + vs('"a"') + vs('"b"')), TRUE_ENTRY])

    parsed = parse_update(update)

    assert [(s.content, s.length) for s in parsed.structs] == [("json", 2), ("any", 1)]
    assert end_clocks(parsed) == pycrdt_state_after_applying(update) == {7: 3}
    with pytest.raises(UpdateDecodeError):
        parse_update(one_client(7, 0, [root_item(2, vu(1) + vs('"a"'))]))


def test_xml_hook_type_has_no_name_like_pycrdt() -> None:
    update = one_client(7, 0, [root_item(7, vu(5), key="h"), TRUE_ENTRY])

    parsed = parse_update(update)

    assert [s.type_ref for s in parsed.structs] == [5, None]
    assert end_clocks(parsed) == pycrdt_state_after_applying(update) == {7: 2}


@pytest.mark.parametrize(
    ("label", "content"),
    [
        ("deleted", vu(4)),
        ("binary", vs(b"\x01\x02")),
        ("string", vs("a😀")),
        ("embed", vs('{"x":1}')),
        ("format", vs("bold") + vs("true")),
        ("type", vu(3) + vs("p")),
        ("any", vu(3) + b"\x7d\x81\x01" + b"\x7a" + bytes(8) + b"\x74\x01\x00"),
        ("doc", vs("guid") + b"\x76\x01" + vs("gc") + b"\x78"),
    ],
)
def test_crafted_content_end_clock_matches_pycrdt(label: str, content: bytes) -> None:
    ref = {"deleted": 1, "binary": 3, "string": 4, "embed": 5}
    ref |= {"format": 6, "type": 7, "any": 8, "doc": 9}
    update = one_client(7, 0, [root_item(ref[label], content, key="k"), TRUE_ENTRY])

    parsed = parse_update(update)

    assert parsed.structs[0].content == label
    assert end_clocks(parsed) == pycrdt_state_after_applying(update)


@pytest.mark.parametrize(
    ("struct", "message"),
    [
        (root_item(4, vs(""), root="t"), "an item of length 0 (string content)"),
        (root_item(8, vu(0), root="t", key="k"), "an item of length 0 (any content)"),
        (root_item(1, vu(0), root="t", key="k"), "an item of length 0 (deleted content)"),
        (b"\x00" + vu(0), "a gc/skip struct of length 0"),  # pycrdt panics on it
        (b"\x0a" + vu(0), "a gc/skip struct of length 0"),
    ],
    ids=["string", "any", "deleted", "gc", "skip"],
)
def test_a_struct_of_length_zero_is_refused(struct: bytes, message: str) -> None:
    """Yjs never writes one; yrs would take it as something else than it says (an empty
    item that binds a client id and makes a new version, or a panic)."""
    update = one_client(7, 0, [struct, TRUE_ENTRY])
    with pytest.raises(UpdateDecodeError, match=re.escape(message)):
        parse_update(update)


# --------------------------------------------------------------------------- malformed input

VALID = one_client(7, 0, [TRUE_ENTRY])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "unexpected end of input"),
        (b"\x00", "unexpected end of input"),
        (VALID + b"\x00", "trailing bytes"),
        (vu(2**32) + b"\x00", "client sections cannot fit"),
        (b"\x80" * 11, "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x7f" + b"\x00", "exceeds 64 bits"),
        (one_client(2**53, 0, [TRUE_ENTRY]), "exceeds 53 bits"),
        (one_client(7, 2**32, [TRUE_ENTRY]), "exceeds 32 bits"),
        (one_client(7, 2**32 - 1, [b"\x00" + vu(1)]), "end clock exceeds 32 bits"),
        (one_client(7, 0, [b"\x01" + vu(1) + vs("r") + vu(2**32)]), "end clock exceeds 32 bits"),
        (one_client(7, 0, [b"\x80" + vu(3)]), "flag bits set on a gc/skip"),
        (one_client(7, 0, [b"\x2a" + vu(3)]), "flag bits set on a gc/skip"),
        (one_client(7, 0, [root_item(11, b"\x00")]), "unknown content ref 11"),
        (one_client(7, 0, [root_item(0x14, vs("abc"))]), "unknown content ref 20"),
        (one_client(7, 0, [root_item(7, vu(7))]), "unknown type ref 7"),
        (one_client(7, 0, [root_item(8, vu(1) + b"\x73")]), "unknown any tag 115"),
        (one_client(7, 0, [root_item(8, vu(1) + b"\x7b\x00")]), "end of input in number"),
        (one_client(7, 0, [root_item(8, vu(1) + b"\x7d" + b"\x80" * 10 + b"\x00")]), "varint"),
        (one_client(7, 0, [root_item(8, vu(5) + b"\x78")]), "any values cannot fit"),
        (one_client(7, 0, [root_item(4, vs(b"\xed\xa0\x80"))]), "not valid UTF-8"),
        (one_client(7, 0, [root_item(4, vu(100) + b"abc")]), "runs past the end"),
        (one_client(7, 0, [b"\x08" + vu(2) + vu(1)]), "parent info 2"),
        (one_client(7, 0, [b"\x88" + vu(7) + vu(2**32) + vu(1) + b"\x78"]), "origin clock"),
        (one_client(7, 0, [TRUE_ENTRY], ds=vu(1) + vu(2**53) + vu(0)), "exceeds 53 bits"),
        (one_client(7, 0, [TRUE_ENTRY], ds=vu(1) + vu(7) + vu(1) + vu(2**32 - 1) + vu(1)), "32"),
        (one_client(7, 0, [TRUE_ENTRY], ds=vu(1) + vu(7) + vu(9)), "ranges cannot fit"),
        (
            one_client(7, 0, [TRUE_ENTRY], ds=vu(2) + vu(7) + vu(0) + vu(7) + vu(0)),
            "appears twice in the delete set",
        ),
        (
            vu(2) + vu(1) + vu(7) + vu(0) + TRUE_ENTRY + vu(1) + vu(7) + vu(1) + TRUE_ENTRY + b"\0",
            "has two struct sections",
        ),
    ],
)
def test_malformed_input_raises_update_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(UpdateDecodeError, match=message) as info:
        parse_update(data)
    assert isinstance(info.value, ValueError)
    assert 0 <= info.value.offset <= len(data)
    assert f"offset {info.value.offset}" in str(info.value)


def test_invalid_utf8_map_key_reports_its_offset() -> None:
    data = one_client(7, 0, [b"\x28" + vu(1) + vs("r") + vs(b"k\xff") + vu(1) + b"\x78"])

    with pytest.raises(UpdateDecodeError, match="map key is not valid UTF-8") as info:
        parse_update(data)

    assert data[info.value.offset : info.value.offset + 2] == b"k\xff"


def test_trailing_bytes_error_points_at_first_extra_byte() -> None:
    with pytest.raises(UpdateDecodeError) as info:
        parse_update(VALID + b"\x01\x02")
    assert info.value.offset == len(VALID)
    assert pickle.loads(pickle.dumps(info.value)).offset == len(VALID)


@pytest.mark.parametrize("tag", [128, 130, 200, 253, 255])
def test_any_tag_above_127_is_refused_like_pycrdt_refuses_it(tag: int) -> None:
    # Found by tests/faults/test_fuzz.py: the parser let these through as payload-less values,
    # then reading the item's value (the relay's shape check) raised out of decide().
    data = one_client(7, 0, [root_item(8, vu(1) + bytes([tag]), root="fields", key="X")])
    with pytest.raises(ValueError, match="unexpected value"):
        pycrdt.Doc().apply_update(data)
    with pytest.raises(UpdateDecodeError, match=f"unknown any tag {tag}"):
        parse_update(data)
    nested = one_client(7, 0, [root_item(8, vu(1) + b"\x75\x01" + bytes([tag]), key="X")])
    with pytest.raises(UpdateDecodeError, match=f"unknown any tag {tag}"):
        parse_update(nested)


def test_any_nesting_is_limited() -> None:
    def nested(depth: int) -> bytes:
        value = b"\x75\x01" * depth + b"\x7e"
        return one_client(7, 0, [root_item(8, vu(1) + value, key="z")])

    assert parse_update(nested(MAX_ANY_DEPTH)).structs[0].content == "any"
    with pytest.raises(UpdateDecodeError, match="nested deeper"):
        parse_update(nested(MAX_ANY_DEPTH + 1))
    # 100 000 levels crash pycrdt itself (stack overflow); we refuse them early.
    with pytest.raises(UpdateDecodeError, match="nested deeper"):
        parse_update(nested(100_000))


def test_max_structs_caps_structs_and_delete_ranges() -> None:
    doc = new_doc(95)
    fields = doc.get("fields", type=pycrdt.Map)
    for i in range(3):
        fields[f"k{i}"] = i
    update = doc.get_update()

    assert len(parse_update(update, max_structs=3).structs) == 3
    with pytest.raises(UpdateDecodeError, match="more than 2 structs"):
        parse_update(update, max_structs=2)
    ds = vu(1) + vu(7) + vu(3) + vu(0) + vu(1) + vu(2) + vu(1) + vu(4) + vu(1)
    with pytest.raises(UpdateDecodeError, match="more than 2 delete ranges"):
        parse_update(vu(0) + ds, max_structs=2)
    assert parse_update(vu(0) + ds, max_structs=3).delete_set == {7: ((0, 1), (2, 1), (4, 1))}


def test_huge_runs_of_continuation_bytes_are_rejected() -> None:
    with pytest.raises(UpdateDecodeError, match="longer than 10 bytes"):
        parse_update(b"\x01\x01\x07\x00\x01\x01" + b"\xff" * 1_000_000)


# --------------------------------------------------------------------------- properties

MAP_VALUES = st.one_of(
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=6),
    st.booleans(),
    st.none(),
    st.binary(max_size=4),
    st.lists(st.integers(-100, 100), max_size=3),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from("abcd"), MAP_VALUES),
        st.tuples(st.just("ins"), st.integers(0, 2), st.floats(0, 1), st.text(max_size=5)),
        st.tuples(st.just("del"), st.integers(0, 2), st.floats(0, 1), st.floats(0, 1)),
        st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2), st.none()),
    ),
    max_size=12,
)


def _byte_index(text: str, fraction: float) -> int:
    return len(text[: int(fraction * len(text))].encode())


def _apply_ops(docs: list[pycrdt.Doc[Any]], ops: list[tuple[Any, ...]]) -> None:
    for kind, i, a, b in ops:
        doc = docs[i % len(docs)]
        body = doc.get("body", type=pycrdt.Text)
        if kind == "set":
            doc.get("fields", type=pycrdt.Map)[a] = b
        elif kind == "ins":
            body.insert(_byte_index(str(body), a), b)
        elif kind == "del":
            text = str(body)
            lo, hi = sorted((_byte_index(text, a), _byte_index(text, b)))
            if lo < hi:
                del body[lo:hi]
        else:
            other = docs[a % len(docs)]
            other.apply_update(doc.get_update(other.get_state()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_docs=st.integers(1, 3), ops=OPS)
def test_full_update_end_clocks_equal_state_vector(n_docs: int, ops: list[tuple[Any, ...]]) -> None:
    docs = [new_doc(1000 + k) for k in range(n_docs)]
    _apply_ops(docs, ops)

    for doc in docs:
        parsed = parse_update(doc.get_update())
        sv = state_vector(doc)
        assert end_clocks(parsed) == sv
        assert all(first == 0 for first, _ in parsed.client_ranges().values())
        assert parsed.roots() <= {"fields", "body"}
        assert parsed.root_keys("fields") <= set("abcd")

    merged = pycrdt.merge_updates(*(d.get_update() for d in docs))
    expected: dict[int, int] = {}
    for doc in docs:
        for client, clock in state_vector(doc).items():
            expected[client] = max(clock, expected.get(client, 0))
    assert end_clocks(parse_update(merged)) == expected


@settings(max_examples=300, deadline=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_update_decode_error(data: bytes) -> None:
    assert_only_decode_errors(data)


def _sample_update() -> bytes:
    doc = new_doc(2**50 + 3)
    fields = doc.get("fields", type=pycrdt.Map)
    with doc.transaction():
        fields["n"] = 1.5
        fields["s"] = "é😀"
        fields["d"] = {"a": [1, None, True], "b": b"\x00"}
        fields["t"] = pycrdt.Text("hey")
        doc.get("body", type=pycrdt.Text).insert(0, "ab😀")
    del fields["n"]
    return bytes(doc.get_update())


SAMPLE = _sample_update()


def test_every_truncation_of_a_valid_update_is_rejected() -> None:
    assert parse_update(SAMPLE).structs
    for cut in range(len(SAMPLE)):
        with pytest.raises(UpdateDecodeError):
            parse_update(SAMPLE[:cut])


def test_every_single_bit_flip_raises_nothing_but_update_decode_error() -> None:
    for pos in range(len(SAMPLE)):
        for bit in range(8):
            mutated = bytearray(SAMPLE)
            mutated[pos] ^= 1 << bit
            assert_only_decode_errors(bytes(mutated))


@settings(max_examples=200, deadline=200)
@given(
    position=st.integers(0, len(SAMPLE)),
    removed=st.integers(0, 4),
    inserted=st.binary(max_size=6),
)
def test_spliced_valid_updates_raise_nothing_but_update_decode_error(
    position: int, removed: int, inserted: bytes
) -> None:
    assert_only_decode_errors(SAMPLE[:position] + inserted + SAMPLE[position + removed :])


# --------------------------------------------------------------------------- fast path
# parse_update reads common deltas (map overwrites of simple values) on a fast path and
# leaves everything else to the general parser.  Whatever the input, both must give the
# same answer: an equal ParsedUpdate (and equal byte offsets, which are not compared by
# ==) or the same UpdateDecodeError.

FUZZ_CORPUS = Path(__file__).resolve().parents[1] / "faults" / "fuzz" / "corpus"


def parse_outcome(parse: Any, data: bytes, max_structs: int = 1_000_000) -> tuple[Any, ...]:
    try:
        parsed = parse(data, max_structs=max_structs)
    except UpdateDecodeError as exc:
        return ("error", str(exc))
    return (
        "parsed",
        parsed,
        parsed.delete_set_at,
        tuple(struct.byte_span for struct in parsed.structs),
        # repr: NaN is not equal to itself, and -0.0 is equal to 0.0
        repr([parsed.any_values(struct) for struct in parsed.structs]),
    )


def assert_paths_agree(data: bytes, max_structs: int = 1_000_000) -> tuple[Any, ...]:
    outcome = parse_outcome(parse_update, data, max_structs)
    assert outcome == parse_outcome(_parse_general, data, max_structs), data.hex()
    assert_overwrite_agrees(data)
    return outcome


def assert_overwrite_agrees(data: bytes) -> None:
    """What ``common_overwrite`` accepts, the parser reads as that one overwrite."""
    one = common_overwrite(data)
    if one is None:
        return
    parsed = parse_update(data)
    assert [
        (s.client, s.clock, s.length, s.kind, s.content, s.origin, s.right_origin)
        for s in parsed.structs
    ] == [(one.client, one.clock, 1, "item", "any", one.origin, None)], data.hex()
    assert (parsed.structs[0].parent_root, parsed.structs[0].parent_sub) == (None, None)
    assert repr(parsed.any_values(parsed.structs[0])) == repr([one.value]), data.hex()
    assert dict(parsed.delete_set) == one.delete_set, data.hex()


def takes_fast_path(data: bytes) -> bool:
    try:
        return _parse_common(data, 1_000_000) is not None
    except (UpdateDecodeError, IndexError):
        return False


def overwrite_deltas(client_id: int, values: list[Any]) -> list[bytes]:
    """The delta of each write of ``values`` to one key (the first one creates it)."""
    doc = new_doc(client_id)
    fields = doc.get("fields", type=pycrdt.Map)
    deltas = []
    for value in values:
        state = doc.get_state()
        fields["k"] = value
        deltas.append(bytes(doc.get_update(state)))
    return deltas


SIMPLE_VALUES = [7, -3, 2**40, 1.5, 0.1, -0.0, "", "short", "é😀", True, False, None]


@pytest.mark.parametrize("client_id", [1, 1000, 2**32 + 5, 2**53 - 1])
@pytest.mark.parametrize("value", SIMPLE_VALUES, ids=repr)
def test_fast_path_reads_a_map_overwrite_as_the_general_parser_does(
    client_id: int, value: Any
) -> None:
    *earlier, delta = overwrite_deltas(client_id, [0, 1, value])
    assert takes_fast_path(delta)
    outcome = assert_paths_agree(delta)
    assert outcome[0] == "parsed"
    [item] = outcome[1].structs
    assert item.origin == (client_id, 1) and item.parent_sub is None
    reader = new_doc(client_id + 1 if client_id < 2**53 - 1 else 1)
    for update in earlier:
        reader.apply_update(update)
    reader.apply_update(delta)
    assert outcome[4] == repr([[reader.get("fields", type=pycrdt.Map)["k"]]])


@pytest.mark.parametrize("value", [v for v in SIMPLE_VALUES if not isinstance(v, str)], ids=repr)
def test_common_overwrite_reads_one_plain_value_written_over_another(value: Any) -> None:
    deltas = overwrite_deltas(2**32 + 5, [0, 1, value])
    one = common_overwrite(deltas[-1])
    assert one is not None
    assert (one.client, one.clock, one.origin) == (2**32 + 5, 2, (2**32 + 5, 1))
    reader = new_doc(1)
    for delta in deltas:
        reader.apply_update(delta)
    assert repr(one.value) == repr(reader.get("fields", type=pycrdt.Map)["k"])  # as yrs reads
    assert_overwrite_agrees(deltas[-1])
    assert common_overwrite(overwrite_deltas(3, [1])[0]) is None  # a first write: not one
    assert common_overwrite(overwrite_deltas(3, [0, "text"])[1]) is None  # a string: not one


def test_fast_path_takes_several_overwrites_and_several_writers() -> None:
    docs = [new_doc(5), new_doc(2**40)]
    docs[0].get("fields", type=pycrdt.Map).update({"a": 0, "b": 0})
    docs[1].apply_update(docs[0].get_update())
    deltas = []
    for doc, value in zip(docs, (1.5, "two"), strict=True):
        state = doc.get_state()
        with doc.transaction():  # one change that overwrites two fields
            doc.get("fields", type=pycrdt.Map).update({"a": value, "b": value})
        deltas.append(bytes(doc.get_update(state)))
    merged = bytes(pycrdt.merge_updates(*deltas))
    parsed = parse_update(merged)
    assert len(parsed.clients()) == 2 and len(parsed.structs) == 4
    for update in (*deltas, merged):
        assert takes_fast_path(update)
        assert_paths_agree(update)


def test_fast_path_leaves_other_updates_to_the_general_parser() -> None:
    # A first write names its root and key; a text edit has string content.
    first = overwrite_deltas(3, [1])[0]
    assert not takes_fast_path(first)
    doc = new_doc(3)
    doc.get("body", type=pycrdt.Text).insert(0, "hello")
    assert not takes_fast_path(bytes(doc.get_update()))
    assert not takes_fast_path(SAMPLE)
    assert not takes_fast_path(b"")


@pytest.mark.parametrize("max_structs", [0, 1, 2])
def test_fast_path_honours_max_structs(max_structs: int) -> None:
    *_, delta = overwrite_deltas(9, [0, 1, 2])
    outcome = assert_paths_agree(delta, max_structs)
    assert (outcome[0] == "error") == (max_structs == 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_docs=st.integers(1, 3), ops=OPS, client_base=st.sampled_from([1000, 2**31, 2**53 - 8]))
def test_pycrdt_deltas_and_states_parse_the_same_on_both_paths(
    n_docs: int, ops: list[tuple[Any, ...]], client_base: int
) -> None:
    """Every delta a random session produces (each op's, and full states and merges)."""
    docs = [new_doc(client_base + k) for k in range(n_docs)]
    for op in ops:
        doc = docs[op[1] % len(docs)]
        state = doc.get_state()
        _apply_ops(docs, [op])
        assert_paths_agree(bytes(doc.get_update(state)))
    for doc in docs:
        assert_paths_agree(bytes(doc.get_update()))
    assert_paths_agree(bytes(pycrdt.merge_updates(*(d.get_update() for d in docs))))


COMMON_DELTAS = [
    *overwrite_deltas(1000, [0, 1.5, "x" * 127, 2**62, None])[1:],
    *overwrite_deltas(2**53 - 1, [0, "é", True, -(2**62)])[1:],
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    delta=st.sampled_from(COMMON_DELTAS),
    position=st.integers(0, 40),
    removed=st.integers(0, 3),
    inserted=st.binary(max_size=4),
)
def test_mutated_common_deltas_get_the_same_answer_on_both_paths(
    delta: bytes, position: int, removed: int, inserted: bytes
) -> None:
    assert_paths_agree(delta[:position] + inserted + delta[position + removed :])


def test_every_truncation_and_byte_change_of_common_deltas_agrees() -> None:
    for delta in COMMON_DELTAS:
        for cut in range(len(delta) + 1):
            assert_paths_agree(delta[:cut])
        for pos in range(len(delta)):
            for byte in (0x00, 0x01, 0x7F, 0x80, 0x88, 0xA8, 0xC8, 0xFF, delta[pos] ^ 0x40):
                assert_paths_agree(delta[:pos] + bytes([byte]) + delta[pos + 1 :])
        assert_paths_agree(delta + b"\x00")


@pytest.mark.parametrize("value", [1, "s"])
def test_bounds_the_fast_path_must_check_are_refused_as_by_the_general_parser(
    value: Any,
) -> None:
    # one value: the varint 1, or a string (read by the fast path's other branch)
    item_any = b"\x01\x7d\x01" if value == 1 else b"\x01\x77\x01s"
    cases = {
        "client id of 54 bits": vu(1) + vu(1) + vu(2**53) + vu(0) + b"\x88" + vu(1) + vu(0),
        "origin client of 54 bits": vu(1) + vu(1) + vu(1) + vu(0) + b"\x88" + vu(2**53) + vu(0),
        "origin clock of 33 bits": vu(1) + vu(1) + vu(1) + vu(0) + b"\x88" + vu(1) + vu(2**32),
        "end clock of 33 bits": vu(1) + vu(1) + vu(1) + vu(2**32 - 1) + b"\x88" + vu(1) + vu(0),
        "clock of 65 bits": vu(1) + vu(1) + vu(1) + vu(2**64) + b"\x88" + vu(1) + vu(0),
        "second section": vu(2) + (vu(1) + vu(1) + vu(0) + b"\x88" + vu(1) + vu(0) + item_any) * 2,
    }
    for label, head in cases.items():
        body = head if label == "second section" else head + item_any
        for ds in (b"\x00", b"\x01" + vu(1) + b"\x01" + vu(0) + vu(1)):
            outcome = assert_paths_agree(body + ds)
            assert outcome[0] == "error", label
    big_ds = [
        b"\x01" + vu(2**53) + b"\x01" + vu(0) + vu(1),
        b"\x01" + vu(1) + b"\x01" + vu(2**32 - 1) + vu(1),
    ]
    *_, delta = overwrite_deltas(1, [0, value])
    assert takes_fast_path(delta)
    head = delta[: parse_update(delta).delete_set_at]
    for ds in big_ds:
        assert assert_paths_agree(head + ds)[0] == "error"


def test_string_values_with_bad_utf8_or_lengths_agree() -> None:
    *_, delta = overwrite_deltas(1, [0, "abc"])
    at = delta.index(b"abc")
    for replaced in (b"\xff\xfe\xfd", b"\xc3", b"ab", b"abcd", b"\xc3\xa9c"):
        assert_paths_agree(delta[:at] + replaced + delta[at + 3 :])


def _fuzz_seeds() -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted((FUZZ_CORPUS / "parse_update").iterdir())]
    # relay_push seeds are a kind byte and then the delta.
    seeds += [path.read_bytes()[1:] for path in sorted((FUZZ_CORPUS / "relay_push").iterdir())]
    return seeds


def test_fuzz_corpus_and_its_mutations_parse_the_same_on_both_paths() -> None:
    seeds = _fuzz_seeds()
    assert len(seeds) >= 10
    assert any(takes_fast_path(seed) for seed in seeds)
    for seed in seeds:
        assert_paths_agree(seed)
        for cut in range(len(seed)):
            assert_paths_agree(seed[:cut])
        for pos in range(len(seed)):
            for bit in range(8):
                mutated = bytearray(seed)
                mutated[pos] ^= 1 << bit
                assert_paths_agree(bytes(mutated))
