"""Publish pipes (issue 8): single POSTs to a node share a few pipelined
connections per worker, and the node's replies are matched in FIFO order
to the waiting requests (docs/gateway.md "Publish pipes").

A fake node (PipeNode) holds its replies until the test releases them, so
that what is in flight, on how many connections, is known exactly; real
memqd nodes show that nothing is lost or stored twice."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from gwutil import (Client, SLOW, ScriptedNode, deadline_after, fake_first,
                    node_addr, qname, read_to_close, wait_for)


TOO_MANY = b"SERVER_ERROR too many connections\r\n"


class PipeNode(ScriptedNode):
    """Speaks just enough memcache for publishing: parses "set" commands
    with their data blocks and records (connection number, payload).
    With hold set, replies wait until release(); reply(payload) says what
    to answer for a set (STORED by default)."""

    def __init__(self, hold=True, reply=None, rcvbuf=None):
        # set before the listener starts accepting
        self.hold = hold
        self.stalled = set()      # conn numbers not read for now
        self.reply = reply or (lambda payload: b"STORED\r\n")
        self.lock = threading.Lock()
        self.sets = []            # (conn number, payload), in arrival order
        self.owed = {}            # conn number -> [reply bytes]
        self.conns = {}           # conn number -> socket
        self.accepted = 0
        ScriptedNode.__init__(self, answer=None, rcvbuf=rcvbuf)
        # the pipe cap test opens 45 connections at once
        self.sock.listen(512)

    def _serve(self, c):
        with self.lock:
            self.accepted += 1
            n = self.accepted
            self.conns[n] = c
            self.owed[n] = []
        self._serve_sets(c, n)

    def _serve_sets(self, c, n):
        buf = b""
        c.settimeout(0.05)
        while not self.closed:
            if n in self.stalled:
                time.sleep(0.01)
                continue
            try:
                d = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not d:
                return
            buf += d
            while True:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                words = buf[:i].split()
                if not words or words[0] != b"set":
                    buf = buf[i + 2:]
                    continue
                size = int(words[4])
                if len(buf) < i + 2 + size + 2:
                    break
                payload = buf[i + 2:i + 2 + size]
                buf = buf[i + 2 + size + 2:]
                with self.lock:
                    self.sets.append((n, payload))
                    r = self.reply(payload)
                    if self.hold:
                        self.owed[n].append(r)
                        continue
                try:
                    c.sendall(r)
                except OSError:
                    return

    def count(self):
        with self.lock:
            return len(self.sets)

    def conns_used(self):
        with self.lock:
            return len({n for n, _ in self.sets})

    def release(self, limit=None, piece=None, close=False, pause=0.002):
        """Sends the owed replies, at most limit of them over all
        connections (oldest connection first); piece: in pieces of that
        many bytes, `pause` seconds apart; close: then closes every
        connection."""
        with self.lock:
            if limit is None:
                self.hold = False
            out = []
            for n in sorted(self.owed):
                k = len(self.owed[n]) if limit is None else \
                    min(limit, len(self.owed[n]))
                if limit is not None:
                    limit -= k
                out.append((self.conns[n], b"".join(self.owed[n][:k])))
                self.owed[n] = self.owed[n][k:]
        for c, data in out:
            step = piece or len(data) or 1
            for i in range(0, len(data), step):
                c.sendall(data[i:i + step])
                if piece:
                    # each piece its own segment
                    time.sleep(pause)
        if close:
            with self.lock:
                conns = list(self.conns.values())
                self.conns = {}
                self.owed = {}
            for c in conns:
                c.close()

    def close(self):
        self.closed = True
        for c in list(self.conns.values()):
            try:
                c.close()
            except OSError:
                pass
        ScriptedNode.close(self)


def post(g, topic, body):
    """A raw POST sent; the caller reads the answer with answer()."""
    s = socket.create_connection(("127.0.0.1", g.port), timeout=20 * SLOW)
    s.sendall(b"POST /mq?topic=%s HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
              % (topic.encode(), len(body), body))
    return s


def answer(s):
    """(status, body) of a POST's answer, the socket closed."""
    head, _, body = read_to_close(s).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def node_messages(node, q):
    """Every message of q on one memqd, in its order (taken)."""
    c = Client(node.addr)
    try:
        got = []
        while True:
            d = c.getdata(q)
            if d is None:
                return got
            got.append(d)
    finally:
        c.close()


