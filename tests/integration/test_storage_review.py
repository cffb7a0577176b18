"""Adversarial review of the journal storage (issue 7): each test shows
one defect found by reading memqd/journal.c, sync.c, recover.c, queue.c.

Every test states the scenario and what DESIGN.md §1 "Storage" (or
docs/memqd.md) promises; each fails on the code it was written against.
"""

import os
import signal
import socket
import struct
import subprocess
import time


from memqlib import Closed, encode_record, parse_segment, qname, wait_for

REC_HDR = 48


def _fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _position(qdir):
    """(cursor, [owed seqs]) of a queue's position file, None if absent or
    unreadable (segment.c: version 1, 2, or 3 with delivery counts)."""
    try:
        b = (qdir / "position").read_bytes()
    except OSError:
        return None
    if len(b) == 20 and b[:8] == b"MQPOS\x00\x00\x01":
        return struct.unpack_from("<Q", b, 8)[0], []
    if len(b) >= 28 and b[:8] in (b"MQPOS\x00\x00\x02",
                                  b"MQPOS\x00\x00\x03"):
        seq, n = struct.unpack_from("<QQ", b, 8)
        return seq, list(struct.unpack_from("<%dQ" % n, b, 24))
    return None


def _drain(c, q):
    out = []
    while True:
        got = c.get_items(q + "/n=1000")
        if not got:
            return out
        out += [it.data for it in got]


def _hog_descriptors(s, spare=0):
    """Lowers memqd's descriptor limit to what it uses now plus a few and
    takes every one left with idle connections.  Returns the sockets."""
    pid = s.proc.pid
    limit = _fd_count(pid) + 8
    subprocess.run(["prlimit", "--pid", str(pid),
                    "--nofile=%d:%d" % (limit, limit)], check=True)
    hogs = []
    while _fd_count(pid) < limit - spare and len(hogs) < 64:
        n = _fd_count(pid)
        hogs.append(socket.create_connection((s.host, s.port)))
        try:
            wait_for(lambda: _fd_count(pid) > n, timeout=0.5,
                     what="connection accepted")
        except AssertionError:
            break
    wait_for(lambda: _fd_count(pid) >= limit - spare,
             what="descriptors used up")
    return hogs


def _empty_the_segment_cache(s, c):
    """Fills every slot of the segment descriptor cache (256) with other
    queues' tails, then deletes those queues: the cache is left empty."""
    others = [qname("evict") for _ in range(300)]
    c.send(b"".join(b"set %s 0 0 1\r\nx\r\n" % o.encode() for o in others))
    for _ in others:
        assert c.line() == "STORED"
    wait_for(lambda: all(any(p.stat().st_size > 16
                             for p in (s.data_dir / o).glob("*.seg"))
                         for o in others[-20:]),
             what="the other queues written to their files")
    c.send(b"".join(b"delete %s\r\n" % o.encode() for o in others))
    for _ in others:
        assert c.line() == "DELETED"


# ------------------------------------------------------------------ 1

def test_review_refused_set_does_not_replace_a_stored_one_after_kill9(
        memqd_factory):
    """queue.c append_record(): the record is journaled (journal_add) before
    the steps that can still fail for want of a descriptor or memory (for a
    record over 64 KiB, fdcache_get of the tail; otherwise realloc of the
    write buffer).  The set is answered SERVER_ERROR out of resources but
    q->next_seq is not advanced, so the journal now holds a refused record
    with the id the next set gets too.  After kill -9, replay
    (recover.c replay_visit, `h->seq < q->next_seq`) appends the first one
    -- the refused value -- and drops the STORED one as "already there"."""
    s = memqd_factory(args=["--sync", "always"])
    pid = s.proc.pid
    q = qname("dupseq")
    c = s.connect()
    c.store(q, b"first")
    wait_for(lambda: any(b"first" in p.read_bytes() for p in s.segments(q)),
             what="the first item in its segment file")

    _empty_the_segment_cache(s, c)

    hogs = _hog_descriptors(s)
    try:
        big = b"B" * (100 * 1024)
        r = c.set(q, big)
        assert r.startswith("SERVER_ERROR"), \
            "setup: the large set was expected to meet the descriptor " \
            "shortage, got %r" % r
        c.store(q, b"second")              # durable: STORED under always
        os.kill(pid, signal.SIGKILL)
        s.proc.wait()
        s.proc = None
    finally:
        for h in hogs:
            h.close()

    s.start()
    c = s.connect()
    got = _drain(c, q)
    c.close()
    assert [g[:12] for g in got] == [b"first", b"second"], \
        "after kill -9: %r (the STORED item was replaced by the refused " \
        "one)" % [g[:12] for g in got]


# ------------------------------------------------------------------ 2

