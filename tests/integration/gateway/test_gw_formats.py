"""Output framing (ndjson, sse, raw) exactly per DESIGN §3, and inflating
values stored with the compress flag (zlib, gzip, raw deflate)."""

import gzip
import zlib

import requests

from gwutil import Client, node_addr, qname
from gwutil import store_all as _store


def _gets_seqs(node, q):
    """Sequence numbers the items of q will have (peeked with gets)."""
    c = Client(node.addr)
    try:
        it = c.get(q + "/peek", cmd="gets")
        return it.cas
    finally:
        c.close()


def test_ndjson_replaces_cr_lf(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    _store(n, q, [b'{"a":\r\n"b"}', b"", b"x\ry\nz", b"\n"])
    r = g.consume(q)
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.content == b'{"a":  "b"}\n\nx y z\n \n'


def test_ndjson_cr_lf_at_every_place_of_a_word(gateway_factory,
                                               memqd_factory):
    """The line copy goes eight bytes a step: CR and LF at every offset of
    a message of 1 to 40 bytes, two of them in one word, and bytes that
    differ from CR or LF by one bit, all come out as the byte loop would
    make them."""
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    values = []
    for size in range(1, 41):
        for at in range(size):
            for mark in (b"\r", b"\n", b"\r\n"):
                v = bytearray(b"\x0b\x0c\x0e\x8a\x8d"[i % 5]
                              for i in range(size))
                v[at:at + len(mark)] = mark
                values.append(bytes(v[:max(size, at + len(mark))]))
    _store(n, q, values)
    r = g.consume(q)
    want = b"".join(v.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"
                    for v in values)
    assert r.content == want


def test_sse_framing_and_ids(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    _store(n, q, [b"one", b"a\r\nb\rc\nd", b"", b"end\n"])
    seq = _gets_seqs(n, q)
    r = g.consume(q, format="sse")
    assert r.headers["Content-Type"] == "text/event-stream"
    a = node_addr(n)
    assert r.content.decode() == (
        "id: %s/%d\ndata: one\n\n"
        "id: %s/%d\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        "id: %s/%d\ndata: \n\n"
        "id: %s/%d\ndata: end\ndata: \n\n"
        % (a, seq, a, seq + 1, a, seq + 2, a, seq + 3))


def test_accept_event_stream_selects_sse(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    _store(n, q, [b"hi"])
    r = g.consume(q, headers={"Accept": "text/html, text/event-stream"})
    assert r.headers["Content-Type"] == "text/event-stream"
    assert b"data: hi\n\n" in r.content


def test_raw_is_binary_safe(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    vals = [bytes(range(256)), b"", b"\r\n\r\n", b"x" * 70000]
    _store(n, q, vals)
    r = g.consume(q, format="raw")
    assert r.headers["Content-Type"] == "application/octet-stream"
    expect = b"".join(b"%d\r\n%s\r\n" % (len(v), v) for v in vals)
    assert r.content == expect


def test_inflate_values(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n])
    q = qname()
    text = b"hello compressed world " * 50
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    rawdef = co.compress(text) + co.flush()
    other = zlib.compress(b"other")
    _store(n, q, [zlib.compress(text), gzip.compress(text), rawdef],
           flags=1)
    _store(n, q, [b"plain"], flags=0)
    _store(n, q, [other], flags=2)
    r = g.consume(q, format="raw")
    expect = [text, text, text, b"plain", other]
    assert r.content == b"".join(b"%d\r\n%s\r\n" % (len(v), v)
                                 for v in expect)


def test_bad_compressed_value_passed_through(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n], loc_extra="memq_inflate_max_size 1k;")
    q = qname()
    bomb = zlib.compress(b"\0" * 100000)
    _store(n, q, [b"not compressed at all", bomb], flags=1)
    r = g.consume(q, format="raw")
    expect = [b"not compressed at all", bomb]
    assert r.content == b"".join(b"%d\r\n%s\r\n" % (len(v), v)
                                 for v in expect)
    assert g.node_status(node_addr(n))["inflate_errors"] == 2


def test_inflate_max_size_of_4g_and_more_inflates(gateway_factory,
                                                  memqd_factory):
    # limits of 4 GiB and more are accepted and inflate as any other (the
    # buffer handed to zlib is sized in 32-bit steps, never wrapped)
    n = memqd_factory()
    for limit in ("4096m", "8192m", "4194305k"):
        g = gateway_factory([n], loc_extra="memq_inflate_max_size %s;"
                            % limit)
        q = qname()
        text = b"memq " * 2000
        _store(n, q, [zlib.compress(text)], flags=1)
        r = g.consume(q, format="raw")
        assert r.content == b"%d\r\n%s\r\n" % (len(text), text), limit
        assert g.node_status(node_addr(n))["inflate_errors"] == 0
        g.stop()


def test_inflate_off_passes_through(gateway_factory, memqd_factory):
    n = memqd_factory()
    loc = """
            memq_pass main;
            memq_key $arg_topic;
    """
    g = gateway_factory([n], loc=loc)
    q = qname()
    z = zlib.compress(b"abc")
    _store(n, q, [z], flags=1)
    r = g.consume(q, format="raw")
    assert r.content == b"%d\r\n%s\r\n" % (len(z), z)


def test_custom_compress_flag(gateway_factory, memqd_factory):
    n = memqd_factory()
    loc = """
            memq_pass main;
            memq_key $arg_topic;
            memq_inflate on;
            memq_compress_flag 2;
    """
    g = gateway_factory([n], loc=loc)
    q = qname()
    _store(n, q, [zlib.compress(b"php style")], flags=2)
    assert g.lines(q) == [b"php style"]


def test_key_from_complex_value(gateway_factory, memqd_factory):
    n = memqd_factory()
    loc = """
            memq_pass main;
            memq_key $arg_biz.$arg_topic;
    """
    g = gateway_factory([n], loc=loc)
    q = qname()
    _store(n, "shop." + q, [b"order"])
    r = requests.get(g.url("/mq"), params={"biz": "shop", "topic": q},
                     timeout=10)
    assert r.content == b"order\n"
