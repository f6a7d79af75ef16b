"""Client, Endpoint and Message over the C API (see the package docstring)."""

import collections
import gc
import os
import sys
import weakref

from . import errors as E
from ._ffi import (
    WYVERN_ANY, WYVERN_BUFFERED, WYVERN_DELIVERED, WYVERN_NO_NODE, ffi, lib,
)

_U64_MAX = 0xFFFFFFFFFFFFFFFF
# sys.getrefcount of Message._cdata when nothing but the Message holds it
# (the attribute and getrefcount's own argument). CPython only.
_CDATA_BASE_REFS = 2
_HAVE_REFCOUNT = hasattr(sys, "getrefcount")


def last_error():
    """This thread's detail of its last failed wyvern call ('' if none)."""
    return ffi.string(lib.wyvern_last_error()).decode("utf-8", "replace")


def library_version():
    """The version of the loaded libwyvern.so ("0.1.0"): the package's own
    (``wyvern.__version__``) when both come from one build."""
    return ffi.string(lib.wyvern_version_string()).decode("utf-8", "replace")


def strerror(code):
    """The C library's description of a WYVERN_E* code."""
    return ffi.string(lib.wyvern_strerror(int(code))).decode("utf-8", "replace")


def _check(rc):
    if rc < 0:
        raise E.error_class(rc)(last_error(), code=rc)
    return rc


def _timeout_us(timeout):
    """Seconds (None or negative: forever; 0: try once) -> microseconds."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number of seconds or None, not %r" % (timeout,))
    if timeout < 0:
        return -1
    return min(int(timeout * 1_000_000), 2**63 - 1)


def _u32(name, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("%s must be an int, not %s" % (name, type(v).__name__))
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError("%s out of range (0 .. 2**32-1): %d" % (name, v))
    return v


def _key(h):
    return int(ffi.cast("uintptr_t", h))


AsyncError = collections.namedtuple("AsyncError", "cookie code node")
AsyncError.__doc__ = """A failure reported after a buffered send returned.

