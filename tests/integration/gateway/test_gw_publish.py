"""Publish: POST /mq?topic=Q, single body and ndjson batch, smooth weighted
round robin, retry on the next node, 413, compression (DESIGN §2, §3)."""

import json
import os
import random
import signal
import socket
import subprocess
import time
import zlib

import pytest

import gwutil
from gwutil import Client, node_addr, qname, stop_process


def _drain(node, q):
    c = Client(node.addr)
    try:
        return c.drain(q)
    finally:
        c.close()


def test_single_message(gw, nodes3):
    q = qname()
    r = gw.publish(q, b"hello world")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["queued"] == 1
    addrs = [node_addr(n) for n in nodes3]
    assert body["node"] in addrs
    node = nodes3[addrs.index(body["node"])]
    items = _drain(node, q)
    assert [i.data for i in items] == [b"hello world"]
    assert items[0].flags == 0
    line = gw.wait_access(lambda l: q in l and l.startswith("201"))
    assert line.split()[1] == "1", line


def test_binary_body_kept_verbatim(gw, nodes3):
    q = qname()
    data = bytes(range(256)) * 3 + b"\r\n\r\nEND\r\n"
    r = gw.publish(q, data)
    assert r.status_code == 201, r.text
    node = nodes3[[node_addr(n) for n in nodes3].index(r.json()["node"])]
    assert [i.data for i in _drain(node, q)] == [data]


def test_ndjson_batch(gw, nodes3):
    q = qname()
    body = b'{"a":1}\n\n{"b":2}\r\n  \n{"c":3}'
    r = gw.publish(q, body, ndjson=True)
    assert r.status_code == 201, r.text
    assert r.json()["queued"] == 3
    node = nodes3[[node_addr(n) for n in nodes3].index(r.json()["node"])]
    assert [i.data for i in _drain(node, q)] == \
        [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_large_ndjson_batch_is_pipelined(gw, nodes3):
    q = qname()
    msgs = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 50) for i in range(2000)]
    r = gw.publish(q, b"\n".join(msgs) + b"\n", ndjson=True)
    assert r.status_code == 201, r.text
    assert r.json()["queued"] == 2000
    node = nodes3[[node_addr(n) for n in nodes3].index(r.json()["node"])]
    assert [i.data for i in _drain(node, q)] == msgs


def test_empty_body_is_400(gw):
    q = qname()
    for body, nd in ((b"", False), (b"\n\r\n \n", True)):
        r = gw.publish(q, body, ndjson=nd)
        assert r.status_code == 400, r.text
        assert r.json() == {"error": "empty body", "status": 400}


def test_missing_key_is_400(gw):
    import requests
    r = requests.post(gw.url("/mq"), data=b"x", timeout=5)
    assert r.status_code == 400
    assert r.json() == {"error": "missing key", "status": 400}


def test_weighted_round_robin(gateway_factory, memqd_factory):
    nodes = [memqd_factory() for _ in range(3)]
    addrs = [node_addr(n) for n in nodes]
    # one worker, so the smooth weighted order is exactly observable
    g = gateway_factory(nodes, workers=1,
                        weights={addrs[0]: 1, addrs[1]: 2, addrs[2]: 3})
    q = qname()
    seen = []
    for i in range(60):
        # POSTs in one millisecond of the worker's clock are one run to one
        # node; 2 ms apart, each is a round robin choice of its own
        time.sleep(0.002)
        r = g.publish(q, b"m%d" % i)
        assert r.status_code == 201, r.text
        seen.append(r.json()["node"])
    assert [seen.count(a) for a in addrs] == [10, 20, 30]
    # smooth: the heaviest node never gets more than two in a row
    first6 = seen[:6]
    assert sorted(first6) == sorted([addrs[0]] + [addrs[1]] * 2
                                    + [addrs[2]] * 3), first6
    assert first6[0] == addrs[2]


