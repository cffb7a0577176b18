"""etcd as the config centre (issue 4, gateway side): every worker follows
/memq/<cluster>/nodes/ through etcd's v3 JSON gateway; nodes that join are
used for publish and consume, nodes that leave are drained, no reload; an
unreachable etcd leaves the last known list in force and the status says
so; several URLs are tried in turn.  A real single-member etcd runs on
free loopback ports.  Until memqd registers itself, the tests write the
keys as memqd does: {"addr":"host:port","weight":N} under a lease."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

import gwutil
from gwutil import (SLOW, Gateway, deadline_after, free_port, node_addr,
                    qname, total_items, wait_for)

ETCD = shutil.which("etcd")
MEMQD = gwutil.base.MEMQD

pytestmark = pytest.mark.skipif(ETCD is None,
                                reason="etcd not installed (etcd-server)")


def _b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    """One single-member etcd in its own data dir, restartable on the same
    ports."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.data = self.tmp / "data"
        self.log_path = self.tmp / "etcd.log"
        self.proc = None
        self.port = None
        self.peer_port = None
        self.log_offset = 0

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=20.0):
        """Starts etcd (on the same ports and data as before, if it ran)
        and waits until a range request answers."""
        first = self.port is None
        for _ in range(3):
            if self.port is None:
                self.port, self.peer_port = free_port(), free_port()
            peer = "http://127.0.0.1:%d" % self.peer_port
            self.log_offset = (self.log_path.stat().st_size
                               if self.log_path.exists() else 0)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [ETCD, "--name", "default",
                     "--data-dir", str(self.data),
                     "--listen-client-urls", self.url,
                     "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer,
                     "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", "default=" + peer],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError:
                if first and self.proc.poll() is not None and \
                        "address already in use" in self.log_text():
                    self.proc = None
                    self.port = None
                    shutil.rmtree(self.data, ignore_errors=True)
                    continue
                raise
        raise AssertionError("etcd: no free ports after 3 attempts")

    def wait_ready(self, timeout):
        end = deadline_after(timeout)
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited with %s:\n%s" % (
                    self.proc.returncode, self.log_text()[-3000:]))
            try:
                r = requests.post(self.url + "/v3/kv/range",
                                  json={"key": _b64("/")}, timeout=1)
                if r.status_code == 200:
                    return
                last = r.status_code
            except requests.RequestException as e:
                last = e
            time.sleep(0.05)
        raise AssertionError("etcd not ready in %.1fs (%r):\n%s" % (
            timeout * SLOW, last, self.log_text()[-3000:]))

    def stop(self):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def log_text(self):
        """The log of the last start."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", "replace")

    # -- the v3 JSON API

    def call(self, path, body):
        r = requests.post(self.url + path, json=body, timeout=5 * SLOW)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def lease(self, ttl):
        return self.call("/v3/lease/grant", {"TTL": ttl})["ID"]

    def keepalive(self, lease):
        self.call("/v3/lease/keepalive", {"ID": lease})

    def put(self, key, value, lease=None):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/v3/kv/put", body)

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def register(self, node, lease=None, weight=1, cluster="main",
                 prefix=None):
        """Writes the key memqd writes for itself; returns the key."""
        a = node_addr(node)
        key = (prefix or "/memq/%s/nodes/" % cluster) + a
        self.put(key, json.dumps({"addr": a, "weight": weight}),
                 lease or self.lease(600))
        return key


@pytest.fixture
def etcd(tmp_path):
    e = Etcd(tmp_path / "etcd")
    e.start()
    yield e
    e.stop()


class KeepAlive:
    """Keeps a lease alive from a thread, as memqd does, until stopped."""

    def __init__(self, etcd, lease, every=0.3):
        self.etcd, self.lease, self.every = etcd, lease, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.wait(self.every):
            try:
                self.etcd.keepalive(self.lease)
            except (AssertionError, requests.RequestException):
                pass

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


# a node that is slow for a moment on a loaded machine is neither an error
# nor benched for long: these tests are about the list, not about health
TIMEOUTS = "connect_timeout 1s; read_timeout 10s; fail_timeout 1s;"


def _gateway(gateway_factory, nodes, etcd_args):
    return gateway_factory(nodes, cluster_extra="etcd %s;" % etcd_args,
                           timeouts=TIMEOUTS)


def _drain_until(g, q, expect, got=()):
    """Drains q until every message of expect came (a node benched after
    a slow moment is back within fail_timeout); returns all received."""
    got = set(got)

    def more():
        got.update(g.lines(q))
        return expect <= got
    wait_for(more, timeout=10, interval=0.2,
             what="%d messages drained" % len(expect))
    return got


def _nodes(g):
    return {n["addr"]: n for n in g.status().json()["clusters"][0]["nodes"]}


def _etcd_state(g):
    return g.status().json()["clusters"][0]["etcd"]


def _publish_nodes(g, count=12):
    """Publishes count messages to a fresh queue; returns the nodes that
    took them (every publish must succeed).  The probes stay queued: while
    the workers' lists differ a drain could miss some."""
    q = qname()
    nodes = []
    for i in range(count):
        r = g.publish(q, b"probe")
        assert r.status_code == 201, (r.status_code, r.text)
        nodes.append(r.json()["node"])
    return set(nodes)


