"""Issue 8: nothing a client or a queue does marks a node down, a stream
ends as drained only when every node said empty, max is exact, no hang
when the only node fails before the header (DESIGN §2, §5 "gateway")."""

import fcntl
import socket
import struct
import termios
import threading
import time

import pytest

from gwutil import (PRELOAD, SLOW, Client, Dechunker, ScriptedNode,
                    fake_first, fill, node_addr, read_stream_after_close,
                    node_items, qname, read_headers, wait_for,
                    store_all, workers_memory)


def _nodes_healthy(g, nodes):
    for n in nodes:
        st = g.node_status(node_addr(n))
        assert st["state"] == "up" and st["fails"] == 0, st


def test_paused_client_marks_no_node(gateway_factory, memqd_factory):
    """A client that stops reading for longer than read_timeout: the nodes
    it holds back never time out; after send_timeout its stream is closed
    (not ended as drained) and the items it did not get are back at once;
    other clients are served meanwhile."""
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, workers=1, listen_extra="sndbuf=8k",
                        timeouts="connect_timeout 1s; read_timeout 1s;",
                        cluster_extra="max_fails 1; fail_timeout 60s;",
                        loc_extra="memq_batch 16; send_timeout 2500ms;")
    q = qname()
    total = 300
    fill(nodes, q, total, fmt="%04d-" + "x" * 1000)
    s = g.raw_request("/mq?topic=%s" % q, rcvbuf=4096)
    status, hdrs, rest = read_headers(s)
    assert status == 200
    # the client reads nothing more; the gateway's output backs up
    line = g.wait_access(lambda l: q in l, timeout=15,
                         what="the paused stream closed by send_timeout")
    # well past read_timeout: nobody was marked, nobody else refused
    _nodes_healthy(g, nodes)
    assert g.publish(qname(), b"other client").status_code == 201
    assert "client timed out" in g.error_text()
    # what it never got went back at once: nothing stays open
    waiting = 0
    for n in nodes:
        items, open_items = node_items(n, q)
        assert open_items == 0, (items, open_items)
        waiting += items
    d = read_stream_after_close(s, rest)
    assert not d.done, "a paused stream ended as drained"
    got = d.data.count(b"\n")
    # every message is with the client, in the queue, or was written to
    # the sockets' buffers (acknowledged: write mode's definition)
    assert waiting > 0 and got + waiting <= total
    assert got < 100 and waiting > total - 100, (got, waiting, line)


