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


def test_sync_demo_walks_two_users_through_every_scenario() -> None:
    result = run("demo", "sync")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Relay on ws://127.0.0.1:" in out
    assert "Industry=Energy, Employees=150" in out  # different fields merged
    assert "Name: changed by bob to 'Acme Corp'" in out  # same field: conflict
    assert "is locked" in out
    assert "both now see 'Acme Energy Corp'" in out  # resolved everywhere
    assert "already used by another Contact" in out  # unique
    assert "unresolvable" in out and "deleted by someone else" in out
    assert "since you deleted it" in out
    assert "Traceback" not in out + result.stderr


def test_token_command_prints_a_token_the_relay_accepts(tmp_path: object) -> None:
    from pathlib import Path

    from crdtsync_server.config import RelayConfig

    from tests.helpers.harness import EXAMPLE_CONFIG

    database = str(Path(str(tmp_path)) / "relay.sqlite3")
    result = run(
        "token",
        "--config",
        str(EXAMPLE_CONFIG),
        "--db",
        database,
        "--user",
        "alice",
        "--role",
        "sales",
    )
    assert result.returncode == 0, result.stderr
    relay = RelayConfig.from_toml(EXAMPLE_CONFIG, database=database).token_authority()
    identity = relay.verify(result.stdout.strip())
    assert (identity.user, identity.roles) == ("alice", ("sales",))


def test_serve_with_a_missing_config_is_one_clear_error() -> None:
    result = run("serve", "--config", "/nonexistent/app.toml")
    assert result.returncode == 2
    assert "cannot read /nonexistent/app.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_for_an_rs256_relay_needs_a_private_key(tmp_path: object) -> None:
    from pathlib import Path

    from tests.helpers.harness import EXAMPLE_CONFIG

    config = Path(str(tmp_path)) / "rs.toml"
    config.write_text(
        EXAMPLE_CONFIG.read_text().replace(
            "[server]\n",
            f'[server]\ntoken_algorithm = "RS256"\ntoken_public_key = "{tmp_path}/missing.pem"\n',
        )
    )
    result = run("token", "--config", str(config), "--user", "alice")
    assert result.returncode == 2
    assert "crdtsync: error:" in result.stderr and "Traceback" not in result.stderr


