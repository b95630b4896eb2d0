"""Form input (strings from the browser) to the values the :class:`~crdtsync.Client` takes.

A browser sends every field as text. :func:`parse_form` turns that text into what the
schema expects (``"120"`` into ``120`` for an integer, ``""`` into ``None``…) and
reports text that cannot be a value of the field's type as a :class:`FieldError` on
that field. Everything else — required fields, lengths, picklists, ranges, custom
rules — is left to the schema, so the app shows exactly the errors the library raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from crdtsync.core.exceptions import FieldError
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.schema import ObjectSpec

_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def parse_field(field_type: FieldType, raw: str) -> Any:
    """The value for one field from its form text; ``ValueError`` says why it is not one.

    Empty text is "no value" (``None``), except for a ``text`` field, whose empty text
    is kept so that clearing it is a character diff like any other edit.
    """
    text = raw if field_type is FieldType.TEXT else raw.strip()
    if text == "":
        return "" if field_type is FieldType.TEXT else None
    if field_type is FieldType.INTEGER:
        if not _WHOLE_NUMBER.fullmatch(text):
            raise ValueError(f"{text!r} is not a whole number")
        return int(text)
    if field_type is FieldType.NUMBER:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
        return number
    if field_type is FieldType.BOOLEAN:
        if text not in ("true", "false"):
            raise ValueError("choose Yes or No")
        return text == "true"
    return text  # decimal, date, datetime and the string types: the schema checks them


def parse_form(
    spec: ObjectSpec, raw: Mapping[str, object]
) -> tuple[dict[str, Any], list[FieldError]]:
    """Parse every submitted field of ``spec``; return ``(values, errors)``.

    A name that is not a field of the object, or a value that is not text, is an error
    on that name (a well-behaved page never sends one).
    """
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, text in raw.items():
        field = spec.fields.get(name)
        if field is None:
            errors.append(FieldError(name, f"no such field on {spec.name}"))
        elif not isinstance(text, str):
            errors.append(FieldError(name, "expected text from the form"))
        else:
            try:
                values[name] = parse_field(field.type, text)
            except ValueError as exc:
                errors.append(FieldError(name, str(exc)))
    return values, errors


def changed_values(
    spec: ObjectSpec, current: Mapping[str, Any], values: Mapping[str, Any]
) -> dict[str, Any]:
    """The values that differ from ``current`` once canonical (so an untouched
    ``"1250000.00"`` does not count as a change of ``Decimal("1250000.00")``, nor an
    empty text of a text field that had none). Values the schema refuses are kept:
    writing them raises the error to show."""
    changed: dict[str, Any] = {}
    for name, value in values.items():
        field = spec.fields.get(name)
        if field is None:
            changed[name] = value
            continue
        canonical, problems = field.check(value)
        old = current.get(name)
        if problems or not (canonical == old or (canonical in ("", None) and old in ("", None))):
            changed[name] = value
    return changed
