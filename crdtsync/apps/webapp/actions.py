"""What the page asks for over ``/live``, carried out on the :class:`~crdtsync.Client`.

An action is a JSON object ``{"action": NAME, ...}``; :meth:`Actions.run` returns an
:class:`ActionResult` the transport sends back. Every outcome a user can cause is a
result, never an exception: a :class:`~crdtsync.ValidationError` becomes per-field
``errors``; a locked, missing or deleted record, an unknown object or an unreachable
relay becomes a ``message``. Only a fault in this process (a bug) is logged with its
traceback, and the page still gets a one-line message.

=============== ====================================================== ==============
action          fields                                                 on success
=============== ====================================================== ==============
``create``      ``object``, ``values`` {field: text}                    record page
``update``      ``record_id``, ``values`` {field: text}                 record page
``delete``      ``record_id``                                           object home
``resolve``     ``record_id``, ``choices`` {field: mine|theirs|custom}, record page
                ``values`` {field: text} (no values: "delete anyway")
``dismiss``     ``record_id``                                           record page or
                                                                        Pending Changes
``go_offline``  —                                                       —
``go_online``   —                                                       —
``sync``        —                                                       a message
=============== ====================================================== ==============
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from crdtsync.client.facade import Client
from crdtsync.client.model import ChangeKind, PendingChange, Status
from crdtsync.core.exceptions import (
    CrdtsyncError,
    FieldError,
    InvalidOperation,
    OfflineError,
    RecordDeleted,
    RecordLocked,
    RecordNotFound,
    UnknownObject,
    ValidationError,
)
from crdtsync.core.fieldtypes import FieldType

from .forms import changed_values, parse_form

log = logging.getLogger("crdtsync.apps.webapp")

SYNC_TIMEOUT = 15.0  #: seconds the "Sync now" button waits for the relay


@attrs.frozen(kw_only=True)
class ActionResult:
    """The answer to one action: ``ok``, or ``errors`` per field (``""``: the record)
    and / or a ``message``; ``redirect`` is the page to show next."""

    ok: bool
    message: str = ""
    errors: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    redirect: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "message": self.message,
            "errors": {field: list(messages) for field, messages in self.errors.items()},
            "redirect": self.redirect,
        }

    @classmethod
    def invalid(cls, errors: list[FieldError], message: str = "") -> ActionResult:
        grouped: dict[str, tuple[str, ...]] = {}
        for error in errors:
            grouped[error.field] = (*grouped.get(error.field, ()), error.message)
        return cls(ok=False, errors=grouped, message=message or "Please fix the fields marked.")


def failure(message: str) -> ActionResult:
    return ActionResult(ok=False, message=message)


class Actions:
    """Runs page actions on one client. ``set_working_offline`` is called with the
    state of the "Work offline" switch whenever an action flips it."""

    def __init__(self, client: Client, set_working_offline: Callable[[bool], None]) -> None:
        self.client = client
        self.working_offline = False
        self._set_working_offline = set_working_offline
        self._handlers: dict[str, Callable[[Mapping[str, Any]], ActionResult]] = {
            "create": self._create,
            "update": self._update,
            "delete": self._delete,
            "resolve": self._resolve,
            "dismiss": self._dismiss,
            "go_offline": self._go_offline,
            "go_online": self._go_online,
        }

    async def run(self, request: Mapping[str, Any]) -> ActionResult:
        """Carry out one action and say how it went; never raises for a user's mistake."""
        name = request.get("action")
        try:
            if name == "sync":
                if self.working_offline:
                    return failure("You are working offline: untick Work offline to sync.")
                await self.client.sync(timeout=SYNC_TIMEOUT)
                return ActionResult(ok=True, message="Synced.")
            handler = self._handlers.get(name) if isinstance(name, str) else None
            if handler is None:
                return failure(f"unknown action {name!r}")
            return handler(request)
        except ValidationError as exc:
            return ActionResult.invalid(list(exc.errors))
        except RecordLocked as exc:
            way_out = "resolve or dismiss it" if exc.status == Status.CONFLICT else "dismiss it"
            return failure(f"This record is locked ({exc.status}): {way_out} first.")
        except (RecordNotFound, RecordDeleted):
            return failure("This record no longer exists on this device.")
        except OfflineError as exc:
            text = str(exc)
            return failure(text[:1].upper() + text[1:])
        except (UnknownObject, InvalidOperation, CrdtsyncError) as exc:
            return failure(str(exc))
        except Exception:  # a bug here must not take the page down: log it, say so
            log.exception("action %r failed", name)
            return failure("Something went wrong in the app; the details are in its log.")

    # -- the actions ------------------------------------------------------------------------

    def _create(self, request: Mapping[str, Any]) -> ActionResult:
        object_name = _text(request, "object")
        spec = self.client.schema.object(object_name)
        values, errors = parse_form(spec, _values(request))
        if errors:
            return ActionResult.invalid(errors)
        given = {
            name: value
            for name, value in values.items()
            if value is not None and not (value == "" and spec.fields[name].type is FieldType.TEXT)
        }
        record_id = self.client.create(object_name, given)
        return ActionResult(ok=True, message="Saved on this device.", redirect=f"/r/{record_id}")

    def _update(self, request: Mapping[str, Any]) -> ActionResult:
        record_id = _text(request, "record_id")
        record = self.client.get(record_id)
        if record is None:
            return failure("This record no longer exists on this device.")
        spec = self.client.schema.object(record.object)
        values, errors = parse_form(spec, _values(request))
        if errors:
            return ActionResult.invalid(errors)
        changes = changed_values(spec, record.fields, values)
        if changes:
            self.client.update(record_id, changes)
        message = "Saved on this device." if changes else "Nothing changed."
        return ActionResult(ok=True, message=message, redirect=f"/r/{record_id}")

    def _delete(self, request: Mapping[str, Any]) -> ActionResult:
        record_id = _text(request, "record_id")
        record = self.client.get(record_id)
        if record is None:
            return failure("This record no longer exists on this device.")
        self.client.delete(record_id)
        return ActionResult(ok=True, message="Deleted.", redirect=f"/o/{record.object}")

    def _resolve(self, request: Mapping[str, Any]) -> ActionResult:
        record_id = _text(request, "record_id")
        change = self._change(record_id)
        if change is None or change.status is not Status.CONFLICT:
            state = (change.status if change is not None else Status.SYNCED).value
            return failure(f"This record has no conflict to resolve (it is {state}).")
        if change.kind is ChangeKind.DELETE:
            self.client.resolve(record_id)
            return ActionResult(ok=True, message="Deleting it anyway.", redirect="/pending")
        spec = self.client.schema.object(change.object)
        raw = dict(_values(request))
        choices = request.get("choices") or {}
        if not isinstance(choices, Mapping):
            return failure("'choices' must be an object")
        fixes: dict[str, object] = {}
        conflicts = change.problem.conflicts if change.problem else ()
        for conflict in conflicts:
            choice = choices.get(conflict.field, "mine")
            typed = raw.pop(conflict.field, None)
            if choice == "theirs":
                fixes[conflict.field] = conflict.theirs
            elif choice == "custom":
                raw[conflict.field] = typed if typed is not None else ""
            elif choice != "mine":
                return failure(f"choose mine, theirs or custom for {conflict.field}")
        values, errors = parse_form(spec, raw)
        if errors:
            return ActionResult.invalid(errors)
        self.client.resolve(record_id, {**values, **fixes})
        return ActionResult(ok=True, message="Saved; syncing again.", redirect=f"/r/{record_id}")

    def _dismiss(self, request: Mapping[str, Any]) -> ActionResult:
        record_id = _text(request, "record_id")
        self.client.dismiss(record_id)
        still_here = self.client.get(record_id) is not None
        redirect = f"/r/{record_id}" if still_here else "/pending"
        return ActionResult(ok=True, message="Your changes were dismissed.", redirect=redirect)

    def _go_offline(self, request: Mapping[str, Any]) -> ActionResult:
        self.client.go_offline()
        self.working_offline = True
        self._set_working_offline(True)
        return ActionResult(ok=True, message="Working offline: changes wait on this device.")

    def _go_online(self, request: Mapping[str, Any]) -> ActionResult:
        self.client.go_online()
        self.working_offline = False
        self._set_working_offline(False)
        return ActionResult(ok=True, message="Going online: pending changes will sync.")

    def _change(self, record_id: str) -> PendingChange | None:
        return next((c for c in self.client.pending() if c.record_id == record_id), None)


def _text(request: Mapping[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidOperation(f"the action needs {key!r}")
    return value


def _values(request: Mapping[str, Any]) -> Mapping[str, object]:
    values = request.get("values") or {}
    if not isinstance(values, Mapping):
        raise InvalidOperation("'values' must be an object of field names to text")
    return values
