"""What every workload shares: sizes, medians, the machine line, and servers in subprocesses.

A workload is a function ``run(options) -> Figures`` registered under a name (see
:mod:`benchmarks.__main__`); it reads its sizes from ``options`` (an
:class:`argparse.Namespace`) and returns flat figures: numbers, counts and short notes.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from crdtsync_server.metrics import PUSH_STAGES

Figure = float | int | str
Figures = dict[str, Figure]
Run = Callable[[Any], Figures]

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("crdtsync", "pycrdt", "pycrdt-websocket", "websockets", "msgpack")


@dataclass(frozen=True)
class Size:
    """A size flag (``--clients N``) with its default and its ``--quick`` value."""

    name: str
    default: int
    quick: int
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Workload:
    """A named measurement. ``run`` returns one repetition's figures."""

    name: str
    run: Run
    description: str
    #: its figures repeat exactly (counted, not timed): one run whatever ``--repeat`` says
    once: bool = False


# -- statistics ---------------------------------------------------------------------------


def median_figures(runs: Sequence[Figures]) -> Figures:
    """The median of each numeric figure over repetitions (a note is taken from the first
    repetition, or joined when the repetitions disagree)."""
    out: Figures = {}
    for key in runs[0]:
        values = [run[key] for run in runs if key in run]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            middle = statistics.median(values)  # type: ignore[type-var]
            all_ints = all(isinstance(v, int) for v in values)
            out[key] = int(middle) if all_ints and middle == int(middle) else float(middle)
        else:
            notes = list(dict.fromkeys(str(v) for v in values))
            out[key] = notes[0] if len(notes) == 1 else " | ".join(notes)
    return out


def rate(count: int, seconds: float) -> float:
    """Items per second (0 when nothing was timed)."""
    return count / seconds if seconds > 0 else 0.0


# -- the machine --------------------------------------------------------------------------


def machine_info(data_dir: str | None = None) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python, package versions, git commit and date of this run."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
        "memory_gib": _memory_gib(),
        "os": platform.platform(terse=True),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for package in PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["commit"] = _git_commit()
    info["db_filesystem"] = _filesystem(data_dir or tempfile.gettempdir())
    info["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line saying where and with what a run was measured."""
    versions = ", ".join(f"{package} {info[package]}" for package in PACKAGES)
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"{info['memory_gib']} GiB, {info['os']}, {info['python']}, {versions}, "
        f"commit {info['commit']}, database on {info['db_filesystem']}, {info['date']}"
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        import psutil
    except ImportError:
        return 0.0
    return round(float(psutil.virtual_memory().total) / 2**30, 1)


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (``ext4``, ``tmpfs``...)."""
    try:
        import psutil
    except ImportError:
        return "unknown"
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    for partition in psutil.disk_partitions(all=True):
        mount = partition.mountpoint
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, partition.fstype
    return kind


# -- servers in subprocesses --------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthz_ok(port: int) -> bool:
    """True if ``GET /healthz`` on the port answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def port_open(port: int) -> bool:
    """True if something accepts TCP connections on the port."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class ServerProcess:
    """A server in a subprocess, started and made ready on entry, always stopped on exit.

    Its output goes to a temporary log whose tail is shown if it fails to start.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        ready: Callable[[int], bool] = healthz_ok,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.ready = ready
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> ServerProcess:
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:4]} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.argv[:4]} not ready after {self.timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


# -- the relay's own counters -------------------------------------------------------------


def relay_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Every sample on the relay's ``/metrics``, by name with its labels as written
    (e.g. ``crdtsync_push_stage_seconds_total{stage="decide"}``)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return {name: float(value) for name, value in samples}


def stage_figures(before: dict[str, float], after: dict[str, float]) -> Figures:
    """``stage_<name>_us_per_change``: the relay's µs in each push stage between two
    :func:`relay_metrics` snapshots, over the changes it decided in between (the delta
    of ``crdtsync_merge_seconds_count``: every verdict, accepted or not)."""
    count = "crdtsync_merge_seconds_count"
    changes = after[count] - before[count]
    out: Figures = {}
    for stage in PUSH_STAGES:
        name = f'crdtsync_push_stage_seconds_total{{stage="{stage}"}}'
        spent = after.get(name, 0.0) - before.get(name, 0.0)
        out[f"stage_{stage}_us_per_change"] = 1e6 * spent / changes if changes else 0.0
    return out


# -- timing -------------------------------------------------------------------------------


@dataclass
class Timed:
    """A timed phase: wall seconds, and CPU seconds of the server and of this process."""

    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def figures(self, changes: int) -> Figures:
        return {
            "seconds": self.seconds,
            "server_cpu_pct": 100 * self.server_cpu / self.seconds if self.seconds else 0.0,
            "server_cpu_us_per_change": 1e6 * self.server_cpu / changes if changes else 0.0,
            "client_cpu_pct": 100 * self.client_cpu / self.seconds if self.seconds else 0.0,
        }


class Clock:
    """Wall time and the CPU time of one or more server processes (summed) and of this
    one, over a block."""

    def __init__(self, pid: int, *more: int) -> None:
        import psutil

        self._servers = [psutil.Process(one) for one in (pid, *more)]
        self.timed = Timed()

    def __enter__(self) -> Timed:
        self._cpu = self._server_cpu()
        self._own = time.process_time()
        self._wall = time.perf_counter()
        return self.timed

    def __exit__(self, *exc_info: object) -> None:
        self.timed.seconds = time.perf_counter() - self._wall
        self.timed.client_cpu = time.process_time() - self._own
        self.timed.server_cpu = self._server_cpu() - self._cpu

    def _server_cpu(self) -> float:
        total = 0.0
        for server in self._servers:
            times = server.cpu_times()
            total += float(times.user + times.system)
        return total


# -- profiling ----------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None, *, rate_hz: int = 200) -> Iterator[Path | None]:
    """Sample ``pid`` with ``py-spy record`` (collapsed stacks) while the block runs.

    Does nothing when ``output`` is None. py-spy writes its file when interrupted.
    """
    if output is None:
        yield None
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate_hz)]
    argv += ["--format", "raw", "--output", str(output)]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it attach before the measured phase starts
        yield output
    finally:
        if sampler.poll() is None:
            sampler.send_signal(signal.SIGINT)
        try:
            sampler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()
