"""Who may do what: the check points every change, subscription and fan-out passes.

A :class:`Principal` is the authenticated identity of a connection (never a claim in a
frame). :class:`AccessPolicy` is the declarative model of the configuration:

* **roles → object permissions** (``[roles.NAME]``: ``Object = ["create", "read",
  "update", "delete"]``); every user has the ``default`` role;
* **record access** for a user with the object's ``read`` permission: the record's
  owner (its ``owner`` field, else its creator) may edit it; others get the object's
  sharing default (``private``: nothing, ``read``, ``read_write``: edit), raised by a
  manual share of that record with them (``read`` or ``edit``);
* ``update`` and ``delete`` need the object permission *and* edit access; ``read``
  needs read access;
* **fields**: ``read_only = true`` or a list of roles, ``hidden = [roles]`` (see
  :meth:`crdtsync.core.schema.ObjectSpec.for_roles`);
* a **hook** (top-level ``policy = "pkg.mod:Policy"``) is asked last at every check
  point and may grant or deny (``True`` / ``False``) or defer (``None``).
"""

from __future__ import annotations

import enum
import importlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from crdtsync.core.schema import Schema

from .errors import ConfigError


class Action(enum.StrEnum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"


class Access(enum.IntEnum):
    """What one user may do with one record."""

    NONE = 0
    READ = 1
    EDIT = 2


log = logging.getLogger("crdtsync.policy")

SHARING_ACCESS = {"private": Access.NONE, "read": Access.READ, "read_write": Access.EDIT}

# Members the per-change questions use, as module constants: on CPython 3.11 every
# ``Access.X`` lookup takes ``EnumType.__getattr__``'s slow path.
_NONE, _EDIT = Access.NONE, Access.EDIT
_READ, _UPDATE = Action.READ, Action.UPDATE


@attrs.frozen
class Principal:
    """An authenticated user on one replica (device)."""

    user: str
    replica_id: str
    roles: tuple[str, ...] = ("default",)
    admin: bool = False
    #: fields hidden from this replica at some point (it holds placeholders for them)
    once_hidden: Mapping[str, frozenset[str]] = attrs.field(factory=dict, eq=False)

    #: ``roles`` with the ``default`` role every user has (derived when built: a
    #: ``cached_property`` would give this slotted class a ``__getattr__``, which puts
    #: every attribute read of every principal on CPython's slow path)
    role_set: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    @role_set.default
    def _role_set(self) -> frozenset[str]:
        return frozenset(("default", *self.roles))


@attrs.frozen(kw_only=True)
class RecordFacts:
    """What access to one record depends on."""

    object: str
    record_id: str
    owner: str | None
    shares: Mapping[str, Access] = attrs.field(factory=dict)
    values: Mapping[str, Any] = attrs.field(factory=dict)


class PolicyHook(Protocol):
    """An application's own rule, asked after the declarative model."""

    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: RecordFacts | None,
        declared: bool,
    ) -> bool | None:
        """``True`` grants, ``False`` denies, ``None`` keeps the declarative answer
        (``declared``)."""
        ...


class Policy(Protocol):
    """What the relay asks of a permission model (:class:`AccessPolicy` is the one)."""

    @property
    def grants(self) -> Mapping[str, Mapping[str, frozenset[Action]]]:
        """Per role, per object, the actions the role grants (for access reports)."""
        ...

    @property
    def hook(self) -> PolicyHook | None:
        """The application's own rule, if any (it may need a record's values)."""
        ...

    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: RecordFacts | None = None,
    ) -> bool: ...

    def access(self, principal: Principal, record: RecordFacts) -> Access: ...

    def may_edit(self, principal: Principal, record: RecordFacts) -> bool:
        """``allows`` both ``read`` and ``update`` of ``record``."""
        ...

    def record_access(self, user: str, record: RecordFacts) -> Access: ...

    def schema_for(self, principal: Principal) -> Schema: ...

    def hidden_fields(self, principal: Principal, object_name: str) -> frozenset[str]:
        """The fields of ``object_name`` hidden from ``principal``: a function of the
        principal's roles (:attr:`Principal.role_set`) alone, so fan-out may ask once
        per role set and object."""
        ...

    def read_depends_only_on_roles(self, object_name: str) -> bool:
        """Whether reading any record of ``object_name`` depends on nothing but the
        reader's roles.

        ``True`` promises that ``allows(principal, Action.READ, object_name, record)``
        gives the same answer for every two principals with the same
        :attr:`Principal.role_set` and the same ``record`` (whoever the users, their
        replicas or their admin claim), so fan-out may decide once per record and role
        set. ``False`` (always safe) makes it ask for every reader.
        """
        ...


