"""Client abort: noticed at once, even during long polls; node work stops,
open items go back, logged as 499 at info (DESIGN §2, §3).

"Handed to the client connection" means written to the socket, so what sits
in the kernel's socket buffers when the client goes away is acknowledged but
never read.  The test keeps those buffers small (listen sndbuf, client
SO_RCVBUF) and allows exactly that many messages to be missing."""

import socket
import time

from gwutil import (SLOW, Client, Dechunker, fill, node_items, qname,
                    read_headers, total_items, wait_for)

MSG = 1000          # bytes a message
COUNT = 5000
SNDBUF = 8192


def _abort_logged(g, after=0):
    return "client closed the memq stream" in g.error_text()[after:]


def test_abort_keeps_unread_messages(gateway_factory, nodes3):
    g = gateway_factory(nodes3, listen_extra="sndbuf=%d" % SNDBUF,
                        loc_extra="memq_batch 16;")
    q = qname()
    sent = fill(nodes3, q, COUNT, fmt="%04d" + "x" * (MSG - 4))
    s = g.raw_request("/mq?topic=%s" % q, rcvbuf=4096)
    rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    status, hdrs, rest = read_headers(s)
    assert status == 200
    d = Dechunker()
    d.feed(rest)
    while d.data.count(b"\n") < 10:
        chunk = s.recv(4096)
        assert chunk, "stream ended early"
        d.feed(chunk)
    s.close()
    received = set(d.data.split(b"\n")[:-1])
    assert len(received) >= 10

    wait_for(lambda: _abort_logged(g), timeout=5, what="abort logged")
    wait_for(lambda: all(node_items(n, q)[1] == 0 for n in nodes3),
             timeout=5, what="open items given back")
    line = g.wait_access(lambda l: q in l and l.startswith("499"),
                         what="499 in the access log")
    assert line

    remaining = []
    for n in nodes3:
        c = Client(n.addr)
        remaining += [i.data for i in c.drain(q)]
        c.close()
    assert len(remaining) == len(set(remaining)), "duplicates in the queue"
    lost = sent - set(remaining) - received
    print("received %d, remaining %d, lost %d" % (len(received),
                                                   len(remaining), len(lost)))
    # at most what fits in the socket buffers between nginx and the client
    slack = (2 * SNDBUF + rcvbuf) // MSG + 2
    assert len(lost) <= slack, \
        "%d messages neither received nor queued (allowed %d)" % \
        (len(lost), slack)
    assert len(remaining) >= COUNT - len(received) - slack
    assert len(remaining) > COUNT // 2, "the gateway kept streaming"


def test_abort_during_long_poll(gw, nodes3):
    q = qname()
    # make the queue exist on every node, empty
    for n in nodes3:
        c = Client(n.addr)
        c.store(q, b"x")
        assert c.getdata(q) == b"x"
        c.close()

    def waiters():
        total = 0
        for n in nodes3:
            c = Client(n.addr)
            total += c.qstats(q).get("waiters", 0)
            c.close()
        return total

    s = gw.raw_request("/mq?topic=%s&wait=30" % q)
    status, hdrs, rest = read_headers(s)
    assert status == 200
    wait_for(lambda: waiters() == 3, timeout=5,
             what="every node long-polling")
    t0 = time.monotonic()
    s.close()
    wait_for(lambda: _abort_logged(gw), timeout=2,
             what="abort noticed during the long poll")
    wait_for(lambda: waiters() == 0, timeout=2,
             what="node long polls stopped")
    assert time.monotonic() - t0 < 2 * SLOW
    gw.wait_access(lambda l: q in l and l.startswith("499"))
    # a message published now is not swallowed by a dead long poll
    c = Client(nodes3[0].addr)
    c.store(q, b"after")
    c.close()
    assert gw.lines(q) == [b"after"]
    assert total_items(nodes3, q) == 0


def test_abort_twice_no_leak(gw, nodes3):
    for _ in range(2):
        q = qname()
        fill(nodes3, q, 300, fmt="%04d" + "y" * 500)
        s = gw.raw_request("/mq?topic=%s" % q)
        read_headers(s)
        s.close()
        wait_for(lambda: all(node_items(n, q)[1] == 0 for n in nodes3),
                 timeout=5, what="open items given back")
        got = gw.lines(q)
        assert len(got) == len(set(got)) <= 300
        assert total_items(nodes3, q) == 0

    def quiet():
        st = gw.status().json()["clusters"][0]
        return st["streams_active"] == 0 and \
            all(n["pool_busy"] == 0 for n in st["nodes"])

    wait_for(quiet, timeout=5, what="no stream or busy connection left")