def _used_by_all(g, expect, count=12):
    """Both workers route over exactly expect (a set of host:port): the
    publishes of several rounds, over fresh connections, all land there
    and reach every node of it."""
    return wait_for(lambda: _publish_nodes(g, count) == expect, timeout=8,
                    what="publishes spread over %s" % sorted(expect))


def test_gw_etcd_node_joins_is_used_and_leaves(gateway_factory,
                                               memqd_factory, etcd):
    a, b = memqd_factory(), memqd_factory()
    g = _gateway(gateway_factory, [a], etcd.url)
    st = wait_for(lambda: _etcd_state(g)["state"] == "up" and _etcd_state(g),
                  what="etcd up in the status")
    assert st["nodes"] == 0 and st["endpoint"] == etcd.url
    assert set(_nodes(g)) == {node_addr(a)}

    # joins: in the status, then used by every worker, no reload
    t0 = time.monotonic()
    key_b = etcd.register(b, weight=2)
    wait_for(lambda: node_addr(b) in _nodes(g), timeout=5,
             what="etcd node in the status")
    seen = time.monotonic() - t0
    st = _nodes(g)
    assert st[node_addr(b)]["source"] == "etcd"
    assert st[node_addr(b)]["weight"] == 2
    assert st[node_addr(a)]["source"] == "static"
    _used_by_all(g, {node_addr(a), node_addr(b)})
    used = time.monotonic() - t0
    print("etcd node: in the status after %.2fs, used by every worker "
          "after %.2fs" % (seen, used))
    assert "node %s joined from etcd" % node_addr(b) in g.error_text()

    # publishes reach it, consumers drain it
    q = qname()
    sent, where = set(), set()
    for i in range(30):
        m = b"m%d" % i
        r = g.publish(q, m)
        assert r.status_code == 201
        where.add(r.json()["node"])
        sent.add(m)
    assert where == {node_addr(a), node_addr(b)}
    assert _drain_until(g, q, sent) == sent
    assert total_items([a, b], q) == 0

    # a static node in etcd too is listed once, as static
    key_a = etcd.register(a)
    wait_for(lambda: _etcd_state(g)["nodes"] == 2, what="two etcd nodes")
    st = g.status().json()["clusters"][0]["nodes"]
    assert [n["addr"] for n in st].count(node_addr(a)) == 1
    assert _nodes(g)[node_addr(a)]["source"] == "static"

    # leaves: out of the status, no new work for it
    t0 = time.monotonic()
    etcd.delete(key_b)
    wait_for(lambda: node_addr(b) not in _nodes(g), timeout=5,
             what="etcd node gone from the status")
    _used_by_all(g, {node_addr(a)})
    print("etcd node removed: unused by every worker after %.2fs"
          % (time.monotonic() - t0))
    assert "node %s left etcd, drained" % node_addr(b) in g.error_text()

    # the static line keeps a node that leaves etcd
    etcd.delete(key_a)
    wait_for(lambda: _etcd_state(g)["nodes"] == 0, what="no etcd node")
    assert set(_nodes(g)) == {node_addr(a)}


