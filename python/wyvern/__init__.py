"""wyvern from Python: a thin binding of the C API (include/wyvern.h) over
libwyvern.so, with cffi in ABI mode (nothing to compile).

    import wyvern
    with wyvern.attach("/tmp/wyvern-agent-0.sock", name="app") as client:
        with client.open_endpoint(7) as ep:
            ep.send(1, 7, b"hello", delivered=True, timeout=1.0)
            data = ep.recv(timeout=5.0)                 # bytes (one copy)
            with ep.recv_view() as msg:                 # zero-copy
                arr = numpy.frombuffer(msg.view, dtype=numpy.float64)
                total = arr.sum()
                del arr                                 # before the release

Timeouts are in seconds: None waits as long as it takes, 0 tries once.
Errors raise WyvernError subclasses (wyvern.errors), one per WYVERN_E* code.
The library is found through WYVERN_LIB (a file or directory), then next to
this package, then ctypes.util.find_library("wyvern"), then pkg-config.
"""

from . import errors
from ._core import (
    AsyncError, Client, Endpoint, Message, attach, last_error, library_version,
    strerror,
)
from ._ffi import path as library_path
from .errors import (
    AgentGoneError, BadHandleError, BusyError, ClosedError, ConnectError,
    DestClosedError, InternalError, InvalidArgumentError, NoMemoryError,
    NoSpaceError, PeerLostError, ProtocolError, RefusedError, ReleasedError,
    TimeoutError, TooLargeError, UnknownEndpointError, UnknownNodeError,
    WouldBlockError, WyvernError,
)

__version__ = "0.1.0"

__all__ = [
    "attach", "Client", "Endpoint", "Message", "AsyncError", "strerror",
    "library_version",
    "last_error", "library_path", "errors", "WyvernError", "WouldBlockError",
    "TimeoutError", "InvalidArgumentError", "BadHandleError", "ClosedError",
    "NoSpaceError", "TooLargeError", "UnknownEndpointError", "UnknownNodeError",
    "PeerLostError", "DestClosedError", "NoMemoryError", "RefusedError",
    "ConnectError", "AgentGoneError", "ProtocolError", "BusyError",
    "InternalError", "ReleasedError",
]
