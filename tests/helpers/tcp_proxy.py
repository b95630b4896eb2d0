"""A TCP proxy that a test steers, to inject network faults between a client and the relay.

``async with TcpProxy(relay_port) as proxy:`` listens on ``127.0.0.1`` (a free port, see
:attr:`TcpProxy.url`) and relays every accepted connection (a *link*) to the target
port. What it does to the bytes is set by the test at any moment, between two awaits:

* :meth:`~TcpProxy.pass_through` (the default): forward everything as it comes.
* :meth:`~TcpProxy.delay`: sleep before forwarding each chunk read from a socket.
  Bytes keep their order: a delay never reorders within a connection.
* :meth:`~TcpProxy.cut_all`: abort both sides of every link now: both sockets close at
  once, so each peer sees its connection end with no websocket closing handshake (1006).
* :meth:`~TcpProxy.cut_after`: forward ``n`` more bytes in one direction, then cut the
  link carrying the next byte. The cut usually falls inside a websocket frame, which
  the receiver then only gets part of (see :attr:`ProxyCounts.truncations`).
* :meth:`~TcpProxy.black_hole`: read and discard the bytes flowing in one direction,
  without closing anything, like a path that died silently. A link that lost bytes this
  way keeps losing them in that direction until it is cut: TCP can never deliver bytes
  past a gap, so forwarding later bytes would model a fault that cannot happen.
* :meth:`~TcpProxy.hold_upstream`, :meth:`~TcpProxy.strand` and
  :meth:`~TcpProxy.deliver_stranded`: the only reordering TCP allows, *across*
  connections. Held client bytes are not forwarded; stranding a holding link resets its
  client side (the client reconnects on a new link) while its relay side stays open;
  delivering then writes the held bytes to the relay, so an old connection's push
  arrives after the same client's new connection may have retransmitted it.

Every change of mode is synchronous, so it takes effect before the next byte moves.
:attr:`TcpProxy.counts` records what the proxy did. Every task the proxy runs belongs to
its ``TaskGroup``; leaving the ``async with`` block aborts the links still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum

import attrs

CHUNK_BYTES = 64 * 1024


class Direction(enum.Enum):
    UPSTREAM = "client to relay"
    DOWNSTREAM = "relay to client"


@attrs.define
class ProxyCounts:
    """What a proxy did since it started."""

    connections: int = 0  #: links accepted
    cuts: int = 0  #: links aborted on the test's command (cut_all, cut_after, strand)
    truncations: int = 0  #: cuts that fell inside a websocket frame (or the HTTP upgrade)
    forwarded: dict[Direction, int] = attrs.field(factory=lambda: dict.fromkeys(Direction, 0))
    dropped: int = 0  #: bytes discarded (black hole, or relay bytes for a stranded client)
    held: int = 0  #: client bytes held back by hold_upstream
    delivered_late: int = 0  #: held bytes written to the relay by deliver_stranded


class FrameBoundaries:
    """Follows where websocket frames begin and end in one direction of a connection, so
    a cut can tell whether it split a frame. Sees the HTTP upgrade first, then frames
    (RFC 6455 §5.2: 2 header bytes, 0, 2 or 8 length bytes, 0 or 4 mask bytes)."""

    def __init__(self) -> None:
        self._http: bytearray | None = bytearray()  # None once the upgrade is complete
        self._header = bytearray()
        self._payload_left = 0

    @property
    def at_boundary(self) -> bool:
        """True between two frames (and never during the HTTP upgrade)."""
        return self._http is None and not self._header and self._payload_left == 0

    def feed(self, data: bytes) -> None:
        position = 0
        if self._http is not None:
            self._http += data
            end = self._http.find(b"\r\n\r\n")
            if end < 0:
                return
            position = len(data) - (len(self._http) - end - 4)
            self._http = None
        while position < len(data):
            if self._payload_left:
                step = min(self._payload_left, len(data) - position)
                self._payload_left -= step
                position += step
                continue
            self._header.append(data[position])
            position += 1
            self._end_of_header()

    def _end_of_header(self) -> None:
        header = self._header
        if len(header) < 2:
            return
        length = header[1] & 0x7F
        extended = {126: 2, 127: 8}.get(length, 0)
        mask = 4 if header[1] & 0x80 else 0
        if len(header) < 2 + extended + mask:
            return
        if extended:
            length = int.from_bytes(header[2 : 2 + extended], "big")
        self._payload_left = length
        header.clear()


@attrs.define(eq=False)
class Link:
    """One proxied connection: the client's socket and the proxy's socket to the relay."""

    number: int
    client: asyncio.StreamWriter
    relay: asyncio.StreamWriter | None = None
    boundaries: dict[Direction, FrameBoundaries] = attrs.field(
        factory=lambda: {direction: FrameBoundaries() for direction in Direction}
    )
    black_holed: set[Direction] = attrs.field(factory=set)
    holding: bool = False
    held: bytearray = attrs.field(factory=bytearray)
    stranded: bool = False
    cutting: bool = False  #: a cut_after cut is under way
    cut: bool = False

    def writer(self, direction: Direction) -> asyncio.StreamWriter | None:
        return self.relay if direction is Direction.UPSTREAM else self.client


class TcpProxy:
    """A fault-injecting TCP proxy in front of ``target_port`` (see the module docstring)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.counts = ProxyCounts()
        self.links: list[Link] = []  #: the links open now
        self._delay = 0.0
        self._black_hole: set[Direction] = set()
        self._budget: dict[Direction, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> TcpProxy:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._tasks is not None
        self._server.close()
        for link in list(self.links):
            self._abort(link)
        await self._tasks.__aexit__(None, None, None)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # -- what the test sets -----------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything on new links, with no delay, and disarm any pending cut.
        Links that already lost bytes to a black hole keep losing them: cut them."""
        self._delay = 0.0
        self._black_hole.clear()
        self._budget.clear()

    def delay(self, seconds: float) -> None:
        """Sleep ``seconds`` before forwarding each chunk, in both directions."""
        self._delay = seconds

    def black_hole(self, direction: Direction) -> None:
        """Discard every byte flowing in ``direction`` from now on, closing nothing."""
        self._black_hole.add(direction)

    def cut_all(self) -> int:
        """Abort both sides of every open link now (stranded ones too); return how many."""
        links = [link for link in self.links if not link.cut]
        for link in links:
            self._cut(link)
        return len(links)

    def cut_after(self, nbytes: int, direction: Direction) -> None:
        """Forward ``nbytes`` more bytes in ``direction`` (counted over all links), then
        forward no more and cut the link that carried the next byte."""
        self._budget[direction] = nbytes

    def hold_upstream(self) -> None:
        """Links open now stop forwarding client bytes and keep them (see :meth:`strand`)."""
        for link in self.links:
            link.holding = True

    @property
    def held_bytes(self) -> int:
        """Client bytes held back by the links open now."""
        return sum(len(link.held) for link in self.links)

    def strand(self) -> int:
        """Reset the client side of every holding link, keeping its relay side open with
        the held bytes undelivered; return how many links were stranded."""
        links = [link for link in self.links if link.holding and not link.cut]
        for link in links:
            link.stranded = True
            self.counts.cuts += 1
            link.client.transport.abort()
        return len(links)

    async def deliver_stranded(self) -> int:
        """Write the held bytes of every stranded link to the relay (whatever the relay
        answers is discarded); return how many bytes. The links stay open until cut."""
        delivered = 0
        for link in self.links:
            if not link.stranded or link.cut or link.relay is None:
                continue
            data, link.held = bytes(link.held), bytearray()
            link.relay.write(data)
            with contextlib.suppress(OSError):
                await link.relay.drain()
            delivered += len(data)
        self.counts.delivered_late += delivered
        return delivered

    # -- moving bytes ---------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._tasks is not None
        self.counts.connections += 1
        link = Link(self.counts.connections, writer)
        self.links.append(link)
        self._tasks.create_task(self._serve(link, reader), name=f"proxy-link-{link.number}")

    async def _serve(self, link: Link, client_reader: asyncio.StreamReader) -> None:
        try:
            try:
                relay_reader, link.relay = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            if link.cut:  # cut while connecting
                return
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(link, client_reader, Direction.UPSTREAM))
                pumps.create_task(self._pump(link, relay_reader, Direction.DOWNSTREAM))
        finally:
            self._abort(link)
            self.links.remove(link)

    async def _pump(self, link: Link, reader: asyncio.StreamReader, direction: Direction) -> None:
        """Move one direction of a link until its source ends; end the link with it
        unless the source half-closed cleanly (then pass the half-close on)."""
        while not link.cut:
            try:
                chunk = await reader.read(CHUNK_BYTES)
            except OSError:
                break
            if not chunk:
                target = link.writer(direction)
                if target is not None and not link.cut and not link.stranded:
                    with contextlib.suppress(OSError):
                        target.write_eof()
                return
            await self._forward(link, direction, chunk)
        if not link.stranded:  # a stranded link keeps its relay side until cut
            self._abort(link)

    async def _forward(self, link: Link, direction: Direction, chunk: bytes) -> None:
        if self._delay:
            await asyncio.sleep(self._delay)
        if link.cut or link.cutting:
            return
        if direction is Direction.UPSTREAM and link.holding:
            link.held += chunk
            self.counts.held += len(chunk)
            return
        if direction is Direction.DOWNSTREAM and link.stranded:
            self.counts.dropped += len(chunk)
            return
        if direction in self._black_hole:
            link.black_holed.add(direction)
        if direction in link.black_holed:
            self.counts.dropped += len(chunk)
            return
        budget = self._budget.get(direction)
        cut_here = budget is not None and budget < len(chunk)
        if cut_here:
            assert budget is not None
            del self._budget[direction]
            chunk = chunk[:budget]
        elif budget is not None:
            self._budget[direction] = budget - len(chunk)
        writer = link.writer(direction)
        assert writer is not None
        writer.write(chunk)
        link.boundaries[direction].feed(chunk)
        self.counts.forwarded[direction] += len(chunk)
        if cut_here:
            if not link.boundaries[direction].at_boundary:
                self.counts.truncations += 1
            link.cutting = True  # nothing more moves while the partial chunk drains
            await _flush(writer)
            self._cut(link)
            return
        try:
            await writer.drain()
        except OSError:
            self._abort(link)

    def _cut(self, link: Link) -> None:
        if not link.cut and not link.stranded:  # stranding already counted as a cut
            self.counts.cuts += 1
        self._abort(link)

    @staticmethod
    def _abort(link: Link) -> None:
        link.cut = True
        link.client.transport.abort()
        if link.relay is not None:
            link.relay.transport.abort()


async def _flush(writer: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    """Wait (a bounded time) until everything written has left the proxy's buffer."""
    writer.transport.set_write_buffer_limits(high=0)  # drain() now waits until empty
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout):
            await writer.drain()
