"""Coverage-guided fuzzing (atheris, libFuzzer) of what the relay reads from strangers.

``python -m tests.fuzz.harness TARGET [libFuzzer arguments] [CORPUS_DIR ...]`` runs one
harness under libFuzzer, with crdtsync's modules instrumented so it steers by coverage:

``decode``        :func:`crdtsync.core.protocol.decode` of any bytes either returns a frame
                  that encodes back to a frame equal to it, or raises ``ProtocolError``;
                  nothing else, ever (a ``RecursionError`` or ``KeyError`` is a finding).
``parse_update``  :func:`crdtsync.core.yupdate.parse_update` either raises
                  ``UpdateDecodeError`` or returns structs that pycrdt takes as no more than
                  they say: applied to an empty document, an update starting at clock 0
                  integrates at most the clock ranges parsed (less when its structs depend
                  on each other out of order: the relay then refuses it as missing
                  dependencies), and pycrdt never panics on it.
``relay_push``    :meth:`Relay.push` of the input as a change to a record the relay holds
                  (or as a create): judged by **effect**. After an ``ack`` the stored record
                  loads, every value in it decodes and passes its field's checks and the
                  record's, and the relay's cached copy holds the same values; after any
                  refusal the stored record is byte for byte what it was. The relay itself
                  never raises.

The seeds are in ``tests/faults/fuzz/corpus/TARGET/`` (kept in the repository); libFuzzer writes
what it finds into the first corpus directory given, so ``tests/faults/test_fuzz_coverage.py``
passes a temporary one first and the kept seeds second.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["crdtsync", "crdtsync_server"]):
    import crdtsync_server.anatomy
    import crdtsync_server.merge
    import crdtsync_server.relay

    import crdtsync.core.protocol
    import crdtsync.core.record
    import crdtsync.core.yupdate

import pycrdt
from crdtsync_server.config import RelayConfig
from crdtsync_server.policy import Principal
from crdtsync_server.storage import RelayStorage

from crdtsync.core.exceptions import ProtocolError, UpdateDecodeError
from crdtsync.core.protocol import Ack, ChangeFrame, decode, encode
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import EXAMPLE_CONFIG

# -- decode ---------------------------------------------------------------------------------


def fuzz_decode(data: bytes) -> None:
    try:
        frame = crdtsync.core.protocol.decode(data)
    except ProtocolError:
        return
    again = decode(encode(frame))
    assert again == frame, (frame, again)


# -- parse_update ----------------------------------------------------------------------------


def _state_vector(doc: pycrdt.Doc[Any]) -> dict[int, int]:
    return crdtsync_server.merge.decode_state_vector(bytes(doc.get_state()))


def fuzz_parse_update(data: bytes) -> None:
    try:
        parsed = crdtsync.core.yupdate.parse_update(data)
    except UpdateDecodeError:
        return
    ranges = parsed.client_ranges()
    if any(start != 0 for start, _end in ranges.values()):
        return  # it depends on operations an empty document does not have
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    try:
        doc.apply_update(data)
    except Exception:  # noqa: BLE001 - pycrdt refusing is fine; a panic is a finding
        return
    integrated = _state_vector(doc)
    for client, clock in integrated.items():
        assert client in ranges and clock <= ranges[client][1], (ranges, integrated)


# -- relay_push ---------------------------------------------------------------------------------

ALICE = Principal("alice", "alice-phone")
ALICE_CLIENT = 1001
RECORD = "acc-fuzzed"


class _Session:
    """What :meth:`Relay.push` needs of a session (nobody else is subscribed)."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.subscriptions: frozenset[str] = frozenset()


class _World:
    def __init__(self) -> None:
        config = RelayConfig.from_toml(EXAMPLE_CONFIG, database=":memory:")
        self.schema = config.schema
        self.spec = config.schema.objects["Account"]
        self.storage = RelayStorage(":memory:")
        self.relay = crdtsync_server.relay.Relay(
            schema=config.schema, policy=config.policy, storage=self.storage
        )
        self.session = _Session(ALICE)
        self.count = 0
        doc = RecordDoc(self.spec, client_id=ALICE_CLIENT)
        doc.write({"Name": "Acme", "Industry": "Energy", "Employees": 10, "Description": "hi"})
        [verdict] = self.push("create", RECORD, doc.full_update()).items
        assert isinstance(verdict, Ack), verdict

    def push(self, kind: str, record_id: str, delta: bytes) -> Any:
        self.count += 1
        change = ChangeFrame(
            change_id=f"fuzz-{self.count}",
            record_id=record_id,
            object="Account",
            kind=kind,
            base_version=0 if kind == "create" else 1,
            field_bases={},
            delta=delta,
        )
        return self.relay.push(self.session, [change])  # type: ignore[arg-type]

    def check_stored(self, record_id: str) -> None:
        """The stored record loads, decodes and validates, and the cache agrees."""
        stored = self.storage.get_record(record_id)
        assert stored is not None
        loaded = crdtsync_server.merge.RecordState.load(stored, self.spec, self.relay.client_id)
        assert not loaded.problems, loaded.problems
        _canonical, errors = self.spec.check_changes(loaded.values, creating=True)
        errors += self.spec.check_record(loaded.values)
        assert not errors, (loaded.values, errors)
        cached = self.relay._cache.get(record_id)
        if cached is not None:
            assert cached.values == loaded.values, (cached.values, loaded.values)


_WORLD: _World | None = None


def fuzz_relay_push(data: bytes) -> None:
    global _WORLD
    if _WORLD is None:
        _WORLD = _World()
    world = _WORLD
    creating = data[:1] == b"\x00"
    record_id = f"acc-new-{world.count}" if creating else RECORD
    before = world.storage.get_record(record_id)
    [verdict] = world.push("create" if creating else "update", record_id, data[1:]).items
    if isinstance(verdict, Ack):
        world.check_stored(record_id)
    else:
        after = world.storage.get_record(record_id)
        assert (after is None) == (before is None)
        if before is not None and after is not None:
            assert after.state == before.state and after.version == before.version
        if not creating:
            world.check_stored(record_id)


TARGETS = {"decode": fuzz_decode, "parse_update": fuzz_parse_update, "relay_push": fuzz_relay_push}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.harness {{{','.join(TARGETS)}}} [libFuzzer args]")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
