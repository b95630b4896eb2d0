"""Scripted demos.

``crdtsync demo offline``: create, edit and delete records with no network, and show the
pending-changes list and statuses, before and after a restart of the app.
``crdtsync demo sync``: a relay and two users, through every sync scenario.
``crdtsync demo cluster --db postgresql://…``: three relay processes on one PostgreSQL
database (a scratch database the demo creates on that server and drops afterwards) and
two users on different relays: a change crossing relays, a same-field conflict decided
once, and a relay killed while a user keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit, urlunsplit

from crdtsync.client.facade import Client
from crdtsync.core.exceptions import RecordLocked, RecordNotFound, ValidationError
from crdtsync.core.schema import Schema

from .console import pending_table, records_table, summary_table

if TYPE_CHECKING:
    from crdtsync_server.app import RelayServer


def example_config() -> Path:
    """The path of the example app's configuration (``server/example/app.toml``)."""
    return Path(str(resources.files("crdtsync_example").joinpath("app.toml")))


def run_offline(out: TextIO, store: str | None = None) -> None:
    """Run the offline story, printing what a user of the app would see."""
    schema = Schema.from_toml(example_config())
    with tempfile.TemporaryDirectory() as tmp:
        path = store or str(Path(tmp) / "alice.sqlite3")

        def say(text: str) -> None:
            print(text, file=out)

        say(f"Working offline. Local store: {path}\n")
        client = Client(store=path, schema=schema)
        acme = client.create("Account", {"Name": "Acme", "Industry": "Energy", "Employees": 120})
        say(f"created Account Acme ({acme[:8]})")
        globex = client.create("Account", {"Name": "Globex", "Revenue": Decimal("1250000.00")})
        say(f"created Account Globex ({globex[:8]})")
        ada = client.create(
            "Contact", {"LastName": "Lovelace", "Email": "ada@acme.example", "Account": acme}
        )
        say(f"created Contact Lovelace ({ada[:8]}) for Acme")
        client.update(acme, {"Employees": 150, "Description": "Wind and solar."})
        client.update(acme, {"Industry": "Technology"})
        say("edited Acme twice: the edits coalesce into its one pending create")
        temp = client.create("Task", {"Subject": "Call Globex"})
        client.delete(temp)
        say("created then deleted a Task: the two cancel out, nothing to sync")
        try:
            client.update(globex, {"Industry": "Mining", "Employees": -3})
        except ValidationError as exc:
            say(f"refused at once, nothing queued: {exc}")

        say("\nPending Changes\n" + pending_table(client.pending()))
        say("\nObject home indicators\n" + summary_table(client.summary()))
        client.close()

        say("\nThe app restarts (the store is reopened)…")
        client = Client(store=path, schema=schema)
        client.delete(globex)
        say("deleted Globex (never synced: its create and delete cancel out)")
        try:
            client.update(globex, {"Name": "Globex Corp"})
        except RecordNotFound as exc:
            say(f"editing it now fails clearly: {type(exc).__name__}: {exc}")
        say("\nRecords\n" + records_table(client.records(), ("Name", "LastName", "Industry")))
        say("\nPending Changes\n" + pending_table(client.pending()))
        say(
            "\nRecord highlights: "
            + ", ".join(
                f"{r.fields.get('Name') or r.fields.get('LastName')} is {r.status}"
                for r in client.records()
            )
        )
        client.close()


async def run_sync(out: TextIO) -> None:
    """Start a relay on a free port and walk two users through every sync scenario."""
    from crdtsync_server.app import RelayServer
    from crdtsync_server.config import RelayConfig

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        config = RelayConfig.from_toml(
            example_config(), database=str(Path(tmp) / "relay.sqlite3"), port=0
        )
        async with RelayServer(config) as server:
            say(f"Relay on {server.url} (example CRM app, SQLite in {tmp})")
            alice = Client(
                server.url,
                token=server.authority.issue("alice"),
                store=str(Path(tmp) / "alice.sqlite3"),
                schema=example_config(),
            )
            bob = Client(
                server.url,
                token=server.authority.issue("bob"),
                store=str(Path(tmp) / "bob.sqlite3"),
                schema=example_config(),
            )
            async with alice, bob:
                await _sync_story(say, alice, bob)
                await _access_story(say, alice, bob, server)
            say("\nDone: every change either merged or came back to its user; nothing was lost.")


