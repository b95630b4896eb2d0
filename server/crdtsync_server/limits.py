"""Per-connection flood limits, sans I/O: a token bucket of incoming frames.

:class:`FrameRateLimit` is asked once per incoming message (:meth:`FrameRateLimit.admit`)
and answers :attr:`Admission.PASS` (handle the frame), :attr:`Admission.REFUSE` (drop it
and tell the replica to slow down) or :attr:`Admission.CLOSE` (the replica keeps
flooding after being told: end the connection). The clock is injected, so the limit is
tested without sleeping.

The defaults are generous: the reference client has one ``push`` in flight at a time, and
the benchmarks send a few frames per connection per second at most.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable

import attrs

MAX_FRAMES_PER_SECOND = 500.0  #: ``[server] max_frames_per_second``: the bucket's refill rate
FRAME_BURST = 1000  #: ``[server] frame_burst``: the bucket's size (frames at once)
MAX_CONNECTIONS = 1000  #: ``[server] max_connections``: open websockets, per relay
#: ``[server] max_record_bytes``: a record's whole CRDT state at most, so that a record
#: always fits a message to a replica (whose limit is 64 MiB), and one user cannot grow
#: a record until no new device can load it
MAX_RECORD_BYTES = 16 * 1024 * 1024
SUSTAINED_GAP = 1.0  #: seconds without a refused frame that forgive the earlier ones


class Admission(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    CLOSE = "close"


@attrs.define
class FrameRateLimit:
    """A token bucket of ``burst`` frames refilled at ``rate`` frames per second.

    A frame that finds the bucket empty is refused. Once ``burst`` frames have been
    refused with less than :data:`SUSTAINED_GAP` seconds between one refusal and the
    next, the flood is sustained and the answer is :attr:`Admission.CLOSE`. ``rate = 0``
    turns the limit off.
    """

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _tokens: float = attrs.field(init=False, default=0.0)
    _stamp: float = attrs.field(init=False, default=0.0)
    _refused: int = attrs.field(init=False, default=0)
    _last_refused: float = attrs.field(init=False, default=-math.inf)

    def __attrs_post_init__(self) -> None:
        if self.rate < 0 or (self.rate > 0 and self.burst < 1):
            raise ValueError("a frame rate limit needs rate >= 0 and, when on, burst >= 1")
        self._tokens = float(self.burst)
        self._stamp = self.clock()

    @property
    def refused(self) -> int:
        """Frames refused in the current run of refusals."""
        return self._refused

    def admit(self) -> Admission:
        """Spend one frame's token, if there is one."""
        if self.rate <= 0:
            return Admission.PASS
        now = self.clock()
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return Admission.PASS
        if now - self._last_refused >= SUSTAINED_GAP:
            self._refused = 0
        self._refused += 1
        self._last_refused = now
        return Admission.CLOSE if self._refused >= self.burst else Admission.REFUSE
