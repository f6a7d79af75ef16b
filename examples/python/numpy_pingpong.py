#!/usr/bin/env python3
"""Bounce numpy arrays between two processes on two wyvern agents.

    numpy_pingpong.py SOCKET pong [--ep 7]
        answers every array with array + 1 until an empty message arrives
    numpy_pingpong.py SOCKET ping --peer NODE [--ep 7] [--rounds 100] [--elements 131072]
        sends float64 arrays to endpoint --ep of node NODE, checks each answer

Arrays go out without a copy on the Python side (the send reads the array's
own memory) and come back zero-copy: numpy.frombuffer over the message's
view of the agent's pool block, dropped before the message is released.
Needs libwyvern.so: set WYVERN_LIB (e.g. target/debug/libwyvern.so) and
PYTHONPATH=python when running from the source tree.
"""

import argparse
import sys
import time

import numpy as np

import wyvern


def pong(ep):
    print("ready", flush=True)
    n = 0
    while True:
        with ep.recv_view() as msg:
            if len(msg) == 0:
                break
            arr = np.frombuffer(msg.view, dtype=np.float64)  # no copy
            reply = arr + 1.0                               # a new array
            del arr                                         # before the release
        ep.send(msg.src_node, msg.src_ep, reply, timeout=10)
        n += 1
    print("pong: answered %d arrays" % n, flush=True)


def ping(ep, peer, dst_ep, rounds, elements):
    base = np.arange(elements, dtype=np.float64)
    t0 = time.perf_counter()
    for r in range(rounds):
        out = base * r
        ep.send(peer, dst_ep, out, timeout=10)
        with ep.recv_view(timeout=30) as msg:
            back = np.frombuffer(msg.view, dtype=np.float64)
            ok = back.shape == out.shape and np.array_equal(back, out + 1.0)
            del back
        if not ok:
            sys.exit("ping: round %d: wrong answer" % r)
    dt = time.perf_counter() - t0
    ep.send(peer, dst_ep, b"", delivered=True, timeout=10)  # stop the pong side
    nbytes = base.nbytes
    print("ping: %d round trips of %d B arrays: %.1f us per round trip, %.1f MB/s each way"
          % (rounds, nbytes, dt / rounds * 1e6, rounds * nbytes / dt / 1e6))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("socket", help="the local agent's control socket")
    p.add_argument("role", choices=["ping", "pong"])
    p.add_argument("--peer", type=int, help="ping: the pong side's node id")
    p.add_argument("--ep", type=int, default=7, help="the pong side's endpoint id (default 7)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--elements", type=int, default=131072, help="float64s per array")
    a = p.parse_args()
    with wyvern.attach(a.socket, name="numpy-" + a.role) as client:
        if a.role == "pong":
            with client.open_endpoint(a.ep) as ep:
                pong(ep)
        else:
            if a.peer is None:
                p.error("ping needs --peer NODE")
            with client.open_endpoint() as ep:
                ping(ep, a.peer, a.ep, a.rounds, a.elements)


if __name__ == "__main__":
    main()
