"""``instructions``: CPU instructions per change of the relay's push path, counted by
callgrind, for comparing commits on a machine whose speed varies.

Timings on a shared VM move by tens of percent from one run to the next (the same
commit's ``relay_distinct`` gave 106 and 155 µs per change within minutes); an
instruction count does not (the same code and inputs give the same count to within a
fraction of a percent, whatever else the machine runs). So this workload pushes the
relay's frames in-process (:class:`~benchmarks.throughput.InProcessRelay` on a SQLite
file, durable: ``synchronous=FULL``) under ``valgrind --tool=callgrind``, counting only
the pushes (instrumentation is switched on and off around them with
``callgrind_control``), in two shapes:

``distinct``  every frame edits ``batch`` distinct records once each (``relay_distinct``'s
              load with ``--instructions-edits`` edits per client record);
``same``      every frame edits a client's own few records over and over (``relay``'s);
``receive``   a client receiving: ``--instructions-edits`` fan-out frames of
              ``--client-apply-items`` edits of distinct records it holds, each by another
              user (``client_apply``'s), applied by its sync session and store.

Figures: ``<shape>_instructions_per_change``. For the relay's shapes no network, no
msgpack decoding of frames and no fan-out are counted (the networked workloads time
those); an instruction is not a
fixed time, so compare counts of two commits, not a count with a µs figure. Needs
valgrind (Debian: ``apt-get install valgrind``); without it the workload says so and
reports nothing else. Each shape runs 20 to 40 s under valgrind.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import Figures, Size

NAME = "instructions"
ONCE = True  #: a count, not a timing: repeating it gives the same figures
SIZES = (Size("instructions_edits", 10, 5, "`instructions`: edits per client record"),)
SHAPES = ("distinct", "same", "receive")


def run(options: Any) -> Figures:
    """Instructions per change of in-process pushes, counted by callgrind."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        return {"note": "valgrind (callgrind) is not installed: apt-get install valgrind"}
    figures: Figures = {}
    with tempfile.TemporaryDirectory(prefix="crdtsync-bench-", dir=options.db_dir) as tmp:
        for shape in SHAPES:
            out = Path(tmp) / f"{shape}.callgrind"
            command = [
                valgrind,
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                shape,
                tmp,
                *(str(n) for n in _sizes(options)),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"instructions ({shape}) failed:\n{done.stderr[-2000:]}")
            changes = int(done.stdout.split()[-1])
            figures[f"{shape}_instructions_per_change"] = _total(out) / changes
    return figures


def _sizes(options: Any) -> tuple[int, int, int, int, int, int]:
    return (
        options.clients,
        options.records,
        options.instructions_edits,
        options.batch,
        options.window,
        options.client_apply_items,
    )


def _total(out: Path) -> int:
    """The instructions callgrind counted (its ``totals:`` line)."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{out}: callgrind wrote no totals")


def _count(shape: str, tmp: str, sizes: list[int]) -> int:
    """Push the timed frames of ``shape`` with callgrind's instrumentation on; returns
    how many changes were pushed (each one acknowledged, or this raises)."""
    from crdtsync_server.relay import Relay
    from crdtsync_server.storage import RelayStorage

    from crdtsync.apps.cli import SERVE_GC_THRESHOLD
    from crdtsync.core.protocol import Ack

    from .throughput import InProcessRelay, _batches, _load, distinct_load

    clients, records, edits, batch, window, items = sizes
    if shape == "receive":
        return _count_received(edits, items)
    options = argparse.Namespace(
        clients=clients, records=records, edits=edits, batch=batch, window=window
    )
    load = distinct_load(options)[0] if shape == "distinct" else _load(options)
    core = InProcessRelay()
    core.storage = RelayStorage(os.path.join(tmp, f"{shape}.sqlite3"))
    core.relay = Relay(schema=core.schema, policy=core.policy, storage=core.storage)
    core.setup(load)
    frames = list(_batches(load, batch))
    gc.collect()
    gc.freeze()  # as `crdtsync serve` does
    gc.set_threshold(SERVE_GC_THRESHOLD, *gc.get_threshold()[1:])
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
    acked = 0
    for client, changes in frames:
        acked += sum(isinstance(v, Ack) for v in core.push(client, changes))
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True)
    pushed = sum(len(changes) for _client, changes in frames)
    if acked != pushed:
        raise AssertionError(f"{pushed - acked} of {pushed} changes not acknowledged")
    return pushed


def _count_received(frames: int, items: int) -> int:
    """A client receives ``frames`` fan-out frames of ``items`` changes with callgrind's
    instrumentation on; returns how many changes it received."""
    from .client_apply import receiving

    with receiving(frames, items) as bench:
        pid = str(os.getpid())
        subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
        for data in bench.frames:
            bench.session.receive(data)
        subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True)
        if bench.client.replica.cursor != bench.version:
            raise AssertionError(
                f"the client is at {bench.client.replica.cursor}, not {bench.version}"
            )
    return frames * items


if __name__ == "__main__":
    print(_count(sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]]))