def test_only_node_dies_after_a_value_before_the_header(gateway_factory):
    """The only node sends one complete value and closes before END: the
    request must end (503), not hang without a timer."""
    def answer(line, n):
        key = line.split()[1]
        return 0, b"VALUE %s 0 1\r\nx\r\n" % key, True

    fake = ScriptedNode(answer)
    try:
        g = gateway_factory([fake.addr],
                            timeouts="connect_timeout 1s; read_timeout 30s;")
        g.expect_errors()
        r = g.consume(qname(), timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "no healthy node"
    finally:
        fake.close()


def test_max_exact_with_a_reply_in_pieces(gateway_factory, memqd_factory):
    """Two nodes, one reply arriving in pieces while the other completes:
    max=10 delivers and acknowledges exactly 10."""
    real = memqd_factory()
    q = "gq" + qname()
    fill([real], q, 100)
    # the piecewise node: a raw listener of its own (the first piece, then
    # wait for the test, then the rest)
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    first_out = threading.Event()
    release = threading.Event()
    conns = []
    a_state = {"pieces": None}

    def serve_pieces():
        lst.settimeout(0.2)
        while not release.is_set() or not conns:
            try:
                c, _ = lst.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=piece_conn, args=(c,),
                             daemon=True).start()
            if len(conns) > 4:
                return

    def piece_conn(c):
        buf = b""
        first = True
        c.settimeout(0.2)
        try:
            while True:
                try:
                    d = c.recv(4096)
                except socket.timeout:
                    if a_state.get("stop"):
                        return
                    continue
                if not d:
                    return
                buf += d
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    key = line.split()[1]
                    if first and b"/n=" in key:
                        first = False
                        count = int(key.split(b"/n=")[1].split(b"/")[0])
                        vals = [b"VALUE %s 0 4\r\nf%03d\r\n" % (key, i)
                                for i in range(count)]
                        a_state["count"] = count
                        c.sendall(b"".join(vals[:-1]))
                        a_state["sock"] = c
                        first_out.set()
                        release.wait(30)
                        c.sendall(vals[-1] + b"END\r\n")
                    else:
                        c.sendall(b"END\r\n")
        except OSError:
            pass
        finally:
            c.close()

    # the real node's first reply is held until the pieces are in nginx
    b_go = threading.Event()
    plst = socket.socket()
    plst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    plst.bind(("127.0.0.1", 0))
    plst.listen(8)

    def proxy():
        plst.settimeout(0.2)
        while not a_state.get("stop"):
            try:
                c, _ = plst.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            u = socket.create_connection(real.addr)
            threading.Thread(target=pump, args=(c, u, None),
                             daemon=True).start()
            threading.Thread(target=pump, args=(u, c, b_go),
                             daemon=True).start()

    def pump(src, dst, gate):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                if gate is not None:
                    gate.wait(30)
                dst.sendall(d)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    threads = [threading.Thread(target=serve_pieces, daemon=True),
               threading.Thread(target=proxy, daemon=True)]
    for t in threads:
        t.start()
    try:
        g = gateway_factory([lst.getsockname(), plst.getsockname()],
                            workers=1,
                            timeouts="connect_timeout 1s; read_timeout 30s;")
        s = g.raw_request("/mq?topic=%s&max=10" % q)
        assert first_out.wait(10 * SLOW), "the piecewise node was not asked"
        # the first piece is in nginx's socket (acknowledged by its kernel)
        sock = a_state["sock"]

        def unsent():
            b = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
            return struct.unpack("i", b)[0] == 0
        wait_for(unsent, timeout=5, what="first piece taken by nginx")
        b_go.set()
        status, hdrs, rest = read_headers(s)
        assert status == 200
        d = Dechunker()
        d.feed(rest)
        first = a_state["count"] - 1
        # the real node's batch and the first piece reach the client;
        # nothing more may be asked while the last piece is reserved
        while d.data.count(b"\n") < 9:
            chunk = s.recv(65536)
            assert chunk, d.data
            d.feed(chunk)
        release.set()
        while not d.done:
            chunk = s.recv(65536)
            assert chunk, "stream cut"
            d.feed(chunk)
        s.close()
        lines = d.data.split(b"\n")[:-1]
        assert len(lines) == 10, (len(lines), first)
        from_real = [l for l in lines if not l.startswith(b"f")]
        # exactly the delivered ones were acknowledged on the real node
        wait_for(lambda: node_items(real, q) == (100 - len(from_real), 0),
                 timeout=5, what="real node: only delivered items gone")
    finally:
        a_state["stop"] = True
        release.set()
        b_go.set()
        lst.close()
        plst.close()
        for t in threads:
            t.join(2)


def test_queue_full_is_507_and_marks_nothing(gateway_factory,
                                             memqd_factory):
    conf = "[queue full*]\nmax_items = 2\n"
    nodes = [memqd_factory(config=conf), memqd_factory(config=conf)]
    g = gateway_factory(nodes, cluster_extra="max_fails 1; fail_timeout 60s;")
    q = "full" + qname()
    for n in nodes:
        fill([n], q, 2)
    for _ in range(3):
        r = g.publish(q, b"one more")
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "queue full"
    _nodes_healthy(g, nodes)
    assert g.publish(qname(), b"elsewhere").status_code == 201
    # the next node is tried: room on one node takes it
    c = Client(nodes[1].addr)
    c.get(q)
    c.close()
    r = g.publish(q, b"fits")
    assert r.status_code == 201, r.text
    assert r.json()["node"] == node_addr(nodes[1])


def test_node_connection_limit_marks_nothing(gateway_factory,
                                             memqd_factory):
    node = memqd_factory(args=["--max-connections", "1"])
    # one worker: its pooled connection is the node's only one
    g = gateway_factory([node], workers=1,
                        cluster_extra="max_fails 1; fail_timeout 60s;")
    q = qname()
    holder = Client(node.addr)
    holder.store(q, b"held")
    r = g.publish(q, b"x")
    assert r.status_code == 503, r.text
    r = g.publish(q, b"a\nb\n", ndjson=True)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "no node took the message"
    r = g.consume(q)
    assert r.status_code == 503, r.text
    _nodes_healthy(g, [node])
    holder.close()
    wait_for(lambda: g.publish(q, b"y").status_code == 201, timeout=5,
             what="publish once the node has room")
    assert sorted(g.lines(q)) == [b"held", b"y"]


