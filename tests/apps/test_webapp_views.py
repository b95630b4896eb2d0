"""The reference app without a browser or a socket: views, form parsing, routes,
actions on a real client, and the live feed."""

from __future__ import annotations

from decimal import Decimal
from http import HTTPStatus

import pytest

from crdtsync import (
    ChangeKind,
    Client,
    FieldChange,
    FieldConflict,
    FieldError,
    PendingChange,
    Problem,
    Record,
    Schema,
    Status,
    UnresolvableReason,
)
from crdtsync.apps.webapp import views
from crdtsync.apps.webapp.actions import Actions
from crdtsync.apps.webapp.forms import changed_values, parse_field, parse_form
from crdtsync.apps.webapp.live import AlertPush, ChangedPush, LiveFeed, StatusPush
from crdtsync.apps.webapp.pages import chrome_for, render
from crdtsync.client.events import (
    ConnectivityChanged,
    PendingChanged,
    RecordNeedsAttention,
    SyncFinished,
    SyncProgress,
    SyncStarted,
)
from crdtsync.core.fieldtypes import FieldType
from tests.helpers.harness import push_and_ack

CHROME = views.Chrome(user="alice", objects=("Account", "Contact"))
HOSTILE = '<script>alert("x")</script>'


def pending_change(
    status: Status = Status.PENDING,
    *,
    kind: ChangeKind = ChangeKind.UPDATE,
    problem: Problem | None = None,
    changes: dict[str, FieldChange] | None = None,
) -> PendingChange:
    return PendingChange(
        record_id="r1",
        object="Account",
        kind=kind,
        changes=changes if changes is not None else {"Name": FieldChange("Acme", "Acme Energy")},
        status=status,
        problem=problem,
    )


def account(status: Status = Status.SYNCED, **fields: object) -> Record:
    return Record("r1", "Account", {"Name": "Acme", **fields}, status, 3)


# -- views --------------------------------------------------------------------------------


def test_values_from_data_are_escaped_on_every_page(schema: Schema) -> None:
    spec = schema.object("Account")
    record = account(Status.PENDING, Name=HOSTILE)
    change = pending_change(changes={"Name": FieldChange("Acme", HOSTILE)})
    pages = [
        views.object_home(CHROME, spec, [record], {"pending": 1}),
        views.record_page(CHROME, spec, record, change),
        views.record_form(CHROME, spec, record),
        views.pending_page(CHROME, [change], schema.objects, {"r1": HOSTILE}),
        views.layout(views.Chrome(user=HOSTILE, objects=()), HOSTILE, ""),
    ]
    for page in pages:
        assert HOSTILE not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_object_home_counts_statuses_and_marks_only_unsynced_records(schema: Schema) -> None:
    spec = schema.object("Account")
    clean = Record("a", "Account", {"Name": "Clean"}, Status.SYNCED, 1)
    waiting = Record("b", "Account", {"Name": "Waiting"}, Status.PENDING, 0)
    stuck = Record("c", "Account", {"Name": "Stuck"}, Status.CONFLICT, 2)
    page = views.object_home(
        CHROME, spec, [clean, waiting, stuck], {"synced": 1, "pending": 1, "conflict": 1}
    )
    assert '<li data-status="synced" data-count="1">' in page
    assert '<li data-status="conflict" data-count="1">' in page
    assert 'data-status="unresolvable"' not in page  # zero counts are not shown
    row = page.split('data-record="a"', 1)[1].split("</li>", 1)[0]
    assert "status-" not in row  # a synced record has no indicator
    assert 'class="status status-conflict"' in page.split('data-record="c"', 1)[1]


def test_record_in_conflict_is_locked_and_offers_only_resolution(schema: Schema) -> None:
    spec = schema.object("Account")
    problem = Problem(conflicts=(FieldConflict(field="Name", base="A", mine="B", theirs="C"),))
    locked = views.record_page(
        CHROME, spec, account(Status.CONFLICT), pending_change(Status.CONFLICT, problem=problem)
    )
    assert 'id="locked"' in locked and 'href="/r/r1/resolve"' in locked
    assert 'id="edit"' not in locked and 'data-action="delete"' not in locked
    editable = views.record_page(CHROME, spec, account(Status.PENDING), pending_change())
    assert 'id="edit"' in editable and 'data-action="delete"' in editable
    assert "Edit waiting to sync" in editable


