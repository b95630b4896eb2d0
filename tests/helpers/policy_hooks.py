"""Policy hooks used by the tests (named from configurations as
``tests.helpers.policy_hooks:...``)."""

from __future__ import annotations

from crdtsync_server.policy import Action, Principal, RecordFacts


class LockedAccountsAndAuditors:
    """Nobody edits an Account whose Name starts with "Locked"; auditors read everything."""

    def allows(
        self,
        principal: Principal,
        action: Action,
        object_name: str,
        record: RecordFacts | None,
        declared: bool,
    ) -> bool | None:
        if action is Action.READ and "auditor" in principal.roles:
            return True
        name = str(record.values.get("Name", "")) if record is not None else ""
        if object_name == "Account" and action is Action.UPDATE and name.startswith("Locked"):
            return False
        return None


NOT_A_HOOK = 42


class Broken:
    """A hook with a bug."""

    def allows(self, *args: object) -> bool | None:
        raise RuntimeError("bug in the app's hook")
