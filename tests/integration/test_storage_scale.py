"""Descriptors and memory do not grow with the number of queues (issue 7,
"Scale"; DESIGN §1 Storage): ten thousand queues of one item each under
the default 1024-descriptor limit and 64 MiB RSS, a thousand under a
limit of 256, and a restart of the ten thousand.

The limit is set on the process before it starts (prlimit), with
CAP_SYS_RESOURCE out of its bounding set so that memqd cannot raise it;
each test checks /proc/<pid>/limits to be sure.  Sets and gets are
pipelined on one connection."""

import os
import threading
import time

import pytest

from memqlib import EXTERNAL, SANITIZED, SLOW, Memqd, pipeline, wait_for


def _limited(s, nofile):
    """Makes s start under RLIMIT_NOFILE = nofile (soft and hard)."""
    base = Memqd.argv

    def argv():
        return ["setpriv", "--bounding-set", "-sys_resource", "prlimit",
                "--nofile=%d:%d" % (nofile, nofile), "--"] + base(s)

    s.argv = argv
    return s


def _nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3]), int(line.split()[4])
    raise AssertionError("no open files limit for %d" % pid)


def _vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def _nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _names(n):
    return ["sc%05d" % i for i in range(n)]


def _item(q):
    return b"item of %s" % q.encode()


def _set_all(c, names):
    """Pipelined sets, one item per queue; every reply must be STORED.
    Returns the time they took."""
    data = b"".join(b"set %s 7 0 %d\r\n%s\r\n" % (q.encode(), len(_item(q)),
                                                  _item(q)) for q in names)
    err = []

    def sender():
        try:
            c.sock.sendall(data)
        except OSError as e:
            err.append(e)

    t0 = time.monotonic()
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    bad = []
    for i, q in enumerate(names):
        try:
            line = c.line(timeout=10)
        except (OSError, ConnectionError) as e:
            raise AssertionError("%d of %d sets answered, then %r; not "
                                 "STORED: %d, first %r" % (
                                     i, len(names), e, len(bad),
                                     bad[:1]))
        if line != "STORED":
            bad.append((q, line))
    took = time.monotonic() - t0
    t.join(10 * SLOW)
    assert not err, err
    assert not bad, "%d of %d sets not STORED, first %r" % (
        len(bad), len(names), bad[0])
    return took


def _expect_values(names, opts=""):
    return b"".join(b"VALUE %s%s 7 %d\r\n%s\r\nEND\r\n"
                    % (q.encode(), opts.encode(), len(_item(q)), _item(q))
                    for q in names)


def _read_all(c, names, opts=""):
    """Reads one item of every queue (pipelined gets) and checks them."""
    want = _expect_values(names, opts)
    data = b"".join(b"get %s%s\r\n" % (q.encode(), opts.encode())
                    for q in names)
    reply = pipeline(c, data, len(want), timeout=60)
    if reply != want:
        for i, (a, b) in enumerate(zip(reply, want)):
            if a != b:
                break
        raise AssertionError("replies differ at byte %d: got %r, want %r"
                             % (i, reply[i - 60:i + 60], want[i - 60:i + 60]))


def _timed_stats(c, s):
    t0 = time.monotonic()
    st = c.stats(timeout=30)
    took = time.monotonic() - t0
    print("stats with %s queues: %.3f s" % (st["curr_items"], took))
    assert took < 10 * SLOW, "stats took %.1f s" % took
    return st


def _check_footprint(s, what):
    pid = s.proc.pid
    rss, fds = _vmrss_kib(pid), _nfds(pid)
    print("%s: VmRSS %d KiB, %d descriptors" % (what, rss, fds))
    assert fds < 400, "%s: %d open descriptors" % (what, fds)
    if not SANITIZED:
        assert rss < 64 * 1024, "%s: VmRSS %d KiB" % (what, rss)


@pytest.fixture(scope="module")
def ten_thousand(tmp_path_factory):
    """One memqd under a 1024-descriptor limit with 10,000 queues of one
    item each; the time the sets took."""
    if EXTERNAL:
        pytest.skip("needs its own memqd (MEMQD_ADDR is set)")
    s = _limited(Memqd(tmp_path_factory.mktemp("scale10k")), 1024)
    s.start(timeout=30)
    assert _nofile(s.proc.pid) == (1024, 1024)
    names = _names(10000)
    c = s.connect(timeout=60)
    took = _set_all(c, names)
    print("10,000 sets on 10,000 queues: %.2f s" % took)
    c.close()
    yield s, names
    if s.proc is not None:
        s.stop_checked()
    s.check_stdout_empty()


def test_issue7_ten_thousand_queues(ten_thousand):
    s, names = ten_thousand
    c = s.connect(timeout=60)
    st = _timed_stats(c, s)
    assert int(st["curr_items"]) == 10000
    for q in names[::997]:
        assert st["queue_%s_items" % q] == "1"
    _check_footprint(s, "10,000 queues")
    # every item is there (peeked, so it stays)
    _read_all(c, names, "/peek")
    _check_footprint(s, "10,000 queues read")
    assert _nofile(s.proc.pid) == (1024, 1024)
    assert "refusing" not in s.log_since_start()
    c.close()


def test_issue7_ten_thousand_queues_restart(ten_thousand):
    s, names = ten_thousand
    s.stop_checked(timeout=30)
    t0 = time.monotonic()
    s.start(timeout=60)
    print("restart with 10,000 queues: %.2f s" % (time.monotonic() - t0))
    assert _nofile(s.proc.pid) == (1024, 1024)
    c = s.connect(timeout=60)
    st = _timed_stats(c, s)
    assert int(st["curr_items"]) == 10000
    _check_footprint(s, "10,000 queues after a restart")
    _read_all(c, names)
    st = c.stats(timeout=30)
    assert int(st["curr_items"]) == 0
    assert int(st["corrupt_records"]) == 0
    c.close()


def test_issue7_thousand_queues_under_256_descriptors(memqd_factory):
    s = _limited(memqd_factory(wait=False), 256)
    s.start(timeout=30)
    assert _nofile(s.proc.pid) == (256, 256)
    names = _names(1000)
    c = s.connect(timeout=60)
    took = _set_all(c, names)
    print("1,000 sets on 1,000 queues under 256 descriptors: %.2f s" % took)
    assert _nfds(s.proc.pid) < 256
    _read_all(c, names, "/peek")
    _read_all(c, names)
    st = c.stats(timeout=30)
    assert int(st["curr_items"]) == 0
    # and again, after the queues were read once
    _set_all(c, names)
    wait_for(lambda: _nfds(s.proc.pid) < 256, what="descriptors < 256")
    c.close()
    s.restart(timeout=30)
    c = s.connect(timeout=60)
    _read_all(c, names)
    c.close()
