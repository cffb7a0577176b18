"""Recovery of damaged segment files: the damaged tail of the newest
segment is truncated at the first bad record, every record before it is
kept, the log says what was dropped, and new sets go after the old items
(DESIGN §1 Storage, §3 log lines; common/mq_frame.h)."""

import re

import pytest

from memqlib import REC_HDR, parse_segment, qname

N = 20


def _payload(i):
    return (b"rec%03d|" % i) * (20 + i * 3)


def _prepare(memqd_factory, args=(), consumed=0, n=N):
    s = memqd_factory(args=list(args))
    c = s.connect()
    q = qname("rec")
    for i in range(n):
        c.store(q, _payload(i), flags=1000 + i)
    for i in range(consumed):
        assert c.getdata(q) == _payload(i)
    c.close()
    s.stop_checked()
    seg = s.segments(q)[-1]
    first, recs, tail = parse_segment(seg)
    assert tail == seg.stat().st_size or \
        seg.read_bytes()[tail:].strip(b"\0") == b"", "segment not clean"
    return s, q, seg, recs


def _flip(path, off):
    b = bytearray(path.read_bytes())
    b[off] ^= 0x5A
    path.write_bytes(bytes(b))


def _restart_and_check(s, q, kept, consumed=0, after=()):
    """Restarts, checks that q holds items consumed..kept-1 and then the
    items named in `after` (set after an earlier recovery), sets two more
    that must come last, and leaves the queue as it was plus those two
    (everything is read with /open and given back with /abort).  Returns
    the log of this start."""
    s.start()
    c = s.connect()
    got = c.get_items(q + "/open/n=1000", cmd="gets")
    old = [i for i in got if not i.data.startswith(b"after-")]
    assert [i.data for i in old] == [_payload(i) for i in range(consumed,
                                                                kept)], \
        "expected items %d..%d, got %d items" % (consumed, kept - 1, len(old))
    assert [i.flags for i in old] == [1000 + i for i in range(consumed, kept)]
    assert [i.cas for i in old] == list(range(consumed + 1, kept + 1))
    assert [i.data for i in got[len(old):]] == list(after)
    assert c.get_items(q + "/abort") == []
    # new sets go after the old items, numbered after them
    tag = b"after-%d-" % len(after)
    c.store(q, tag + b"1")
    c.store(q, tag + b"2")
    allnow = c.get_items(q + "/open/n=1000", cmd="gets")
    assert [i.data for i in allnow] == [i.data for i in got] + \
        [tag + b"1", tag + b"2"]
    cas = [i.cas for i in allnow]
    assert cas == sorted(set(cas)), "sequence numbers not increasing: %r" % cas
    assert c.get_items(q + "/abort") == []
    c.close()
    return s.log_since_start()


def _assert_logged(log, q, seg, off, dropped):
    pat = r"\[warn\] recover: %s/%s:%d: [^\n]*truncated %d bytes" % (
        re.escape(q), re.escape(seg.name), off, dropped)
    assert re.search(pat, log), "no log line matching %r in:\n%s" % (
        pat, log[-3000:])


def _recover_lines(log):
    return [ln for ln in log.splitlines() if "recover:" in ln]