def test_gw_etcd_weight_past_1000_is_left_out(gateway_factory,
                                             memqd_factory, etcd):
    """Weights 1-1000, as memqd --weight: anyone who can write the keys
    cannot make the node choice's sums wrap."""
    a, b, c = memqd_factory(), memqd_factory(), memqd_factory()
    g = _gateway(gateway_factory, [a], etcd.url)
    etcd.register(b, weight=4611686018427387904)
    etcd.register(c, weight=1000)
    wait_for(lambda: node_addr(c) in _nodes(g), timeout=5,
             what="etcd node in the status")
    st = _nodes(g)
    assert node_addr(b) not in st
    assert st[node_addr(c)]["weight"] == 1000
    assert "bad weight" in g.error_text()


def test_gw_etcd_lease_expiry_streams_keep_flowing(gateway_factory,
                                                   memqd_factory, etcd):
    """Three nodes from etcd only; one is killed and its lease runs out
    while a stream consumes and a producer publishes: the node leaves the
    list within TTL + slack, no publish fails, and everything stored on
    the two survivors is consumed."""
    a, b, c = (memqd_factory() for _ in range(3))
    long_lease = etcd.lease(600)
    etcd.register(a, long_lease)
    etcd.register(b, long_lease)
    ttl = 2
    short = etcd.lease(ttl)
    ka = KeepAlive(etcd, short)
    etcd.register(c, short)

    g = _gateway(gateway_factory, [], etcd.url)
    g.expect_errors()       # the killed node fails the stream's request
    every = {node_addr(n) for n in (a, b, c)}
    wait_for(lambda: set(_nodes(g)) == every, what="three etcd nodes")
    _used_by_all(g, every)

    q = qname()
    got, published, failed = [], [], []
    stop = threading.Event()

    def consume():
        with requests.get(g.url("/mq"), params={"topic": q, "wait": "4"},
                          stream=True, timeout=60 * SLOW) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                got.append(line)

    def produce():
        i = 0
        while not stop.is_set():
            m = b"p%d" % i
            i += 1
            try:
                r = g.publish(q, m)
            except requests.RequestException as e:
                failed.append((m, repr(e)))
                continue
            if r.status_code != 201:
                failed.append((m, r.status_code))
            else:
                published.append((m, r.json()["node"], time.monotonic()))
            time.sleep(0.01)

    tc = threading.Thread(target=consume)
    tp = threading.Thread(target=produce)
    tc.start()
    tp.start()
    try:
        wait_for(lambda: len(got) >= 30, timeout=10, what="stream flowing")

        t0 = time.monotonic()
        c.kill()
        ka.stop()
        wait_for(lambda: node_addr(c) not in _nodes(g),
                 timeout=ttl + 6, what="killed node out after its TTL")
        gone = time.monotonic()
        print("killed node left the list %.2fs after SIGKILL (TTL %ds)"
              % (gone - t0, ttl))

        # the stream goes on from the others
        n = len(got)
        wait_for(lambda: len(got) >= n + 30, timeout=10,
                 what="stream still flowing after the node left")
    finally:
        stop.set()
        tp.join(30)
        tc.join(60 * SLOW)
    assert not tc.is_alive(), "stream did not end"

    assert not failed, failed[:5]
    # after the list changed (both workers: one interval more) nothing
    # went to the dead node
    late = [p for p in published if p[2] > gone + 1.5 and
            p[1] == node_addr(c)]
    assert not late, late[:5]

    # everything the survivors took is consumed (stream, then a drain)
    survivors = {m for m, node, _ in published if node != node_addr(c)}
    _drain_until(g, q, survivors, got)
    assert total_items([a, b], q) == 0


