"""The reference app's pages as HTML strings: pure functions of the replica's values.

Nothing here touches a socket, a store or a :class:`~crdtsync.Client`: every function
takes values (records, pending changes, the schema, the header's :class:`Chrome`) and
returns HTML. Every piece of text that comes from data — field values, record names,
user names, messages — goes through :func:`html.escape`, so a record called
``<script>`` is shown, never run.

Markup conventions the page script (``static/app.js``) and the browser tests rely on:
``data-status`` on every status indicator, ``data-record`` on every list row,
``data-field`` on every form row (with its ``.field-error``), ``form[data-action]`` and
``button[data-action]`` for the actions sent over ``/live``, ``#main`` for the part a
live update replaces and ``body[data-live]`` saying whether it may.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from crdtsync.client.model import ChangeKind, FieldConflict, PendingChange, Problem, Record, Status
from crdtsync.client.model import UnresolvableReason as Reason
from crdtsync.core.exceptions import FieldError
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.schema import FieldSpec, ObjectSpec

#: How each status is shown: icon, short label, and what it means for the user.
STATUS_LOOK: Mapping[Status, tuple[str, str, str]] = {
    Status.SYNCED: ("✓", "Synced", "Saved on the server"),
    Status.PENDING: ("◷", "Pending", "Waiting to sync"),
    Status.SYNCING: ("↻", "Syncing", "Being sent to the server"),
    Status.CONFLICT: ("⚠", "Conflict", "Needs your attention before it can sync"),
    Status.UNRESOLVABLE: ("⊘", "Can't be saved", "Can only be dismissed"),
}

KIND_LABEL: Mapping[ChangeKind, str] = {
    ChangeKind.CREATE: "New record",
    ChangeKind.UPDATE: "Edit",
    ChangeKind.DELETE: "Delete",
}

#: Field types whose values a user never types (set by the relay or an administrator).
_NOT_TYPED = frozenset({FieldType.OWNER})
_NUMERIC = frozenset({FieldType.INTEGER, FieldType.NUMBER, FieldType.DECIMAL})
EMPTY = "—"


@attrs.frozen(kw_only=True)
class Chrome:
    """What the header and navigation of every page show."""

    user: str
    objects: Sequence[str]
    online: bool = False
    working_offline: bool = False
    progress: tuple[int, int] | None = None  #: (done, total) while a sync runs
    pending: int = 0  #: records with unsynced changes
    attention: int = 0  #: of which in conflict or unresolvable
    problem: str = ""  #: why the connection is down, when known
    failure: str = ""  #: why the relay refused this client for good, and what to do
    current: str = ""  #: the navigation entry to highlight (an object name or "pending")


def e(value: object) -> str:
    """Escape any value for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


# -- values -------------------------------------------------------------------------------


def show_value(value: Any, labels: Mapping[str, str] | None = None, *, width: int = 0) -> str:
    """A field value as people read it (escaped). ``labels`` names referenced records;
    ``width`` > 0 shortens long text with an ellipsis."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        text = "Yes" if value else "No"
    elif isinstance(value, dt.date | dt.datetime):
        text = value.isoformat()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, str) and labels and value in labels:
        text = labels[value]
    else:
        text = str(value)
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return e(text)


def input_value(value: Any) -> str:
    """A canonical value as a form input holds it (unescaped)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def field_label(spec: FieldSpec) -> str:
    return spec.label or spec.name


def object_label(spec: ObjectSpec) -> str:
    return spec.label or spec.name


def record_title(spec: ObjectSpec | None, fields: Mapping[str, Any], record_id: str) -> str:
    """A record's display name (unescaped): its ``Name``, else its first required
    string, else its first non-empty string, else a short id."""
    if spec is not None:
        strings = [
            name
            for name, field in spec.fields.items()
            if field.type in (FieldType.STRING, FieldType.EMAIL)
        ]
        if "FirstName" in fields and fields.get("LastName"):
            return " ".join(str(fields[n]) for n in ("FirstName", "LastName") if fields.get(n))
        preferred = ["Name"] + [n for n in strings if spec.fields[n].required] + strings
        for name in preferred:
            if fields.get(name):
                return str(fields[name])
    return f"record {record_id[:8]}"