def json_body(body):
    import json
    return json.loads(body)


@pytest.fixture
def fake():
    nodes = []

    def make(**kw):
        n = PipeNode(**kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.close()


def test_posts_share_connections(gateway_factory, fake):
    """50 POSTs in flight at once reach the node over at most
    workers x publish_pipes connections (before pipes: 50), and each gets
    the answer to its own set."""
    node = fake()
    g = gateway_factory([node.addr])
    q = qname()
    socks = [post(g, q, b"m%d" % i) for i in range(50)]
    wait_for(lambda: node.count() == 50, timeout=10,
             what="50 sets at the node")
    assert node.accepted <= 2 * 2, node.accepted
    assert node.conns_used() <= 2 * 2
    node.release()
    for s in socks:
        status, body = answer(s)
        assert status == 201, body
        assert json_body(body) == {"queued": 1, "node": node_addr(node.addr)}
    # the pipes went back to the pool: more POSTs reuse them
    for i in range(5):
        r = g.publish(q, b"again")
        assert r.status_code == 201, r.text
    assert node.accepted <= 2 * 2


@pytest.mark.parametrize("piece", [1, 3])
def test_fifo_matching(gateway_factory, memqd_factory, fake, piece):
    """Replies for one pipe matched in order: STORED, queue full (the
    message goes to the next node), object too large (413), another error
    (503, the node is failed), in any mix, in pieces of 3 bytes or split
    at every byte."""
    def reply(p):
        if p.startswith(b"full"):
            return b"SERVER_ERROR queue full\r\n"
        if p.startswith(b"big"):
            return b"SERVER_ERROR object too large for cache\r\n"
        if p.startswith(b"boom"):
            return b"SERVER_ERROR boom\r\n"
        return b"STORED\r\n"

    real = memqd_factory()
    node = fake(reply=reply)
    g = fake_first(gateway_factory, node, real)
    q = qname()
    kinds = ["ok", "full", "ok", "big", "ok", "full", "boom", "ok", "big",
             "ok"] * 3
    socks = []
    for i, k in enumerate(kinds):
        socks.append(post(g, q, b"%s-%d" % (k.encode(), i)))
        # one at a time into the pipe, so that the order is known
        wait_for(lambda: node.count() == i + 1, timeout=10,
                 what="set %d at the node" % i)
    assert node.conns_used() == 1
    node.release(piece=piece)
    stored_real = []
    for i, (k, s) in enumerate(zip(kinds, socks)):
        status, body = answer(s)
        if k == "ok":
            assert status == 201, (i, body)
            assert json_body(body)["node"] == node_addr(node.addr)
        elif k == "full":
            assert status == 201, (i, body)
            assert json_body(body)["node"] == node_addr(real)
            stored_real.append(b"full-%d" % i)
        elif k == "big":
            assert status == 413, (i, body)
        else:
            assert status == 503, (i, body)
            assert json_body(body)["unknown"] == [1, 1]
    assert node_messages(real, q) == stored_real


@pytest.mark.parametrize("then, close", [(b"", True), (TOO_MANY, False),
                                         (TOO_MANY, True)],
                         ids=["closes", "too_many", "too_many_closes"])
def test_node_closes_with_replies_owed(gateway_factory, memqd_factory,
                                       fake, then, close):
    """The node answers 4 of 10 sets and closes: the 4 are stored there,
    the 6 others go to the next node; the node is failed once for its one
    connection (before pipes: once per request).  The same when it says
    "too many connections" then (and keeps the connection open, or
    closes it): memqd says that only as the first line of a connection it
    just accepted, so after replies it fails the pipe as a reply out of
    step (before: taken as a refusal, the node never marked)."""
    real = memqd_factory()
    node = fake()
    g = fake_first(gateway_factory, node, real,
                   cluster_extra="max_fails 100;")
    q = qname()
    socks = []
    for i in range(10):
        socks.append(post(g, q, b"m%d" % i))
        wait_for(lambda: node.count() == i + 1, timeout=10,
                 what="set %d at the node" % i)
    assert node.conns_used() == 1
    node.release(limit=4)
    node.conns[1].sendall(then)
    if close:
        node.release(limit=0, close=True)
    where = []
    for s in socks:
        status, body = answer(s)
        assert status == 201, body
        where.append(json_body(body)["node"])
    assert where == [node_addr(node.addr)] * 4 + [node_addr(real)] * 6
    st = g.node_status(node_addr(node.addr))
    assert st["fails"] == 1, st
    assert node_messages(real, q) == [b"m%d" % i for i in range(4, 10)]
    if then:
        assert st["last_error"] == "unexpected reply", st
        assert "too many connections\" after a reply" in g.error_text()


def test_node_failing_every_set_marked_down(gateway_factory, memqd_factory,
                                           fake):
    """A node that answers every set with an error that is no refusal
    (memqd after a storage failure) is marked down after max_fails POSTs,
    as with connections of their own; the POSTs after that go to the
    healthy node.  The pipe emptying its FIFO is no success that forgives
    the failures it read."""
    real = memqd_factory()
    node = fake(hold=False, reply=lambda p:
                b"SERVER_ERROR storage failure, writes refused\r\n")
    g = fake_first(gateway_factory, node, real,
                   cluster_extra="max_fails 3; fail_timeout 60s;")
    q = qname()
    statuses = [g.publish(q, b"m%d" % i).status_code for i in range(10)]
    assert statuses == [503] * 3 + [201] * 7, statuses
    st = g.node_status(node_addr(node.addr))
    assert st["state"] == "down" and st["fails"] == 3, st
    assert node_messages(real, q) == [b"m%d" % i for i in range(3, 10)]


def _timed_fake(gateway_factory, memqd_factory, fake, posts, prefix):
    """A fake node first (read_timeout 1s) and a real memqd behind it;
    `posts` POSTs sent to a new queue and taken by the fake (not
    answered).  (real, node, g, q, sockets)."""
    real = memqd_factory()
    node = fake()
    g = fake_first(gateway_factory, node, real,
                   cluster_extra="max_fails 100;",
                   timeouts="connect_timeout 1s; read_timeout 1s;")
    q = qname()
    socks = [post(g, q, prefix + b"%d" % i) for i in range(posts)]
    wait_for(lambda: node.count() == posts, timeout=10,
             what="%d sets" % posts)
    return real, node, g, q, socks


def test_late_replies_and_read_timeout(gateway_factory, memqd_factory,
                                       fake):
    """Replies owed past read_timeout fail the pipe once; the waiting
    POSTs are stored on the next node.  An idle pipe is never timed: after
    the FIFO emptied, no failure however long it stays idle."""
    real, node, g, q, socks = _timed_fake(gateway_factory, memqd_factory,
                                          fake, 8, b"late")
    for s in socks:
        status, body = answer(s)
        assert status == 201, body
        assert json_body(body)["node"] == node_addr(real)
    assert g.node_status(node_addr(node.addr))["fails"] == 1
    # answered within the timeout: stored on the fake, and then the pipe
    # is idle with nothing owed
    node.hold = False
    r = g.publish(q, b"quick")
    assert r.status_code == 201 and \
        r.json()["node"] == node_addr(node.addr), r.text
    end = deadline_after(2.5)
    while time.monotonic() < end:
        time.sleep(0.1)
    assert g.node_status(node_addr(node.addr))["fails"] == 1


def test_node_dripping_replies_times_out(gateway_factory, memqd_factory,
                                        fake):
    """A node that answers a byte every 0.3 s, well within read_timeout
    (1 s) each: the sets it owes fail read_timeout after they were sent,
    since only a whole reply gives the node more time, and the POSTs are
    stored on the next node, instead of each waiting for its 8 bytes
    (2.4 s a reply, in turn) and so on as long as the node goes on."""
    real, node, g, q, socks = _timed_fake(gateway_factory, memqd_factory,
                                          fake, 4, b"drip")

    def dripping():
        try:
            node.release(piece=1, pause=0.3)
        except OSError:
            pass            # the connection failed, or the node closed

    drip = threading.Thread(target=dripping, daemon=True)
    drip.start()
    try:
        for s in socks:
            status, body = answer(s)
            assert status == 201, body
            assert json_body(body)["node"] == node_addr(real), body
    finally:
        node.close()
        drip.join(20 * SLOW)
    assert g.node_status(node_addr(node.addr))["fails"] == 1
    assert sorted(node_messages(real, q)) == [b"drip%d" % i
                                              for i in range(4)]


def test_silent_node_times_out_under_traffic(gateway_factory,
                                             memqd_factory, fake):
    """A node that takes sets and never answers fails read_timeout after
    the first one, even while more POSTs keep arriving on its pipe (new
    sets must not restart the wait for replies owed before them)."""
    real = memqd_factory()
    node = fake()
    g = fake_first(gateway_factory, node, real,
                   cluster_extra="max_fails 1000;",
                   timeouts="connect_timeout 1s; read_timeout 1s;")
    q = qname()
    first = post(g, q, b"first")
    first.settimeout(0.2)
    later = []
    got = None
    end = deadline_after(10)
    while got is None and time.monotonic() < end:
        # a new POST every 0.2 s, more often than read_timeout
        later.append(post(g, q, b"later%d" % len(later)))
        try:
            got = first.recv(65536)
        except socket.timeout:
            pass
    assert got, "the first POST waited while new ones kept coming"
    assert got.split()[1] == b"201", got
    assert b'"node":"%s"' % node_addr(real).encode() in got, got
    for s in later:
        s.settimeout(20 * SLOW)
        status, body = answer(s)
        assert status == 201, body


def test_replies_read_while_sets_wait_to_go(gateway_factory, memqd_factory,
                                           fake):
    """A node that stops reading (its receive window full, the pipe's
    write blocked) has answered the first set: the reply is read and
    answered while the later sets still wait to go out, not left unread
    until the read timer fails the node and sends the first POST, stored
    there, to the next node as well."""
    def reply(p):
        if p == b"first":
            # the set parsed, this connection is read no more
            node.stalled.add(node.accepted)
        return b"STORED\r\n"

    real = memqd_factory()
    node = fake(reply=reply, rcvbuf=4096)
    g = fake_first(gateway_factory, node, real,
                   cluster_extra="publish_pipes 1; max_fails 1000;",
                   timeouts="connect_timeout 1s; read_timeout 5s;")
    q = qname()
    first = post(g, q, b"first")
    wait_for(lambda: node.count() == 1, timeout=10, what="first set")
    # 4 MB of sets (fewer than 256, the pipe's cap), more than the kernel
    # takes: the pipe's write blocks, its 64 KiB of unsent sets fill, and
    # the next POSTs take connections of their own
    big = [post(g, q, b"%05d" % i + b"x" * 16000) for i in range(250)]
    wait_for(lambda: node.accepted >= 2, timeout=10,
             what="a POST past the pipe's blocked write")
    node.release(limit=1)
    first.settimeout(20 * SLOW)
    status, body = answer(first)
    node.stalled.clear()
    node.release()
    assert status == 201, body
    assert json_body(body)["node"] == node_addr(node.addr), body
    for s in big:
        s.settimeout(20 * SLOW)
        assert answer(s)[0] == 201


def test_client_abort_mid_flight(gateway_factory, fake):
    """Clients that leave while their sets are in flight: their replies
    are still read and dropped, the others get their own answers, and the
    pipe goes on (the sanitizer build checks the memory)."""
    def reply(p):
        return b"SERVER_ERROR object too large for cache\r\n" \
            if p.startswith(b"big") else b"STORED\r\n"

    node = fake(reply=reply)
    g = gateway_factory([node.addr], workers=1)
    q = qname()
    socks = []
    for i in range(20):
        body = b"big%d" % i if i % 3 == 0 else b"ok%d" % i
        socks.append(post(g, q, body))
    wait_for(lambda: node.count() == 20, timeout=10, what="20 sets")
    for i in range(0, 20, 2):
        socks[i].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
        socks[i].close()
    node.release()
    for i in range(1, 20, 2):
        status, body = answer(socks[i])
        assert status == (413 if i % 3 == 0 else 201), (i, body)
    r = g.publish(q, b"after")
    assert r.status_code == 201, r.text
    assert node.conns_used() == 1


def test_pipe_cap_overflows_to_own_connections(gateway_factory, fake):
    """Past 256 sets owed on each pipe, a POST takes a connection of its
    own (as every POST did before pipes): memory stays bounded, nothing
    waits for room."""
    node = fake()
    g = gateway_factory([node.addr], workers=1,
                        cluster_extra="publish_pipes 1;")
    q = qname()
    socks = [post(g, q, b"m%d" % i) for i in range(300)]
    wait_for(lambda: node.count() == 300, timeout=20, what="300 sets")
    per_conn = {}
    for n, _ in node.sets:
        per_conn[n] = per_conn.get(n, 0) + 1
    assert max(per_conn.values()) == 256, per_conn
    assert len(per_conn) == 1 + 44, per_conn
    node.release()
    for s in socks:
        status, body = answer(s)
        assert status == 201, body


def test_pipes_off(gateway_factory, fake):
    """publish_pipes 0: every POST has a connection of its own."""
    node = fake()
    g = gateway_factory([node.addr], workers=1,
                        cluster_extra="publish_pipes 0;")
    q = qname()
    socks = [post(g, q, b"m%d" % i) for i in range(10)]
    wait_for(lambda: node.count() == 10, timeout=10, what="10 sets")
    assert node.conns_used() == 10
    node.release()
    for s in socks:
        assert answer(s)[0] == 201


def test_publish_pipes_directive_checked(gateway_factory, memqd_factory):
    real = memqd_factory()
    from gwutil import Gateway
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for bad in ("publish_pipes 17;", "publish_pipes x;"):
            ok, out = Gateway(d, [real], cluster_extra=bad).test_conf()
            assert not ok, out
            assert "publish_pipes" in out, out


@pytest.mark.parametrize("how", ["reload", "quit"])
def test_shutdown_with_posts_in_flight(gateway_factory, fake, how):
    """nginx -s reload / quit with sets in flight: the old worker reads
    the replies and answers every waiting POST before it exits."""
    import signal
    node = fake()
    g = gateway_factory([node.addr], workers=1)
    q = qname()
    socks = [post(g, q, b"m%d" % i) for i in range(10)]
    wait_for(lambda: node.count() == 10, timeout=10, what="10 sets")
    if how == "reload":
        g.reload()
    else:
        g.proc.send_signal(signal.SIGQUIT)
    node.release()
    for s in socks:
        status, body = answer(s)
        assert status == 201, body
    if how == "quit":
        g.proc.wait(10 * SLOW)
        assert g.proc.returncode == 0


def test_many_clients_stored_once_in_order(gateway_factory, nodes3):
    """20 clients, 30 POSTs each, one after the other per client, over
    three real nodes: every message stored exactly once, and on each node
    a client's messages are in the order it sent them."""
    g = gateway_factory(nodes3)
    q = qname()
    errors = []

    def client(k):
        import requests
        s = requests.Session()
        for i in range(30):
            r = s.post(g.url("/mq"), params={"topic": q},
                       data=b"c%02d-%03d" % (k, i), timeout=20 * SLOW)
            if r.status_code != 201:
                errors.append(r.text)

    ts = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120 * SLOW)
    assert not errors, errors[:3]
    seen = []
    for n in nodes3:
        mine = node_messages(n, q)
        for k in range(20):
            tag = b"c%02d-" % k
            own = [m for m in mine if m.startswith(tag)]
            assert own == sorted(own), own
        seen += mine
    assert sorted(seen) == sorted(b"c%02d-%03d" % (k, i)
                                  for k in range(20) for i in range(30))


