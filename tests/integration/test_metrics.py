"""
memqd --metrics ADDR:PORT: GET /metrics in Prometheus text format 0.0.4,
read with the Prometheus client library's own parser
(python3-prometheus-client).  Every family has HELP and TYPE; values agree
with `stats`; histograms are well formed and grow with traffic; the
listener answers 400/404/405/431 and survives hostile clients (a huge head,
a request that never ends, garbage, a thousand connections, a scraper that
does not read) without costing the memcache side anything.
"""

import http.client
import os
import resource
import socket
import threading
import time

import pytest

from memqlib import Client, free_port, pipeline, qname, wait_for, SLOW

parser = pytest.importorskip("prometheus_client.parser")

TYPES = ("counter", "gauge", "histogram")


def _start(memqd_factory, *args):
    port = free_port()
    s = memqd_factory(args=["--metrics", "127.0.0.1:%d" % port] + list(args))
    s.metrics = ("127.0.0.1", port)
    return s


def _http(s, method="GET", path="/metrics", headers=None):
    h = http.client.HTTPConnection(*s.metrics, timeout=10 * SLOW)
    try:
        h.request(method, path, headers=headers or {})
        r = h.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        h.close()


def scrape(s):
    """{family name: Metric} of one scrape; every family has HELP and
    TYPE, names are unique."""
    status, hdrs, body = _http(s)
    assert status == 200, body[:200]
    assert hdrs["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {}
    for f in parser.text_string_to_metric_families(body.decode()):
        # a sample outside a declared family comes back untyped and
        # without documentation
        assert f.type in TYPES, "family %s has no TYPE" % f.name
        assert f.documentation, "family %s has no HELP" % f.name
        assert f.name not in fams, "family %s twice" % f.name
        fams[f.name] = f
    text = body.decode()
    for name in fams:
        assert ("# HELP %s" % name) in text or \
            ("# HELP %s_total" % name) in text
    return fams


def value(fams, family, sample=None, **labels):
    f = fams[family]
    sample = sample or (family + "_total" if f.type == "counter" else family)
    got = [v for n, lb, v, *_ in f.samples if n == sample and lb == labels]
    assert len(got) == 1, "%s%r: %r" % (sample, labels, f.samples[:5])
    return got[0]


def hist(fams, family, **labels):
    """(buckets [(le, cumulative count)], sum, count) of a histogram."""
    f = fams[family]
    buckets = [(float(lb["le"]), v) for n, lb, v, *_ in f.samples
               if n == family + "_bucket"
               and {k: x for k, x in lb.items() if k != "le"} == labels]
    les = [le for le, _ in buckets]
    assert les == sorted(les) and len(set(les)) == len(les), les
    assert les[-1] == float("inf")
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), "buckets not cumulative: %r" % counts
    count = value(fams, family, family + "_count", **labels)
    assert counts[-1] == count
    return buckets, value(fams, family, family + "_sum", **labels), count