def serve_until_urls(args: list[str], count: int) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a long-running ``crdtsync`` command; return it and the first ``count``
    http:// addresses it prints (killed after 60 s whatever happens)."""
    import re
    import threading

    process = subprocess.Popen(
        [sys.executable, "-m", "crdtsync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.daemon = True
    watchdog.start()
    urls: list[str] = []
    assert process.stdout is not None
    while len(urls) < count and (line := process.stdout.readline()):
        urls += re.findall(r"http://127\.0\.0\.1:\d+/", line)
    return process, urls


def page(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def stop(process: subprocess.Popen[str], signum: int) -> subprocess.CompletedProcess[str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_demo_without_a_story_serves_alice_and_bob_apps_until_interrupted() -> None:
    import signal

    process, urls = serve_until_urls(["demo"], 2)
    try:
        assert len(urls) == 2, process.stderr.read() if process.stderr else ""
        alice, bob = (page(url + "o/Account") for url in urls)
        assert 'data-user="alice"' in alice and 'data-user="bob"' in bob
        assert "Acme" in alice and "Acme" in bob  # seeded by alice, synced to bob
        assert 'data-state="online"' in bob
    finally:
        result = stop(process, signal.SIGINT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_app_serves_one_user_with_no_relay_and_keeps_its_store(tmp_path: object) -> None:
    import signal
    from pathlib import Path

    store = Path(str(tmp_path)) / "alice.sqlite3"
    relay_db = Path(str(tmp_path)) / "relay.sqlite3"  # whose secret signs alice's token
    args = ["app", "--user", "alice", "--url", "ws://127.0.0.1:9", "--store", str(store)]
    args += ["--db", str(relay_db)]
    process, urls = serve_until_urls(args, 1)
    try:
        assert len(urls) == 1, process.stderr.read() if process.stderr else ""
        home = page(urls[0] + "o/Account")
        assert 'data-user="alice"' in home and 'data-state="offline"' in home
        assert "No Account records yet." in home
    finally:
        result = stop(process, signal.SIGTERM)
    assert result.returncode == 0, result.stderr
    assert store.exists()
    assert "Traceback" not in result.stdout + result.stderr


async def test_app_takes_its_token_from_a_file_never_the_command_line(relay: object) -> None:
    import asyncio
    import signal
    from pathlib import Path

    from tests.helpers.harness import RelayHarness

    assert isinstance(relay, RelayHarness)
    token_file = Path(relay.tmp_path) / "carol.token"
    token_file.write_text(relay.token("carol") + "\n")
    args = ["app", "--user", "carol", "--url", relay.url, "--token-file", str(token_file)]
    args += ["--store", str(Path(relay.tmp_path) / "carol.sqlite3")]
    process, urls = await asyncio.to_thread(serve_until_urls, args, 1)
    try:
        assert len(urls) == 1
        assert str(token_file) in " ".join(process.args)  # type: ignore[arg-type]
        assert relay.token("carol") not in " ".join(process.args)  # type: ignore[arg-type]
        for _ in range(100):  # the app connects with the token it read
            home = await asyncio.to_thread(page, urls[0] + "o/Account")
            if 'data-state="online"' in home:
                break
            await asyncio.sleep(0.1)
        assert 'data-user="carol"' in home and 'data-state="online"' in home
    finally:
        result = await asyncio.to_thread(stop, process, signal.SIGTERM)
    assert result.returncode == 0, result.stderr


def test_app_with_an_empty_or_missing_token_file_is_one_clear_error(tmp_path: object) -> None:
    from pathlib import Path

    empty = Path(str(tmp_path)) / "empty.token"
    empty.write_text("\n")
    for path, message in ((empty, "is empty"), (empty.with_name("none"), "cannot read")):
        result = run(
            "app", "--user", "carol", "--token-file", str(path), "--url", "ws://127.0.0.1:9"
        )
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith("crdtsync: error: --token-file") or message in line
        assert message in line and "Traceback" not in result.stderr


def test_stores_and_relay_databases_are_readable_by_their_owner_only(tmp_path: object) -> None:
    import stat
    from pathlib import Path

    from crdtsync_server.storage import RelayStorage

    from crdtsync import Client, Schema
    from tests.helpers.harness import EXAMPLE_CONFIG

    directory = Path(str(tmp_path))
    client = Client(store=str(directory / "a.sqlite3"), schema=Schema.from_toml(EXAMPLE_CONFIG))
    client.create("Account", {"Name": "Private"})
    storage = RelayStorage(str(directory / "relay.sqlite3"))
    with storage.transaction():
        storage.set_meta("touched", 1)
    for name in ("a.sqlite3", "a.sqlite3-wal", "relay.sqlite3", "relay.sqlite3-wal"):
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    client.close()
    storage.close()


def test_version_and_help_text_for_every_command_and_argument() -> None:
    import argparse

    from crdtsync import __version__
    from crdtsync.apps.cli import _parser

    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"crdtsync {__version__}"

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        assert "``" not in (parser.description or ""), path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{path} {choice.dest}")
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                if not action.help:
                    missing.append(f"{path} {action.dest}")
                assert "``" not in (action.help or ""), f"{path} {action.dest}"
        return missing

    assert walk(_parser(), "crdtsync") == []


def test_every_command_that_reads_a_config_defaults_to_the_same_one() -> None:
    from crdtsync.apps.cli import _parser

    commands = {
        "serve": ["serve"],
        "app": ["app", "--user", "a"],
        "token": ["token", "--user", "a"],
        "admin": ["admin", "access", "r"],
        "compact": ["compact", "--through", "1"],
    }
    defaults = {name: _parser().parse_args(argv).config for name, argv in commands.items()}
    assert set(defaults.values()) == {None}  # filled in by main(), the same for all
    result = run("token", "--user", "alice", "--db", "/nonexistent-dir/relay.sqlite3")
    assert result.returncode == 2 and "Traceback" not in result.stderr  # read the example
    assert "cannot create the relay's secret" in result.stderr


def test_cluster_demo_runs_three_relays_on_postgresql_and_loses_nothing(postgres: object) -> None:
    from tests.helpers.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    result = subprocess.run(
        [sys.executable, "-m", "crdtsync", "demo", "cluster", "--db", postgres.admin_url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("ws://127.0.0.1:") >= 3 and "Three relays on" in out
    assert "bob sees:" in out and "Acme" in out  # crossed relays
    assert "decided once:" in out and "conflict" in out
    assert "her Globex reached bob: True" in out  # a relay killed, nothing lost
    assert "Traceback" not in out + result.stderr


def test_cluster_demo_names_a_server_it_cannot_reach_without_its_password() -> None:
    result = run("demo", "cluster", "--db", "postgresql://demo:hunter2@127.0.0.1:1/postgres")
    assert result.returncode == 2
    assert "cannot connect to postgresql://demo:***@127.0.0.1:1/postgres" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