def test_gw_etcd_unreachable_keeps_last_list(gateway_factory, memqd_factory,
                                             etcd):
    """etcd stopped while traffic flows: the status says unreachable, the
    last list stays in force, no request fails; etcd back: followed
    again."""
    a, b, c = (memqd_factory() for _ in range(3))
    lease = etcd.lease(600)
    etcd.register(a, lease)
    etcd.register(b, lease)

    g = _gateway(gateway_factory, [], etcd.url)
    ab = {node_addr(a), node_addr(b)}
    wait_for(lambda: set(_nodes(g)) == ab, what="two etcd nodes")
    _used_by_all(g, ab)

    q = qname()
    published, failed = [], []
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            m = b"u%d" % i
            i += 1
            try:
                r = g.publish(q, m)
                if r.status_code == 201:
                    published.append(m)
                else:
                    failed.append((m, r.status_code))
            except requests.RequestException as e:
                failed.append((m, repr(e)))
            time.sleep(0.01)

    tp = threading.Thread(target=produce)
    tp.start()
    try:
        etcd.stop()
        st = wait_for(lambda: (lambda e: e["state"] == "unreachable"
                               and e)(_etcd_state(g)),
                      timeout=5, what="etcd unreachable in the status")
        assert st["nodes"] == 2
        assert st["last_error"].startswith(etcd.url), st
        assert st["error"] == st["last_error"], st
        assert isinstance(st["last_error_at"], int), st
        assert set(_nodes(g)) == ab
        prom = g.status(format="prometheus").text
        assert 'memq_etcd_up{cluster="main"} 0' in prom, prom
        assert 'memq_etcd_nodes{cluster="main"} 2' in prom, prom

        # the last list is in force for every worker
        _used_by_all(g, ab)
        n = len(published)
        wait_for(lambda: len(published) >= n + 20, what="publishes go on")

        etcd.start()
        wait_for(lambda: _etcd_state(g)["state"] == "up", timeout=10,
                 what="etcd up again in the status")
        # the error is history now, kept with its time
        back = _etcd_state(g)
        assert back["error"] == "", back
        assert back["last_error"].startswith(etcd.url), back
        assert back["last_error_at"] >= st["last_error_at"], back
    finally:
        stop.set()
        tp.join(30)
    assert not failed, failed[:5]
    prom = g.status(format="prometheus").text
    assert 'memq_etcd_up{cluster="main"} 1' in prom, prom
    text = g.error_text()
    assert "etcd unreachable" in text and "etcd reachable again" in text

    # every message is there
    assert _drain_until(g, q, set(published)) == set(published)

    # followed again: a node joins, another leaves
    etcd.register(c)
    etcd.delete("/memq/main/nodes/" + node_addr(b))
    ac = {node_addr(a), node_addr(c)}
    wait_for(lambda: set(_nodes(g)) == ac, what="list followed again")
    _used_by_all(g, ac)


def test_gw_etcd_reload_while_unreachable_keeps_list(gateway_factory,
                                                     memqd_factory, etcd):
    """A reload while etcd is away: the new workers start from the list
    the old ones had (kept in the shared zone), not from nothing."""
    a, b = memqd_factory(), memqd_factory()
    etcd.register(a)
    etcd.register(b)
    g = _gateway(gateway_factory, [], etcd.url)
    ab = {node_addr(a), node_addr(b)}
    wait_for(lambda: set(_nodes(g)) == ab, what="two etcd nodes")
    _used_by_all(g, ab)

    etcd.stop()
    wait_for(lambda: _etcd_state(g)["state"] == "unreachable",
             what="etcd unreachable")
    g.reload()
    # the old workers gone: a request one of them took in its last moment
    # is the reload's business, not this test's
    wait_for(lambda: g.error_text().count("exited with code") >= 2,
             what="the old workers gone")
    assert set(_nodes(g)) == ab
    _used_by_all(g, ab)
    q = qname()
    sent = {b"r%d" % i for i in range(20)}
    for m in sent:
        assert g.publish(q, m).status_code == 201
    assert _drain_until(g, q, sent) == sent
    wait_for(lambda: _etcd_state(g)["state"] == "unreachable",
             what="the new workers find etcd away too")
    assert _etcd_state(g)["nodes"] == 2


