"""Client acknowledgement mode (DESIGN §5 "gateway"): memq_ack / ack=,
lease= / memq_lease, ids in every format, POST op=ack|release|touch, the
paused, slow and vanishing clients, and a consumer killed at random
moments losing nothing."""

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading

import pytest
import requests

from gwutil import (SLOW, Client, Dechunker, fill, node_addr, qname, qstat,
                    read_stream_after_close,
                    read_headers, wait_for)

LOOP_LEASE = 3
PER_ROUND = 200

CLIENT_LOC = """
            memq_pass main;
            memq_key $arg_topic;
            memq_wait_max 10s;
            memq_ack client;
"""


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


def test_ndjson_random_messages_round_trip(gateway_factory, memqd_factory):
    """Random text with quotes, backslashes, controls and multi-byte
    characters at every offset, and random bytes: each line decodes to
    exactly the message, as data when it is UTF-8, else as data_b64."""
    nodes = [memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    rng = random.Random(8)
    alphabet = ['a', 'Z', '0', ' ', '"', '\\', '\n', '\r', '\t', '\x00',
                '\x1f', '\x7f', '\u00e9', '\u20ac', '\U0001f600', '/']
    msgs = []
    for i in range(300):
        if i % 5 == 4:
            m = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:
            m = "".join(rng.choice(alphabet)
                        for _ in range(rng.randrange(40))).encode()
        msgs.append(m)
    c = Client(nodes[0].addr)
    for m in msgs:
        c.store(q, m)
    c.close()
    r = g.consume(q)
    got = ndjson_items(r.content)
    assert [d for _, d in got] == msgs
    for line, m in zip(r.content.split(b"\n"), msgs):
        try:
            m.decode("utf-8")
            assert b'"data":' in line
        except UnicodeDecodeError:
            assert b'"data_b64":' in line
    assert ack(g, q, [i for i, _ in got]).json() == \
        {"acked": 300, "not_found": 0}


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


def test_malformed_id_is_logged_escaped(gateway_factory, memqd_factory):
    """The error log quotes a malformed id: a client's control bytes (a
    terminal escape, a bell) go there as %XX, never as they came."""
    node = memqd_factory()
    g = gateway_factory([node], loc=CLIENT_LOC)
    q = qname()
    bad = node_addr(node) + "/1\x1b]0;owned\x07\x1b[2J%"
    r = ack(g, q, [bad])
    assert r.status_code == 400, r.text
    log = g.error_log.read_bytes()
    line = [l for l in log.splitlines() if b"malformed id" in l]
    assert len(line) == 1, log[-2000:]
    assert b"%1B" in line[0] and b"%07" in line[0], line[0]
    assert not any(b < 0x20 or b == 0x7f for b in line[0]), line[0]


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
               a0 + "/1\r\ndelete " + q, ":/1", ":1/1", "a:/1",
               "a:123456/1", "a:1x/1", "a:1:/1"]
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
    r = ack(g, q, ["a:1/1"] * 10000, sep=",")
    assert r.json() == {"acked": 0, "not_found": 10000}
    r = ack(g, q, ["a:1/1"] * 10001, sep=",")
    assert r.status_code == 413
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


