"""Every field type round-trips exactly through a real ``pycrdt.Map``.

For each type, ``decode(<value read back from a pycrdt.Map after storing
encode(coerce(v))>)`` must equal the canonical value *and* have the same Python type.
The value is read back both from the document it was written to and from a peer
document that received it as a binary update, so the stored encoding is really used.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import pycrdt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crdtsync.core.fieldtypes import INT64_MAX, INT64_MIN, FieldType


def _store_and_read_back(field_type: FieldType, canonical: Any) -> tuple[Any, Any]:
    """Store ``canonical`` in a pycrdt map; return what the map and a peer's map hold."""
    doc = pycrdt.Doc()
    fields = doc.get("fields", type=pycrdt.Map)
    if field_type is FieldType.TEXT and canonical is not None:
        fields["value"] = pycrdt.Text(canonical)
    else:
        fields["value"] = field_type.encode(canonical)
    peer = pycrdt.Doc()
    peer_fields = peer.get("fields", type=pycrdt.Map)
    peer.apply_update(doc.get_update())

    def raw(stored: Any) -> Any:
        return str(stored) if isinstance(stored, pycrdt.Text) else stored

    return raw(fields["value"]), raw(peer_fields["value"])


def roundtrip(field_type: FieldType, value: object) -> tuple[Any, Any]:
    """Return ``(canonical, decoded)``; asserts the local and peer reads agree."""
    canonical = field_type.coerce(value)
    local, remote = _store_and_read_back(field_type, canonical)
    decoded_local = field_type.decode(local)
    decoded_remote = field_type.decode(remote)
    assert decoded_local == decoded_remote
    assert type(decoded_local) is type(decoded_remote)
    return canonical, decoded_remote


def assert_exact_roundtrip(field_type: FieldType, value: object, expected: Any) -> Any:
    canonical, decoded = roundtrip(field_type, value)
    assert canonical == expected
    assert type(canonical) is type(expected)
    assert decoded == expected
    assert type(decoded) is type(expected)
    return decoded


# --- integer --------------------------------------------------------------------------


def test_small_int_reads_back_as_int_not_float() -> None:
    decoded = assert_exact_roundtrip(FieldType.INTEGER, 3, 3)
    assert not isinstance(decoded, float)
    assert repr(decoded) == "3"


@pytest.mark.parametrize("value", [0, 1, -1, 2**31, -(2**31) - 1, 2**53, 2**53 + 1, -(2**53) - 1])
def test_int_around_float_precision_limits_reads_back_exactly(value: int) -> None:
    assert_exact_roundtrip(FieldType.INTEGER, value, value)


def test_two_to_the_sixty_reads_back_exactly() -> None:
    assert_exact_roundtrip(FieldType.INTEGER, 2**60, 2**60)
    assert_exact_roundtrip(FieldType.INTEGER, 2**60 + 1, 2**60 + 1)


def test_int64_min_reads_back_exactly() -> None:
    assert assert_exact_roundtrip(FieldType.INTEGER, -(2**63), -(2**63)) == INT64_MIN


def test_int64_max_reads_back_exactly_on_a_peer() -> None:
    # yrs encodes 2**63 - 1 as a float32 on the wire (its float check saturates), so a
    # peer reads 9.223372036854776e18; decode must still give back 2**63 - 1 exactly.
    assert assert_exact_roundtrip(FieldType.INTEGER, 2**63 - 1, 2**63 - 1) == INT64_MAX


def test_integer_decode_never_returns_a_value_outside_int64() -> None:
    # A stored float that is an integer but outside the signed 64-bit range is not a
    # value the integer type can hold: it must not be returned as if it were.
    decoded: object
    try:
        decoded = FieldType.INTEGER.decode(float(2**63))
    except ValueError:
        return
    assert INT64_MIN <= decoded <= INT64_MAX  # type: ignore[operator]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int_outside_int64_is_rejected_mentioning_64_bit(value: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        FieldType.INTEGER.coerce(value)


