"""How the client tells a lost connection from a fault in itself: a relay that vanishes
fails the connection's reader and writer at once, and that is one lost connection (retried
quietly), not an error to log with a traceback; a fault beside it is still reported."""

from __future__ import annotations

from websockets.exceptions import ConnectionClosedError

from crdtsync.client.facade import _TRANSPORT_ERRORS, _cause
from crdtsync.core.exceptions import ProtocolError
from crdtsync.core.protocol import ErrorCode


def closed() -> ConnectionClosedError:
    return ConnectionClosedError(None, None)


def test_reader_and_writer_failing_together_as_the_relay_vanishes_is_one_lost_connection() -> None:
    # What the kill -9 suite met: both tasks of the connection's task group failed.
    ended = ExceptionGroup("unhandled errors in a TaskGroup", [closed(), closed()])
    assert isinstance(_cause(ended), _TRANSPORT_ERRORS)
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [closed(), OSError("reset")])])
    assert isinstance(_cause(nested), _TRANSPORT_ERRORS)


def test_a_fault_beside_the_lost_connection_is_still_the_reason_given() -> None:
    bad_frame = ProtocolError(ErrorCode.MALFORMED_FRAME, "the relay sent a text frame")
    assert _cause(ExceptionGroup("both", [closed(), bad_frame])) is bad_frame
    bug = KeyError("a bug in the client")
    assert _cause(ExceptionGroup("both", [bug, closed()])) is bug
    assert _cause(bug) is bug
