"""Issue 7, connection side: absurd byte counts."""

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
