"""Recovery of damaged segment files (DESIGN §1 Storage; common/mq_frame.h).

Only a torn tail of the newest segment (no good record after it) is
truncated, logged at warn.  Damage anywhere else costs the damaged records
only: recovery finds the next good record by its magic and header CRC,
logs file, offset and the ids lost at error, counts them in
`STAT corrupt_records`, and delivers every other record in order.  New
sets go after the old items, numbered after the highest id ever written.
"""

import re
import struct

import pytest

from memqlib import (REC_HDR, REC_MAGIC, crc32c, file_mark, header_crc,
                     parse_segment, qname)

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
    assert tail == seg.stat().st_size, "segment not clean after a stop"
    assert [r.seq for r in recs] == list(range(first, first + len(recs)))
    return s, q, seg, recs


def _flip(path, off, mask=0x5A):
    b = bytearray(path.read_bytes())
    b[off] ^= mask
    path.write_bytes(bytes(b))


def _corrupt(c):
    return int(c.stats()["corrupt_records"])


def _restart_and_check(s, q, want, after=(), corrupt=0):
    """Restarts and checks that q holds the items of `want` (indexes into
    _payload, numbered index + 1) in that order, then the items of `after`
    (set after an earlier recovery); that `corrupt` records were counted
    as damaged; that two new sets come last with higher numbers.  Leaves
    the queue as it was plus those two (everything is read with /open and
    given back with /abort).  Returns the log of this start."""
    want = list(want)
    s.start()
    c = s.connect()
    got = c.get_items(q + "/open/n=1000", cmd="gets")
    old = [i for i in got if not i.data.startswith(b"after-")]
    assert [i.data for i in old] == [_payload(i) for i in want], \
        "expected items %r, got ids %r" % ([i + 1 for i in want],
                                           [i.cas for i in old])
    assert [i.flags for i in old] == [1000 + i for i in want]
    assert [i.cas for i in old] == [i + 1 for i in want]
    assert [i.data for i in got[len(old):]] == list(after)
    assert c.get_items(q + "/abort") == []
    assert _corrupt(c) == corrupt, s.log_since_start()[-3000:]
    st = c.qstats(q)
    assert st["items"] == len(got), st
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


def _assert_truncated(log, q, seg, off, dropped):
    pat = r"\[warn\] recover: %s/%s:%d: [^\n]*truncated %d bytes" % (
        re.escape(q), re.escape(seg.name), off, dropped)
    assert re.search(pat, log), "no log line matching %r in:\n%s" % (
        pat, log[-3000:])


def _assert_skipped(log, q, seg, off, skipped, first_id, last_id):
    pat = (r"\[error\] recover: %s/%s:%d: [^\n]*, %d bytes skipped, "
           r"ids %d-%d lost" % (re.escape(q), re.escape(seg.name), off,
                                skipped, first_id, last_id))
    assert re.search(pat, log), "no log line matching %r in:\n%s" % (
        pat, log[-3000:])


def _assert_clean_on_disk(s, q, n):
    """After a clean stop, q's one segment holds records 1..n and nothing
    else: the damage was cut off and the new sets written after it."""
    s.stop_checked()
    segs = s.segments(q)
    assert len(segs) == 1, segs
    first, recs, tail = parse_segment(segs[0])
    assert tail == segs[0].stat().st_size, "damage left in %s" % segs[0]
    assert [r.seq for r in recs] == list(range(1, n + 1))


def _recover_lines(log, level=None):
    return [ln for ln in log.splitlines() if "recover:" in ln and
            (level is None or "[%s]" % level in ln)]


def _size(r):
    return REC_HDR + r.len


def _good_records(path):
    """(offset, seq, len) of every good record of a segment file, found by
    magic and header CRC past any damage, whose payload CRC holds."""
    raw = path.read_bytes()
    mark = file_mark(raw)
    out = []
    off = raw.find(REC_MAGIC, 16)
    while 0 <= off and off + REC_HDR <= len(raw):
        _, hcrc, ln, _, _, pcrc, seq = struct.unpack_from("<4sIIIIIQ", raw,
                                                          off)
        if header_crc(raw[off:off + REC_HDR], mark) == hcrc and \
                off + REC_HDR + ln <= len(raw):
            if crc32c(raw[off + REC_HDR:off + REC_HDR + ln]) == pcrc:
                out.append((off, seq, ln))
            off = raw.find(REC_MAGIC, off + REC_HDR + ln)
        else:
            off = raw.find(REC_MAGIC, off + 1)
    return out


