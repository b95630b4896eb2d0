"""The character edits that turn one text into another, in time that stays near-linear.

A ``text`` field is written as the edits from its current text to the new one, so that
concurrent edits elsewhere in the text survive (see :mod:`crdtsync.core.record`). Finding the
fewest edits is quadratic in general; an editor's change is almost always one place, or
a few. :func:`text_edits` therefore:

1. trims the common prefix and suffix (a one-place edit of a megabyte text ends here,
   in a few comparisons of whole slices);
2. diffs what is left by characters when it is short;
3. otherwise diffs it by lines (by words when it has too few lines), then each changed
   run by characters when that run is short, and replaces a long changed run whole.

Step 3 is bounded: a change that is long *and* scattered becomes fewer, larger edits.
The result is always exact (applying the edits gives the new text); only how finely
concurrent edits inside a long rewritten run interleave with it can differ.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

#: Longest stretch (old plus new characters) diffed character by character: difflib's
#: cost grows with the product of the lengths, so this bounds one diff to milliseconds.
CHARACTER_DIFF_LIMIT = 2_000
#: Fewer lines than this and a long stretch is diffed by words instead.
MIN_LINES = 8

_WORDS = re.compile(r"\s*\S+|\s+")

Edit = tuple[int, int, str]  #: replace ``old[start:end]`` with the string


def text_edits(old: str, new: str) -> list[Edit]:
    """Edits of ``old`` (ascending, non-overlapping character ranges) giving ``new``."""
    if old == new:
        return []
    start = _common_prefix(old, new)
    tail = _common_prefix(old[start:][::-1], new[start:][::-1])
    a, b = old[start : len(old) - tail], new[start : len(new) - tail]
    return [(start + i, start + j, text) for i, j, text in _edits(a, b)]


def _edits(a: str, b: str) -> list[Edit]:
    if len(a) + len(b) <= CHARACTER_DIFF_LIMIT:
        return _character_edits(a, b)
    tokens_a, tokens_b = a.splitlines(keepends=True), b.splitlines(keepends=True)
    if min(len(tokens_a), len(tokens_b)) < MIN_LINES:
        tokens_a, tokens_b = _WORDS.findall(a), _WORDS.findall(b)
    if len(tokens_a) < 2 and len(tokens_b) < 2:
        return [(0, len(a), b)]
    edits: list[Edit] = []
    starts_a, starts_b = _starts(tokens_a), _starts(tokens_b)
    matcher = difflib.SequenceMatcher(None, tokens_a, tokens_b)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        x1, x2, y1, y2 = starts_a[i1], starts_a[i2], starts_b[j1], starts_b[j2]
        run_a, run_b = a[x1:x2], b[y1:y2]
        if len(run_a) + len(run_b) <= CHARACTER_DIFF_LIMIT:
            edits.extend((x1 + i, x1 + j, text) for i, j, text in _character_edits(run_a, run_b))
        else:
            edits.append((x1, x2, run_b))
    return edits


def _character_edits(a: str, b: str) -> list[Edit]:
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(i1, i2, b[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _starts(tokens: Sequence[str]) -> list[int]:
    """Where each token starts, and the total length last."""
    starts = [0]
    for token in tokens:
        starts.append(starts[-1] + len(token))
    return starts


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix, by binary search over whole-slice comparisons (each
    a memory comparison in C): O(n log n) bytes compared, a few milliseconds for 1 MB."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
