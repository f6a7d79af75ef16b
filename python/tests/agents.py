"""Two real wyvern agents on loopback TCP for the Python tests.

The port-0 scheme of tests/common/mod.rs: node 0 starts with
``--nodes 127.0.0.1:0,127.0.0.1:0`` and prints ``wyvern agent ready: tcp
ADDR``; node 1 starts with ADDR in the list (the higher node id dials the
lower one).
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wyvern_bin():
    return os.environ.get("WYVERN_BIN") or str(ROOT / "target" / "debug" / "wyvern")


class Agents:
    def __init__(self, n=2, extra=()):
        self.n = n
        self.extra = list(extra)
        self.dir = Path(tempfile.mkdtemp(prefix="wyvern-py-"))
        self.procs = []
        self.addrs = ["127.0.0.1:0"] * n

    def socket(self, i):
        return str(self.dir / ("agent%d.sock" % i))

    def _spawn(self, i):
        cmd = [
            wyvern_bin(), "agent", "--node-id", str(i), "--nodes", ",".join(self.addrs),
            "--socket", self.socket(i), "--idle", "adaptive", "--heartbeat-ms", "100",
            "--peer-timeout-ms", "3000", "--block-bytes", "64MiB",
            # Every link from the start: each agent takes a free port as it
            # starts, so only later agents know an earlier one's address.
            "--connect", "all",
        ] + self.extra
        log = open(self.dir / ("agent%d.log" % i), "wb")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        lines = queue.Queue()

        def pump():
            for line in p.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            line = lines.get(timeout=20)
        except queue.Empty:
            line = None
        prefix = "wyvern agent ready: "
        if not line or not line.startswith(prefix):
            p.kill()
            raise RuntimeError("agent %d did not start (%r); log:\n%s" % (i, line, self.log(i)))
        self.addrs[i] = line[len(prefix):].split(" ", 1)[1]
        self.procs.append(p)

    def start(self):
        for i in range(self.n):
            self._spawn(i)
        deadline = time.monotonic() + 20
        for i in range(self.n):
            while not all(p["state"] == "up" for p in self.stat(i)["peers"]):
                if time.monotonic() > deadline:
                    raise RuntimeError("agents did not connect: %s" % self.stat(i))
                time.sleep(0.02)
        return self

    def stat(self, i):
        out = subprocess.run(
            [wyvern_bin(), "stat", "--json", "--socket", self.socket(i)],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
        return json.loads(out)

    def log(self, i):
        try:
            return (self.dir / ("agent%d.log" % i)).read_text(errors="replace")
        except OSError:
            return ""

    def wait_no_leak(self, timeout=10.0):
        """Wait until no client is attached and every pool block is free on
        every agent; return the last stats (raise AssertionError if not)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = [self.stat(i) for i in range(self.n)]
            if all(s["blocks_free"] == s["blocks_total"] and not s["clients"] for s in stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError("blocks or clients leaked: %s" % [
                    {k: s[k] for k in ("node", "blocks_free", "blocks_total", "clients")}
                    for s in stats])
            time.sleep(0.05)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)