cookie: what Endpoint.send returned for that send, or None for a lost node
(buffered sends to `node` since the previous report may not have arrived);
code: the WYVERN_E* code; node: the lost node or None."""
AsyncError.error = property(lambda self: E.error_class(self.code)(strerror(self.code), code=self.code))
AsyncError.error.__doc__ = "The code as a WyvernError instance (not raised)."


def attach(socket_path, name=None):
    """Attach to the agent whose control socket is `socket_path`."""
    return Client(socket_path, name)


class Client:
    """An attached client (``wyvern_client``). A context manager: leaving the
    ``with`` block detaches. One thread at a time per client (another thread
    inside a call on the same client makes a call fail with BusyError):
    attach once per thread for parallelism."""

    def __init__(self, socket_path, name=None):
        self._h = None
        path = os.fsencode(socket_path)
        if b"\0" in path:
            raise ValueError("socket_path contains a NUL byte")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError("name must be a str or None")
            cname = name.encode("utf-8")
            if b"\0" in cname:
                raise ValueError("name contains a NUL byte")
        else:
            cname = ffi.NULL
        out = ffi.new("wyvern_client **")
        _check(lib.wyvern_attach(path, cname, out))
        self._h = out[0]
        self._live = {}        # message handle -> _Holder, until released
        self._deferred = []    # holders whose release met EBUSY (from a GC callback)
        self._eps = weakref.WeakSet()
        self.socket_path = os.fsdecode(path)
        u = ffi.new("uint32_t *")
        _check(lib.wyvern_node_id(self._h, u))
        self.node = u[0]
        _check(lib.wyvern_node_count(self._h, u))
        self.nodes = u[0]
        z = ffi.new("size_t *")
        _check(lib.wyvern_eager_max(self._h, z))
        self.eager_max = z[0]

    # -- internals
    def _handle(self):
        if self._h is None:
            raise E.ClosedError("the client is detached")
        if self._deferred:
            pending, self._deferred = self._deferred, []
            for holder in pending:
                holder.free()
        return self._h

    # -- public
    @property
    def attached(self):
        return self._h is not None

    def open_endpoint(self, id=None):  # noqa: A002 (the API's name)
        """Open endpoint `id` on this node (None: the agent picks one)."""
        ident = WYVERN_ANY if id is None else _u32("id", id)
        out = ffi.new("wyvern_endpoint **")
        _check(lib.wyvern_endpoint_open(self._handle(), ident, out))
        ep = Endpoint(self, out[0])
        self._eps.add(ep)
        return ep

    def take_errors(self):
        """Every failure of a buffered send reported since the last call, as a
        list of AsyncError (oldest first; empty if none)."""
        h = self._handle()
        out = ffi.new("wyvern_async_error *")
        errs = []
        while _check(lib.wyvern_take_error(h, out)) == 1:
            errs.append(AsyncError(
                None if out.cookie == _U64_MAX else out.cookie,
                out.status,
                None if out.node == WYVERN_NO_NODE else out.node,
            ))
        return errs

    def detach(self):
        """Leave the agent: closes every endpoint and releases every message.

        Raises BufferError (and stays attached) while a zero-copy view of a
        message is still alive: detaching would unmap the memory under it.
        Idempotent."""
        if self._h is None:
            return
        for attempt in (0, 1):
            stuck = []
            for holder in list(self._live.values()):
                msg = holder.msg_ref() if holder.msg_ref else None
                try:
                    if msg is not None:
                        msg.release()
                    elif holder.cdata_ref is not None and holder.cdata_ref() is not None:
                        raise BufferError("views of a dropped message are alive")
                except BufferError as e:
                    stuck.append(str(e))
            if not stuck:
                break
            if attempt == 0:
                gc.collect()  # views kept only by reference cycles
            else:
                raise BufferError(
                    "cannot detach: %d zero-copy message(s) still have live views "
                    "(%s); drop or release them first" % (len(stuck), stuck[0]))
        h, self._h = self._h, None
        for holder in self._live.values():
            holder.freed = True  # wyvern_detach releases them
        self._live.clear()
        self._deferred = []
        for ep in list(self._eps):
            ep._h = None
        _check(lib.wyvern_detach(h))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    def __del__(self):
        try:
            if self._h is not None and not self._live:
                self.detach()
        except Exception:  # noqa: BLE001 (never raise from __del__)
            pass

    def __repr__(self):
        state = "node %d of %d" % (self.node, self.nodes) if self._h is not None else "detached"
        return "<wyvern.Client %s at %s>" % (state, self.socket_path)


class Endpoint:
    """An open endpoint (``wyvern_endpoint``); a context manager that closes
    it. Its address is (client.node, id)."""

    def __init__(self, client, h):
        self._client = client
        self._h = h
        u = ffi.new("uint32_t *")
        _check(lib.wyvern_endpoint_id(h, u))
        self.id = u[0]

    def _handle(self):
        if self._h is None:
            raise E.ClosedError("the endpoint is closed" if self._client._h is not None
                                else "the client is detached")
        self._client._handle()
        return self._h

    @property
    def client(self):
        return self._client

    @property
    def closed(self):
        return self._h is None

    def close(self):
        """Close the endpoint (queued messages are dropped; messages received
        with recv_view stay valid until released). Idempotent."""
        if self._h is None or self._client._h is None:
            self._h = None
            return
        h, self._h = self._h, None
        self._client._eps.discard(self)
        _check(lib.wyvern_endpoint_close(h))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, dst_node, dst_ep, data, delivered=False, timeout=None):
        """Send the bytes of `data` (any C-contiguous buffer: bytes,
        bytearray, memoryview, numpy array...; not copied on the Python side)
        to endpoint `dst_ep` of node `dst_node`.

        delivered=False returns once the message is in the submission ring
        (a later failure shows in Client.take_errors); delivered=True waits
        until the destination agent deposited it. timeout: seconds to wait
        for room (and delivery); None waits as long as it takes, 0 tries
        once. Returns the send's cookie (names it in take_errors)."""
        h = self._handle()
        _u32("dst_node", dst_node)
        _u32("dst_ep", dst_ep)
        us = _timeout_us(timeout)
        flags = WYVERN_DELIVERED if delivered else WYVERN_BUFFERED
        if isinstance(data, str):
            raise TypeError("data must be a bytes-like object, not str (encode it)")
        buf = ffi.from_buffer(data)  # TypeError / ValueError (non-contiguous)
        cookie = ffi.new("uint64_t *")
        try:
            rc = lib.wyvern_send_ex(h, dst_node, dst_ep, buf, len(buf), flags, us, cookie)
        finally:
            ffi.release(buf)  # the buffer export ends now, not at GC time
        _check(rc)
        return cookie[0]

    def send_many(self, msgs, timeout=None):
        """Send a batch of (dst_node, dst_ep, data) in order, buffered (as
        send with delivered=False): one publication of the submission ring
        and at most one wake-up of the agent per run of small messages that
        fits the ring at once, instead of one per message. timeout: seconds
        for the whole batch. Returns how many were submitted, from the first:
        all, or fewer when the time ran out (send the rest again)."""
        h = self._handle()
        us = _timeout_us(timeout)
        msgs = list(msgs)
        out = ffi.new("wyvern_out[]", max(len(msgs), 1))
        bufs = []
        try:
            for k, m in enumerate(msgs):
                try:
                    dst_node, dst_ep, data = m
                except (TypeError, ValueError):
                    raise TypeError("message %d must be (dst_node, dst_ep, data)" % k) from None
                if isinstance(data, str):
                    raise TypeError("data must be a bytes-like object, not str (encode it)")
                b = ffi.from_buffer(data)
                bufs.append(b)
                o = out[k]
                o.dst_node = _u32("dst_node", dst_node)
                o.dst_ep = _u32("dst_ep", dst_ep)
                o.data = b
                o.len = len(b)
            sent = ffi.new("size_t *")
            rc = lib.wyvern_send_many(h, out, len(msgs), sent, us)
        finally:
            for b in bufs:
                ffi.release(b)
        if rc == E.EAGAIN and sent[0] > 0:
            return sent[0]
        _check(rc)
        return sent[0]

    def recv_many(self, max=64, timeout=None):
        """Up to `max` waiting messages as a list of (bytes, src_node,
        src_ep), taken from the ring at once (one copy each); waits up to
        `timeout` seconds for the first (0: try once, WouldBlockError if none;
        TimeoutError after a positive timeout)."""
        h = self._handle()
        if isinstance(max, bool) or not isinstance(max, int) or max < 1:
            raise ValueError("max must be a positive int, not %r" % (max,))
        us = _timeout_us(timeout)
        got = []

        @ffi.callback("void(void *, uint32_t, uint32_t, const void *, size_t)")
        def each(_ctx, src_node, src_ep, data, n):
            got.append((ffi.buffer(data, n)[:], src_node, src_ep))

        count = ffi.new("size_t *")
        _check(lib.wyvern_recv_many(h, max, each, ffi.NULL, count, us))
        return got

    def _recv_zc(self, timeout):
        h = self._handle()
        out = ffi.new("wyvern_msg **")
        _check(lib.wyvern_recv_zc(h, out, _timeout_us(timeout)))
        return out[0]

    def recv_from(self, timeout=None):
        """The next message as (bytes, src_node, src_ep). timeout: seconds;
        None waits as long as it takes; 0 tries once (WouldBlockError if
        nothing is there); TimeoutError after a positive timeout."""
        m = self._recv_zc(timeout)
        try:
            n = _check(lib.wyvern_msg_len(m))
            src = ffi.new("uint32_t[2]")
            _check(lib.wyvern_msg_src(m, src, src + 1))
            data = ffi.buffer(lib.wyvern_msg_data(m), n)[:]
        finally:
            lib.wyvern_msg_release(m)
        return data, src[0], src[1]

    def recv(self, timeout=None):
        """The next message's bytes (one copy). See recv_from."""
        return self.recv_from(timeout)[0]

    def recv_into(self, buffer, timeout=None):
        """Receive the next message into a writable C-contiguous buffer;
        returns (nbytes, src_node, src_ep). Too small a buffer raises
        NoSpaceError with .needed set, and the message stays first in line."""
        h = self._handle()
        us = _timeout_us(timeout)
        buf = ffi.from_buffer(buffer, require_writable=True)
        n = ffi.new("size_t *")
        src = ffi.new("uint32_t[2]")
        try:
            rc = lib.wyvern_recv_from(h, buf, len(buf), n, src, src + 1, us)
        finally:
            ffi.release(buf)
        if rc == E.ENOSPC:
            err = E.NoSpaceError("need %d bytes, the buffer has %d" % (n[0], len(buffer) if hasattr(buffer, "__len__") else -1))
            err.needed = n[0]
            raise err
        _check(rc)
        return n[0], src[0], src[1]

    def recv_view(self, timeout=None):
        """The next message without copying it: a Message whose ``view`` is a
        read-only memoryview of the agent's pool block (for messages larger
        than client.eager_max; small ones are in the client's memory). The
        block returns to the agent at Message.release() (see Message)."""
        return Message(self._client, self._recv_zc(timeout))

    def fileno(self):
        """The descriptor to wait on in an event loop (select, selectors,
        asyncio's add_reader) for this endpoint's next message, with arm()
        before and disarm() after the wait (see recv_async). Shared by the
        client's endpoints: a wake-up may be for another one."""
        fd = ffi.new("int *")
        _check(lib.wyvern_wait_fd(self._handle(), fd))
        return fd[0]

    def arm(self):
        """Before waiting on fileno(): True when armed (wait, then
        disarm()); False when a message is already waiting (receive now)."""
        return _check(lib.wyvern_arm(self._handle())) == 1

    def disarm(self):
        """After waiting on fileno()."""
        _check(lib.wyvern_disarm(self._handle()))

    async def recv_async(self, timeout=None):
        """The next message as (bytes, src_node, src_ep), awaited in the
        running asyncio loop (the loop watches fileno(); nothing blocks it).
        timeout: seconds, None waits as long as it takes; TimeoutError after
        it."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        fd = self.fileno()
        while True:
            try:
                return self.recv_from(timeout=0)
            except E.WouldBlockError:
                pass
            if not self.arm():
                continue
            ready = loop.create_future()
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait_for(ready, left)
                except asyncio.TimeoutError:
                    raise E.TimeoutError("no message within %s s" % timeout, code=E.ETIMEDOUT) from None
            finally:
                loop.remove_reader(fd)
                self.disarm()

    def poll(self):
        """True if a message is ready (the next receive returns it at once);
        never waits."""
        return _check(lib.wyvern_poll(self._handle())) == 1

    def __repr__(self):
        return "<wyvern.Endpoint %d.%d%s>" % (
            self._client.node, self.id, " closed" if self._h is None else "")


class _Holder:
    """Owns one wyvern_msg handle; frees it once. Referenced by the data
    pointer's GC callback, so the handle lives as long as any view of it."""

    __slots__ = ("client", "h", "key", "freed", "msg_ref", "cdata_ref", "__weakref__")

    def __init__(self, client, h):
        self.client = client
        self.h = h
        self.key = _key(h)
        self.freed = False
        self.msg_ref = None
        self.cdata_ref = None

    def destructor(self, _cdata):
        self.free()

    def free(self):
        if self.freed:
            return 0
        c = self.client
        if c._h is None:  # detached: wyvern_detach released it
            self.freed = True
            return 0
        rc = lib.wyvern_msg_release(self.h)
        if rc == E.EBUSY:  # another thread is in a call: retry at the next call
            c._deferred.append(self)
            return rc
        self.freed = True
        c._live.pop(self.key, None)
        return rc


