"""Shared knobs of the fault, property and fuzz suites.

``CRDTSYNC_FAULT_SCALE`` (default 1) multiplies how many faults, examples and inputs
each of those suites tries: ``.ci/run`` uses the default (a bounded budget); a soak run
sets, say, ``CRDTSYNC_FAULT_SCALE=20 python3 -m pytest -m faults``.

``CRDTSYNC_RELIABILITY_REPORT=path.jsonl`` makes :func:`report` append one JSON line per
call (suite, figures), which ``docs/reliability.md`` quotes from a real run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

FAULT_SCALE = max(1, int(os.environ.get("CRDTSYNC_FAULT_SCALE", "1")))


def scaled(count: int) -> int:
    """``count`` times the fault scale."""
    return count * FAULT_SCALE


def report(suite: str, **figures: Any) -> None:
    """Record what a fault suite did (faults injected, changes checked, inputs tried)."""
    path = os.environ.get("CRDTSYNC_RELIABILITY_REPORT")
    if not path:
        return
    line = {"suite": suite, "scale": FAULT_SCALE, "at": time.time(), **figures}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")


def run_until_killed(script: str, *args: object) -> None:
    """Run ``script`` (Python source, dedented) in a fresh interpreter with ``args`` as
    ``sys.argv[1:]`` and this checkout on its path; it must end by ``kill -9`` of itself
    (the test's chosen moment), and does."""
    root = Path(__file__).resolve().parents[2]
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "server")])},
        capture_output=True,
        check=False,
    )
    assert process.returncode == -9, process.stderr.decode()
