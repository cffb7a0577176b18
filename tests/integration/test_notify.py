"""systemd readiness (Type=notify): memqd sends READY=1 to $NOTIFY_SOCKET
once recovery is done and its listeners are open, and STOPPING=1 on
SIGTERM; no libsystemd, a unix datagram socket (docs/memqd.md,
Packages)."""

import os
import shutil
import socket
import tempfile
import time

import pytest

from memqlib import SLOW, Client, qname


@pytest.fixture
def notify_sock():
    """A unix datagram socket bound to a short path (sun_path holds 108
    bytes; pytest's tmp_path may be longer)."""
    d = tempfile.mkdtemp(prefix="memq-notify-", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    yield s, path
    s.close()
    shutil.rmtree(d)


def recv_state(sock, timeout=10.0):
    sock.settimeout(timeout * SLOW)
    return sock.recv(4096).decode()


def no_datagram(sock):
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return None
    finally:
        sock.setblocking(True)


def check_ready_then_stopping(s, sock):
    """READY=1 arrives, and at that moment the listener already answers,
    and data stored before a restart is already recovered; SIGTERM sends
    STOPPING=1."""
    assert recv_state(sock) == "READY=1"
    c = Client(s.addr, timeout=2)          # no retry: it must answer now
    assert c.cmd("version").startswith("VERSION memqd ")
    c.close()
    s.signal(15)
    assert recv_state(sock) == "STOPPING=1"
    assert s.proc.wait(10 * SLOW) == 0
    s.proc = None
    assert no_datagram(sock) is None


def test_ready_and_stopping_on_a_path_socket(memqd_factory, notify_sock):
    sock, path = notify_sock
    s = memqd_factory(env={"NOTIFY_SOCKET": path}, wait=False)
    s.spawn()
    check_ready_then_stopping(s, sock)


def test_ready_after_recovery(memqd_factory, notify_sock):
    """On a restart READY=1 comes after the queues are read back: the
    first get after READY finds the item stored before."""
    sock, path = notify_sock
    s = memqd_factory(env={"NOTIFY_SOCKET": path})
    assert recv_state(sock) == "READY=1"
    q = qname()
    c = s.connect()
    c.store(q, b"kept")
    c.close()
    s.stop_checked()
    assert recv_state(sock) == "STOPPING=1"

    s.spawn()
    assert recv_state(sock) == "READY=1"
    c = Client(s.addr, timeout=2)
    assert c.getdata(q) == b"kept"
    c.close()


def test_ready_on_an_abstract_socket(memqd_factory):
    name = "memq-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        s = memqd_factory(env={"NOTIFY_SOCKET": "@" + name}, wait=False)
        s.spawn()
        check_ready_then_stopping(s, sock)
    finally:
        sock.close()


def test_no_ready_when_start_fails(memqd_factory, notify_sock):
    """A port already taken: memqd exits non-zero and never says READY."""
    sock, path = notify_sock
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        s = memqd_factory(env={"NOTIFY_SOCKET": path}, wait=False)
        p = s.spawn(port=busy.getsockname()[1])
        assert p.wait(10 * SLOW) != 0
        s.proc = None
        assert no_datagram(sock) is None
    finally:
        busy.close()


@pytest.mark.parametrize("value", ["relative/path", "/" + "x" * 200, ""])
def test_bad_notify_socket_is_not_fatal(memqd_factory, value):
    s = memqd_factory(env={"NOTIFY_SOCKET": value})
    c = s.connect()
    assert c.cmd("version").startswith("VERSION memqd ")
    c.close()
    s.stop_checked()
    if value:
        assert "[warn] notify: " in s.log_text()


def test_unused_notify_socket_path_is_not_fatal(memqd_factory, tmp_path):
    """Nobody listens on the path: a warning, and memqd serves."""
    s = memqd_factory(env={"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    c = s.connect()
    assert c.cmd("version").startswith("VERSION memqd ")
    c.close()
    assert "[warn] notify: " in s.log_text()
