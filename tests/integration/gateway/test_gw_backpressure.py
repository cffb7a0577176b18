"""Backpressure and the keepalive pool: a client that does not read stops
its own stream (nodes are asked for more only when the client took what
came before); node connections are reused (DESIGN §2; STYLE §6)."""

import time

from gwutil import (Client, Dechunker, fill, node_items, qname, read_headers,
                    total_items, wait_for)

MSG = 1000
BATCH = 16


def _taken(nodes, q, count):
    items = opened = 0
    for n in nodes:
        i, o = node_items(n, q)
        items += i
        opened += o
    return count - items - opened, opened


def test_slow_client_slows_its_stream(gateway_factory, nodes3):
    g = gateway_factory(nodes3, listen_extra="sndbuf=8192",
                        loc_extra="memq_batch %d;" % BATCH)
    q = qname()
    count = 3000
    sent = fill(nodes3, q, count, fmt="%04d" + "b" * (MSG - 4))
    s = g.raw_request("/mq?topic=%s" % q, rcvbuf=4096)
    status, hdrs, rest = read_headers(s)
    assert status == 200

    last = [None]

    def settled():
        now = _taken(nodes3, q, count)
        same = now == last[0]
        last[0] = now
        return same

    wait_for(settled, timeout=10, interval=0.3,
             what="the stream stalls on the client")
    acked, opened = last[0]
    assert opened <= 3 * BATCH
    # acknowledged = written to the socket: bounded by the buffers, not by
    # the backlog
    assert acked <= 3 * BATCH + 64, (acked, opened)

    d = Dechunker()
    d.feed(rest)
    s.settimeout(30)
    while not d.done:
        chunk = s.recv(65536)
        assert chunk
        d.feed(chunk)
    s.close()
    got = d.data.split(b"\n")[:-1]
    assert len(got) == count and set(got) == sent
    assert total_items(nodes3, q) == 0


def _total_connections(node):
    c = Client(node.addr)
    try:
        return int(c.stats()["total_connections"])
    finally:
        c.close()


def test_connections_are_reused(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n], workers=1)
    q = qname()
    assert g.publish(q, b"warm").status_code == 201
    assert g.lines(q) == [b"warm"]
    before = _total_connections(n)
    for i in range(20):
        assert g.publish(q, b"m%d" % i).status_code == 201
        assert g.lines(q) == [b"m%d" % i]
    # our own stats connections count too: one each
    assert _total_connections(n) - before <= 1 + 3


def test_keepalive_off_closes(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n], workers=1, cluster_extra="keepalive 0;")
    q = qname()
    before = _total_connections(n)
    for i in range(10):
        assert g.publish(q, b"m%d" % i).status_code == 201
    assert _total_connections(n) - before >= 10
    assert len(g.lines(q)) == 10


def test_idle_pooled_connection_closed_by_node(gateway_factory,
                                               memqd_factory):
    """A pooled connection the node closed is noticed, not reused."""
    n = memqd_factory()
    g = gateway_factory([n], workers=1)
    q = qname()
    assert g.publish(q, b"a").status_code == 201
    port = n.port
    n.stop_checked()
    n.start(port=port)
    wait_for(lambda: g.node_status("%s:%d" % n.addr)["pool_idle"] == 0,
             timeout=5, what="stale pooled connection dropped")
    t0 = time.monotonic()
    assert g.publish(q, b"b").status_code == 201
    assert time.monotonic() - t0 < 1
    assert sorted(g.lines(q)) == [b"a", b"b"]