def test_worker_connections_shortage_marks_nothing(gateway_factory,
                                                   memqd_factory):
    node = memqd_factory()
    g = gateway_factory([node], workers=1, worker_connections=4,
                        cluster_extra="max_fails 1; fail_timeout 60s;")
    q = qname()
    # listener + channel to the master + a client mid-request (not
    # reusable) + the publisher: no connection left for the node
    held = []
    for _ in range(1):
        h = socket.create_connection(("127.0.0.1", g.port))
        h.sendall(b"GET /mq?topic=")
        held.append(h)
    r = g.publish(q, b"x")
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "no node took the message"
    r = g.consume(q)
    assert r.status_code == 503, r.text
    # the status's stats leave the node out (and the worker lives)
    r = g.status(queues=1)
    assert r.json()["clusters"][0]["queues"] == {}, r.text
    for h in held:
        h.close()
    wait_for(lambda: g.publish(q, b"y").status_code == 201, timeout=5,
             what="publish once connections are free")
    _nodes_healthy(g, [node])
    assert "worker_connections are not enough" in g.error_text()


def _set_script(per_set):
    """A ScriptedNode answer for publishes: per_set(k) gives the reply to
    the k-th set (from 1): bytes, or None to close the connection."""
    count = {"sets": 0}

    def answer(line, n):
        if not line.startswith(b"set "):
            return None          # a data block
        count["sets"] += 1
        r = per_set(count["sets"])
        if r is None:
            return 0, b"", True
        return 0, r
    return answer


TOO_MANY = b"SERVER_ERROR too many connections\r\n"


def test_too_many_connections_on_a_pooled_connection_is_a_fault(
        gateway_factory, memqd_factory):
    """A single POST on a connection of its own (no pipes) that came from
    the keepalive pool: the connection answered before, so "too many
    connections" as the first reply to this POST is no refusal; the POST
    is answered as after any unexpected reply (it may be stored) and the
    node is marked."""
    real = memqd_factory()
    fake = ScriptedNode(_set_script(
        lambda k: b"STORED\r\n" if k == 1 else TOO_MANY))
    try:
        g = fake_first(gateway_factory, fake, real,
                       cluster_extra="publish_pipes 0; max_fails 100;")
        q = qname()
        r = g.publish(q, b"first")
        assert r.status_code == 201, r.text
        assert r.json()["node"] == node_addr(fake.addr)
        r = g.publish(q, b"second")
        assert r.status_code == 503, r.text
        assert r.json()["unknown"] == [1, 1], r.text
        assert len(fake.threads) == 2      # the listener and one connection
        assert node_items(real, q) == (0, 0)
        st = g.node_status(node_addr(fake.addr))
        assert st["fails"] == 1 and st["last_error"] == "server error", st
    finally:
        fake.close()


def test_batch_refused_part_way_says_what_was_stored(gateway_factory):
    def per_set(k):
        if k == 3:
            return b"SERVER_ERROR object too large for cache\r\n"
        return b"STORED\r\n"
    fake = ScriptedNode(_set_script(per_set))
    try:
        g = gateway_factory([fake.addr])
        r = g.publish(qname(), b"a\nb\nc\nd\n", ndjson=True)
        assert r.status_code == 413, r.text
        assert r.json() == {"error": "message too large", "status": 413,
                            "queued": 3, "stored": [[1, 2], [4, 4]]}
        assert g.node_status(node_addr(fake.addr))["fails"] == 0
    finally:
        fake.close()


@pytest.mark.parametrize("then", [None, TOO_MANY],
                         ids=["dies", "too_many"])
