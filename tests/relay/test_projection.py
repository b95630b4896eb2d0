"""Field projection: hidden fields are cut out of CRDT updates as GC structs of equal length.

Everything here runs against real ``pycrdt`` documents. A *server* document holds the
whole record; a *peer* is fed only projected updates (``ItemIndex.project`` /
``project_state``) and must read exactly the visible fields, never receive a hidden
value (nor a hidden field's name), keep the server's state vector, and keep integrating
later deltas. Deltas are computed the way a relay must: from the server's full document
against the peer's state vector, projected with the record's (up to date) item index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pycrdt
import pytest
from crdtsync_server.anatomy import ItemIndex, project_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.core.yupdate import parse_update

# --------------------------------------------------------------------------- helpers

HIDDEN = frozenset({"salary", "notes"})
MARK = "SECRET"  # every hidden value contains it; it must never be sent


def new_doc(client_id: int) -> tuple[pycrdt.Doc[Any], pycrdt.Map[Any]]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
    return doc, doc.get("fields", type=pycrdt.Map)


def fields_of(doc: pycrdt.Doc[Any]) -> pycrdt.Map[Any]:
    fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
    return fields


def view(doc: pycrdt.Doc[Any], hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields of ``doc`` not in ``hidden`` (texts as ``str``)."""
    fields = fields_of(doc)
    out: dict[str, Any] = {}
    for key in list(fields.keys()):
        if key in hidden:
            continue
        value = fields[key]
        out[key] = str(value) if isinstance(value, pycrdt.Text) else value
    return out


def read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def decode_sv(state: bytes) -> dict[int, int]:
    """A state vector (``Doc.get_state()``) as ``{client: clock}``."""
    count, pos = read_varuint(state, 0)
    out: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_varuint(state, pos)
        out[client], pos = read_varuint(state, pos)
    assert pos == len(state)
    return out


def sv_of_update(update: bytes) -> dict[int, int]:
    """The state vector a fresh document reaches by applying ``update``."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(update)
    return decode_sv(bytes(doc.get_state()))


def sv(doc: pycrdt.Doc[Any]) -> dict[int, int]:
    return decode_sv(bytes(doc.get_state()))


def assert_no_leak(update: bytes, secrets: Sequence[str] = ()) -> None:
    """No hidden value, fragment marker, or hidden field name in the bytes."""
    assert MARK.encode() not in update
    for name in HIDDEN:
        assert name.encode() not in update
    for secret in secrets:
        assert secret.encode() not in update


class Server:
    """The relay's copy of a record: full document + item index, updated together."""

    def __init__(self) -> None:
        self.doc, self.fields = new_doc(1)
        self.index = ItemIndex()

    def receive(self, update: bytes) -> None:
        self.doc.apply_update(update)
        self.index.commit_bytes(update)

    def push_from(self, writer: pycrdt.Doc[Any]) -> None:
        """A (privileged) writer sends what the server lacks."""
        update = bytes(writer.get_update(self.doc.get_state()))
        self.receive(update)

    def push_from_reader(self, reader: pycrdt.Doc[Any]) -> bytes:
        """A reader of projections sends what the server lacks; the relay strips the
        "deletions" of the hidden items it holds as GCs. Returns what was applied."""
        update = bytes(reader.get_update(self.doc.get_state()))
        update = self.index.strip_hidden_deletes(update, HIDDEN)
        self.receive(update)
        return update

    def delta_for(self, peer: pycrdt.Doc[Any]) -> bytes:
        """The projected delta for a peer: server's full doc against the peer's SV."""
        delta = bytes(self.doc.get_update(peer.get_state()))
        return self.index.project(delta, HIDDEN)


def pull(writer: pycrdt.Doc[Any], server: Server) -> None:
    """A privileged writer takes the whole (unprojected) delta it lacks."""
    writer.apply_update(server.doc.get_update(writer.get_state()))


def sync_peer(server: Server, peer: pycrdt.Doc[Any]) -> bytes:
    projected = server.delta_for(peer)
    assert_no_leak(projected)
    peer.apply_update(projected)
    assert view(peer) == view(server.doc, HIDDEN)
    assert sv(peer) == sv(server.doc)
    return projected


