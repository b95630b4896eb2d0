"""Hot spots from a py-spy collapsed-stack profile (``py-spy record --format raw``).

``python -m benchmarks.profile FILE [--top N]`` prints, per function, the share of the
samples in which it was running (self) and in which it was on the stack (inclusive).
``python -m benchmarks --profile DIR`` writes such files for the relay workloads.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def function_of(frame: str) -> str:
    """``push (crdtsync_server/relay.py:199)`` -> ``push (crdtsync_server/relay.py)``."""
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def hot_spots(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The ``top`` functions by self and by inclusive share of samples (in percent);
    the frames on every sampled stack (the interpreter's and event loop's) are left out
    of the inclusive list."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        count = int(match["count"])
        functions = [function_of(frame) for frame in match["stack"].split(";")]
        total += count
        own[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    if not total:
        return {"self": [], "inclusive": []}
    below_root = [(name, n) for name, n in inclusive.most_common() if n < total]  # no main()...
    return {
        "self": [(name, 100 * n / total) for name, n in own.most_common(top)],
        "inclusive": [(name, 100 * n / total) for name, n in below_root[:top]],
    }


def render(path: Path, top: int = 15) -> str:
    spots = hot_spots(path, top)
    lines = [f"profile {path}:"]
    for kind in ("self", "inclusive"):
        lines.append(f"  top {kind}:")
        lines += [f"    {share:5.1f}%  {name}" for name, share in spots[kind]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.files:
        print(render(path, args.top))


if __name__ == "__main__":
    main()
