"""``python -m benchmarks``: run the workloads, print a table (or, with ``--json``, one
JSON object on stdout) of the median of each figure over the repetitions.

Workloads come from the modules in :data:`MODULES`. A module exposes either ``NAME``
and ``run(options) -> dict[str, float | int | str]`` (one workload, described by its
docstring) or ``WORKLOADS`` (a sequence of :class:`~benchmarks.common.Workload`); it
may also expose ``SIZES`` (size flags with their defaults and ``--quick`` values),
``add_arguments(parser)`` (more flags), ``summarize(results) -> figures`` (figures
derived from several workloads, e.g. ratios) and ``ONCE = True`` (figures that repeat
exactly, such as counted instructions: run once whatever ``--repeat`` says).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .common import Figures, Size, Workload, machine_info, machine_line, median_figures
from .profile import hot_spots
from .profile import render as render_profile

MODULES = (
    "benchmarks.throughput",
    "benchmarks.sync_costs",
    "benchmarks.client_apply",
    "benchmarks.text_edit",
    "benchmarks.instructions",
)
REPEAT, QUICK_REPEAT = 3, 1


def load_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in MODULES]


def workloads_of(module: ModuleType) -> list[Workload]:
    if hasattr(module, "WORKLOADS"):
        return list(module.WORKLOADS)
    doc = (module.run.__doc__ or module.__doc__ or "").strip().splitlines()
    once = bool(getattr(module, "ONCE", False))
    return [Workload(module.NAME, module.run, doc[0] if doc else "", once=once)]


def sizes_of(modules: Sequence[ModuleType]) -> list[Size]:
    """Every module's size flags; a flag two modules declare is added once."""
    seen: dict[str, Size] = {}
    for module in modules:
        for size in getattr(module, "SIZES", ()):
            seen.setdefault(size.name, size)
    return list(seen.values())


def parse_options(
    argv: Sequence[str] | None, modules: Sequence[ModuleType], registry: dict[str, Workload]
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the crdtsync benchmarks; print the median of each figure.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and 1 repetition (a smoke run)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=list(registry), help="run these workloads"
    )
    parser.add_argument("--repeat", type=int, help=f"repetitions (default {REPEAT}, quick 1)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    sizes = sizes_of(modules)
    for size in sizes:
        parser.add_argument(
            size.flag,
            type=positive,
            dest=size.name,
            help=f"{size.help} (default {size.default}, quick {size.quick})",
        )
    for module in modules:
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    options = parser.parse_args(argv)
    for size in sizes:
        if getattr(options, size.name) is None:
            setattr(options, size.name, size.quick if options.quick else size.default)
    if options.repeat is None:
        options.repeat = QUICK_REPEAT if options.quick else REPEAT
    options.sizes = {size.name: getattr(options, size.name) for size in sizes}
    return options


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def profiles(options: argparse.Namespace, since: float) -> dict[str, Any]:
    """Hot spots of the py-spy profiles written by this run (``--profile DIR``)."""
    directory = getattr(options, "profile", None)
    if directory is None:
        return {}
    written = [p for p in sorted(Path(directory).glob("*.txt")) if p.stat().st_mtime >= since]
    return {str(path): hot_spots(path) for path in written}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(workload: Workload, options: argparse.Namespace) -> tuple[Figures, float]:
    """The median figures of ``options.repeat`` runs, and the seconds they took."""
    started = time.perf_counter()
    runs = []
    repeat = 1 if workload.once else options.repeat
    for repetition in range(repeat):
        options.repetition = repetition
        gc.collect()  # no collection of earlier runs' garbage inside this one's clock
        progress(f"  {workload.name}: repetition {repetition + 1} of {repeat}")
        runs.append(workload.run(options))
    return median_figures(runs), time.perf_counter() - started


def run_all(
    selected: Sequence[Workload], options: argparse.Namespace
) -> tuple[dict[str, Figures], dict[str, str], dict[str, float]]:
    results: dict[str, Figures] = {}
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for workload in selected:
        progress(f"{workload.name}: {workload.description}")
        try:
            results[workload.name], seconds[workload.name] = measure(workload, options)
        except Exception as exc:  # noqa: BLE001 - a failed workload is reported, the rest run
            traceback.print_exc(file=sys.stderr)
            failures[workload.name] = f"{type(exc).__name__}: {exc}"
    return results, failures, seconds


def format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(results: dict[str, Figures], summary: Figures) -> str:
    """A three-column text table: workload, figure, value."""
    rows = [
        (name, key, format_value(v)) for name, figs in results.items() for key, v in figs.items()
    ]
    rows += [("summary", key, format_value(value)) for key, value in summary.items()]
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(HEADER)]
    lines = [_row(HEADER, widths), _row(tuple("-" * w for w in widths), widths)]
    previous = ""
    for name, key, value in rows:
        lines.append(_row((name if name != previous else "", key, value), widths))
        previous = name
    return "\n".join(lines)


HEADER = ("workload", "figure", "value")


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}"


def main(argv: Sequence[str] | None = None) -> int:
    modules = load_modules()
    registry = {w.name: w for module in modules for w in workloads_of(module)}
    options = parse_options(argv, modules, registry)
    if options.list:
        for workload in registry.values():
            print(f"{workload.name:<16} {workload.description}")
        return 0
    selected = (
        [registry[name] for name in options.only] if options.only else list(registry.values())
    )
    info = machine_info(getattr(options, "db_dir", None))
    progress(f"machine: {machine_line(info)}")
    progress(f"sizes: {options.sizes}, repetitions: {options.repeat}")
    started, wall_start = time.perf_counter(), time.time()
    results, failures, seconds = run_all(selected, options)
    summary: Figures = {}
    for module in modules:
        if hasattr(module, "summarize"):
            summary.update(module.summarize(results))
    total = time.perf_counter() - started
    hot = profiles(options, wall_start)
    if options.json:
        report = {
            "machine": info,
            "machine_line": machine_line(info),
            "sizes": options.sizes,
            "repetitions": options.repeat,
            "quick": options.quick,
            "results": results,
            "summary": summary,
            "failures": failures,
            "profiles": hot,
            "workload_seconds": seconds,
            "total_seconds": total,
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {machine_line(info)}")
        print(f"sizes: {options.sizes}; medians of {options.repeat} repetition(s)\n")
        print(table(results, summary))
        for path in hot:
            print("\n" + render_profile(Path(path)))
        for name, failure in failures.items():
            print(f"\nFAILED {name}: {failure}")
        print(f"\ntotal {total:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