def test_bool_is_rejected_for_integer() -> None:
    with pytest.raises(ValueError, match="integer"):
        FieldType.INTEGER.coerce(True)
    with pytest.raises(ValueError, match="integer"):
        FieldType.INTEGER.coerce(False)


@pytest.mark.parametrize("value", [3.0, "3", Decimal(3)])
def test_non_int_is_rejected_for_integer(value: object) -> None:
    with pytest.raises(ValueError, match="expected an integer"):
        FieldType.INTEGER.coerce(value)


def test_integer_decode_rejects_fractional_stored_float() -> None:
    with pytest.raises(ValueError, match="integer"):
        FieldType.INTEGER.decode(3.5)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
@example(INT64_MIN)
@example(INT64_MAX)
def test_any_int64_round_trips_exactly(value: int) -> None:
    assert_exact_roundtrip(FieldType.INTEGER, value, value)


# --- number ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.1, -2.5, 1e300, 5e-324, 0.0, 1 / 3])
def test_float_number_reads_back_as_same_float(value: float) -> None:
    assert_exact_roundtrip(FieldType.NUMBER, value, value)


def test_int_given_for_number_becomes_float() -> None:
    assert_exact_roundtrip(FieldType.NUMBER, 3, 3.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected_for_number(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        FieldType.NUMBER.coerce(value)


@pytest.mark.parametrize("value", [True, "1.5", Decimal("1.5")])
def test_non_number_is_rejected_for_number(value: object) -> None:
    with pytest.raises(ValueError, match="expected a number"):
        FieldType.NUMBER.coerce(value)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_round_trips_exactly(value: float) -> None:
    decoded = assert_exact_roundtrip(FieldType.NUMBER, value, value)
    assert math.copysign(1.0, decoded) == math.copysign(1.0, value)


# --- decimal --------------------------------------------------------------------------


def test_decimal_keeps_trailing_zero_exponent() -> None:
    decoded = assert_exact_roundtrip(FieldType.DECIMAL, Decimal("0.10"), Decimal("0.10"))
    assert str(decoded) == "0.10"
    assert decoded.as_tuple().exponent == -2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("19.990", "19.990"),
        ("-0.000001", "-0.000001"),
        (42, "42"),
        ("1E+5", "1E+5"),
        (Decimal("123456789012345678901234567890.123456789"), None),
    ],
)
def test_decimal_round_trips_with_same_string(value: object, expected: str | None) -> None:
    canonical, decoded = roundtrip(FieldType.DECIMAL, value)
    assert type(decoded) is Decimal
    assert str(decoded) == str(canonical)
    assert decoded.as_tuple() == canonical.as_tuple()
    if expected is not None:
        assert str(decoded) == expected


def test_float_is_rejected_for_decimal_as_inexact() -> None:
    with pytest.raises(ValueError, match="inexact"):
        FieldType.DECIMAL.coerce(0.1)


def test_bool_is_rejected_for_decimal() -> None:
    with pytest.raises(ValueError, match="Decimal"):
        FieldType.DECIMAL.coerce(True)


@pytest.mark.parametrize("value", ["abc", "", "1,5"])
def test_unparsable_string_is_rejected_for_decimal(value: str) -> None:
    with pytest.raises(ValueError, match="not a decimal number"):
        FieldType.DECIMAL.coerce(value)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), "-Infinity", "nan"])
def test_non_finite_decimal_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="finite"):
        FieldType.DECIMAL.coerce(value)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_any_finite_decimal_round_trips_with_exponent(value: Decimal) -> None:
    canonical, decoded = roundtrip(FieldType.DECIMAL, value)
    assert type(decoded) is Decimal
    assert decoded == value
    assert str(decoded) == str(value)
    assert decoded.as_tuple() == value.as_tuple()
    assert canonical.as_tuple() == value.as_tuple()