def _post_raw(s, q, body):
    s.sendall(b"POST /mq?topic=%s HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (q.encode(), len(body), body))


def _read_reply(s):
    status, hdrs, rest = gwutil.read_headers(s)
    while len(rest) < int(hdrs["content-length"]):
        rest += s.recv(65536)
    assert status == 201, rest
    return json.loads(rest)["node"]


def _worker(g):
    pids = [int(p) for p in open("/proc/%d/task/%d/children"
                                 % (g.proc.pid, g.proc.pid)).read().split()]
    assert len(pids) == 1
    return pids[0]


def _one_by_one(socks, q, tag):
    """A POST on each connection in turn, 2 ms apart: each its own round
    robin choice.  The nodes, in order."""
    got = []
    for i, s in enumerate(socks):
        time.sleep(0.002)
        _post_raw(s, q, b"%s%d" % (tag, i))
        got.append(_read_reply(s))
    return got


def _burst(worker, socks, q, tag):
    """A POST on every connection while the worker is stopped, so that it
    reads them all in one pass of its event loop.  The nodes, in order."""
    time.sleep(0.002)
    try:
        stop_process(worker)
        for i, s in enumerate(socks):
            _post_raw(s, q, b"%s%d" % (tag, i))
    finally:
        os.kill(worker, signal.SIGCONT)
    return [_read_reply(s) for s in socks]


def test_posts_of_one_millisecond_go_to_one_node(gateway_factory,
                                                 memqd_factory):
    """Runs: the POSTs one pass of the event loop reads go to one node (one
    write, one wake-up of one node), and round robin spreads the runs by
    weight.  The nodes do not fsync, so their reply times are all about
    nothing.  Each burst is sent once the worker is stopped (waited for,
    not only signalled: a burst sent while the signal was on its way was
    once read in two passes, 5 POSTs then 7, and split)."""
    nodes = [memqd_factory(args=["--sync", "none"]) for _ in range(3)]
    addrs = [node_addr(n) for n in nodes]
    g = gateway_factory(nodes, workers=1,
                        weights={addrs[0]: 1, addrs[1]: 2, addrs[2]: 3})
    worker = _worker(g)
    q = qname()
    socks = [socket.create_connection(("127.0.0.1", g.port), timeout=10)
             for _ in range(12)]
    try:
        # two full rounds of the weights (12 picks): round robin is back
        # where it started
        _one_by_one(socks, q, b"warm")
        runs = []
        for burst in range(6):
            got = _burst(worker, socks, q, b"b%d." % burst)
            assert len(set(got)) == 1, (burst, got)
            runs.append(got[0])
    finally:
        for s in socks:
            s.close()
    # one round of the weights: 1, 2 and 3 runs, heaviest first
    assert [runs.count(a) for a in addrs] == [1, 2, 3], runs
    assert runs[0] == addrs[2], runs
    assert [len(_drain(n, q)) for n in nodes] == [2 + 12, 4 + 24, 6 + 36]


def test_node_never_answering_does_not_stop_runs(gateway_factory,
                                                memqd_factory):
    """The lag rule compares a node's reply times with the quickest
    node's.  A node that never answered has no reply times: it is not the
    quickest.  Here one cannot be reached (max_fails 0: it stays in the
    choice) and the other takes 10 ms or more a reply; taken as 0 ms, the
    unreachable node made it lag, no burst was a run, and every POST of a
    burst was a round robin choice of its own, nearly each tried on the
    unreachable node first."""
    # connect() fails at once (ENETUNREACH): no reply, ever
    dead = ("255.255.255.255", 9)
    node = memqd_factory(args=["--sync", "always"],
                         env={"MEMQD_FAULT_FSYNC_DELAY_MS": "10"})
    g = gateway_factory([dead, node], workers=1,
                        cluster_extra="max_fails 0;")
    g.expect_errors()
    worker = _worker(g)
    q = qname()
    socks = [socket.create_connection(("127.0.0.1", g.port), timeout=30)
             for _ in range(12)]
    try:
        # the node's average up to its 10 ms and more
        for k in range(3):
            _one_by_one(socks, q, b"warm%d." % k)
        before = g.node_status("%s:%d" % dead)["fails"]
        for k in range(4):
            assert set(_burst(worker, socks, q, b"b%d." % k)) == \
                {node_addr(node)}
        tried = g.node_status("%s:%d" % dead)["fails"] - before
    finally:
        for s in socks:
            s.close()
    # at most the first POST of each burst tried it; the rest were a run
    assert tried <= 4, tried
    assert len(_drain(node, q)) == 3 * 12 + 4 * 12


def test_run_ends_when_the_node_has_no_pipe_room(gateway_factory,
                                                memqd_factory):
    """A run is bounded by the replies its node owes (the slack, 32 a unit
    of weight), but what a node can owe is what its pipes hold: with
    weight 16 and one pipe of 256 the slack (512) is never reached, and
    the POSTs past the pipe's room went on as a run to the same node, each
    on a connection of its own, while the other node of the same weight
    had nothing.  A node whose pipes are full ends its run."""
    nodes = [memqd_factory(args=["--sync", "none"]) for _ in range(2)]
    addrs = [node_addr(n) for n in nodes]
    g = gateway_factory(nodes, workers=1, cluster_extra="publish_pipes 1;",
                        weights={addrs[0]: 16, addrs[1]: 16})
    worker = _worker(g)
    q = qname()
    socks = [socket.create_connection(("127.0.0.1", g.port), timeout=30)
             for _ in range(400)]
    try:
        got = _burst(worker, socks, q, b"r.")
    finally:
        for s in socks:
            s.close()
    counts = [got.count(a) for a in addrs]
    # one pipe's room (and the POST that found it full) on the first node
    # of the run, the rest on the other; replies read meanwhile may give
    # the first some more room, never all of it
    assert min(counts) >= 100, counts
    assert sum(len(_drain(n, q)) for n in nodes) == 400


@pytest.mark.parametrize("kind", ["batch", "big"])
def test_posts_outside_pipes_make_no_runs(gateway_factory, memqd_factory,
                                          kind):
    """Runs are for sets that share a pipe (one write, one wake-up of one
    node).  A batch or a POST too big for a pipe has a connection of its
    own, so a run would save nothing, and nothing bounds it (such POSTs are
    not owed, their reply times not kept): a burst of them is spread by
    round robin, one by one, as before runs."""
    nodes = [memqd_factory(args=["--sync", "none"]) for _ in range(3)]
    addrs = [node_addr(n) for n in nodes]
    g = gateway_factory(nodes, workers=1)
    worker = _worker(g)
    q = qname()
    if kind == "batch":
        head = b"Content-Type: application/x-ndjson\r\n"
        body = b'{"a":1}\n{"b":2}\n'
    else:
        head = b""
        body = b"x" * 20000
    socks = [socket.create_connection(("127.0.0.1", g.port), timeout=10)
             for _ in range(12)]
    try:
        time.sleep(0.002)
        try:
            stop_process(worker)
            for s in socks:
                s.sendall(b"POST /mq?topic=%s HTTP/1.1\r\nHost: x\r\n%s"
                          b"Content-Length: %d\r\n\r\n%s"
                          % (q.encode(), head, len(body), body))
        finally:
            os.kill(worker, signal.SIGCONT)
        got = [_read_reply(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert [got.count(a) for a in addrs] == [4, 4, 4], got
    per = 2 if kind == "batch" else 1
    assert [len(_drain(n, q)) for n in nodes] == [4 * per] * 3


def test_slow_node_gets_no_runs(gateway_factory, memqd_factory):
    """A node whose replies lag (every fdatasync 200 ms) keeps no run: when
    round robin starts a burst on it, it gets that one POST and the rest of
    the burst goes on to a quick node, instead of a whole millisecond of
    clients waiting on it."""
    slow = memqd_factory(args=["--sync", "always"],
                         env={"MEMQD_FAULT_FSYNC_DELAY_MS": "200"})
    # the quick nodes do not fsync: a disk that stalls now and then must
    # not make one of them lag too
    fast = [memqd_factory(args=["--sync", "none"]) for _ in range(2)]
    g = gateway_factory([slow] + fast, workers=1)
    worker = _worker(g)
    q = qname()
    socks = [socket.create_connection(("127.0.0.1", g.port), timeout=30)
             for _ in range(12)]
    try:
        # two rounds one at a time: the slow node answers two of them, and
        # its replies' average is what tells it apart
        first = _one_by_one(socks[:6], q, b"warm")
        assert first.count(node_addr(slow)) == 2, first
        bursts = [_burst(worker, socks, q, b"b%d." % k) for k in range(6)]
    finally:
        for s in socks:
            s.close()
    # round robin starts some of the bursts on the slow node (a run to it
    # would be all 12); the slow node gets at most that first POST
    on_slow = [b.count(node_addr(slow)) for b in bursts]
    assert max(on_slow) <= 1, bursts
    assert sum(on_slow) >= 1, bursts
    stored = sum(len(_drain(n, q)) for n in [slow] + fast)
    assert stored == 6 + 72


def test_retry_on_next_node(gateway_factory, memqd_factory):
    nodes = [memqd_factory() for _ in range(3)]
    g = gateway_factory(nodes, cluster_extra="max_fails 1; fail_timeout 30s;")
    g.expect_errors()
    dead = nodes[1]
    dead.stop_checked()
    q = qname()
    for i in range(9):
        r = g.publish(q, b"m%d" % i)
        assert r.status_code == 201, r.text
        assert r.json()["node"] != node_addr(dead)
    got = _drain(nodes[0], q) + _drain(nodes[2], q)
    assert sorted(i.data for i in got) == sorted(b"m%d" % i
                                                 for i in range(9))
    st = g.node_status(node_addr(dead))
    assert st["state"] == "down" and st["fails"] >= 1
    assert st["last_error"]
    dead.start(port=dead.port)


def test_object_too_large_is_413(gateway_factory, memqd_factory):
    node = memqd_factory(args=["--max-item-size", "1k"])
    g = gateway_factory([node])
    q = qname()
    r = g.publish(q, b"x" * 2000)
    assert r.status_code == 413, r.text
    assert r.json() == {"error": "message too large", "status": 413}
    # the node is not blamed for it
    assert g.node_status(node_addr(node))["state"] == "up"
    assert g.publish(q, b"small").status_code == 201


def test_compress_min_size(gateway_factory, memqd_factory):
    node = memqd_factory()
    g = gateway_factory([node], loc_extra="memq_compress_min_size 100;")
    q = qname()
    big = b"abcdefgh" * 100
    assert g.publish(q, big).status_code == 201
    assert g.publish(q, b"tiny").status_code == 201
    items = _drain(node, q)
    assert items[0].flags == 1 and len(items[0].data) < len(big)
    assert zlib.decompress(items[0].data) == big
    assert items[1].flags == 0 and items[1].data == b"tiny"
    # and the gateway inflates it again on the way out
    assert g.publish(q, big).status_code == 201
    assert g.lines(q) == [big]


# counts zlib's compress2() calls in nginx: one line per call (its input
# size) appended to COUNT_PATH; preloaded before libz, so the module's
# calls come here
COMPRESS_COUNTER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

int
compress2(Bytef *dst, uLongf *dlen, const Bytef *src, uLong slen, int lvl)
{
    int    fd, n;
    char   line[32];
    int  (*real)(Bytef *, uLongf *, const Bytef *, uLong, int);

    real = (int (*)(Bytef *, uLongf *, const Bytef *, uLong, int))
           dlsym(RTLD_NEXT, "compress2");
    n = snprintf(line, sizeof(line), "%lu\n", (unsigned long) slen);
    fd = open(COUNT_PATH, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        (void) write(fd, line, n);
        close(fd);
    }
    return real(dst, dlen, src, slen, lvl);
}
"""


def test_big_single_message_deflated_once(gateway_factory, memqd_factory,
                                          tmp_path, monkeypatch):
    """A single POST at least memq_compress_min_size whose deflated set is
    still too big for a publish pipe goes on a connection of its own, and
    is deflated once (the window built for the pipe is the one sent), with
    pipes on; it is stored deflated and read back as sent."""
    count = tmp_path / "compress2.calls"
    src = tmp_path / "count.c"
    lib = tmp_path / "libcount.so"
    src.write_text(COMPRESS_COUNTER)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib),
                    '-DCOUNT_PATH="%s"' % count, str(src), "-ldl"],
                   check=True)
    monkeypatch.setattr(gwutil, "PRELOAD", ":".join(
        x for x in (gwutil.PRELOAD, str(lib)) if x))

    node = memqd_factory()
    g = gateway_factory([node], workers=1,
                        loc_extra="memq_compress_min_size 100;")
    q = qname()
    # incompressible: deflated it stays above a pipe's 16 KiB
    big = os.urandom(40000)
    r = g.publish(q, big)
    assert r.status_code == 201, r.text
    calls = count.read_text().split() if count.exists() else []
    assert calls == ["40000"], calls

    items = _drain(node, q)
    assert len(items) == 1 and items[0].flags == 1
    assert zlib.decompress(items[0].data) == big


@pytest.mark.parametrize("dead", ["refused", "unreachable"])
def test_window_built_for_a_refusing_node_goes_whole_to_the_next(
        gateway_factory, memqd_factory, dead):
    """A single POST whose first node refuses the connect (at once: no
    route, or later: a reset) goes to the next node, with the window built
    for the first (deflated or not, in a pipe or on a connection of its
    own): every message is stored once, in order, with its flags, and
    reads back as sent."""
    if dead == "refused":
        dead = ("127.0.0.1", gwutil.closed_port())
    else:
        # connect() fails at once (ENETUNREACH)
        dead = ("255.255.255.255", 9)
    node = memqd_factory()
    g = gateway_factory([dead, node], workers=1,
                        cluster_extra="max_fails 0;",
                        loc_extra="memq_compress_min_size 100;")
    g.expect_errors()
    q = qname()
    rnd = random.Random(5)
    msgs = []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            m = b"small %d" % i
        elif kind == 1:
            m = (b"compressible %d " % i) * 2000
        elif kind == 2:
            # incompressible, too big for a pipe once deflated
            m = bytes(rnd.randrange(256) for _ in range(20000 + i))
        else:
            m = bytes(rnd.randrange(256) for _ in range(5000 + i))
        msgs.append(m)
        r = g.publish(q, m)
        assert r.status_code == 201, (i, r.text)
        assert r.json() == {"queued": 1, "node": node_addr(node)}
    # the refusing node was tried first for half of them
    assert g.node_status("%s:%d" % dead)["fails"] >= len(msgs) // 2 - 1
    items = _drain(node, q)
    assert len(items) == len(msgs)
    for it, m in zip(items, msgs):
        if len(m) >= 100:
            assert it.flags == 1
            assert zlib.decompress(it.data) == m
        else:
            assert it.flags == 0 and it.data == m
