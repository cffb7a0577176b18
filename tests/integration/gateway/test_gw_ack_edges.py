"""POST op=ack|release|touch at its edges: a node that cannot be had at
once while the body came late, bodies far over the limit, and nodes that
answer more than they were asked."""

import socket

import requests

from gwutil import SLOW, node_addr, qname, read_headers

CLIENT_LOC = """
            memq_pass main;
            memq_key $arg_topic;
            memq_wait_max 10s;
            memq_ack client;
"""


def _post_late_body(g, q, body):
    """POST op=ack whose body goes only once nginx asked for it (Expect:
    100-continue), so the body is read in an event of its own; returns
    (status, body)."""
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLOW)
    try:
        s.sendall(("POST /mq?topic=%s&op=ack HTTP/1.1\r\nHost: x\r\n"
                   "Content-Length: %d\r\nExpect: 100-continue\r\n"
                   "\r\n" % (q, len(body))).encode())
        got = b""
        while b"\r\n\r\n" not in got:
            d = s.recv(4096)
            assert d, got
            got += d
        assert got.startswith(b"HTTP/1.1 100 "), got
        s.sendall(body)
        status, hdrs, rest = read_headers(s)
        n = int(hdrs["content-length"])
        while len(rest) < n:
            d = s.recv(4096)
            assert d
            rest += d
        return status, rest
    finally:
        s.close()


def test_node_refused_at_once_after_a_late_body(gateway_factory,
                                                 memqd_factory):
    """One worker with no connection to spare: the node's share fails at
    once ("no free connection", not the node's fault), which answers the
    request from inside the loop that starts the nodes; the request must
    not be touched after that answer (a late body: the answer frees it)."""
    n = memqd_factory()
    # the listening socket, the master's channel and the client take all
    g = gateway_factory([n], loc=CLIENT_LOC, workers=1, worker_connections=3)
    q = qname()
    status, body = _post_late_body(g, q, ("%s/1" % node_addr(n)).encode())
    assert status == 503, body
    assert b'"unknown":1' in body, body
    assert "no free connection" in g.error_text()
    g.stop()
    g.check_log()


def _worker_peak_rss(g):
    """VmHWM (kB) of the only worker of g."""
    pid = g.proc.pid
    kids = open("/proc/%d/task/%d/children" % (pid, pid)).read().split()
    assert len(kids) == 1, kids
    for line in open("/proc/%s/status" % kids[0]):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_chunked_body_over_the_limit_is_not_copied(gateway_factory,
                                                   memqd_factory):
    """A chunked body has no Content-Length to refuse it early; where
    client_max_body_size lets it through (0: no limit, as a location that
    also takes large publishes may have), the 1 MiB limit of op=ack must
    still hold before the body is copied into memory: 413, and the
    worker's peak memory does not grow by the body's size."""
    n = memqd_factory()
    g = gateway_factory([n], loc=CLIENT_LOC, workers=1,
                        loc_extra="client_max_body_size 0;")
    q = qname()
    a = node_addr(n)
    # warm up: the worker has served one acknowledgement
    r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                      data=("%s/1" % a).encode(), timeout=10 * SLOW)
    assert r.status_code == 200, r.text
    before = _worker_peak_rss(g)
    size = 64 * 1024 * 1024
    piece = (("%s/1\n" % a) * (1024 * 1024 // (len(a) + 3))).encode()

    def chunks():
        sent = 0
        while sent < size:
            yield piece
            sent += len(piece)

    r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                      data=chunks(), timeout=60 * SLOW)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "body too large"
    grown = _worker_peak_rss(g) - before
    assert grown < 16 * 1024, "peak RSS grew by %d kB" % grown


def test_more_replies_than_lines_is_not_success(gateway_factory):
    """A node that answers the last line of a window twice (both replies
    in one segment) is broken, and which reply belongs to that line is
    unknown: the line is unknown (503), not counted as settled, and the
    node is marked; the lines answered before it stay counted."""
    from gwutil import ScriptedNode

    def answer(line, n):
        if line.startswith(b"touch ") and line.split(b" ")[1].endswith(
                b"/3"):
            return (0, b"TOUCHED\r\nNOT_FOUND\r\n")
        if line.startswith(b"touch "):
            return (0, b"TOUCHED\r\n")
        if line.startswith(b"delete "):
            return (0, b"DELETED\r\nDELETED\r\n")
        return (0, b"ERROR\r\n")

    fake = ScriptedNode(answer)
    try:
        g = gateway_factory([fake.addr], loc=CLIENT_LOC)
        g.expect_errors()
        q = qname()
        a = node_addr(fake.addr)
        r = requests.post(g.url("/mq"), params={"topic": q, "op": "release"},
                          data=("%s/1\n%s/2\n%s/3" % (a, a, a)).encode(),
                          timeout=10 * SLOW)
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "node failed", "status": 503,
                            "acked": 2, "not_found": 0, "unknown": 1}
        r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                          data=("%s/7" % a).encode(), timeout=10 * SLOW)
        assert r.status_code == 503, r.text
        assert r.json()["unknown"] == 1 and r.json()["acked"] == 0
        assert g.node_status(a)["fails"] >= 1
    finally:
        fake.close()