def test_pending_page_lists_kind_fields_old_to_new_status_and_details(schema: Schema) -> None:
    problem = Problem(
        conflicts=(
            FieldConflict(
                field="Name", base="Acme", mine="Mine", theirs="Theirs", changed_by="bob"
            ),
        )
    )
    changes = [
        pending_change(Status.CONFLICT, problem=problem),
        PendingChange(
            record_id="r2",
            object="Contact",
            kind=ChangeKind.CREATE,
            changes={"LastName": FieldChange(None, "Lovelace")},
            status=Status.PENDING,
            note="waits for Account r1 to sync",
        ),
    ]
    page = views.pending_page(CHROME, changes, schema.objects, {"r1": "Acme"})
    first, second = page.split('<li data-record="r2"', 1)
    assert 'data-kind="update"' in first and 'href="/r/r1/resolve"' in first
    assert '<span class="old">Acme</span> → <span class="new">Acme Energy</span>' in first
    assert "Name: changed by bob to &#x27;Theirs&#x27;" in first
    assert 'data-kind="create"' in second and 'href="/r/r2"' in second
    assert '<span class="old">—</span> → <span class="new">Lovelace</span>' in second
    assert "waits for Account r1 to sync" in second
    assert "No pending changes" in views.pending_page(CHROME, [], schema.objects, {})


def test_conflict_form_shows_base_mine_theirs_who_and_errors_beside_fields(
    schema: Schema,
) -> None:
    problem = Problem(
        conflicts=(
            FieldConflict(
                field="Name", base="Acme", mine="Mine", theirs="Theirs", changed_by="bob"
            ),
        ),
        errors=(
            FieldError("Employees", "must be at least 0"),
            FieldError("", "the record breaks a rule"),
        ),
    )
    page = views.resolve_page(
        CHROME,
        schema.object("Account"),
        account(Status.CONFLICT, Employees=-1),
        pending_change(Status.CONFLICT, problem=problem),
    )
    row = page.split('<tr class="form-row" data-field="Name">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="base">Acme</td>' in row and '<td class="mine">Mine</td>' in row
    assert "Theirs" in row and "changed by bob" in row
    assert 'name="choice:Name" value="mine" checked' in row
    fix = page.split('data-field="Employees"', 1)[1].split("</div>", 2)
    assert 'value="-1"' in fix[0] and "must be at least 0" in "".join(fix)
    assert '<p class="form-error" role="alert">the record breaks a rule</p>' in page
    assert 'data-live="0"' in page  # a live update never wipes what the user types


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (UnresolvableReason.DELETED, "Someone else deleted this record while you were offline."),
        (UnresolvableReason.FORBIDDEN, "You no longer have access to this record"),
    ],
)
def test_unresolvable_page_gives_the_reason_in_words_and_a_dismiss_button(
    schema: Schema, reason: UnresolvableReason, words: str
) -> None:
    change = pending_change(Status.UNRESOLVABLE, problem=Problem(reason=reason))
    page = views.resolve_page(CHROME, schema.object("Account"), account(), change)
    assert words in page
    assert 'id="dismiss" data-action="dismiss" data-record="r1"' in page
    assert 'data-action="resolve"' not in page


def test_delete_in_conflict_offers_delete_anyway_or_keep(schema: Schema) -> None:
    change = pending_change(
        Status.CONFLICT,
        kind=ChangeKind.DELETE,
        changes={},
        problem=Problem(message="changed by bob since you deleted it"),
    )
    page = views.resolve_page(CHROME, schema.object("Account"), None, change)
    assert "changed by bob since you deleted it" in page
    assert 'id="delete-anyway" data-action="resolve"' in page
    assert 'id="keep" data-action="dismiss"' in page


def test_the_pending_sentence_never_promises_that_a_conflict_syncs_by_itself() -> None:
    waiting, stuck = pending_change(), pending_change(Status.CONFLICT)
    assert views.pending_summary([waiting]) == (
        "1 record has changes not yet saved on the server. It syncs by itself when you are online."
    )
    assert views.pending_summary([waiting, waiting]).endswith(
        "They sync by themselves when you are online."
    )
    for only_stuck in ([stuck], [stuck, pending_change(Status.UNRESOLVABLE)]):
        sentence = views.pending_summary(only_stuck)
        assert (
            "your attention" in sentence
            and "by it" not in sentence
            and "themselves" not in sentence
        )
    mixed = views.pending_summary([stuck, waiting, waiting])
    assert mixed == (
        "3 records have changes not yet saved on the server. 1 needs your attention: open "
        "it to resolve or dismiss. The other 2 sync by themselves when you are online."
    )


