"""Write the fuzz harnesses' seed corpora (``tests/faults/fuzz/corpus/TARGET/``), kept in the
repository: ``python -m tests.fuzz.seeds``. Deterministic: the same files every time."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pycrdt
from crdtsync_server.config import RelayConfig

from crdtsync.core.protocol import (
    Ack,
    CaughtUp,
    ChangeFrame,
    Changes,
    Conflict,
    Error,
    ErrorCode,
    Flush,
    Hello,
    Push,
    RecordChange,
    Subscribe,
    Verdicts,
    WireConflict,
    encode,
)
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import EXAMPLE_CONFIG

CORPUS = Path(__file__).parent / "corpus"


def _write(target: str, seeds: list[bytes]) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def decode_seeds() -> list[bytes]:
    change = ChangeFrame(
        change_id="c1",
        record_id="r1",
        object="Account",
        kind="update",
        base_version=3,
        field_bases={"Name": 3},
        delta=b"\x01\x01\x01\x00",
    )
    return [
        encode(frame)
        for frame in (
            Hello((1, 2), "token", "replica-1"),
            Subscribe(("Account", "Task"), 7),
            Push((change,)),
            Flush("f1"),
            Changes((RecordChange(record_id="r1", object="Account", version=4, update=b"\x00"),)),
            CaughtUp(9),
            Verdicts(
                (
                    Ack(change_id="c1", record_id="r1", version=4),
                    Conflict(
                        change_id="c2",
                        record_id="r1",
                        version=4,
                        conflicts=(WireConflict(field="Name", base="a", mine="b", theirs="c"),),
                    ),
                )
            ),
            Error(ErrorCode.MALFORMED_FRAME, "bad", fatal=False),
        )
    ]


def _doc_updates() -> list[bytes]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=7)
    fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
    updates = []
    for values in (
        {"Name": "Acme", "Employees": 3, "Active": True, "Revenue": "1.50"},
        {"Notes": pycrdt.Text("hello world")},
        {"Name": None, "Big": 2**60, "Ratio": 0.25, "Nested": {"a": [1, "x", None]}},
    ):
        before = doc.get_state()
        with doc.transaction():
            for name, value in values.items():
                fields[name] = value
        updates.append(bytes(doc.get_update(before)))
    before = doc.get_state()
    text: pycrdt.Text = fields["Notes"]
    with doc.transaction():
        text.insert(5, ", 🎉")
        del text[0:2]
    updates.append(bytes(doc.get_update(before)))
    updates.append(bytes(doc.get_update()))
    return updates


def parse_update_seeds() -> list[bytes]:
    return _doc_updates()


def relay_push_seeds() -> list[bytes]:
    spec = RelayConfig.from_toml(EXAMPLE_CONFIG, database=":memory:").schema.objects["Account"]
    alice = RecordDoc(spec, client_id=1001)  # as the harness creates its record
    alice.write({"Name": "Acme", "Industry": "Energy", "Employees": 10, "Description": "hi"})
    seeds = []
    for values in (
        {"Name": "Acme Corp"},
        {"Employees": 250, "Industry": "Retail"},
        {"Description": "hi there"},
        {"Revenue": Decimal("12.50"), "Website": "acme.example"},
        {"Industry": None},
    ):
        before = alice.state()
        alice.write(values)
        seeds.append(b"\x01" + alice.delta(before))
    fresh = RecordDoc(spec, client_id=2002)
    fresh.write({"Name": "New", "Employees": 1})
    seeds.append(b"\x00" + fresh.full_update())
    return seeds


def main() -> None:
    _write("decode", decode_seeds())
    _write("parse_update", parse_update_seeds())
    _write("relay_push", relay_push_seeds())


if __name__ == "__main__":
    main()
