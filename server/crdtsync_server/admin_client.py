"""Administrator actions on a running relay, from Python or ``crdtsync admin``.

They travel over the same websocket protocol as any change (an ``admin`` frame answered
by ``admin_result``), authenticated with a token carrying the ``admin`` claim, so the
relay versions them, logs who did what and when, and fans them out::

    async with AdminClient(url, token) as admin:
        await admin.share(record_id, "bob", access="edit")
        print(await admin.access(record_id))
"""

from __future__ import annotations

import itertools
import uuid
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from crdtsync.core.protocol import (
    SUPPORTED_VERSIONS,
    Admin,
    AdminResult,
    Error,
    Hello,
    Welcome,
    decode,
    encode,
)

from .errors import AdminError


class AdminClient:
    """A connection to the relay as an administrator."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._websocket: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> AdminClient:
        self._websocket = await connect(self.url, open_timeout=10)
        await self._websocket.send(encode(Hello(SUPPORTED_VERSIONS, self.token, _admin_replica())))
        reply = decode(await self._websocket.recv())  # type: ignore[arg-type]
        if isinstance(reply, Error):
            await self._websocket.close()
            raise AdminError(f"the relay refused the connection: {reply.message}")
        if not isinstance(reply, Welcome):
            raise AdminError(f"unexpected {type(reply).__name__} frame from the relay")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._websocket is not None:
            await self._websocket.close()

    async def share(self, record_id: str, user: str, access: str = "read") -> AdminResult:
        """Give ``user`` ``read`` or ``edit`` access to one record."""
        return await self._request("share", record_id, user=user, access=access)

    async def unshare(self, record_id: str, user: str) -> AdminResult:
        return await self._request("unshare", record_id, user=user)

    async def set_owner(self, record_id: str, user: str) -> AdminResult:
        return await self._request("set_owner", record_id, user=user)

    async def delete(self, record_id: str) -> AdminResult:
        return await self._request("delete", record_id)

    async def access(self, record_id: str) -> dict[str, Any]:
        """Who may read and edit the record: owner, sharing default, shares, roles."""
        return dict((await self._request("access", record_id)).details)

    async def _request(
        self, action: str, record_id: str, *, user: str | None = None, access: str | None = None
    ) -> AdminResult:
        assert self._websocket is not None, "use 'async with AdminClient(...)'"
        request_id = f"admin-{next(self._ids)}"
        await self._websocket.send(
            encode(
                Admin(
                    request_id=request_id,
                    action=action,
                    record_id=record_id,
                    user=user,
                    access=access,
                )
            )
        )
        while True:
            frame = decode(await self._websocket.recv())  # type: ignore[arg-type]
            if isinstance(frame, Error):
                raise AdminError(frame.message)
            if isinstance(frame, AdminResult) and frame.request_id == request_id:
                if not frame.ok:
                    raise AdminError(frame.message)
                return frame


def _admin_replica() -> str:
    return f"admin-{uuid.uuid4().hex}"