def test_clean_restart_logs_no_damage(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    log = _restart_and_check(s, q, range(N))
    assert not _recover_lines(log, "warn"), log
    assert not _recover_lines(log, "error"), log


@pytest.mark.parametrize("where", ["payload", "header", "one-byte"])
def test_truncated_in_last_record(memqd_factory, where):
    s, q, seg, recs = _prepare(memqd_factory)
    last = recs[-1]
    cut = {"payload": last.offset + REC_HDR + last.len // 2,
           "header": last.offset + REC_HDR // 2,
           "one-byte": last.offset + 1}[where]
    with open(seg, "r+b") as f:
        f.truncate(cut)
    log = _restart_and_check(s, q, range(N - 1))
    _assert_truncated(log, q, seg, last.offset, cut - last.offset)
    assert seg.exists()
    assert not _recover_lines(log, "error"), log


def test_truncated_at_record_boundary(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    with open(seg, "r+b") as f:
        f.truncate(recs[-1].offset)
    log = _restart_and_check(s, q, range(N - 1))
    assert not _recover_lines(log, "warn"), log
    assert not _recover_lines(log, "error"), log
    _assert_clean_on_disk(s, q, N + 1)


GARBAGE = {"deadbeef": b"\xde\xad\xbe\xef" * 14 + b"!",
           "one-byte": b"x",
           "text": b"set q 0 0 1\r\nx\r\n" * 5,
           "ff40": b"\xff" * 40,
           "ff4000": b"\xff" * 4000,
           "magic-and-junk": b"MQR2" + b"\x07" * 60,
           "magic-alone": b"MQR2"}


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_garbage_appended(memqd_factory, garbage):
    garbage = GARBAGE[garbage]
    s, q, seg, recs = _prepare(memqd_factory)
    end = recs[-1].offset + _size(recs[-1])
    with open(seg, "ab") as f:
        f.write(garbage)
    log = _restart_and_check(s, q, range(N))
    _assert_truncated(log, q, seg, end, len(garbage))
    _assert_clean_on_disk(s, q, N + 2)


def test_zero_fill_after_last_record(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    end = recs[-1].offset + _size(recs[-1])
    with open(seg, "r+b") as f:
        f.truncate(end + 8192)
    log = _restart_and_check(s, q, range(N))
    assert not _recover_lines(log, "error"), log
    _assert_clean_on_disk(s, q, N + 2)


# offsets in a record: magic, header crc, len, flags, kind, payload crc,
# seq, ctime, exptime, payload, last byte
FIELDS = [0, 4, 8, 12, 16, 20, 24, 32, 40, REC_HDR, REC_HDR + 5, "end"]


def _field_off(r, field):
    return r.offset + (_size(r) - 1 if field == "end" else field)


@pytest.mark.parametrize("field", FIELDS)
def test_flipped_byte_in_last_record_is_a_torn_tail(memqd_factory, field):
    s, q, seg, recs = _prepare(memqd_factory)
    last = recs[-1]
    _flip(seg, _field_off(last, field))
    dropped = seg.stat().st_size - last.offset
    log = _restart_and_check(s, q, range(N - 1))
    _assert_truncated(log, q, seg, last.offset, dropped)
    _assert_clean_on_disk(s, q, N + 1)


@pytest.mark.parametrize("field", FIELDS)
def test_flipped_byte_in_middle_record_costs_that_record(memqd_factory,
                                                          field):
    s, q, seg, recs = _prepare(memqd_factory)
    bad = recs[12]
    _flip(seg, _field_off(bad, field))
    log = _restart_and_check(s, q, [i for i in range(N) if i != 12],
                             corrupt=1)
    _assert_skipped(log, q, seg, bad.offset, _size(bad), bad.seq, bad.seq)
    assert " truncated " not in log, log


def test_several_damaged_records_in_a_row(memqd_factory):
    """Three neighbours damaged (header, payload, header): the three are
    lost, the records around them are not."""
    s, q, seg, recs = _prepare(memqd_factory)
    _flip(seg, recs[5].offset + 9)
    _flip(seg, recs[6].offset + REC_HDR + 2)
    _flip(seg, recs[7].offset + 1)
    log = _restart_and_check(s, q, [i for i in range(N)
                                    if i not in (5, 6, 7)], corrupt=3)
    assert len(_recover_lines(log, "error")) >= 1, log
    assert _lost_ids(log) == {6, 7, 8}, log


def test_damage_after_consumption(memqd_factory):
    """The consumed head stays consumed; damage to an unconsumed middle
    record costs that record, damage to the last one is a torn tail."""
    s, q, seg, recs = _prepare(memqd_factory, consumed=5)
    _flip(seg, recs[10].offset + REC_HDR + 1)
    _flip(seg, recs[-1].offset + REC_HDR + 1)
    log = _restart_and_check(s, q, [i for i in range(5, N - 1) if i != 10],
                             corrupt=1)
    _assert_skipped(log, q, seg, recs[10].offset, _size(recs[10]), 11, 11)
    _assert_truncated(log, q, seg, recs[-1].offset, _size(recs[-1]))


def _lost_ids(log):
    lost = set()
    for m in re.finditer(r"ids (\d+)-(\d+) lost", log):
        lost.update(range(int(m.group(1)), int(m.group(2)) + 1))
    return lost


def test_damage_in_consumed_record(memqd_factory):
    """Damage to a record already consumed costs nothing undelivered: the
    rest comes in order, the queue's count is right, and the log never
    calls a delivered id lost."""
    s, q, seg, recs = _prepare(memqd_factory, consumed=5)
    _flip(seg, recs[2].offset + REC_HDR + 1)
    s.start()
    c = s.connect()
    assert c.qstats(q)["items"] == N - 5
    got = c.get_items(q + "/n=1000", cmd="gets")
    assert [i.cas for i in got] == list(range(6, N + 1))
    assert [i.data for i in got] == [_payload(i) for i in range(5, N)]
    assert c.qstats(q)["items"] == 0
    c.close()
    log = s.log_since_start()
    wrong = _lost_ids(log) & set(range(6, N + 1))
    assert not wrong, "ids %r reported lost but delivered:\n%s" % (
        sorted(wrong), "\n".join(_recover_lines(log)))


def test_damage_in_items_open_at_stop(memqd_factory):
    """Items open when the node stopped come back at the head after the
    restart; two damaged headers among them cost those two items, which
    the log names and the counter counts."""
    s = memqd_factory()
    c = s.connect()
    q = qname("rec")
    for i in range(N):
        c.store(q, _payload(i), flags=1000 + i)
    holder = s.connect()
    assert len(holder.get_items(q + "/open/n=10")) == 10
    s.stop_checked()
    holder.close()
    c.close()
    seg = s.segments(q)[0]
    first, recs, tail = parse_segment(seg)
    assert len(recs) == N
    _flip(seg, recs[4].offset + 9)
    _flip(seg, recs[5].offset + 25)
    log = _restart_and_check(s, q, [i for i in range(N) if i not in (4, 5)],
                             corrupt=2)
    assert _lost_ids(log) == {5, 6}, "\n".join(_recover_lines(log))


def test_damage_in_newest_of_several_segments(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory, args=["--segment-size", "64k"],
                               n=300)
    segs = s.segments(q)
    assert len(segs) >= 2, "expected several segments, got %r" % segs
    assert recs[-1].seq == 300
    _flip(seg, recs[-1].offset + REC_HDR + 2)
    dropped = seg.stat().st_size - recs[-1].offset
    log = _restart_and_check(s, q, range(299))
    _assert_truncated(log, q, seg, recs[-1].offset, dropped)
    assert all(p.exists() for p in segs[:-1]), "an intact segment vanished"


def test_damage_in_older_segment_costs_that_record(memqd_factory):
    """Damage before the newest segment is never a torn tail: the damaged
    record is reported and lost, every other record of that segment and
    of the later ones is delivered in order."""
    s, q, seg, recs = _prepare(memqd_factory, args=["--segment-size", "64k"],
                               n=300)
    segs = s.segments(q)
    assert len(segs) >= 3
    old = segs[0]
    first, orecs, _ = parse_segment(old)
    bad = orecs[len(orecs) // 2]
    _flip(old, bad.offset + REC_HDR + 1)
    log = _restart_and_check(s, q, [i for i in range(300)
                                    if i != bad.seq - 1], corrupt=1)
    _assert_skipped(log, q, old, bad.offset, _size(bad), bad.seq, bad.seq)
    assert " truncated " not in log, log
    assert all(p.exists() for p in segs), "a segment vanished"


def test_damage_at_end_of_older_segment(memqd_factory):
    """The damaged record is the last one of an older segment: no good
    record follows in that file, yet it is not a torn tail; the next file
    says where the ids go on, so exactly one id is lost and counted."""
    s, q, seg, recs = _prepare(memqd_factory, args=["--segment-size", "64k"],
                               n=300)
    segs = s.segments(q)
    assert len(segs) >= 2
    old = segs[0]
    first, orecs, _ = parse_segment(old)
    bad = orecs[-1]
    _flip(old, bad.offset + 12)         # header: the length is unknown
    log = _restart_and_check(s, q, [i for i in range(300)
                                    if i != bad.seq - 1], corrupt=1)
    _assert_skipped(log, q, old, bad.offset, _size(bad), bad.seq, bad.seq)
    assert len(_recover_lines(log, "error")) == 1, log


def test_repeated_damage_and_recovery(memqd_factory):
    s, q, seg, recs = _prepare(memqd_factory)
    _flip(seg, recs[4].offset + REC_HDR)
    want = [i for i in range(N) if i != 4]
    log = _restart_and_check(s, q, want, corrupt=1)
    _assert_skipped(log, q, seg, recs[4].offset, _size(recs[4]), 5, 5)
    # the items written after recovery are recovered in turn, and fresh
    # damage costs one more record
    s.stop_checked()
    newest = s.segments(q)[-1]
    assert newest == seg
    good = _good_records(newest)
    assert [g[1] for g in good] == [i + 1 for i in want] + [N + 1, N + 2], \
        "records on disk: %r" % good
    off, seq, ln = good[9]
    _flip(newest, off + 30)
    tail = newest.stat().st_size
    with open(newest, "ab") as f:
        f.write(b"\x01" * 33)
    want.remove(seq - 1)
    log = _restart_and_check(s, q, want, after=(b"after-0-1", b"after-0-2"),
                             corrupt=2)
    _assert_skipped(log, q, newest, recs[4].offset, _size(recs[4]), 5, 5)
    _assert_skipped(log, q, newest, off, REC_HDR + ln, seq, seq)
    _assert_truncated(log, q, newest, tail, 33)


@pytest.mark.parametrize("content", [b"", b"MQSEG", b"MQSEG\x00\x00\x02\x15"])
def test_torn_new_segment_file(memqd_factory, content):
    """A crash right after a new segment file was created leaves it empty
    or with half a header: recovery removes it, keeps every record of the
    older segments and goes on appending."""
    s, q, seg, recs = _prepare(memqd_factory)
    nxt = seg.parent / ("%020d.seg" % (N + 1))
    nxt.write_bytes(content)
    log = _restart_and_check(s, q, range(N))
    assert s.running()
    assert not _recover_lines(log, "error"), log


def test_leftover_position_tmp(memqd_factory):
    """A crash between writing position.tmp and renaming it leaves the
    temporary file behind: it is not the position, and it does not stop
    the start."""
    s, q, seg, recs = _prepare(memqd_factory, consumed=3)
    (seg.parent / "position.tmp").write_bytes(b"\xff" * 7)
    _restart_and_check(s, q, range(3, N))