def record_with_history() -> tuple[pycrdt.Doc[Any], list[str]]:
    """A server doc written by three clients, with overwrites, texts and deletes."""
    secrets = [
        f"{MARK} pay 123456",
        f"{MARK} old pay 99",
        f"{MARK} note é😀 " + "x" * 300,  # long (multi-byte GC length), non-ASCII
        f"{MARK} gone",
    ]
    server, fields = new_doc(1)
    alice, a_fields = new_doc(2**40 + 7)  # multi-byte client id
    bob, b_fields = new_doc(300)

    a_fields["title"] = "Draft"
    a_fields["salary"] = secrets[1]
    a_fields["body"] = pycrdt.Text("hello world")
    a_fields["notes"] = pycrdt.Text(secrets[2])
    server.apply_update(alice.get_update())
    bob.apply_update(server.get_update())
    b_fields["salary"] = secrets[0]  # overwrite of a hidden field (origin chain)
    b_fields["title"] = "Final"
    b_fields["body"].insert(5, ", dear")
    b_fields["notes"].insert(6, " more")
    b_fields["temp"] = secrets[3] + " but visible key"
    del b_fields["temp"]
    b_fields["count"] = 3
    server.apply_update(bob.get_update(server.get_state()))
    fields["status"] = "open"
    del fields["body"][0:2]
    return server, secrets


# --------------------------------------------------------------------------- byte spans


def test_byte_spans_cover_every_struct_exactly() -> None:
    doc, _secrets = record_with_history()
    update = bytes(doc.get_update())
    parsed = parse_update(update)
    spans = [s.byte_span for s in parsed.structs]
    assert all(span is not None for span in spans)
    previous_end = 0
    for struct in parsed.structs:
        assert struct.byte_span is not None
        start, end = struct.byte_span
        assert previous_end <= start < end <= len(update)
        assert (update[start] == 0) == (struct.kind == "gc")
        if struct.content == "any":
            assert struct.span is not None
            assert start < struct.span[0] and struct.span[1] == end
        previous_end = end
    # A single-client update is its header, its structs back to back, and its delete set.
    alone, fields = new_doc(5)
    fields["a"] = "x"
    fields["b"] = pycrdt.Text("text")
    fields["a"] = "y"
    one = bytes(alone.get_update())
    structs = parse_update(one).structs
    first = structs[0].byte_span
    last = structs[-1].byte_span
    assert first is not None and last is not None
    body = b"".join(one[s.byte_span[0] : s.byte_span[1]] for s in structs if s.byte_span)
    assert one[: first[0]] + body + one[last[1] :] == one


# --------------------------------------------------------------------------- full states


def test_projected_full_state_reads_exactly_the_visible_fields() -> None:
    doc, secrets = record_with_history()
    state = bytes(doc.get_update())
    projected = project_state(state, HIDDEN)

    peer, _ = new_doc(50)
    peer.apply_update(projected)
    assert (
        view(peer)
        == view(doc, HIDDEN)
        == {
            "title": "Final",
            "body": "llo, dear world",
            "count": 3,
            "status": "open",
        }
    )
    assert not HIDDEN & set(fields_of(peer).keys())
    assert_no_leak(projected, secrets)
    assert_no_leak(bytes(peer.get_update()), secrets)
    # The original does hold them (the test would prove nothing otherwise).
    assert secrets[0].encode() in state and b"x" * 300 in state
    # Same as projecting with the relay's index of the record.
    assert ItemIndex.from_state(state).project(state, HIDDEN) == projected


def test_projection_keeps_clock_ranges_and_the_delete_set() -> None:
    doc, _ = record_with_history()
    state = bytes(doc.get_update())
    projected = project_state(state, HIDDEN)
    assert sv_of_update(projected) == sv_of_update(state) == sv(doc)
    assert len(sv(doc)) == 3
    original, cut = parse_update(state), parse_update(projected)
    assert cut.delete_set == original.delete_set
    assert cut.client_ranges() == original.client_ranges()
    assert [(s.client, s.clock, s.length) for s in cut.structs] == [
        (s.client, s.clock, s.length) for s in original.structs
    ]
    assert any(s.kind == "gc" for s in cut.structs)
    # Every struct that changed became a GC; no visible item changed.
    for before, after in zip(original.structs, cut.structs, strict=True):
        if after.kind == "gc" and before.kind != "gc":
            assert after.byte_span is not None and after.byte_span[1] - after.byte_span[0] <= 3
        else:  # the same struct (only its offsets moved)
            assert attrs.evolve(before, span=None) == attrs.evolve(after, span=None)


