"""``AppServer``: the reference app's transport, on a websockets server.

It only moves data. Plain HTTP ``GET`` requests are answered from ``process_request``
with pages from :mod:`.pages` and the static files; the websocket ``/live`` carries
actions from the page to :mod:`.actions` (and their results back), and pushes from
:class:`.live.LiveFeed` (driven by the Client's events) to every open page::

    page → app   {"id": 1, "action": "update", "record_id": "…", "values": {"Name": "…"}}
    app → page   {"type": "result", "id": 1, "ok": false, "errors": {"Name": ["…"]}, …}
    app → page   {"type": "status", "state": "online", "progress": [3, 10], …}
    app → page   {"type": "changed"}
    app → page   {"type": "alert", "items": [{"url": "/r/…/resolve", "html": "…"}]}

The app listens on loopback only and answers only requests whose ``Host`` (and, for
``/live``, ``Origin``) is its own address, so another web site open in the same browser
can neither read its pages (DNS rebinding) nor drive it (cross-site websocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from http import HTTPStatus
from importlib import resources
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from crdtsync.client.events import EventStream
from crdtsync.client.facade import Client

from . import views
from .actions import Actions
from .live import AlertPush, ChangedPush, LiveFeed, Push, StatusPush
from .pages import Page, chrome_for, render

log = logging.getLogger("crdtsync.apps.webapp")

STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
MAX_ACTION_BYTES = 1 << 20  #: the largest action a page may send
PUSH_QUEUE = 64  #: pushes buffered per page; a page that falls behind loses the oldest


class AppServer:
    """The reference app for one :class:`~crdtsync.Client` (already started with
    ``async with client``). Use as ``async with AppServer(client, user="alice") as app``;
    :attr:`url` is the address to open (``port=0`` picks a free port)."""

    def __init__(
        self, client: Client, *, user: str, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.client = client
        self.user = user
        self.host = host
        self.port = port
        self.working_offline = False
        self.feed = LiveFeed(online=client.online)
        self.actions = Actions(client, self._set_working_offline)
        self._server: Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._pages: set[asyncio.Queue[dict[str, Any]]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def __aenter__(self) -> AppServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen, and start following the client's events."""
        events = self.client.events()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._pump_task = self._tasks.create_task(self._pump(events), name="webapp-events")
        self._server = await serve(
            self._live,
            self.host,
            self.port,
            process_request=self._http,
            max_size=MAX_ACTION_BYTES,
            compression=None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("app for %s on %s", self.user, self.url)

    async def close(self) -> None:
        """Close every page's connection and stop listening."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self._tasks is not None:
            if self._pump_task is not None:
                self._pump_task.cancel()
            await self._tasks.__aexit__(None, None, None)
            self._tasks = None

    # -- HTTP -------------------------------------------------------------------------

    def _origins(self) -> tuple[set[str], set[str]]:
        hosts = {f"{self.host}:{self.port}", f"localhost:{self.port}"}
        return hosts, {f"http://{host}" for host in hosts}

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._respond(connection, request)
        if response is not None:  # every answer refuses to be framed (clickjacking)
            for name, value in self._security_headers().items():
                _set_header(response, name, value)
        return response

    def _security_headers(self) -> dict[str, str]:
        hosts, _origins = self._origins()
        sockets = " ".join(f"ws://{host}" for host in sorted(hosts))
        return {
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": (
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                f"connect-src 'self' {sockets}; frame-ancestors 'none'; base-uri 'none'; "
                "form-action 'self'; object-src 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }

    def _respond(self, connection: ServerConnection, request: Request) -> Response | None:
        hosts, origins = self._origins()
        host = _single(request, "Host")
        if host is None:
            return connection.respond(400, "crdtsync app: one Host header, please\n")
        if host not in hosts:
            return connection.respond(403, "crdtsync app: unexpected Host header\n")
        path = request.path.split("?", 1)[0]
        if path == "/live":
            if (_single(request, "Upgrade") or "").lower() != "websocket":
                return connection.respond(400, "crdtsync app: /live is a websocket\n")
            if _single(request, "Origin") not in origins:
                return connection.respond(403, "crdtsync app: /live only for the app's pages\n")
            return None  # the websocket handshake goes on
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path.startswith("/static/"):
            return self._static(connection, path.removeprefix("/static/"))
        try:
            page = render(self.client, self._chrome(), request.path)
        except Exception:  # a bug must not become a traceback in the browser: log it
            log.exception("rendering %s failed", request.path)
            chrome = views.Chrome(user=self.user, objects=tuple(self.client.schema.objects))
            page = Page(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                views.message_page(chrome, "Error", "This page failed; the app's log says why."),
            )
        return _html(connection, page)

    def _static(self, connection: ServerConnection, name: str) -> Response:
        content_type = STATIC_TYPES.get(name)
        if content_type is None:
            return connection.respond(404, "no such file\n")
        text = resources.files(__package__).joinpath("static", name).read_text("utf-8")
        response = connection.respond(200, text)
        _set_header(response, "Content-Type", content_type)
        _set_header(response, "Cache-Control", "no-cache")
        return response

    def _chrome(self) -> views.Chrome:
        return chrome_for(
            self.client,
            user=self.user,
            working_offline=self.working_offline,
            progress=self.feed.progress,
            problem=self.feed.problem,
            failure=self.feed.failure,
        )

    # -- /live ------------------------------------------------------------------------

    async def _live(self, connection: ServerConnection) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(PUSH_QUEUE)
        self._pages.add(queue)
        try:
            await connection.send(json.dumps(self._status()))
            # What changed between rendering the page and this subscription was pushed to
            # nobody: the page re-renders once now, so it never stays stale.
            await connection.send(json.dumps({"type": "changed"}))
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._write(connection, queue))
                async for message in connection:
                    request = _parse_action(message)
                    if request.get("action") == "sync":  # may wait for the relay: don't block
                        tasks.create_task(self._answer(connection, request))
                    else:
                        await self._answer(connection, request)
                writer.cancel()
        except* ConnectionClosed:
            pass
        finally:
            self._pages.discard(queue)

    async def _answer(self, connection: ServerConnection, request: dict[str, Any]) -> None:
        if "error" in request:
            result: dict[str, Any] = {"ok": False, "message": request["error"], "errors": {}}
        else:
            result = (await self.actions.run(request)).to_json()
        await connection.send(json.dumps({"type": "result", "id": request.get("id"), **result}))

    @staticmethod
    async def _write(connection: ServerConnection, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            await connection.send(json.dumps(await queue.get()))

    async def _pump(self, events: EventStream) -> None:
        """Turn the client's events into pushes for every open page (bursts coalesce)."""
        with contextlib.closing(events):
            async for event in events:
                pushes = self.feed.handle(event)
                while (more := events.get_nowait()) is not None:
                    pushes += self.feed.handle(more)
                self._broadcast(pushes)

    def _broadcast(self, pushes: list[Push]) -> None:
        messages: list[dict[str, Any]] = []
        if any(isinstance(p, StatusPush) for p in pushes):
            messages.append(self._status())
        if any(isinstance(p, ChangedPush) for p in pushes):
            messages.append({"type": "changed"})
        for push in pushes:
            if isinstance(push, AlertPush):
                messages.append({"type": "alert", "items": self._alert_items(push)})
        for queue in self._pages:
            for message in messages:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(message)

    def _status(self) -> dict[str, Any]:
        chrome = self._chrome()
        state, label = views.connection_state(chrome)
        return {
            "type": "status",
            "state": state,
            "label": label,
            "problem": chrome.problem,
            "failure": chrome.failure,
            "working_offline": self.working_offline,
            "progress": list(chrome.progress) if chrome.progress else None,
            "pending": chrome.pending,
            "attention": chrome.attention,
        }

    def _alert_items(self, push: AlertPush) -> list[dict[str, str]]:
        items = []
        pending = {change.record_id: change for change in self.client.pending()}
        for attention in push.needs_attention:
            change = pending.get(attention.record_id)
            if change is None or not change.status.locked:
                continue  # already resolved or dismissed
            record = self.client.get(attention.record_id)
            spec = self.client.schema.objects.get(attention.object)
            title = (
                views.record_title(spec, record.fields, record.id)
                if record is not None
                else f"{attention.object} {attention.record_id[:8]}"
            )
            detail = views.problem_summary(change)
            items.append(views.attention_item(title, attention.record_id, change.status, detail))
        return items

    def _set_working_offline(self, working_offline: bool) -> None:
        self.working_offline = working_offline
        if working_offline:
            self.feed.progress = None
        self._broadcast([StatusPush()])


def _parse_action(message: str | bytes) -> dict[str, Any]:
    """A page's action as a dict; a malformed one becomes ``{"error": why}``."""
    try:
        request = json.loads(message)
    except ValueError:
        return {"error": "the action is not JSON"}
    if not isinstance(request, dict):
        return {"error": "an action is a JSON object"}
    return request


def _html(connection: ServerConnection, page: Page) -> Response:
    response = connection.respond(page.status, page.body)
    _set_header(response, "Content-Type", "text/html; charset=utf-8")
    _set_header(response, "Cache-Control", "no-store")
    if page.location is not None:
        _set_header(response, "Location", page.location)
    return response


def _single(request: Request, name: str) -> str | None:
    """The request's one value of header ``name`` (``None``: absent, or given twice)."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _set_header(response: Response, name: str, value: str) -> None:
    if name in response.headers:
        del response.headers[name]
    response.headers[name] = value


__all__ = ["AppServer"]
