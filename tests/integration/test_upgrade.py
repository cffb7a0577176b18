"""Upgrade: a data directory written by the first storage format (segment
version 1: 40-byte record headers without a magic, position file v1/v2) is
read in place by this memqd; new records go to version 2 segments after
the old ones, numbered after them (issue 7, "Upgrade")."""

import struct

from memqlib import SEG_MAGIC, crc32c, parse_segment, qname

V1_MAGIC = b"MQSEG\x00\x00\x01"


def _v1_record(seq, payload, flags=0, ctime=1_700_000_000_000, exptime=0):
    body = struct.pack("<IIIQQq", len(payload), flags, 1, seq, ctime,
                       exptime) + payload
    return struct.pack("<I", crc32c(body)) + body


def _write_v1_segment(path, first, payloads, flags0=500):
    raw = V1_MAGIC + struct.pack("<Q", first)
    for i, p in enumerate(payloads):
        raw += _v1_record(first + i, p, flags=flags0 + i)
    path.write_bytes(raw)


def _pos_v1(seq):
    b = b"MQPOS\x00\x00\x01" + struct.pack("<Q", seq)
    return b + struct.pack("<I", crc32c(b))


def _old_dir(data, q, n_first=30, n_second=20):
    """Two v1 segments of q: ids 1..n_first and n_first+1.. n_first+n_second.
    Returns the payloads in order."""
    qd = data / q
    qd.mkdir(parents=True)
    first = [b"old-a-%03d|" % i * (1 + i % 7) for i in range(n_first)]
    second = [b"old-b-%03d|" % i * (1 + i % 5) for i in range(n_second)]
    _write_v1_segment(qd / ("%020d.seg" % 1), 1, first)
    _write_v1_segment(qd / ("%020d.seg" % (n_first + 1)), n_first + 1,
                      second, flags0=500 + n_first)
    return first + second


def test_old_format_read_in_place(memqd_factory, tmp_path):
    data = tmp_path / "olddata"
    q = qname("up")
    payloads = _old_dir(data, q)
    before = {p.name: p.read_bytes() for p in (data / q).iterdir()}

    s = memqd_factory(data_dir=data)
    c = s.connect()
    st = c.stats()
    assert int(st["queue_%s_items" % q]) == len(payloads)

    # everything, in order, with flags and ids kept
    got = c.get_items(q + "/open/n=1000", cmd="gets")
    assert [i.data for i in got] == payloads
    assert [i.flags for i in got] == [500 + i for i in range(len(payloads))]
    assert [i.cas for i in got] == list(range(1, len(payloads) + 1))
    assert c.get_items(q + "/abort") == []

    # reading changed no byte of the old files
    for name, raw in before.items():
        assert (data / q / name).read_bytes() == raw, name

    # new sets go to a version 2 segment, numbered after the old items
    c.store(q, b"new-1")
    c.store(q, b"new-2")
    c.close()
    s.stop_checked()

    segs = sorted((data / q).glob("*.seg"))
    newest = segs[-1]
    assert newest.read_bytes()[:8] == SEG_MAGIC, "new records in a v1 file"
    first, recs, _ = parse_segment(newest)
    assert first == len(payloads) + 1
    assert [r.payload for r in recs] == [b"new-1", b"new-2"]

    # a second start reads both formats side by side
    s.start()
    c = s.connect()
    got = c.get_items(q + "/n=1000", cmd="gets")
    assert [i.data for i in got] == payloads + [b"new-1", b"new-2"]
    assert [i.cas for i in got] == list(range(1, len(payloads) + 3))
    c.close()


def test_old_position_file_honoured(memqd_factory, tmp_path):
    data = tmp_path / "olddata"
    q = qname("up")
    payloads = _old_dir(data, q)
    # the old node had consumed the first 35 items
    (data / q / "position").write_bytes(_pos_v1(36))

    s = memqd_factory(data_dir=data)
    c = s.connect()
    got = c.get_items(q + "/n=1000", cmd="gets")
    assert [i.data for i in got] == payloads[35:]
    assert [i.cas for i in got] == list(range(36, len(payloads) + 1))
    c.store(q, b"after")
    assert c.getdata(q) == b"after"
    c.close()
    s.stop_checked()

    # the old segments, fully consumed, are gone after the restart settles
    s.start()
    c = s.connect()
    assert c.get_items(q) == []
    c.close()


def test_damage_in_old_format_costs_the_rest_of_that_file_only(
        memqd_factory, tmp_path):
    data = tmp_path / "olddata"
    q = qname("up")
    payloads = _old_dir(data, q)
    seg = data / q / ("%020d.seg" % 1)
    raw = bytearray(seg.read_bytes())
    # flip a payload byte of the 11th record of the first (v1) segment
    off = 16
    for i in range(10):
        off += 40 + len(payloads[i])
    raw[off + 40 + 2] ^= 0x5A
    seg.write_bytes(bytes(raw))

    s = memqd_factory(data_dir=data)
    c = s.connect()
    got = [i.data for i in c.get_items(q + "/n=1000")]
    # v1 records have no magic to find the next one by: the rest of that
    # file is lost, the second file is whole
    assert got == payloads[:10] + payloads[30:]
    st = c.stats()
    assert int(st["corrupt_records"]) == 20
    c.close()
    assert "%020d.seg" % 1 in s.log_text()