# --- boolean --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_boolean_reads_back_as_bool(value: bool) -> None:
    decoded = assert_exact_roundtrip(FieldType.BOOLEAN, value, value)
    assert decoded is value


@pytest.mark.parametrize("value", [1, 0, "true", 1.0])
def test_non_bool_is_rejected_for_boolean(value: object) -> None:
    with pytest.raises(ValueError, match="true or false"):
        FieldType.BOOLEAN.coerce(value)


# --- date / datetime ------------------------------------------------------------------


def test_date_reads_back_as_date() -> None:
    decoded = assert_exact_roundtrip(FieldType.DATE, dt.date(2026, 11, 25), dt.date(2026, 11, 25))
    assert type(decoded) is dt.date
    assert FieldType.DATE.encode(decoded) == "2026-11-25"


def test_date_accepts_iso_string() -> None:
    assert_exact_roundtrip(FieldType.DATE, "2024-02-29", dt.date(2024, 2, 29))


def test_datetime_is_rejected_for_date() -> None:
    with pytest.raises(ValueError, match="datetime"):
        FieldType.DATE.coerce(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


@pytest.mark.parametrize("value", ["2026-13-01", "yesterday", 20260101])
def test_bad_date_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="date"):
        FieldType.DATE.coerce(value)


@pytest.mark.parametrize(
    "tz",
    [
        dt.UTC,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(dt.timedelta(hours=-8)),
    ],
)
def test_aware_datetime_keeps_instant_and_offset(tz: dt.tzinfo) -> None:
    value = dt.datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=tz)
    decoded = assert_exact_roundtrip(FieldType.DATETIME, value, value)
    assert type(decoded) is dt.datetime
    assert decoded.utcoffset() == value.utcoffset()
    assert decoded.astimezone(dt.UTC) == value.astimezone(dt.UTC)
    assert decoded.isoformat() == value.isoformat()


def test_plus_0530_datetime_keeps_wall_clock_and_offset() -> None:
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    value = dt.datetime(2026, 1, 1, 9, 0, tzinfo=india)
    _, decoded = roundtrip(FieldType.DATETIME, value)
    assert decoded.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert (decoded.hour, decoded.minute) == (9, 0)
    assert decoded == dt.datetime(2026, 1, 1, 3, 30, tzinfo=dt.UTC)


def test_datetime_accepts_aware_iso_string() -> None:
    assert_exact_roundtrip(
        FieldType.DATETIME,
        "2026-01-01T12:00:00+02:00",
        dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    )


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FieldType.DATETIME.coerce(dt.datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        FieldType.DATETIME.coerce("2026-01-01T12:00:00")


@pytest.mark.parametrize("value", ["not a time", dt.date(2026, 1, 1), 1700000000])
def test_non_datetime_is_rejected_for_datetime(value: object) -> None:
    with pytest.raises(ValueError, match="datetime"):
        FieldType.DATETIME.coerce(value)


# --- textual types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "field_type",
    [FieldType.STRING, FieldType.TEXT, FieldType.PICKLIST],
)
@pytest.mark.parametrize("value", ["", "hello", "Zürich — 東京 🎉👩‍👩‍👧", "line\nbreak"])
def test_textual_value_reads_back_as_same_str(field_type: FieldType, value: str) -> None:
    assert_exact_roundtrip(field_type, value, value)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.text())
def test_any_string_round_trips_exactly(value: str) -> None:
    assert_exact_roundtrip(FieldType.STRING, value, value)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.text())
def test_any_text_round_trips_exactly_through_pycrdt_text(value: str) -> None:
    assert_exact_roundtrip(FieldType.TEXT, value, value)


@pytest.mark.parametrize(
    "field_type",
    [
        FieldType.STRING,
        FieldType.TEXT,
        FieldType.PICKLIST,
        FieldType.EMAIL,
        FieldType.REFERENCE,
        FieldType.OWNER,
    ],
)
@pytest.mark.parametrize("value", [1, b"bytes", True])
def test_non_str_is_rejected_for_textual_types(field_type: FieldType, value: object) -> None:
    with pytest.raises(ValueError, match="expected a string"):
        field_type.coerce(value)


