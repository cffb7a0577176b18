#!/usr/bin/python3
"""bench/giveback.py: what giving leased items back costs while many items
wait given back already (their queue's head).

Starts memqd (--sync none) on a fresh data directory, stores N items of
16 bytes, takes them all with /open on a connection that then closes, so
that they all wait at the head as given back, then, ROUNDS times: leases 1000 items for long (from that
head) and gives them all back with pipelined `touch q/<id> 0` (timed: the
give-back rate).  Then leases every item for LEASE_MS, stops memqd
(SIGSTOP) past their deadline and resumes it (SIGCONT): all N run out in
one pass of the lease timer; the time until a `version` sent at the
resume is answered is printed (the loop's stall).

Environment: MEMQD (build/memqd), N (300000), ROUNDS (20), LEASE_MS
(20000).  Prints: touch0/s, and the stall in ms.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMQD = os.environ.get("MEMQD", os.path.join(ROOT, "build", "memqd"))
N = int(os.environ.get("N", "300000"))
ROUNDS = int(os.environ.get("ROUNDS", "20"))
LEASE_MS = int(os.environ.get("LEASE_MS", "20000"))
Q = b"gb"


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError
            self.buf += d
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def values(self):
        """ids of a get reply"""
        ids = []
        while True:
            ln = self.line()
            if ln == b"END":
                return ids
            f = ln.split()
            if f[0] != b"VALUE":
                raise RuntimeError(ln)
            n = int(f[3])
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 20)
            self.buf = self.buf[n + 2:]
            ids.append(int(f[4]) if len(f) > 4 else 0)

    def stat(self, name):
        self.send(b"stats\r\n")
        v = None
        while True:
            ln = self.line()
            if ln == b"END":
                return v
            f = ln.split()
            if f[1] == b"queue_%s_%s" % (Q, name.encode()):
                v = int(f[2])


def lease_all(c, ms):
    got = 0
    while got < N:
        c.send(b"get %s/lease=%d/n=1000\r\n" % (Q, ms))
        got += len(c.values())


def main():
    with tempfile.TemporaryDirectory() as d:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        p = subprocess.Popen([MEMQD, "--listen", "127.0.0.1:%d" % port,
                              "--data-dir", d, "--sync", "none"],
                             stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    c = Conn(port)
                    break
                except OSError:
                    time.sleep(0.05)
            c.send(b"".join(b"set %s 0 0 16 noreply\r\n%016d\r\n" % (Q, i)
                            for i in range(N)) + b"version\r\n")
            c.line()
            o = Conn(port)
            got = 0
            while got < N:
                o.send(b"get %s/open/n=1000\r\n" % Q)
                got += len(o.values())
            o.s.close()                 # all N back at the head at once
            while c.stat("items") != N:
                time.sleep(0.01)

            t0 = time.monotonic()
            for _ in range(ROUNDS):
                c.send(b"get %s/lease=600000/n=1000\r\n" % Q)
                ids = c.values()
                c.send(b"".join(b"touch %s/%d 0 noreply\r\n" % (Q, i)
                                for i in ids) + b"version\r\n")
                c.line()
            dt = time.monotonic() - t0
            print("touch0/s %.0f  (%d given back, %d waiting at the head)"
                  % (ROUNDS * 1000 / dt, ROUNDS * 1000, N))

            lease_all(c, LEASE_MS)
            p.send_signal(signal.SIGSTOP)
            time.sleep(LEASE_MS / 1000.0 + 1)
            t0 = time.monotonic()
            p.send_signal(signal.SIGCONT)
            c.send(b"version\r\n")
            c.line()
            print("stall %.0f ms  (%d leases run out at once)"
                  % ((time.monotonic() - t0) * 1000, N))
        finally:
            p.send_signal(signal.SIGCONT)
            p.terminate()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
