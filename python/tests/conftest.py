import gc
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WYVERN_LIB", str(ROOT / "target" / "debug" / "libwyvern.so"))

from agents import Agents  # noqa: E402

import wyvern  # noqa: E402


@pytest.fixture(scope="session")
def agents():
    a = Agents(2).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def clients(agents):
    """One client per node; afterwards nothing may stay attached or leak."""
    cs = [wyvern.attach(agents.socket(i), name="pytest-%d" % i) for i in range(2)]
    try:
        yield cs
    finally:
        gc.collect()
        for c in cs:
            c.detach()
        agents.wait_no_leak()


@pytest.fixture
def pair(clients):
    """(ep0, ep1): an endpoint on node 0 and one on node 1."""
    e0 = clients[0].open_endpoint()
    e1 = clients[1].open_endpoint()
    return e0, e1