@pytest.mark.parametrize("value", ["ada@example.com", "a.b+tag@sub.example.co.uk", "ü@bücher.de"])
def test_valid_email_round_trips(value: str) -> None:
    assert_exact_roundtrip(FieldType.EMAIL, value, value)


@pytest.mark.parametrize(
    "value", ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "a@b@c.com"]
)
def test_invalid_email_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="not an email address"):
        FieldType.EMAIL.coerce(value)


@pytest.mark.parametrize("field_type", [FieldType.REFERENCE, FieldType.OWNER])
def test_reference_and_owner_round_trip_ids(field_type: FieldType) -> None:
    assert_exact_roundtrip(field_type, "rec-0001", "rec-0001")
    assert_exact_roundtrip(field_type, "ünïcødé-🙂", "ünïcødé-🙂")


@pytest.mark.parametrize("field_type", [FieldType.REFERENCE, FieldType.OWNER])
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_reference_and_owner_reject_empty_strings(field_type: FieldType, value: str) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        field_type.coerce(value)


# --- None and type metadata -----------------------------------------------------------


@pytest.mark.parametrize("field_type", list(FieldType))
def test_none_means_no_value_for_every_type(field_type: FieldType) -> None:
    assert field_type.coerce(None) is None
    assert field_type.encode(None) is None
    assert field_type.decode(None) is None
    doc = pycrdt.Doc()
    fields = doc.get("fields", type=pycrdt.Map)
    fields["value"] = field_type.encode(None)
    assert field_type.decode(fields["value"]) is None


def test_textual_and_ordered_type_sets() -> None:
    assert {t for t in FieldType if t.is_textual} == {
        FieldType.STRING,
        FieldType.TEXT,
        FieldType.PICKLIST,
        FieldType.EMAIL,
        FieldType.REFERENCE,
        FieldType.OWNER,
    }
    assert {t for t in FieldType if t.is_ordered} == {
        FieldType.INTEGER,
        FieldType.NUMBER,
        FieldType.DECIMAL,
        FieldType.DATE,
        FieldType.DATETIME,
    }


@pytest.mark.parametrize(
    ("field_type", "stored"),
    [
        (FieldType.INTEGER, 5),
        (FieldType.INTEGER, 5.0),  # how pycrdt and Yjs hand small integers back
        (FieldType.INTEGER, float(2**40)),  # Yjs writes numbers past 2**31 as floats
        (FieldType.INTEGER, "9007199254740993"),
        (FieldType.INTEGER, None),
        (FieldType.DECIMAL, "0.10"),
        (FieldType.DECIMAL, "1E+3"),
        (FieldType.DATE, "2026-11-25"),
        (FieldType.DATETIME, "2026-11-25T09:30:00Z"),  # any ISO 8601 with an offset
        (FieldType.STRING, "5"),
    ],
)
def test_values_in_their_stored_form_pass(field_type: FieldType, stored: object) -> None:
    assert field_type.stored_form_problem(stored) is None


@pytest.mark.parametrize(
    ("field_type", "stored", "expected"),
    [
        (FieldType.INTEGER, "5", "stored as a number, not as the string '5'"),
        (FieldType.INTEGER, 2**53, "stored as a decimal string"),
        (FieldType.INTEGER, float(2**60), "stored as a decimal string"),
        (FieldType.DECIMAL, 1.5, "a decimal is stored as a string"),
        (FieldType.DECIMAL, "1.50 ", "'1.50', not '1.50 '"),
        (FieldType.DATE, "20261125", "'2026-11-25', not '20261125'"),
    ],
)
def test_values_in_another_form_say_which_form_is_expected(
    field_type: FieldType, stored: object, expected: str
) -> None:
    problem = field_type.stored_form_problem(stored)
    assert problem is not None and expected in problem
