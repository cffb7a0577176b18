"""Durability across clean restarts, the on-disk layout, segment deletion,
SIGTERM behaviour and the --sync modes (DESIGN §1 Storage, §3)."""

import subprocess
import threading
import time

import pytest

from memqlib import (SLOW, Memqd, Client, parse_segment, qname, wait_for)


def _restart(s):
    s.restart()
    return s.connect()


def test_restart_keeps_items_order_and_flags(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    qs = [qname() for _ in range(3)]
    sent = {}
    for qi, q in enumerate(qs):
        sent[q] = []
        for i in range(30):
            data = bytes([(i * 7 + qi) % 256]) * (i * 37 % 500) + b"\r\n\0%d" % i
            flags = (i * 2654435761) & 0xFFFFFFFF
            c.store(q, data, flags=flags)
            sent[q].append((data, flags, i + 1))
    c.close()
    c = _restart(s)
    for q in qs:
        got = c.get_items(q + "/n=100", cmd="gets")
        assert [(i.data, i.flags, i.cas) for i in got] == sent[q]
    c.close()


def test_consumed_items_not_redelivered(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    for i in range(10):
        c.store(q, b"m%d" % i)
    for i in range(4):
        assert c.getdata(q) == b"m%d" % i
    assert [i.data for i in c.get_items(q + "/open/n=2")] == [b"m4", b"m5"]
    assert c.get_items(q + "/close") == []
    holder = s.connect()
    assert holder.get(q + "/open").data == b"m6"      # open at shutdown
    c.close()
    c = _restart(s)
    got = c.get_items(q + "/n=100", cmd="gets")
    assert [(i.data, i.cas) for i in got] == \
        [(b"m%d" % i, i + 1) for i in range(6, 10)]
    # numbering goes on where it was
    c.store(q, b"m10")
    assert c.get(q, cmd="gets").cas == 11
    holder.close()
    c.close()


def test_many_restarts(memqd_factory):
    s = memqd_factory()
    q = qname()
    expect = []
    n = 0
    for r in range(4):
        c = s.connect()
        for _ in range(5):
            c.store(q, b"r%d-%d" % (r, n))
            expect.append(b"r%d-%d" % (r, n))
            n += 1
        assert c.getdata(q) == expect.pop(0)
        c.close()
        s.restart()
    c = s.connect()
    assert [i.data for i in c.drain(q)] == expect
    c.close()


def test_delete_and_flush_survive_restart(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    qd, qf, qk = qname(), qname(), qname()
    for q in (qd, qf, qk):
        c.store(q, b"1")
        c.store(q, b"2")
    assert c.cmd("delete " + qd) == "DELETED"
    assert c.cmd("flush " + qf) == "OK"
    c.close()
    c = _restart(s)
    assert c.get(qd) is None
    assert not [k for k in c.stats() if k.startswith("queue_%s_" % qd)]
    assert not (s.data_dir / qd).exists()
    assert c.get(qf) is None
    assert [i.data for i in c.drain(qk)] == [b"1", b"2"]
    c.close()


def test_expired_items_stay_expired_after_restart(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"dead", exptime=-1)
    c.store(q, b"alive")
    c.close()
    c = _restart(s)
    assert [i.data for i in c.drain(q)] == [b"alive"]
    c.close()


def test_on_disk_layout(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    payloads = [b"p%d" % i * (i + 1) for i in range(20)]
    for i, p in enumerate(payloads):
        c.store(q, p, flags=i)
    assert c.getdata(q) == payloads[0]
    c.close()
    s.stop_checked()
    assert (s.data_dir / "memqd.lock").exists()
    d = s.data_dir / q
    assert d.is_dir()
    segs = s.segments(q)
    assert [p.name for p in segs] == ["00000000000000000001.seg"]
    first, recs, tail = parse_segment(segs[0])
    assert first == 1
    assert [r.seq for r in recs] == list(range(1, 21))
    assert [r.payload for r in recs] == payloads
    assert [r.flags for r in recs] == list(range(20))
    assert all(r.kind == 1 and r.exptime == 0 for r in recs)
    now_ms = time.time() * 1000
    assert all(now_ms - 600000 < r.ctime <= now_ms + 1000 for r in recs)
    rest = segs[0].read_bytes()[tail:]
    assert rest.strip(b"\0") == b"", "bytes after the last record"
    assert (d / "position").exists(), "no position file after a get"
    leftovers = [p.name for p in d.iterdir()
                 if p.name != "position" and not p.name.endswith(".seg")]
    assert not leftovers, "stray files in the queue dir: %r" % leftovers
    s.start()


def test_fully_consumed_segments_deleted(memqd_factory):
    s = memqd_factory(args=["--segment-size", "64k"])
    c = s.connect()
    q = qname()
    n = 300
    # STORED means the record is in the journal; its queue file gets it
    # within 100 ms (docs/memqd.md, "Queue files")
    for i in range(n):
        c.store(q, (b"%04d" % i) * 250)

    def in_files():
        last = s.segments(q)[-1]
        recs = parse_segment(last)[1]
        return recs and recs[-1].seq == n

    wait_for(in_files, timeout=5, what="every record in the queue files")
    segs = s.segments(q)
    assert len(segs) >= 4, "300 KB in 64k segments: got %r" % segs
    # each file is named by the sequence number of its first record
    seen = 0
    for p in segs:
        first, recs, _ = parse_segment(p)
        assert p.name == "%020d.seg" % first
        assert recs and recs[0].seq == first
        assert recs[0].seq == seen + 1
        seen = recs[-1].seq
        assert p.stat().st_size <= 64 * 1024 + 1100
    assert seen == n
    # consume two thirds: the segments before the head go away
    got = [c.getdata(q) for _ in range(200)]
    assert got[-1] == (b"%04d" % 199) * 250
    wait_for(lambda: len(s.segments(q)) < len(segs), timeout=5,
             what="consumed segments deleted")
    left = s.segments(q)
    assert int(left[0].name[:20]) <= 201, \
        "a segment with unconsumed records was deleted: %r" % left
    rest = c.drain(q)
    assert len(rest) == 100
    wait_for(lambda: len(s.segments(q)) <= 1, timeout=5,
             what="all consumed segments deleted")
    c.close()
    c = _restart(s)
    assert c.get(q) is None
    c.store(q, b"next")
    assert c.get(q, cmd="gets").cas == n + 1
    c.close()


def test_sigterm_ends_long_poll(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"x")
    c.get(q)
    poller = s.connect(timeout=10)
    poller.send("get %s/t=30000\r\n" % q)
    wait_for(lambda: c.qstats(q).get("waiters") == 1, timeout=5,
             what="poller waiting")
    t0 = time.monotonic()
    s.signal(15)
    assert poller.read_values(timeout=5) == []
    assert time.monotonic() - t0 < 2.0 * SLOW
    rc = s.proc.wait(5 * SLOW)
    assert rc == 0
    assert time.monotonic() - t0 < 3.0 * SLOW
    s.proc = None
    s.check_sanitizer()


def test_sigterm_ends_long_poll_on_missing_queue(memqd_factory):
    """A long poll on a queue that does not exist (nothing on disk, not in
    stats) also answers END at once on SIGTERM."""
    s = memqd_factory()
    c = s.connect()
    q = qname()
    poller = s.connect(timeout=10)
    poller.send("get %s/open/n=1/t=30000\r\n" % q)
    # parked without creating the queue: only the general count shows it
    wait_for(lambda: c.stats().get("curr_waiters") == "1", timeout=5,
             what="poller parked")
    assert "queue_%s_waiters" % q not in c.stats()
    t0 = time.monotonic()
    s.signal(15)
    assert poller.read_values(timeout=5) == []
    assert time.monotonic() - t0 < 2.0 * SLOW
    assert s.proc.wait(5 * SLOW) == 0
    s.proc = None
    s.check_sanitizer()
    assert not (s.data_dir / q).exists()


def test_sigterm_finishes_replies_in_flight(memqd_factory):
    s = memqd_factory()
    c = s.connect(timeout=10)
    q = qname()
    n = 2000
    stored = []
    c.send(b"".join(b"set %s 0 0 6\r\n%06d\r\n" % (q.encode(), i)
                    for i in range(n)))
    # wait for the first replies, then stop the server mid-stream
    assert c.line() == "STORED"
    stored.append(0)
    s.signal(15)
    while True:
        try:
            line = c.line(timeout=5)
        except (ConnectionError, OSError):
            break
        assert line == "STORED", line
        stored.append(len(stored))
    assert s.proc.wait(5 * SLOW) == 0
    s.proc = None
    s.check_sanitizer()
    s.start()
    c = s.connect()
    got = [i.data for i in c.drain(q)]
    assert got[:len(stored)] == [b"%06d" % i for i in stored]
    assert got == [b"%06d" % i for i in range(len(got))]
    c.close()


def test_sigint_exits_zero(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    c.store("intq", b"x")
    c.close()
    s.signal(2)
    assert s.proc.wait(5 * SLOW) == 0
    s.proc = None
    s.start()
    c = s.connect()
    assert c.getdata("intq") == b"x"
    c.close()


@pytest.mark.parametrize("mode", ["always", "interval=50", "none"])
def test_sync_modes(memqd_factory, mode):
    s = memqd_factory(args=["--sync", mode])
    c = s.connect()
    q = qname()
    n = 500
    req = b"".join(b"set %s %d 0 5\r\n%05d\r\n" % (q.encode(), i, i)
                   for i in range(n))
    c.send(req)
    for _ in range(n):
        assert c.line() == "STORED"
    assert c.getdata(q) == b"00000"
    c.close()
    c = _restart(s)
    got = c.drain(q)
    assert [(i.data, i.flags) for i in got] == \
        [(b"%05d" % i, i) for i in range(1, n)]
    c.close()


def test_second_daemon_on_same_dir_refused(memqd_factory, tmp_path):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"mine")
    other = Memqd(tmp_path / "other", data_dir=s.data_dir)
    (tmp_path / "other").mkdir()
    p = other.spawn()
    try:
        rc = p.wait(10 * SLOW)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("a second memqd started on a locked data dir")
    assert rc != 0
    assert c.getdata(q) == b"mine"
    c.store(q, b"still")
    assert c.getdata(q) == b"still"
    c.close()


def test_concurrent_writers_durable(memqd_factory):
    """Group commit: several connections set at once under --sync always;
    every STORED item is there after a restart, each writer's in order."""
    s = memqd_factory(args=["--sync", "always"])
    q = qname()
    writers, per = 6, 200
    errors = []

    def writer(w):
        try:
            c = Client(s.addr, timeout=20)
            req = b"".join(b"set %s 0 0 8\r\nw%d-%05d\r\n" % (q.encode(), w, i)
                           for i in range(per))
            c.send(req)
            for _ in range(per):
                assert c.line() == "STORED"
            c.close()
        except Exception as e:        # reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60 * SLOW)
    assert not errors, errors
    c = _restart(s)
    got = [i.data for i in c.drain(q)]
    assert len(got) == writers * per
    for w in range(writers):
        mine = [g for g in got if g.startswith(b"w%d-" % w)]
        assert mine == [b"w%d-%05d" % (w, i) for i in range(per)]
    c.close()



def test_acks_flow_during_a_long_stream(memqd_factory):
    """Group commit must not wait for the client to pause: a client that
    streams sets without a break gets its STORED replies while it is still
    streaming (each one once an fsync covers it)."""
    s = memqd_factory(args=["--sync", "always"])
    c = s.connect(timeout=20)
    q = qname()
    # one set per write, as a client that sends each set as it comes
    chunk = b"set %s 0 0 100\r\n%s\r\n" % (q.encode(), b"s" * 100)
    first = []
    got_ack = threading.Event()

    def reader():
        try:
            line = c.line(timeout=5)
            first.append((time.monotonic(), line))
        except (OSError, ConnectionError) as e:
            first.append((time.monotonic(), repr(e)))
        got_ack.set()

    t = threading.Thread(target=reader)
    t0 = time.monotonic()
    t.start()
    sent = 0
    end = t0 + 2.0 * SLOW
    while not got_ack.is_set() and time.monotonic() < end:
        c.sock.sendall(chunk)
        sent += 1
    streaming_when_acked = got_ack.is_set()
    stopped = time.monotonic()
    t.join(10 * SLOW)
    assert first and first[0][1] == "STORED", first
    assert streaming_when_acked, (
        "no STORED reply during %.1fs of continuous sets (%d sent); the "
        "first came %.2fs after the client paused"
        % (stopped - t0, sent, first[0][0] - stopped))
    assert first[0][0] - t0 < 1.0 * SLOW
    rest = c.read_exact(8 * (sent - 1), timeout=30)
    assert rest == b"STORED\r\n" * (sent - 1)
    c.close()


def _vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def test_large_backlog_one_queue(memqd_factory):
    """A million items waiting in one queue: every set is acknowledged
    (items live on disk, there is no cap on a queue's length without a
    configured limit) and memory stays small (DESIGN §1 Storage: ten
    million items cost at most a few tens of MiB RSS)."""
    s = memqd_factory(args=["--sync", "always"])
    c = s.connect(timeout=20)
    q = qname()
    n, per = 1000000, 10000
    block = b"set %s 0 0 10\r\n0123456789\r\n" % q.encode() * per
    errors = []

    def sender():
        try:
            for _ in range(n // per):
                c.sock.sendall(block)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    acked = 0
    while acked < n:
        try:
            chunk = c.read_exact(8 * per, timeout=5)
        except (OSError, ConnectionError) as e:
            pytest.fail("after %d of %d sets acknowledged, no reply for 5s "
                        "(%r); queue stats %r"
                        % (acked + len(c.buf) // 8, n, e,
                           s.connect().qstats(q)))
        assert chunk == b"STORED\r\n" * per, chunk[:100]
        acked += per
    t.join(10 * SLOW)
    assert not errors, errors
    o = s.connect()
    st = o.qstats(q)
    assert st["items"] == n and st["bytes"] == 10 * n
    if not SLOW > 1:
        rss = _vmrss_kib(s.proc.pid)
        assert rss < 64 * 1024, "VmRSS %d KiB with 1M queued items" % rss
    got = o.get_items(q + "/n=1000", cmd="gets")
    assert [i.cas for i in got] == list(range(1, 1001))
    o.close()
    c.close()


def test_stats_after_restart(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    for p in (b"aaa", b"bb", b"c", b"dddd"):
        c.store(q, p)
    c.getdata(q)
    wait_for(lambda: c.qstats(q)["age_ms"] >= 300, timeout=5, interval=0.05,
             what="head item 300 ms old")
    c.close()
    s.restart()
    c = s.connect()
    st = c.qstats(q)
    assert st["items"] == 3 and st["bytes"] == 7, st
    assert st["open_items"] == 0
    assert st["age_ms"] >= 300, "age of the head must come from its ctime"
    g = c.stats()
    assert int(g["curr_items"]) == 3 and int(g["bytes"]) == 7
    c.close()


def test_segment_with_open_item_is_kept(memqd_factory):
    """A segment whose records were all handed out is not fully consumed
    while one of them is still open: it must stay until the open item is
    acknowledged, because /abort, a disconnect or a restart gives the item
    back and it is read from that segment again."""
    s = memqd_factory(args=["--segment-size", "64k"])
    c = s.connect()
    q = qname()
    n = 300
    for i in range(n):
        c.store(q, (b"%04d" % i) * 250)
    nsegs = len(s.segments(q))
    assert nsegs >= 4
    holder = s.connect()
    assert holder.get(q + "/open").data == b"0000" * 250
    for i in range(1, 250):
        assert c.getdata(q) == (b"%04d" % i) * 250
    # later segments may go; the first one holds the open item
    assert s.segments(q)[0].name == "%020d.seg" % 1, \
        "segment with an open item deleted: %r" % s.segments(q)[:3]
    holder.close()
    wait_for(lambda: c.qstats(q)["items"] == 51, timeout=5,
             what="open item given back")
    assert c.getdata(q) == b"0000" * 250
    c.close()


def test_items_taken_behind_an_open_one_not_redelivered(memqd_factory):
    """Plain get is at-most-once: items taken while an older item is still
    open elsewhere must not come back after a clean restart; the open item
    does come back."""
    s = memqd_factory(args=["--segment-size", "64k"])
    c = s.connect()
    q = qname()
    n = 100
    for i in range(n):
        c.store(q, (b"%04d" % i) * 250)
    holder = s.connect()
    assert holder.get(q + "/open").data == b"0000" * 250
    for i in range(1, 60):
        assert c.getdata(q) == (b"%04d" % i) * 250
    c.close()
    s.restart()
    holder.close()
    c = s.connect()
    got = [i.data[:4] for i in c.drain(q)]
    want = [b"%04d" % i for i in [0] + list(range(60, n))]
    assert got == want, "after a clean restart got %d items: %r ..." % (
        len(got), got[:8])
    c.close()


def test_recreated_queue_after_restart(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"old-1")
    c.store(q, b"old-2")
    assert c.cmd("delete " + q) == "DELETED"
    c.store(q, b"new-1")
    c.store(q, b"new-2")
    assert c.getdata(q) == b"new-1"
    c.close()
    c = _restart(s)
    assert [i.data for i in c.drain(q)] == [b"new-2"]
    c.close()


def test_flush_all_survives_restart(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    qs = [qname() for _ in range(3)]
    for q in qs:
        c.store(q, b"a")
        c.store(q, b"b")
    assert c.cmd("flush_all") == "OK"
    c.store(qs[0], b"after")
    c.close()
    c = _restart(s)
    assert [i.data for i in c.drain(qs[0])] == [b"after"]
    for q in qs[1:]:
        assert c.get(q) is None
    c.close()
