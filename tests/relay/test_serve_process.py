"""``crdtsync serve`` as a real process: health and metrics, graceful SIGTERM, and
acknowledged changes surviving ``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from crdtsync_server.storage import RelayStorage

from tests.helpers.harness import EXAMPLE_CONFIG
from tests.helpers.relay_process import SECRET, ServeProcess, free_port


@pytest.fixture
def served(tmp_path: Path, relay_database: str) -> Iterator[ServeProcess]:
    """``crdtsync serve`` on each kind of database (a SQLite file, PostgreSQL)."""
    database = Path(relay_database) if "://" not in relay_database else relay_database
    process = ServeProcess(database, free_port(), home=tmp_path)
    process.start()
    yield process
    process.stop()


def test_healthz_and_metrics_answer_on_the_websocket_port(served: ServeProcess) -> None:
    assert served.get("/healthz") == (200, "ok\n")

    async def push_one() -> None:
        async with served.client("alice", served.home / "a.sqlite3") as alice:
            alice.create("Account", {"Name": "Counted"})
            await alice.sync(timeout=10)

    asyncio.run(push_one())
    status, content_types, text = served.get_with_types("/metrics")
    assert status == 200
    assert content_types == ["text/plain; version=0.0.4; charset=utf-8"]  # one, Prometheus
    assert 'crdtsync_changes_total{verdict="accepted"} 1' in text
    assert "crdtsync_merge_seconds_count 1" in text


def test_sigterm_shuts_down_gracefully_closing_connections_with_1001(
    served: ServeProcess,
) -> None:
    from websockets.asyncio.client import connect

    async def connect_then_terminate() -> int | None:
        async with connect(f"ws://127.0.0.1:{served.port}") as websocket:
            assert served.process is not None
            served.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(websocket.wait_closed(), 10)
            return websocket.close_code

    assert asyncio.run(connect_then_terminate()) == 1001
    assert served.process is not None
    assert served.process.wait(timeout=10) == 0


def test_acknowledged_changes_survive_kill_9_of_the_relay(served: ServeProcess) -> None:
    store = served.home / "alice.sqlite3"

    async def write() -> list[str]:
        async with served.client("alice", store) as alice:
            ids = [alice.create("Account", {"Name": f"Durable {i}"}) for i in range(25)]
            await alice.sync(timeout=10)
            assert alice.pending() == []
            return ids

    ids = asyncio.run(write())
    assert served.process is not None
    served.process.send_signal(signal.SIGKILL)
    served.process.wait()
    served.start()  # same database, same port

    async def read() -> set[str]:
        async with served.client("bob", served.home / "bob.sqlite3") as bob:
            await bob.sync(timeout=10)
            return {record.id for record in bob.records("Account")}

    assert set(ids) <= asyncio.run(read())


def test_admin_cli_shares_a_record_and_reports_its_access(served: ServeProcess) -> None:
    import json

    store = served.home / "alice.sqlite3"

    async def create() -> str:
        async with served.client("alice", store) as alice:
            account = alice.create("Account", {"Name": "Acme"})
            deal = alice.create(
                "Opportunity", {"Name": "Deal", "Account": account, "Stage": "Proposal"}
            )
            await alice.sync(timeout=10)
            return deal

    deal = asyncio.run(create())
    url = f"ws://127.0.0.1:{served.port}"
    env = {**os.environ, "CRDTSYNC_SECRET": SECRET}

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "crdtsync",
                "admin",
                "--config",
                str(EXAMPLE_CONFIG),
                "--url",
                url,
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    shared = admin("share", deal, "bob", "--access", "edit")
    assert shared.returncode == 0, shared.stderr
    assert json.loads(shared.stdout)["shares"] == {"bob": "edit"}
    report = admin("access", deal)
    assert json.loads(report.stdout)["owner"] == "alice"
    assert json.loads(report.stdout)["sharing"] == "private"
    missing = admin("share", "no-such-record", "bob")
    assert missing.returncode == 2
    assert "no record no-such-record" in missing.stderr and "Traceback" not in missing.stderr

    async def bob_sees() -> bool:
        async with served.client("bob", served.home / "bob.sqlite3") as bob:
            await bob.sync(timeout=10)
            return bob.get(deal) is not None

    assert asyncio.run(bob_sees())


# -- on PostgreSQL: one relay per database, clear refusals ------------------------------


def serve_briefly(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    """``crdtsync serve`` that is expected to refuse to start (and exit by itself)."""
    env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
    if secret is not None:
        env["CRDTSYNC_SECRET"] = secret
    command = [sys.executable, "-m", "crdtsync", "serve", "--config", str(EXAMPLE_CONFIG)]
    return subprocess.run(
        [*command, "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_two_relay_processes_on_one_postgresql_database_serve_as_one_and_survive_a_kill(
    tmp_path: Path, postgres_url: str
) -> None:
    """``crdtsync serve`` twice on one database: a change pushed to one reaches a client
    of the other; one killed with -9, a client moves to the other and loses nothing."""
    first = ServeProcess(postgres_url, free_port(), home=tmp_path)
    second = ServeProcess(postgres_url, free_port(), home=tmp_path)
    first.start()
    second.start()
    try:

        async def scenario() -> None:
            alice = first.client("alice", tmp_path / "alice.sqlite3", url=[first.url, second.url])
            bob = second.client("bob", tmp_path / "bob.sqlite3")
            async with alice, bob:
                ids = [alice.create("Account", {"Name": f"Durable {i}"}) for i in range(20)]
                await alice.sync(timeout=10)
                await bob.sync(timeout=10)
                assert {r.id for r in bob.records("Account")} >= set(ids)  # crossed nodes
                assert first.process is not None
                first.process.send_signal(signal.SIGKILL)
                first.process.wait()
                later = alice.create("Account", {"Name": "After the kill"})
                await alice.sync(timeout=15)
                assert alice.url == second.url and alice.pending() == []
                await bob.sync(timeout=10)
                assert bob.get(later) is not None

        asyncio.run(scenario())
    finally:
        first.stop()
        second.stop()


def test_a_postgresql_database_without_a_secret_is_refused_naming_what_is_missing(
    postgres_url: str,
) -> None:
    url = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    done = serve_briefly("--db", url, secret=None)
    assert done.returncode == 2
    assert "[server] secret (or CRDTSYNC_SECRET) is needed with a PostgreSQL database" in (
        done.stderr
    )
    assert "hunter2" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_an_unreachable_postgresql_server_is_reported_without_its_password() -> None:
    port = free_port()  # nothing listens there
    done = serve_briefly("--db", f"postgresql://crdtsync:hunter2@127.0.0.1:{port}/relay")
    assert done.returncode == 2
    assert f"postgresql://crdtsync:***@127.0.0.1:{port}/relay: cannot connect" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_a_relay_that_cannot_take_the_database_lock_at_start_says_so_without_a_traceback(
    postgres_url: str,
) -> None:
    RelayStorage(postgres_url).close()  # the tables
    with psycopg.connect(postgres_url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT value FROM meta WHERE key = 'seq' FOR UPDATE")  # held
        done = serve_briefly("--db", postgres_url)
    assert done.returncode == 2
    assert "waiting for the relays' sequence row, held by another session" in done.stderr
    assert "cannot check the configuration the relays run: another session has held" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
