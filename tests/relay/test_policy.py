"""The declarative access model and its hook, without sockets."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from crdtsync_server.errors import ConfigError
from crdtsync_server.policy import (
    Access,
    AccessPolicy,
    Action,
    Principal,
    RecordFacts,
)

from crdtsync import Schema
from tests.helpers.harness import EXAMPLE_CONFIG

SCHEMA = Schema.from_toml(EXAMPLE_CONFIG)
ROLES: dict[str, Any] = {
    "default": {"Account": ["create", "read", "update", "delete"], "Opportunity": ["read"]},
    "closer": {"Opportunity": ["update"]},
    "intern": {},  # named by the example's field rules
}
ALICE = Principal("alice", "phone")
BOB = Principal("bob", "laptop")
CLOSER = Principal("carol", "tablet", roles=("closer",))


def facts(object_name: str, owner: str | None, **shares: Access) -> RecordFacts:
    return RecordFacts(object=object_name, record_id="r", owner=owner, shares=shares)


@pytest.fixture
def policy() -> AccessPolicy:
    return AccessPolicy.from_config(ROLES, SCHEMA)


def test_owner_may_edit_and_others_get_the_sharing_default(policy: AccessPolicy) -> None:
    account = facts("Account", "alice")  # Account sharing is read_write
    assert policy.access(ALICE, account) is Access.EDIT
    assert policy.access(BOB, account) is Access.EDIT
    deal = facts("Opportunity", "alice")  # Opportunity sharing is private
    assert policy.access(ALICE, deal) is Access.EDIT
    assert policy.access(BOB, deal) is Access.NONE
    assert not policy.allows(BOB, Action.READ, "Opportunity", deal)


def test_a_share_raises_access_but_never_lowers_it(policy: AccessPolicy) -> None:
    assert policy.access(BOB, facts("Opportunity", "alice", bob=Access.READ)) is Access.READ
    assert policy.access(BOB, facts("Opportunity", "alice", bob=Access.EDIT)) is Access.EDIT
    assert policy.access(BOB, facts("Account", "alice", bob=Access.READ)) is Access.EDIT


def test_editing_needs_both_the_role_action_and_edit_access(policy: AccessPolicy) -> None:
    shared = facts("Opportunity", "alice", bob=Access.EDIT, carol=Access.EDIT)
    assert not policy.allows(BOB, Action.UPDATE, "Opportunity", shared)  # no update action
    assert policy.allows(CLOSER, Action.UPDATE, "Opportunity", shared)
    read_only = facts("Opportunity", "alice", carol=Access.READ)
    assert not policy.allows(CLOSER, Action.UPDATE, "Opportunity", read_only)


@pytest.mark.parametrize("hook", [None, "tests.helpers.policy_hooks:LockedAccountsAndAuditors"])
def test_may_edit_is_exactly_may_read_and_may_update(hook: str | None) -> None:
    """The push path asks ``may_edit`` once; it must answer what the two questions do."""
    policies = [
        AccessPolicy.from_config(ROLES, SCHEMA, hook=hook),
        AccessPolicy.from_config({"default": {"Account": ["update"]}, "intern": {}}, SCHEMA),
    ]
    principals = [ALICE, BOB, CLOSER, Principal("audrey", "pc", roles=("auditor",))]
    records = [
        RecordFacts(object=name, record_id="r", owner=owner, shares=shares, values=values)
        for name in ("Account", "Opportunity")
        for owner in ("alice", "bob", None)
        for shares in ({}, {"bob": Access.READ}, {"bob": Access.EDIT, "carol": Access.EDIT})
        for values in ({"Name": "Locked Inc"}, {"Name": "Open"})
    ]
    answers = set()
    for policy in policies:
        for principal in principals:
            for record in records:
                both = policy.allows(
                    principal, Action.READ, record.object, record
                ) and policy.allows(principal, Action.UPDATE, record.object, record)
                assert policy.may_edit(principal, record) == both, (principal, record)
                answers.add(both)
    assert answers == {True, False}


def test_no_read_action_means_no_access_even_for_the_owner() -> None:
    policy = AccessPolicy.from_config({"default": {"Account": ["create"]}, "intern": {}}, SCHEMA)
    assert policy.access(ALICE, facts("Account", "alice")) is Access.NONE
    assert policy.allows(ALICE, Action.CREATE, "Account")
    assert not policy.allows(ALICE, Action.READ, "Account", facts("Account", "alice"))


def test_hidden_fields_and_schema_views_follow_the_roles(policy: AccessPolicy) -> None:
    intern = Principal("ivan", "pc", roles=("intern",))
    assert policy.hidden_fields(intern, "Account") == frozenset({"Revenue"})
    assert policy.hidden_fields(ALICE, "Account") == frozenset()
    view = policy.schema_for(intern)
    assert "Revenue" not in view.object("Account").fields
    assert view.object("Account").field("Rating").read_only
    assert policy.schema_for(Principal("ian", "x", roles=("intern",))) is view  # cached


def test_hook_can_deny_grant_or_defer() -> None:
    policy = AccessPolicy.from_config(
        ROLES, SCHEMA, hook="tests.helpers.policy_hooks:LockedAccountsAndAuditors"
    )
    locked = RecordFacts(
        object="Account", record_id="r", owner="alice", values={"Name": "Locked Inc"}
    )
    open_ = RecordFacts(object="Account", record_id="r", owner="alice", values={"Name": "Open"})
    assert not policy.allows(ALICE, Action.UPDATE, "Account", locked)  # denied
    assert policy.allows(ALICE, Action.UPDATE, "Account", open_)  # deferred: declared yes
    auditor = Principal("audrey", "pc", roles=("auditor",))
    assert policy.allows(auditor, Action.READ, "Opportunity", facts("Opportunity", "alice"))


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("tests.helpers.policy_hooks", "expected 'package.module:Class'"),
        ("no_such_module_xyz:Policy", "cannot import"),
        ("tests.helpers.policy_hooks:Missing", "has no 'Missing'"),
        ("tests.helpers.policy_hooks:NOT_A_HOOK", "allows"),
    ],
)
def test_a_bad_hook_is_a_clear_configuration_error(hook: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AccessPolicy.from_config(ROLES, SCHEMA, hook=hook)


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ({"default": {"Lead": ["read"]}}, "unknown object 'Lead'"),
        ({"default": {"Account": ["read"]}}, "role 'intern' is not declared"),
        ({"default": {"Account": "read"}}, "must be a list of actions"),
        ({"default": {"Account": ["fly"]}}, "actions must be among"),
        ({"default": ["Account"]}, "must be a table"),
    ],
)
def test_bad_roles_are_clear_configuration_errors(roles: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AccessPolicy.from_config(roles, SCHEMA)


def test_a_hook_that_raises_denies_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    policy = AccessPolicy.from_config(ROLES, SCHEMA, hook="tests.helpers.policy_hooks:Broken")
    assert not policy.allows(ALICE, Action.READ, "Account", facts("Account", "alice"))
    assert "policy hook failed" in caplog.text


def test_a_principal_given_other_roles_has_their_role_set() -> None:
    assert ALICE.role_set == {"default"}
    promoted = attrs.evolve(ALICE, roles=("closer",))
    assert promoted.role_set == {"default", "closer"}
    assert ALICE.role_set == {"default"}  # the original is untouched
