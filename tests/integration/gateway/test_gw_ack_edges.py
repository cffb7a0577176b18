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
