"""Who may do what: the check points every change, subscription and fan-out passes.

A :class:`Principal` is the authenticated identity of a connection (never a claim in
a frame). A :class:`Policy` answers one question: may this principal perform this
action on this object (and, when there is one, this record)? :class:`RolePolicy` is
the declarative model of the configuration's ``[roles.*]`` tables.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs


class Action(enum.StrEnum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"


@attrs.frozen
class Principal:
    """An authenticated user on one replica (device)."""

    user: str
    replica_id: str
    roles: tuple[str, ...] = ("default",)


class Policy(Protocol):
    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: Mapping[str, Any] | None = None,
    ) -> bool:
        """True if ``principal`` may perform ``action`` on ``object_name`` (``record``
        holds the record's current values when the action is about one record)."""
        ...


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending entry."""


@attrs.frozen
class RolePolicy:
    """Roles grant actions per object; every user has the ``default`` role."""

    grants: Mapping[str, Mapping[str, frozenset[Action]]]

    @classmethod
    def from_config(cls, roles: Mapping[str, Any], objects: Iterable[str]) -> RolePolicy:
        known = set(objects)
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
        return cls(grants)

    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: Mapping[str, Any] | None = None,
    ) -> bool:
        roles = {"default", *principal.roles}
        return any(action in self.grants.get(role, {}).get(object_name, ()) for role in roles)