class Message:
    """A message received with Endpoint.recv_view (``wyvern_msg``).

    ``view`` is a read-only memoryview of the message's bytes where they
    arrived (no copy); ``numpy.frombuffer(msg.view, dtype=...)`` wraps it.
    ``release()`` (or leaving a ``with`` block) gives the pool block back;
    afterwards ``view`` and ``bytes()`` raise ReleasedError.

    The rule: release() refuses (BufferError, nothing is released) while
    anything still uses the memory: an object exporting ``msg.view`` (a
    numpy array made from it, a cffi from_buffer) or a memoryview derived
    from it (a slice, a cast, ``memoryview(msg.view)``). Drop those (``del
    arr``) first. A Message that is simply dropped releases its block once
    it and every view derived from it are garbage. So no memoryview or
    numpy array ever sees memory the agent has taken back.
    """

    def __init__(self, client, h):
        self._cdata = None
        self._view = None
        holder = _Holder(client, h)
        try:
            self.nbytes = _check(lib.wyvern_msg_len(h))
            src = ffi.new("uint32_t[2]")
            _check(lib.wyvern_msg_src(h, src, src + 1))
            self.src_node, self.src_ep = src[0], src[1]
            self.zero_copy = _check(lib.wyvern_msg_zero_copy(h)) == 1
            raw = lib.wyvern_msg_data(h)
            if raw == ffi.NULL:
                _check(E.EBADHANDLE)
        except BaseException:
            holder.free()
            raise
        self._cdata = ffi.gc(ffi.cast("char *", raw), holder.destructor)
        holder.msg_ref = weakref.ref(self)
        holder.cdata_ref = weakref.ref(self._cdata)
        client._live[holder.key] = holder
        self._holder = holder

    @property
    def released(self):
        return self._cdata is None

    @property
    def src(self):
        """(src_node, src_ep)."""
        return self.src_node, self.src_ep

    @property
    def view(self):
        """A read-only memoryview (format 'B') of the message's bytes."""
        if self._cdata is None:
            raise E.ReleasedError("the message was released", code=E.EBADHANDLE)
        if self._view is None:
            base = memoryview(ffi.buffer(self._cdata, self.nbytes))
            self._view = base.toreadonly()
            base.release()
        return self._view

    def bytes(self):
        """A copy of the message's bytes."""
        return self.view.tobytes()

    def __len__(self):
        return self.nbytes

    def release(self):
        """Give the message back (its pool block returns to the agent).

        Raises BufferError, releasing nothing, while something still uses the
        memory (see the class docstring). Idempotent."""
        if self._cdata is None:
            return
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                raise BufferError(
                    "msg.view is still exported (a numpy array or another buffer "
                    "made from it is alive); drop it before releasing") from None
            self._view = None
        if _HAVE_REFCOUNT and sys.getrefcount(self._cdata) > _CDATA_BASE_REFS:
            raise BufferError(
                "a memoryview derived from msg.view (a slice, a cast, "
                "memoryview(msg.view)) or an array over one is alive; drop it "
                "before releasing")
        c, self._cdata = self._cdata, None
        # Runs the GC callback now: wyvern_msg_release (deferred to the
        # client's next call if another thread is inside one: EBUSY).
        ffi.release(c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return "<wyvern.Message %d B from %d.%d%s%s>" % (
            self.nbytes, self.src_node, self.src_ep,
            " zero-copy" if self.zero_copy else "",
            " released" if self._cdata is None else "")
