"""The reference peer: pycrdt-websocket's ``WebsocketServer`` on a ``websockets`` server.

``python -m benchmarks.peer_server --port P`` serves one room (one ``pycrdt.Doc``) per
URL path. A room applies every Yjs sync message it receives to its document and
broadcasts the resulting updates to the room's clients; it validates, checks and
persists nothing. ``GET /healthz`` answers 200 once it listens. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from http import HTTPStatus

from pycrdt.websocket import WebsocketServer, exception_logger
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


class Channel:
    """A ``websockets`` server connection as the ``pycrdt.Channel`` rooms talk to."""

    def __init__(self, websocket: ServerConnection) -> None:
        self._websocket = websocket
        self._path = websocket.request.path if websocket.request is not None else "/"

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):  # the room drops a client that went away
            await self._websocket.send(message)

    async def recv(self) -> bytes:
        message = await self._websocket.recv()
        return message.encode() if isinstance(message, str) else bytes(message)


def _http(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def serve_peer(host: str, port: int) -> None:
    """Serve rooms until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    rooms = WebsocketServer(
        rooms_ready=True, auto_clean_rooms=True, exception_handler=exception_logger
    )

    async def handler(websocket: ServerConnection) -> None:
        await rooms.serve(Channel(websocket))

    async with (
        rooms,
        serve(handler, host, port, process_request=_http, compression=None, max_size=None),
    ):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve_peer(args.host, args.port))


if __name__ == "__main__":
    main()
