"""The reference app in a real browser: headless Debian Chromium driven by Playwright,
against real app servers and a real relay on loopback.

These tests fail (they do not skip) when Chromium is missing: ``./scripts/install-test-deps``
installs it. Screenshots of the main pages are saved to a temporary directory, or to
``$CRDTSYNC_SCREENSHOTS`` (``scripts/take-screenshots`` points it at ``docs/img``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from crdtsync import Client, Status
from crdtsync.apps.webapp import AppServer
from tests.helpers.harness import RelayHarness, eventually

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 960, "height": 600}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@attrs.define
class App:
    """One user's app: their client, its app server, and a browser tab on it."""

    user: str
    client: Client
    server: AppServer
    page: Page

    async def open(self, path: str) -> None:
        await self.page.goto(self.server.url.rstrip("/") + path)

    async def work_offline(self) -> None:
        await self.page.check("#work-offline")
        await expect(self.page.locator("#connection")).to_have_attribute(
            "data-state", "working-offline"
        )

    async def go_online(self) -> None:
        await self.page.uncheck("#work-offline")


OpenApp = Callable[[str], Awaitable[App]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run ./scripts/install-test-deps"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def open_app(relay: RelayHarness, browser: Browser) -> AsyncIterator[OpenApp]:
    """Start a user's client and app server, and open the app in a new browser tab."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(user: str) -> App:
            client = await stack.enter_async_context(relay.client(user))
            server = await stack.enter_async_context(AppServer(client, user=user))
            context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            stack.push_async_callback(context.close)
            page = await context.new_page()
            await page.goto(server.url)
            await expect(page.locator("#connection")).to_have_attribute("data-state", "online")
            return App(user, client, server, page)

        yield start


@pytest.fixture
def screenshots(tmp_path: Path) -> Callable[[Page, str], Awaitable[None]]:
    """Save a screenshot of the page as NAME.png and check it is a real image."""
    folder = Path(os.environ.get("CRDTSYNC_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    async def shoot(page: Page, name: str) -> None:
        await page.locator("#toast").evaluate("toast => { toast.hidden = true; }")
        path = folder / f"{name}.png"
        await page.screenshot(path=str(path), full_page=False)
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, name

    return shoot


async def synced_account(owner: App, others: list[App], values: dict[str, object]) -> str:
    rid = owner.client.create("Account", values)
    await owner.client.sync()
    for other in others:
        await other.client.sync()
    return rid


async def test_record_created_offline_leaves_pending_changes_live_once_online(
    open_app: OpenApp, relay: RelayHarness, screenshots: Callable[[Page, str], Awaitable[None]]
) -> None:
    alice = await open_app("alice")
    page = alice.page
    await alice.work_offline()
    await page.click("#new-record")
    await page.fill("#f-Name", "Acme")
    await page.select_option("#f-Industry", "Energy")
    await page.fill("#f-Employees", "120")
    await page.fill("#f-Description", "Wind and solar.")
    await page.click("#save")

    highlights = page.locator("#highlights")
    await expect(highlights).to_have_attribute("data-status", "pending")
    await expect(highlights.locator(".status")).to_have_text("◷ Pending")
    await expect(page.locator('[data-field="Employees"] dd')).to_have_text("120")
    await screenshots(page, "record")

    await page.click("#nav-pending")
    row = page.locator("#pending-list > li")
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-kind", "create")
    await expect(row).to_have_attribute("data-status", "pending")
    await expect(row.locator('[data-field="Name"] .new')).to_have_text("Acme")
    await expect(row.locator('[data-field="Employees"] .new')).to_have_text("120")
    await expect(page.locator("#pending-count")).to_have_text("1")
    await screenshots(page, "pending-changes")
    [change] = alice.client.pending()
    assert change.status is Status.PENDING  # saved on the device, not on the relay

    await page.evaluate("window.stillTheSamePage = true")
    await alice.go_online()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    await expect(row).to_have_count(0)  # disappears live: no reload
    await expect(page.locator("#no-pending")).to_be_visible()
    await expect(page.locator("#pending-count")).to_have_text("0")
    assert await page.evaluate("window.stillTheSamePage") is True

    async with relay.client("carol") as carol:
        await carol.sync()
        assert [r.fields["Name"] for r in carol.records("Account")] == ["Acme"]


async def test_conflict_between_two_apps_is_resolved_in_the_page(
    open_app: OpenApp, screenshots: Callable[[Page, str], Awaitable[None]]
) -> None:
    alice, bob = await open_app("alice"), await open_app("bob")
    rid = await synced_account(alice, [bob], {"Name": "Acme", "Employees": 120})
    await synced_account(alice, [bob], {"Name": "Globex", "Industry": "Retail"})

    await alice.open(f"/r/{rid}/edit")
    await alice.work_offline()
    await alice.page.fill("#f-Name", "Acme Energy")
    await alice.page.click("#save")
    await expect(alice.page.locator("#highlights")).to_have_attribute("data-status", "pending")

    await bob.open(f"/r/{rid}/edit")
    await bob.page.fill("#f-Name", "Acme Corp")
    await bob.page.click("#save")
    await expect(bob.page.locator("#highlights")).to_have_attribute("data-status", "synced")

    await alice.go_online()
    alert = alice.page.locator("#alert")
    await expect(alert).to_be_visible()
    await expect(alert.locator(f'li[data-record="{rid}"]')).to_contain_text("Acme Energy")
    await expect(alert.locator(f'li[data-record="{rid}"]')).to_contain_text("changed by bob")
    highlights = alice.page.locator("#highlights")  # the record page behind it, live
    await expect(highlights).to_have_attribute("data-status", "conflict")
    await expect(alice.page.locator("#locked")).to_be_visible()
    await expect(alice.page.locator("#edit")).to_have_count(0)
    await expect(alice.page.locator("#delete")).to_have_count(0)
    await alert.locator(f'li[data-record="{rid}"] a').click()  # tapping it opens its resolution
    await expect(alice.page).to_have_url(alice.server.url + f"r/{rid}/resolve")
    await expect(alice.page.locator("#conflicts")).to_be_visible()

    # Object home while the conflict waits, with one more change pending offline.
    await alice.work_offline()
    alice.client.create("Account", {"Name": "Initech", "Industry": "Technology"})
    await alice.open("/o/Account")
    await expect(alice.page.locator(f'#records li[data-record="{rid}"]')).to_have_attribute(
        "data-status", "conflict"
    )
    counts = alice.page.locator("#counts")
    await expect(counts.locator('li[data-status="conflict"]')).to_have_attribute("data-count", "1")
    await expect(counts.locator('li[data-status="pending"]')).to_have_attribute("data-count", "1")
    await expect(counts.locator('li[data-status="synced"]')).to_have_attribute("data-count", "1")
    await screenshots(alice.page, "object-home")
    await alice.go_online()
    await expect(counts.locator('li[data-status="pending"]')).to_have_count(0)

    await alice.open(f"/r/{rid}")
    await alice.page.click("#resolve")
    row = alice.page.locator('tr[data-field="Name"]')
    await expect(row.locator(".base")).to_have_text("Acme")
    await expect(row.locator(".mine")).to_have_text("Acme Energy")
    await expect(row.locator(".theirs")).to_contain_text("Acme Corp")
    await expect(row.locator(".who")).to_have_text("changed by bob")
    await screenshots(alice.page, "conflict")

    await expect(row.locator("#custom-Name")).to_be_hidden()  # until "Other" is chosen
    await row.locator('input[value="custom"]').check()
    await row.locator("#custom-Name").fill("")
    await alice.page.click("#save")
    await expect(row.locator(".field-error")).to_have_text("is required")
    assert alice.client.get(rid).status is Status.CONFLICT  # type: ignore[union-attr]

    await row.locator("#custom-Name").fill("Acme Energy Corp")
    await alice.page.click("#save")
    await expect(alice.page).to_have_url(alice.server.url + f"r/{rid}")
    await expect(highlights).to_have_attribute("data-status", "synced")
    await expect(alice.page.locator('[data-field="Name"] dd')).to_have_text("Acme Energy Corp")
    # bob's tab is still on the record: the resolution arrives there live
    await expect(bob.page.locator('[data-field="Name"] dd')).to_have_text("Acme Energy Corp")


async def test_unresolvable_change_is_explained_and_dismissed(
    open_app: OpenApp, screenshots: Callable[[Page, str], Awaitable[None]]
) -> None:
    alice, bob = await open_app("alice"), await open_app("bob")
    rid = await synced_account(alice, [bob], {"Name": "Globex", "Industry": "Retail"})

    await alice.open(f"/r/{rid}/edit")
    await alice.work_offline()
    await alice.page.fill("#f-Employees", "45")
    await alice.page.click("#save")
    await expect(alice.page.locator("#highlights")).to_have_attribute("data-status", "pending")

    await bob.open(f"/r/{rid}")
    bob.page.once("dialog", lambda dialog: dialog.accept())  # "Delete Globex?"
    await bob.page.click("#delete")
    await expect(bob.page).to_have_url(bob.server.url + "o/Account")
    await eventually(lambda: bob.client.pending() == [])

    await alice.open("/pending")
    await alice.go_online()
    row = alice.page.locator(f'#pending-list li[data-record="{rid}"]')
    await expect(row).to_have_attribute("data-status", "unresolvable")
    await expect(row.locator(".details")).to_contain_text("deleted this record")
    await expect(alice.page.locator("#alert")).to_be_visible()

    await row.locator("a").click()
    await expect(alice.page.locator("#reason")).to_have_text(
        "Someone else deleted this record while you were offline."
    )
    await expect(alice.page.locator('[data-field="Employees"] .new')).to_have_text("45")
    await screenshots(alice.page, "unresolvable")

    await alice.page.click("#dismiss")
    await expect(alice.page).to_have_url(alice.server.url + "pending")
    await expect(alice.page.locator("#no-pending")).to_be_visible()
    assert alice.client.get(rid) is None
    assert alice.client.pending() == []


async def test_validation_error_is_shown_on_the_field_and_nothing_is_queued(
    open_app: OpenApp,
) -> None:
    alice = await open_app("alice")
    rid = await synced_account(alice, [], {"Name": "Acme", "Employees": 120})
    await alice.open(f"/r/{rid}/edit")
    employees = alice.page.locator('[data-field="Employees"]')

    await alice.page.fill("#f-Employees", "-3")
    await alice.page.click("#save")
    await expect(employees.locator(".field-error")).to_have_text("must be at least 0")
    await expect(employees).to_have_class("form-row invalid")
    await expect(alice.page.locator(".form-error")).to_contain_text("Please fix")

    await alice.page.fill("#f-Employees", "lots")
    await alice.page.click("#save")
    await expect(employees.locator(".field-error")).to_have_text("'lots' is not a whole number")
    assert alice.client.pending() == []
    assert alice.client.get(rid).fields["Employees"] == 120  # type: ignore[union-attr]

    await alice.open("/o/Account/new")  # two bad fields: both are marked at once
    await alice.page.fill("#f-Employees", "-5")
    await alice.page.click("#save")
    new_form = alice.page.locator("form.record-form")
    await expect(new_form.locator('[data-field="Name"] .field-error')).to_have_text("is required")
    await expect(new_form.locator('[data-field="Employees"] .field-error')).to_have_text(
        "must be at least 0"
    )
    await expect(new_form.locator(".form-row.invalid")).to_have_count(2)

    await alice.open("/o/Contact/new")
    await alice.page.fill("#f-FirstName", "Ada")
    await alice.page.click("#save")
    await expect(alice.page.locator('[data-field="LastName"] .field-error')).to_have_text(
        "is required"
    )
    assert alice.client.records("Contact") == []


async def test_a_refused_token_is_shown_on_the_page_with_what_to_do(
    relay: RelayHarness, browser: Browser
) -> None:
    client = Client(relay.url, token="not-a-jwt", schema=relay.config.schema, backoff_max=0.3)
    async with client, AppServer(client, user="alice") as server:
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        try:
            page = await context.new_page()
            await page.goto(server.url)
            banner = page.locator("#sync-failure")
            await expect(banner).to_be_visible(timeout=10_000)
            await expect(banner).to_contain_text("Cannot sync")
            await expect(banner).to_contain_text("auth_failed")
            await expect(banner).to_contain_text("Get a new token")
        finally:
            await context.close()


async def test_records_sort_naturally_and_delete_asks_first(open_app: OpenApp) -> None:
    alice = await open_app("alice")
    for name in ("RT 10", "rt 1", "RT 2", "Acme"):
        alice.client.create("Account", {"Name": name})
    await alice.client.sync()
    await alice.open("/o/Account")
    titles = alice.page.locator("#records .title")
    await expect(titles).to_have_text(["Acme", "rt 1", "RT 2", "RT 10"])

    rid = next(r.id for r in alice.client.records("Account") if r.fields["Name"] == "RT 2")
    await alice.open(f"/r/{rid}")
    asked: list[str] = []

    async def say_no(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    alice.page.once("dialog", say_no)
    await alice.page.click("#delete")
    await eventually(lambda: asked)
    assert asked[0].startswith("Delete RT 2?")
    await expect(alice.page.locator("#highlights")).to_have_attribute("data-status", "synced")
    assert alice.client.pending() == [] and alice.client.get(rid) is not None

    alice.page.once("dialog", lambda dialog: dialog.accept())
    await alice.page.click("#delete")
    await expect(alice.page).to_have_url(alice.server.url + "o/Account")
    await expect(titles).to_have_text(["Acme", "rt 1", "RT 10"])


async def conflict_on_name(alice: App, bob: App) -> str:
    """A record on which alice's offline edit of Name (and Website, which bob leaves
    alone) meets bob's edit of Name: alice's change comes back in conflict."""
    rid = await synced_account(alice, [bob], {"Name": "Acme", "Employees": 120})
    await alice.work_offline()
    alice.client.update(rid, {"Name": "Acme Energy", "Website": "https://acme.example"})
    bob.client.update(rid, {"Name": "Acme Corp"})
    await bob.client.sync()
    await alice.go_online()
    await eventually(lambda: alice.client.get(rid).status is Status.CONFLICT)  # type: ignore[union-attr]
    return rid


async def test_pending_changes_say_what_waits_for_the_user(open_app: OpenApp) -> None:
    alice, bob = await open_app("alice"), await open_app("bob")
    await conflict_on_name(alice, bob)
    await alice.open("/pending")
    summary = alice.page.locator("#pending-summary")
    await expect(summary).to_have_text(
        "1 record has changes that need your attention before they can be saved: "
        "open it to resolve or dismiss them."
    )
    await expect(summary).not_to_contain_text("by themselves")
    await alice.work_offline()
    alice.client.create("Account", {"Name": "Initech"})
    await expect(summary).to_contain_text("1 needs your attention")
    await expect(summary).to_contain_text("The other 1 syncs by itself when you are online.")
    pending, attention = (
        alice.page.locator("#pending-count"),
        alice.page.locator("#attention-count"),
    )
    await expect(pending).to_have_attribute("aria-label", "1 pending")
    await expect(pending).to_have_attribute("title", "1 pending")
    await expect(attention).to_have_attribute("aria-label", "1 needs attention")
    await expect(attention).to_be_visible()
    await alice.go_online()  # Initech syncs: the badges follow, live
    await expect(pending).to_have_attribute("aria-label", "0 pending")
    await expect(pending).to_have_text("0")
    await expect(attention).to_have_attribute("aria-label", "1 needs attention")


async def test_the_resolve_page_shows_every_change_discard_would_throw_away(
    open_app: OpenApp,
) -> None:
    alice, bob = await open_app("alice"), await open_app("bob")
    rid = await conflict_on_name(alice, bob)
    await alice.open(f"/r/{rid}/resolve")
    mine = alice.page.locator("#my-changes")
    await expect(mine.locator('li[data-field="Name"]')).to_have_attribute("data-mark", "conflict")
    await expect(mine.locator('li[data-field="Name"] .mark')).to_contain_text("in conflict")
    website = mine.locator('li[data-field="Website"]')  # not in the conflict table, shown here
    await expect(website).to_have_attribute("data-mark", "clear")
    await expect(website.locator(".new")).to_have_text("https://acme.example")
    await expect(alice.page.locator('#conflicts tr[data-field="Website"]')).to_have_count(0)

    row = alice.page.locator('#conflicts tr[data-field="Name"]')
    await expect(row.locator(".custom")).to_be_hidden()
    await row.locator('input[value="custom"]').check()
    await expect(row.locator("#custom-Name")).to_be_visible()
    await row.locator('input[value="theirs"]').check()
    await expect(row.locator(".custom")).to_be_hidden()

    asked: list[str] = []

    async def say_no(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    alice.page.once("dialog", say_no)
    await alice.page.click("#discard")
    await eventually(lambda: asked)
    assert asked[0].startswith("Discard all your changes to Acme")
    assert alice.client.get(rid).status is Status.CONFLICT  # type: ignore[union-attr]

    alice.page.once("dialog", lambda dialog: dialog.accept())
    await alice.page.click("#discard")
    await expect(alice.page.locator("#highlights")).to_have_attribute("data-status", "synced")
    record = alice.client.get(rid)
    assert record is not None and record.fields["Name"] == "Acme Corp"
    assert record.fields.get("Website") is None  # discarded, as the page said it would be