@attrs.define
class AccessPolicy:
    """The declarative permission model (plus an optional hook)."""

    schema: Schema
    grants: Mapping[str, Mapping[str, frozenset[Action]]]
    hook: PolicyHook | None = None
    _views: dict[frozenset[str], Schema] = attrs.field(factory=dict, init=False, repr=False)
    _actions: dict[tuple[frozenset[str], str], frozenset[Action]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _hidden: dict[tuple[frozenset[str], str], frozenset[str]] = attrs.field(
        factory=dict, init=False, repr=False
    )

    @classmethod
    def from_config(
        cls, roles: Mapping[str, Any], schema: Schema, hook: str | None = None
    ) -> AccessPolicy:
        known = set(schema.objects)
        grants: dict[str, dict[str, frozenset[Action]]] = {}
        for role, table in roles.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"[roles.{role}] must be a table of object = [actions]")
            grants[role] = {}
            for object_name, actions in table.items():
                if object_name not in known:
                    raise ConfigError(f"[roles.{role}]: unknown object {object_name!r}")
                if not isinstance(actions, list):
                    raise ConfigError(f"[roles.{role}].{object_name} must be a list of actions")
                try:
                    grants[role][object_name] = frozenset(Action(a) for a in actions)
                except ValueError:
                    valid = ", ".join(a.value for a in Action)
                    raise ConfigError(
                        f"[roles.{role}].{object_name}: actions must be among {valid}"
                    ) from None
        declared = set(grants) | {"default"}
        for spec in schema.objects.values():
            for field in spec.fields.values():
                for role in (*field.hidden_roles, *field.read_only_roles):
                    if role not in declared:
                        raise ConfigError(
                            f"[objects.{spec.name}.fields] {field.name}: role {role!r} is not "
                            f"declared in [roles] (declared: {', '.join(sorted(declared))})"
                        )
        return cls(schema, grants, load_hook(hook) if hook else None)

    def ungranted(self) -> dict[str, list[Action]]:
        """Per object, the actions no role grants: nobody can do them (unless a policy
        hook allows them case by case)."""
        missing = {}
        for name in self.schema.objects:
            granted: set[Action] = set()
            for table in self.grants.values():
                granted |= table.get(name, frozenset())
            lacking = [action for action in Action if action not in granted]
            if lacking:
                missing[name] = lacking
        return missing

    # -- object and record level ------------------------------------------------------

    def object_actions(self, principal: Principal, object_name: str) -> frozenset[Action]:
        key = (principal.role_set, object_name)
        known = self._actions.get(key)
        if known is None:
            actions: set[Action] = set()
            for role in principal.role_set:
                actions |= self.grants.get(role, {}).get(object_name, frozenset())
            known = self._actions[key] = frozenset(actions)
        return known

    def access(self, principal: Principal, record: RecordFacts) -> Access:
        """The user's access to one record (before the hook)."""
        if Action.READ not in self.object_actions(principal, record.object):
            return Access.NONE
        return self.record_access(principal.user, record)

    def record_access(self, user: str, record: RecordFacts) -> Access:
        """What the record itself grants ``user`` (ownership, sharing default, manual
        shares), whatever their roles."""
        if record.owner is not None and record.owner == user:
            return Access.EDIT
        spec = self.schema.objects.get(record.object)
        level = SHARING_ACCESS[spec.sharing] if spec is not None else Access.NONE
        return max(level, record.shares.get(user, Access.NONE))

    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: RecordFacts | None = None,
    ) -> bool:
        actions = self.object_actions(principal, object_name)
        declared = action in actions
        if declared and record is not None:
            needed = Access.READ if action is Action.READ else Access.EDIT
            declared = self.access(principal, record) >= needed
        if self.hook is not None:
            try:
                verdict = self.hook.allows(principal, action, object_name, record, declared)
            except Exception:  # an app hook's bug denies (fails closed) and is logged
                log.exception("policy hook failed on %s %s; denying", action, object_name)
                return False
            if verdict is not None:
                return bool(verdict)
        return declared

    def may_edit(self, principal: Principal, record: RecordFacts) -> bool:
        """:meth:`allows` both ``read`` and ``update`` of ``record``: without a hook, one
        look at the principal's actions and one at what the record grants them (edit
        access implies read access)."""
        name = record.object
        if self.hook is not None:
            return self.allows(principal, Action.READ, name, record) and self.allows(
                principal, Action.UPDATE, name, record
            )
        actions = self.object_actions(principal, name)
        return (
            Action.READ in actions
            and Action.UPDATE in actions
            and self.record_access(principal.user, record) >= Access.EDIT
        )

    def read_depends_only_on_roles(self, object_name: str) -> bool:
        """True when the object's sharing default already lets every user whose roles
        grant ``read`` on it read each of its records (``read`` or ``read_write``), so
        ownership and shares cannot change the answer, and no hook may overrule it."""
        if self.hook is not None:
            return False
        spec = self.schema.objects.get(object_name)
        return spec is not None and SHARING_ACCESS[spec.sharing] >= Access.READ

    # -- fields -------------------------------------------------------------------------

    def schema_for(self, principal: Principal) -> Schema:
        """The schema as this principal sees it: hidden fields left out, read-only ones
        marked (cached per role set)."""
        roles = principal.role_set
        view = self._views.get(roles)
        if view is None:
            view = self._views[roles] = self.schema.for_roles(roles)
        return view

    def hidden_fields(self, principal: Principal, object_name: str) -> frozenset[str]:
        key = (principal.role_set, object_name)
        known = self._hidden.get(key)
        if known is None:
            spec = self.schema.objects.get(object_name)
            known = spec.hidden_for(principal.role_set) if spec is not None else frozenset()
            self._hidden[key] = known
        return known


def owner_field(schema: Schema, object_name: str) -> str | None:
    """The object's ``owner`` field, if it has one."""
    spec = schema.objects.get(object_name)
    if spec is None:
        return None
    return spec.owner_field


def load_hook(name: str) -> PolicyHook:
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ConfigError(f"policy {name!r}: expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a configuration error
        raise ConfigError(f"policy {name!r}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"policy {name!r}: {module_name} has no {attr!r}")
    hook = factory() if isinstance(factory, type) else factory
    if not callable(getattr(hook, "allows", None)):
        raise ConfigError(f"policy {name!r}: needs an allows(principal, action, ...) method")
    return hook  # type: ignore[no-any-return]