def test_hidden_field_names_and_values_vanish_from_the_anatomy() -> None:
    doc, _ = record_with_history()
    projected = project_state(bytes(doc.get_update()), HIDDEN)
    anatomy = ItemIndex().analyse(parse_update(projected))
    assert not HIDDEN & (set(anatomy.written) | anatomy.nested)
    assert set(anatomy.written) >= {"title", "body", "count", "status"}


def test_nothing_to_hide_returns_the_same_object() -> None:
    doc, _ = record_with_history()
    state = bytes(doc.get_update())
    index = ItemIndex.from_state(state)
    assert index.project(state, frozenset()) is state
    assert index.project(state, frozenset({"no_such_field"})) is state
    assert project_state(state, frozenset({"no_such_field"})) is state
    assert index.project(b"", HIDDEN) == b""
    # A delta that touches only visible fields comes back untouched too.
    peer, _ = new_doc(9)
    peer.apply_update(project_state(state, HIDDEN))
    fields_of(doc)["title"] = "Again"
    delta = bytes(doc.get_update(peer.get_state()))
    assert index.project(delta, HIDDEN) is delta


# --------------------------------------------------------------------------- deltas


def test_deltas_keep_the_peer_equal_to_the_visible_server() -> None:
    server = Server()
    alice, a = new_doc(2)
    bob, b = new_doc(3)
    peer, _ = new_doc(99)

    a["title"] = "one"
    a["salary"] = f"{MARK}-1"
    a["body"] = pycrdt.Text("abcdef")
    a["notes"] = pycrdt.Text(f"{MARK}-notes")
    server.push_from(alice)
    sync_peer(server, peer)
    pull(bob, server)

    steps: list[tuple[pycrdt.Doc[Any], Callable[[], None]]] = [
        (alice, lambda: a.__setitem__("title", "two")),  # visible overwrite
        (bob, lambda: b.__setitem__("salary", f"{MARK}-2")),  # hidden overwrite
        (alice, lambda: a["body"].insert(3, "XYZ")),  # visible text, middle
        (bob, lambda: b["body"].__delitem__(slice(1, 2))),  # visible text delete
        (alice, lambda: a["notes"].insert(4, f"{MARK}-mid")),  # hidden text, middle
        (bob, lambda: b["notes"].__delitem__(slice(0, 3))),  # hidden text delete
        (alice, lambda: a.__setitem__("extra", 1.5)),
        (bob, lambda: b.pop("extra")),  # delete a visible key
        (alice, lambda: a.pop("salary")),  # delete a hidden key
        (bob, lambda: b.__setitem__("salary", f"{MARK}-3")),  # recreate it
        (alice, lambda: a.__setitem__("notes", pycrdt.Text(f"{MARK}-fresh"))),  # replace text
        (bob, lambda: b.__setitem__("body", pycrdt.Text("new body"))),  # replace visible text
    ]
    for writer, edit in steps:
        pull(writer, server)
        edit()
        server.push_from(writer)
        sync_peer(server, peer)
    assert view(peer) == {"title": "two", "body": "new body"}


def test_concurrent_writers_and_stale_deltas() -> None:
    """Writers edit offline; the peer catches up over several server changes at once."""
    server = Server()
    alice, a = new_doc(2)
    bob, b = new_doc(3)
    peer, _ = new_doc(99)
    a["body"] = pycrdt.Text("0123456789")
    a["notes"] = pycrdt.Text(f"{MARK}:0123456789")
    server.push_from(alice)
    pull(bob, server)
    sync_peer(server, peer)

    a["body"].insert(2, "aa")
    b["body"].insert(2, "bb")
    a["notes"].insert(8, f"{MARK}a")
    b["notes"].insert(8, f"{MARK}b")
    b["title"] = "bob"
    a["title"] = "alice"
    server.push_from(alice)
    server.push_from(bob)
    sync_peer(server, peer)  # one delta spanning both writers' concurrent edits
    assert str(server.fields["body"]) in ("01aabb23456789", "01bbaa23456789")


