"""RecordDoc: typed reads and writes on one record's CRDT document, deltas and merging."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core.fieldtypes import INT64_MAX, INT64_MIN
from crdtsync.core.record import FIELDS_ROOT, BadStoredState, RecordDoc, merged_state
from tests.helpers.updates import SPEC, exchange, two_replicas

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
FULL_VALUES: dict[str, Any] = {
    "Name": "Widget",
    "Notes": "Zürich — 東京 🎉",
    "Count": 3,
    "Ratio": 0.25,
    "Price": Decimal("0.10"),
    "Active": True,
    "Day": dt.date(2026, 11, 25),
    "At": dt.datetime(2026, 11, 25, 9, 30, tzinfo=IST),
    "Kind": "b",
    "Email": "ada@example.com",
    "Parent": "item-1",
    "Owner": "ada",
}


def assert_same_typed(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual == expected
    for name, value in expected.items():
        assert type(actual[name]) is type(value), name
        if isinstance(value, Decimal):
            assert str(actual[name]) == str(value), name
        if isinstance(value, dt.datetime):
            assert actual[name].utcoffset() == value.utcoffset(), name


# --- write / read ---------------------------------------------------------------------


def test_write_returns_non_empty_update() -> None:
    record = RecordDoc(SPEC)
    update = record.write({"Name": "Widget"})
    assert isinstance(update, bytes)
    assert update != b""


def test_second_identical_write_is_a_no_op() -> None:
    record = RecordDoc(SPEC)
    assert record.write(FULL_VALUES) != b""
    state = record.state()
    assert record.write(FULL_VALUES) == b""
    assert record.state() == state
    assert_same_typed(record.read(), FULL_VALUES)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Count", 3),
        ("Count", 2**60),
        ("Count", -(2**63)),
        ("Ratio", 0.1),
        ("Price", Decimal("0.10")),
        ("Active", False),
        ("Day", dt.date(2000, 2, 29)),
        ("At", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        ("Notes", "émoji 🎉"),
        ("Name", ""),
    ],
)
def test_rewriting_the_same_value_of_one_field_is_a_no_op(name: str, value: Any) -> None:
    record = RecordDoc(SPEC)
    assert record.write({name: value}) != b""
    assert record.write({name: value}) == b""


def test_update_from_write_brings_a_peer_to_the_same_values() -> None:
    record = RecordDoc(SPEC, client_id=1)
    peer = RecordDoc(SPEC, client_id=2)
    peer.apply(record.write(FULL_VALUES))
    assert_same_typed(peer.read(), FULL_VALUES)
    peer.apply(record.write({"Count": 4}))
    assert peer.read()["Count"] == 4


def test_read_returns_typed_values_in_schema_order() -> None:
    record = RecordDoc(SPEC)
    record.write(dict(reversed(list(FULL_VALUES.items()))))
    values = record.read()
    assert list(values) == list(SPEC.fields)
    assert_same_typed(values, FULL_VALUES)


def test_small_int_field_reads_back_as_int_not_float() -> None:
    record = RecordDoc(SPEC)
    record.write({"Count": 3})
    assert record.read()["Count"] == 3
    assert type(record.read()["Count"]) is int
    assert type(record.copy().read()["Count"]) is int


@pytest.mark.parametrize("value", [INT64_MIN, INT64_MAX, 2**60 + 1, 2**53 + 1])
def test_int64_extremes_survive_copy_and_delta(value: int) -> None:
    record = RecordDoc(SPEC, client_id=1)
    record.write({"Count": value})
    peer = RecordDoc(SPEC, client_id=2)
    peer.apply(record.delta(peer.state()))
    assert record.read()["Count"] == value
    assert peer.read()["Count"] == value
    assert record.copy().read()["Count"] == value


def test_read_of_empty_record_is_empty() -> None:
    assert RecordDoc(SPEC).read() == {}
    assert RecordDoc.from_update(SPEC, b"").read() == {}


def test_read_ignores_keys_the_schema_does_not_know() -> None:
    foreign = pycrdt.Doc()
    foreign.get(FIELDS_ROOT, type=pycrdt.Map).update({"Name": "x", "Legacy": "y"})
    record = RecordDoc.from_update(SPEC, bytes(foreign.get_update()))
    assert record.read() == {"Name": "x"}


def test_read_of_undecodable_value_names_the_field() -> None:
    foreign = pycrdt.Doc()
    foreign.get(FIELDS_ROOT, type=pycrdt.Map)["Day"] = "not a date"
    record = RecordDoc.from_update(SPEC, bytes(foreign.get_update()))
    with pytest.raises(ValueError, match="field 'Day'"):
        record.read()


def test_writing_none_clears_a_field() -> None:
    record = RecordDoc(SPEC)
    record.write({"Name": "Widget", "Count": 3, "Notes": "hello"})
    update = record.write({"Count": None, "Notes": None})
    assert update != b""
    assert record.read() == {"Name": "Widget"}
    assert record.write({"Count": None, "Notes": None}) == b""


def test_clearing_a_field_reaches_the_peer() -> None:
    a, b = two_replicas({"Name": "Widget", "Price": Decimal("1.50")})
    b.apply(a.write({"Price": None}))
    assert b.read() == {"Name": "Widget"}


def test_cleared_text_field_can_be_written_again() -> None:
    record = RecordDoc(SPEC)
    record.write({"Notes": "first"})
    record.write({"Notes": None})
    record.write({"Notes": "second ✨"})
    assert record.read() == {"Notes": "second ✨"}
    assert record.copy().read() == {"Notes": "second ✨"}


def test_decimal_with_other_exponent_is_a_change() -> None:
    record = RecordDoc(SPEC)
    record.write({"Price": Decimal("0.10")})
    assert record.write({"Price": Decimal("0.1")}) != b""
    assert str(record.read()["Price"]) == "0.1"


def test_same_instant_with_other_offset_is_a_change() -> None:
    record = RecordDoc(SPEC)
    at_ist = dt.datetime(2026, 1, 1, 9, 0, tzinfo=IST)
    record.write({"At": at_ist})
    at_utc = at_ist.astimezone(dt.UTC)
    assert record.write({"At": at_utc}) != b""
    assert record.read()["At"].utcoffset() == dt.timedelta(0)


def test_bool_and_int_fields_keep_their_types() -> None:
    record = RecordDoc(SPEC)
    record.write({"Active": True, "Count": 1})
    values = record.copy().read()
    assert values["Active"] is True
    assert type(values["Count"]) is int
    assert record.write({"Active": True, "Count": 1}) == b""


# --- delta / apply / copy -------------------------------------------------------------


def test_delta_from_empty_state_brings_peer_to_equal_read() -> None:
    record = RecordDoc(SPEC, client_id=1)
    record.write(FULL_VALUES)
    record.write({"Notes": "Zürich — 東京 🎉 and more", "Count": 7})
    peer = RecordDoc(SPEC, client_id=2)
    peer.apply(record.delta(peer.state()))
    assert_same_typed(peer.read(), record.read())
    assert peer.state() == record.state()


def test_delta_with_none_is_the_whole_document() -> None:
    record = RecordDoc(SPEC, client_id=1)
    record.write(FULL_VALUES)
    peer = RecordDoc.from_update(SPEC, record.delta())
    assert_same_typed(peer.read(), FULL_VALUES)
    full = RecordDoc.from_update(SPEC, record.full_update())
    assert_same_typed(full.read(), FULL_VALUES)


def test_delta_only_carries_what_the_peer_misses() -> None:
    record = RecordDoc(SPEC, client_id=1)
    peer = RecordDoc(SPEC, client_id=2)
    record.write({"Notes": "x" * 2000})
    peer.apply(record.delta(peer.state()))
    record.write({"Count": 1})
    delta = record.delta(peer.state())
    assert len(delta) < 200
    peer.apply(delta)
    assert peer.read() == record.read()
    assert RecordDoc.from_update(SPEC, record.full_update()).read() == record.read()


def test_applying_the_same_delta_twice_is_harmless() -> None:
    record = RecordDoc(SPEC, client_id=1)
    record.write({"Name": "A", "Notes": "text"})
    peer = RecordDoc(SPEC, client_id=2)
    delta = record.delta(peer.state())
    peer.apply(delta)
    peer.apply(delta)
    assert peer.read() == {"Name": "A", "Notes": "text"}


def test_copy_is_independent_of_the_original() -> None:
    original = RecordDoc(SPEC, client_id=1)
    original.write({"Name": "Widget", "Notes": "shared text"})
    duplicate = original.copy(client_id=2)
    assert duplicate.client_id == 2
    assert original.client_id == 1
    assert duplicate.read() == original.read()

    duplicate.write({"Name": "Copy", "Notes": "shared text, edited"})
    assert original.read() == {"Name": "Widget", "Notes": "shared text"}

    original.write({"Count": 5})
    assert "Count" not in duplicate.read()
    assert duplicate.read() == {"Name": "Copy", "Notes": "shared text, edited"}


def test_from_update_uses_the_given_client_id() -> None:
    record = RecordDoc(SPEC, client_id=1)
    record.write({"Name": "x"})
    loaded = RecordDoc.from_update(SPEC, record.full_update(), client_id=99)
    assert loaded.client_id == 99
    assert loaded.spec is SPEC
    assert loaded.read() == {"Name": "x"}


# --- concurrent edits -----------------------------------------------------------------


def test_concurrent_edits_of_different_fields_both_survive() -> None:
    a, b = two_replicas({"Name": "Widget", "Count": 1, "Price": Decimal("1.00")})
    a.write({"Name": "Gadget", "Active": True})
    b.write({"Count": 2, "Price": Decimal("2.50")})
    exchange(a, b)
    expected = {"Name": "Gadget", "Count": 2, "Price": Decimal("2.50"), "Active": True}
    assert_same_typed(a.read(), expected)
    assert_same_typed(b.read(), expected)


def test_concurrent_clear_and_edit_of_different_fields_both_survive() -> None:
    a, b = two_replicas({"Name": "Widget", "Count": 1})
    a.write({"Count": None})
    b.write({"Name": "Gadget"})
    exchange(a, b)
    assert a.read() == b.read() == {"Name": "Gadget"}


def test_concurrent_edits_of_the_same_field_converge() -> None:
    a, b = two_replicas({"Name": "Widget"})
    a.write({"Name": "From A"})
    b.write({"Name": "From B"})
    exchange(a, b)
    assert a.read() == b.read()
    assert a.read()["Name"] in {"From A", "From B"}


def test_concurrent_text_edits_of_different_parts_both_survive() -> None:
    a, b = two_replicas({"Notes": "The quick brown fox jumps over the lazy dog."})
    a.write({"Notes": "The very quick brown fox jumps over the lazy dog."})
    b.write({"Notes": "The quick brown fox jumps over the sleepy dog!"})
    exchange(a, b)
    expected = "The very quick brown fox jumps over the sleepy dog!"
    assert a.read()["Notes"] == expected
    assert b.read()["Notes"] == expected


def test_concurrent_non_ascii_text_edits_both_survive() -> None:
    a, b = two_replicas({"Notes": "Café 🎉 naïve — 東京"})
    a.write({"Notes": "¡Hola! Café 🎉 naïve — 東京"})
    b.write({"Notes": "Café 🎉 résumé — 東京 👩‍👩‍👧"})
    exchange(a, b)
    expected = "¡Hola! Café 🎉 résumé — 東京 👩‍👩‍👧"
    assert a.read()["Notes"] == expected
    assert b.read()["Notes"] == expected


def test_concurrent_emoji_edits_after_multibyte_prefix_both_survive() -> None:
    a, b = two_replicas({"Notes": "🎉🎉🎉 one two three 東京"})
    a.write({"Notes": "🎉🎉🎉 one 2 three 東京"})
    b.write({"Notes": "🎉🎉🎉 one two three 大阪"})
    exchange(a, b)
    assert a.read()["Notes"] == "🎉🎉🎉 one 2 three 大阪"
    assert b.read()["Notes"] == a.read()["Notes"]


def test_concurrent_text_delete_and_insert_both_survive() -> None:
    a, b = two_replicas({"Notes": "alpha beta gamma delta"})
    a.write({"Notes": "alpha gamma delta"})
    b.write({"Notes": "alpha beta gamma delta epsilon"})
    exchange(a, b)
    assert a.read()["Notes"] == b.read()["Notes"] == "alpha gamma delta epsilon"


def test_text_edit_that_only_deletes_returns_an_update_reaching_the_peer() -> None:
    # Deleting characters does not advance the state vector, yet it is a change: write()
    # must not report it as a no-op (b""), and its update must carry the deletion.
    record = RecordDoc(SPEC, client_id=1)
    peer = RecordDoc(SPEC, client_id=2)
    peer.apply(record.write({"Notes": "hello world"}))
    update = record.write({"Notes": "hello"})
    assert record.read()["Notes"] == "hello"
    assert update != b""
    peer.apply(update)
    assert peer.read()["Notes"] == "hello"


def test_text_edit_that_only_deletes_reaches_the_peer_by_delta() -> None:
    record = RecordDoc(SPEC, client_id=1)
    peer = RecordDoc(SPEC, client_id=2)
    peer.apply(record.write({"Notes": "naïve 🎉 text"}))
    record.write({"Notes": "naïve text"})
    peer.apply(record.delta(peer.state()))
    assert peer.read()["Notes"] == "naïve text"


def test_text_write_is_a_small_character_diff() -> None:
    record = RecordDoc(SPEC, client_id=1)
    long_text = "lorem ipsum dolor sit amet " * 100
    record.write({"Notes": long_text})
    update = record.write({"Notes": long_text + "!"})
    assert 0 < len(update) < 100
    assert record.read()["Notes"] == long_text + "!"


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.text(max_size=30), st.text(max_size=30))
def test_text_rewrite_reads_back_exactly(old: str, new: str) -> None:
    record = RecordDoc(SPEC, client_id=1)
    peer = RecordDoc(SPEC, client_id=2)
    peer.apply(record.write({"Notes": old}))
    update = record.write({"Notes": new})
    assert (update == b"") == (old == new)
    if update:
        peer.apply(update)
    # An empty text reads as no value (every text field holds its Y.Text from creation).
    assert record.read().get("Notes", "") == new
    assert peer.read().get("Notes", "") == new


def edited(edits: int, first_count: int = 0) -> tuple[RecordDoc, bytes, list[bytes]]:
    """A document, its whole state before ``edits`` edits of three fields (``Count``
    from ``first_count`` on), and the update of each edit."""
    doc = RecordDoc(SPEC, client_id=3)
    doc.write({"Name": "A", "Count": 1, "Notes": "hello"})
    stored = doc.full_update()
    updates = []
    for n in range(edits):
        state = doc.state()
        doc.write({"Count": first_count + n, "Notes": f"hello {n}", "Name": f"A{n}"})
        updates.append(doc.delta(state))
    return doc, stored, updates


def test_merged_state_is_what_loading_applying_and_encoding_give() -> None:
    doc, stored, updates = edited(5)
    loaded = RecordDoc.from_update(SPEC, stored)
    for update in updates:
        loaded.apply(update)
    assert merged_state(stored, updates) == loaded.full_update() == doc.full_update()
    assert merged_state(b"", [stored]) == RecordDoc.from_update(SPEC, stored).full_update()
    assert merged_state(stored, []) == stored
    with pytest.raises(BadStoredState):
        merged_state(b"\x01\x02garbage", updates)
    with pytest.raises(ValueError, match="decode"):
        merged_state(stored, [b"\x01\x02garbage"])
    assert pycrdt.get_state(merged_state(stored, updates)) == pycrdt.get_state(doc.full_update())


def test_applying_for_state_under_the_wrapper_is_what_the_wrapper_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``apply_all_for_state`` goes under pycrdt's wrapper (one raw yrs transaction): the
    document, the state vector it returns and what a change tracker sees must be those
    of the wrapper's own transaction, and a refused update must leave both documents
    usable."""
    from crdtsync.core import record

    assert record._RAW_APPLY  # this pycrdt takes the raw path
    source, stored, updates = edited(3, first_count=10)

    def apply(raw: bool) -> tuple[bytes, bytes, dict[str, Any], dict[str, Any]]:
        monkeypatch.setattr(record, "_RAW_APPLY", raw)
        doc = RecordDoc.from_update(SPEC, stored, client_id=9)
        tracker = doc.track_changes()
        state = doc.apply_all_for_state(updates)
        seen = tracker.take_values()
        with pytest.raises(ValueError, match="decode"):
            doc.apply_all_for_state([b"\x01\x02garbage"])
        doc.write({"Count": 99})  # still usable: no transaction left open
        return state, doc.full_update(), seen, doc.read()

    assert apply(raw=True) == apply(raw=False)
    state, _, seen, values = apply(raw=True)
    assert state == source.state()
    assert seen["Count"] == 12 and seen["Name"] == "A2"  # the tracker saw the raw commit
    assert values["Count"] == 99
