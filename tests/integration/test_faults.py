"""Disk full and fsync failures, provoked through memqd's syscall seam
(MEMQD_FAULT_WRITE_AFTER / MEMQD_FAULT_FSYNC_AFTER): a failure is never
answered with STORED, later sets are refused, and what was STORED before
stays readable and survives a restart."""

import select

from conftest import Closed, qname, wait_for


def _store_until_failure(c, q, limit=200):
    """Sets until a reply is not STORED; returns (stored, last reply)."""
    stored = []
    for i in range(limit):
        data = b"item-%04d" % i
        try:
            r = c.set(q, data)
        except Closed:
            return stored, None
        if r != "STORED":
            return stored, r
        stored.append(data)
    return stored, "STORED"


def test_fsync_failure_stops_acknowledging(memqd_factory):
    s = memqd_factory(args=["--sync", "always"],
                      env={"MEMQD_FAULT_FSYNC_AFTER": "6"})
    c = s.connect()
    q = qname()
    stored, last = _store_until_failure(c, q)
    # the failing fsync must not be acknowledged: the connection whose
    # STORED waited for it is closed, or the set is refused
    assert last != "STORED", "every set acknowledged despite fsync errors"
    assert last is None or last.startswith("SERVER_ERROR"), last
    assert len(stored) >= 1

    # later sets are refused on a fresh connection
    c2 = s.connect()
    r = c2.set(q, b"after")
    assert r.startswith("SERVER_ERROR"), r
    wait_for(lambda: "[error] sync: fdatasync" in s.log_text(),
             what="fsync error logged")

    # what was STORED is still there, in order
    got = [i.data for i in c2.drain(q)]
    assert got[:len(stored)] == stored
    c2.close()


def test_disk_full_refuses_sets_and_keeps_stored(memqd_factory):
    s = memqd_factory(args=["--sync", "always"],
                      env={"MEMQD_FAULT_WRITE_AFTER": "8"})
    c = s.connect()
    q = qname()
    stored, last = _store_until_failure(c, q)
    assert last != "STORED"
    assert last is None or last.startswith("SERVER_ERROR"), last

    c2 = s.connect()
    assert c2.set(q, b"more").startswith("SERVER_ERROR")
    assert "[error]" in s.log_text()
    c2.close()

    # every STORED item survives a restart (without the fault)
    s.stop()
    s.extra_env = {}
    s.start()
    c3 = s.connect()
    got = [i.data for i in c3.drain(q)]
    assert got[:len(stored)] == stored
    assert c3.set(q, b"healthy") == "STORED"
    c3.close()


def test_slow_disk_stalls_the_writer_not_other_clients(memqd_factory):
    """A lone writer's commit may be made in the loop (no hand-over to the
    commit thread), but only after a quick one: once an fdatasync has been
    slow, commits go to the thread and the loop keeps answering others."""
    s = memqd_factory(args=["--sync", "always"],
                      env={"MEMQD_FAULT_FSYNC_DELAY_MS": "2000"})
    a = s.connect(timeout=30)
    b = s.connect(timeout=30)
    q = qname()
    # the first commit (a new journal file: fsync, not delayed) is quick;
    # the second meets the slow disk; from then on the thread commits
    assert a.set(q, b"one", timeout=30) == "STORED"
    assert a.set(q, b"two", timeout=30) == "STORED"
    for data in (b"three", b"four"):
        a.send(b"set %s 0 0 %d\r\n%s\r\n" % (q.encode(), len(data), data))
        assert b.cmd("version").startswith("VERSION")
        r, _, _ = select.select([a.sock], [], [], 0)
        assert not r, "the writer was answered before the other client"
        assert a.line(timeout=30) == "STORED"
    assert [i.data for i in b.drain(q)] == [b"one", b"two", b"three",
                                           b"four"]