def test_merged_changes_project_like_one_delta() -> None:
    """The relay's backlog merges stored changes (``pycrdt.merge_updates``) first."""
    server = Server()
    writer, w = new_doc(2)
    peer, _ = new_doc(99)
    w["title"] = "t"
    w["notes"] = pycrdt.Text(f"{MARK}")
    server.push_from(writer)
    sync_peer(server, peer)
    changes = []
    for i in range(4):
        before = server.doc.get_state()
        w["notes"].insert(0, f"{MARK}{i}")
        w["title"] = f"t{i}"
        if i % 2:
            w["body"] = pycrdt.Text(f"b{i}")
        server.push_from(writer)
        changes.append(bytes(server.doc.get_update(before)))
    merged = bytes(pycrdt.merge_updates(*changes))
    projected = server.index.project(merged, HIDDEN)
    assert_no_leak(projected)
    peer.apply_update(projected)
    assert view(peer) == view(server.doc, HIDDEN)
    assert sv(peer) == sv(server.doc)


def test_peer_edit_to_a_visible_field_applies_to_the_full_document() -> None:
    server = Server()
    writer, w = new_doc(2)
    peer, p = new_doc(99)
    other, _ = new_doc(98)
    w["title"] = "draft"
    w["salary"] = f"{MARK}-1"
    w["body"] = pycrdt.Text("hello world")
    w["notes"] = pycrdt.Text(f"{MARK}-n")
    server.push_from(writer)
    sync_peer(server, peer)

    before = sv(server.doc)
    p["title"] = "peer title"  # overwrite: origin is the visible item the peer holds
    p["body"].insert(5, " big")
    p["mine"] = 7
    own = server.push_from_reader(peer)
    assert parse_update(own).clients() == {99}
    assert sv(server.doc) == {**before, 99: 2 + len(" big")}
    assert view(server.doc) == {
        "title": "peer title",
        "salary": f"{MARK}-1",
        "body": "hello big world",
        "notes": f"{MARK}-n",
        "mine": 7,
    }
    sync_peer(server, peer)
    sync_peer(server, other)
    # The writer (who sees everything) merges it too and keeps its hidden values.
    pull(writer, server)
    assert view(writer) == view(server.doc)


def test_a_readers_delta_deletes_hidden_fields_unless_stripped() -> None:
    """pycrdt counts GC structs as deleted, and every ``get_update(sv)`` carries the
    whole delete set: a reader's delta "deletes" every hidden item it holds as a GC."""
    server = Server()
    writer, w = new_doc(2)
    peer, p = new_doc(99)
    w["title"] = "t"
    w["salary"] = f"{MARK}-1"
    w["notes"] = pycrdt.Text(f"{MARK}-n")
    server.push_from(writer)
    sync_peer(server, peer)
    p["title"] = "mine"
    raw = bytes(peer.get_update(server.doc.get_state()))
    assert server.index.analyse(parse_update(raw)).deleted == {"title", "salary", "notes"}

    stripped = server.index.strip_hidden_deletes(raw, HIDDEN)
    anatomy = server.index.analyse(parse_update(stripped))
    assert anatomy.deleted == {"title"} and set(anatomy.written) == {"title"}
    assert parse_update(stripped).structs == parse_update(raw).structs
    assert server.index.strip_hidden_deletes(stripped, HIDDEN) is stripped
    assert server.index.strip_hidden_deletes(raw, frozenset()) is raw

    unprotected: pycrdt.Doc[Any] = pycrdt.Doc()
    unprotected.apply_update(server.doc.get_update())
    unprotected.apply_update(raw)
    assert view(unprotected) == {"title": "mine"}  # the hidden fields are gone
    server.receive(stripped)
    assert view(server.doc) == {"title": "mine", "salary": f"{MARK}-1", "notes": f"{MARK}-n"}
    sync_peer(server, peer)