def test_max_is_exact_in_client_mode(gateway_factory, memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    sent = fill(nodes, q, 40)
    items = ndjson_items(g.consume(q, max=5).content)
    assert len(items) == 5
    assert waiting(nodes, q) == 35 and leased(nodes, q) == 5
    # a long poll under max: the rest, exactly
    items += ndjson_items(g.consume(q, max=35, wait=1).content)
    assert {d for _, d in items} == sent and len(items) == 40
    assert ack(g, q, [i for i, _ in items]).json() == \
        {"acked": 40, "not_found": 0}


def test_paused_client_items_given_back_at_once(gateway_factory,
                                                 memqd_factory):
    """A client-mode client that stops reading: after send_timeout its
    stream is closed and the items not written to its socket are waiting
    again at once (the lease is 60 s), the others stay leased for it; no
    node is marked."""
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, workers=1, listen_extra="sndbuf=8k",
                        loc=CLIENT_LOC,
                        timeouts="connect_timeout 1s; read_timeout 1s;",
                        cluster_extra="max_fails 1; fail_timeout 60s;",
                        loc_extra="memq_batch 16; send_timeout 2500ms;")
    q = qname()
    total = 300
    sent = fill(nodes, q, total, fmt="%04d-" + "x" * 1000)
    s = g.raw_request("/mq?topic=%s&lease=60" % q, rcvbuf=4096)
    status, hdrs, rest = read_headers(s)
    assert status == 200
    g.wait_access(lambda l: q in l, timeout=15,
                  what="the paused stream closed by send_timeout")
    assert "client timed out" in g.error_text()
    assert "unwritten items given back" in g.error_text()
    for n in nodes:
        st = g.node_status(node_addr(n))
        assert st["state"] == "up" and st["fails"] == 0, st
    back = waiting(nodes, q)
    held = leased(nodes, q)
    assert back > 0 and back + held == total, (back, held)
    d = read_stream_after_close(s, rest)
    assert not d.done, "a paused stream ended as drained"
    got = ndjson_items(d.data[:d.data.rfind(b"\n") + 1])
    # every leased item was written whole to the client's socket (none
    # may have been, when the socket was full before the first whole one)
    if got:
        r = ack(g, q, [i for i, _ in got])
        assert r.json()["acked"] == held, (r.json(), held, len(got))
    else:
        assert held == 0, held
    drained = drain_write(g, q)
    assert len(drained) == back
    assert set(drained) | {m for _, m in got} == sent
    assert leased(nodes, q) == 0 and waiting(nodes, q) == 0


def test_slow_client_gets_everything(gateway_factory, memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, workers=1, listen_extra="sndbuf=8k",
                        loc=CLIENT_LOC,
                        timeouts="connect_timeout 1s; read_timeout 1s;",
                        loc_extra="memq_batch 8;")
    q = qname()
    sent = fill(nodes, q, 200, fmt="%04d-" + "y" * 1000)
    s = g.raw_request("/mq?topic=%s&format=raw" % q, rcvbuf=4096)
    status, hdrs, rest = read_headers(s)
    assert status == 200
    d = Dechunker()
    d.feed(rest)
    ev = threading.Event()
    while not d.done:
        ev.wait(0.002)              # a slow reader, not a condition
        chunk = s.recv(700)
        if not chunk:
            break
        d.feed(chunk)
    s.close()
    assert d.done
    b, ids, got = d.data, [], []
    while b:
        head, b = b.split(b"\r\n", 1)
        i, n = head.split(b" ")
        got.append(b[:int(n)])
        ids.append(i.decode())
        b = b[int(n) + 2:]
    assert set(got) == sent and len(got) == 200
    assert leased(nodes, q) == 200
    assert ack(g, q, ids).json() == {"acked": 200, "not_found": 0}
    assert leased(nodes, q) == 0 and waiting(nodes, q) == 0
    for n in nodes:
        assert g.node_status(node_addr(n))["fails"] == 0