def test_slow_node_gets_few_posts(gateway_factory, memqd_factory):
    """A node whose every fdatasync takes 200 ms owes its replies for long:
    single POSTs go to the nodes that owe fewer (per weight), so the slow
    one gets a small share instead of a third, and no POST is lost."""
    slow = memqd_factory(args=["--sync", "always"],
                         env={"MEMQD_FAULT_FSYNC_DELAY_MS": "200"})
    fast = [memqd_factory(args=["--sync", "always"]) for _ in range(2)]
    g = gateway_factory([slow] + fast, workers=1)
    q = qname()
    clients, per = 20, 30
    errors = []

    def produce(k):
        with requests.Session() as s:
            for i in range(per):
                r = s.post(g.url("/mq"), params={"topic": q},
                           data=b"c%d-%d" % (k, i), timeout=30 * SLOW)
                if r.status_code != 201:
                    errors.append(r.text)

    threads = [threading.Thread(target=produce, args=(k,))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = {n.port: node_messages(n, q) for n in [slow] + fast}
    everything = sorted(m for ms in got.values() for m in ms)
    assert everything == sorted(b"c%d-%d" % (k, i) for k in range(clients)
                                for i in range(per))
    # round robin would give it 200 of the 600
    assert len(got[slow.port]) < clients * per // 10, \
        {p: len(ms) for p, ms in got.items()}


def _children(pid):
    out = []
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, t)) as f:
            out += [int(x) for x in f.read().split()]
    return out


