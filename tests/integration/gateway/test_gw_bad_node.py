"""A node that breaks the protocol (errors instead of values, malformed or
cut replies, more values than asked for) is failed and counted; the stream
goes on from the others and the worker survives (DESIGN §2; STYLE §4)."""

import pytest

from gwutil import ScriptedNode, fill, node_addr, qname


def _value(line, data, extra=b""):
    key = line.split()[1]
    return b"VALUE %s 0 %d\r\n%s\r\n%sEND\r\n" % (key, len(data), data, extra)


TOO_MANY = b"SERVER_ERROR too many connections\r\n"


# memqd says "too many connections" only as the first line of a connection
# it just accepted: after a value, or as the reply to a later request on
# the connection, it is the node's fault (before: its shortage, the node
# never marked)
BAD = {
    "too_many_after_a_value": lambda line, n: (
        0, b"VALUE %s 0 1\r\nx\r\n" % line.split()[1] + TOO_MANY),
    "too_many_on_a_later_request": lambda line, n: (
        0, _value(line, b"x") if n == 1 else TOO_MANY),
    "server_error": lambda line, n: (0, b"SERVER_ERROR boom\r\n"),
    "error": lambda line, n: (0, b"ERROR\r\n"),
    "garbage": lambda line, n: (0, b"HELLO THERE\r\n"),
    "bad_length": lambda line, n: (0, b"VALUE k 0 abc\r\nxyz\r\nEND\r\n"),
    "no_crlf_after_value": lambda line, n: (0, b"VALUE k 0 3\r\nabcXYEND\r\n"),
    "too_many_values": lambda line, n: (0, _value(line, b"a")
                                        + b"VALUE k 0 1\r\nb\r\nEND\r\n"),
    "bytes_after_end": lambda line, n: (0, b"END\r\nEND\r\n"),
    "huge_length": lambda line, n: (0, b"VALUE k 0 99999999999\r\n"),
    "cut_value": lambda line, n: (0, b"VALUE k 0 100\r\nshort"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_node_is_failed(gateway_factory, memqd_factory, kind):
    real = memqd_factory()
    fake = ScriptedNode(BAD[kind])
    try:
        g = gateway_factory([fake.addr, real],
                            timeouts="connect_timeout 1s; read_timeout 1s;")
        g.expect_errors()
        q = qname()
        sent = fill([real], q, 10)
        status, body, ended = g.stream(
            q, format="raw" if kind == "huge_length" else "ndjson")
        assert status == 200
        # the bad node never said it was empty: no normal end (issue 8)
        assert not ended
        if kind != "huge_length":
            lines = set(body.split(b"\n")[:-1])
            assert sent <= lines
        st = g.node_status(node_addr(fake.addr))
        assert st["fails"] >= 1 and st["last_error"], st
        line = g.wait_access(lambda l: q in l and l.startswith("200"))
        assert line.split()[3] == "1", line
    finally:
        fake.close()


def test_bad_node_on_publish(gateway_factory, memqd_factory):
    real = memqd_factory()
    fake = ScriptedNode(lambda line, n: (0, b"SERVER_ERROR queue full\r\n")
                        if line.startswith(b"set") else None)
    try:
        g = gateway_factory([fake.addr, real], workers=1,
                            weights={node_addr(fake.addr): 9})
        g.expect_errors()
        q = qname()
        r = g.publish(q, b"one")
        assert r.status_code == 201, r.text
        assert r.json()["node"] == node_addr(real)
        # a full queue is not a failure: the fake stays up, and its
        # silence on get cuts the stream after the real node's message
        assert g.node_status(node_addr(fake.addr))["fails"] == 0
        status, body, ended = g.stream(q)
        assert status == 200 and body == b"one\n" and not ended
    finally:
        fake.close()
