import builtins
import gc
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import wyvern
from wyvern import errors as E
from wyvern import _ffi

from agents import ROOT

MiB = 1 << 20
SIZES = [0, 1, 100, 4000, 4096, 65536, 1 * MiB, 4 * MiB]


def payload(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ----------------------------------------------------------------- constants
def test_constants_match_header():
    text = (ROOT / "include" / "wyvern.h").read_text()
    defs = dict(re.findall(r"#define (WYVERN_\w+) (\S+)", text))
    defs.pop("WYVERN_H", None)
    codes = {k: int(v) for k, v in defs.items() if k.startswith("WYVERN_E") or k == "WYVERN_OK"}
    assert len(codes) == 19
    for k, v in codes.items():
        assert getattr(E, k[len("WYVERN_"):]) == v, k
        if v:
            assert E.error_class(v).code == v and E.error_class(v).name == k[len("WYVERN_"):]
    assert defs["WYVERN_ANY"] == "UINT32_MAX" and _ffi.WYVERN_ANY == 2**32 - 1
    assert defs["WYVERN_NO_NODE"] == "UINT32_MAX" and _ffi.WYVERN_NO_NODE == 2**32 - 1
    assert int(defs["WYVERN_FOREVER"]) == _ffi.WYVERN_FOREVER
    assert int(defs["WYVERN_BUFFERED"]) == _ffi.WYVERN_BUFFERED
    assert int(defs["WYVERN_DELIVERED"]) == _ffi.WYVERN_DELIVERED
    # every function of the header is declared in the cdef
    header_fns = set(re.findall(r"\b(wyvern_\w+)\(", text))
    assert header_fns - set(re.findall(r"\b(wyvern_\w+)\(", _ffi.CDEF)) <= {"wyvern_send", "wyvern_recv"}


def test_strerror_and_hierarchy():
    assert "time" in wyvern.strerror(E.ETIMEDOUT).lower()
    assert issubclass(wyvern.TimeoutError, builtins.TimeoutError)
    assert issubclass(wyvern.TimeoutError, wyvern.WyvernError)
    assert issubclass(wyvern.WouldBlockError, BlockingIOError)
    assert issubclass(wyvern.ConnectError, ConnectionError)
    assert issubclass(wyvern.ReleasedError, wyvern.BadHandleError)


def test_library_not_found_names_what_it_tried(tmp_path):
    env = dict(os.environ, WYVERN_LIB=str(tmp_path / "nope.so"))
    r = subprocess.run([sys.executable, "-c", "import wyvern"], env=env,
                       cwd=str(ROOT / "python"), capture_output=True, text=True)
    assert r.returncode != 0
    assert "cannot load libwyvern.so" in r.stderr and "nope.so does not exist" in r.stderr


def test_attach_nowhere(tmp_path):
    with pytest.raises(wyvern.ConnectError) as ei:
        wyvern.attach(tmp_path / "none.sock")
    assert ei.value.code == E.ECONNECT and "none.sock" in str(ei.value)


# ------------------------------------------------------------------ clients
def test_client_facts(clients):
    c0, c1 = clients
    assert (c0.node, c1.node) == (0, 1)
    assert c0.nodes == c1.nodes == 2
    assert c0.eager_max > 0
    assert "node 0 of 2" in repr(c0)


def test_context_managers(agents):
    with wyvern.attach(agents.socket(0), name="cm") as c:
        with c.open_endpoint(77) as ep:
            assert ep.id == 77 and not ep.closed
        assert ep.closed
        ep2 = c.open_endpoint()
        assert ep2.id != 77
    assert not c.attached and ep2.closed
    with pytest.raises(wyvern.ClosedError):
        ep2.send(0, 1, b"x")
    c.detach()  # idempotent
    agents.wait_no_leak()


def test_endpoint_id_in_use(clients):
    with clients[0].open_endpoint(5):
        with pytest.raises(wyvern.RefusedError):
            clients[0].open_endpoint(5)


# ---------------------------------------------------------------- exchange
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("delivered", [False, True], ids=["buffered", "delivered"])
@pytest.mark.parametrize("direction", ["0to1", "1to0"])
def test_exchange_copy_and_view(pair, clients, size, delivered, direction):
    a, b = pair if direction == "0to1" else pair[::-1]
    na, nb = a.client.node, b.client.node
    d1, d2 = payload(size, 1), bytearray(payload(size, 2))
    a.send(nb, b.id, d1, delivered=delivered, timeout=10)
    a.send(nb, b.id, d2, delivered=delivered, timeout=10)
    data, src_node, src_ep = b.recv_from(timeout=10)
    assert (src_node, src_ep) == (na, a.id)
    assert data == d1 and type(data) is bytes
    with b.recv_view(timeout=10) as m:
        assert (m.src_node, m.src_ep) == (na, a.id) and len(m) == size
        assert m.view.readonly and m.view.format == "B"
        assert m.view == d2
        assert m.zero_copy == (size > b.client.eager_max)
    assert m.released
    assert not clients[0].take_errors() and not clients[1].take_errors()


def test_send_buffer_kinds(pair):
    a, b = pair
    arr = np.arange(1000, dtype=np.float64)
    for obj in (b"bytes", bytearray(b"bytearray"), memoryview(b"xxmemoryview")[2:],
                arr, arr.reshape(10, 100), np.float32(1.5)):
        a.send(1, b.id, obj, timeout=10)
        assert b.recv(timeout=10) == memoryview(obj).tobytes()
    # the export of a bytearray ends with the call: it can be resized again
    ba = bytearray(10)
    a.send(1, b.id, ba, timeout=10)
    ba.extend(b"more")
    b.recv(timeout=10)


def test_recv_into(pair):
    a, b = pair
    src = np.arange(300_000, dtype=np.int32)  # 1.2 MB
    a.send(1, b.id, src, timeout=10)
    small = np.empty(10, dtype=np.int32)
    with pytest.raises(wyvern.NoSpaceError) as ei:
        b.recv_into(small, timeout=10)
    assert ei.value.needed == src.nbytes
    dst = np.empty_like(src)
    n, node, ep = b.recv_into(dst, timeout=10)
    assert (n, node, ep) == (src.nbytes, 0, a.id)
    assert np.array_equal(dst, src)
    with pytest.raises((TypeError, BufferError)):
        b.recv_into(b"read-only", timeout=0)


def test_batches(pair):
    a, b = pair
    msgs = [(1, b.id, payload(1 + (k * 7) % 300 if k % 50 != 49 else 100_000, k)) for k in range(500)]
    assert a.send_many(msgs, timeout=10) == len(msgs)
    got = []
    while len(got) < len(msgs):
        batch = b.recv_many(64, timeout=10)
        assert 1 <= len(batch) <= 64
        got.extend(batch)
    assert [g[0] for g in got] == [m[2] for m in msgs]
    assert all(g[1:] == (0, a.id) for g in got)
    with pytest.raises(wyvern.WouldBlockError):
        b.recv_many(8, timeout=0)
    assert a.send_many([], timeout=0) == 0
    with pytest.raises(TypeError):
        a.send_many([(1, b.id)], timeout=0)
    with pytest.raises(TypeError):
        a.send_many([(1, b.id, "text")], timeout=0)
    with pytest.raises(ValueError):
        b.recv_many(0)


def test_asyncio_waits_on_the_endpoint_descriptor(pair):
    import asyncio
    import select

    a, b = pair
    # By hand: armed, nothing yet; a message makes the descriptor readable.
    assert b.arm() is True
    assert select.select([b.fileno()], [], [], 0)[0] == []
    a.send(1, b.id, b"ring", delivered=True, timeout=10)
    assert select.select([b.fileno()], [], [], 10)[0] == [b.fileno()]
    b.disarm()
    assert b.arm() is False  # a message waits: nothing armed
    assert b.recv(timeout=0) == b"ring"

    async def main():
        # The loop stays free while recv_async waits: a timer task runs.
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, lambda: a.send(1, b.id, b"later", timeout=10))
        got = await b.recv_async(timeout=10)
        with pytest.raises(wyvern.TimeoutError):
            await b.recv_async(timeout=0.05)
        t.cancel()
        return got, ticks

    (data, node, ep), ticks = asyncio.run(main())
    assert (data, node, ep) == (b"later", 0, a.id)
    assert ticks >= 5, ticks


