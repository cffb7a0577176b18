"""Edges of the consume stream in write mode: values that inflate only in
part, the end of a drain cut short, values larger than the gateway takes
(DESIGN §2, §3; docs/gateway.md "Consume")."""

import gzip
import zlib

from gwutil import Client, node_addr, qname


def _store(node, q, values, flags=0):
    c = Client(node.addr)
    try:
        for v in values:
            c.store(q, v, flags=flags)
    finally:
        c.close()


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