def test_review_damaged_consumed_record_keeps_open_item_after_kill9(
        memqd_factory):
    """recover.c scan_segment(): the cut rule compares sc->last_seq + 1 with
    the journal's first id, but last_seq starts at the position file's
    cursor - 1 (recover_queue: `sc.last_seq = sc.first - 1`), not at the
    last id the file really showed.  Damage to an already consumed record
    then looks like damage "at or past the journal's first id": the
    segment is truncated there, and replay (`h->seq < q->next_seq`, with
    next_seq = cursor) does not put back the records between the damage and
    the cursor -- among them an item still open (owed) at the crash.
    DESIGN: damage costs the damaged record only; an unacknowledged /open
    item comes back after a crash (at-least-once)."""
    s = memqd_factory(args=["--sync", "always"])
    q = qname("cut")
    vals = [b"v%02d-" % i + b"." * 40 for i in range(1, 11)]
    c = s.connect()
    for v in vals:
        c.store(q, v)
    for i in range(3):                       # 1..3 consumed for good
        assert c.getdata(q) == vals[i]
    a = s.connect()                          # 4 open, never acknowledged
    assert a.get(q + "/open").data == vals[3]
    assert c.getdata(q) == vals[4]           # 5 consumed
    wait_for(lambda: _position(s.qdir(q)) == (6, [4]),
             what="position file: cursor 6, item 4 owed (have %r)"
             % (_position(s.qdir(q)),))
    seg = s.segments(q)
    assert len(seg) == 1
    first, recs, _ = parse_segment(seg[0])
    assert [r.seq for r in recs] == list(range(1, 11)), \
        "setup: all ten records in the segment file"
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    s.proc = None

    # one flipped payload byte in record 2, which was consumed long ago
    raw = bytearray(seg[0].read_bytes())
    raw[recs[1].offset + REC_HDR + 3] ^= 0x5A
    seg[0].write_bytes(bytes(raw))

    s.start()
    c = s.connect()
    got = _drain(c, q)
    c.close()
    assert vals[3] in got, \
        "item 4 (open, never acknowledged) lost after damage to consumed " \
        "record 2: got %r" % [g[:4] for g in got]
    assert got == [vals[3]] + vals[5:]


def test_review_open_item_only_in_the_journal_survives_a_restart(
        memqd_factory):
    """The same replay filter, with no damage at all: after a durability
    failure (srv.readonly) queue files are never written again
    (queue_before_sleep skips queue_write_all) but position files still
    are, so the position's cursor runs past what the files hold.  Recovery
    then sets next_seq from the position (`sc.last_seq = sc.first - 1`) and
    replay skips every journal record below it "because its queue file has
    it" (recover.c replay_visit) -- it does not: an item STORED before the
    failure and still open at the restart is lost.  (Power loss gives the
    same picture: position files are written without fsync, queue files are
    synced only at checkpoints.)"""
    for attempt in range(5):
        s = memqd_factory(args=["--sync", "always"],
                          env={"MEMQD_FAULT_FSYNC_AFTER": "1"})
        q = qname("owed")
        p = s.connect()
        vals = [b"o%d-" % i + b"." * 30 for i in range(1, 6)]
        p.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (q.encode(), len(v), v)
                        for v in vals))
        assert [p.line() for _ in vals] == ["STORED"] * 5
        try:
            r = p.set(q, b"o6")                # its fdatasync fails
        except Closed:
            r = None
        assert r != "STORED"
        p.close()
        if not any(vals[0] in seg.read_bytes() for seg in s.segments(q)):
            break                              # the items are in no file
        s.stop_checked()                       # written before the failure:
    else:                                      # try again
        raise AssertionError("setup: the items always reached their file")
    a = s.connect()
    assert a.get(q + "/open").data == vals[0]  # open, never acknowledged
    wait_for(lambda: _position(s.qdir(q)) == (2, [1]),
             what="position file: cursor 2, item 1 owed (have %r)"
             % (_position(s.qdir(q)),))
    s.stop_checked()                           # journal kept (write failed)
    a.close()

    s.start()
    c = s.connect()
    got = _drain(c, q)
    c.close()
    assert vals[0] in got, \
        "item 1 (STORED, open, never acknowledged) lost: got %r" % \
        [g[:3] for g in got]


# ------------------------------------------------------------------ 3

