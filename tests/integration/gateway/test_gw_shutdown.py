"""worker_shutdown_timeout bounds a quitting worker (docs/gateway.md
"Shutdown and reload"): when nginx's shutdown timer fires it closes every
connection, and a node connection still waiting on a node that never
answers goes with it, instead of holding the worker until the node's
read_timeout.  The node is not blamed for it: it did nothing wrong.

The node here is silent (accepts, reads, never answers) and read_timeout
is far beyond every deadline below, so only the shutdown timer can end
the worker in time."""

import os
import signal
import socket
from urllib.parse import urlencode

import pytest

from gwutil import (SLOW, SilentNode, node_addr, qname, read_to_close,
                    wait_for)

TIMEOUTS = "connect_timeout 1s; read_timeout 300s;"
SHUTDOWN = "worker_shutdown_timeout 1s;"


def worker_pids(g):
    """The master's children now."""
    pids = []
    for t in os.listdir("/proc/%d/task" % g.proc.pid):
        with open("/proc/%d/task/%s/children" % (g.proc.pid, t)) as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def exited(pid):
    """The process is gone (a zombie not reaped yet counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:           # gone between the open and the read too
        return True


def request(g, kind, q):
    """A raw request that waits on the node: a single POST (in a pipe, or
    on a connection of its own), or a long poll."""
    s = socket.create_connection(("127.0.0.1", g.port), timeout=30 * SLOW)
    if kind == "stream":
        s.sendall(b"GET /mq?%s HTTP/1.1\r\nHost: x\r\nConnection: close"
                  b"\r\n\r\n" % urlencode({"topic": q, "wait": 5}).encode())
    else:
        s.sendall(b"POST /mq?topic=%s HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1\r\nConnection: close\r\n\r\nm"
                  % q.encode())
    return s


@pytest.mark.parametrize("kind,how", [("pipe", "quit"), ("pipe", "reload"),
                                      ("own", "quit"), ("stream", "quit")])
def test_shutdown_timeout_ends_node_waits(gateway_factory, kind, how):
    hung = SilentNode()
    try:
        g = gateway_factory([hung.addr], workers=1, timeouts=TIMEOUTS,
                            main_extra=SHUTDOWN,
                            cluster_extra="publish_pipes %d;"
                            % (0 if kind == "own" else 1))
        q = qname()
        word = b"get " if kind == "stream" else b"set "
        s = request(g, kind, q)
        wait_for(lambda: word in hung.received, timeout=10,
                 what="the request at the node")
        old = worker_pids(g)
        assert old

        if how == "reload":
            g.reload()
        else:
            g.proc.send_signal(signal.SIGQUIT)

        # the shutdown timer (1 s), not read_timeout (300 s), ends them
        wait_for(lambda: all(exited(p) for p in old), timeout=15,
                 what="the old worker to exit")

        # a POST: nginx ends the request at the shutdown timeout and
        # closes its connection unanswered (when the node connection is
        # closed first, the POST's own error path answers 503); a long
        # poll: streams end at the quit, 503 when no node answered
        data = read_to_close(s)
        assert data == b"" or data.startswith(b"HTTP/1.1 503 "), data

        if how == "reload":
            # shared memory outlives the old worker: the node was not
            # counted as failing
            st = g.node_status(node_addr(hung.addr))
            assert st["fails"] == 0 and st["state"] == "up", st
            assert st["last_error_at"] is None, st
        else:
            g.proc.wait(10 * SLOW)
            assert g.proc.returncode == 0
        # nothing blamed on the node; what is logged names the cause
        g.expect_errors()
        text = g.error_text()
        assert "marked down" not in text
        bad = [l for l in text.splitlines() if "[error]" in l
               and "worker shutdown timeout" not in l]
        assert not bad, bad
    finally:
        hung.close()


@pytest.mark.parametrize("how", ["quit", "shutdown_timeout"])
def test_quit_ends_etcd_poll(gateway_factory, memqd_factory, how):
    """An etcd poll that etcd holds open (no answer yet) does not hold a
    quitting worker until read_timeout: the worker closes it at the quit,
    with or without worker_shutdown_timeout, and etcd is not blamed."""
    node = memqd_factory()
    etcd = SilentNode()
    try:
        g = gateway_factory([node], workers=1, timeouts=TIMEOUTS,
                            main_extra="" if how == "quit" else SHUTDOWN,
                            cluster_extra="etcd http://%s:%d interval=1s;"
                            % etcd.addr)
        wait_for(lambda: b"POST /v3/kv/range" in etcd.received,
                 timeout=10, what="the etcd poll at the fake etcd")
        old = worker_pids(g)
        assert old

        g.proc.send_signal(signal.SIGQUIT)

        # read_timeout is 300 s: only the quit (or the 1 s shutdown
        # timer) ends the poll in time
        wait_for(lambda: all(exited(p) for p in old), timeout=15,
                 what="the old worker to exit")
        g.proc.wait(10 * SLOW)
        assert g.proc.returncode == 0

        # etcd is not counted unreachable for a poll the worker ended
        assert "etcd unreachable" not in g.error_text()
    finally:
        etcd.close()