def _curl_consumer(g, q, rng):
    """One client-mode consumer: curl reads the stream; this reads some
    of its lines, acknowledges some of those, and kills it at a random
    moment.  Returns the acknowledged messages."""
    # the lease outlives a round, so every acknowledgement is exact; a
    # shorter one would let items come back to this very stream
    url = g.url("/mq?topic=%s&ack=client&lease=%d" % (q, LOOP_LEASE))
    p = subprocess.Popen(["curl", "-sN", "--no-buffer", url],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    acked = set()
    try:
        read = rng.choice([0, 1, rng.randrange(1, 40),
                           rng.randrange(40, PER_ROUND + 10)])
        lines = []
        for _ in range(read):
            line = p.stdout.readline()
            if not line:
                break
            o = json.loads(line)
            assert o["id"] not in {x["id"] for x in lines}
            lines.append(o)
            if rng.random() < 0.3:
                # an acknowledgement while the stream runs
                take = [o for o in lines if rng.random() < 0.7]
                lines = [o for o in lines if o not in take]
                if take:
                    r = ack(g, q, [o["id"] for o in take])
                    assert r.status_code == 200
                    assert r.json()["acked"] == len(take), r.json()
                    acked |= {o["data"].encode() for o in take}
            if rng.random() < 0.05:
                break
        moment = rng.random()
        if moment < 0.5:
            # acknowledge part of the rest, then die
            take = lines[:rng.randrange(0, len(lines) + 1)]
            if take:
                r = ack(g, q, [o["id"] for o in take], sep=",")
                assert r.json()["acked"] == len(take), r.json()
                acked |= {o["data"].encode() for o in take}
        elif moment < 0.75:
            # die with an acknowledgement in flight on another socket
            take = lines
            if take:
                t = threading.Thread(target=lambda: acked.update(
                    o["data"].encode() for o in take
                    if ack(g, q, [o["id"]]).json()["acked"] == 1))
                t.start()
                p.kill()
                t.join()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    return acked


def _socket_consumer(g, q, rng):
    """One client-mode consumer on a raw socket speaking SSE: reads some
    events, acknowledges some, then vanishes with a reset (SO_LINGER 0) at
    a random moment.  Returns the acknowledged messages."""
    import struct
    s = g.raw_request("/mq?topic=%s&ack=client&lease=%d&format=sse"
                      % (q, LOOP_LEASE), rcvbuf=rng.choice([None, 8192]))
    acked = set()
    try:
        status, hdrs, rest = read_headers(s)
        assert status == 200
        d = Dechunker()
        d.feed(rest)
        want = rng.randrange(0, PER_ROUND)
        events = []
        while len(events) < want and not d.done:
            if b"\n\n" not in d.data:
                chunk = s.recv(rng.choice([100, 4096, 65536]))
                if not chunk:
                    break
                d.feed(chunk)
                continue
            ev, d.data = d.data.split(b"\n\n", 1)
            if ev.startswith(b":"):
                continue
            lines = ev.split(b"\n")
            assert lines[0].startswith(b"id: ")
            events.append((lines[0][4:].decode(),
                           b"\n".join(l[6:] for l in lines[1:])))
        take = [e for e in events if rng.random() < 0.6]
        if take:
            r = ack(g, q, [i for i, _ in take])
            assert r.json()["acked"] == len(take), r.json()
            acked |= {m for _, m in take}
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
        s.close()
    return acked


def test_killed_consumers_lose_nothing(gateway_factory, memqd_factory):
    """Consumers killed at random moments (before the header, mid-batch,
    after acknowledging some, with an acknowledgement in flight; curl
    killed, or a raw socket reset): after
    their leases run out every message not acknowledged is back, and no
    acknowledged one is."""
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC, loc_extra="memq_batch 16;")
    rng = random.Random(int(os.environ.get("MEMQ_SEED", "0")) or None)
    rounds = []
    for k in range(24):
        q = qname("kill%d" % k)
        # 800 KB a round: more than the pipe and the socket buffers take,
        # so curl dies with items everywhere on the way
        sent = fill(nodes, q, PER_ROUND, fmt="r%d-%%d-" % k + "z" * 4000)
        # curl killed (FIN from the kernel), or a socket reset mid-read
        consumer = _curl_consumer if k % 2 == 0 else _socket_consumer
        acked = consumer(g, q, rng)
        assert acked <= sent
        rounds.append((q, sent, acked))
    for q, sent, acked in rounds:
        wait_for(lambda: leased(nodes, q) == 0
                 and waiting(nodes, q) == len(sent) - len(acked),
                 timeout=20, what="every lease of %s run out" % q)
        back = drain_write(g, q)
        assert len(back) == len(set(back))
        assert set(back) | acked == sent, "lost: %r" % (
            sent - acked - set(back))
        assert not set(back) & acked


def test_ack_with_a_node_down_says_what_is_unknown(gateway_factory,
                                                   memqd_factory):
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    g.expect_errors()
    q = qname()
    fill(nodes, q, 10)
    items = ndjson_items(g.consume(q, lease=60).content)
    ids = [i for i, _ in items]
    dead = node_addr(nodes[1])
    on_dead = [i for i in ids if i.startswith(dead + "/")]
    assert 0 < len(on_dead) < 10
    nodes[1].kill()
    r = ack(g, q, ids)
    assert r.status_code == 503
    assert r.json() == {"error": "node failed", "status": 503,
                        "acked": 10 - len(on_dead), "not_found": 0,
                        "unknown": len(on_dead)}
    # the live node's share is settled; asking again is safe
    r = ack(g, q, [i for i in ids if i not in on_dead])
    assert r.json() == {"acked": 0, "not_found": 10 - len(on_dead)}


