"""Edges of the consume stream in write mode: values that inflate only in
part, the end of a drain cut short, values larger than the gateway takes
(DESIGN §2, §3; docs/gateway.md "Consume")."""

import gzip
import signal
import zlib

import pytest

from gwutil import (PRELOAD, SLOW, ScriptedNode, node_addr, node_items,
                    qname, read_headers, read_stream_after_close, wait_for,
                    workers_memory)
from gwutil import store_all as _store


def _raw(values):
    return b"".join(b"%d\r\n%s\r\n" % (len(v), v) for v in values)


def test_compressed_value_is_inflated_whole_or_passed_through(
        gateway_factory, memqd_factory):
    """A gzip value of two members (gzip a >> f; gzip b >> f) inflates to
    both, as gunzip does; a zlib or gzip stream followed by bytes that are
    not compressed does not inflate completely and goes out as stored.
    Neither may lose the bytes after the first stream."""
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    two = gzip.compress(b"first member ") + gzip.compress(b"second member")
    zjunk = zlib.compress(b"zlib part") + b"trailing bytes"
    gjunk = gzip.compress(b"gzip part") + b"trailing bytes"
    _store(n, q, [two, zjunk, gjunk], flags=1)
    r = g.consume(q, format="raw")
    assert r.status_code == 200
    assert r.content == _raw([b"first member second member", zjunk, gjunk])
    assert g.node_status(node_addr(n))["inflate_errors"] == 2


def test_value_of_exactly_inflate_max_size_inflates(gateway_factory,
                                                    memqd_factory):
    """memq_inflate_max_size bounds what a value may inflate to: a value
    of exactly that size inflates, one byte more is passed through."""
    n = memqd_factory()
    g = gateway_factory([n], loc_extra="memq_inflate_max_size 16k;")
    q = qname()
    exact = bytes(range(256)) * 64
    over = exact + b"x"
    _store(n, q, [zlib.compress(exact), gzip.compress(exact),
                  zlib.compress(over)], flags=1)
    r = g.consume(q, format="raw")
    assert r.content == _raw([exact, exact, zlib.compress(over)])
    assert g.node_status(node_addr(n))["inflate_errors"] == 1



@pytest.mark.parametrize("fmt", ["ndjson", "sse"])
def test_drain_cut_by_quit_is_not_a_drained_queue(gateway_factory,
                                                  memqd_factory, fmt):
    """wait=0 pushes everything and closes: its end says the queue is
    drained only when every node said it was empty.  A graceful quit cuts
    the drain short (a node had not answered yet): the end names that
    node, so the client can tell a cut drain from a drained queue."""
    real = memqd_factory()
    silent = ScriptedNode(lambda line, n: None)
    try:
        g = gateway_factory([real, silent.addr], workers=1,
                            timeouts="connect_timeout 1s; read_timeout 30s;")
        q = qname()
        _store(real, q, [b"one"])
        s = g.raw_request("/mq?topic=%s&format=%s" % (q, fmt))
        status, hdrs, rest = read_headers(s)
        assert status == 200
        wait_for(lambda: len(silent.lines) == 1, timeout=5,
                 what="the silent node asked")
        g.proc.send_signal(signal.SIGQUIT)
        d = read_stream_after_close(s, rest)
        assert d.done, "stream cut instead of ended"
        addr = node_addr(silent.addr)
        if fmt == "ndjson":
            assert d.data == b"one\n"
            assert d.trailers.get("memq-nodes-failed") == addr
        else:
            assert d.data.endswith(b'event: memq\ndata: {"nodes_failed":'
                                   b'["%s"]}\n\n' % addr.encode())
        assert g.proc.wait(10 * SLOW) == 0
        g.proc = None
    finally:
        silent.close()


def test_value_over_the_gateway_limit_marks_no_node(gateway_factory,
                                                    memqd_factory):
    """memqd takes items up to --max-item-size (at most 1g); the gateway
    streams values up to 64 MiB.  A bigger item is the queue's content,
    not a broken reply: the node leaves that stream (named at its end, the
    item goes back, the others' messages still come) and is not marked,
    so one item cannot take its node out of every stream."""
    big = memqd_factory(args=["--max-item-size", "80m"])
    other = memqd_factory()
    g = gateway_factory([big, other], workers=1,
                        cluster_extra="max_fails 1; fail_timeout 30s;")
    g.expect_errors()
    q = qname()
    _store(big, q, [b"b" * (64 * 1024 * 1024 + 1)])
    _store(other, q, [b"small"])
    status, body, ended = g.stream(q)
    assert status == 200 and body == b"small\n" and not ended
    st = g.node_status(node_addr(big))
    assert st["fails"] == 0 and st["state"] == "up", st
    assert node_items(big, q) == (1, 0)
    assert "over the gateway's limit" in g.error_text()


@pytest.mark.skipif(PRELOAD is not None, reason="the sanitizer keeps freed memory "
                    "in its quarantine: resident size says nothing")
def test_pooled_connection_does_not_keep_a_big_value_buffer(gateway_factory,
                                                            memqd_factory):
    """A 40 MiB value grows the node connection's read buffer to its size;
    the connection then goes back to the keepalive pool.  It must not keep
    40 MiB there after the stream ended (a pool of 16 such connections per
    node would hold 640 MiB for good)."""
    node = memqd_factory(args=["--max-item-size", "64m"])
    g = gateway_factory([node], workers=1)
    q = qname()
    big = b"v" * (40 * 1024 * 1024)
    _store(node, q, [big])
    assert g.publish(qname(), b"warm").status_code == 201
    before = workers_memory(g, "VmRSS")
    status, body, ended = g.stream(q, format="raw")
    assert status == 200 and ended and len(body) > len(big)
    assert g.node_status(node_addr(node))["pool_idle"] == 1
    kept = workers_memory(g, "VmRSS") - before
    assert kept < 16 * 1024 * 1024, kept