def test_clean_restart_logs_no_truncation(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    log = _restart_and_check(s, q, N)
    assert "truncated" not in log, log


@pytest.mark.parametrize("where", ["payload", "header", "one-byte"])
def test_truncated_in_last_record(memqd_factory, where):
    s, q, seg, recs = _prepare(memqd_factory)
    last = recs[-1]
    cut = {"payload": last.offset + REC_HDR + last.len // 2,
           "header": last.offset + REC_HDR // 2,
           "one-byte": last.offset + 1}[where]
    with open(seg, "r+b") as f:
        f.truncate(cut)
    log = _restart_and_check(s, q, N - 1)
    _assert_logged(log, q, seg, last.offset, cut - last.offset)
    assert seg.exists()


def test_truncated_at_record_boundary(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    with open(seg, "r+b") as f:
        f.truncate(recs[-1].offset)
    _restart_and_check(s, q, N - 1)


@pytest.mark.parametrize("garbage", [b"\xde\xad\xbe\xef" * 14 + b"!",
                                     b"x",
                                     b"set q 0 0 1\r\nx\r\n" * 5,
                                     b"\xff" * 40,
                                     b"\xff" * 4000])
def test_garbage_appended(memqd_factory, garbage):
    s, q, seg, recs = _prepare(memqd_factory)
    end = recs[-1].offset + REC_HDR + recs[-1].len
    with open(seg, "r+b") as f:
        f.truncate(end)                 # drop any zero fill first
        f.seek(end)
        f.write(garbage)
    log = _restart_and_check(s, q, N)
    _assert_logged(log, q, seg, end, len(garbage))


def test_zero_fill_after_last_record(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    end = recs[-1].offset + REC_HDR + recs[-1].len
    with open(seg, "r+b") as f:
        f.truncate(end + 8192)
    _restart_and_check(s, q, N)


@pytest.mark.parametrize("field_off", [0, 4, 8, 12, 16, 24, 32,
                                       REC_HDR, REC_HDR + 5, "end"])
def test_flipped_byte_in_last_record(memqd_factory, field_off):
    s, q, seg, recs = _prepare(memqd_factory)
    last = recs[-1]
    size = REC_HDR + last.len
    off = last.offset + (size - 1 if field_off == "end" else field_off)
    _flip(seg, off)
    dropped = seg.stat().st_size - last.offset
    log = _restart_and_check(s, q, N - 1)
    _assert_logged(log, q, seg, last.offset, dropped)


def test_flipped_byte_in_middle_record_drops_the_rest(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    bad = recs[12]
    _flip(seg, bad.offset + REC_HDR + 3)
    dropped = seg.stat().st_size - bad.offset
    log = _restart_and_check(s, q, 12)
    _assert_logged(log, q, seg, bad.offset, dropped)


def test_damage_after_consumption(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory, consumed=5)
    _flip(seg, recs[-1].offset + REC_HDR + 1)
    log = _restart_and_check(s, q, N - 1, consumed=5)
    assert _recover_lines(log)


def test_damage_in_newest_of_several_segments(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory, args=["--segment-size", "64k"],
                               n=300)
    segs = s.segments(q)
    assert len(segs) >= 2, "expected several segments, got %r" % segs
    assert recs[-1].seq == 300
    _flip(seg, recs[-1].offset + REC_HDR + 2)
    dropped = seg.stat().st_size - recs[-1].offset
    log = _restart_and_check(s, q, 299)
    _assert_logged(log, q, seg, recs[-1].offset, dropped)
    assert all(p.exists() for p in segs[:-1]), "an intact segment vanished"


def test_repeated_damage_and_recovery(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    _flip(seg, recs[-1].offset + REC_HDR)
    log = _restart_and_check(s, q, N - 1)
    assert _recover_lines(log)
    # the items written after recovery are recovered in turn
    s.stop_checked()
    newest = s.segments(q)[-1]
    first, recs2, tail = parse_segment(newest)
    seqs = [r.seq for r in recs2]
    assert seqs == list(range(first, first + len(seqs))), \
        "sequence numbers on disk not consecutive: %r" % seqs
    with open(newest, "r+b") as f:
        f.truncate(tail)
        f.seek(tail)
        f.write(b"\x01" * 33)
    log = _restart_and_check(s, q, N - 1, after=(b"after-0-1", b"after-0-2"))
    _assert_logged(log, q, newest, tail, 33)


def test_corrupt_record_in_older_segment_is_reported(memqd_factory):
    """Damage before the newest segment is not a torn tail: it must be
    reported (not silently truncated away), the server must not crash, and
    whatever it still delivers is intact and in order."""
    s, q, seg, recs = _prepare(memqd_factory, args=["--segment-size", "64k"],
                               n=300)
    segs = s.segments(q)
    assert len(segs) >= 3
    old = segs[0]
    first, orecs, _ = parse_segment(old)
    bad = orecs[len(orecs) // 2]
    _flip(old, bad.offset + REC_HDR + 1)
    s.spawn()
    try:
        s.wait_ready()
        started = True
    except AssertionError:
        started = False
    log = s.log_since_start()
    lines = [ln for ln in log.splitlines()
             if old.name in ln and ("[error]" in ln or "[warn]" in ln)]
    assert lines, "damage in %s/%s not reported; log:\n%s" % (
        q, old.name, log[-2000:])
    if started:
        c = s.connect()
        got = c.get_items(q + "/open/n=1000")
        c.get_items(q + "/abort")
        c.close()
        datas = [i.data for i in got]
        assert _payload(bad.seq - 1) not in datas, \
            "the corrupt record was delivered"
        want = [_payload(i) for i in range(300)]
        pos = [want.index(d) for d in datas]
        assert pos == sorted(pos), "delivered out of order"
    else:
        s.proc = None


@pytest.mark.parametrize("content", [b"", b"MQSEG", b"MQSEG\x00\x00\x01\x15"])
def test_torn_new_segment_file(memqd_factory, content):
    """A crash right after a new segment file was created leaves it empty
    or with half a header: recovery must cope, keep every record of the
    older segments and go on appending."""
    s, q, seg, recs = _prepare(memqd_factory)
    nxt = seg.parent / ("%020d.seg" % (N + 1))
    nxt.write_bytes(content)
    _restart_and_check(s, q, N)
    assert s.running()


def test_leftover_position_tmp(memqd_factory):
    """A crash between writing position.tmp and renaming it leaves the
    temporary file behind: it is not the position, and it does not stop
    the start."""
    s, q, seg, recs = _prepare(memqd_factory, consumed=3)
    (seg.parent / "position.tmp").write_bytes(b"\xff" * 7)
    _restart_and_check(s, q, N, consumed=3)
