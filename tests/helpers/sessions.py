"""A stand-in for a relay session in tests that call :meth:`Relay.push` directly."""

from __future__ import annotations

import attrs
from crdtsync_server.policy import Principal


@attrs.define
class FakeSession:
    """What :meth:`Relay.push` needs of a session (nothing is fanned out to it)."""

    principal: Principal
    subscriptions: frozenset[str] = frozenset()
