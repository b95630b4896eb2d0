"""A new user's and operator's first hour: nothing created by mistake, fatal errors
that fail fast and say why, no traceback for bad input, every bad field named."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crdtsync import (
    Client,
    InvalidOperation,
    OfflineError,
    StoreError,
    SyncError,
    SyncFailed,
    ValidationError,
)
from tests.helpers.harness import EXAMPLE_CONFIG, ROOT, RelayHarness
from tests.helpers.relay_process import SECRET, ServeProcess, free_port

NOTES = ROOT / "tests" / "fixtures" / "notes.toml"


def crdtsync_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRDTSYNC_SECRET": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "crdtsync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("crdtsync: error: ")
    return line


# -- 1. compact never creates a database ---------------------------------------------------


@pytest.mark.parametrize("path", ["missing.sqlite3", "no/such/dir/relay.sqlite3"])
def test_compact_of_a_database_that_is_not_there_creates_nothing(tmp_path: Path, path: str) -> None:
    database = tmp_path / path
    result = crdtsync_cli(
        "compact", "--config", str(EXAMPLE_CONFIG), "--db", str(database), "--through", "1"
    )
    assert "no relay database there" in one_error_line(result)
    assert not database.exists() and list(tmp_path.iterdir()) in ([], [tmp_path / "no"])


# -- 2. a config where nobody can do something says so ---------------------------------------


def test_a_relay_whose_roles_grant_nothing_says_what_nobody_can_do(tmp_path: Path) -> None:
    toml = NOTES.read_text().split("[roles.default]")[0]  # no [roles] at all
    config = tmp_path / "no-roles.toml"
    config.write_text(toml)
    served = ServeProcess(tmp_path / "relay.sqlite3", free_port(), config)
    served.start()
    time.sleep(0.3)
    output = served.stop()
    [line] = [line for line in output.splitlines() if "no role grants" in line]
    assert "Note (create, read, update, delete)" in line and "[roles.NAME]" in line


def test_a_role_that_leaves_an_action_to_nobody_is_named(tmp_path: Path) -> None:
    toml = EXAMPLE_CONFIG.read_text().replace(
        'Task        = ["create", "read", "update", "delete"]', 'Task        = ["read"]'
    )
    config = tmp_path / "read-only-tasks.toml"
    config.write_text(toml)
    served = ServeProcess(tmp_path / "relay.sqlite3", free_port(), config)
    served.start()
    time.sleep(0.3)
    output = served.stop()
    [line] = [line for line in output.splitlines() if "no role grants" in line]
    assert "Task (create, update, delete)" in line and "Account" not in line


# -- 3. fatal errors fail fast -----------------------------------------------------------------


def test_a_url_that_is_not_a_websocket_is_refused_by_the_constructor(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8765", "127.0.0.1:8765", "wss//x"):
        with pytest.raises(InvalidOperation, match="must start with ws:// or wss://"):
            Client(url, token="t", store=str(tmp_path / "a.sqlite3"), schema=EXAMPLE_CONFIG)


@pytest.mark.parametrize("token", ["not-a-jwt", "signed-elsewhere"])
async def test_sync_raises_at_once_when_the_relay_refuses_the_token(
    relay: RelayHarness, token: str
) -> None:
    if token == "signed-elsewhere":
        import jwt

        token = jwt.encode({"sub": "alice"}, "x" * 40, algorithm="HS256")
    client = Client(relay.url, token=token, store=":memory:", schema=EXAMPLE_CONFIG)
    events = client.events()
    async with client:
        started = time.monotonic()
        with pytest.raises(SyncError) as raised:
            await client.sync(timeout=30)
        assert time.monotonic() - started < 5  # loosely: not the 30 s timeout
    assert raised.value.code == "auth_failed"
    assert "set_token" in str(raised.value)
    seen = []
    while (event := events.get_nowait()) is not None:
        seen.append(event)
    assert any(isinstance(e, SyncFailed) and e.code == "auth_failed" for e in seen)


async def test_sync_raises_at_once_when_the_relay_runs_another_app(
    relay: RelayHarness, tmp_path: Path
) -> None:
    client = Client(
        relay.url, token=relay.token("alice"), store=str(tmp_path / "n.sqlite3"), schema=NOTES
    )
    client.create("Note", {"Title": "mine"})
    async with client:
        started = time.monotonic()
        with pytest.raises(SyncError, match="no object type 'Note'") as raised:
            await client.sync(timeout=30)
        assert time.monotonic() - started < 5
        assert raised.value.code == "unknown_object"
        assert [c.record_id for c in client.pending()]  # nothing lost
        assert client.get(client.pending()[0].record_id) is not None  # still readable


async def test_a_relay_that_is_down_is_still_retried(tmp_path: Path) -> None:
    client = Client(f"ws://127.0.0.1:{free_port()}", token="t", schema=EXAMPLE_CONFIG)
    async with client:
        with pytest.raises(OfflineError, match="could not sync"):
            await client.sync(timeout=0.5)


async def test_a_new_token_clears_the_failure(relay: RelayHarness) -> None:
    client = Client(relay.url, token="not-a-jwt", schema=EXAMPLE_CONFIG, backoff_max=0.2)
    async with client:
        with pytest.raises(SyncError):
            await client.sync(timeout=10)
        client.set_token(relay.token("alice"))
        await client.sync(timeout=10)
        assert client.online


async def test_a_new_token_given_while_the_refused_connection_closes_is_used(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal of the old token must not outlive set_token(): the connection it ended
    may still be closing (a slow close handshake) when the new token arrives."""
    from crdtsync.client import facade

    closing = asyncio.Event()
    real_close = facade._close

    async def slow_close(websocket: object) -> None:
        closing.set()
        await asyncio.sleep(0.3)
        await real_close(websocket)  # type: ignore[arg-type]

    monkeypatch.setattr(facade, "_close", slow_close)
    client = Client(relay.url, token="not-a-jwt", schema=EXAMPLE_CONFIG, backoff_max=0.2)
    async with client:
        await asyncio.wait_for(closing.wait(), 10)
        client.set_token(relay.token("alice"))
        await client.sync(timeout=10)
        assert client.online