# --------------------------------------------------------------------------- fail closed


def test_unresolvable_items_are_cut_not_passed_through() -> None:
    server = Server()
    writer, w = new_doc(2)
    w["title"] = "a"
    server.push_from(writer)
    base, before = bytes(server.doc.get_update()), server.doc.get_state()
    w["title"] = f"{MARK} lands in a visible field"  # origin: the previous title
    server.push_from(writer)
    delta = bytes(server.doc.get_update(before))
    [item] = parse_update(delta).structs
    assert item.parent_sub is None and item.origin is not None

    # The record's index knows the origin: a visible overwrite passes through.
    assert server.index.project(delta, HIDDEN) is delta
    # An index that does not know it cannot tell which field it writes: cut.
    projected = ItemIndex().project(delta, HIDDEN)
    assert [s.kind for s in parse_update(projected).structs] == ["gc"]
    assert MARK.encode() not in projected
    reader, _ = new_doc(5)
    reader.apply_update(base)
    reader.apply_update(projected)
    assert sv(reader) == sv(server.doc)
    # Fail closed is lossy (see ItemIndex.project): the delete set still deletes the old
    # title and the new one arrived as a GC, so the reader has no title at all.
    assert view(reader) == {}


def test_items_outside_the_fields_map_are_cut() -> None:
    doc, fields = new_doc(4)
    fields["title"] = "t"
    doc.get("other", type=pycrdt.Map)["k"] = f"{MARK} elsewhere"
    doc.get("list", type=pycrdt.Array).append(f"{MARK} in an array")
    state = bytes(doc.get_update())
    projected = project_state(state, HIDDEN)
    assert MARK.encode() not in projected
    peer, _ = new_doc(5)
    peer.apply_update(projected)
    assert view(peer) == {"title": "t"}
    assert peer.get("other", type=pycrdt.Map).to_py() == {}
    assert sv(peer) == sv(doc)


def test_pycrdt_turns_items_chained_into_a_gc_range_into_gcs() -> None:
    """What a reader does with an item whose origin or parent it holds as a GC: it
    integrates it as a GC too (clocks advance, content dropped), like Yjs."""
    source, fields = new_doc(1)
    fields["t"] = pycrdt.Text("hello")
    fields["s"] = "x"
    state = bytes(source.get_update())
    parsed = parse_update(state)
    # Hand-made projection: cut the text's type item and the string chained into it.
    parts, done = [], 0
    for struct in parsed.structs:
        if struct.parent_sub == "t" or struct.parent_id is not None:
            assert struct.byte_span is not None
            parts += [state[done : struct.byte_span[0]], bytes([0, struct.length])]
            done = struct.byte_span[1]
    cut = b"".join([*parts, state[done:]])
    before = source.get_state()
    fields["t"].insert(5, " world")  # origin: a character the reader holds as a GC
    fields["s"] = "y"
    delta = bytes(source.get_update(before))

    reader, _ = new_doc(2)
    reader.apply_update(cut)
    reader.apply_update(delta)
    assert view(reader) == {"s": "y"}
    assert sv(reader) == sv(source)
    kinds = [(s.clock, s.kind) for s in parse_update(bytes(reader.get_update())).structs]
    assert (7, "gc") in kinds  # " world" was integrated as a GC

    # Cut only the text's type item: its characters name it as their parent.
    parts, done = [], 0
    for struct in parsed.structs:
        if struct.parent_sub == "t":
            assert struct.byte_span is not None
            parts += [state[done : struct.byte_span[0]], bytes([0, struct.length])]
            done = struct.byte_span[1]
    orphans, _ = new_doc(3)
    orphans.apply_update(b"".join([*parts, state[done:]]))
    assert view(orphans) == {"s": "x"}
    stored = parse_update(bytes(orphans.get_update())).structs
    assert [(s.clock, s.length, s.kind) for s in stored] == [(0, 6, "gc"), (6, 1, "item")]


# --------------------------------------------------------------------------- property

PLAIN = ("title", "salary")
TEXTS = ("body", "notes")
WRITERS = (2, 2**35 + 1, 300)

