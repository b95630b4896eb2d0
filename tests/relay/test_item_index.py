"""ItemIndex attributes common deltas on a fast path with exactly the general result.

``ItemIndex._attribute`` first tries ``_attribute_common`` (items that each follow an
item the index already holds) and falls back to ``_attribute_general``. Attribution
decides which field a pushed item writes, so the two must never differ: here every
update is analysed by an index that uses the fast path and by one that only uses the
general procedure, and the anatomies, the per-struct owners and the indexes' states
after ``commit`` are compared. The bookkeeping shortcuts (``_Ranges.add`` appending,
``_DeleteSet.add`` extending its last range) are checked against the original
insert-and-merge algorithms.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import pycrdt
from crdtsync_server.anatomy import ItemIndex, _DeleteSet, _Ranges
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.core.exceptions import UpdateDecodeError
from crdtsync.core.yupdate import ParsedUpdate, parse_update

FUZZ_CORPUS = Path(__file__).resolve().parents[1] / "faults" / "fuzz" / "corpus"


class GeneralIndex(ItemIndex):
    """An index that never takes the fast path."""

    def _attribute(self, parsed: ParsedUpdate) -> Any:
        return self._attribute_general(parsed)


def index_state(index: ItemIndex) -> tuple[Any, Any]:
    clients = {
        client: (list(r.starts), list(r.ends), list(r.owners))
        for client, r in index._clients.items()
    }
    return clients, {client: list(r) for client, r in index._deleted._ranges.items()}


def twin_indexes(*updates: bytes) -> tuple[ItemIndex, GeneralIndex]:
    fast, general = ItemIndex(), GeneralIndex()
    for update in updates:
        fast.commit(parse_update(update))
        general.commit(parse_update(update))
    assert index_state(fast) == index_state(general)
    return fast, general


def assert_same_attribution(fast: ItemIndex, general: ItemIndex, update: bytes) -> bool:
    """Analyse and commit ``update`` on both indexes; True if the fast path took it."""
    try:
        parsed = parse_update(update)
    except UpdateDecodeError:
        return False
    took_fast = fast._attribute_common(parsed) is not None
    anatomy, owners = fast._attribute(parsed)
    assert (anatomy, owners) == general._attribute_general(parsed), update.hex()
    assert fast.project(update, frozenset({"a", "t"})) == general.project(
        update, frozenset({"a", "t"})
    )
    assert fast.analyse(parsed) == general.analyse(parsed) == anatomy
    fast.commit(parsed)
    general.commit(parsed)
    assert index_state(fast) == index_state(general), update.hex()
    return took_fast


def new_doc(client_id: int) -> tuple[pycrdt.Doc[Any], pycrdt.Map[Any]]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
    return doc, doc.get("fields", type=pycrdt.Map)


# --------------------------------------------------------------------------- examples


def test_a_map_overwrite_takes_the_fast_path_and_names_the_field_it_writes() -> None:
    doc, fields = new_doc(1000)
    fields.update({"a": 1, "b": "x"})
    fast, general = twin_indexes(bytes(doc.get_update()))
    for value in (2, 2.5, "y", True, None):
        state = doc.get_state()
        fields["b"] = value
        delta = bytes(doc.get_update(state))
        anatomy = fast.analyse(parse_update(delta))
        assert assert_same_attribution(fast, general, delta)
        assert dict(anatomy.written) == {"b": fields["b"]}
        assert anatomy.deleted == {"b"} and not anatomy.missing


def test_an_origin_the_index_does_not_hold_falls_back_and_is_missing() -> None:
    doc, fields = new_doc(7)
    fields["a"] = 1
    fast, general = twin_indexes(bytes(doc.get_update()))
    state = doc.get_state()
    fields["a"] = 2  # never committed to the indexes
    state2 = doc.get_state()
    fields["a"] = 3
    delta = bytes(doc.get_update(state2))
    assert not assert_same_attribution(fast, general, delta)
    assert ItemIndex().analyse(parse_update(delta)).missing
    del state


def test_a_delta_whose_item_follows_its_own_item_falls_back() -> None:
    doc, fields = new_doc(3)
    fields["t"] = pycrdt.Text("ab")
    fast, general = twin_indexes(bytes(doc.get_update()))
    state = doc.get_state()
    text = fields["t"]
    text.insert(2, "c")
    text.insert(0, "z")
    text.insert(4, "d")  # follows "c", an item of this same delta
    delta = bytes(doc.get_update(state))
    assert len(parse_update(delta).structs) > 1
    assert fast.analyse(parse_update(delta)).nested == {"t"}
    assert not assert_same_attribution(fast, general, delta)


def test_several_writers_overwriting_the_same_field_rank_like_the_general_path() -> None:
    docs = [new_doc(client) for client in (11, 2**40 + 1)]
    docs[0][1].update({"a": 0, "b": 0})
    base = bytes(docs[0][0].get_update())
    docs[1][0].apply_update(base)
    fast, general = twin_indexes(base)
    deltas = []
    for (doc, fields), value in zip(docs, (1, 2), strict=True):
        state = doc.get_state()
        fields["a"] = value
        fields["b"] = value
        deltas.append(bytes(doc.get_update(state)))
    merged = bytes(pycrdt.merge_updates(*deltas))
    assert assert_same_attribution(fast, general, merged)


# --------------------------------------------------------------------------- properties

KEYS = ("a", "b", "t")
VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
OPS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from(KEYS), VALUES),
    # ASCII: pycrdt.Text indexes by UTF-8 bytes, the cuts below by characters
    st.tuples(
        st.just("text"), st.integers(0, 2), st.sampled_from(KEYS), st.text("abc", max_size=4)
    ),
    st.tuples(st.just("insert"), st.integers(0, 2), st.sampled_from(KEYS), st.floats(0, 1)),
    st.tuples(st.just("cut"), st.integers(0, 2), st.sampled_from(KEYS), st.floats(0, 1)),
    st.tuples(st.just("drop"), st.integers(0, 2), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("pull"), st.integers(0, 2), st.just(""), st.none()),
    st.tuples(st.just("lost"), st.integers(0, 2), st.sampled_from(KEYS), VALUES),
)


def _edit(fields: pycrdt.Map[Any], kind: str, key: str, arg: Any) -> None:
    if kind in ("set", "lost"):
        fields[key] = arg
    elif kind == "text":
        fields[key] = pycrdt.Text(arg)
    elif kind == "drop":
        if key in fields:
            del fields[key]
    else:
        text = fields.get(key)
        if not isinstance(text, pycrdt.Text):
            return
        at = int(arg * len(text))
        if kind == "insert":
            text.insert(at, "xy")
        elif len(text):
            del text[min(at, len(text) - 1) : min(at + 2, len(text))]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=1, max_size=25),
    clients=st.sampled_from([(1, 2, 3), (1000, 2**33, 2**53 - 1)]),
)
def test_random_sessions_are_attributed_the_same_on_both_paths(
    ops: list[tuple[Any, ...]], clients: tuple[int, int, int]
) -> None:
    """Writers edit concurrently and push deltas against the server's state vector; a
    "lost" edit reaches the server's document but not its index (so later deltas name
    items the index lacks). The server pulls too, so deltas carry several writers."""
    server: pycrdt.Doc[Any] = pycrdt.Doc(client_id=99)
    writers = [new_doc(client) for client in clients]
    fast, general = ItemIndex(), GeneralIndex()
    for kind, who, key, arg in ops:
        doc, fields = writers[who]
        if kind == "pull":
            doc.apply_update(server.get_update(doc.get_state()))
            continue
        _edit(fields, kind, key, arg)
        delta = bytes(doc.get_update(server.get_state()))
        server.apply_update(delta)
        if kind != "lost":
            assert_same_attribution(fast, general, delta)
    # The server's full state, merged deltas and a fresh index agree as well.
    full = bytes(server.get_update())
    assert_same_attribution(*twin_indexes(), full)
    assert_same_attribution(fast, general, full)


def _session_updates() -> tuple[bytes, list[bytes]]:
    doc, fields = new_doc(1001)
    fields.update({"a": 1, "b": "x", "t": pycrdt.Text("hello")})
    base = bytes(doc.get_update())
    deltas = []
    for value in (2, "long string value", 3.25, False):
        state = doc.get_state()
        fields["a"] = value
        deltas.append(bytes(doc.get_update(state)))
    state = doc.get_state()
    fields["t"].insert(5, " world")
    deltas.append(bytes(doc.get_update(state)))
    return base, deltas


BASE, DELTAS = _session_updates()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    delta=st.sampled_from(DELTAS),
    position=st.integers(0, 40),
    removed=st.integers(0, 3),
    inserted=st.binary(max_size=4),
)
def test_mutated_deltas_are_attributed_the_same_on_both_paths(
    delta: bytes, position: int, removed: int, inserted: bytes
) -> None:
    fast, general = twin_indexes(BASE)
    assert_same_attribution(
        fast, general, delta[:position] + inserted + delta[position + removed :]
    )


def test_every_byte_change_of_a_delta_is_attributed_the_same_on_both_paths() -> None:
    taken = 0
    for delta in DELTAS:
        for pos in range(len(delta)):
            for byte in range(256):
                fast, general = twin_indexes(BASE)
                taken += assert_same_attribution(
                    fast, general, delta[:pos] + bytes([byte]) + delta[pos + 1 :]
                )
    assert taken > 100  # origin clocks and values rewritten: still on the fast path


def test_fuzz_corpus_deltas_and_their_bit_flips_are_attributed_the_same() -> None:
    seeds = [path.read_bytes()[1:] for path in (FUZZ_CORPUS / "relay_push").iterdir()]
    seeds += [path.read_bytes() for path in (FUZZ_CORPUS / "parse_update").iterdir()]
    assert len(seeds) >= 10
    for seed in seeds:
        for pos in range(len(seed)):
            for bit in (None, *range(8)):
                mutated = bytearray(seed)
                if bit is not None:
                    mutated[pos] ^= 1 << bit
                assert_same_attribution(*twin_indexes(BASE), bytes(mutated))


# --------------------------------------------------------------------------- bookkeeping


def reference_ranges_add(ranges: _Ranges, start: int, end: int, owner: Any) -> None:
    """``_Ranges.add`` before its append shortcut."""
    i = bisect.bisect_left(ranges.starts, start)
    if i < len(ranges.starts) and ranges.starts[i] == start:
        return
    ranges.starts.insert(i, start)
    ranges.ends.insert(i, end)
    ranges.owners.insert(i, owner)


def reference_delete_set_add(
    ranges_by_client: dict[int, list[tuple[int, int]]], client: int, start: int, end: int
) -> None:
    """``_DeleteSet.add`` before its shortcuts: insert, then merge everything."""
    ranges = ranges_by_client.setdefault(client, [])
    bisect.insort(ranges, (start, end))
    merged: list[tuple[int, int]] = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    ranges_by_client[client] = merged


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 40), st.integers(0, 6)), max_size=30))
def test_delete_set_add_keeps_the_same_merged_ranges_as_insert_and_merge(
    adds: list[tuple[int, int, int]],
) -> None:
    deleted = _DeleteSet()
    expected: dict[int, list[tuple[int, int]]] = {}
    for client, start, length in adds:
        deleted.add(client, start, start + length)
        reference_delete_set_add(expected, client, start, start + length)
        assert deleted._ranges == expected
        assert deleted.subtract(client, 0, 50) == reference_subtract(expected, client, 0, 50)


def reference_subtract(
    ranges_by_client: dict[int, list[tuple[int, int]]], client: int, start: int, end: int
) -> list[tuple[int, int]]:
    reference = _DeleteSet()
    reference._ranges = {client: list(ranges_by_client.get(client, []))}
    return reference.subtract(client, start, end)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 5), st.integers(0, 2)), max_size=30))
def test_ranges_add_keeps_the_same_sorted_ranges_as_insertion(
    adds: list[tuple[int, int, int]],
) -> None:
    ranges, expected = _Ranges(), _Ranges()
    for start, length, level in adds:
        owner = (f"f{start}", level)
        ranges.add(start, start + length, owner)
        reference_ranges_add(expected, start, start + length, owner)
        assert (ranges.starts, ranges.ends, ranges.owners) == (
            expected.starts,
            expected.ends,
            expected.owners,
        )


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30), st.integers(1, 4)), max_size=12),
    st.dictionaries(
        st.integers(0, 2),
        st.lists(st.tuples(st.integers(0, 34), st.integers(1, 4)), min_size=1, max_size=3),
        max_size=2,
    ),
    st.integers(0, 6),
)
def test_newly_deleted_names_exactly_the_clocks_not_deleted_yet_or_none_past_the_limit(
    deleted: list[tuple[int, int, int]], delete_set: dict[int, list[tuple[int, int]]], limit: int
) -> None:
    index = ItemIndex()
    already: set[tuple[int, int]] = set()
    for client, clock, length in deleted:
        index._deleted.add(client, clock, clock + length)
        already.update((client, c) for c in range(clock, clock + length))
    named = {
        (client, c)
        for client, ranges in delete_set.items()
        for clock, length in ranges
        for c in range(clock, clock + length)
    }
    expected = named - already
    found = index.newly_deleted(
        {client: tuple(ranges) for client, ranges in delete_set.items()}, limit=limit
    )
    if found is not None:
        assert found == expected and len(found) <= limit
    # A delete set on the wire has disjoint ranges: then None means only "over the
    # limit" (overlapping ones may be refused sooner: the general path decides them).
    disjoint = sum(length for ranges in delete_set.values() for _c, length in ranges) == len(named)
    if disjoint:
        assert found == (expected if len(expected) <= limit else None)
