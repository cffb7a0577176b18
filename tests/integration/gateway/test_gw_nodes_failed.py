"""
A stream names the nodes it could not reach: a last SSE event
`event: memq` with {"nodes_failed": [...]}, an HTTP trailer
`Memq-Nodes-Failed` for ndjson and raw (announced by `Trailer:`).  Nodes
that failed during the stream and nodes already marked down when it
started are both named; a stream where every node answered adds nothing.

The status keeps a node's last error with its time (last_error,
last_error_at) and a current `error` that clears once the node answers
again.
"""

import socket
import time

import requests

from gwutil import (SLOW, free_port, node_addr, node_items, qname,
                    read_headers, wait_for)

FAST_RETRY = "max_fails 1; fail_timeout 1s;"


def raw_stream(gw, path, version=b"HTTP/1.1"):
    """The whole answer to a GET on a raw socket: (status, headers, body
    bytes, trailers dict); chunked bodies are decoded."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10 * SLOW)
    s.sendall(b"GET " + path.encode() + b" " + version
              + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, hdrs, rest = read_headers(s)
    data = rest
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    if hdrs.get("transfer-encoding") != "chunked":
        return status, hdrs, data, {}
    body, trailers = b"", {}
    while True:
        i = data.index(b"\r\n")
        size = int(data[:i], 16)
        data = data[i + 2:]
        if size == 0:
            break
        body += data[:size]
        assert data[size:size + 2] == b"\r\n"
        data = data[size + 2:]
    head, _, after = data.partition(b"\r\n\r\n")
    assert after == b"", after
    for line in head.split(b"\r\n"):
        if line:
            k, v = line.decode().split(":", 1)
            trailers[k.strip().lower()] = v.strip()
    return status, hdrs, body, trailers


def test_sse_event_names_failed_nodes(gateway_factory, nodes3):
    gw = gateway_factory(nodes3)
    gw.expect_errors()
    q = qname("nf")
    # one message on a node that stays
    assert gw.publish(q, "kept").status_code == 201
    dead = next(n for n in nodes3 if node_items(n, q) == (0, 0))
    dead.kill()
    name = node_addr(dead)

    # the node fails during this stream
    r = gw.consume(q, format="sse")
    assert r.status_code == 200
    events = r.text.split("\n\n")
    assert "data: kept" in events[0]
    assert events[-2] == ('event: memq\ndata: {"nodes_failed":["%s"]}'
                          % name), r.text
    assert events[-1] == ""

    # marked down now: left out from the start, still named
    r = gw.consume(q, format="sse")
    assert r.text == 'event: memq\ndata: {"nodes_failed":["%s"]}\n\n' % name
    line = gw.wait_access(lambda l: "format=sse" in l and
                          l.startswith("200 0 2 "), what="second drain")
    assert line


def test_trailer_ndjson_and_raw(gateway_factory, nodes3):
    gw = gateway_factory(nodes3)
    gw.expect_errors()
    q = qname("tr")
    for i in range(6):
        assert gw.publish(q, "m%d" % i).status_code == 201

    # every node answered: the trailer is announced, and absent
    st, hdrs, body, trailers = raw_stream(gw, "/mq?topic=%s&max=1" % q)
    assert st == 200 and hdrs["trailer"] == "Memq-Nodes-Failed"
    assert body.count(b"\n") == 1 and trailers == {}

    nodes3[1].kill()
    name = node_addr(nodes3[1])
    st, hdrs, body, trailers = raw_stream(gw, "/mq?topic=%s" % q)
    assert st == 200 and hdrs["transfer-encoding"] == "chunked"
    assert trailers == {"memq-nodes-failed": name}, trailers
    assert len(body.split(b"\n")[:-1]) == 3     # what the live nodes held

    nodes3[2].kill()
    st, hdrs, body, trailers = raw_stream(gw, "/mq?topic=%s&format=raw" % q)
    assert st == 200 and hdrs["trailer"] == "Memq-Nodes-Failed"
    assert set(trailers["memq-nodes-failed"].split(", ")) == {
        name, node_addr(nodes3[2])}

    # HTTP/1.0: no chunks, so no trailer and no announcement
    st, hdrs, body, trailers = raw_stream(gw, "/mq?topic=%s" % q,
                                          version=b"HTTP/1.0")
    assert st == 200 and "trailer" not in hdrs and trailers == {}


def test_sse_nothing_failed_no_event(gateway_factory, nodes3):
    gw = gateway_factory(nodes3)
    q = qname("ok")
    assert gw.publish(q, "a").status_code == 201
    r = gw.consume(q, format="sse")
    assert r.status_code == 200 and "event: memq" not in r.text
    assert "data: a\n" in r.text


def test_status_error_clears_keeps_last(gateway_factory, memqd_factory):
    nodes = [memqd_factory() for _ in range(2)]
    gw = gateway_factory(nodes, cluster_extra=FAST_RETRY)
    gw.expect_errors()
    name = node_addr(nodes[1])
    st = gw.node_status(name)
    assert st["error"] == "" and st["last_error"] == ""
    assert st["last_error_at"] is None

    port = nodes[1].port
    nodes[1].kill()
    before = int(time.time())
    q = qname("rec")
    gw.consume(q)                  # meets the dead node
    st = gw.node_status(name)
    assert st["state"] == "down"
    assert st["error"] == "connect failed" == st["last_error"]
    at = st["last_error_at"]
    assert isinstance(at, int) and before - 1 <= at <= time.time() + 1

    nodes[1].start(port=port)

    # the status asks every node for its queues: a health check too
    def recovered():
        requests.get(gw.url("/mq/status?queues=1"), timeout=10 * SLOW)
        s = gw.node_status(name)
        return s if s["state"] == "up" and s["error"] == "" else None
    st = wait_for(recovered, timeout=10, what="node back up, error cleared")
    assert st["last_error"] == "connect failed"
    assert st["last_error_at"] == at

    # a node killed is seen by the status alone, no stream needed
    nodes[1].kill()
    requests.get(gw.url("/mq/status?queues=1"), timeout=10 * SLOW)
    st = gw.node_status(name)
    assert st["state"] == "down" and st["error"], st
    assert st["last_error_at"] >= at


def test_etcd_error_has_time(gateway_factory, nodes3):
    gw = gateway_factory(nodes3, cluster_extra="etcd http://127.0.0.1:%d "
                         "interval=200ms;" % free_port())
    gw.expect_errors()

    def seen():
        e = gw.status().json()["clusters"][0]["etcd"]
        return e if e["state"] == "unreachable" else None
    e = wait_for(seen, timeout=10, what="etcd unreachable in the status")
    assert e["error"] and e["error"] == e["last_error"]
    assert isinstance(e["last_error_at"], int)
    assert abs(e["last_error_at"] - time.time()) < 60