def test_gw_etcd_urls_in_turn_and_prefix(gateway_factory, memqd_factory,
                                         etcd):
    a, b = memqd_factory(), memqd_factory()
    dead = "http://127.0.0.1:%d" % free_port()
    g = _gateway(gateway_factory, [],
                 "%s,%s/ prefix=/other/memq/ interval=200ms"
                 % (dead, etcd.url))
    etcd.register(a, prefix="/other/memq/")
    etcd.register(b)                    # the default prefix: not followed
    etcd.put("/other/memq/junk", "not json")
    wait_for(lambda: set(_nodes(g)) == {node_addr(a)},
             what="node under the configured prefix")
    # the status is shared, but each worker learns the list from its own
    # poll: wait for a few rounds so both workers have had an answer
    wait_for(lambda: _etcd_state(g)["polls"] >= 8, what="both workers polled")
    st = _etcd_state(g)
    assert st["state"] == "up" and st["endpoint"] == etcd.url, st
    assert st["nodes"] == 1
    wait_for(lambda: "etcd entry left out" in g.error_text(),
             what="the junk entry's warning")
    q = qname()
    assert g.publish(q, b"x").json()["node"] == node_addr(a)
    assert g.lines(q) == [b"x"]


def test_gw_etcd_none_reachable_at_start(gateway_factory, memqd_factory):
    """No etcd at all: nginx starts, the status says unreachable, static
    nodes work."""
    a = memqd_factory()
    dead = ",".join("http://127.0.0.1:%d" % free_port() for _ in range(2))
    g = _gateway(gateway_factory, [a], dead)
    st = wait_for(lambda: (lambda e: e["state"] == "unreachable" and e)(
        _etcd_state(g)), what="unreachable")
    assert st["nodes"] == 0 and st["failures"] >= 1
    assert re.search(r"connect\(\) failed", st["last_error"]), st
    q = qname()
    assert g.publish(q, b"static").status_code == 201
    assert g.lines(q) == [b"static"]


@pytest.mark.parametrize("arg,expect", [
    ("", 'invalid number of arguments in "etcd"'),
    ("ftp://127.0.0.1:2379", 'invalid etcd URL "ftp://127.0.0.1:2379"'),
    ("http://127.0.0.1:2379/v3", "no path expected"),
    ("http://127.0.0.1:2379,", 'invalid etcd URL ""'),
    ("http://127.0.0.1:99999", 'invalid etcd URL'),
    ("http://127.0.0.1:2379 prefix=", 'invalid parameter "prefix="'),
    ("http://127.0.0.1:2379 prefix=memq", 'invalid parameter "prefix=memq"'),
    ("http://127.0.0.1:2379 interval=0", 'invalid parameter "interval=0"'),
    ("http://127.0.0.1:2379 ttl=5", 'invalid parameter "ttl=5"'),
    ("http://127.0.0.1:2379; etcd http://127.0.0.1:2380",
     '"etcd" directive is duplicate'),
])
def test_gw_etcd_bad_directive(tmp_path, arg, expect):
    g = Gateway(tmp_path, [], cluster_extra="etcd %s;" % arg)
    ok, out = g.test_conf()
    assert not ok, out
    assert "[emerg]" in out and expect in out, out


def test_gw_etcd_good_directive(tmp_path):
    g = Gateway(tmp_path, [],
                cluster_extra="etcd http://127.0.0.1:2379,http://localhost"
                              " prefix=/x/y/ interval=500ms;")
    ok, out = g.test_conf()
    assert ok, out


def _memqd_has_etcd():
    try:
        p = subprocess.run([MEMQD, "--help"], capture_output=True,
                           text=True, timeout=10)
    except OSError:
        return False
    return "--etcd" in p.stdout + p.stderr


@pytest.mark.skipif(not os.access(MEMQD, os.X_OK) or not _memqd_has_etcd(),
                    reason="memqd without --etcd")
