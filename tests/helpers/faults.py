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
import time
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