def natural_key(text: str) -> tuple[tuple[int, str | int], ...]:
    """Sort key that orders text as people do: case-insensitive, and runs of digits by
    their number ("RT 2" before "RT 10")."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part)
        for part in re.split(r"(\d+)", text.casefold())
        if part
    )


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def status_badge(status: Status) -> str:
    """The status indicator: the same look in lists, on records and in Pending Changes."""
    icon, label, meaning = STATUS_LOOK[status]
    return (
        f'<span class="status status-{status.value}" data-status="{status.value}" '
        f'title="{e(meaning)}"><span aria-hidden="true">{icon}</span> {e(label)}</span>'
    )


def unresolvable_reason(problem: Problem | None) -> str:
    """Why a change can't be saved, in words (unescaped)."""
    if problem is not None and problem.reason is Reason.DELETED:
        return "Someone else deleted this record while you were offline."
    if problem is not None and problem.reason is Reason.FORBIDDEN:
        return "You no longer have access to this record: it was unshared or its owner changed."
    if problem is not None and problem.message:
        return f"The server refused this change: {problem.message}"
    return "The server refused this change."


def problem_summary(change: PendingChange) -> str:
    """The one-line detail shown beside a status (unescaped)."""
    if change.status is Status.UNRESOLVABLE:
        return unresolvable_reason(change.problem) + " Your changes can't be saved."
    if change.problem is not None:
        return change.problem.describe()
    return change.note


# -- layout -------------------------------------------------------------------------------


def layout(chrome: Chrome, title: str, body: str, *, live: bool = True) -> str:
    """A whole page: header (connection, work-offline switch, progress), navigation,
    ``body`` in ``#main``, and the alert pop-up. ``title`` is unescaped text; ``body`` is
    HTML. ``live=False`` (forms) keeps a live update from replacing what the user types."""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · {e(chrome.user)} · crdtsync</title>"
        '<link rel="stylesheet" href="/static/app.css">'
        '<script src="/static/app.js" defer></script></head>'
        f'<body data-live="{1 if live else 0}" data-user="{e(chrome.user)}">'
        f"{header(chrome)}{navigation(chrome)}"
        f'<main id="main">{body}</main>'
        '<div id="alert" class="alert" role="alertdialog" aria-labelledby="alert-title" hidden>'
        '<h2 id="alert-title">Sync finished: some changes need your attention</h2>'
        '<ul class="alert-items"></ul>'
        '<button type="button" class="alert-close">Close</button></div>'
        '<div id="toast" class="toast" role="status" aria-live="polite" hidden></div>'
        "</body></html>\n"
    )


def connection_state(chrome: Chrome) -> tuple[str, str]:
    """``(state, label)`` of the connection indicator."""
    if chrome.working_offline:
        return "working-offline", "Working offline"
    if chrome.online:
        return "online", "Online"
    return "offline", "Offline · reconnecting"


def header(chrome: Chrome) -> str:
    state, label = connection_state(chrome)
    checked = " checked" if chrome.working_offline else ""
    problem = f' title="{e(chrome.problem)}"' if chrome.problem and state == "offline" else ""
    return (
        '<header class="top">'
        '<a class="brand" href="/">crdtsync <span>CRM</span></a>'
        f'<span class="user" id="user">{e(chrome.user)}</span>'
        f'<span id="connection" class="connection" data-state="{state}"{problem}>'
        f'<span class="dot" aria-hidden="true"></span><span class="label">{e(label)}</span></span>'
        '<label class="switch"><input type="checkbox" id="work-offline"'
        f"{checked}> Work offline</label>"
        '<button type="button" class="sync-now" data-action="sync">Sync now</button>'
        f"{progress_bar(chrome.progress)}"
        "</header>"
        f'<p id="sync-failure" class="sync-failure" role="alert"'
        f"{'' if chrome.failure else ' hidden'}>Cannot sync: "
        f'<span class="detail">{e(chrome.failure)}</span></p>'
    )


