"""No local port left (DESIGN §2: a shortage of the gateway's own marks no
node).  The node and nginx run in a network namespace of their own whose
ephemeral port range is four ports; a process in it holds a connection to
the node on each, so the gateway's connect() to the node fails with
EADDRNOTAVAIL, for real.  Every path that opens a node connection (a
publish through a pipe, a publish too big for one, a batch, a consume, an
op=ack, the status's queue stats) answers 503 or leaves the node out, and
the node stays up with no failure counted (max_fails 1: a single mark
would take it out for fail_timeout).  Once the ports are free, the very
next publish is stored (no wait for fail_timeout).

Skipped only where namespaces cannot be made (not root, `ip netns add`
refused)."""

import requests

from gwutil import SLOW, node_addr, qname
from netns_util import IP, NsMemqd, PortHolder, set_port_range

ACK_LOC = """
        location /mqc {
            memq_pass main;
            memq_key $arg_topic;
            memq_ack client;
        }
"""


def _healthy(g, addr):
    st = g.node_status(addr)
    assert st["state"] == "up" and st["fails"] == 0, st


def test_no_local_port_marks_nothing(netlab_factory, gateway_factory,
                                     tmp_path):
    h = netlab_factory(1).hosts[0]
    set_port_range(h, 40000, 40003)
    d = tmp_path / "node"
    d.mkdir()
    node = NsMemqd(d, h)
    holder = PortHolder(h, (h.addr, NsMemqd.PORT))
    try:
        node.start()
        addr = node_addr(node)
        g = gateway_factory([addr], workers=1, host=h.addr,
                            argv_prefix=[IP, "netns", "exec", h.ns],
                            cluster_extra="max_fails 1; fail_timeout 60s;",
                            server_extra=ACK_LOC)
        q = qname()

        holder.start()
        assert 1 <= holder.held <= 4, holder.held

        # a pipe's connection; a message too big for a pipe; a batch
        for body, ndjson in ((b"x", False), (b"y" * 20000, False),
                             (b"a\nb\n", True)):
            r = g.publish(q, body, ndjson=ndjson)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "no node took the message"
            _healthy(g, addr)

        r = g.consume(q)
        assert r.status_code == 503, r.text
        _healthy(g, addr)

        r = requests.post(g.url("/mqc"), params={"topic": q, "op": "ack"},
                          data=("%s/1" % addr).encode(), timeout=10 * SLOW)
        assert r.status_code == 503, r.text
        assert r.json()["unknown"] == 1, r.text
        _healthy(g, addr)

        r = g.status(queues=1)
        _healthy(g, addr)

        # the shortage is told as such, and as nothing worse
        log = g.error_text()
        assert "Cannot assign requested address" in log
        assert "marked down" not in log

        holder.release()

        r = g.publish(q, b"after")
        assert r.status_code == 201, r.text
        assert g.lines(q) == [b"after"]
        st = g.status(queues=1).json()
        assert q in str(st), st
        _healthy(g, addr)
    finally:
        holder.release()
        if node.proc is not None:
            node.stop_checked()
