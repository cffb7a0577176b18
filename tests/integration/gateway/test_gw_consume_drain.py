"""Consume in drain mode (wait=0): every message of every node exactly once,
acknowledged afterwards, max exact, bad arguments (DESIGN §2, §3)."""

import pytest

from gwutil import fill, node_items, qname, total_items


def test_drain_all_nodes(gw, nodes3):
    q = qname()
    sent = fill(nodes3, q, 300)
    lines = gw.lines(q)
    assert len(lines) == 300
    assert set(lines) == sent
    for n in nodes3:
        assert node_items(n, q) == (0, 0), "left on %s" % n.port
    line = gw.wait_access(lambda l: q in l and l.startswith("200"))
    assert line.split()[1:4] == ["300", "3", "0"], line


def test_per_node_order_kept(gw, nodes3):
    q = qname()
    fill(nodes3[:1], q, 200, fmt="n%05d")
    lines = gw.lines(q)
    assert lines == [b"n%05d" % i for i in range(200)]


def test_empty_queue_is_empty_200(gw):
    r = gw.consume(qname())
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.headers.get("Transfer-Encoding") == "chunked"


def test_run_twice_no_leak(gw, nodes3):
    for _ in range(2):
        q = qname()
        sent = fill(nodes3, q, 50)
        assert set(gw.lines(q)) == sent
        assert gw.lines(q) == []


@pytest.mark.parametrize("mx", [1, 2, 7, 64, 299])
def test_max_is_exact(gw, nodes3, mx):
    q = qname()
    sent = fill(nodes3, q, 300)
    lines = gw.lines(q, max=mx)
    assert len(lines) == mx
    assert set(lines) <= sent
    assert total_items(nodes3, q) == 300 - mx
    for n in nodes3:
        assert node_items(n, q)[1] == 0, "items left open"
    rest = gw.lines(q)
    assert set(lines) | set(rest) == sent and len(rest) == 300 - mx


def test_small_batches(gateway_factory, nodes3):
    g = gateway_factory(nodes3, loc_extra="memq_batch 1;")
    q = qname()
    sent = fill(nodes3, q, 60)
    assert set(g.lines(q)) == sent
    assert total_items(nodes3, q) == 0


def test_large_values(gw, nodes3):
    q = qname()
    big = [bytes([65 + i]) * (200000 + i) for i in range(6)]
    from gwutil import Client
    for i, b in enumerate(big):
        c = Client(nodes3[i % 3].addr)
        c.store(q, b)
        c.close()
    assert sorted(gw.lines(q)) == sorted(big)


@pytest.mark.parametrize("args,err", [
    ({"format": "xml"}, "bad format"),
    ({"wait": "-1"}, "bad wait"),
    ({"wait": "abc"}, "bad wait"),
    ({"max": "0"}, "bad max"),
    ({"max": "-3"}, "bad max"),
    ({"max": "x"}, "bad max"),
])
def test_bad_arguments(gw, args, err):
    r = gw.consume(qname(), **args)
    assert r.status_code == 400
    assert r.json() == {"error": err, "status": 400}


def test_head_takes_nothing(gw, nodes3):
    import requests
    q = qname()
    fill(nodes3, q, 5)
    r = requests.head(gw.url("/mq"), params={"topic": q}, timeout=5)
    assert r.status_code == 200
    assert total_items(nodes3, q) == 5


def test_other_methods_405(gw):
    import requests
    r = requests.put(gw.url("/mq"), params={"topic": qname()}, data=b"x",
                     timeout=5)
    assert r.status_code == 405
    assert r.json() == {"error": "method not allowed", "status": 405}
