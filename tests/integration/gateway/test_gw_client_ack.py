"""Client acknowledgement mode (DESIGN §5 "gateway"): memq_ack / ack=,
lease= / memq_lease, ids in every format, POST op=ack|release|touch, the
paused, slow and vanishing clients, and a consumer killed at random
moments losing nothing."""

import base64
import json
import os
import random
import signal
import socket
import subprocess
import threading

import requests

from gwutil import (SLOW, Client, Dechunker, fill, node_addr, qname,
                    read_headers, wait_for)

CLIENT_LOC = """
            memq_pass main;
            memq_key $arg_topic;
            memq_wait_max 10s;
            memq_ack client;
"""


def qstat(nodes, q, name):
    total = 0
    for n in nodes:
        c = Client(n.addr)
        try:
            total += c.qstats(q).get(name, 0)
        finally:
            c.close()
    return total


def waiting(nodes, q):
    return qstat(nodes, q, "items")


def leased(nodes, q):
    return qstat(nodes, q, "leased_items")


def ack(g, q, ids, op="ack", sep="\n", **params):
    p = {"topic": q, "op": op}
    p.update(params)
    r = requests.post(g.url("/mq"), params=p, data=sep.join(ids).encode(),
                      timeout=10 * SLOW)
    return r


def ndjson_items(body):
    out = []
    for line in body.split(b"\n")[:-1]:
        o = json.loads(line)
        data = (o["data"].encode() if "data" in o
                else base64.b64decode(o["data_b64"]))
        out.append((o["id"], data))
    return out


def drain_write(g, q):
    """Takes (and acknowledges) what q holds now, in write mode."""
    r = g.consume(q, ack="write", format="raw")
    assert r.status_code == 200, r.text
    out, b = [], r.content
    while b:
        n, rest = b.split(b"\r\n", 1)
        n = int(n)
        out.append(rest[:n])
        b = rest[n + 2:]
    return out


