"""memq_status: JSON and Prometheus, counters summed over workers,
?queues=1 from each node's stats, zones kept across a reload (DESIGN §2,
§3)."""

import threading

import pytest

from gwutil import (Client, ScriptedNode, fill, node_addr, qname,
                    read_headers, wait_for)

parser = pytest.importorskip("prometheus_client.parser")

NODE_FIELDS = {"addr", "source", "state", "weight", "fails", "last_error",
               "pool_idle", "pool_busy", "msgs_in", "msgs_out", "bytes_in",
               "bytes_out"}


def _sum(st, field):
    return sum(n[field] for n in st["clusters"][0]["nodes"])


def test_json_shape(gateway_factory, nodes3):
    addrs = [node_addr(n) for n in nodes3]
    g = gateway_factory(nodes3, weights={addrs[2]: 3})
    r = g.status()
    assert r.headers["Content-Type"] == "application/json"
    st = r.json()
    assert len(st["clusters"]) == 1
    cl = st["clusters"][0]
    assert cl["name"] == "main" and cl["streams_active"] == 0
    assert [n["addr"] for n in cl["nodes"]] == addrs
    for n in cl["nodes"]:
        assert NODE_FIELDS <= set(n)
        assert n["source"] == "static" and n["state"] == "up"
        assert n["fails"] == 0 and n["last_error"] == ""
    assert [n["weight"] for n in cl["nodes"]] == [1, 1, 3]


def test_counters_summed_over_workers(gw, nodes3):
    q = qname()
    for i in range(20):
        assert gw.publish(q, b"%02d" % i).status_code == 201
    st = gw.status().json()
    assert _sum(st, "msgs_in") == 20 and _sum(st, "bytes_in") == 40
    assert len(gw.lines(q)) == 20
    st = gw.status().json()
    assert _sum(st, "msgs_out") == 20 and _sum(st, "bytes_out") == 40
    # keepalive: connections went back to the pools
    wait_for(lambda: _sum(gw.status().json(), "pool_busy") == 0, timeout=5,
             what="no busy node connection")
    assert _sum(gw.status().json(), "pool_idle") >= 1


def test_messages_out_exact_per_node(gw, nodes3):
    """Messages out are counted once a read, per node: every node's
    msgs_out and bytes_out match what it held, over many reads, several
    streams and both acknowledgement modes."""
    q = qname()
    held = []
    for k, n in enumerate(nodes3):
        c = Client(n.addr)
        try:
            data = [b"n%d-%s" % (k, b"x" * (i % 300)) for i in range(400 + k)]
            for d in data:
                c.store(q, d)
        finally:
            c.close()
        held.append((len(data), sum(len(d) for d in data)))
    before = gw.status().json()["clusters"][0]["nodes"]
    half = sum(m for m, _ in held) // 2
    assert len(gw.lines(q, max=half)) == half
    assert len(gw.lines(q, ack="client", lease=60)) == sum(
        m for m, _ in held) - half
    after = gw.status().json()["clusters"][0]["nodes"]
    for b, a, (msgs, size) in zip(before, after, held):
        assert a["msgs_out"] - b["msgs_out"] == msgs, a
        assert a["bytes_out"] - b["bytes_out"] == size, a


def test_streams_active(gw):
    q = qname()
    s = gw.raw_request("/mq?topic=%s&wait=5" % q)
    read_headers(s)
    st = gw.status().json()["clusters"][0]
    assert st["streams_active"] == 1
    assert _sum(gw.status().json(), "pool_busy") == 3
    s.close()
    wait_for(lambda: gw.status().json()["clusters"][0]["streams_active"]
             == 0, timeout=5, what="stream gone")


def test_queues(gw, nodes3):
    q1, q2 = qname("st_a"), qname("st_b")
    fill(nodes3, q1, 9, fmt="%03d")
    fill(nodes3[:1], q2, 2, fmt="%05d")
    c = Client(nodes3[1].addr)
    it = c.get(q1 + "/open")        # one open item on node 2
    assert it is not None
    st = gw.status(queues="1").json()["clusters"][0]
    qs = st["queues"]
    assert qs[q1]["items"] == 8 and qs[q1]["open_items"] == 1
    assert qs[q1]["bytes"] == 8 * 3
    assert qs[q2] == {"items": 2, "open_items": 0, "bytes": 10,
                      "age_ms": qs[q2]["age_ms"], "total_items": 2,
                      "leased_items": 0, "dead_lettered_items": 0}
    assert qs[q1]["total_items"] == 9
    assert qs[q2]["age_ms"] >= 0
    c.close()
    text = gw.status(queues="1", format="prometheus").text
    assert 'memq_queue_items{cluster="main",queue="%s"} 2' % q2 in text
    # a lease is counted apart from open items
    c = Client(nodes3[0].addr)
    assert c.get(q2 + "/lease=60000") is not None
    qs = gw.status(queues="1").json()["clusters"][0]["queues"]
    assert qs[q2]["leased_items"] == 1 and qs[q2]["items"] == 1
    c.close()