def test_records_sort_as_people_count() -> None:
    names = ["RT 10", "rt 1", "RT 2", "Acme 2b", "Acme 10", "acme", "Zed"]
    assert sorted(names, key=views.natural_key) == [
        "acme",
        "Acme 2b",
        "Acme 10",
        "rt 1",
        "RT 2",
        "RT 10",
        "Zed",
    ]


def test_navigation_badges_say_what_they_count() -> None:
    nav = views.navigation(views.Chrome(user="a", objects=("Account",), pending=3, attention=1))
    assert 'id="pending-count" data-count="2" title="2 pending" aria-label="2 pending">2<' in nav
    assert 'title="1 needs attention" aria-label="1 needs attention">1 ' in nav
    calm = views.navigation(views.Chrome(user="a", objects=("Account",), pending=2))
    assert 'aria-label="0 need attention" hidden>' in calm


def test_header_shows_connection_switch_and_progress_only_while_syncing() -> None:
    idle = views.header(views.Chrome(user="a", objects=(), online=True))
    assert 'data-state="online"' in idle and 'id="sync-progress" class="progress" hidden' in idle
    running = views.header(views.Chrome(user="a", objects=(), online=True, progress=(3, 10)))
    assert '<progress max="10" value="3">' in running and "Syncing 3 of 10" in running
    assert "hidden>" not in running.split('id="sync-progress"', 1)[1].split(">", 1)[0] + ">"
    offline = views.header(views.Chrome(user="a", objects=(), working_offline=True, online=True))
    assert 'data-state="working-offline"' in offline and 'id="work-offline" checked' in offline


# -- forms --------------------------------------------------------------------------------


def test_form_text_becomes_typed_values_or_a_field_error(schema: Schema) -> None:
    spec = schema.object("Account")
    values, errors = parse_form(
        spec,
        {"Employees": "120", "Active": "true", "Revenue": "10.50", "Name": " ", "Website": "x"},
    )
    assert values == {
        "Employees": 120,
        "Active": True,
        "Revenue": "10.50",
        "Name": None,
        "Website": "x",
    }
    assert errors == []
    _, errors = parse_form(spec, {"Employees": "12.5", "Bogus": "1", "Active": 1})
    assert errors == [
        FieldError("Employees", "'12.5' is not a whole number"),
        FieldError("Bogus", "no such field on Account"),
        FieldError("Active", "expected text from the form"),
    ]
    assert parse_field(FieldType.TEXT, "") == ""


def test_untouched_fields_are_not_changes(schema: Schema) -> None:
    spec = schema.object("Account")
    current = {"Name": "Acme", "Revenue": Decimal("1250000.00"), "Description": None}
    form = {"Name": "Acme", "Revenue": "1250000.00", "Description": "", "Employees": 3}
    assert changed_values(spec, current, form) == {"Employees": 3}


# -- routes and actions on a real client ----------------------------------------------------


def chrome_of(client: Client) -> views.Chrome:
    return chrome_for(client, user="alice", working_offline=False, progress=None)


def test_routes_answer_every_path_with_a_page(client: Client) -> None:
    rid = client.create("Account", {"Name": "Acme"})
    chrome = chrome_of(client)
    assert render(client, chrome, "/") == render(client, chrome, "/").__class__(
        HTTPStatus.FOUND, location="/o/Account"
    )
    assert render(client, chrome, "/o/Account").status is HTTPStatus.OK
    assert render(client, chrome, f"/r/{rid}?x=1").status is HTTPStatus.OK
    assert render(client, chrome, "/pending").status is HTTPStatus.OK
    for missing in ("/o/Nope", "/r/nope", "/r/nope/edit", "/nothing/here", "/r/%ZZ"):
        page = render(client, chrome, missing)
        assert page.status is HTTPStatus.NOT_FOUND and "Not found" in page.body, missing
    client.delete(rid)  # never synced: gone entirely
    assert render(client, chrome, f"/r/{rid}").status is HTTPStatus.NOT_FOUND


async def test_edit_form_of_a_locked_record_explains_the_lock(
    synced_account: tuple[Client, str],
) -> None:
    client, rid = synced_account
    client.update(rid, {"Name": "Mine"})
    [out] = client.replica.outgoing()
    client.replica.apply_conflict(out.change_id, Problem(message="rule failed"), version=1)
    page = render(client, chrome_of(client), f"/r/{rid}/edit")
    assert page.status is HTTPStatus.CONFLICT and "locked (conflict)" in page.body
    result = await Actions(client, lambda _: None).run(
        {"action": "update", "record_id": rid, "values": {"Name": "Again"}}
    )
    assert not result.ok and "locked (conflict)" in result.message


