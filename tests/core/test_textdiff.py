"""Character edits between two texts: exact always, near-linear for what people type."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core.textdiff import CHARACTER_DIFF_LIMIT, text_edits
from tests.helpers.updates import exchange, two_replicas


def apply(old: str, edits: list[tuple[int, int, str]]) -> str:
    out, at = [], 0
    for start, end, insert in edits:
        assert at <= start <= end <= len(old)  # ascending, non-overlapping
        out += [old[at:start], insert]
        at = end
    return "".join([*out, old[at:]])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_applying_the_edits_gives_the_new_text(old: str, new: str) -> None:
    edits = text_edits(old, new)
    assert apply(old, edits) == new
    assert (edits == []) == (old == new)


LINES = st.lists(st.sampled_from(["alpha ", "beta ", "gamma\n", "delta\n", "ε\n", "🎉 "]))


@settings(max_examples=60, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=3), st.integers(1, 400))
def test_long_texts_past_the_character_limit_are_still_exact(
    parts: list[list[str]], repeat: int
) -> None:
    old = "".join(parts[0]) * repeat
    new = "".join(parts[-1]) * repeat + "".join(parts[len(parts) // 2])
    assert apply(old, text_edits(old, new)) == new


def test_a_one_place_edit_of_a_megabyte_is_one_edit_of_that_place() -> None:
    old = ("The quick brown fox jumps over the lazy dog.\n" * 25_000)[:1_000_000]
    new = old[:600_000] + "NEW" + old[600_001:]
    [(start, end, insert)] = text_edits(old, new)
    assert (start, end, insert) == (600_000, 600_001, "NEW")


def test_distant_edits_of_a_long_text_stay_small_edits() -> None:
    old = "".join(f"line {n} of a long text\n" for n in range(20_000))
    new = old.replace("line 10 of", "line ten of").replace("line 19000 of", "line 19k of")
    edits = text_edits(old, new)
    assert apply(old, edits) == new
    assert sum(end - start + len(insert) for start, end, insert in edits) < 20
    assert len(old) + len(new) > 100 * CHARACTER_DIFF_LIMIT  # the long path was taken


def test_concurrent_edits_far_apart_in_a_long_text_both_survive() -> None:
    text = "".join(f"paragraph {n}: some words here.\n" for n in range(5_000))
    a, b = two_replicas({"Notes": text})
    # One write touching two far places on a, one in between on b.
    a.write({"Notes": text.replace("paragraph 3:", "PARAGRAPH 3:").replace("h 4900:", "h 4.9k:")})
    b.write({"Notes": text.replace("paragraph 2500:", "paragraph 2,500:")})
    exchange(a, b)
    merged = a.read()["Notes"]
    assert merged == b.read()["Notes"]
    assert "PARAGRAPH 3:" in merged and "h 4.9k:" in merged and "paragraph 2,500:" in merged
    assert len(merged) == len(text) + 1


def test_a_one_character_edit_of_a_megabyte_text_completes_through_the_client(
    tmp_path: object,
) -> None:
    """Through the public API, in a process of its own (it used to run for hours; the
    timeout only guards against that hang: the speed is measured in benchmarks/)."""
    script = f"""
import crdtsync
schema = crdtsync.Schema.from_dict(
    {{"objects": {{"Note": {{"sharing": "read_write", "fields": {{"Body": {{"type": "text"}}}}}}}}}}
)
client = crdtsync.Client(store={str(tmp_path) + "/s.sqlite3"!r}, schema=schema)
text = ("lorem ipsum dolor sit amet " * 40 + "\\n") * 920
rid = client.create("Note", {{"Body": text}})
text = text[:500_000] + "x" + text[500_000:]
client.update(rid, {{"Body": text}})
assert client.get(rid).fields["Body"] == text
[change] = client.pending()
print("ok", len(text))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "994521"]  # 920 lines of 1,081 characters, plus one