async def _sync_story(say: Callable[[str], None], alice: Client, bob: Client) -> None:
    async def both() -> None:
        await alice.sync()
        await bob.sync()

    def show(title: str) -> None:
        say(f"\n── {title}")
        for name, client in (("alice", alice), ("bob", bob)):
            say(f"{name}'s Pending Changes:\n" + pending_table(client.pending()))

    say("\n1. Alice works offline: creates an Account and a Contact for it")
    alice.go_offline()
    acme = alice.create("Account", {"Name": "Acme", "Employees": 120})
    alice.create("Contact", {"LastName": "Lovelace", "Email": "ada@acme.example", "Account": acme})
    show("while offline")
    alice.go_online()
    await both()
    say("back online: both synced (the Account before the Contact that points to it)")
    say("bob sees:\n" + records_table(bob.records(), ("Name", "LastName", "Owner")))

    say("\n2. Both edit different fields of Acme offline → merged, no conflict")
    alice.go_offline()
    alice.update(acme, {"Industry": "Energy"})
    bob.update(acme, {"Employees": 150})
    await bob.sync()
    alice.go_online()
    await both()
    fields = bob.get(acme).fields  # type: ignore[union-attr]
    say(f"Acme everywhere: Industry={fields['Industry']}, Employees={fields['Employees']}")

    say("\n3. Both rename Acme offline → conflict for the later one")
    alice.go_offline()
    alice.update(acme, {"Name": "Acme Energy"})
    bob.update(acme, {"Name": "Acme Corp"})
    await bob.sync()
    alice.go_online()
    await alice.sync()
    show("after alice syncs")
    try:
        alice.update(acme, {"Employees": 1})
    except RecordLocked as exc:
        say(f"alice's Acme is locked: {exc}")
    alice.resolve(acme, {"Name": "Acme Energy Corp"})
    await both()
    say(f"alice resolved it; both now see {bob.get(acme).fields['Name']!r}")  # type: ignore[union-attr]

    say("\n4. Bob creates a Contact with Ada's email → validation conflict (unique)")
    dup = bob.create("Contact", {"LastName": "Byron", "Email": "ada@acme.example"})
    await bob.sync()
    show("after bob syncs")
    bob.resolve(dup, {"Email": "byron@acme.example"})
    await bob.sync()
    say("bob fixed the email; synced")

    say("\n5. Alice edits Globex offline while Bob deletes it → unresolvable")
    globex = bob.create("Account", {"Name": "Globex"})
    await both()
    alice.go_offline()
    alice.update(globex, {"Industry": "Retail"})
    bob.delete(globex)
    await bob.sync()
    alice.go_online()
    await alice.sync()
    show("after alice syncs")
    alice.dismiss(globex)
    say(f"alice dismissed it; Globex is gone locally: {alice.get(globex) is None}")

    say("\n6. Alice deletes Acme offline while Bob edits it → conflict (keep or delete)")
    alice.go_offline()
    alice.delete(acme)
    bob.update(acme, {"Website": "acme.example"})
    await bob.sync()
    alice.go_online()
    await alice.sync()
    show("after alice syncs")
    alice.dismiss(acme)
    say(f"alice keeps it (dismiss): Website={alice.get(acme).fields.get('Website')}")  # type: ignore[union-attr]


async def _access_story(
    say: Callable[[str], None], alice: Client, bob: Client, server: RelayServer
) -> None:
    from crdtsync_server.admin_client import AdminClient

    admin_token = server.authority.issue("root", admin=True)
    say("\n7. Access: Opportunities are private to their owner")
    deal = alice.create(
        "Opportunity",
        {
            "Name": "Acme wind farm",
            "Account": alice.records("Account")[0].id,
            "Stage": "Proposal",
            "Amount": "250000",
        },
    )
    await alice.sync()
    await bob.sync()
    say(f"bob sees alice's opportunity: {bob.get(deal) is not None}")
    async with AdminClient(server.url, admin_token) as admin:
        await admin.share(deal, "bob", access="edit")
        await bob.sync()
        say(f"an administrator shares it with bob (edit): bob sees it: {bob.get(deal) is not None}")
        bob.go_offline()
        bob.update(deal, {"Amount": "300000"})
        say("bob, offline, raises the amount; meanwhile the administrator removes his share")
        await admin.unshare(deal, "bob")
        access = await admin.access(deal)
        say(f"access now: owner={access['owner']}, shares={access['shares']}")
    bob.go_online()
    await bob.sync()
    show_pending(say, "bob", bob)
    bob.dismiss(deal)
    say(f"bob dismissed it; the opportunity is gone from his device: {bob.get(deal) is None}")
    say(f"alice's amount is untouched: {alice.get(deal).fields['Amount']}")  # type: ignore[union-attr]