def test_families_and_values_match_stats(memqd_factory):
    s = _start(memqd_factory)
    c = s.connect()
    qa = qname("m.a:b-c_")          # every punctuation a name may hold
    qb = qname("mb")
    for i in range(5):
        c.store(qa, b"x" * (10 + i))
    c.store(qb, b"hello")
    assert c.get(qb + "/open").data == b"hello"   # one open item on qb
    # a name a label value would have to escape is not a queue name
    assert c.set('q"\\x', b"v") == "CLIENT_ERROR bad queue name"

    st = c.stats()
    fams = scrape(s)

    assert value(fams, "memqd_open_connections") == int(st["curr_connections"])
    assert value(fams, "memqd_accepted_connections") == \
        int(st["total_connections"])
    assert value(fams, "memqd_items") == int(st["curr_items"]) == 5
    assert value(fams, "memqd_item_bytes") == int(st["bytes"])
    assert value(fams, "memqd_stored_items") == int(st["total_items"])
    assert value(fams, "memqd_corrupt_records") == \
        int(st["corrupt_records"]) == 0
    assert value(fams, "memqd_get_hits") == int(st["get_hits"])
    # this connection: 6 stores, 1 set refused, 1 get, 1 stats
    assert value(fams, "memqd_commands", command="set") == 7
    assert value(fams, "memqd_commands", command="get") == 1
    assert value(fams, "memqd_commands", command="stats") == 1
    assert value(fams, "memqd_commands", command="touch") == 0
    assert value(fams, "memqd_commands", command="other") >= 1  # version

    for q in (qa, qb):
        qs = c.qstats(q)
        assert value(fams, "memqd_queue_items", queue=q) == qs["items"]
        assert value(fams, "memqd_queue_bytes", queue=q) == qs["bytes"]
        assert value(fams, "memqd_queue_open_items", queue=q) == \
            qs["open_items"]
        assert value(fams, "memqd_queue_enqueued", queue=q) == \
            qs["total_items"]
        assert value(fams, "memqd_queue_expired", queue=q) == 0
        assert value(fams, "memqd_queue_waiters", queue=q) == 0
    assert value(fams, "memqd_queue_open_items", queue=qb) == 1
    assert value(fams, "memqd_queue_items", queue=qa) == 5
    # the age grows; stats was read before the scrape
    age_ms = int(st["queue_%s_age_ms" % qa])
    assert value(fams, "memqd_queue_head_age_seconds", queue=qa) >= \
        age_ms / 1000.0
    assert value(fams, "memqd_queue_head_age_seconds", queue=qb) == 0

    # bytes: exactly what one command and its reply took
    before = scrape(s)
    assert c.cmd("version").startswith("VERSION memqd ")
    after = scrape(s)
    reply = len(c.cmd("version")) + 2
    assert value(after, "memqd_read_bytes") - \
        value(before, "memqd_read_bytes") == len(b"version\r\n")
    assert value(after, "memqd_written_bytes") - \
        value(before, "memqd_written_bytes") == reply

    c.close()
    wait_for(lambda: value(scrape(s), "memqd_open_connections") == 0,
             what="connection gauge back to 0")


def test_histograms_grow_under_sync_always(memqd_factory):
    s = _start(memqd_factory, "--sync", "always")
    c = s.connect()
    q = qname()
    before = scrape(s)
    _, _, fsync0 = hist(before, "memqd_fsync_duration_seconds")
    _, _, set0 = hist(before, "memqd_request_duration_seconds",
                      command="set")
    _, _, get0 = hist(before, "memqd_request_duration_seconds",
                      command="get")

    for i in range(20):
        c.store(q, b"m%d" % i)
    # pipelined: several STOREDs released by one commit
    data = b"".join(b"set %s 0 0 2\r\nxy\r\n" % q.encode() for _ in range(30))
    assert pipeline(c, data, 8 * 30) == b"STORED\r\n" * 30
    for i in range(7):
        assert c.getdata(q) is not None

    after = scrape(s)
    buckets, total, fsyncs = hist(after, "memqd_fsync_duration_seconds")
    assert fsyncs >= fsync0 + 2      # the 20 sets waited one by one
    assert total > 0
    _, set_sum, sets = hist(after, "memqd_request_duration_seconds",
                            command="set")
    assert sets == set0 + 50
    assert set_sum > 0
    _, _, gets = hist(after, "memqd_request_duration_seconds", command="get")
    assert gets == get0 + 7
    c.close()


def test_http_answers(memqd_factory):
    s = _start(memqd_factory)
    status, hdrs, body = _http(s, "HEAD")
    assert status == 200 and body == b""
    assert int(hdrs["Content-Length"]) > 1000
    assert _http(s, path="/metrics?x=1")[0] == 200
    assert _http(s, path="/")[0] == 404
    assert _http(s, path="/metricsx")[0] == 404
    status, hdrs, _ = _http(s, "POST")
    assert status == 405 and hdrs["Allow"] == "GET, HEAD"
    assert _http(s, "DELETE", "/x")[0] == 405

    for garbage in (b"\r\n\r\n", b"GET\r\n\r\n", b"GET /metrics\r\n\r\n",
                    b"GET metrics HTTP/1.1\r\n\r\n",
                    b"G(T /metrics HTTP/1.1\r\n\r\n",
                    b"GET /metrics SPDY/3\r\n\r\n",
                    b"GET  /metrics HTTP/1.1\r\n\r\n",
                    b"\x00\xff\x16\x03\x01 / HTTP/1.1\r\n\r\n"):
        k = socket.create_connection(s.metrics, timeout=10 * SLOW)
        k.sendall(garbage)
        got = _read_all(k)
        assert got.startswith(b"HTTP/1.1 400 "), (garbage, got[:80])
        k.close()

    # HTTP/1.0 and a bare-LF head are answered as well
    k = socket.create_connection(s.metrics, timeout=10 * SLOW)
    k.sendall(b"GET /metrics HTTP/1.0\n\n")
    got = _read_all(k)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in got
    k.close()


