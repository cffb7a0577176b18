"""Durability failures under load (issue 7, "Every durability failure is a
failure"): running out of descriptors while sets are in flight fails those
requests, not the node; an fsync failure racing a batch never lets a STORED
out for it; whatever was STORED is there after a crash."""

import os
import signal
import socket
import subprocess
import threading

from memqlib import qname, wait_for


def _fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _replies(sock, n, timeout=30):
    """Reads n one-line replies."""
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\r\n") < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    lines = buf.decode().split("\r\n")
    return [ln for ln in lines[:n] if ln]


def test_descriptor_exhaustion_fails_requests_not_the_node(memqd_factory):
    s = memqd_factory()
    pid = s.proc.pid
    c = s.connect()
    c.store(qname("warm"), b"x")

    limit = _fd_count(pid) + 24
    subprocess.run(["prlimit", "--pid", str(pid),
                    "--nofile=%d:%d" % (limit, limit)], check=True)

    # clients take every descriptor memqd has left
    hogs = []
    while _fd_count(pid) < limit:
        hogs.append(socket.create_connection((s.host, s.port)))
        n = len(hogs)
        wait_for(lambda: _fd_count(pid) >= limit or len(hogs) > n - 1,
                 what="connection accepted")
        if len(hogs) > 200:
            break
    wait_for(lambda: _fd_count(pid) >= limit - 1, what="descriptors used up")

    # a pipelined batch of sets to queues that need new files
    queues = [qname("fd%02d" % i) for i in range(40)]
    batch = b"".join(b"set %s 0 0 5\r\nv-%03d\r\n" % (q.encode(), i)
                     for i, q in enumerate(queues))
    c.sock.sendall(batch)
    replies = _replies(c.sock, len(queues))
    assert len(replies) == len(queues), replies
    for r in replies:
        assert r in ("STORED", "SERVER_ERROR out of resources"), replies
    assert "SERVER_ERROR out of resources" in replies, \
        "no set met the descriptor shortage: %r" % replies
    stored = [q for q, r in zip(queues, replies) if r == "STORED"]

    # the node goes on: existing queues still work, stats answers
    assert int(c.stats()["curr_items"]) >= 1 + len(stored)
    for h in hogs:
        h.close()
    wait_for(lambda: _fd_count(pid) < limit - 16, what="descriptors back")

    # with descriptors back, the failed ones can be set now
    for i, (q, r) in enumerate(zip(queues, replies)):
        if r != "STORED":
            assert c.set(q, b"v-%03d" % i) == "STORED"
    c.close()

    # everything STORED is there after a crash
    os.kill(pid, signal.SIGKILL)
    s.proc.wait()
    s.start()
    c = s.connect()
    for i, q in enumerate(queues):
        assert c.getdata(q) == b"v-%03d" % i, q
    c.close()


def test_fsync_failure_racing_a_batch(memqd_factory):
    s = memqd_factory(args=["--sync", "always"],
                      env={"MEMQD_FAULT_FSYNC_AFTER": "40"})
    q = qname("race")
    results = {}

    def writer(w):
        sock = socket.create_connection((s.host, s.port))
        got = []
        try:
            for k in range(200):
                data = b"w%d-%04d" % (w, k)
                sock.sendall(b"set %s.%d 0 0 %d\r\n%s\r\n" % (
                    q.encode(), w, len(data), data))
                r = _replies(sock, 1, timeout=10)
                got.append((data, r[0] if r else None))
                if not r or r[0] != "STORED":
                    # after a failure, nothing is STORED on any connection
                    sock.sendall(b"set %s.%d 0 0 1\r\nz\r\n" % (q.encode(),
                                                                w))
                    r2 = _replies(sock, 1, timeout=10)
                    got.append((b"z", r2[0] if r2 else None))
                    break
        except OSError:
            got.append((None, None))
        finally:
            sock.close()
        results[w] = got

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8

    stored = {}
    for w, got in results.items():
        seen_failure = False
        stored[w] = []
        for data, r in got:
            if r == "STORED":
                assert not seen_failure, \
                    "writer %d: STORED after a failure: %r" % (w, got[-4:])
                stored[w].append(data)
            else:
                seen_failure = True
                assert r is None or r.startswith("SERVER_ERROR"), r
    assert any(stored.values()), "nothing was stored before the failure"
    wait_for(lambda: "[error] sync: fdatasync" in s.log_text(),
             what="the fsync failure logged")

    # a crash, then everything STORED is there, in order, per writer
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    s.extra_env = {}
    s.start()
    c = s.connect()
    for w in range(8):
        got = [i.data for i in c.get_items("%s.%d/n=1000" % (q, w))]
        assert got[:len(stored[w])] == stored[w], \
            "writer %d: %d STORED, got %d back" % (w, len(stored[w]),
                                                   len(got))
    c.close()


def test_read_failure_skips_nothing(memqd_factory):
    """A read that fails (EIO, here through the fault seam) answers
    SERVER_ERROR out of resources and skips nothing: the item stays at the
    head, the count stays, nothing is counted as damaged, and once reads
    work again every item comes out in order."""
    s = memqd_factory()
    c = s.connect()
    q = qname("rd")
    payloads = [b"r-%03d|" % i * 40 for i in range(30)]
    for p in payloads:
        c.store(q, p)
    c.close()
    s.stop_checked()            # the items are in the files now

    s.extra_env = {"MEMQD_FAULT_READ_FAILS": "3"}
    s.start()
    c = s.connect()
    # each of the first three reads fails: an error, not END, not an item
    for _ in range(3):
        c.send("get %s\r\n" % q)
        assert c.line() == "SERVER_ERROR out of resources"
    st = c.stats()
    assert int(st["queue_%s_items" % q]) == len(payloads)
    assert int(st["corrupt_records"]) == 0
    got = [i.data for i in c.get_items(q + "/n=1000")]
    assert got == payloads
    c.close()