def test_item_beyond_max_goes_back_with_touch(gateway_factory):
    """max is exact in client mode: a long-poll item that arrives while the
    rest of max is reserved by another node's request goes back at once
    with "touch q/<id> 0" (fake nodes, to order the replies)."""
    import threading
    from gwutil import ScriptedNode
    q = qname()
    touched = threading.Event()
    reserved = threading.Event()     # node a was asked for the rest of max
    asked = {"a": 0}

    def value(line, cas, data):
        key = line.split(b" ")[1]
        return b"VALUE %s 0 %d %d\r\n%s\r\nEND\r\n" % (key, len(data), cas,
                                                      data)

    def node_a(line, n):
        if not line.startswith(b"get "):
            return (0, b"ERROR\r\n")
        asked["a"] += 1
        if asked["a"] == 1:
            return (0, value(line, 11, b"first"))
        if asked["a"] == 2:
            # the rest of max is reserved by this request until node b's
            # item went back
            reserved.set()
            touched.wait(10)
            return (0, value(line, 12, b"second"))
        return None

    def node_b(line, n):
        if line.startswith(b"touch "):
            touched.set()
            return (0, b"TOUCHED\r\n")
        if b"/t=" in line and not touched.is_set():
            # only once a's first item is in and the rest of max reserved:
            # earlier, b's item would simply be the first of the two
            reserved.wait(10)
            return (0, value(line, 21, b"beyond max"))
        if b"/t=" in line:
            return None
        return (0, b"END\r\n")

    a, b = ScriptedNode(node_a), ScriptedNode(node_b)
    try:
        g = gateway_factory([a.addr, b.addr], loc=CLIENT_LOC)
        r = g.consume(q, max=2, wait=5, lease=60)
        assert r.status_code == 200
        items = ndjson_items(r.content)
        assert items == [("%s/11" % node_addr(a.addr), b"first"),
                         ("%s/12" % node_addr(a.addr), b"second")]
        assert ("touch %s/21 0" % q).encode() in b.lines
        # a lease request, never /open or /close
        assert all(b"/lease=60000/" in l for l in a.lines), a.lines
    finally:
        a.close()
        b.close()


def test_memq_lease_is_the_default_lease(gateway_factory, memqd_factory):
    """memq_lease 1s: what a stream delivered and nobody acknowledged is
    back after about a second (30 s, the built-in default, would miss the
    deadline)."""
    nodes = [memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC, loc_extra="memq_lease 1s;")
    q = qname()
    sent = fill(nodes, q, 5)
    assert {d for _, d in ndjson_items(g.consume(q, max=3).content)} < sent
    assert leased(nodes, q) == 3
    wait_for(lambda: waiting(nodes, q) == 5 and leased(nodes, q) == 0,
             timeout=15, what="memq_lease 1s ran out")
    items = ndjson_items(g.consume(q).content)
    assert {d for _, d in items} == sent
    assert leased(nodes, q) == 5
    assert ack(g, q, [i for i, _ in items]).json() == \
        {"acked": 5, "not_found": 0}


