"""The reference app: a small local web app over one :class:`crdtsync.Client`.

``crdtsync app --user alice`` runs it; ``crdtsync demo`` runs a relay and two of them.
Pages are rendered on the server (no build step); a little JavaScript sends actions and
receives live updates over one websocket. See ``docs/webapp.md``.

Modules, one job each:

* :mod:`.views` — pure functions from records and pending changes to HTML;
* :mod:`.forms` — form text to typed field values;
* :mod:`.pages` — the routes: a GET path to a page, read from the client;
* :mod:`.actions` — actions from the page, carried out on the client;
* :mod:`.live` — the client's events to pushes (sans-I/O);
* :mod:`.server` — the transport (:class:`AppServer`);
* :mod:`.demo` — a relay and two app instances for the conflict story.
"""

from __future__ import annotations

from .server import AppServer

__all__ = ["AppServer"]