def test_poll_and_timeouts(pair):
    a, b = pair
    assert b.poll() is False
    with pytest.raises(wyvern.WouldBlockError):
        b.recv(timeout=0)
    with pytest.raises(wyvern.TimeoutError) as ei:
        b.recv_view(timeout=0.05)
    assert isinstance(ei.value, builtins.TimeoutError) and ei.value.code == E.ETIMEDOUT
    a.send(1, b.id, b"ping", delivered=True, timeout=10)
    assert b.poll() is True
    assert b.recv(timeout=0) == b"ping"
    assert b.poll() is False


# ---------------------------------------------------------------- zero-copy
def test_numpy_zero_copy_rule(pair, agents):
    a, b = pair
    src = np.linspace(0, 1, 4 * MiB // 8)
    a.send(1, b.id, src, delivered=True, timeout=10)
    msg = b.recv_view(timeout=10)
    assert msg.zero_copy
    arr = np.frombuffer(msg.view, dtype=np.float64)
    assert not arr.flags.writeable
    assert np.array_equal(arr, src)
    assert agents.stat(1)["blocks_free"] < agents.stat(1)["blocks_total"]
    with pytest.raises(BufferError):
        msg.release()  # the array exports msg.view: nothing released
    assert not msg.released and arr[-1] == 1.0
    del arr
    msg.release()
    assert msg.released
    with pytest.raises(wyvern.ReleasedError):
        msg.view
    with pytest.raises(wyvern.ReleasedError):
        msg.bytes()
    msg.release()  # idempotent


def test_derived_views_block_release(pair):
    a, b = pair
    a.send(1, b.id, payload(2 * MiB, 3), timeout=10)
    msg = b.recv_view(timeout=10)
    s = msg.view[10:20]
    arr = np.frombuffer(memoryview(msg.view).cast("B")[100:], dtype=np.uint8)
    with pytest.raises(BufferError):
        msg.release()
    del s
    with pytest.raises(BufferError):
        msg.release()
    assert msg.view[0:4] == payload(2 * MiB, 3)[0:4]  # a fresh view is handed out
    del arr
    gc.collect()
    msg.release()
    assert msg.released


def test_view_after_release_raises_not_crashes(pair):
    a, b = pair
    a.send(1, b.id, payload(MiB, 4), timeout=10)
    msg = b.recv_view(timeout=10)
    v = msg.view
    msg.release()
    with pytest.raises(ValueError):  # memoryview.release() makes every use raise
        v[0]
    with pytest.raises(ValueError):
        bytes(v)
    with pytest.raises(ValueError):
        np.frombuffer(v, dtype=np.uint8)


def test_dropped_message_lives_as_long_as_its_views(pair, agents):
    a, b = pair
    src = np.arange(MiB, dtype=np.int64)  # 8 MiB, a pool block
    a.send(1, b.id, src, delivered=True, timeout=10)
    arr = np.frombuffer(b.recv_view(timeout=10).view, dtype=np.int64)  # the Message is gone
    gc.collect()
    assert np.array_equal(arr, src)
    s = agents.stat(1)
    assert s["blocks_free"] < s["blocks_total"]
    del arr  # the last view: the block goes back (the agent sees it at its next round)
    gc.collect()
    deadline = time.monotonic() + 10
    while True:
        s = agents.stat(1)
        if s["blocks_free"] == s["blocks_total"]:
            break
        assert time.monotonic() < deadline, s
        time.sleep(0.02)


def test_detach_refuses_under_live_view(agents):
    c0 = wyvern.attach(agents.socket(0), name="sender")
    c1 = wyvern.attach(agents.socket(1), name="holder")
    e0, e1 = c0.open_endpoint(), c1.open_endpoint()
    e0.send(1, e1.id, payload(MiB, 5), delivered=True, timeout=10)
    e0.send(1, e1.id, b"small", delivered=True, timeout=10)
    held = e1.recv_view(timeout=10)
    loose = e1.recv_view(timeout=10)  # no views: detach releases it
    arr = np.frombuffer(held.view, dtype=np.uint8)
    with pytest.raises(BufferError):
        c1.detach()
    assert c1.attached and arr[0] == payload(MiB, 5)[0]
    del arr
    c1.detach()
    assert held.released and loose.released and e1.closed
    c0.detach()
    agents.wait_no_leak()


# ---------------------------------------------------------------- bad args
def test_bad_arguments(pair):
    a, b = pair
    with pytest.raises(TypeError):
        a.send(1, b.id, "a str")
    with pytest.raises(TypeError):
        a.send(1, b.id, None)
    with pytest.raises(TypeError):
        a.send(1, b.id, 12345)
    with pytest.raises(ValueError):
        a.send(1, b.id, np.arange(10)[::2])  # not contiguous
    with pytest.raises(ValueError):
        a.send(-1, b.id, b"x")
    with pytest.raises(ValueError):
        a.send(1, 2**32, b"x")
    with pytest.raises(TypeError):
        a.send(1, "7", b"x")
    with pytest.raises(TypeError):
        a.recv(timeout="soon")
    with pytest.raises(TypeError):
        a.client.open_endpoint("3")
    with pytest.raises(ValueError):
        wyvern.attach("/tmp/x\0y.sock")


def test_unknown_destinations(pair, clients):
    a, b = pair
    with pytest.raises(wyvern.UnknownNodeError):
        a.send(9, 1, b"x", delivered=True, timeout=5)
    with pytest.raises(wyvern.UnknownEndpointError):
        a.send(1, 4242, b"x", delivered=True, timeout=10)
    cookie = a.send(1, 4243, b"y", timeout=10)  # buffered: reported later
    deadline = time.monotonic() + 10
    errs = []
    while not errs and time.monotonic() < deadline:
        errs = clients[0].take_errors()
        time.sleep(0.05)
    assert [(e.cookie, e.code, e.node) for e in errs] == [(cookie, E.EUNKNOWN_ENDPOINT, None)]
    assert isinstance(errs[0].error, wyvern.UnknownEndpointError)


def test_closed_endpoint(pair):
    a, b = pair
    a.send(1, b.id, payload(2 * MiB, 6), delivered=True, timeout=10)
    m = b.recv_view(timeout=10)
    b.close()
    b.close()  # idempotent
    for call in (lambda: b.send(0, a.id, b"x"), lambda: b.recv(timeout=0),
                 lambda: b.recv_view(timeout=0), b.poll,
                 lambda: b.recv_into(bytearray(4), timeout=0)):
        with pytest.raises(wyvern.ClosedError):
            call()
    assert m.view[:3] == payload(2 * MiB, 6)[:3]  # still valid until released
    m.release()
    with pytest.raises((wyvern.DestClosedError, wyvern.UnknownEndpointError)):
        a.send(1, b.id, b"to a closed endpoint", delivered=True, timeout=5)


def test_wrong_thread_gets_busy(pair):
    import threading
    a, b = pair
    seen = []

    def blocker():
        while True:
            try:
                b.recv(timeout=2)
            except wyvern.BusyError:  # collided with the main thread's poll: again
                continue
            except wyvern.TimeoutError:
                seen.append("timeout")
            return

    t = threading.Thread(target=blocker)
    t.start()
    deadline = time.monotonic() + 1.5
    while True:  # the thread is inside recv (GIL released) once poll says busy
        try:
            b.poll()
        except wyvern.BusyError:
            break
        assert time.monotonic() < deadline, "never saw BusyError"
        time.sleep(0.01)
    t.join()
    assert seen == ["timeout"]


# ----------------------------------------------------------------- package
def test_the_package_installs_with_pip_and_works_from_there(agents, tmp_path):
    # `pip install ./python` (into a directory of its own, offline: the
    # venv's setuptools builds it), then a process elsewhere that sees only
    # that directory imports it and exchanges a message.
    # From a copy: building in place would leave build/ and *.egg-info in the tree.
    import shutil
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "python" / "pyproject.toml", src)
    shutil.copytree(ROOT / "python" / "wyvern", src / "wyvern",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    target = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-build-isolation", "--no-deps", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "wyvern" / "_core.py").is_file()
    # Installed as the distribution wyvern-hpc (its metadata), imported as wyvern.
    assert [p.name for p in target.glob("*.dist-info")] == [
        "wyvern_hpc-%s.dist-info" % wyvern.__version__]
    assert not (target / "tests").exists(), "the tests are not part of the package"
    code = (
        "import sys, wyvern\n"
        "assert wyvern.__file__.startswith(sys.argv[1]), wyvern.__file__\n"
        "with wyvern.attach(sys.argv[2], name='pip-test') as c:\n"
        "    with c.open_endpoint() as ep:\n"
        "        ep.send(c.node, ep.id, b'installed', delivered=True, timeout=10.0)\n"
        "        assert ep.recv(timeout=10.0) == b'installed'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code, str(target), agents.socket(0)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "ok"


# ----------------------------------------------------------------- example
def test_numpy_pingpong_example(agents):
    ex = ROOT / "examples" / "python" / "numpy_pingpong.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    pong = subprocess.Popen([sys.executable, str(ex), agents.socket(1), "pong"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert pong.stdout.readline().strip() == "ready"
        ping = subprocess.run(
            [sys.executable, str(ex), agents.socket(0), "ping", "--peer", "1",
             "--rounds", "20", "--elements", "262144"],
            env=env, capture_output=True, text=True, timeout=60)
        assert ping.returncode == 0, ping.stderr
        assert "20 round trips" in ping.stdout, ping.stdout
        out, err = pong.communicate(timeout=30)
        assert pong.returncode == 0, err
    finally:
        if pong.poll() is None:
            pong.kill()
    agents.wait_no_leak()
