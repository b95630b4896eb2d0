"""What docs/deploy.md tells an operator to do works: an online backup of a serving
relay, restored, serves every change it holds and replicas carry on with it; a backup
or a restore never overwrites; the relay serves wss:// itself with a certificate."""

from __future__ import annotations

import asyncio
import configparser
import http.client
import os
import re
import shlex
import shutil
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from crdtsync_server.storage import FORMAT_VERSION, RelayStorage

from crdtsync import Client, InvalidOperation
from crdtsync.core.sqlite_meta import get_meta
from tests.helpers.harness import EXAMPLE_CONFIG, ROOT, RelayHarness, eventually
from tests.helpers.relay_process import ServeProcess, free_port
from tests.helpers.tls import make_certificate


def crdtsync(
    *args: str, config: Path = EXAMPLE_CONFIG, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a process, without the caller's ``CRDTSYNC_SECRET`` (``env`` adds
    variables)."""
    env = {**{k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "crdtsync", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    with urllib.request.urlopen(url, context=context, timeout=5) as reply:
        return reply.status, reply.read().decode()


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
            made = crdtsync("backup", str(out), "--db", str(served.database))  # while it serves
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
    refused = crdtsync("backup", str(taken), "--db", str(database))
    assert refused.returncode == 2 and "never overwrites" in refused.stderr
    assert taken.read_text() == "precious"
    missing = crdtsync(
        "backup", str(tmp_path / "b.sqlite3"), "--db", str(tmp_path / "nope.sqlite3")
    )
    assert missing.returncode == 2 and "no relay database there" in missing.stderr
    assert not (tmp_path / "b.sqlite3").exists() and not (tmp_path / "nope.sqlite3").exists()


def test_backup_and_restore_point_a_postgresql_database_to_its_own_tools(
    tmp_path: Path, postgres_url: str
) -> None:
    url = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    env_secret = {"CRDTSYNC_SECRET": "a-long-enough-test-secret-of-32-bytes!"}
    backup = crdtsync("backup", str(tmp_path / "b.sqlite3"), "--db", url, env=env_secret)
    assert backup.returncode == 2
    assert "cannot back up a PostgreSQL database" in backup.stderr and "pg_dump" in backup.stderr
    restore = crdtsync("restore", str(tmp_path / "b.sqlite3"), "--db", url, env=env_secret)
    assert restore.returncode == 2 and "pg_restore" in restore.stderr
    assert "hunter2" not in backup.stderr + restore.stderr
    assert not (tmp_path / "b.sqlite3").exists()


async def test_a_restored_relay_serves_the_backup_and_replicas_that_saw_more_carry_on(
    tmp_path: Path,
) -> None:
    """A disaster after the backup: the machine's files are gone. The restore serves
    every record of the backup; alice, who synced changes the backup lacks, still gets
    every change made after the restore (her cursor counted changes of the lost
    database, so she must start over rather than skip as many of the new ones)."""
    live = tmp_path / "live"
    live.mkdir()
    database = live / "relay.sqlite3"
    served = ServeProcess(database, free_port(), secret=None)
    served.start()
    alice = served.client("alice", tmp_path / "alice.sqlite3")
    try:
        async with alice:
            kept = [alice.create("Account", {"Name": f"Kept {n}"}) for n in range(3)]
            await alice.sync()
            made = crdtsync("backup", str(tmp_path / "backup.sqlite3"), "--db", str(database))
            assert made.returncode == 0, made.stderr
            for n in range(3):  # acknowledged, but only by the database about to be lost
                alice.create("Account", {"Name": f"After the backup {n}"})
            await alice.sync()
    finally:
        served.stop()
    old_identity = identity(tmp_path / "backup.sqlite3")
    shutil.rmtree(live)  # the disk is gone
    live.mkdir()

    saved = {path.name: path.read_bytes() for path in tmp_path.glob("backup.sqlite3*")}
    restored = crdtsync("restore", str(tmp_path / "backup.sqlite3"), "--db", str(database))
    assert restored.returncode == 0, restored.stderr
    after = {path.name: path.read_bytes() for path in tmp_path.glob("backup.sqlite3*")}
    assert after == saved  # the backup is only read
    assert "restored" in restored.stdout and "secret" in restored.stdout
    assert identity(database) != old_identity

    again = ServeProcess(database, served.port, secret=None)
    again.start()
    try:
        async with again.client("bob", tmp_path / "bob.sqlite3") as bob:
            await bob.sync()
            assert {r.id for r in bob.records("Account")} == set(kept)
            new = [bob.create("Account", {"Name": f"New {n}"}) for n in range(6)]
            await bob.sync()
        async with again.client("alice", tmp_path / "alice.sqlite3") as alice:  # her store
            await alice.sync()
            seen = {r.id for r in alice.records("Account")}
            assert set(new) <= seen and set(kept) <= seen
    finally:
        again.stop()


def identity(database: Path) -> tuple[object, object]:
    """A relay database's ``server_id`` and CRDT client id, read without writing."""
    db = sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return get_meta(db, "server_id"), get_meta(db, "client_id")
    finally:
        db.close()