def test_review_forged_frame_in_a_payload_does_not_wrap_ids(memqd_factory):
    """recover.c find_next() / scan_segment(): after damage, the next
    record is the first offset whose magic and header CRC hold, and its
    seq is trusted as is (next_seq, then `sc->last_seq = next_seq - 1`,
    q->next_seq = last_seq + 1).  A payload is client data and may contain
    a complete, valid frame: a damaged header in front of it makes recovery
    take the forged frame's seq (2^64 - 2 here).  corrupt_records grows by
    ~2^64 for one damaged record and the queue's ids run to 2^64 - 1, then
    wrap to 0 (duplicate ids, files named 00000000000000000000.seg sorting
    before older ones)."""
    s = memqd_factory(args=["--sync", "always"])
    q = qname("forge")
    forged = encode_record(0, b"forged-item", seq=2 ** 64 - 2)
    c = s.connect()
    c.store(q, b"A-first")
    c.store(q, b"P" * 100 + forged)           # record 2 carries the frame
    c.store(q, b"C-third")
    c.close()
    s.stop_checked()

    seg = s.segments(q)
    first, recs, _ = parse_segment(seg[0])
    assert [r.seq for r in recs] == [1, 2, 3]
    raw = bytearray(seg[0].read_bytes())
    raw[recs[1].offset + 4] ^= 0x01           # record 2: header CRC broken
    seg[0].write_bytes(bytes(raw))

    s.start()
    c = s.connect()
    corrupt = int(c.stats().get("corrupt_records", 1))
    c.store(q, b"X-after")
    ids = [it.cas for it in c.get_items(q + "/n=1000", cmd="gets")]
    c.close()
    assert ids[-1] == 4, "the set after recovery got id %d (ids %r)" % (
        ids[-1], ids)
    assert corrupt == 1, "one damaged record counted as %d" % corrupt


# ------------------------------------------------------------------ 7

def test_review_interval_burst_of_journal_switches_keeps_writes(
        memqd_factory):
    """journal.c: under --sync interval a full journal file kept its
    descriptor until the next interval commit, and a checkpoint removed
    no file whose descriptor was open: a burst that filled 64 files within
    one interval made switch_file() fail and the node refuse every write
    until a restart.  A checkpoint now closes full files the commit thread
    never borrowed."""
    s = memqd_factory(args=["--sync", "interval=10000",
                            "--journal-size", "64k"])
    q = qname("burst")
    c = s.connect()
    body = b"b" * 60000
    for i in range(90):
        r = c.set(q, body)
        assert r == "STORED", "set %d: %r" % (i, r)
    assert len(_drain(c, q)) == 90
    c.close()


# ------------------------------------------------------------------ 8

def test_review_checkpoint_does_not_spin_while_commit_pending(
        memqd_factory):
    """journal.c: when a checkpoint finished while a full file's commit
    was pending, a new checkpoint was asked for at once, again and again:
    thousands of whole-file-system syncfs calls a second on an idle node
    until the interval commit.  Counted with strace."""
    s = memqd_factory(args=["--sync", "interval=3000",
                            "--journal-size", "64k"])
    q = qname("spin")
    c = s.connect()
    for i in range(3):
        assert c.set(q, b"s" * 60000) == "STORED"
    out = s.tmp / "strace.out"
    tr = subprocess.Popen(["strace", "-f", "-e", "trace=syncfs", "-o",
                           str(out), "-p", str(s.proc.pid)],
                          stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.exists(), what="strace attached")
        time.sleep(1.5)     # the window observed, not a wait for a state
    finally:
        tr.terminate()
        tr.wait(10)
    calls = out.read_text().count("syncfs(")
    assert calls < 20, "%d syncfs calls in 1.5 s on an idle node" % calls
    c.close()


# ------------------------------------------------------------------ 9

def test_review_deleted_queue_buffers_leave_the_write_budget(memqd_factory):
    """queue.c queue_free() freed a queue's write buffer without taking its
    bytes off the total: deleting queues with unwritten data pushed the
    total past the 8 MiB budget for good, and from then on every loop
    iteration wrote every queue file.  Counted with strace: 100 sets to
    one queue must not cost anywhere near 100 queue-file writes."""
    s = memqd_factory(args=["--sync", "none"])
    c = s.connect()
    doomed = [qname("dq") for _ in range(200)]
    blob = b"d" * 60000
    c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (d.encode(), len(blob),
                                                   blob) for d in doomed))
    for _ in doomed:
        assert c.line() == "STORED"
    c.send(b"".join(b"delete %s\r\n" % d.encode() for d in doomed))
    for _ in doomed:
        assert c.line() == "DELETED"

    q = qname("after")
    out = s.tmp / "strace.out"
    tr = subprocess.Popen(["strace", "-f", "-e", "trace=pwrite64", "-o",
                           str(out), "-p", str(s.proc.pid)],
                          stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.exists(), what="strace attached")
        for i in range(100):
            assert c.set(q, b"x%03d" % i) == "STORED"
    finally:
        tr.terminate()
        tr.wait(10)
    # one journal write per set at most, and a few queue-file writes
    writes = out.read_text().count("pwrite64(")
    assert writes < 160, "%d writes for 100 one-at-a-time sets" % writes
    c.close()