def test_ndjson_ids_utf8_and_base64_then_ack(gateway_factory, memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    msgs = [b'plain', b'quote " back \\ slash', b'line\nbreak\r\ncr\ttab',
            b'ctl \x01\x1f del \x7f', 'caf\u00e9 \u20ac \U0001f600'.encode(),
            b'', b'bad \xff utf8', b'overlong \xc0\xaf', b'surrogate \xed\xa0\x80',
            b'truncated \xe2\x82', b'past max \xf4\x90\x80\x80']
    c = [Client(n.addr) for n in nodes]
    for i, m in enumerate(msgs):
        c[i % 2].store(q, m)
    r = g.consume(q, format="ndjson")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = r.content.split(b"\n")[:-1]
    assert len(lines) == len(msgs)
    items = ndjson_items(r.content)
    assert sorted(d for _, d in items) == sorted(msgs)
    addrs = {node_addr(n) for n in nodes}
    for line, (i, d) in zip(lines, items):
        addr, num = i.rsplit("/", 1)
        assert addr in addrs and num.isdigit()
        try:
            d.decode("utf-8")
            assert b'"data":' in line, line
        except UnicodeDecodeError:
            assert b'"data_b64":' in line, line
    assert len({i for i, _ in items}) == len(msgs)
    # leased, not acknowledged: nothing waits, everything is leased
    assert waiting(nodes, q) == 0
    assert leased(nodes, q) == len(msgs)
    ids = [i for i, _ in items]
    r = ack(g, q, ids)
    assert r.status_code == 200, r.text
    assert r.json() == {"acked": len(msgs), "not_found": 0}
    assert leased(nodes, q) == 0 and waiting(nodes, q) == 0
    # acknowledged twice: not found, nothing else happens
    r = ack(g, q, ids, sep=",")
    assert r.json() == {"acked": 0, "not_found": len(msgs)}
    for x in c:
        x.close()


def test_sse_and_raw_carry_ids(gateway_factory, memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    sent = fill(nodes, q, 10, fmt="s%d\r\nsecond line")
    r = g.consume(q, format="sse")
    assert r.headers["Content-Type"] == "text/event-stream"
    events = [e for e in r.content.split(b"\n\n") if e.strip()]
    assert len(events) == 10
    ids = []
    for e in events:
        lines = e.split(b"\n")
        assert lines[0].startswith(b"id: ")
        ids.append(lines[0][4:].decode())
        assert b"\n".join(l[6:] for l in lines[1:]).replace(b"\n", b"\r\n") \
            in sent
    assert ack(g, q, ids).json() == {"acked": 10, "not_found": 0}

    q = qname()
    bins = [bytes(range(256)) * 3, b"a\r\nb", b""]
    c = Client(nodes[0].addr)
    for m in bins:
        c.store(q, m)
    c.close()
    r = g.consume(q, format="raw")
    assert r.headers["Content-Type"] == "application/octet-stream"
    b, got, ids = r.content, [], []
    while b:
        head, rest = b.split(b"\r\n", 1)
        i, n = head.split(b" ")
        n = int(n)
        assert rest[n:n + 2] == b"\r\n"
        got.append(rest[:n])
        ids.append(i.decode())
        assert i.decode().startswith(node_addr(nodes[0]) + "/")
        b = rest[n + 2:]
    assert got == bins
    assert ack(g, q, ids).json() == {"acked": 3, "not_found": 0}


def test_directive_and_request_choose_the_mode(gateway_factory,
                                               memqd_factory):
    nodes = [memqd_factory()]
    g = gateway_factory(nodes)          # memq_ack write (the default)
    q = qname()
    fill(nodes, q, 4)
    # write mode: plain lines, acknowledged at once
    assert g.lines(q, max=2) == [b"m0", b"m1"]
    assert waiting(nodes, q) == 2 and leased(nodes, q) == 0
    items = ndjson_items(g.consume(q, ack="client").content)
    assert [d for _, d in items] == [b"m2", b"m3"]
    assert leased(nodes, q) == 2
    r = ack(g, q, [i for i, _ in items], op="release")
    assert r.json() == {"acked": 2, "not_found": 0}
    # given back at once, in order
    assert waiting(nodes, q) == 2 and leased(nodes, q) == 0
    g2 = gateway_factory(nodes, loc=CLIENT_LOC)
    assert g2.lines(q, ack="write") == [b"m2", b"m3"]
    assert waiting(nodes, q) == 0 and leased(nodes, q) == 0
    for bad in ("ack=yes", "ack=", "ack=CLIENT", "lease=0", "lease=-1",
                "lease=abc", "lease=43200.001", "lease=", "lease=1e3",
                "ack=client&lease=99999999999999999999"):
        r = requests.get(g.url("/mq?topic=%s&%s" % (q, bad)),
                         timeout=10 * SLOW)
        assert r.status_code == 400, (bad, r.status_code)
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["status"] == 400
    for good in ("lease=43200", "lease=0.5", "lease=1"):
        r = requests.get(g.url("/mq?topic=%s&ack=client&%s" % (q, good)),
                         timeout=10 * SLOW)
        assert r.status_code == 200, good


def test_memq_lease_bounds_at_load(tmp_path, memqd_factory):
    from gwutil import Gateway
    n = memqd_factory()
    for bad, ok in (("memq_lease 0;", False), ("memq_lease 13h;", False),
                    ("memq_ack sometimes;", False), ("memq_lease 12h;", True),
                    ("memq_ack client; memq_lease 500ms;", True)):
        g = Gateway(tmp_path / ("t%d" % len(bad)) / bad.split()[0].strip(";"),
                    [n], loc_extra=bad)
        res, out = g.test_conf()
        assert res == ok, (bad, out)


def test_lease_runs_out_and_touch_extends(gateway_factory, memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    sent = fill(nodes, q, 20)
    items = ndjson_items(g.consume(q, lease=60).content)
    assert {d for _, d in items} == sent
    ids = [i for i, _ in items]
    # a touch of 1 s on half: those come back soon, the rest stay leased
    r = ack(g, q, ids[:10], op="touch", lease="1")
    assert r.json() == {"acked": 10, "not_found": 0}
    wait_for(lambda: waiting(nodes, q) == 10, timeout=15,
             what="touched items back after their new lease")
    assert leased(nodes, q) == 10
    back = drain_write(g, q)
    assert sorted(back) == sorted(d for _, d in items[:10])
    # a touch of a given-back (or unknown) id is not found
    r = ack(g, q, ids[:10], op="touch", lease="30")
    assert r.json() == {"acked": 0, "not_found": 10}
    # the default lease of a touch is memq_lease; a fraction rounds up
    r = ack(g, q, ids[10:], op="touch", lease="0.2")
    assert r.json() == {"acked": 10, "not_found": 0}
    assert ack(g, q, ids[10:]).json() == {"acked": 10, "not_found": 0}
    assert waiting(nodes, q) == 0 and leased(nodes, q) == 0


def test_malformed_ack_bodies(gateway_factory, memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC,
                        loc_extra="client_max_body_size 4m;")
    q = qname()
    fill(nodes, q, 6)
    items = ndjson_items(g.consume(q, lease=60).content)
    ids = [i for i, _ in items]
    a0 = node_addr(nodes[0])
    bad_ids = ["abc", a0 + "/x", "/5", a0 + "/", "localhost/5",
               a0 + "/99999999999999999999", a0 + "/1 2", a0 + "/-1",
               a0 + "/+1", "a b:1/5", a0 + "\x00/1", "q/" + a0 + "/1x",
               "x" * 70 + ":1/1", a0 + "/" + "1" * 21, a0 + "/1;delete q",
               a0 + "/1\r\ndelete " + q]
    for b in bad_ids:
        r = ack(g, q, [ids[0], b])
        assert r.status_code == 400, (b, r.status_code, r.text)
        assert r.json() == {"error": "bad id", "status": 400}
    # nothing was done: all six still leased
    assert leased(nodes, q) == 6
    for body in (b"", b"\n\n , ,\r\n"):
        r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                          data=body, timeout=10 * SLOW)
        assert r.status_code == 400 and r.json()["error"] == "no ids"
    for params in ({"op": "nack"}, {"op": ""}, {"op": "ack", "lease": "0"},
                   {"op": "touch", "lease": "x"}):
        p = {"topic": q}
        p.update(params)
        r = requests.post(g.url("/mq"), params=p, data=ids[0],
                          timeout=10 * SLOW)
        assert r.status_code == 400, params
    r = requests.post(g.url("/mq"), params={"topic": "bad key", "op": "ack"},
                      data=ids[0], timeout=10 * SLOW)
    assert r.status_code == 400 and r.json()["error"] == "bad key"
    # bounded: 10,000 ids and 1 MiB of body
    r = ack(g, q, [a0 + "/1"] * 10001)
    assert r.status_code == 413 and r.json()["error"] == "too many ids"
    r = ack(g, q, [a0 + "/1" + " " * 1024 * 1024])
    assert r.status_code == 413
    assert leased(nodes, q) == 6
    # unknown nodes count as not found; blanks, CRLF and commas are fine
    r = ack(g, q, ["10.9.9.9:1/5", "127.0.0.1:1/1"], sep=",")
    assert r.json() == {"acked": 0, "not_found": 2}
    body = "  %s \r\n%s,%s\t,\n\n10.9.9.9:1/5,%s\r\n" % (
        ids[0], ids[1], ids[2], ids[1])
    r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                      data=body, timeout=10 * SLOW)
    assert r.json() == {"acked": 3, "not_found": 2}
    # 10,000 ids in one request, most unknown to the node: exact counts
    many = ids[3:] + ["%s/%d" % (node_addr(nodes[i % 2]), 10 ** 6 + i)
                      for i in range(9997)]
    r = ack(g, q, many)
    assert r.json() == {"acked": 3, "not_found": 9997}
    assert leased(nodes, q) == 0 and waiting(nodes, q) == 0
    # the id of a queue acknowledged under another topic is not found
    q2 = qname()
    fill(nodes, q2, 1)
    i2 = ndjson_items(g.consume(q2).content)[0][0]
    assert ack(g, q, [i2]).json() == {"acked": 0, "not_found": 1}
    assert ack(g, q2, [i2]).json() == {"acked": 1, "not_found": 0}
