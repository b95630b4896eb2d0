"""The ``crdtsync`` command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crdtsync", *args], capture_output=True, text=True, timeout=60
    )


def test_offline_demo_shows_pending_changes_and_statuses() -> None:
    result = run("demo", "offline")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Pending Changes" in out
    assert "create  pending" in out
    assert "refused at once, nothing queued" in out and "Industry" in out
    assert "cancel out" in out
    assert "Acme is pending" in out
    assert "Traceback" not in out + result.stderr


def test_unknown_command_is_a_usage_error_not_a_traceback() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_on_a_file_that_is_not_a_store_prints_one_clear_error(tmp_path: object) -> None:
    from pathlib import Path

    bogus = Path(str(tmp_path)) / "bogus.sqlite3"
    bogus.write_bytes(b"not a database" * 200)
    result = run("demo", "offline", "--store", str(bogus))
    assert result.returncode == 2
    assert "crdtsync: error:" in result.stderr and "bogus.sqlite3" in result.stderr
    assert "Traceback" not in result.stderr