def test_partial_failure_stores_nothing_twice(gateway_factory, memqd_factory,
                                              then):
    """A node stores 5 lines of a batch and dies: the answer says exactly
    that, and nothing is sent again to another node.  The same when it
    says "too many connections" then: memqd says that only as the first
    line of a connection it just accepted, so after replies it is the
    node's fault, as any unexpected reply (before: taken as a refusal,
    the lines after the 5th were sent to the next node, the node never
    marked)."""
    real = memqd_factory()
    fake = ScriptedNode(_set_script(
        lambda k: b"STORED\r\n" if k <= 5 else then if k == 6 else b""))
    try:
        g = fake_first(gateway_factory, fake, real,
                       cluster_extra="max_fails 100;")
        q = qname()
        body = b"".join(b"line%d\n" % i for i in range(20))
        r = g.publish(q, body, ndjson=True)
        assert r.status_code == 503, r.text
        js = r.json()
        assert js["queued"] == 5 and js["stored"] == [[1, 5]], js
        assert js["unknown"][0] == 6 and js["unknown"][1] <= 20, js
        assert node_items(real, q) == (0, 0)
        assert g.node_status(node_addr(fake.addr))["fails"] == 1
    finally:
        fake.close()


def test_queue_full_batch_moves_on_exactly(gateway_factory, memqd_factory):
    conf = "[queue full*]\nmax_items = 2\n"
    nodes = [memqd_factory(config=conf), memqd_factory(config=conf)]
    g = gateway_factory(nodes, workers=1)
    q = "full" + qname()
    r = g.publish(q, b"l1\nl2\nl3\nl4\nl5\n", ndjson=True)
    assert r.status_code == 507, r.text
    assert r.json() == {"error": "queue full", "status": 507, "queued": 4,
                        "stored": [[1, 4]]}
    got = []
    for n in nodes:
        c = Client(n.addr)
        got += [i.data for i in c.drain(q)]
        c.close()
    assert sorted(got) == [b"l1", b"l2", b"l3", b"l4"]


def _worker_peak_rss(g):
    """The workers' peak resident size (VmHWM), summed."""
    return workers_memory(g, "VmHWM")


def test_million_line_publish_bounded_memory(gateway_factory, memqd_factory):
    """2,000,000 one-byte ndjson lines in one POST (the issue's 4 MB body;
    the seed deadlocked on it against the node's unread-reply limit and
    answered 503): sent in windows while replies are read, every line
    stored exactly once on one node, worker RSS grows < 64 MiB."""
    node = memqd_factory()
    g = gateway_factory([node], workers=1,
                        loc_extra="client_max_body_size 64m;"
                                  "client_body_buffer_size 16m;")
    q = qname()
    # warm the worker up (first request allocations)
    assert g.publish(q, b"warm").status_code == 201
    before = _worker_peak_rss(g)
    n = 2000000
    body = b"x\n" * n
    r = g.publish(q, body, ndjson=True, timeout=120)
    assert r.status_code == 201, r.text[:300]
    assert r.json()["queued"] == n
    grown = _worker_peak_rss(g) - before
    assert grown < 64 * 1024 * 1024, grown
    c = Client(node.addr)
    st = c.qstats(q)
    c.close()
    assert st["items"] == n + 1, st


def test_nginx_own_errors_are_json(gateway_factory, memqd_factory):
    node = memqd_factory()
    g = gateway_factory([node], loc_extra="client_max_body_size 1k;")
    g.expect_errors()      # nginx logs the refused bodies at [error]
    q = qname()
    r = g.publish(q, b"x" * 4096)
    assert r.status_code == 413
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "request too large", "status": 413}
    # a broken chunked body: nginx's own 400, found in the location
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"POST /mq?topic=" + q.encode() + b" HTTP/1.1\r\nHost: x\r\n"
              b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    status, hdrs, rest = read_headers(s)
    while len(rest) < int(hdrs["content-length"]):
        rest += s.recv(4096)
    s.close()
    assert status == 400 and hdrs["content-type"] == "application/json"
    assert rest == b'{"error":"bad request","status":400}\n'
    # the module's own answers are untouched
    import requests
    r = requests.delete(g.url("/mq?topic=" + q), timeout=10)
    assert r.json() == {"error": "method not allowed", "status": 405}
    assert g.publish(q, b"ok").status_code == 201


