"""POST op=ack|release|touch at its edges: a node that cannot be had at
once while the body came late, bodies far over the limit, and nodes that
answer more than they were asked."""

import socket
import threading

import requests

from gwutil import SLOW, ScriptedNode, node_addr, qname, read_headers

CLIENT_LOC = """
            memq_pass main;
            memq_key $arg_topic;
            memq_wait_max 10s;
            memq_ack client;
"""


def _fake_gateway(gateway_factory, answer, send_size=None, workers=2):
    """A scripted node and a client-mode gateway in front of it: (node,
    gateway, topic, the node's address)."""
    fake = ScriptedNode(answer, send_size=send_size)
    g = gateway_factory([fake.addr], loc=CLIENT_LOC, workers=workers)
    return fake, g, qname(), node_addr(fake.addr)


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
    def answer(line, n):
        if line.startswith(b"touch ") and line.split(b" ")[1].endswith(
                b"/3"):
            return (0, b"TOUCHED\r\nNOT_FOUND\r\n")
        if line.startswith(b"touch "):
            return (0, b"TOUCHED\r\n")
        if line.startswith(b"delete "):
            return (0, b"DELETED\r\nDELETED\r\n")
        return (0, b"ERROR\r\n")

    fake, g, q, a = _fake_gateway(gateway_factory, answer)
    try:
        g.expect_errors()
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


def test_node_replies_out_of_bounds(gateway_factory):
    """A count larger than the line's ids, a reply of the wrong kind, and a
    node that closes after some lines: 503 with exactly the lines
    answered counted and the rest unknown (A + N + U = ids sent), the node
    marked; never a success for what the node did not say."""
    def answer(line, n):
        ids = line.split(b" ")[1].rsplit(b"/", 1)[1].split(b",")
        first = int(ids[0])
        if first == 500:
            return (0, b"DELETED %d\r\n" % (len(ids) + 1))
        if first == 600:
            return (0, b"TOUCHED\r\n")
        if first == 700:
            return (0, b"", True)
        if line.startswith(b"touch "):
            return (0, b"TOUCHED\r\n")
        return (0, b"DELETED %d\r\n" % len(ids) if len(ids) > 1
                else b"DELETED\r\n")

    fake, g, q, a = _fake_gateway(gateway_factory, answer)
    try:
        g.expect_errors()

        def post(op, nums):
            r = requests.post(g.url("/mq"), params={"topic": q, "op": op},
                              data="\n".join("%s/%d" % (a, x)
                                             for x in nums).encode(),
                              timeout=10 * SLOW)
            return r.status_code, r.json()

        # a list whose count is more than its ids: that line is unknown
        st, j = post("ack", range(500, 600))
        assert st == 503, j
        assert j["acked"] + j["not_found"] + j["unknown"] == 100, j
        assert j["unknown"] >= 2 and j["acked"] == 0, j
        # DELETED expected, TOUCHED said
        st, j = post("ack", [600])
        assert st == 503 and j["unknown"] == 1 and j["acked"] == 0, j
        # closed after two lines were answered
        st, j = post("release", [1, 2, 700, 3, 4])
        assert st == 503, j
        assert j == {"error": "node failed", "status": 503, "acked": 2,
                     "not_found": 0, "unknown": 3}, j
        assert g.node_status(a)["fails"] >= 1
    finally:
        fake.close()


def test_replies_one_byte_at_a_time(gateway_factory):
    """A node whose every reply byte is a segment of its own: the window's
    replies are assembled, counted exactly, and the connection is pooled
    (the next request reuses it)."""
    conns = set()

    def answer(line, n):
        conns.add(threading.get_ident())
        num = int(line.split(b" ")[1].rsplit(b"/", 1)[1])
        return (0, b"TOUCHED\r\n" if num % 2 else b"NOT_FOUND\r\n")

    fake, g, q, a = _fake_gateway(gateway_factory, answer, send_size=1,
                                  workers=1)
    try:
        for _ in range(2):
            r = requests.post(g.url("/mq"), params={"topic": q,
                                                    "op": "release"},
                              data=",".join("%s/%d" % (a, x)
                                            for x in range(1, 41)).encode(),
                              timeout=30 * SLOW)
            assert r.status_code == 200, r.text
            assert r.json() == {"acked": 20, "not_found": 20}
        assert len(conns) == 1
    finally:
        fake.close()


def test_ack_counts_in_the_access_log(gateway_factory, memqd_factory):
    """$memq_messages, $memq_nodes_ok and $memq_nodes_failed of an
    acknowledgement: the ids acknowledged, the nodes that answered it all,
    the nodes that failed."""
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    g.expect_errors()
    q = qname()
    ids = ["%s/%d" % (node_addr(n), i) for n in nodes for i in (1, 2)]
    r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                      data="\n".join(ids).encode(), timeout=10 * SLOW)
    assert r.json() == {"acked": 0, "not_found": 4}
    line = g.wait_access(lambda l: q in l and "op=ack" in l)
    assert line.startswith("200 0 2 0 "), line
    nodes[1].kill()
    r = requests.post(g.url("/mq"), params={"topic": q, "op": "release"},
                      data="\n".join(ids).encode(), timeout=10 * SLOW)
    assert r.status_code == 503, r.text
    line = g.wait_access(lambda l: q in l and "op=release" in l)
    assert line.startswith("503 0 1 1 "), line