def test_queues_with_leases(gw, nodes3):
    """A node's lease stats (queue_<q>_leased_items and the like) are
    fields of <q>, never queues of their own named <q>_leased."""
    q = qname("st_l")
    fill(nodes3[:1], q, 4, fmt="%02d")
    c = Client(nodes3[0].addr)
    assert len(c.get_items(q + "/lease=600000/n=3")) == 3
    st = gw.status(queues="1").json()["clusters"][0]
    qs = st["queues"]
    assert qs[q]["items"] == 1 and qs[q]["bytes"] == 2
    for name in (q + "_leased", q + "_redelivered", q + "_dead_lettered"):
        assert name not in qs, name
    c.close()


def test_prometheus(gw, nodes3):
    q = qname()
    assert gw.publish(q, b"x").status_code == 201
    r = gw.status(format="prometheus")
    assert r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    for n in nodes3:
        assert 'memq_node_up{cluster="main",node="%s"} 1' % node_addr(n) \
            in text
    for m in ("memq_node_messages_in_total", "memq_node_messages_out_total",
              "memq_node_failures_total", "memq_pool_idle_connections"):
        assert "# TYPE %s " % m in text
    assert 'memq_streams_active{cluster="main"} 0' in text
    total = sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                if l.startswith("memq_node_messages_in_total{"))
    assert total == 1


def prom_families(text):
    """{name: Metric} of Prometheus text read with the Prometheus client
    library's parser; every family has HELP and TYPE (a sample outside a
    declared family would come back untyped, without documentation)."""
    fams = {}
    for f in parser.text_string_to_metric_families(text):
        assert f.type in ("counter", "gauge"), "%s has no TYPE" % f.name
        assert f.documentation, "%s has no HELP" % f.name
        assert f.name not in fams, "family %s twice" % f.name
        fams[f.name] = f
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert "# HELP %s " % name in text, name
    return fams


def test_prometheus_parses(gw, nodes3):
    """Read with a real Prometheus parser; values agree with the JSON."""
    q1, q2 = qname("pa"), qname("pb.c-d_e")
    fill(nodes3, q1, 6)
    fill(nodes3[:1], q2, 4)
    for i in range(3):
        assert gw.publish(q2, b"p%d" % i).status_code == 201
    fams = prom_families(gw.status(format="prometheus", queues="1").text)
    st = gw.status().json()["clusters"][0]
    for name in ("memq_node_up", "memq_node_messages_in",
                 "memq_node_messages_out", "memq_node_failures",
                 "memq_pool_idle_connections", "memq_streams_active",
                 "memq_queue_items"):
        assert name in fams, name
    ups = {s.labels["node"]: s.value for s in fams["memq_node_up"].samples}
    assert ups == {n["addr"]: 1 for n in st["nodes"]}
    ins = {s.labels["node"]: s.value
           for s in fams["memq_node_messages_in"].samples}
    assert ins == {n["addr"]: n["msgs_in"] for n in st["nodes"]}
    assert sum(ins.values()) == 3
    items = {s.labels["queue"]: s.value
             for s in fams["memq_queue_items"].samples}
    assert items[q1] == 6 and items[q2] == 7
    assert all(s.labels["cluster"] == "main"
               for f in fams.values() for s in f.samples)


def test_prometheus_label_escaping(gateway_factory, memqd_factory):
    """A node's stats are input: a queue name with a quote and a
    backslash (a real node never has one) is escaped in its label and the
    text still parses, with the name intact."""
    real = memqd_factory()
    odd = 'we"ird\\q'

    def answer(line, n):
        if line == b"stats":
            return 0, (b"STAT pid 1\r\nSTAT queue_%s_items 5\r\n"
                       b"STAT queue_%s_open_items 0\r\nEND\r\n"
                       % (odd.encode(), odd.encode()))
        if line.startswith(b"get "):
            return 0, b"END\r\n"
        return 0, b"ERROR\r\n"

    fake = ScriptedNode(answer)
    try:
        g = gateway_factory([fake.addr, real])
        text = g.status(format="prometheus", queues="1").text
        assert 'queue="we\\"ird\\\\q"' in text
        fams = prom_families(text)
        items = {s.labels["queue"]: s.value
                 for s in fams["memq_queue_items"].samples}
        assert items[odd] == 5
    finally:
        fake.close()


def test_reload_keeps_zone(gw, nodes3):
    q = qname()
    for i in range(5):
        assert gw.publish(q, b"r").status_code == 201
    gw.reload()
    st = gw.status().json()
    assert _sum(st, "msgs_in") == 5
    for i in range(5):
        assert gw.publish(q, b"r").status_code == 201
    assert len(gw.lines(q)) == 10
    st = gw.status().json()
    assert _sum(st, "msgs_in") == 10 and _sum(st, "msgs_out") == 10


def test_reload_during_stream(gw, nodes3):
    """A HUP while a long poll runs: the old worker finishes the stream."""
    q = qname()
    result = {}

    def consume():
        result["r"] = gw.consume(q, wait=2)

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: gw.status().json()["clusters"][0]["streams_active"]
             == 1, timeout=5, what="stream running")
    gw.reload()
    c = Client(nodes3[0].addr)
    c.store(q, b"during reload")
    c.close()
    t.join(15)
    assert result["r"].status_code == 200
    got = result["r"].content.split(b"\n")[:-1]
    assert got in ([b"during reload"], []), got
    if not got:
        assert gw.lines(q) == [b"during reload"]