async def run_cluster(out: TextIO, server: str) -> None:
    """Three ``crdtsync serve`` processes on a scratch database of the PostgreSQL
    ``server`` (a URL to connect to for creating it), and alice and bob on different
    ones (module docstring)."""
    from crdtsync_server.auth import TokenAuthority
    from crdtsync_server.database import shown_url

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    secret = secrets.token_urlsafe(48)
    authority = TokenAuthority(secret)
    with _scratch_database(server) as database, tempfile.TemporaryDirectory() as tmp:
        relays = [_ServedRelay(database, secret) for _ in range(3)]
        try:
            for relay in relays:
                relay.start()
            say(f"Three relays on {shown_url(database)}: " + ", ".join(r.url for r in relays))
            urls = [relay.url for relay in relays]
            alice = Client(
                urls, token=authority.issue("alice"), store=str(Path(tmp) / "alice.sqlite3"),
                schema=example_config(), backoff_initial=0.05, backoff_max=0.5,
            )  # fmt: skip
            bob = Client(
                urls[1:] + urls[:1], token=authority.issue("bob"),
                store=str(Path(tmp) / "bob.sqlite3"), schema=example_config(),
                backoff_initial=0.05, backoff_max=0.5,
            )  # fmt: skip
            async with alice, bob:
                await _cluster_story(say, alice, bob, relays)
        finally:
            for relay in relays:
                relay.stop()
    say("\nDone: three relays served as one; nothing was lost or decided twice.")


async def _cluster_story(
    say: Callable[[str], None], alice: Client, bob: Client, relays: list[_ServedRelay]
) -> None:
    say(f"alice syncs with {alice.url}, bob with {bob.url}")
    say("\n1. Alice creates Acme on her relay; bob's relay fans it out to him")
    acme = alice.create("Account", {"Name": "Acme", "Employees": 120})
    await alice.sync()
    await bob.sync()
    say("bob sees:\n" + records_table(bob.records(), ("Name", "Employees")))

    say("\n2. Both rename Acme offline and sync at once, through different relays")
    alice.go_offline()
    bob.go_offline()
    alice.update(acme, {"Name": "Acme Energy"})
    bob.update(acme, {"Name": "Acme Corp"})
    alice.go_online()
    bob.go_online()
    await asyncio.gather(alice.sync(), bob.sync())
    for name, client in (("alice", alice), ("bob", bob)):
        show_pending(say, name, client)
    loser = alice if alice.pending() else bob
    winner = bob if loser is alice else alice
    say(f"decided once: {winner.get(acme).fields['Name']!r} was accepted, the other is a conflict")  # type: ignore[union-attr]
    loser.dismiss(acme)
    await loser.sync()

    say(f"\n3. Alice's relay ({alice.url}) is killed; she keeps working")
    killed = next(relay for relay in relays if relay.url == alice.url)
    killed.kill()
    globex = alice.create("Account", {"Name": "Globex"})
    await alice.sync(timeout=30)
    await bob.sync()
    say(f"alice moved to {alice.url}; her Globex reached bob: {bob.get(globex) is not None}")
    say("bob sees:\n" + records_table(bob.records(), ("Name", "Employees")))


@contextlib.contextmanager
def _scratch_database(server: str) -> Iterator[str]:
    """A new database on the PostgreSQL ``server`` for the demo, dropped afterwards."""
    import psycopg
    from crdtsync_server.database import shown_url
    from crdtsync_server.errors import StorageError

    name = f"crdtsync_demo_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to {shown_url(server)}: {exc}".strip()) from None
    with admin:
        try:
            admin.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot create a scratch database on {shown_url(server)} ({exc}); the demo "
                "needs a role that may create databases"
            ) from None
        try:
            yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _ServedRelay:
    """``crdtsync serve`` on a free port of 127.0.0.1, as a process of its own."""

    def __init__(self, database: str, secret: str) -> None:
        self.database, self.secret = database, secret
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"ws://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "crdtsync", "serve", "--config", str(example_config())]
        self.process = subprocess.Popen(
            [*command, "--db", self.database, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CRDTSYNC_SECRET": self.secret},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening" not in line:
            from crdtsync_server.errors import RelayError

            self.stop()
            raise RelayError(f"a relay did not start: {line.strip()}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # drain

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def show_pending(say: Callable[[str], None], name: str, client: Client) -> None:
    say(f"{name}'s Pending Changes:\n" + pending_table(client.pending()))


__all__ = ["example_config", "run_cluster", "run_offline", "run_sync"]