def _write_file(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    import os
    os.replace(tmp, path)


def _file_nodes(g):
    return {n["addr"] for n in g.status().json()["clusters"][0]["nodes"]}


def test_nodes_file_same_size_same_second(gateway_factory, memqd_factory,
                                          tmp_path):
    import os
    a, b = memqd_factory(), memqd_factory()
    la, lb = node_addr(a), node_addr(b)
    width = max(len(la), len(lb))
    nf = tmp_path / "same.nodes"
    _write_file(nf, la.ljust(width) + "\n")
    g = gateway_factory([], cluster_extra="nodes_file %s;" % nf)
    wait_for(lambda: _file_nodes(g) == {la}, timeout=5, what="first list")
    st = os.stat(nf)
    # the same size, and an mtime in the same second as before
    _write_file(nf, lb.ljust(width) + "\n")
    sec = st.st_mtime_ns // 10**9
    os.utime(nf, ns=(st.st_atime_ns, sec * 10**9 + (st.st_mtime_ns + 1)
                     % 10**9))
    assert os.stat(nf).st_size == st.st_size
    assert os.stat(nf).st_mtime_ns // 10**9 == sec
    wait_for(lambda: _file_nodes(g) == {lb}, timeout=5,
             what="the rewritten list in use")


def test_nodes_file_names_are_not_resolved(gateway_factory, memqd_factory,
                                           tmp_path):
    a = memqd_factory()
    nf = tmp_path / "names.nodes"
    _write_file(nf, "localhost:%d\n%s\n" % (a.port, node_addr(a)))
    g = gateway_factory([], cluster_extra="nodes_file %s;" % nf)
    assert _file_nodes(g) == {node_addr(a)}
    assert "host names are not resolved" in g.error_text()


def test_value_for_another_key_is_a_broken_reply(gateway_factory,
                                                 memqd_factory):
    real = memqd_factory()

    def answer(line, n):
        if n == 1:
            return 0, b"VALUE other 0 5\r\nspoof\r\nEND\r\n"
        return 0, b"END\r\n"
    fake = ScriptedNode(answer)
    try:
        g = gateway_factory([fake.addr, real])
        g.expect_errors()
        q = qname()
        sent = fill([real], q, 3)
        status, body, ended = g.stream(q)
        assert status == 200 and not ended
        assert set(body.split(b"\n")[:-1]) == sent
        st = g.node_status(node_addr(fake.addr))
        assert st["fails"] >= 1 and "key" in st["last_error"], st
    finally:
        fake.close()


def test_node_table_reused_past_64_addresses(gateway_factory, memqd_factory,
                                             tmp_path):
    """Nodes come and go through nodes_file: 120 distinct addresses over
    the worker's life (one memqd listening on every loopback address), the
    table and the shared slots are reused, the status lists the live ones."""
    node = memqd_factory(wait=False)
    node.host = "0.0.0.0"
    node.start()
    port = node.port
    nf = tmp_path / "many.nodes"
    g = gateway_factory([], workers=1, cluster_extra="nodes_file %s;" % nf)
    q = qname()
    published = 0
    for gen in range(3):
        addrs = ["127.0.0.%d:%d" % (2 + gen * 40 + i, port)
                 for i in range(40)]
        _write_file(nf, "\n".join(addrs) + "\n")
        wait_for(lambda: _file_nodes(g) == set(addrs), timeout=5,
                 what="generation %d of nodes in the status" % gen)
        r = g.publish(q, b"gen%d" % gen)
        assert r.status_code == 201, r.text
        assert r.json()["node"] in addrs
        published += 1
        status, body, ended = g.stream(q)
        assert status == 200 and ended
        assert body == b"gen%d\n" % gen
    assert "too many nodes" not in g.error_text()


def test_inflate_output_bounded_per_stream(gateway_factory, memqd_factory):
    """One reply of 48 values that each inflate to 1 MiB: the stream holds
    the reply while its client takes the inflated output, so the worker
    does not hold 48 MiB at once; every value arrives inflated."""
    import zlib
    node = memqd_factory()
    g = gateway_factory([node], workers=1,
                        loc_extra="memq_batch 64; memq_inflate_max_size 2m;")
    q = qname()
    size = 1024 * 1024
    c = Client(node.addr)
    for i in range(48):
        c.store(q, zlib.compress(b"%02d" % i + b"z" * (size - 2)), flags=1)
    c.close()
    assert g.publish(qname(), b"warm").status_code == 201
    before = _worker_peak_rss(g)
    status, body, ended = g.stream(q)
    assert status == 200 and ended
    lines = body.split(b"\n")[:-1]
    assert len(lines) == 48
    assert sorted(l[:2] for l in lines) == [b"%02d" % i for i in range(48)]
    assert all(len(l) == size for l in lines)
    grown = _worker_peak_rss(g) - before
    assert grown < 24 * 1024 * 1024, grown
    assert node_items(node, q) == (0, 0)


@pytest.mark.skipif(PRELOAD is not None, reason="the sanitizer keeps freed "
                    "memory in its quarantine: resident size says nothing")
def test_framed_output_bounded_per_stream(gateway_factory, memqd_factory):
    """Framing can make a message much bigger than it was stored: in sse
    every line of a message becomes "data: <line>\n", so a message of
    line breaks grows 7 times.  One reply of 48 such values of 256 KiB
    (12 MiB stored, 84 MiB framed), read by a client slower than the
    worker (64 KiB a millisecond), is framed as the client takes it, as
    inflated output is: the worker does not hold the 84 MiB at once."""
    node = memqd_factory()
    g = gateway_factory([node], workers=1, loc_extra="memq_batch 64;")
    q = qname()
    size = 256 * 1024
    store_all(node, q, [b"%02d" % i + b"\n" * (size - 2) for i in range(48)])
    assert g.publish(qname(), b"warm").status_code == 201
    before = _worker_peak_rss(g)
    s = g.raw_request("/mq?topic=%s&format=sse" % q)
    s.settimeout(30 * SLOW)
    try:
        status, _, rest = read_headers(s)
        d = Dechunker()
        d.feed(rest)
        while not d.done:
            chunk = s.recv(65536)
            assert chunk, "stream cut"
            d.feed(chunk)
            time.sleep(0.001)
    finally:
        s.close()
    assert status == 200 and "memq-nodes-failed" not in d.trailers
    events = [e for e in d.data.split(b"\n\n") if b"data: " in e]
    assert len(events) == 48
    assert sorted(e.split(b"data: ", 1)[1][:2] for e in events) == \
        [b"%02d" % i for i in range(48)]
    assert all(e.count(b"data: ") == size - 1 for e in events)
    grown = _worker_peak_rss(g) - before
    assert grown < 32 * 1024 * 1024, grown
    assert node_items(node, q) == (0, 0)


class _OnceEtcd:
    """An etcd v3 JSON gateway stand-in that answers the first range poll
    with one node and then never answers again (a worker polling later
    waits for its read timeout): only one worker learns the list from
    etcd itself."""

    def __init__(self, addr):
        import base64
        import json
        key = "/memq/main/nodes/" + addr
        self.body = json.dumps({
            "header": {"revision": "1"},
            "kvs": [{"key": base64.b64encode(key.encode()).decode(),
                     "value": base64.b64encode(json.dumps(
                         {"addr": addr, "weight": 1}).encode()).decode()}],
            "count": "1"}).encode()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.answered = threading.Event()
        self.held = []
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.answered.is_set():
                self.held.append(c)
                continue
            c.settimeout(5)
            buf = b""
            try:
                while b"\r\n\r\n" not in buf:
                    buf += c.recv(4096)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                          b"\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(self.body), self.body))
            finally:
                c.close()
            self.answered.set()

    def close(self):
        self.closed = True
        self.thread.join(2)
        for c in self.held:
            c.close()
        self.sock.close()


def test_etcd_worker_seeded_from_sibling(gateway_factory, memqd_factory):
    node = memqd_factory()
    etcd = _OnceEtcd(node_addr(node))
    try:
        g = gateway_factory(
            [], workers=2, listen_extra="reuseport",
            timeouts="connect_timeout 1s; read_timeout 30s;",
            cluster_extra="etcd http://127.0.0.1:%d interval=100ms;"
                          % etcd.port)
        assert etcd.answered.wait(10 * SLOW)
        wait_for(lambda: _file_nodes(g) == {node_addr(node)}, timeout=5,
                 what="the node from etcd in the status")
        q = qname()
        # fresh connections spread over both workers (reuseport): the one
        # without an answer of its own serves its sibling's list
        codes = [g.publish(q, b"m%d" % i).status_code for i in range(40)]
        assert codes == [201] * 40, codes
        c = Client(node.addr)
        assert c.qstats(q)["items"] == 40
        c.close()
    finally:
        etcd.close()


def _chunked_post(g, q, chunks, ndjson=True):
    s = socket.create_connection(("127.0.0.1", g.port))
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    s.sendall(b"POST /mq?topic=" + q.encode() + b" HTTP/1.1\r\nHost: x\r\n"
              + (b"Content-Type: application/x-ndjson\r\n" if ndjson else b"")
              + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
              + body + b"0\r\n\r\n")
    status, hdrs, rest = read_headers(s)
    while len(rest) < int(hdrs["content-length"]):
        rest += s.recv(4096)
    s.close()
    return status, rest


def test_chunked_bodies_empty_and_in_pieces(gateway_factory, memqd_factory):
    """An empty chunked body (no buffer, or empty ones) is a 400, never a
    copy from nowhere (UBSan saw memcpy from NULL); a body in many chunks
    is copied once and every line stored."""
    import json
    node = memqd_factory()
    g = gateway_factory([node], loc_extra="client_body_buffer_size 1k;")
    q = qname()
    status, body = _chunked_post(g, q, [])
    assert status == 400 and json.loads(body)["error"] == "empty body"
    status, body = _chunked_post(g, q, [b"\n", b"  \n"])
    assert status == 400 and json.loads(body)["error"] == "empty body"
    lines = [b"line%04d" % i for i in range(400)]
    chunks = [l + b"\n" for l in lines]
    status, body = _chunked_post(g, q, chunks)
    assert status == 201 and json.loads(body)["queued"] == 400, body
    c = Client(node.addr)
    got = [i.data for i in c.drain(q)]
    c.close()
    assert got == lines


def test_publish_to_a_slow_reader_is_not_timed_out(gateway_factory):
    """A node that takes a big batch slowly but steadily: windows go out
    while replies come, every timer starts again on progress, so a batch
    that takes several read_timeouts to go out is stored, not failed
    half-way.  (The seed passes this too: loopback's send buffers took its
    whole batch at once; it guards the windowed sender.)"""
    count = {"sets": 0}

    def answer(line, n):
        if not line.startswith(b"set "):
            return None
        count["sets"] += 1
        return 0, b"STORED\r\n"

    # 64 KiB every 50 ms: the 3 MB batch takes about 2.5 s to go out, the
    # kernel takes the first 1-2 MB at once, read_timeout is 0.5 s
    fake = ScriptedNode(answer, recv_size=65536, recv_pause=0.05,
                        rcvbuf=65536)
    try:
        g = gateway_factory([fake.addr], workers=1,
                            timeouts="connect_timeout 1s; read_timeout 500ms;",
                            loc_extra="client_max_body_size 8m;")
        body = b"".join(b"%04d" % i + b"p" * 1020 + b"\n" for i in range(3072))
        r = g.publish(qname(), body, ndjson=True, timeout=30)
        assert r.status_code == 201, r.text
        assert r.json()["queued"] == 3072
        assert count["sets"] == 3072
        assert g.node_status(node_addr(fake.addr))["fails"] == 0
    finally:
        fake.close()


def test_full_node_table_keeps_nodes_still_listed(gateway_factory,
                                                  memqd_factory, tmp_path):
    """64 nodes known, a new one comes first in the file and one leaves:
    only the one that left makes room; the others keep their slot and
    counters (a node further down the file is not taken for gone)."""
    node = memqd_factory(wait=False)
    node.host = "0.0.0.0"
    node.start()
    old = ["127.0.1.%d:%d" % (i + 1, node.port) for i in range(64)]
    nf = tmp_path / "full.nodes"
    _write_file(nf, "%s weight=1000\n" % old[0] + "\n".join(old[1:]) + "\n")
    g = gateway_factory([], workers=1, cluster_extra="nodes_file %s;" % nf)
    wait_for(lambda: _file_nodes(g) == set(old), timeout=5, what="64 nodes")
    r = g.publish(qname(), b"to the heavy one")
    assert r.json()["node"] == old[0], r.text
    new = "127.0.2.1:%d" % node.port
    _write_file(nf, new + "\n" + "\n".join(old[:63]) + "\n")
    wait_for(lambda: _file_nodes(g) == set(old[:63]) | {new}, timeout=5,
             what="the new list")
    st = g.node_status(old[0])
    assert st["msgs_in"] == 1, st
    assert "too many nodes" not in g.error_text()