def test_acks_pipelined_on_one_connection_per_node(gateway_factory):
    """A fake node records its connections: the ids of one request come
    on one connection, in order, as delete lists (windows of at most 1000
    ids, lines of at most 2048 bytes, every line of a window but its last
    as full as the others; one id is a plain delete); DELETED <n>,
    DELETED and NOT_FOUND are counted exactly; a reply that is none of
    them answers 503 with the rest unknown, from its line on."""
    import threading
    from gwutil import ScriptedNode
    q = qname()
    conns = {}
    lock = threading.Lock()

    def answer(line, n):
        with lock:
            conns.setdefault(threading.get_ident(), []).append(line)
        if line.startswith(b"delete "):
            nums = [int(x) for x in line.rsplit(b"/", 1)[1].split(b",")]
            if 999999 in nums:
                return (0, b"SERVER_ERROR out of disk\r\n")
            if len(nums) == 1:
                return (0, b"DELETED\r\n" if nums[0] % 3
                        else b"NOT_FOUND\r\n")
            return (0, b"DELETED %d\r\n" % sum(1 for x in nums if x % 3))
        return (0, b"END\r\n")

    fake = ScriptedNode(answer)
    try:
        g = gateway_factory([fake.addr], loc=CLIENT_LOC)
        g.expect_errors()
        a = node_addr(fake.addr)
        ids = ["%s/%d" % (a, i) for i in range(1, 2502)]
        r = ack(g, q, ids)
        assert r.json() == {"acked": 2501 - 833, "not_found": 833}
        deletes = [l for ls in conns.values() for l in ls
                   if l.startswith(b"delete ")]
        assert len([c for c in conns.values()
                    if any(l.startswith(b"delete ") for l in c)]) == 1
        prefix = ("delete %s/" % q).encode()
        assert all(l.startswith(prefix) and len(l) <= 2048
                   for l in deletes)
        lists = [[int(x) for x in l[len(prefix):].split(b",")]
                 for l in deletes]
        assert [x for ls in lists for x in ls] == list(range(1, 2502))
        per = len(lists[0])
        assert 85 <= per <= 1000
        # windows of 1000, 1000 and 501 ids; the last is one plain delete
        windows = [1000, 1000, 501]
        want = []
        for w in windows:
            want += [per] * (w // per) + ([w % per] if w % per else [])
        assert [len(ls) for ls in lists] == want
        # one id: a plain delete, DELETED or NOT_FOUND
        assert ack(g, q, ["%s/7" % a]).json() == \
            {"acked": 1, "not_found": 0}
        assert ack(g, q, ["%s/9" % a]).json() == \
            {"acked": 0, "not_found": 1}
        # (the two requests may use two node connections)
        deletes = [l for ls in conns.values() for l in ls
                   if l.startswith(b"delete ")]
        assert sorted(deletes[len(want):]) == \
            [prefix + b"7", prefix + b"9"]
        # a node error part-way: the lines answered count, the rest is
        # unknown
        bad = ["%s/%d" % (a, i) for i in range(1, per + 1)] + \
              ["%s/999999" % a, "%s/5" % a]
        r = ack(g, q, bad)
        assert r.status_code == 503
        assert r.json() == {"error": "node failed", "status": 503,
                            "acked": per - per // 3,
                            "not_found": per // 3, "unknown": 2}
    finally:
        fake.close()


def test_random_ack_bodies(gateway_factory, memqd_factory):
    """Hostile bodies: every answer is JSON 200, 400 or 413, nothing that
    was not listed whole is acknowledged, the gateway stays up."""
    nodes = [memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    fill(nodes, q, 20)
    items = ndjson_items(g.consume(q, lease=600).content)
    ids = [i for i, _ in items]
    rng = random.Random(11)
    pieces = [",", "\n", "\r\n", " ", "\t", "/", ":", "0", "9", "a", "\x00",
              "\xff", "[::1]:80", node_addr(nodes[0]), "18446744073709551615",
              "18446744073709551616", "%", "\"", "\\"] + ids[:10]
    for _ in range(300):
        body = "".join(rng.choice(pieces)
                       for _ in range(rng.randrange(0, 30)))
        r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                          data=body.encode("utf-8", "surrogateescape"),
                          timeout=10 * SLOW)
        assert r.status_code in (200, 400, 413), (body, r.status_code)
        assert r.headers["Content-Type"] == "application/json"
        j = r.json()
        if r.status_code == 200:
            assert set(j) == {"acked", "not_found"}
    # the ten ids never given whole may have been acked; the other ten
    # are untouched
    assert leased(nodes, q) >= 10
    r = ack(g, q, ids[10:])
    assert r.json() == {"acked": 10, "not_found": 0}


def test_ndjson_every_byte_at_every_word_offset(gateway_factory,
                                                memqd_factory):
    """Every byte value at every offset of a 17-byte message (two 8-byte
    words and a tail), the rest plain: each line is valid UTF-8 and strict
    JSON and gives back exactly the message; plain text goes as data."""
    nodes = [memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC)
    q = qname()
    msgs = [b"a" * n for n in range(18)]
    for b in range(256):
        for k in range(17):
            msgs.append(b"a" * k + bytes([b]) + b"a" * (16 - k))
    c = Client(nodes[0].addr)
    try:
        for m in msgs:
            c.store(q, m)
    finally:
        c.close()
    got = []
    while len(got) < len(msgs):
        r = g.consume(q, lease=600)
        assert r.status_code == 200, r.text
        lines = r.content.split(b"\n")[:-1]
        assert lines, "nothing more after %d" % len(got)
        for line in lines:
            o = json.loads(line.decode("utf-8"), strict=True)
            got.append((o, line))
    assert len(got) == len(msgs)
    for (o, line), m in zip(got, msgs):
        if "data" in o:
            assert o["data"].encode() == m, line
        else:
            assert base64.b64decode(o["data_b64"]) == m, line
            with pytest.raises(UnicodeDecodeError):
                m.decode("utf-8")
        plain = all(0x20 <= x < 0x80 and x not in b'"\\' for x in m)
        if plain:
            assert line == b'{"id":"%s","data":"%s"}' % (
                o["id"].encode(), m), line
    r = ack(g, q, [o["id"] for o, _ in got])
    assert r.json() == {"acked": len(msgs), "not_found": 0}


ACK_ADDR_MAX = 63
ACK_ADDR_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789.:-_[]")


def _model_ack_body(body, known):
    """The body as the documented grammar reads it: (400 or 413, None),
    or (200, [(addr, id) of listed nodes], ids of other nodes)."""
    ids, other, n = [], 0, 0
    for e in re.split("[,\n]", body):
        s = e.strip(" \t\r")
        if not s:
            continue
        if n == 10000:
            return 413, None, None
        n += 1
        slash = s.rfind("/")
        addr, digits = s[:slash], s[slash + 1:]
        colon = addr.rfind(":")
        if (slash <= 0 or len(addr) > ACK_ADDR_MAX
                or not 1 <= len(digits) <= 20
                or not all(ch in "0123456789" for ch in digits)
                or int(digits) >= 2 ** 64
                or not set(addr) <= ACK_ADDR_CHARS
                or colon <= 0 or not 1 <= len(addr) - colon - 1 <= 5
                or not addr[colon + 1:].isdigit()):
            return 400, None, None
        if addr in known:
            ids.append((addr, int(digits)))
        else:
            other += 1
    if n == 0:
        return 400, None, None
    return 200, ids, other


def test_ack_bodies_match_the_grammar(gateway_factory, memqd_factory):
    """Random bodies of real ids in every spelling the grammar allows
    (leading zeros up to 20 digits, blanks, CR, empty parts, runs of one
    node and of two, unknown nodes between, no final separator) and a
    few malformed ones: the answer is exactly what the grammar says, so
    no id is acknowledged that was not listed and none listed is left."""
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, loc=CLIENT_LOC,
                        loc_extra="client_max_body_size 4m;")
    q = qname()
    fill(nodes, q, 3000)
    leased_ids = set()
    while len(leased_ids) < 3000:
        items = ndjson_items(g.consume(q, lease=600).content)
        assert items
        for i, _ in items:
            a, n = i.rsplit("/", 1)
            leased_ids.add((a, int(n)))
    known = {node_addr(n) for n in nodes}
    pool = sorted(leased_ids)
    rng = random.Random(31)

    def spell(addr, n):
        d = str(n)
        k = rng.random()
        if k < 0.2:
            d = d.zfill(rng.randrange(len(d), 21))
        elif k < 0.25:
            d = d.zfill(20)
        t = "%s/%s" % (addr, d)
        k = rng.random()
        if k < 0.1:
            t = " " + t
        elif k < 0.2:
            t = t + rng.choice([" ", "\t", "\r", " \r"])
        return t

    a = sorted(known)[0]
    bad = ["%s/%s" % (a, "0" * 20 + "1"), "%s/" % a,
           "%s/18446744073709551616" % a, "%s/1x" % a, "%s/1/2" % a,
           "%s//1" % a, "%s/ 1" % a, "%s/-1" % a, "%s/1\x00" % a,
           "%s /1" % a, "%s/99999999999999999999" % a]
    pool_a = [n for x, n in pool if x == a]
    acked = 0
    for _ in range(150):
        toks = []
        for _ in range(rng.randrange(1, 60)):
            k = rng.random()
            if k < 0.75:
                toks.append(spell(*rng.choice(pool)))
            elif k < 0.85:
                toks.append(spell(rng.choice(sorted(known)),
                                  rng.choice([0, 1, 2 ** 64 - 1,
                                              10 ** 19 - 1, 10 ** 19])))
            elif k < 0.92:
                toks.append(spell("10.9.9.9:1", rng.randrange(10)))
            else:
                toks.append("")
        if rng.random() < 0.25:
            # right after an id of the same node (its address known)
            k = rng.randrange(len(toks) + 1)
            toks[k:k] = [spell(a, rng.choice(pool_a)), rng.choice(bad)]
        body = ""
        for i, t in enumerate(toks):
            body += t
            if i + 1 < len(toks) or rng.random() < 0.5:
                body += rng.choice([",", "\n", "\r\n", ",\n"])
        want, ids, other = _model_ack_body(body, known)
        r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                          data=body.encode(), timeout=10 * SLOW)
        assert r.status_code == want, (body, r.text)
        if want != 200:
            continue
        hit = set(ids) & leased_ids
        leased_ids -= hit
        acked += len(hit)
        assert r.json() == {"acked": len(hit),
                            "not_found": len(ids) - len(hit) + other}, body
    assert acked > 500
    assert leased(nodes, q) == len(leased_ids)
    # at the 10,000-id limit: what follows the last id decides
    ten = ",".join("%s/%d" % (a, 10 ** 12 + i) for i in range(10000))
    for tail in ("", ",", "\n , \r\n,", ", %s/7" % a, ",%s/x" % a,
                 ", 10.9.9.9:1/5", "\r"):
        body = ten + tail
        want, ids, other = _model_ack_body(body, known)
        r = requests.post(g.url("/mq"), params={"topic": q, "op": "ack"},
                          data=body.encode(), timeout=10 * SLOW)
        assert r.status_code == want, (tail, r.text)
        if want == 200:
            assert r.json() == {"acked": 0, "not_found": 10000}, tail
    assert leased(nodes, q) == len(leased_ids)


