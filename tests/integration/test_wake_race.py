"""A long-poll waiter woken for an item that closes in the same loop
iteration must not take the wake-up with it: the next waiter gets the item
at once, not at its own timeout (issue 7, defect 7).  The waiter goes away
with a reset: a FIN cannot be told from a half-close whose client still
waits for its reply.  The node is stopped
with SIGSTOP so that the item and the close arrive together."""

import os
import signal
import socket
import struct
import time

from memqlib import qname, stop_process, wait_for


def _waiter(s, q, ms):
    w = socket.create_connection((s.host, s.port))
    w.sendall(b"get %s/t=%d\r\n" % (q.encode(), ms))
    return w


def _read_reply(sock, timeout):
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"END\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_closed_woken_waiter_passes_the_item_on(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    for rnd in range(5):
        q = qname("wake")
        a = _waiter(s, q, 60000)
        wait_for(lambda: int(c.stats().get("curr_waiters", 0)) == 1,
                 what="first waiter parked")
        b = _waiter(s, q, 60000)
        wait_for(lambda: int(c.stats().get("curr_waiters", 0)) == 2,
                 what="second waiter parked")

        p = socket.create_connection((s.host, s.port))
        stop_process(s.proc.pid)
        try:
            # both reach the stopped node: the item for the first waiter
            # and the first waiter's close
            p.sendall(b"set %s 0 0 4\r\nitem\r\n" % q.encode())
            # a reset, not a FIN: a FIN may be a half-close from a client
            # that still wants its reply (printf ... | nc)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            a.close()
            time.sleep(0.2)     # let both land in the socket buffers
        finally:
            os.kill(s.proc.pid, signal.SIGCONT)

        t0 = time.monotonic()
        reply = _read_reply(b, 30)
        took = time.monotonic() - t0
        assert reply == b"VALUE %s/t=60000 0 4\r\nitem\r\nEND\r\n" % \
            q.encode(), \
            "round %d: %r" % (rnd, reply)
        # its own long poll is 60 s: the item came because it was woken
        assert took < 20, "round %d: the item came after %.1f s" % (rnd, took)
        p.close()
        b.close()
        wait_for(lambda: int(c.stats().get("curr_waiters", 0)) == 0,
                 what="no waiter left")
    c.close()
