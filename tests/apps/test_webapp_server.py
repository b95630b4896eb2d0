"""The reference app's transport over loopback, without a browser: HTTP answers, the
``/live`` websocket's actions and pushes, and who may talk to it."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from crdtsync import Client
from crdtsync.apps.webapp import AppServer, actions, server
from tests.helpers.harness import RelayHarness


@pytest.fixture
async def app(client: Client) -> AsyncIterator[AppServer]:
    async with AppServer(client, user="alice") as running:
        yield running


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """GET ``url`` (no redirects followed): status, content type, body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await asyncio.to_thread(get, url, headers)


def live(app: AppServer, origin: str | None = None) -> Any:
    return connect(
        f"ws://127.0.0.1:{app.port}/live", origin=origin or f"http://127.0.0.1:{app.port}"
    )  # type: ignore[arg-type]


async def receive(websocket: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message: dict[str, Any] = json.loads(await websocket.recv())
            if message["type"] == kind:
                return message


async def test_pages_and_static_files_are_served_with_their_types(app: AppServer) -> None:
    status, content_type, body = await fetch(app.url + "o/Account")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert "<h1>Account</h1>" in body and "/static/app.js" in body
    status, content_type, _ = await fetch(app.url)
    assert status == 302
    status, content_type, body = await fetch(app.url + "static/app.js")
    assert (status, content_type) == (200, "text/javascript; charset=utf-8")
    assert "new WebSocket" in body
    assert (await fetch(app.url + "static/../server.py"))[0] == 404
    assert (await fetch(app.url + "static/app.css"))[1] == "text/css; charset=utf-8"


async def test_requests_for_another_host_are_refused(app: AppServer) -> None:
    status, _, body = await fetch(app.url + "pending", {"Host": "attacker.example"})
    assert status == 403 and "Host" in body
    assert (await fetch(f"http://localhost:{app.port}/pending"))[0] == 200


async def test_live_socket_refuses_other_origins(app: AppServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with live(app, origin="http://attacker.example"):
            pass
    assert refused.value.response.status_code == 403


async def test_actions_over_live_answer_with_field_errors_and_push_changes(
    app: AppServer, client: Client
) -> None:
    async with live(app) as websocket:
        status = json.loads(await websocket.recv())
        assert status["type"] == "status"
        assert status["state"] == "offline" and status["pending"] == 0
        # then a re-render: what changed between the page's render and this
        # subscription was pushed to nobody
        assert json.loads(await websocket.recv()) == {"type": "changed"}
        await websocket.send(
            json.dumps({"id": 7, "action": "create", "object": "Account", "values": {"Name": ""}})
        )
        result = await receive(websocket, "result")
        assert result["id"] == 7 and not result["ok"]
        assert result["errors"] == {"Name": ["is required"]}
        await websocket.send(
            json.dumps(
                {"id": 8, "action": "create", "object": "Account", "values": {"Name": "Acme"}}
            )
        )
        result = await receive(websocket, "result")
        [record] = client.records("Account")
        assert result["ok"] and result["redirect"] == f"/r/{record.id}"
        await receive(websocket, "changed")  # pushed by the client's PendingChanged event
        await websocket.send("not json")
        assert (await receive(websocket, "result"))["message"] == "the action is not JSON"
        await websocket.send(json.dumps({"id": 9, "action": "go_offline"}))
        await receive(websocket, "result")
        assert (await receive(websocket, "status"))["state"] == "working-offline"


async def test_a_page_that_fails_to_render_is_a_clear_500_not_a_traceback(
    app: AppServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "render", broken)
    status, content_type, body = await fetch(app.url + "pending")
    assert (status, content_type) == (500, "text/html; charset=utf-8")
    assert "This page failed" in body and "Traceback" not in body and "boom" not in body
    assert "rendering /pending failed" in caplog.text


async def test_sync_now_reports_an_unreachable_relay_as_a_message(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions, "SYNC_TIMEOUT", 0.5)
    await relay.stop()
    async with (
        relay.client("alice") as client,
        AppServer(client, user="alice") as app,
        live(app) as websocket,
    ):
        await websocket.send(json.dumps({"id": 1, "action": "sync"}))
        await websocket.send(json.dumps({"id": 2, "action": "go_online"}))
        result = await receive(websocket, "result")
        assert result["id"] == 2  # "sync" waits in the background; other actions go on
        result = await receive(websocket, "result")
        assert result["id"] == 1 and not result["ok"]
        assert result["message"].startswith("Could not sync with ws://")


def raw_headers(url: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(response.headers)
    except urllib.error.HTTPError as error:
        return dict(error.headers)


@pytest.mark.parametrize("path", ["o/Account", "static/app.js", "healthz", "no/such/page"])
async def test_no_answer_of_the_app_may_be_framed_by_another_page(
    app: AppServer, path: str
) -> None:
    headers = await asyncio.to_thread(raw_headers, app.url + path)
    assert headers["X-Frame-Options"] == "DENY"
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_a_doubled_host_header_is_a_bad_request_not_a_traceback(
    app: AppServer, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    host = f"127.0.0.1:{app.port}"
    writer.write(f"GET /pending HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    assert not [r for r in caplog.records if r.levelno >= 40]  # nothing logged as an error