def progress_bar(progress: tuple[int, int] | None) -> str:
    """The bar shown while a sync runs (present but hidden otherwise)."""
    done, total = progress or (0, 0)
    hidden = "" if progress is not None else " hidden"
    return (
        f'<div id="sync-progress" class="progress"{hidden}>'
        f'<progress max="{max(total, 1)}" value="{done}"></progress>'
        f'<span class="label">Syncing {done} of {total}</span></div>'
    )


def badge_labels(pending: int, attention: int) -> tuple[str, str]:
    """What the Pending Changes badges count, in words: the records waiting to sync,
    and those that need the user's attention (``pending`` counts both)."""
    waiting = max(pending - attention, 0)
    return f"{waiting} pending", plural(attention, "needs attention", "need attention")


def navigation(chrome: Chrome) -> str:
    """The objects' homes and Pending Changes, whose two badges say what they count
    (as a tooltip and to screen readers): records waiting to sync, and records that
    need attention (shown only when there are some)."""
    links = [
        f'<a href="/o/{e(name)}"{_current(chrome, name)}>{e(name)}</a>' for name in chrome.objects
    ]
    waiting, attention = badge_labels(chrome.pending, chrome.attention)
    count = max(chrome.pending - chrome.attention, 0)
    hidden = "" if chrome.attention else " hidden"
    links.append(
        f'<a id="nav-pending" href="/pending"{_current(chrome, "pending")}>Pending Changes '
        f'<span class="badge" id="pending-count" data-count="{count}" title="{waiting}" '
        f'aria-label="{waiting}">{count}</span>'
        f'<span class="badge attention" id="attention-count" data-status="conflict" '
        f'data-count="{chrome.attention}" title="{attention}" aria-label="{attention}"{hidden}>'
        f'{chrome.attention} <span aria-hidden="true">⚠</span></span></a>'
    )
    return f'<nav id="nav">{"".join(links)}</nav>'


def _current(chrome: Chrome, key: str) -> str:
    return ' aria-current="page"' if chrome.current == key else ""


# -- object home --------------------------------------------------------------------------


def object_home(
    chrome: Chrome,
    spec: ObjectSpec,
    records: Sequence[Record],
    counts: Mapping[str, int],
    labels: Mapping[str, str] | None = None,
) -> str:
    """An object's home: per-status counts, the New button, and every record with its
    status indicator (none when synced)."""
    name = object_label(spec)
    shown = [Status.PENDING, Status.SYNCING, Status.CONFLICT, Status.UNRESOLVABLE]
    count_items = "".join(
        f'<li data-status="{s.value}" data-count="{counts.get(s.value, 0)}">'
        f"{status_badge(s)} <b>{counts.get(s.value, 0)}</b></li>"
        for s in shown
        if counts.get(s.value, 0)
    )
    synced = counts.get(Status.SYNCED.value, 0)
    summary = (
        f'<ul class="counts" id="counts"><li data-status="synced" data-count="{synced}">'
        f"<b>{synced}</b> synced</li>{count_items}</ul>"
    )
    subtitle_fields = [
        n
        for n, f in spec.fields.items()
        if f.type in (FieldType.PICKLIST, FieldType.EMAIL, FieldType.INTEGER, FieldType.DECIMAL)
    ][:2]
    rows = []
    for record in sorted(records, key=lambda r: natural_key(record_title(spec, r.fields, r.id))):
        title = record_title(spec, record.fields, record.id)
        subtitle = " · ".join(
            show_value(record.fields.get(n), labels, width=40)
            for n in subtitle_fields
            if record.fields.get(n) is not None
        )
        badge = status_badge(record.status) if record.status is not Status.SYNCED else ""
        rows.append(
            f'<li data-record="{e(record.id)}" data-status="{record.status.value}">'
            f'<a href="/r/{e(record.id)}"><span class="title">{e(title)}</span>'
            f'<span class="subtitle">{subtitle}</span>{badge}</a></li>'
        )
    listing = (
        f'<ul class="records" id="records">{"".join(rows)}</ul>'
        if rows
        else f'<p class="empty">No {e(name)} records yet.</p>'
    )
    body = (
        f'<div class="page-head"><h1>{e(name)}</h1>'
        f'<a class="button primary" id="new-record" href="/o/{e(spec.name)}/new">New</a></div>'
        f"{summary}{listing}"
    )
    return layout(chrome, name, body)


