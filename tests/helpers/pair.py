"""The client's sync state machine (``SyncSession``) against the relay's
(``RelaySession``) with no sockets, in the style of h11's ConnectionPair: a
:class:`World` is one relay on in-memory storage; :meth:`World.connect` gives a
:class:`Pair` that shuttles each side's ``data_to_send()`` into the other's
``receive()``; :func:`settle` steps pairs until they are quiet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from crdtsync_server.config import RelayConfig
from crdtsync_server.relay import Relay
from crdtsync_server.session import (
    RelaySession,
)
from crdtsync_server.storage import RelayStorage

from crdtsync.client.replica import Replica
from crdtsync.client.store import LocalStore
from crdtsync.client.sync import SyncSession
from crdtsync.core.protocol import (
    Changes,
    Frame,
    RecordChange,
    Verdict,
    Verdicts,
    decode,
)
from crdtsync.core.schema import Schema
from tests.helpers.harness import EXAMPLE_CONFIG

ALL_OBJECTS = ("Account", "Contact", "Opportunity", "Task")


QUEUE_BOUND = 64 * 1024 * 1024


F = TypeVar("F", bound=Frame)


class Pair:
    """One replica connected to the relay through two sans-I/O state machines."""

    def __init__(
        self,
        world: World,
        replica: Replica,
        token: str,
        *,
        max_queued_bytes: int = QUEUE_BOUND,
        on_schema: Callable[[Schema], None] | None = None,
        relay: Relay | None = None,
    ) -> None:
        self.world = world
        self.replica = replica
        self.wakes = 0
        self.server = RelaySession(
            relay or world.relay,
            world.authority,
            max_frame_bytes=world.config.max_frame_bytes,
            max_queued_bytes=max_queued_bytes,
            wake=self._wake,
        )
        self.client = SyncSession(replica, token, on_schema=on_schema or self._adopt)
        self.to_server: list[Frame] = []  # every frame the replica sent, decoded
        self.to_client: list[Frame] = []  # every frame the relay sent, decoded
        self.closed = False

    def _wake(self) -> None:
        self.wakes += 1  # a transport would wake its writer; the pump polls instead

    def _adopt(self, schema: Schema) -> None:
        self.replica.schema = schema

    def step(self) -> bool:
        """One round trip; True if any bytes moved."""
        if self.closed:
            return False
        moved = False
        self.client.push()  # what the client transport does whenever it wakes
        for data in self.client.data_to_send():
            self.to_server.append(decode(data))
            self.server.receive(data)
            moved = True
        for data in self.server.data_to_send():
            self.to_client.append(decode(data))
            self.client.receive(data)
            moved = True
        if self.server.close_code is not None:  # the transport sends what was queued, closes
            self.disconnect()
        return moved

    def pump(self) -> None:
        settle(self)

    def disconnect(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.connection_lost()
            self.client.connection_lost()

    def received(self, kind: type[F]) -> list[F]:
        return [frame for frame in self.to_client if isinstance(frame, kind)]

    def sent(self, kind: type[F]) -> list[F]:
        return [frame for frame in self.to_server if isinstance(frame, kind)]

    def received_items(self) -> list[RecordChange]:
        return [item for frame in self.received(Changes) for item in frame.items]

    def verdicts(self) -> list[Verdict]:
        return [item for frame in self.received(Verdicts) for item in frame.items]


def settle(*pairs: Pair) -> None:
    """Step every pair until none of them moves a byte."""
    for _ in range(200):
        if not any([pair.step() for pair in pairs]):
            return
    raise AssertionError("the pairs never went quiet")


class World:
    """One relay (in-memory SQLite) built from an app's TOML (the example app's by
    default), plus replicas. :attr:`relays` lists every relay a replica may be connected
    to (a world of several relays on one database says so)."""

    def __init__(self, config: Path = EXAMPLE_CONFIG) -> None:
        self.config = RelayConfig.from_toml(config, database=":memory:")
        self.storage = RelayStorage(":memory:")
        self.relay = Relay(
            schema=self.config.schema, policy=self.config.policy, storage=self.storage
        )
        self.authority = self.config.token_authority()
        self._stores: list[LocalStore] = []

    @property
    def relays(self) -> list[Relay]:
        return [self.relay]

    def token(self, user: str) -> str:
        return self.authority.issue(user)

    def replica(self, schema: Schema | None = None, *, client_id: int | None = None) -> Replica:
        """A replica on an in-memory store (editing as CRDT ``client_id``, if given)."""
        store = LocalStore(":memory:")
        self._stores.append(store)
        if client_id is not None:
            with store.transaction():
                store.set_meta("client_id", client_id)
        return Replica(store, schema or self.config.schema)

    def connect(
        self,
        replica: Replica,
        user: str = "alice",
        *,
        token: str | None = None,
        max_queued_bytes: int = QUEUE_BOUND,
        on_schema: Callable[[Schema], None] | None = None,
        relay: Relay | None = None,
    ) -> Pair:
        return Pair(
            self,
            replica,
            token or self.token(user),
            max_queued_bytes=max_queued_bytes,
            on_schema=on_schema,
            relay=relay,
        )

    def session(self, relay: Relay | None = None) -> RelaySession:
        return RelaySession(
            relay or self.relay, self.authority, max_frame_bytes=self.config.max_frame_bytes
        )

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self.storage.close()