def _read_all(k):
    out = b""
    while True:
        b = k.recv(65536)
        if not b:
            return out
        out += b


def _fds(s):
    return len(os.listdir("/proc/%d/fd" % s.proc.pid))


def test_hostile_clients_cost_nothing(memqd_factory):
    s = _start(memqd_factory)
    c = s.connect()
    assert c.cmd("version").startswith("VERSION")
    scrape(s)
    fds = _fds(s)

    # a head that never ends within the limit: 431, then closed
    k = socket.create_connection(s.metrics, timeout=10 * SLOW)
    try:
        k.sendall(b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 20000)
    except (ConnectionResetError, BrokenPipeError):
        pass
    got = _read_all(k)
    assert got.startswith(b"HTTP/1.1 431 "), got[:80]
    k.close()

    # a request that never ends: memqd goes on meanwhile, then drops it
    slow = socket.create_connection(s.metrics, timeout=30 * SLOW)
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert c.cmd("version").startswith("VERSION")
    scrape(s)
    assert _read_all(slow) == b"", "closed without an answer"
    slow.close()

    # a thousand connections at once: past the limit they are closed at
    # once; the memcache side does not notice
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    many = []
    try:
        for _ in range(1000):
            many.append(socket.create_connection(s.metrics,
                                                 timeout=10 * SLOW))
        for k in many[::50]:
            k.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert c.cmd("version").startswith("VERSION")
        assert c.get(qname()) is None     # (no set: a queue's files would
        #                                   add descriptors of their own)
    finally:
        for k in many:
            k.close()
    wait_for(lambda: _http(s)[0] == 200, timeout=10,
             what="scrape answered again")
    wait_for(lambda: _fds(s) <= fds, timeout=10,
             what="descriptors back to %d" % fds)
    c.close()


def test_slow_scraper_of_many_queues(memqd_factory):
    """500 queues; a scraper that asks and does not read keeps its answer
    in memqd's buffer, not memqd's loop: clients are served meanwhile, and
    the answer, read later, is whole."""
    s = _start(memqd_factory, "--sync", "none")
    c = s.connect()
    names = ["many%03d" % i for i in range(500)]
    data = b"".join(b"set %s 0 0 1\r\nx\r\n" % n.encode() for n in names)
    assert pipeline(c, data, 8 * len(names)) == b"STORED\r\n" * len(names)

    k = socket.socket()
    k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    k.settimeout(10 * SLOW)
    k.connect(s.metrics)
    k.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    for i in range(20):
        q = names[i]
        assert c.getdata(q) == b"x"
        c.store(q, b"y")
    st = c.stats()
    assert int(st["curr_items"]) == 500
    got = _read_all(k)
    k.close()
    head, body = got.split(b"\r\n\r\n", 1)
    assert len(body) > 64 * 1024     # far more than the socket buffers
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == \
        len(body)
    fams = {f.name: f for f in
            parser.text_string_to_metric_families(body.decode())}
    assert {lb["queue"] for n, lb, v, *_ in
            fams["memqd_queue_items"].samples} == set(names)
    c.close()


def test_metrics_address_errors(memqd_factory, tmp_path):
    """A --metrics address that cannot be used stops the start."""
    import subprocess
    from memqlib import MEMQD
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    # a port in use fails at the start (1); a malformed address is a
    # usage error (2), found before anything is opened
    for addr, rc in (("127.0.0.1:%d" % busy.getsockname()[1], 1),
                     ("nocolon", 2), ("127.0.0.1:notaport", 2),
                     ("127.0.0.1:70000", 2)):
        r = subprocess.run([MEMQD, "--listen", "127.0.0.1:%d" % free_port(),
                            "--data-dir", str(tmp_path / "d"),
                            "--metrics", addr],
                           capture_output=True, timeout=30 * SLOW)
        assert r.returncode == rc, (addr, r.stderr)
        assert b"metrics" in r.stderr
    busy.close()