# -- record page --------------------------------------------------------------------------


def record_page(
    chrome: Chrome,
    spec: ObjectSpec,
    record: Record,
    change: PendingChange | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """A record: the highlights area (status, details, lock, actions) and its fields."""
    title = record_title(spec, record.fields, record.id)
    fields = "".join(
        f'<div class="field" data-field="{e(name)}"><dt>{e(field_label(field))}</dt>'
        f"<dd>{show_value(record.fields.get(name), labels)}</dd></div>"
        for name, field in spec.fields.items()
    )
    body = (
        highlights(spec, record.id, title, record.status, change)
        + f'<dl class="fields">{fields}</dl>'
    )
    return layout(chrome, f"{title} ({spec.name})", body)


def highlights(
    spec: ObjectSpec,
    record_id: str,
    title: str,
    status: Status,
    change: PendingChange | None,
    *,
    deleted: bool = False,
) -> str:
    """The record's highlights area: its status, the details of a problem, and the
    actions its status allows (a locked record offers resolve / dismiss only; a record
    deleted here offers none)."""
    rid = e(record_id)
    detail = ""
    if change is not None:
        text = problem_summary(change)
        kind = KIND_LABEL[change.kind]
        detail = f'<p class="status-detail">{e(kind)} waiting to sync. {e(text)}</p>'
        if status.locked:
            detail = f'<p class="status-detail">{e(text)}</p>'
    if status is Status.CONFLICT:
        actions = (
            '<p class="locked" id="locked">Locked: resolve the conflict before editing.</p>'
            f'<a class="button primary" id="resolve" href="/r/{rid}/resolve">Resolve</a>'
        )
    elif status is Status.UNRESOLVABLE:
        actions = (
            '<p class="locked" id="locked">Locked: this change can only be dismissed.</p>'
            f'<a class="button primary" id="resolve" href="/r/{rid}/resolve">Review and dismiss</a>'
        )
    elif deleted:
        actions = "<p>You deleted this record; the delete syncs when you are online.</p>"
    else:
        actions = (
            f'<a class="button" id="edit" href="/r/{rid}/edit">Edit</a>'
            f'<button type="button" class="danger" id="delete" data-action="delete" '
            f'data-record="{rid}" data-confirm="{e(delete_question(title))}">Delete</button>'
        )
    return (
        f'<section class="highlights" id="highlights" data-status="{status.value}" '
        f'data-record="{rid}">'
        f'<div class="object-name">{e(object_label(spec))}</div>'
        f'<h1>{e(title)}</h1><div class="status-line">{status_badge(status)}</div>{detail}'
        f'<div class="actions">{actions}</div></section>'
    )


def delete_question(title: str) -> str:
    """What the Delete button asks before it deletes (unescaped)."""
    return (
        f"Delete {title}? It is removed for everyone who can see it once this syncs; "
        "until then you can still find it on Pending Changes."
    )


def deleted_record_page(chrome: Chrome, spec: ObjectSpec, change: PendingChange) -> str:
    """A record this user deleted whose delete has not synced (or came back in conflict)."""
    title = _title_from_change(spec, change)
    body = highlights(spec, change.record_id, title, change.status, change, deleted=True)
    return layout(chrome, f"{title} ({spec.name})", body)


def _title_from_change(spec: ObjectSpec, change: PendingChange) -> str:
    values = {n: c.new if c.new is not None else c.old for n, c in change.changes.items()}
    return record_title(spec, values, change.record_id)


# -- forms --------------------------------------------------------------------------------


def record_form(
    chrome: Chrome,
    spec: ObjectSpec,
    record: Record | None,
    choices: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> str:
    """The New (``record`` is ``None``) or Edit form. Each field row has a
    ``.field-error`` slot the page script fills with the field's validation errors;
    ``choices`` lists ``(id, title)`` of the records a reference field may point at."""
    values = record.fields if record is not None else {}
    rows = "".join(
        form_row(field, values.get(name), (choices or {}).get(name, ()))
        for name, field in spec.fields.items()
        if field.type not in _NOT_TYPED
    )
    if record is None:
        heading = f"New {object_label(spec)}"
        target = f'data-action="create" data-object="{e(spec.name)}"'
        cancel = f"/o/{e(spec.name)}"
    else:
        heading = f"Edit {record_title(spec, record.fields, record.id)}"
        target = f'data-action="update" data-record="{e(record.id)}"'
        cancel = f"/r/{e(record.id)}"
    body = (
        f'<h1>{e(heading)}</h1><form class="record-form" {target} novalidate>'
        '<p class="form-error" role="alert" hidden></p>'
        f"{rows}"
        '<div class="actions"><button type="submit" class="primary" id="save">Save</button>'
        f'<a class="button" href="{cancel}">Cancel</a></div></form>'
    )
    return layout(chrome, heading, body, live=False)


def form_row(
    spec: FieldSpec,
    value: Any,
    choices: Sequence[tuple[str, str]] = (),
    errors: Iterable[str] = (),
) -> str:
    """One labelled input for one field, with its error slot."""
    name = e(spec.name)
    required = ' <span class="required" title="required">*</span>' if spec.required else ""
    messages = " ".join(errors)
    hidden = "" if messages else " hidden"
    return (
        f'<div class="form-row" data-field="{name}">'
        f'<label for="f-{name}">{e(field_label(spec))}{required}</label>'
        f"{field_input(spec, value, choices)}"
        f'<p class="field-error" id="error-{name}" role="alert"{hidden}>{e(messages)}</p></div>'
    )


def field_input(
    spec: FieldSpec, value: Any, choices: Sequence[tuple[str, str]] = (), *, prefix: str = "f-"
) -> str:
    """The input element for a field type; its ``name`` is the field's name."""
    name = e(spec.name)
    ident = f'id="{prefix}{name}" name="{name}"'
    current = input_value(value)
    readonly = " readonly" if spec.read_only else ""
    if spec.type is FieldType.TEXT:
        return f'<textarea {ident} rows="4"{readonly}>{e(current)}</textarea>'
    options: list[tuple[str, str]] | None = None
    if spec.type is FieldType.PICKLIST:
        options = [(v, v) for v in spec.values or ()]
    elif spec.type is FieldType.BOOLEAN:
        options = [("true", "Yes"), ("false", "No")]
    elif spec.type is FieldType.REFERENCE and choices:
        options = list(choices)
        if current and current not in {v for v, _ in options}:
            options.append((current, current))
    if options is not None:
        items = ['<option value="">—</option>'] + [
            f'<option value="{e(v)}"{" selected" if v == current else ""}>{e(text)}</option>'
            for v, text in options
        ]
        disabled = " disabled" if spec.read_only else ""
        return f"<select {ident}{disabled}>{''.join(items)}</select>"
    kind = {
        FieldType.EMAIL: "email",
        FieldType.DATE: "date",
    }.get(spec.type, "text")
    mode = ' inputmode="decimal"' if spec.type in _NUMERIC else ""
    hint = {
        FieldType.DATETIME: ' placeholder="2026-01-31T09:00:00+00:00"',
        FieldType.INTEGER: ' placeholder="a whole number"',
    }.get(spec.type, "")
    return f'<input type="{kind}" {ident} value="{e(current)}"{mode}{hint}{readonly}>'


# -- pending changes ----------------------------------------------------------------------


def pending_page(
    chrome: Chrome,
    changes: Sequence[PendingChange],
    specs: Mapping[str, ObjectSpec],
    titles: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
) -> str:
    """Every record with unsynced changes: what changed (old → new), its status and
    details. A row in conflict or unresolvable opens its resolution."""
    if not changes:
        body = (
            '<h1>Pending Changes</h1><p class="empty" id="no-pending">'
            "No pending changes: everything is synced.</p>"
        )
        return layout(chrome, "Pending Changes", body)
    rows = []
    for change in changes:
        spec = specs.get(change.object)
        title = titles.get(change.record_id) or (
            _title_from_change(spec, change) if spec else change.record_id
        )
        target = (
            f"/r/{e(change.record_id)}/resolve"
            if change.status.locked
            else f"/r/{e(change.record_id)}"
        )
        fields = "".join(
            f'<li data-field="{e(name)}"><span class="field">{e(_label(spec, name))}</span> '
            f'<span class="old">{show_value(c.old, labels, width=40)}</span> → '
            f'<span class="new">{show_value(c.new, labels, width=40)}</span></li>'
            for name, c in change.changes.items()
        )
        detail = problem_summary(change)
        rows.append(
            f'<li data-record="{e(change.record_id)}" data-status="{change.status.value}" '
            f'data-kind="{change.kind.value}"><a href="{target}">'
            f'<div class="row-head"><span class="title">{e(title)}</span>'
            f'<span class="object-name">{e(change.object)}</span>'
            f'<span class="kind">{e(KIND_LABEL[change.kind])}</span>'
            f"{status_badge(change.status)}</div>"
            + (f'<ul class="changes">{fields}</ul>' if fields else "")
            + (f'<p class="details">{e(detail)}</p>' if detail else "")
            + "</a></li>"
        )
    body = (
        f'<h1>Pending Changes</h1><p class="hint" id="pending-summary">'
        f"{e(pending_summary(changes))}</p>"
        f'<ul class="pending" id="pending-list">{"".join(rows)}</ul>'
    )
    return layout(chrome, "Pending Changes", body)


def pending_summary(changes: Sequence[PendingChange]) -> str:
    """The sentence above the pending changes (unescaped): what syncs by itself, and
    what waits for the user (conflicts and unresolvable changes never sync by
    themselves)."""
    locked = sum(1 for change in changes if change.status.locked)
    waiting = len(changes) - locked
    themselves = "by itself" if waiting == 1 else "by themselves"
    if not locked:
        return (
            f"{plural(waiting, 'record has', 'records have')} changes not yet saved on the "
            f"server. {'It syncs' if waiting == 1 else 'They sync'} {themselves} when you "
            "are online."
        )
    which = "it" if locked == 1 else "each"
    if not waiting:
        return (
            f"{plural(locked, 'record has', 'records have')} changes that need your "
            f"attention before they can be saved: open {which} to resolve or dismiss them."
        )
    return (
        f"{plural(len(changes), 'record has', 'records have')} changes not yet saved on "
        f"the server. {plural(locked, 'needs', 'need')} your attention: open {which} to "
        f"resolve or dismiss. The other {plural(waiting, 'syncs', 'sync')} {themselves} "
        "when you are online."
    )


def _label(spec: ObjectSpec | None, name: str) -> str:
    field = spec.fields.get(name) if spec is not None else None
    return field_label(field) if field is not None else name


# -- resolution ---------------------------------------------------------------------------


def resolve_page(
    chrome: Chrome,
    spec: ObjectSpec,
    record: Record | None,
    change: PendingChange,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The resolution of a record needing attention: a conflict form (per field base /
    mine / theirs / who, choose or type; validation messages beside their fields) or,
    for an unresolvable change, the reason in words and a Dismiss button."""
    title = (
        record_title(spec, record.fields, record.id)
        if record is not None
        else _title_from_change(spec, change)
    )
    rid = e(change.record_id)
    head = (
        f'<section class="highlights" id="highlights" data-status="{change.status.value}" '
        f'data-record="{rid}"><div class="object-name">{e(object_label(spec))}</div>'
        f'<h1>{e(title)}</h1><div class="status-line">{status_badge(change.status)}</div>'
    )
    if change.status is Status.UNRESOLVABLE:
        body = head + unresolvable_body(spec, change, labels)
    elif change.status is Status.CONFLICT and change.kind is ChangeKind.DELETE:
        body = head + delete_conflict_body(change)
    elif change.status is Status.CONFLICT:
        values = record.fields if record is not None else {}
        body = head + conflict_form(spec, change, values, labels)
    else:
        body = (
            head + '<p class="status-detail">Nothing to resolve: this change is '
            f"{e(STATUS_LOOK[change.status][2].lower())}.</p>"
            f'<div class="actions"><a class="button" href="/r/{rid}">Open the record</a></div>'
            "</section>"
        )
    return layout(chrome, f"Resolve {title}", body, live=change.status is not Status.CONFLICT)


def unresolvable_body(
    spec: ObjectSpec, change: PendingChange, labels: Mapping[str, str] | None = None
) -> str:
    reason = unresolvable_reason(change.problem)
    lost = "".join(
        f'<li data-field="{e(name)}"><span class="field">{e(_label(spec, name))}</span> '
        f'<span class="old">{show_value(c.old, labels)}</span> → '
        f'<span class="new">{show_value(c.new, labels)}</span></li>'
        for name, c in change.changes.items()
    )
    what = (
        f'<h2>Your unsaved {e(KIND_LABEL[change.kind].lower())}</h2><ul class="changes">{lost}</ul>'
        if lost
        else ""
    )
    return (
        f'<p class="reason" id="reason">{e(reason)}</p>'
        "<p>Your changes can't be saved. Dismiss them to unlock the record"
        " (or remove it from this device if it is gone).</p></section>"
        f"{what}"
        '<div class="actions"><button type="button" class="primary" id="dismiss" '
        f'data-action="dismiss" data-record="{e(change.record_id)}">Dismiss</button></div>'
    )


def delete_conflict_body(change: PendingChange) -> str:
    detail = change.problem.describe() if change.problem else ""
    rid = e(change.record_id)
    return (
        f'<p class="reason" id="reason">You deleted this record, but it was {e(detail)}.</p>'
        '<p class="locked">Locked until you decide.</p></section>'
        '<div class="actions">'
        f'<button type="button" class="danger" id="delete-anyway" data-action="resolve" '
        f'data-record="{rid}">Delete anyway</button>'
        f'<button type="button" id="keep" data-action="dismiss" data-record="{rid}">'
        "Keep the record</button></div>"
    )


def conflict_form(
    spec: ObjectSpec,
    change: PendingChange,
    values: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> str:
    """The resolution form of a conflict: one row per conflicting field (keep mine,
    take theirs, or type a value) and one input per field with a validation error."""
    problem = change.problem or Problem()
    errors = _errors_by_field(problem.errors)
    conflict_rows = "".join(
        conflict_row(spec, c, errors.pop(c.field, []), labels) for c in problem.conflicts
    )
    record_errors = errors.pop("", [])
    fix_rows = "".join(
        form_row(spec.fields[name], values.get(name), (), messages)
        for name, messages in errors.items()
        if name in spec.fields
    )
    unknown = [m for name, ms in errors.items() if name not in spec.fields for m in ms]
    form_error = " ".join(record_errors + unknown)
    table = (
        '<table class="conflicts" id="conflicts"><thead><tr><th>Field</th><th>Base</th>'
        "<th>Mine</th><th>Theirs</th><th>Keep</th></tr></thead>"
        f"<tbody>{conflict_rows}</tbody></table>"
        if conflict_rows
        else ""
    )
    fixes = (
        f'<fieldset class="fixes"><legend>Fix these fields</legend>{fix_rows}</fieldset>'
        if fix_rows
        else ""
    )
    title = record_title(spec, values, change.record_id) if values else "this record"
    discard = (
        f"Discard all your changes to {title}? Every field listed under “All your changes” "
        "goes back to the server's value."
    )
    return (
        '<p class="locked" id="locked">Locked until you save a resolution or discard your '
        "changes. Saving syncs it again.</p></section>"
        f'<form class="resolve-form" data-action="resolve" data-record="{e(change.record_id)}" '
        "novalidate>"
        f'<p class="form-error" role="alert"{"" if form_error else " hidden"}>{e(form_error)}</p>'
        f"{table}{fixes}{my_changes(spec, change, labels)}"
        '<div class="actions"><button type="submit" class="primary" id="save">Save and sync'
        "</button>"
        '<button type="button" id="discard" data-action="dismiss" '
        f'data-record="{e(change.record_id)}" data-confirm="{e(discard)}">'
        "Discard all my changes</button></div></form>"
    )


def my_changes(
    spec: ObjectSpec, change: PendingChange, labels: Mapping[str, str] | None = None
) -> str:
    """Every field this user changed in the record (old → new), the conflicting ones
    and the ones failing validation marked: what "Discard all my changes" throws away,
    and what "Save and sync" sends besides the decided fields."""
    problem = change.problem or Problem()
    conflicting = {c.field for c in problem.conflicts}
    invalid = {error.field for error in problem.errors}
    rows = []
    for name, edit in change.changes.items():
        mark = (
            "in conflict"
            if name in conflicting
            else "needs fixing"
            if name in invalid
            else "no conflict: syncs as is"
        )
        flag = "conflict" if name in conflicting else "invalid" if name in invalid else "clear"
        rows.append(
            f'<li data-field="{e(name)}" data-mark="{flag}">'
            f'<span class="field">{e(_label(spec, name))}</span> '
            f'<span class="old">{show_value(edit.old, labels, width=60)}</span> → '
            f'<span class="new">{show_value(edit.new, labels, width=60)}</span> '
            f'<span class="mark mark-{flag}">{"⚠ " if flag != "clear" else ""}{mark}</span></li>'
        )
    if not rows:
        return ""
    return (
        '<section class="my-changes" id="my-changes"><h2>All your changes to this record</h2>'
        f'<ul class="changes">{"".join(rows)}</ul></section>'
    )


def conflict_row(
    spec: ObjectSpec,
    conflict: FieldConflict,
    messages: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> str:
    name = e(conflict.field)
    field = spec.fields.get(conflict.field)
    who = e(conflict.changed_by or "someone else")
    choice = f'name="choice:{name}"'
    custom = (
        field_input(field, conflict.mine, prefix="custom-")
        if field is not None
        else f'<input type="text" id="custom-{name}" name="{name}">'
    )
    custom = f'<div class="custom" hidden>{custom}</div>'  # shown once "Other" is chosen
    hidden = "" if messages else " hidden"
    return (
        f'<tr class="form-row" data-field="{name}"><th>{e(_label(spec, conflict.field))}</th>'
        f'<td class="base">{show_value(conflict.base, labels)}</td>'
        f'<td class="mine">{show_value(conflict.mine, labels)}</td>'
        f'<td class="theirs">{show_value(conflict.theirs, labels)}'
        f'<small class="who">changed by {who}</small></td>'
        '<td class="choice">'
        f'<label><input type="radio" {choice} value="mine" checked> Mine</label>'
        f'<label><input type="radio" {choice} value="theirs"> Theirs</label>'
        f'<label><input type="radio" {choice} value="custom"> Other:</label>{custom}'
        f'<p class="field-error" id="error-{name}" role="alert"{hidden}>'
        f"{e(' '.join(messages))}</p></td></tr>"
    )


def _errors_by_field(errors: Iterable[FieldError]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for error in errors:
        grouped.setdefault(error.field, []).append(error.message)
    return grouped


# -- other pages --------------------------------------------------------------------------


def message_page(chrome: Chrome, title: str, message: str) -> str:
    """A page that only says something (not found, locked, …); both strings unescaped."""
    body = (
        f'<h1>{e(title)}</h1><p class="message" id="message">{e(message)}</p>'
        '<p><a class="button" href="/pending">Pending Changes</a></p>'
    )
    return layout(chrome, title, body)


def attention_item(title: str, record_id: str, status: Status, detail: str) -> dict[str, str]:
    """One entry of the alert pop-up (sent as JSON; the page script escapes nothing,
    so ``html`` is already escaped)."""
    return {
        "record_id": record_id,
        "status": status.value,
        "url": f"/r/{record_id}/resolve",
        "html": (
            f'{status_badge(status)} <span class="title">{e(title)}</span>'
            f'<span class="detail">{e(detail)}</span>'
        ),
    }