def test_a_restore_never_overwrites_and_needs_a_relay_database(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    RelayStorage(str(database)).close()
    backup = tmp_path / "backup.sqlite3"
    assert crdtsync("backup", str(backup), "--db", str(database)).returncode == 0
    over = crdtsync("restore", str(backup), "--db", str(database))
    assert over.returncode == 2 and "exists: move it away first" in over.stderr
    client_store = tmp_path / "client.sqlite3"
    Client(store=str(client_store), schema=EXAMPLE_CONFIG).close()
    wrong = crdtsync("restore", str(client_store), "--db", str(tmp_path / "new.sqlite3"))
    assert wrong.returncode == 2 and "client store" in wrong.stderr
    assert "Traceback" not in over.stderr + wrong.stderr
    assert not (tmp_path / "new.sqlite3").exists()


async def test_the_relay_serves_wss_with_its_own_certificate(tmp_path: Path) -> None:
    tls = make_certificate(tmp_path)
    relay = RelayHarness(tmp_path, tls_certificate=str(tls.certificate), tls_key=str(tls.key))
    await relay.start()
    try:
        url = relay.server.url
        assert url.startswith("wss://")
        context = tls.client_context()
        async with (
            relay.client("alice", url=url, ssl_context=context) as alice,
            relay.client("bob", url=url, ssl_context=context) as bob,
        ):
            rid = alice.create("Account", {"Name": "Over TLS"})
            await alice.sync()
            await eventually(lambda: rid in {r.id for r in bob.records("Account")})
            assert bob.get(rid).fields["Name"] == "Over TLS"
        health = await asyncio.to_thread(get, f"https://127.0.0.1:{relay.port}/healthz", context)
        assert health == (200, "ok\n")
        with pytest.raises(http.client.RemoteDisconnected):  # no plain HTTP next to it
            await asyncio.to_thread(get, f"http://127.0.0.1:{relay.port}/healthz")
        stranger = relay.client("carol", url=url)  # trusts only the system's authorities
        async with stranger:
            await eventually(lambda: "CERTIFICATE_VERIFY_FAILED" in stranger.last_error)
    finally:
        await relay.stop()


def test_tls_settings_that_cannot_work_are_refused_by_name(tmp_path: Path) -> None:
    tls = make_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_certificate(tmp_path / "other")
    cases = {
        f'tls_certificate = "{tls.certificate}"': "tls_certificate and tls_key go together",
        f'tls_certificate = "{tls.certificate}"\ntls_key = "{tmp_path}/nope.key"': (
            f"tls_key: cannot read {tmp_path}/nope.key"
        ),
        f'tls_certificate = "{tls.certificate}"\ntls_key = "{other.key}"': (
            "are not a PEM certificate and its private key"
        ),
    }
    example = EXAMPLE_CONFIG.read_text()
    for setting, error in cases.items():
        config = tmp_path / "app.toml"
        config.write_text(example.replace("[server]\n", f"[server]\n{setting}\n", 1))
        served = crdtsync("serve", "--port", str(free_port()), config=config)
        assert served.returncode == 2, served.stdout
        assert error in served.stderr and "Traceback" not in served.stderr
    with pytest.raises(InvalidOperation, match="ssl_context is for a wss://"):
        Client(
            "ws://127.0.0.1:1",
            store=":memory:",
            schema=EXAMPLE_CONFIG,
            ssl_context=tls.client_context(),
        )


DEPLOY = EXAMPLE_CONFIG.parents[2] / "docs" / "deploy.md"


def doc_block(language: str) -> str:
    """The one ```language code block of docs/deploy.md."""
    blocks = re.findall(rf"```{language}\n(.*?)```", DEPLOY.read_text(), flags=re.S)
    assert len(blocks) == 1, f"expected one {language} block in {DEPLOY}"
    return str(blocks[0])


def substitute(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced; every key must occur (the guide changed if not)."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the guide's example"
        text = text.replace(old, new)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.access(found, os.X_OK), "nginx is missing: run ./scripts/install-test-deps"
    return found


async def test_the_guides_nginx_config_carries_websockets_over_tls(tmp_path: Path) -> None:
    """The guide's nginx server block, verbatim but for its ports and certificate
    paths, proxies replicas' wss:// connections to a relay process, and /healthz."""
    tls = make_certificate(tmp_path)
    served = ServeProcess(tmp_path / "relay.sqlite3", free_port())
    proxy_port = free_port()
    site = substitute(
        doc_block("nginx"),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{proxy_port} ssl;",
            "/etc/letsencrypt/live/sync.example.com/fullchain.pem": str(tls.certificate),
            "/etc/letsencrypt/live/sync.example.com/privkey.pem": str(tls.key),
            "127.0.0.1:8765": f"127.0.0.1:{served.port}",
        },
    )
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    (prefix / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        + "events { worker_connections 64; }\n"
        + f"http {{\naccess_log off;\n{temp}\nuwsgi_temp_path {prefix}/uwsgi;\n"
        + f"scgi_temp_path {prefix}/scgi;\n{site}\n}}\n"
    )
    served.start()
    nginx = subprocess.Popen(
        [
            nginx_binary(),
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(prefix / "error.log"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        await wait_for_port(proxy_port, nginx)
        url = f"wss://127.0.0.1:{proxy_port}/"
        context = tls.client_context()
        async with (
            served.client(
                "alice", tmp_path / "alice.sqlite3", url=url, ssl_context=context
            ) as alice,
            served.client("bob", tmp_path / "bob.sqlite3", url=url, ssl_context=context) as bob,
        ):
            rid = alice.create("Account", {"Name": "Through the proxy"})
            await alice.sync()
            await eventually(lambda: rid in {r.id for r in bob.records("Account")})
            bob.update(rid, {"Website": "https://example.com"})
            await bob.sync()
            await eventually(lambda: alice.get(rid).fields.get("Website") == "https://example.com")
        health = await asyncio.to_thread(get, f"https://127.0.0.1:{proxy_port}/healthz", context)
        assert health == (200, "ok\n")
    finally:
        nginx.terminate()
        output, _ = nginx.communicate(timeout=10)
        served.stop()
    errors = (prefix / "error.log").read_text()
    assert "[emerg]" not in errors and "[crit]" not in errors, errors + output


async def wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    for _ in range(200):
        assert process.poll() is None, process.communicate()[0]
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nothing listens on {port}")


def test_the_guides_systemd_unit_starts_the_relay_and_stops_it_cleanly(tmp_path: Path) -> None:
    """The unit's ExecStart, with the guide's app.toml settings, serves; SIGTERM (what
    systemctl stop sends) ends it with status 0 well within TimeoutStopSec; the
    secret it makes lands in the state directory, which the unit lets it write."""
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(doc_block("ini"))
    service = unit["Service"]
    state = service["WorkingDirectory"]
    assert state in service["ReadWritePaths"].split()
    guide = DEPLOY.read_text()
    database = f"{state}/relay.sqlite3"
    assert f'`"{database}"`' in guide  # the database the guide recommends, in that directory
    port = free_port()
    config = tmp_path / "app.toml"
    config.write_text(
        substitute(
            EXAMPLE_CONFIG.read_text(),
            {
                'database = "crdtsync.sqlite3"': f'database = "{database}"',
                "port = 8765": f"port = {port}",
            },
        ).replace(state, str(tmp_path / "state"))
    )
    (tmp_path / "state").mkdir(mode=0o700)
    command = shlex.split(service["ExecStart"])
    assert command[:2] == ["/opt/crdtsync/bin/crdtsync", "serve"], command
    command = [sys.executable, "-m", "crdtsync", *command[1:]]
    command[command.index("/etc/crdtsync/app.toml")] = str(config)
    umask = int(service["UMask"], 8)
    env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
    relay = subprocess.Popen(
        command,
        cwd=tmp_path / "state",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        umask=umask,
    )
    try:
        assert relay.stdout is not None
        ready, printed = f"crdtsync relay listening on ws://127.0.0.1:{port}\n", []
        while ready not in printed and len(printed) < 10 and relay.poll() is None:
            printed.append(relay.stdout.readline())  # log lines come first
        assert ready in printed, printed
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=int(service["TimeoutStopSec"])) == 0
    finally:
        if relay.poll() is None:
            relay.kill()
        relay.communicate()
    secret = tmp_path / "state" / "relay.sqlite3.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for path in (tmp_path / "state").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path  # nothing for others


def test_a_backup_reads_an_older_format_without_migrating_it_and_restore_migrates_the_copy(
    tmp_path: Path,
) -> None:
    """Backing up before an upgrade must not upgrade: the database (maybe still served
    by the old version) keeps its format; restoring the backup brings the copy forward."""
    database = tmp_path / "relay.sqlite3"
    db = sqlite3.connect(database)
    db.executescript((ROOT / "tests" / "fixtures" / "relay_format1.sql").read_text())
    db.close()
    before = database.read_bytes()
    made = crdtsync("backup", str(tmp_path / "backup.sqlite3"), "--db", str(database))
    assert made.returncode == 0, made.stderr
    assert database.read_bytes() == before
    assert format_of(tmp_path / "backup.sqlite3") == 1
    again = tmp_path / "again.sqlite3"
    restored = crdtsync("restore", str(tmp_path / "backup.sqlite3"), "--db", str(again))
    assert restored.returncode == 0, restored.stderr
    assert format_of(again) == FORMAT_VERSION > 1


def format_of(database: Path) -> object:
    db = sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return get_meta(db, "format_version")
    finally:
        db.close()