def test_gw_etcd_memqd_registers_itself(gateway_factory, memqd_factory,
                                        etcd):
    """memqd --etcd: both nodes appear in the gateway's list and are used;
    one killed with SIGKILL leaves within its lease TTL (5 s) + slack, the
    other, stopped cleanly, leaves at once (its lease is revoked)."""
    nodes = []
    for _ in range(2):
        port = free_port()
        m = memqd_factory(args=["--etcd", etcd.url, "--advertise",
                                "127.0.0.1:%d" % port, "--cluster", "main"],
                          wait=False)
        m.start(port=port)
        nodes.append(m)
    g = _gateway(gateway_factory, [], etcd.url)
    g.expect_errors()       # requests to the killed node fail
    both = {node_addr(m) for m in nodes}
    wait_for(lambda: set(_nodes(g)) == both, timeout=10,
             what="self-registered memqd nodes in the status")
    _used_by_all(g, both)

    t0 = time.monotonic()
    nodes[0].kill()
    wait_for(lambda: set(_nodes(g)) == {node_addr(nodes[1])},
             timeout=5 + 7, what="killed memqd out after its lease TTL")
    print("memqd killed: out of the list after %.2fs"
          % (time.monotonic() - t0))
    _used_by_all(g, {node_addr(nodes[1])})

    t0 = time.monotonic()
    nodes[1].stop_checked()
    wait_for(lambda: not _nodes(g), timeout=5,
             what="stopped memqd out of the list")
    print("memqd stopped: out of the list after %.2fs"
          % (time.monotonic() - t0))


class HoldingEtcd:
    """A fake etcd for the range request: answers with one node, or, while
    hold is set, reads the request and keeps the connection open without
    an answer until release() (an etcd that stalls mid-poll)."""

    def __init__(self, addr):
        import socket
        value = _b64(json.dumps({"addr": addr, "weight": 1}))
        body = json.dumps({"header": {"revision": "1"}, "count": "1",
                           "kvs": [{"key": _b64("/memq/main/nodes/" + addr),
                                    "value": value}]}).encode()
        self.answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                       b"\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
        self.hold = False
        self.held = []
        self.answered = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _serve(self, c):
        data = b""
        c.settimeout(10)
        try:
            while b"\r\n\r\n" not in data:
                part = c.recv(4096)
                if not part:
                    c.close()
                    return
                data += part
        except OSError:
            c.close()
            return
        with self.lock:
            if self.hold:
                self.held.append(c)
                return
            self.answered += 1
        try:
            c.sendall(self.answer)
        finally:
            c.close()

    def take_held(self):
        """The held connections, forgotten here (call with lock held)."""
        held, self.held = self.held, []
        return held

    def close(self):
        self.sock.close()
        with self.lock:
            held = self.take_held()
        for c in held:
            c.close()


def test_gw_etcd_reload_does_not_wait_for_a_stalled_poll(gateway_factory,
                                                         memqd_factory):
    """A reload while etcd holds a poll of the old generation unanswered:
    the old worker exits at once (the poll is closed, not waited for), and
    the poll cut short says nothing about etcd: the status stays "up"."""
    a = memqd_factory()
    fake = HoldingEtcd(node_addr(a))
    try:
        g = gateway_factory([], cluster_extra="etcd %s interval=100ms;"
                            % fake.url,
                            timeouts="connect_timeout 1s; read_timeout 60s;")
        wait_for(lambda: _etcd_state(g)["state"] == "up"
                 and set(_nodes(g)) == {node_addr(a)}, what="etcd up")

        fake.hold = True
        wait_for(lambda: fake.held, what="a held poll")
        with fake.lock:
            old = fake.take_held()
            fake.hold = False
        exits = g.error_text().count("exited with code")
        answered = fake.answered
        g.reload()
        # within the poll's 60 s read timeout, and the held poll still open
        wait_for(lambda: g.error_text().count("exited with code")
                 >= exits + 2, timeout=20, what="the old workers gone")
        wait_for(lambda: fake.answered >= answered + 4,
                 what="the new workers' answered polls")
        st = _etcd_state(g)
        assert st["state"] == "up" and st["failures"] == 0, st
        assert "unreachable" not in g.error_text()
        assert all(c.fileno() != -1 for c in old)
    finally:
        fake.close()