async def test_actions_turn_mistakes_into_results_never_exceptions(client: Client) -> None:
    actions = Actions(client, lambda _: None)
    created = await actions.run(
        {"action": "create", "object": "Account", "values": {"Name": "Acme", "Employees": "-3"}}
    )
    assert not created.ok and created.errors == {"Employees": ("must be at least 0",)}
    assert client.pending() == []
    for request in (
        {"action": "frobnicate"},
        {"action": "create", "object": "Nope", "values": {}},
        {"action": "update", "record_id": "missing", "values": {}},
        {"action": "update"},
        {"action": "create", "object": "Account", "values": ["not", "a", "map"]},
        {"action": "dismiss", "record_id": "missing"},
        {"action": "sync"},  # no relay
    ):
        result = await actions.run(request)
        assert not result.ok and result.message, request
    await actions.run({"action": "go_offline"})
    offline = await actions.run({"action": "sync"})
    assert offline.message == "You are working offline: untick Work offline to sync."
    ok = await actions.run({"action": "create", "object": "Account", "values": {"Name": "Acme"}})
    [record] = client.records("Account")
    assert ok.ok and ok.redirect == f"/r/{record.id}"


async def test_resolve_action_takes_theirs_or_a_typed_value_per_field(
    synced_account: tuple[Client, str],
) -> None:
    client, rid = synced_account
    client.update(rid, {"Name": "Mine", "Employees": 5})
    [out] = client.replica.outgoing()
    problem = Problem(
        conflicts=(
            FieldConflict(field="Name", base="Acme", mine="Mine", theirs="Theirs"),
            FieldConflict(field="Employees", base=None, mine=5, theirs=7),
        )
    )
    client.replica.apply_conflict(out.change_id, problem, version=1)
    actions = Actions(client, lambda _: None)
    refused = await actions.run(
        {
            "action": "resolve",
            "record_id": rid,
            "choices": {"Name": "custom", "Employees": "theirs"},
            "values": {"Name": ""},
        }
    )
    assert refused.errors == {"Name": ("is required",)}
    assert client.get(rid).status is Status.CONFLICT  # type: ignore[union-attr]
    resolved = await actions.run(
        {
            "action": "resolve",
            "record_id": rid,
            "choices": {"Name": "custom", "Employees": "theirs"},
            "values": {"Name": "Agreed", "Employees": "999"},
        }
    )
    assert resolved.ok and resolved.redirect == f"/r/{rid}"
    record = client.get(rid)
    assert record is not None and record.status is Status.PENDING
    assert (record.fields["Name"], record.fields["Employees"]) == ("Agreed", 7)
    assert push_and_ack(client, first_version=2) == [rid]


# -- the live feed ------------------------------------------------------------------------


def test_records_needing_attention_are_alerted_together_when_the_sync_finishes() -> None:
    feed = LiveFeed()
    assert feed.handle(ConnectivityChanged(True)) == [StatusPush()]
    feed.handle(SyncStarted(3))
    assert feed.progress == (0, 3)
    first = RecordNeedsAttention("r1", "Account", Status.CONFLICT, Problem())
    second = RecordNeedsAttention("r2", "Account", Status.UNRESOLVABLE, Problem())
    assert feed.handle(first) == [ChangedPush()]
    feed.handle(SyncProgress(2, 3))
    assert feed.progress == (2, 3)
    assert feed.handle(second) == [ChangedPush()]
    pushes = feed.handle(SyncFinished(conflicts=1, unresolvable=1))
    assert pushes == [StatusPush(), ChangedPush(), AlertPush((first, second))]
    assert feed.progress is None
    assert feed.handle(SyncFinished()) == [StatusPush(), ChangedPush()]  # alerted once


def test_attention_outside_a_sync_is_alerted_at_once_and_offline_clears_progress() -> None:
    feed = LiveFeed(online=True)
    gone = RecordNeedsAttention(
        "r1", "Account", Status.UNRESOLVABLE, Problem(reason=UnresolvableReason.DELETED)
    )
    assert feed.handle(gone) == [ChangedPush(), AlertPush((gone,))]
    assert feed.handle(PendingChanged("r1", "Account", None)) == [ChangedPush()]
    feed.handle(SyncStarted(5))
    feed.handle(ConnectivityChanged(False, "connection reset"))
    assert (feed.online, feed.progress, feed.problem) == (False, None, "connection reset")