ops = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from(PLAIN), st.integers(0, 99)),
    st.tuples(st.just("insert"), st.integers(0, 2), st.sampled_from(TEXTS), st.floats(0, 1)),
    st.tuples(st.just("cut"), st.integers(0, 2), st.sampled_from(TEXTS), st.floats(0, 1)),
    st.tuples(st.just("new_text"), st.integers(0, 2), st.sampled_from(TEXTS), st.integers(0, 9)),
    st.tuples(st.just("drop"), st.integers(0, 2), st.sampled_from(PLAIN + TEXTS), st.just(0)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.just(""), st.just(0)),
    st.tuples(st.just("peer"), st.just(0), st.sampled_from(("title", "body")), st.integers(0, 9)),
)


def value_for(field: str, n: int) -> str:
    return f"{MARK}{n}" if field in HIDDEN else f"v{n}"


def edit(fields: pycrdt.Map[Any], kind: str, field: str, arg: Any) -> None:
    if kind == "set":
        fields[field] = value_for(field, arg)
    elif kind == "new_text":
        fields[field] = pycrdt.Text(value_for(field, arg))
    elif kind == "drop":
        if field in fields:
            del fields[field]
    else:
        text = fields.get(field)
        if not isinstance(text, pycrdt.Text):
            fields[field] = pycrdt.Text(value_for(field, 0))
            return
        at = int(arg * len(text))
        if kind == "insert":
            text.insert(at, value_for(field, at))
        elif len(text):
            del text[min(at, len(text) - 1) : min(at + 3, len(text))]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(st.tuples(ops, st.booleans()), min_size=1, max_size=18), st.integers(2, 3))
def test_random_edits_by_several_clients(
    steps: list[tuple[tuple[Any, ...], bool]], n_writers: int
) -> None:
    """Writers (who see everything) edit concurrently and sync now and then; the peer
    sometimes lags several steps behind, edits visible fields itself, and is fed only
    projected deltas of the server's full document against its own state vector."""
    server = Server()
    writers = [new_doc(client) for client in WRITERS[:n_writers]]
    peer, peer_fields = new_doc(99)
    for number, ((kind, who, field, arg), peer_syncs) in enumerate(steps, start=1):
        if kind == "peer":
            edit(peer_fields, "set" if field == "title" else "insert", field, arg / 10)
            hidden_before = {k: v for k, v in view(server.doc).items() if k in HIDDEN}
            server.push_from_reader(peer)
            hidden_after = {k: v for k, v in view(server.doc).items() if k in HIDDEN}
            assert hidden_after == hidden_before  # a reader never touches hidden fields
        else:
            doc, fields = writers[who % n_writers]
            if kind == "sync":
                server.push_from(doc)
                pull(doc, server)
            else:
                edit(fields, kind, field, arg)
                server.push_from(doc)  # edits reach the server; writers pull only on sync
        if not peer_syncs and number < len(steps):
            continue
        delta = bytes(server.doc.get_update(peer.get_state()))
        projected = server.index.project(delta, HIDDEN)
        # An index built from the server's current full state projects the same way.
        fresh = ItemIndex.from_state(bytes(server.doc.get_update())).project(delta, HIDDEN)
        assert fresh == projected
        assert_no_leak(projected)
        anatomy = server.index.analyse(parse_update(projected))
        assert not HIDDEN & (set(anatomy.written) | anatomy.nested)
        peer.apply_update(projected)
        assert view(peer) == view(server.doc, HIDDEN)
        assert sv(peer) == sv(server.doc)
        assert_no_leak(bytes(peer.get_update()))
    # The peer's copy is the projection of the server's full state, read for read.
    fresh_peer, _ = new_doc(98)
    fresh_peer.apply_update(project_state(bytes(server.doc.get_update()), HIDDEN))
    assert view(fresh_peer) == view(peer)


@pytest.mark.parametrize("hidden", [frozenset({"title"}), frozenset({"body", "salary"})])
def test_other_hidden_sets(hidden: frozenset[str]) -> None:
    doc, _ = record_with_history()
    peer, _ = new_doc(77)
    peer.apply_update(project_state(bytes(doc.get_update()), hidden))
    assert view(peer) == view(doc, hidden)
    assert sv(peer) == sv(doc)
