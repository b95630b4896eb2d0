"""Hand-built Yjs v1 updates (varints, strings, root items) and pairs of record
documents that exchange their updates."""

from __future__ import annotations

from typing import Any

from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.record import RecordDoc
from crdtsync.core.schema import FieldSpec, ObjectSpec

SPEC = ObjectSpec(
    "Item",
    {
        "Name": FieldSpec(name="Name", type=FieldType.STRING),
        "Notes": FieldSpec(name="Notes", type=FieldType.TEXT),
        "Count": FieldSpec(name="Count", type=FieldType.INTEGER),
        "Ratio": FieldSpec(name="Ratio", type=FieldType.NUMBER),
        "Price": FieldSpec(name="Price", type=FieldType.DECIMAL),
        "Active": FieldSpec(name="Active", type=FieldType.BOOLEAN),
        "Day": FieldSpec(name="Day", type=FieldType.DATE),
        "At": FieldSpec(name="At", type=FieldType.DATETIME),
        "Kind": FieldSpec(name="Kind", type=FieldType.PICKLIST, values=("a", "b")),
        "Email": FieldSpec(name="Email", type=FieldType.EMAIL),
        "Parent": FieldSpec(name="Parent", type=FieldType.REFERENCE, to="Item"),
        "Owner": FieldSpec(name="Owner", type=FieldType.OWNER),
    },
)


def vu(n: int) -> bytes:
    """lib0 varuint."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def vs(s: str | bytes) -> bytes:
    """lib0 varstring / varUint8Array."""
    raw = s.encode() if isinstance(s, str) else s
    return vu(len(raw)) + raw


def one_client(client: int, clock: int, structs: list[bytes], ds: bytes = b"\x00") -> bytes:
    return vu(1) + vu(len(structs)) + vu(client) + vu(clock) + b"".join(structs) + ds


def root_item(ref: int, content: bytes, root: str = "r", key: str | None = None) -> bytes:
    """An item whose parent is the root ``root`` (and map key ``key``)."""
    info = ref | (0x20 if key is not None else 0)
    return bytes([info]) + vu(1) + vs(root) + (vs(key) if key is not None else b"") + content


def exchange(a: RecordDoc, b: RecordDoc) -> None:
    """Send each replica the delta it is missing from the other."""
    to_b = a.delta(b.state())
    to_a = b.delta(a.state())
    b.apply(to_b)
    a.apply(to_a)


def two_replicas(initial: dict[str, Any]) -> tuple[RecordDoc, RecordDoc]:
    origin = RecordDoc(SPEC, client_id=1)
    origin.write(initial)
    return origin.copy(client_id=2), origin.copy(client_id=3)
