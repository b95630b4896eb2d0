"""``crdtsync demo offline``: create, edit and delete records with no network, and show
the pending-changes list and statuses, before and after a restart of the app."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TextIO

from .client import Client
from .console import pending_table, records_table, summary_table
from .exceptions import RecordNotFound, ValidationError
from .schema import Schema


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
