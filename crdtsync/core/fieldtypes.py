"""Field types: how a user's value is checked, stored in a CRDT map, and read back.

Each type turns an application value into its *canonical* Python value
(:meth:`FieldType.coerce`), that into a value a ``pycrdt.Map`` stores without loss
(:meth:`FieldType.encode`), and a stored value back into the canonical one
(:meth:`FieldType.decode`). ``decode(encode(coerce(v))) == coerce(v)`` exactly, and
of the same type, for every type:

=========== ====================== =================================================
type        canonical value        stored as
=========== ====================== =================================================
string      ``str``                string
text        ``str``                ``pycrdt.Text`` (collaborative, merges by character)
integer     ``int`` (signed 64-bit) number while ``|n| <= 2**53 - 1`` (pycrdt reads it
                                   back as a float; ``decode`` restores the ``int``);
                                   beyond that a decimal string, because Yjs peers
                                   (and yrs near ``2**63``) would round it
number      ``float`` (finite)     number
decimal     ``decimal.Decimal``    canonical string, e.g. ``"0.10"`` (keeps the exponent)
boolean     ``bool``               boolean
date        ``datetime.date``      ISO 8601 string ``"2026-11-25"``
datetime    aware ``datetime``     ISO 8601 string with offset
picklist    ``str``                string
email       ``str``                string
reference   ``str`` (record id)    string
owner       ``str`` (user name)    string
=========== ====================== =================================================

``None`` means "no value" for every type and is stored as null.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer a JavaScript number holds exactly
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class FieldType(enum.Enum):
    """The field types a schema can declare."""

    STRING = "string"
    TEXT = "text"
    INTEGER = "integer"
    NUMBER = "number"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    PICKLIST = "picklist"
    EMAIL = "email"
    REFERENCE = "reference"
    OWNER = "owner"

    # Members are singletons compared by identity: hashed by identity too (``Enum``'s own
    # ``__hash__`` is a Python function, run on every lookup in a table keyed by type).
    __hash__ = object.__hash__

    @property
    def is_textual(self) -> bool:
        """Types whose canonical value is a ``str``."""
        return self in _TEXTUAL

    @property
    def is_ordered(self) -> bool:
        """Types that accept ``min`` / ``max``."""
        return self in _ORDERED

    def coerce(self, value: object) -> Any:
        """Return the canonical value for ``value``, or raise ``ValueError`` saying why not.

        ``None`` is returned unchanged; constraints are checked by the schema, not here.
        """
        if value is None:
            return None
        return _COERCE[self](value)

    def encode(self, value: Any) -> Any:
        """Turn a canonical value into what the CRDT map stores (``text`` excepted)."""
        if value is None:
            return None
        if self is _INTEGER and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return str(value)
        if self is _DECIMAL:
            return str(value)
        if self in (_DATE, _DATETIME):
            return value.isoformat()
        return value

    def stored_form_problem(self, stored: object) -> str | None:
        """Why ``stored`` is not in the form :meth:`encode` writes (``None``: it is).

        Readers are lenient (:meth:`decode` takes a small integer written as a float, as
        pycrdt and Yjs hand it back); the relay refuses a *write* in another form, so
        every replica reads the same value the same way. Integers: a number up to
        ``2**53 - 1`` in size (a float with no fraction included, as Yjs writes numbers
        past ``2**31``), a decimal string beyond it. Decimals: a string exactly as
        ``str(Decimal)`` writes it. Dates: ``YYYY-MM-DD``.
        """
        if stored is None:
            return None
        if self is _INTEGER:
            if isinstance(stored, str) and _INTEGER_TEXT.fullmatch(stored):
                if abs(int(stored)) <= MAX_SAFE_INTEGER:
                    return (
                        f"an integer up to 2**53 - 1 is stored as a number, not as the string "
                        f"{stored!r}"
                    )
            elif (
                isinstance(stored, int | float)
                and not isinstance(stored, bool)
                and math.isfinite(stored)
                and abs(stored) > MAX_SAFE_INTEGER
            ):
                return (
                    "an integer beyond 2**53 - 1 is stored as a decimal string (e.g. "
                    f"'9007199254740993'), not as a number, which loses digits: got {stored!r}"
                )
        elif self is _DECIMAL:
            if not isinstance(stored, str):
                return (
                    "a decimal is stored as a string in str(Decimal) form, e.g. '12.50' (a "
                    f"number would be inexact): got {_type_name(stored)} {stored!r}"
                )
            try:
                canonical = str(Decimal(stored))
            except InvalidOperation:
                return None  # not a decimal at all: decode says so
            if canonical != stored:
                return (
                    f"a decimal is stored as str(Decimal) writes it: {canonical!r}, not {stored!r}"
                )
        elif self is _DATE and isinstance(stored, str):
            try:
                canonical = dt.date.fromisoformat(stored).isoformat()
            except ValueError:
                return None
            if canonical != stored:
                return f"a date is stored as 'YYYY-MM-DD': {canonical!r}, not {stored!r}"
        return None

    def decode(self, stored: object) -> Any:
        """Turn a stored value back into the canonical one; ``ValueError`` if it cannot be."""
        if stored is None:
            return None
        if self is _INTEGER:
            if isinstance(stored, float):
                if not stored.is_integer():
                    raise ValueError(f"expected an integer, found {stored!r}")
                return _coerce_integer(int(stored))
            if isinstance(stored, str):
                if not _INTEGER_TEXT.fullmatch(stored):
                    raise ValueError(f"expected an integer, found {stored!r}")
                return _coerce_integer(int(stored))
        return _COERCE[self](stored)


# The members the methods above compare with, as module constants: on CPython 3.11 every
# ``FieldType.X`` lookup goes through ``EnumType.__getattr__``'s slow path, and the relay
# encodes and decodes a value for every change it decides.
_INTEGER, _DECIMAL = FieldType.INTEGER, FieldType.DECIMAL
_DATE, _DATETIME = FieldType.DATE, FieldType.DATETIME

_TEXTUAL = frozenset(
    {
        FieldType.STRING,
        FieldType.TEXT,
        FieldType.PICKLIST,
        FieldType.EMAIL,
        FieldType.REFERENCE,
        FieldType.OWNER,
    }
)
_ORDERED = frozenset(
    {FieldType.INTEGER, FieldType.NUMBER, FieldType.DECIMAL, FieldType.DATE, FieldType.DATETIME}
)


def _type_name(value: object) -> str:
    return type(value).__name__


def _coerce_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"cannot be stored: it holds an unpaired surrogate ({value[exc.start]!r} at "
                f"position {exc.start}), which is not a character; fix how the text was decoded"
            ) from None
    return value


def _coerce_email(value: object) -> str:
    text = _coerce_str(value)
    if not _EMAIL.match(text):
        raise ValueError(f"{text!r} is not an email address")
    return text


def _coerce_id(value: object) -> str:
    text = _coerce_str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _coerce_integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {_type_name(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value} is outside the signed 64-bit range")
    return value


def _coerce_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _coerce_decimal(value: object) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError(
            f"expected a Decimal, int or numeric string, got {_type_name(value)} "
            "(floats are inexact)"
        )
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int | str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError(f"expected a Decimal, int or numeric string, got {_type_name(value)}")
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal")
    return number


def _coerce_boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)}")
    return value


def _coerce_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        raise ValueError("expected a date, got a datetime")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO date (YYYY-MM-DD)") from None
    raise ValueError(f"expected a date, got {_type_name(value)}")


def _coerce_datetime(value: object) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 datetime") from None
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected a datetime, got {_type_name(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value


_COERCE = {
    FieldType.STRING: _coerce_str,
    FieldType.TEXT: _coerce_str,
    FieldType.INTEGER: _coerce_integer,
    FieldType.NUMBER: _coerce_number,
    FieldType.DECIMAL: _coerce_decimal,
    FieldType.BOOLEAN: _coerce_boolean,
    FieldType.DATE: _coerce_date,
    FieldType.DATETIME: _coerce_datetime,
    FieldType.PICKLIST: _coerce_str,
    FieldType.EMAIL: _coerce_email,
    FieldType.REFERENCE: _coerce_id,
    FieldType.OWNER: _coerce_id,
}
