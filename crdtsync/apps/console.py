"""Plain-text rendering of a replica's state for terminals (demos, the CLI)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crdtsync.client.model import PendingChange, Record, Status


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def short(value: Any, width: int = 24) -> str:
    text = "∅" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def pending_table(changes: Sequence[PendingChange]) -> str:
    """The Pending Changes list: record, object, kind, changed fields old → new, status."""
    if not changes:
        return "(no pending changes)"
    rows = []
    for change in changes:
        fields = ", ".join(
            f"{name}: {short(c.old, 12)} → {short(c.new, 16)}" for name, c in change.changes.items()
        )
        detail = change.problem.describe() if change.problem else change.note
        rows.append(
            (change.record_id[:8], change.object, change.kind, change.status, fields or "-", detail)
        )
    return table(("record", "object", "kind", "status", "changes", "details"), rows)


def records_table(records: Sequence[Record], fields: Sequence[str]) -> str:
    """Records with their status indicator and the chosen fields."""
    if not records:
        return "(no records)"
    rows = [
        (r.id[:8], r.object, r.status, *(short(r.fields.get(name)) for name in fields))
        for r in records
    ]
    return table(("record", "object", "status", *fields), rows)


def summary_table(summary: Mapping[str, Mapping[str, int]]) -> str:
    """Per-object counts per status (the object home indicators)."""
    statuses = tuple(status.value for status in Status)
    rows = [(name, *(counts.get(s, 0) for s in statuses)) for name, counts in summary.items()]
    return table(("object", *statuses), rows)
