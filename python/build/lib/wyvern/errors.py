"""WyvernError and one subclass per WYVERN_E* code of include/wyvern.h."""

import builtins

OK = 0
EAGAIN = -1
ETIMEDOUT = -2
EINVAL = -3
EBADHANDLE = -4
ECLOSED = -5
ENOSPC = -6
ETOOLARGE = -7
EUNKNOWN_ENDPOINT = -8
EUNKNOWN_NODE = -9
EPEER_LOST = -10
EDEST_CLOSED = -11
ENOMEM = -12
EREFUSED = -13
ECONNECT = -14
EAGENT_GONE = -15
EPROTO = -16
EBUSY = -17
EINTERNAL = -18


class WyvernError(Exception):
    """A failed wyvern call: ``code`` (a negative ``WYVERN_E*``), ``name``
    (``"ETIMEDOUT"``...), ``detail`` (``wyvern_last_error()``)."""

    code = None
    name = "E?"

    def __init__(self, detail="", code=None):
        if code is not None:
            self.code = code
        self.detail = detail
        Exception.__init__(self, "%s (%s)" % (detail, self.name) if detail else self.name)
        # builtins.OSError subclasses: keep args a plain message.
        self.args = (str(self),)

    def __str__(self):
        return self.args[0] if self.args else self.name


class WouldBlockError(WyvernError, builtins.BlockingIOError):
    """EAGAIN: nothing ready (a timeout of 0) or no room right now."""
    code, name = EAGAIN, "EAGAIN"


class TimeoutError(WyvernError, builtins.TimeoutError):  # noqa: A001
    """ETIMEDOUT: waited the whole timeout (also a builtins.TimeoutError)."""
    code, name = ETIMEDOUT, "ETIMEDOUT"


class InvalidArgumentError(WyvernError, ValueError):
    code, name = EINVAL, "EINVAL"


class BadHandleError(WyvernError, ValueError):
    """EBADHANDLE: a detached client, a released message, ..."""
    code, name = EBADHANDLE, "EBADHANDLE"


class ClosedError(WyvernError, ValueError):
    """ECLOSED: the endpoint (or the client) was closed."""
    code, name = ECLOSED, "ECLOSED"


class NoSpaceError(WyvernError):
    """ENOSPC: the receive buffer is too small; ``needed`` is the length."""
    code, name = ENOSPC, "ENOSPC"
    needed = None


class TooLargeError(WyvernError):
    code, name = ETOOLARGE, "ETOOLARGE"


class UnknownEndpointError(WyvernError):
    code, name = EUNKNOWN_ENDPOINT, "EUNKNOWN_ENDPOINT"


class UnknownNodeError(WyvernError):
    code, name = EUNKNOWN_NODE, "EUNKNOWN_NODE"


class PeerLostError(WyvernError):
    code, name = EPEER_LOST, "EPEER_LOST"


class DestClosedError(WyvernError):
    code, name = EDEST_CLOSED, "EDEST_CLOSED"


class NoMemoryError(WyvernError):
    """ENOMEM: the pool has no block of that size right now."""
    code, name = ENOMEM, "ENOMEM"


class RefusedError(WyvernError):
    code, name = EREFUSED, "EREFUSED"


class ConnectError(WyvernError, builtins.ConnectionError):
    """ECONNECT: no agent listens at that socket."""
    code, name = ECONNECT, "ECONNECT"


class AgentGoneError(WyvernError):
    code, name = EAGENT_GONE, "EAGENT_GONE"


class ProtocolError(WyvernError):
    code, name = EPROTO, "EPROTO"


class BusyError(WyvernError):
    """EBUSY: another thread is inside a call on the same client."""
    code, name = EBUSY, "EBUSY"


class InternalError(WyvernError):
    code, name = EINTERNAL, "EINTERNAL"


class ReleasedError(BadHandleError):
    """A released message's data was used (raised by Python, not by C)."""


BY_CODE = {
    c.code: c
    for c in (
        WouldBlockError, TimeoutError, InvalidArgumentError, BadHandleError,
        ClosedError, NoSpaceError, TooLargeError, UnknownEndpointError,
        UnknownNodeError, PeerLostError, DestClosedError, NoMemoryError,
        RefusedError, ConnectError, AgentGoneError, ProtocolError, BusyError,
        InternalError,
    )
}


def error_class(code):
    """The WyvernError subclass of a code (WyvernError for an unknown one)."""
    return BY_CODE.get(code, WyvernError)