def test_ids_of_every_length_round_trip(gateway_factory):
    """Ids of 1 to 20 digits (every power of ten, the one below it, and
    the largest u64) come out of a fake node's cas fields into ndjson, sse
    and raw exactly, and go back to it exactly in delete lists."""
    from gwutil import ScriptedNode
    q = qname()
    cas = sorted({1, 9, 2 ** 64 - 1} | {10 ** k for k in range(1, 20)}
                 | {10 ** k - 1 for k in range(2, 20)}
                 | {10 ** k + 1 for k in range(1, 20)})
    deleted = []

    def answer(line, n):
        if line.startswith(b"get "):
            if b"/t=" in line or answer.sent:
                return (0, b"END\r\n")
            answer.sent = True
            key = line.split(b" ")[1]
            return (0, b"".join(b"VALUE %s 0 1 %d\r\nx\r\n" % (key, c)
                                for c in cas) + b"END\r\n")
        if line.startswith(b"delete "):
            nums = line.rsplit(b"/", 1)[1].split(b",")
            deleted.extend(int(x) for x in nums)
            return (0, b"DELETED %d\r\n" % len(nums) if len(nums) > 1
                    else b"DELETED\r\n")
        return (0, b"ERROR\r\n")

    fake = ScriptedNode(answer)
    try:
        g = gateway_factory([fake.addr], loc=CLIENT_LOC + "memq_batch 100;")
        a = node_addr(fake.addr)
        want = ["%s/%d" % (a, c) for c in cas]
        for fmt in ("ndjson", "sse", "raw"):
            answer.sent = False
            body = g.consume(q, format=fmt, lease=60).content
            if fmt == "ndjson":
                got = [i for i, _ in ndjson_items(body)]
            elif fmt == "sse":
                got = [l[4:].decode() for l in body.split(b"\n")
                       if l.startswith(b"id: ")]
            else:
                got = [h.split(b" ")[0].decode() for h in
                       re.findall(rb"(?:^|\r\n)([^\r\n]+ 1)\r\nx", body)]
            assert got == want, (fmt, got)
        r = ack(g, q, want)
        assert r.json() == {"acked": len(cas), "not_found": 0}
        assert deleted == cas
    finally:
        fake.close()
