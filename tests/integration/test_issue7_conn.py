"""Issue 7, connection side: absurd byte counts, accept errors under a
descriptor limit, flush_all <delay>."""

import os
import resource
import signal
import socket
import threading
import time

import pytest

from memqlib import (SLOW, Client, Closed, qname, wait_for)


# ------------------------------------------------- absurd byte counts

STORAGE_LINES = {
    "set": "set {q} 0 0 {n}",
    "add": "add {q} 0 0 {n}",
    "replace": "replace {q} 0 0 {n}",
    "append": "append {q} 0 0 {n}",
    "prepend": "prepend {q} 0 0 {n}",
    "cas": "cas {q} 0 0 {n} 1",
}

ABSURD_COUNTS = [
    "2147483648",                   # 2^31: the first count refused
    "4294967296000",                # used to hang the connection for ever
    "18446744073709551614",         # bytes + 2 wrapped to 0
    "18446744073709551615",         # bytes + 2 wrapped to 1
    "18446744073709551616",         # does not parse
]


@pytest.mark.parametrize("count", ABSURD_COUNTS)
@pytest.mark.parametrize("cmd", sorted(STORAGE_LINES))
def test_issue7_absurd_byte_count_closes(server, cmd, count):
    """A byte count over 2^31 - 1: CLIENT_ERROR bad command line format at
    once, then the connection is closed (framing is lost); nothing of what
    follows is executed or stored."""
    q = qname()
    c = Client(server.addr)
    try:
        c.send(STORAGE_LINES[cmd].format(q=q, n=count) + "\r\n"
               + "set %s 0 0 5\r\nhello\r\n" % q)
        assert c.line(timeout=5) == "CLIENT_ERROR bad command line format"
        assert c.wait_closed(5), "connection left open after %s %s" % (
            cmd, count)
        assert bytes(c.buf) == b"", "more replies after the error: %r" % (
            bytes(c.buf),)
    finally:
        c.close()
    probe = Client(server.addr)
    try:
        assert probe.get(q) is None, "a set after the bad line was run"
    finally:
        probe.close()


@pytest.mark.parametrize("cmd", ["set", "add", "cas"])
def test_issue7_byte_count_at_the_limit_is_swallowed(server, cmd):
    """2^31 - 1 is still a count the connection stays in sync with: every
    byte of the block is swallowed, then the error reply, and the next
    command on the same connection is answered."""
    q = qname()
    n = 2 ** 31 - 1
    c = Client(server.addr, timeout=60)
    try:
        c.send(STORAGE_LINES[cmd].format(q=q, n=n) + "\r\n")
        chunk = b"\0" * (1 << 20)
        left = n
        while left > 0:
            k = min(left, len(chunk))
            c.sock.sendall(chunk[:k])
            left -= k
        c.send(b"\r\nversion\r\n")
        r = c.line(timeout=60)
        if cmd == "set":
            assert r == "SERVER_ERROR object too large for cache", r
        else:
            assert r == "SERVER_ERROR not supported", r
        assert c.line(timeout=10).startswith("VERSION memqd ")
        assert c.get(q) is None
    finally:
        c.close()


# ------------------------------------------------- accept errors

def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 here
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answers(c, timeout):
    """True if `version` on c is answered within timeout seconds."""
    try:
        c.send("version\r\n")
        return c.line(timeout=timeout / SLOW).startswith("VERSION memqd ")
    except (socket.timeout, Closed, OSError):
        return False


