"""What docs/deploy.md tells an operator to do works: an online backup of a serving
relay, restored, serves every acknowledged change; a backup never overwrites."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from crdtsync_server.storage import RelayStorage

from .conftest import EXAMPLE_CONFIG
from .relay_process import ServeProcess, free_port


def backup(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "crdtsync", "backup", "--config", str(EXAMPLE_CONFIG), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_an_online_backup_restores_to_a_relay_with_every_acknowledged_change(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    served = ServeProcess(live / "relay.sqlite3", free_port(), secret=None)
    served.start()
    try:
        async with served.client("alice", tmp_path / "alice.sqlite3") as alice:
            ids = [alice.create("Account", {"Name": f"Acme {n}"}) for n in range(20)]
            await alice.sync()
            out = tmp_path / "backup.sqlite3"
            made = backup(str(out), "--db", str(served.database))  # while it serves
            assert made.returncode == 0, made.stderr
            assert "backed up" in made.stdout and "secret" in made.stdout
            alice.create("Account", {"Name": "After the backup"})
            await alice.sync()
    finally:
        served.stop()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{out}.secret").stat().st_mode) == 0o600
    storage = RelayStorage(str(out), create=False)
    try:
        assert storage.integrity_check() == "ok"
        assert all(storage.get_record(rid) is not None for rid in ids)
    finally:
        storage.close()

    restored = tmp_path / "restored"  # what deploy.md says: put both files back
    restored.mkdir()
    shutil.copyfile(out, restored / "relay.sqlite3")
    shutil.copyfile(f"{out}.secret", restored / "relay.sqlite3.secret")
    again = ServeProcess(restored / "relay.sqlite3", free_port(), secret=None)
    again.start()
    try:
        async with again.client("bob", tmp_path / "bob.sqlite3") as bob:
            await bob.sync()
            assert {r.id for r in bob.records("Account")} == set(ids)
    finally:
        again.stop()


def test_a_backup_never_overwrites_and_needs_a_database(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    RelayStorage(str(database)).close()
    taken = tmp_path / "taken.sqlite3"
    taken.write_text("precious")
    refused = backup(str(taken), "--db", str(database))
    assert refused.returncode == 2 and "never overwrites" in refused.stderr
    assert taken.read_text() == "precious"
    missing = backup(str(tmp_path / "b.sqlite3"), "--db", str(tmp_path / "nope.sqlite3"))
    assert missing.returncode == 2 and "no relay database there" in missing.stderr
    assert not (tmp_path / "b.sqlite3").exists() and not (tmp_path / "nope.sqlite3").exists()