# -- 4. no traceback for bad input -------------------------------------------------------------


def test_admin_with_an_http_url_is_one_clear_error() -> None:
    result = crdtsync_cli(
        "admin", "--config", str(EXAMPLE_CONFIG), "--url", "http://127.0.0.1:9", "access", "r"
    )
    assert "--url must start with ws:// or wss://" in one_error_line(result)


def test_admin_against_something_that_is_not_a_relay_is_one_clear_error(
    tmp_path: Path,
) -> None:
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"ws://127.0.0.1:{server.server_port}"
        result = crdtsync_cli("admin", "--config", str(EXAMPLE_CONFIG), "--url", url, "access", "r")
    finally:
        server.shutdown()
    assert "no crdtsync relay answers at" in one_error_line(result)


async def test_a_client_used_after_its_block_says_it_is_closed(relay: RelayHarness) -> None:
    client = relay.client("alice")
    async with client:
        rid = client.create("Account", {"Name": "Acme"})
    for call in (
        lambda: client.get(rid),
        lambda: client.create("Account", {"Name": "Late"}),
        lambda: client.update(rid, {"Name": "Late"}),
        client.pending,
        client.summary,
    ):
        with pytest.raises(InvalidOperation, match="this client is closed"):
            call()


def test_a_relay_database_opened_as_a_client_store_says_what_it_is(tmp_path: Path) -> None:
    from crdtsync_server.storage import RelayStorage

    database = tmp_path / "relay.sqlite3"
    RelayStorage(str(database)).close()
    with pytest.raises(StoreError, match="it is a crdtsync relay database, not a client store"):
        Client(store=str(database), schema=EXAMPLE_CONFIG)
    store = tmp_path / "alice.sqlite3"
    Client(store=str(store), schema=EXAMPLE_CONFIG).close()
    with pytest.raises(Exception, match="it is a crdtsync client store, not a relay database"):
        RelayStorage(str(store))


async def test_the_relay_logs_why_it_refused_a_token_never_the_token(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    import jwt

    token = jwt.encode({"sub": "alice", "exp": 1}, "y" * 40, algorithm="HS256")
    client = Client(relay.url, token=token, schema=EXAMPLE_CONFIG)
    with caplog.at_level(logging.WARNING, logger="crdtsync.session"):
        async with client:
            with pytest.raises(SyncError):
                await client.sync(timeout=10)
    [line] = [r.getMessage() for r in caplog.records if "refused a token" in r.getMessage()]
    assert "not signed by this relay" in line or "expired" in line
    assert token not in caplog.text and token.split(".")[1] not in caplog.text


# -- 5. every bad field named ---------------------------------------------------------------


def test_a_validation_error_names_every_bad_field(client: Client) -> None:
    with pytest.raises(ValidationError) as raised:
        client.create("Account", {"Employees": -5, "Industry": "Mining"})
    assert set(raised.value.fields) == {"Name", "Employees", "Industry"}
    rid = client.create("Account", {"Name": "Acme"})
    with pytest.raises(ValidationError) as raised:
        client.update(rid, {"Name": None, "Employees": -1})
    assert set(raised.value.fields) == {"Name", "Employees"}
