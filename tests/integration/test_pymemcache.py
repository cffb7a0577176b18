"""An ordinary memcache client library works unchanged: pymemcache from
Debian (DESIGN: anything any memcache client can do is part of the
product)."""

import re

import pytest

from memqlib import qname


def test_set_get(pmc):
    c = pmc()
    q = qname()
    assert c.set(q, b"hello", noreply=False) is True
    assert c.get(q) == b"hello"
    assert c.get(q) is None


def test_set_get_str_and_flags(pmc):
    c = pmc()
    q = qname()
    assert c.set(q, "text", noreply=False) is True
    assert c.get(q) == b"text"


def test_fifo(pmc):
    c = pmc()
    q = qname()
    for i in range(10):
        assert c.set(q, b"v%d" % i, noreply=False)
    assert [c.get(q) for _ in range(10)] == [b"v%d" % i for i in range(10)]


def test_noreply_sets(pmc):
    c = pmc(default_noreply=True)
    q = qname()
    for i in range(20):
        assert c.set(q, b"n%d" % i) is True
    got = [c.get(q) for _ in range(20)]
    assert got == [b"n%d" % i for i in range(20)]
    assert c.get(q) is None


def test_get_many(pmc):
    c = pmc()
    a, b, missing = qname(), qname(), qname()
    c.set(a, b"A", noreply=False)
    c.set(b, b"B", noreply=False)
    assert c.get_many([a, b, missing]) == {a: b"A", b: b"B"}
    assert c.get_many([a, b]) == {}


def test_get_with_options(pmc):
    c = pmc()
    q = qname()
    c.set(q, b"x", noreply=False)
    c.set(q, b"y", noreply=False)
    assert c.get(q + "/peek") == b"x"
    assert c.get(q + "/open") == b"x"
    assert c.get(q + "/close/open") == b"y"
    assert c.get(q + "/close") is None
    assert c.get(q + "/t=50") is None


def test_gets(pmc):
    c = pmc()
    q = qname()
    c.set(q, b"x", noreply=False)
    c.set(q, b"y", noreply=False)
    assert c.gets(q) == (b"x", b"1")
    assert c.gets(q) == (b"y", b"2")


def test_stats(pmc):
    c = pmc()
    q = qname()
    c.set(q, b"abc", noreply=False)
    st = c.stats()
    for k in (b"pid", b"uptime", b"version", b"curr_connections",
              b"total_connections", b"cmd_get", b"cmd_set", b"get_hits",
              b"get_misses", b"curr_items", b"total_items", b"bytes"):
        assert k in st, k
    assert int(st[("queue_%s_items" % q).encode()]) == 1
    assert int(st[("queue_%s_bytes" % q).encode()]) == 3


def test_version(pmc):
    v = pmc().version()
    assert re.fullmatch(rb"memqd \d+\.\d+\.\d+", v), v


def test_delete(pmc):
    c = pmc()
    q = qname()
    c.set(q, b"x", noreply=False)
    assert c.delete(q, noreply=False) is True
    assert c.delete(q, noreply=False) is False
    assert c.get(q) is None


def test_binary_value(pmc):
    c = pmc()
    q = qname()
    v = bytes(range(256)) * 4 + b"\r\nEND\r\n"
    c.set(q, v, noreply=False)
    assert c.get(q) == v


def test_flush_all(pmc, server):
    if server.external:
        pytest.skip("flush_all would empty a shared server")
    c = pmc()
    q = qname()
    c.set(q, b"x", noreply=False)
    assert c.flush_all(noreply=False) is True
    assert c.get(q) is None


def test_unsupported_raise(pmc):
    from pymemcache.exceptions import MemcacheServerError
    c = pmc()
    q = qname()
    for op in (c.add, c.replace, c.append, c.prepend):
        try:
            op(q, b"x", noreply=False)
        except MemcacheServerError as e:
            assert b"not supported" in str(e).encode() or \
                "not supported" in str(e)
        else:
            raise AssertionError("%s did not fail" % op.__name__)
    # the connection is still in sync
    assert c.set(q, b"ok", noreply=False) is True
    assert c.get(q) == b"ok"


def test_two_clients(pmc):
    a, b = pmc(), pmc()
    q = qname()
    a.set(q, b"1", noreply=False)
    b.set(q, b"2", noreply=False)
    assert b.get(q) == b"1"
    assert a.get(q) == b"2"