def test_issue7_accept_errors_back_off(memqd_factory):
    """Under a descriptor limit, accept fails with EMFILE while clients
    keep waiting in the backlog: memqd must not spin on the listener, must
    log the failure at most about once a second, and must accept the
    waiting clients once descriptors are free again."""
    s = memqd_factory()
    pid = s.proc.pid
    nfd = len(os.listdir("/proc/%d/fd" % pid))
    limit = nfd + 4
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, old[1]))

    extra = []
    stuck = None
    try:
        for _ in range(20):
            c = Client(s.addr, timeout=5)
            if not _answers(c, 0.5):
                stuck = c
                break
            extra.append(c)
        assert stuck is not None, "accept never failed under a limit of %d" \
            " descriptors" % limit
        assert len(extra) >= 1

        # a few more wait in the backlog as well
        waiting = [Client(s.addr, timeout=5) for _ in range(3)]

        log_before = s.log_since_start()
        cpu0 = _cpu_seconds(pid)
        t0 = time.monotonic()
        time.sleep(2.0)
        spent = _cpu_seconds(pid) - cpu0
        wall = time.monotonic() - t0
        assert spent < 0.5, "memqd used %.2fs of CPU in %.2fs while accept" \
            " failed" % (spent, wall)
        new_log = s.log_since_start()[len(log_before):]
        accept_lines = [ln for ln in new_log.splitlines() if "accept" in ln]
        assert len(accept_lines) <= 4, "%d accept lines in %.1fs:\n%s" % (
            len(accept_lines), wall, "\n".join(accept_lines[:10]))
        assert any("accept" in ln for ln in s.log_since_start().splitlines()
                   ), "the accept failure was not logged"

        # free descriptors: the clients in the backlog are served
        for c in extra:
            c.close()
        extra = []
        assert stuck.line(timeout=5).startswith("VERSION memqd "), \
            "the client stuck in the backlog was not served"
        for c in waiting:
            assert _answers(c, 5), "a waiting client was not served"
            c.close()
        stuck.close()
        stuck = None
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        fresh = Client(s.addr)
        assert _answers(fresh, 5)
        fresh.close()
    finally:
        for c in extra:
            c.close()
        if stuck is not None:
            stuck.close()


# ------------------------------------------------- flush_all <delay>

def _peek(c, q):
    it = c.get(q + "/peek")
    return None if it is None else it.data


def test_issue7_flush_all_delay(server, client):
    if server.external:
        pytest.skip("flush_all would empty a shared server")
    q1, q2 = qname(), qname()
    client.store(q1, b"a")
    client.store(q2, b"b")
    t0 = time.monotonic()
    assert client.cmd("flush_all 2") == "OK"
    # not yet: the delay has not passed
    assert _peek(client, q1) == b"a"
    assert _peek(client, q2) == b"b"
    client.store(q1, b"a2")             # stored before the flush time
    if time.monotonic() - t0 < 1.5:
        assert client.qstats(q1)["items"] == 2
    wait_for(lambda: client.qstats(q1)["items"] == 0
             and client.qstats(q2)["items"] == 0,
             timeout=6, what="flush_all 2 to empty the queues")
    assert time.monotonic() - t0 >= 1.9, "flushed before its delay"
    # the queues go on
    client.store(q1, b"after")
    assert client.getdata(q1) == b"after"


def test_issue7_flush_all_later_one_replaces_pending(server, client):
    if server.external:
        pytest.skip("flush_all would empty a shared server")
    q = qname()
    client.store(q, b"x")
    t0 = time.monotonic()
    assert client.cmd("flush_all 1") == "OK"
    assert client.cmd("flush_all 100") == "OK"  # replaces the 1 s one
    time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
    assert _peek(client, q) == b"x", "the replaced flush_all ran"

    # flush_all (now) empties at once and cancels the pending one
    assert client.cmd("flush_all") == "OK"
    assert client.get(q) is None
    t1 = time.monotonic()
    client.store(q, b"y")
    assert client.cmd("flush_all 1 noreply\r\nversion").startswith(
        "VERSION memqd ")
    assert client.cmd("flush_all 0") == "OK"    # replaces it, flushes now
    assert client.get(q) is None
    client.store(q, b"z")
    time.sleep(max(0.0, t1 + 1.5 - time.monotonic()))
    assert _peek(client, q) == b"z", "a replaced flush_all ran"

    # the last of several delays wins
    assert client.cmd("flush_all 100") == "OK"
    assert client.cmd("flush_all 1") == "OK"
    wait_for(lambda: client.qstats(q)["items"] == 0, timeout=5,
             what="flush_all 1 after flush_all 100")
