"""Custom validation rules of the example CRM app, named from ``app.toml``.

A rule receives a whole record's canonical values and returns a list of
:class:`crdtsync.FieldError`; an empty list means the record passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crdtsync import FieldError


def email_or_phone(values: Mapping[str, Any]) -> list[FieldError]:
    """A contact must be reachable: it needs an Email or a Phone."""
    if values.get("Email") or values.get("Phone"):
        return []
    return [FieldError("Email", "a contact needs an Email or a Phone")]


def close_date_when_won(values: Mapping[str, Any]) -> list[FieldError]:
    """A won or lost opportunity must say when it closed."""
    if values.get("Stage") in ("Closed Won", "Closed Lost") and values.get("CloseDate") is None:
        return [FieldError("CloseDate", "a closed opportunity needs a CloseDate")]
    return []
