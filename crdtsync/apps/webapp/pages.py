"""The reference app's routes: a GET path to an HTML page, read from the Client.

:func:`render` is the whole router; it reads the :class:`~crdtsync.Client` (never
writes) and hands values to :mod:`.views`. It has no socket, so tests call it directly.

============================= =================================================
path                          page
============================= =================================================
``/``                         redirect to the first object's home
``/o/OBJECT``                 object home: counts per status, records, New
``/o/OBJECT/new``             the New form
``/r/ID``                     record page: highlights (status, lock), fields
``/r/ID/edit``                the Edit form (a locked record explains instead)
``/r/ID/resolve``             conflict resolution, or the unresolvable reason
``/pending``                  Pending Changes
============================= =================================================
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

import attrs

from crdtsync.client.facade import Client
from crdtsync.client.model import PendingChange, Status
from crdtsync.core.schema import ObjectSpec

from . import views
from .views import Chrome


@attrs.frozen
class Page:
    """An HTTP answer: status, HTML body, and a ``location`` for redirects."""

    status: HTTPStatus
    body: str = ""
    location: str | None = None


def render(client: Client, chrome: Chrome, target: str) -> Page:
    """The page for a request target (path and query); 404 with a readable page when
    nothing matches, never an exception for a bad path."""
    parts = [unquote(p) for p in urlsplit(target).path.split("/") if p]
    routes: dict[tuple[str | None, ...], Callable[[Client, Chrome, list[str]], Page]] = {
        ("o", None): _object_home,
        ("o", None, "new"): _new_form,
        ("r", None): _record,
        ("r", None, "edit"): _edit_form,
        ("r", None, "resolve"): _resolve,
        ("pending",): _pending,
    }
    if not parts:
        first = next(iter(client.schema.objects), None)
        return Page(HTTPStatus.FOUND, location=f"/o/{first}" if first else "/pending")
    for pattern, handler in routes.items():
        if len(pattern) == len(parts) and all(
            p is None or p == part for p, part in zip(pattern, parts, strict=True)
        ):
            return handler(client, chrome, parts)
    return _not_found(chrome, "There is no such page.")


def chrome_for(
    client: Client,
    *,
    user: str,
    working_offline: bool,
    progress: tuple[int, int] | None,
    problem: str = "",
    failure: str = "",
    current: str = "",
) -> Chrome:
    """The header values of every page, from the client's current state."""
    pending = client.pending()
    return Chrome(
        user=user,
        objects=tuple(client.schema.objects),
        online=client.online,
        working_offline=working_offline,
        progress=progress,
        pending=len(pending),
        attention=sum(1 for change in pending if change.status.locked),
        problem=problem,
        failure=failure,
        current=current,
    )


def _labels(client: Client) -> dict[str, str]:
    """Every record's display name by id, to show references by name."""
    specs = client.schema.objects
    return {
        record.id: views.record_title(specs.get(record.object), record.fields, record.id)
        for record in client.records()
    }


def _spec(client: Client, name: str) -> ObjectSpec | None:
    return client.schema.objects.get(name)


def _change(client: Client, record_id: str) -> PendingChange | None:
    return next((c for c in client.pending() if c.record_id == record_id), None)


def _not_found(chrome: Chrome, message: str) -> Page:
    return Page(HTTPStatus.NOT_FOUND, views.message_page(chrome, "Not found", message))


def _object_home(client: Client, chrome: Chrome, parts: list[str]) -> Page:
    spec = _spec(client, parts[1])
    if spec is None:
        return _not_found(chrome, f"There is no object called {parts[1]!r}.")
    chrome = attrs.evolve(chrome, current=spec.name)
    counts = client.summary().get(spec.name, {})
    page = views.object_home(chrome, spec, client.records(spec.name), counts, _labels(client))
    return Page(HTTPStatus.OK, page)


def _reference_choices(client: Client, spec: ObjectSpec) -> dict[str, list[tuple[str, str]]]:
    choices: dict[str, list[tuple[str, str]]] = {}
    for name, field in spec.fields.items():
        target = _spec(client, field.to) if field.to else None
        if target is not None:
            choices[name] = sorted(
                (
                    (r.id, views.record_title(target, r.fields, r.id))
                    for r in client.records(target.name)
                ),
                key=lambda choice: views.natural_key(choice[1]),
            )
    return choices


def _new_form(client: Client, chrome: Chrome, parts: list[str]) -> Page:
    spec = _spec(client, parts[1])
    if spec is None:
        return _not_found(chrome, f"There is no object called {parts[1]!r}.")
    chrome = attrs.evolve(chrome, current=spec.name)
    form = views.record_form(chrome, spec, None, _reference_choices(client, spec))
    return Page(HTTPStatus.OK, form)


def _record(client: Client, chrome: Chrome, parts: list[str]) -> Page:
    record = client.get(parts[1])
    change = _change(client, parts[1])
    if record is None:
        spec = _spec(client, change.object) if change is not None else None
        if change is None or spec is None:
            return _not_found(chrome, "This record is not on this device (deleted, or never was).")
        chrome = attrs.evolve(chrome, current=spec.name)
        return Page(HTTPStatus.OK, views.deleted_record_page(chrome, spec, change))
    spec = client.schema.object(record.object)
    chrome = attrs.evolve(chrome, current=spec.name)
    return Page(HTTPStatus.OK, views.record_page(chrome, spec, record, change, _labels(client)))


def _edit_form(client: Client, chrome: Chrome, parts: list[str]) -> Page:
    record = client.get(parts[1])
    if record is None:
        return _not_found(chrome, "This record is not on this device (deleted, or never was).")
    spec = client.schema.object(record.object)
    chrome = attrs.evolve(chrome, current=spec.name)
    if record.status.locked:
        way_out = "resolve" if record.status is Status.CONFLICT else "dismiss"
        message = (
            f"This record is locked ({record.status.value}) until you {way_out} its pending "
            "change: open it from Pending Changes."
        )
        return Page(HTTPStatus.CONFLICT, views.message_page(chrome, "Locked", message))
    form = views.record_form(chrome, spec, record, _reference_choices(client, spec))
    return Page(HTTPStatus.OK, form)


def _resolve(client: Client, chrome: Chrome, parts: list[str]) -> Page:
    change = _change(client, parts[1])
    spec = _spec(client, change.object) if change is not None else None
    if change is None or spec is None:
        record = client.get(parts[1])
        if record is None:
            return _not_found(chrome, "This record is not on this device (deleted, or never was).")
        return Page(HTTPStatus.FOUND, location=f"/r/{record.id}")
    chrome = attrs.evolve(chrome, current="pending")
    record = client.get(change.record_id)
    return Page(HTTPStatus.OK, views.resolve_page(chrome, spec, record, change, _labels(client)))


def _pending(client: Client, chrome: Chrome, parts: list[str]) -> Page:
    chrome = attrs.evolve(chrome, current="pending")
    labels = _labels(client)
    changes = client.pending()
    titles = {c.record_id: labels[c.record_id] for c in changes if c.record_id in labels}
    page = views.pending_page(chrome, changes, client.schema.objects, titles, labels)
    return Page(HTTPStatus.OK, page)
