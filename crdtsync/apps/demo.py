"""Scripted demos.

``crdtsync demo offline``: create, edit and delete records with no network, and show the
pending-changes list and statuses, before and after a restart of the app.
``crdtsync demo sync``: a relay and two users, through every sync scenario.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

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


def show_pending(say: Callable[[str], None], name: str, client: Client) -> None:
    say(f"{name}'s Pending Changes:\n" + pending_table(client.pending()))


__all__ = ["example_config", "run_offline", "run_sync"]