def _traced(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1]) != 0
    return False


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_node_connections_send_without_delay(gateway_factory, memqd_factory,
                                             tmp_path):
    """Every connection the worker opens to a node (a publish pipe, a
    stream's get) turns off Nagle's rule: small requests that follow one
    another before the node answered (pipelined sets, acknowledgements)
    would otherwise wait for the node's delayed ACK.  Seen with strace on
    the worker: a setsockopt(TCP_NODELAY) on the descriptor of each
    connect() to the node."""
    node = memqd_factory()
    g = gateway_factory([node], workers=1)
    worker = _children(g.proc.pid)
    assert len(worker) == 1, worker
    log = tmp_path / "strace.log"
    tracer = subprocess.Popen(
        ["strace", "-qq", "-f", "-e", "trace=connect,setsockopt",
         "-o", str(log), "-p", str(worker[0])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _traced(worker[0]), timeout=10,
                 what="strace attached to the worker")
        q = qname()
        r = g.publish(q, b"one")
        assert r.status_code == 201, r.text
        assert g.lines(q) == [b"one"]
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    port = node_addr(node).rsplit(":", 1)[1]
    # each connect() to the node, then whether its descriptor had
    # TCP_NODELAY set before it was connected again
    conns = []
    for line in log.read_text().splitlines():
        m = re.search(r"connect\((\d+), \{sa_family=AF_INET, "
                      r"sin_port=htons\((\d+)\)", line)
        if m:
            if m.group(2) == port:
                conns.append([m.group(1), False])
            continue
        m = re.search(r"setsockopt\((\d+), SOL_TCP, TCP_NODELAY, \[1\]",
                      line)
        if m:
            for c in reversed(conns):
                if c[0] == m.group(1):
                    c[1] = True
                    break
    assert conns, log.read_text()
    assert all(nodelay for _, nodelay in conns), log.read_text()


def test_error_clears_while_pipe_stays_busy(gateway_factory, fake):
    """A node's current error (status "error", and the failures counted
    towards max_fails) clears at its next good reply in a pipe, not only
    when the pipe's FIFO empties: under steady traffic it may never
    empty, and a node that stored every set after one failure must not
    keep that failure as current (nor be marked down by the next one)."""
    node = fake(reply=lambda p: b"SERVER_ERROR boom\r\n"
                if p.startswith(b"bad") else b"STORED\r\n")
    g = gateway_factory([node.addr], workers=1,
                        cluster_extra="publish_pipes 1; max_fails 2; "
                        "fail_timeout 60s;")
    g.expect_errors()
    addr = node_addr(node.addr)
    q = qname()
    socks = []

    def send(body):
        socks.append(post(g, q, body))
        wait_for(lambda: node.count() == len(socks), timeout=10,
                 what="%d sets at the node" % len(socks))

    # the pipe does not empty until bad2 is answered
    send(b"bad1")
    send(b"ok1")
    node.release(limit=1)
    assert answer(socks[0])[0] == 503
    st = g.node_status(addr)
    assert st["error"] == "server error" and st["fails"] == 1, st

    send(b"ok2")
    node.release(limit=1)
    assert answer(socks[1])[0] == 201
    st = g.node_status(addr)
    assert st["error"] == "" and st["last_error"] == "server error", st

    # a second failure, after good replies: the node is still up
    send(b"bad2")
    node.release()
    assert [answer(s)[0] for s in socks[2:4]] == [201, 503]
    st = g.node_status(addr)
    assert st["state"] == "up" and st["fails"] == 2, st


@pytest.mark.parametrize("pipes", [0, 1])
def test_node_out_of_step_is_marked_down(gateway_factory, fake, pipes):
    """A node that answers more than it was sent (here two STORED a set:
    out of step, its replies not to be trusted) fails the connection
    each time, and after max_fails of them it is marked down, in a pipe
    as on a connection of its own: the STORED read in the same read as
    the bytes that fail it is no success of the node."""
    node = fake(hold=False, reply=lambda p: b"STORED\r\nSTORED\r\n")
    g = gateway_factory([node.addr], workers=1,
                        cluster_extra="publish_pipes %d; max_fails 2; "
                        "fail_timeout 60s;" % pipes)
    g.expect_errors()
    addr = node_addr(node.addr)
    q = qname()
    for i in range(2):
        s = post(g, q, b"m%d" % i)
        assert answer(s)[0] in (201, 503)
        wait_for(lambda: g.node_status(addr)["fails"] == i + 1, timeout=10,
                 what="the failure of connection %d" % (i + 1))
    st = g.node_status(addr)
    assert st["state"] == "down" and st["error"] != "", st
    s = post(g, q, b"m2")
    assert answer(s)[0] == 503
    assert node.count() == 2


def test_replies_to_sets_never_sent_are_not_stored(gateway_factory, fake):
    """A node that stopped reading (the pipe's write blocked, its 64 KiB
    of unsent sets full) sends more STORED lines than it read sets: a
    line that would be the reply to a set still in the pipe's buffer,
    never sent, fails the pipe, and that POST and the ones after it in
    the pipe are not told 201 (here no other node: 503) by a node that
    never had their message (before: every POST in the pipe was told
    STORED, then the pipe failed for the bytes after the last reply)."""
    def reply(p):
        if p == b"first":
            node.stalled.add(node.accepted)
        return b"STORED\r\n"

    node = fake(reply=reply, rcvbuf=4096)
    g = gateway_factory([node.addr], workers=1,
                        cluster_extra="publish_pipes 1; max_fails 1000;",
                        timeouts="connect_timeout 1s; read_timeout 20s;")
    g.expect_errors()
    q = qname()
    first = post(g, q, b"first")
    wait_for(lambda: node.count() == 1, timeout=10, what="first set")
    big = {b"%05d" % i + b"x" * 16000: None for i in range(250)}
    for m in big:
        big[m] = post(g, q, m)
    wait_for(lambda: node.accepted >= 2, timeout=10,
             what="a POST past the pipe's blocked write")
    # 256 lines: more than the pipe owes
    node.conns[1].sendall(b"STORED\r\n" * 256)
    first.settimeout(20 * SLOW)
    status, body = answer(first)
    assert status == 201, body
    wait_for(lambda: "failed" in g.error_text(), timeout=10,
             what="the pipe failed")
    node.stalled.clear()
    with node.lock:
        node.conns.pop(1)
        node.owed.pop(1)
    node.release()
    refused = []
    for m, s in big.items():
        s.settimeout(20 * SLOW)
        status, body = answer(s)
        assert status in (201, 503), body
        if status == 503:
            refused.append(m)
    # at least the 2 sets that filled the pipe's buffer were never sent
    assert len(refused) >= 2, len(refused)
    assert "answered a set not sent" in g.error_text()
    received = {p for _, p in node.sets}
    assert not received & set(refused), "503 for a message the node got"


def test_too_many_connections_on_a_pooled_pipe_is_a_fault(
        gateway_factory, memqd_factory, fake):
    """A pipe's connection back from the keepalive pool has answered
    before: "too many connections" as the first reply of its next use is
    no refusal either, and marks the node."""
    real = memqd_factory()
    node = fake(hold=False, reply=lambda p:
                TOO_MANY if p == b"second" else b"STORED\r\n")
    g = fake_first(gateway_factory, node, real,
                   cluster_extra="max_fails 100; fail_timeout 60s;")
    q = qname()
    r = g.publish(q, b"first")
    assert r.status_code == 201 and \
        r.json()["node"] == node_addr(node.addr), r.text
    assert g.node_status(node_addr(node.addr))["fails"] == 0
    r = g.publish(q, b"second")
    assert r.status_code == 201 and r.json()["node"] == node_addr(real), \
        r.text
    assert node.accepted == 1
    st = g.node_status(node_addr(node.addr))
    assert st["fails"] == 1 and st["last_error"] == "unexpected reply", st
