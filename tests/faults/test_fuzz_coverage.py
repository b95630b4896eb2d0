"""Coverage-guided fuzzing joins the suite: each harness of ``tests/faults/fuzz/harness.py``
runs under libFuzzer (atheris) from the seeds kept in ``tests/faults/fuzz/corpus/``, for
``FUZZ_SECONDS`` times ``CRDTSYNC_FAULT_SCALE`` seconds (a soak with scale 20 runs each for
minutes), each in a process of its own, side by side. A finding fails the test with the
input that triggered it (libFuzzer writes it under the test's temporary directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.faults import FAULT_SCALE, report
from tests.helpers.harness import ROOT

pytestmark = pytest.mark.faults

FUZZ_SECONDS = 5
TARGETS = ("decode", "parse_update", "relay_push")


def test_coverage_guided_fuzzing_of_every_harness_finds_nothing(tmp_path: Path) -> None:
    seconds = FUZZ_SECONDS * FAULT_SCALE
    running = {}
    for target in TARGETS:
        out = tmp_path / target
        (out / "found").mkdir(parents=True)
        seeds = ROOT / "tests" / "faults" / "fuzz" / "corpus" / target
        assert any(seeds.iterdir()), f"no seeds for {target}"
        running[target] = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.faults.fuzz.harness", target),
                f"-max_total_time={seconds}",
                f"-artifact_prefix={out}/",
                str(out / "found"),  # what libFuzzer finds goes here; the seeds stay as they are
                str(seeds),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    for target, process in running.items():
        _out, log = process.communicate(timeout=seconds + 120)
        crashes = [p.name for p in (tmp_path / target).iterdir() if "-" in p.name]
        assert process.returncode == 0 and not crashes, f"{target}:\n{log[-4000:]}"
        runs = re.search(r"Done (\d+) runs", log)
        assert runs is not None and int(runs.group(1)) > 100, f"{target}:\n{log[-2000:]}"
        report(f"fuzz_{target}", runs=int(runs.group(1)), seconds=seconds)
