"""Editing a long text: one character typed into the middle of a ``text`` field.

``text_edit`` measures, for texts of 20,000 and 80,000 characters and of
``text_chars`` (1,000,000 by default), the milliseconds of one
:meth:`crdtsync.Client.update` that inserts one character in the middle (schema check,
character diff against the current text, CRDT write, SQLite commit of the record and
its pending change), and of the character diff alone (:func:`crdtsync.core.textdiff.text_edits`).
The text is prose in lines; each size is edited ``TEXT_EDITS`` times, the median kept.
Both stay near-linear in the text's length: what was quadratic (2 s at 20,000
characters, minutes past 80,000) is a few milliseconds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import crdtsync
from crdtsync.core.textdiff import text_edits

from .common import Figures, Size

NAME = "text_edit"
SIZES = (Size("text_chars", 1_000_000, 200_000, "text_edit: characters of the longest text"),)
TEXT_EDITS = 5
LINE = "The quick brown fox jumps over the lazy dog; offline edits merge later. "

SCHEMA = crdtsync.Schema.from_dict(
    {"objects": {"Note": {"sharing": "read_write", "fields": {"Body": {"type": "text"}}}}}
)


def _prose(chars: int) -> str:
    line = LINE * 2 + "\n"
    return (line * (chars // len(line) + 1))[:chars]


def run(options: Any) -> Figures:
    """one character typed into the middle of a long text: ms per update and per diff"""
    figures: Figures = {}
    for chars in sorted({20_000, 80_000, options.text_chars}):
        text = _prose(chars)
        with tempfile.TemporaryDirectory() as directory:
            client = crdtsync.Client(store=str(Path(directory) / "s.sqlite3"), schema=SCHEMA)
            try:
                record_id = client.create("Note", {"Body": text})
                updates, diffs = [], []
                for n in range(TEXT_EDITS):
                    middle = len(text) // 2 + n
                    edited = text[:middle] + "x" + text[middle:]
                    started = time.perf_counter()
                    text_edits(text, edited)
                    diffs.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    client.update(record_id, {"Body": edited})
                    updates.append(time.perf_counter() - started)
                    text = edited
                record = client.get(record_id)
                assert record is not None and record.fields["Body"] == text
            finally:
                client.close()
        label = f"{chars // 1000}k" if chars < 1_000_000 else f"{chars / 1e6:g}M"
        figures[f"update_ms_{label}"] = statistics.median(updates) * 1000
        figures[f"diff_ms_{label}"] = statistics.median(diffs) * 1000
    return figures