def _rss_kb(s):
    with open("/proc/%d/status" % s.proc.pid) as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def test_concurrent_scrapes_of_many_queues_share_one_render(memqd_factory):
    """20,000 queues (an answer of some 9 MB, rendered in the loop): eight
    scrapers asking at once, none of them reading yet, must not cost eight
    renders of the loop's time nor eight copies of the answer."""
    s = _start(memqd_factory, "--sync", "none", "-v")
    c = s.connect()
    n = 20000
    for base in range(0, n, 5000):
        names = ["mq%05d" % i for i in range(base, base + 5000)]
        data = b"".join(b"set %s 0 0 1\r\nx\r\n" % q.encode() for q in names)
        assert pipeline(c, data, 8 * len(names), timeout=120) == \
            b"STORED\r\n" * len(names)
    scrape(s)                   # the first reads every queue's head once
    rendered = s.log_text().count("bytes rendered in")
    rss0 = _rss_kb(s)

    ks = []
    for _ in range(8):
        k = socket.socket()
        k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        k.settimeout(60 * SLOW)
        k.connect(s.metrics)
        ks.append(k)
    for k in ks:
        k.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    # each is answered (by a render of its own, or a shared one)
    got = [k.recv(1) for k in ks]
    assert got == [b"H"] * 8
    assert c.cmd("version").startswith("VERSION")
    grew = _rss_kb(s) - rss0
    # read together: one waiting 10 s for the others would be dropped
    answers = [None] * len(ks)

    def read(i):
        answers[i] = b"H" + _read_all(ks[i])
    readers = [threading.Thread(target=read, args=(i,))
               for i in range(len(ks))]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    for k in ks:
        k.close()

    renders = s.log_text().count("bytes rendered in") - rendered
    assert renders <= 2, "%d renders for 8 scrapes at once" % renders
    body = answers[0].split(b"\r\n\r\n", 1)[1]
    assert len(body) > 4 * 1024 * 1024
    for a in answers:
        head, b = a.split(b"\r\n\r\n", 1)
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) \
            == len(b)
    # the answer is held once, not once per scraper
    assert grew * 1024 < 3 * len(body), \
        "RSS grew by %d kB for a %d-byte answer" % (grew, len(body))
    c.close()


def test_idle_clients_in_every_slot_do_not_keep_scrapers_out(memqd_factory):
    """Eight clients (every slot) connect and send nothing: a scraper is
    answered within a few seconds, since a connection open a second or
    more gives up its slot when all are taken (oldest first, closed
    without an answer), instead of the scraper being refused for as long
    as the idle ones may stay (5 s without a request, 60 s reading
    slowly)."""
    s = _start(memqd_factory)
    idle = [socket.create_connection(s.metrics, timeout=10 * SLOW)
            for _ in range(8)]

    def answered():
        try:
            return _http(s)[0] == 200
        except (OSError, http.client.HTTPException):
            return False      # refused: closed at once

    try:
        c = s.connect()
        assert c.cmd("version").startswith("VERSION")
        c.close()
        wait_for(answered, timeout=10, interval=0.1,
                 what="a scrape answered while idle clients hold the slots")
        # answered while the newest idle one still holds its slot (its own
        # read timer ends it 5 s after it came): one of them made room
        idle[-1].setblocking(False)
        try:
            got = idle[-1].recv(1)
        except BlockingIOError:
            got = None
        assert got is None, "answered only once the idle ones timed out"
        assert _read_all(idle[0]) == b"", "the oldest dropped, unanswered"
    finally:
        for k in idle:
            k.close()


def test_scraper_reading_is_never_the_one_dropped(memqd_factory):
    """A scraper reading a big answer a little at a time (8 KiB each 0.1
    s) while idle clients take every other slot and new scrapers keep
    coming: room is made from the idle ones, the reading scraper's answer
    comes whole, and a new scraper is answered."""
    s = _start(memqd_factory, "--sync", "none")
    c = s.connect()
    names = ["slow%03d" % i for i in range(500)]
    data = b"".join(b"set %s 0 0 1\r\nx\r\n" % n.encode() for n in names)
    assert pipeline(c, data, 8 * len(names)) == b"STORED\r\n" * len(names)
    c.close()

    k = socket.socket()
    k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    k.settimeout(10 * SLOW)
    k.connect(s.metrics)
    k.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = [socket.create_connection(s.metrics, timeout=10 * SLOW)
            for _ in range(7)]
    got = b""
    answered = 0
    try:
        while True:
            b = k.recv(8192)
            if not b:
                break
            got += b
            time.sleep(0.1)
            if not answered:
                try:
                    answered = _http(s)[0] == 200
                except (OSError, http.client.HTTPException):
                    pass
    finally:
        k.close()
        for i in idle:
            i.close()
    head, body = got.split(b"\r\n\r\n", 1)
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == \
        len(body)
    assert len(body) > 128 * 1024, len(body)
    assert answered, "no scrape answered while the slow one read"
