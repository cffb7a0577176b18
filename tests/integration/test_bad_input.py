"""Malformed input never kills the server or another client, never loses
what was STORED, and a queue name never leaves the data directory
(DESIGN §1 Protocol, §3; STYLE §4)."""

import os
import random
import socket

import pytest

from memqlib import Client, assert_alive, qname, wait_for


@pytest.fixture
def canary(server):
    """An item stored before the test that must still be there after it,
    on a server that still answers."""
    q = qname("canary")
    c = Client(server.addr)
    c.store(q, b"canary-data", flags=77)
    c.close()
    yield q
    assert_alive(server, q, b"canary-data")


def _after_error_ok(c, q=None):
    """The connection is still in sync after an error reply."""
    assert c.cmd("version").startswith("VERSION memqd ")
    if q is not None:
        assert c.get(q) is None, "a rejected set stored something"


def _tree(path):
    out = set()
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(root, n), path))
    return out


# ------------------------------------------- set lines whose count parses

@pytest.mark.parametrize("hdr", [
    "set {q} abc 0 5",                      # flags not a number
    "set {q} -1 0 5",                       # negative flags
    "set {q} 4294967296 0 5",               # flags over u32
    "set {q} 99999999999999999999999 0 5",  # flags huge
    "set {q} 1.5 0 5",
    "set {q} 0x10 0 5",
    "set {q} 0 abc 5",                      # exptime not a number
    "set {q} 0 1.5 5",
    "set {q} 0 99999999999999999999999 5",  # exptime over i64
    "set {q} 0 0 5 noreply extra",          # extra fields
    "set {q} 0 0 5 bogus",
    "set {q} 0 0 5 1 2 3",
])
def test_bad_set_line_swallows_data(client, canary, hdr):
    q = qname()
    client.send(hdr.format(q=q) + "\r\nhello\r\n")
    r = client.line()
    assert r.startswith("CLIENT_ERROR "), "%s -> %r" % (hdr, r)
    _after_error_ok(client, q)


@pytest.mark.parametrize("hdr", [
    "set",
    "set {q}",
    "set {q} 0",
    "set {q} 0 0",
    "set {q} 0 0 abc",
    "set {q} 0 0 -1",
    "set {q} 0 0 -5",
    "set {q} 0 0 1.5",
    "set {q} 0 0 5x",
    "set {q} 0 0 0x5",
    "set {q} 0 0 99999999999999999999999",
    "set {q} 0 0 18446744073709551616",
    "set {q} 0 0 ",
])
def test_unparsable_byte_count_closes(client, canary, hdr):
    q = qname()
    client.send(hdr.format(q=q) + "\r\nhello\r\n")
    assert client.line() == "CLIENT_ERROR bad command line format", hdr
    assert client.wait_closed(5), "connection left open after %r" % hdr
    c = Client(client.addr)
    assert c.get(q) is None
    c.close()


@pytest.mark.parametrize("line", [
    "", " ", "   ", "\t", "get", "gets", "delete", "flush",
    "get\t{q}", "set\t{q}\t0\t0\t1", "\x00", "\x00\x00get {q}",
    "\x01\x02\x03", "\xff\xfe", "VALUE {q} 0 1", "END", "STORED",
])
def test_odd_lines_answered(client, canary, line):
    q = qname()
    client.send(line.format(q=q).encode("latin-1") + b"\r\n")
    r = client.line()
    assert r == "ERROR" or r.startswith("CLIENT_ERROR "), \
        "%r -> %r" % (line, r)
    _after_error_ok(client)


def test_delete_extra_fields(client, canary):
    q = qname()
    client.store(q, b"x")
    r = client.cmd("delete %s noreply extra" % q)
    assert r == "ERROR" or r.startswith("CLIENT_ERROR "), r
    r = client.cmd("delete %s bogus" % q)
    assert r == "ERROR" or r.startswith("CLIENT_ERROR "), r
    assert client.getdata(q) == b"x"


# ------------------------------------------------------------ queue names

BAD_NAMES = [
    "..", ".", ".hidden", "..hidden", ".q",
    "%2e%2e", "%2e%2e%2fetc", "q%00",
    "x" * 251, "x" * 300,
    "caf\xc3\xa9", "\xe2\x80\xae", "q\xff",
    "q\\x", "q*", "q?", "q\"", "q'", "q;", "q|", "q$", "q~", "q@", "q#",
    "q,", "q=", "q+", "q(", "q)", "q!",
    "q\x00x", "q\x7f", "q\x01", "q\x1b[31m",
]
SLASH_NAMES = ["../../etc", "../etc", "/etc", "/", "a/../..", "./q", "q/..",
               "..%2f..%2fetc", "//", "/tmp/x"]


def _check_nothing_created(server, before_tmp, before_data):
    if server.external:
        return
    after_tmp = _tree(server.tmp.parent)
    new = after_tmp - before_tmp
    assert not new, "files appeared: %r" % sorted(new)[:20]
    after_data = set(os.listdir(server.data_dir))
    assert after_data == before_data, \
        "data dir changed: %r" % (after_data ^ before_data)


@pytest.mark.parametrize("name", BAD_NAMES + SLASH_NAMES)
def test_bad_queue_name_set(server, client, canary, name):
    before_tmp = _tree(server.tmp.parent) if not server.external else None
    before_data = (set(os.listdir(server.data_dir))
                   if not server.external else None)
    nb = name.encode("latin-1")
    client.send(b"set " + nb + b" 0 0 5\r\nhello\r\n")
    assert client.line() == "CLIENT_ERROR bad queue name", repr(name)
    _after_error_ok(client)
    _check_nothing_created(server, before_tmp, before_data)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_queue_name_get_delete_flush(server, client, canary, name):
    before_tmp = _tree(server.tmp.parent) if not server.external else None
    before_data = (set(os.listdir(server.data_dir))
                   if not server.external else None)
    nb = name.encode("latin-1")
    for cmd in (b"get ", b"gets ", b"delete ", b"flush "):
        client.send(cmd + nb + b"\r\n")
        r = client.line()
        assert r == "CLIENT_ERROR bad queue name", \
            "%r%r -> %r" % (cmd, name, r)
    for opt in (b"/peek", b"/open", b"/t=10"):
        client.send(b"get " + nb + opt + b"\r\n")
        assert client.line() == "CLIENT_ERROR bad queue name"
    _after_error_ok(client)
    _check_nothing_created(server, before_tmp, before_data)


@pytest.mark.parametrize("name", SLASH_NAMES)
def test_slash_names_get_delete_flush(server, client, canary, name):
    before_tmp = _tree(server.tmp.parent) if not server.external else None
    before_data = (set(os.listdir(server.data_dir))
                   if not server.external else None)
    nb = name.encode("latin-1")
    # for get the first '/' starts the options, so either error is right
    for cmd in (b"get ", b"gets "):
        client.send(cmd + nb + b"\r\n")
        r = client.line()
        assert r in ("CLIENT_ERROR bad queue name",
                     "CLIENT_ERROR bad option"), "%r%r -> %r" % (cmd, name, r)
    # for delete the first '/' starts a lease id (delete q/<id>)
    for cmd in (b"delete ", b"flush "):
        client.send(cmd + nb + b"\r\n")
        r = client.line()
        ok = ["CLIENT_ERROR bad queue name"]
        if cmd == b"delete ":
            ok.append("CLIENT_ERROR bad id")
        assert r in ok, "%r%r -> %r" % (cmd, name, r)
    _after_error_ok(client)
    _check_nothing_created(server, before_tmp, before_data)


def test_name_of_250_bytes_is_fine(server, client):
    q = "n" * 250
    client.store(q, b"long name")
    if not server.external:
        assert server.qdir(q).is_dir()
    client.store(q, b"second")
    key = q + "/n=2/t=10/open"
    items = client.get_items(key, cmd="gets")
    assert [(i.key, i.data) for i in items] == [(key, b"long name"),
                                                (key, b"second")]
    client.get_items(q + "/abort")
    assert client.getdata(q) == b"long name"
    assert client.cmd("delete " + q) == "DELETED"


def test_every_allowed_character(client):
    q = "AZaz09_.:-" + qname()
    client.store(q, b"ok")
    it = client.get(q + "/peek")
    assert it.key == q + "/peek"
    assert client.getdata(q) == b"ok"


def test_names_with_dots_inside(server, client):
    for q in ("a..b", "a.", "a...", "x.y.z", "-", "_", ":"):
        client.store(q, b"v")
        assert client.getdata(q) == b"v"
        if not server.external:
            assert server.qdir(q).is_dir()
            assert server.qdir(q).resolve().parent == \
                server.data_dir.resolve()


# ------------------------------------------------------------- long lines

def test_100k_line_without_crlf(server, client, canary, connect):
    client.send(b"g" * 100000)
    assert client.line(timeout=10) == "CLIENT_ERROR line too long"
    assert client.wait_closed(10), "connection not closed after line too long"
    other = connect()
    assert other.cmd("version").startswith("VERSION memqd ")


def test_100k_get_key_without_crlf(client, canary):
    client.send(b"get " + b"q" * 100000)
    assert client.line(timeout=10) == "CLIENT_ERROR line too long"
    assert client.wait_closed(10)


def test_long_line_with_crlf(client, canary):
    client.send(b"set " + b"q" * 3000 + b" 0 0 1\r\nx\r\n")
    assert client.line(timeout=10) == "CLIENT_ERROR line too long"
    assert client.wait_closed(10)


def test_line_of_2048_bytes_is_not_too_long(client, canary):
    # nine keys (names of at most 250 bytes) that fill exactly 2048 bytes
    keys = [(qname("k") + "z" * 250)[:250] for _ in range(8)]
    line = "get " + " ".join(keys)
    line += " " + (qname("k") + "z" * 250)[:2048 - len(line) - 1]
    assert len(line) == 2048
    r = client.cmd(line)
    assert r == "END", r
    _after_error_ok(client)


def test_long_line_in_slow_pieces(client, canary):
    for _ in range(30):
        client.send(b"x" * 100)
    r = client.line(timeout=10)
    assert r == "CLIENT_ERROR line too long"
    assert client.wait_closed(10)


# -------------------------------------------------------------- data chunk

@pytest.mark.parametrize("raw", [
    b"set {q} 0 0 5\r\nhelloXX\r\n",        # too much data
    b"set {q} 0 0 3\r\nhello\r\n",          # announced count too small
    b"set {q} 0 0 5\r\nhello\n",            # LF only
    b"set {q} 0 0 5\r\nhello\r\r",
    b"set {q} 0 0 5\r\nhello  ",
])
def test_bad_data_chunk(client, canary, connect, raw):
    q = qname()
    client.send(raw.replace(b"{q}", q.encode()))
    r = client.line()
    assert r == "CLIENT_ERROR bad data chunk", "%r -> %r" % (raw, r)
    other = connect()
    assert other.get(q) is None, "a bad chunk was stored"
    assert other.cmd("version").startswith("VERSION memqd ")


def test_bad_data_chunk_then_close_by_client(server, canary):
    q = qname()
    c = Client(server.addr)
    c.send("set %s 0 0 5\r\nhelloXX" % q)
    c.close()
    assert_alive(server)
    c = Client(server.addr)
    assert c.get(q) is None
    c.close()


# ---------------------------------------------------- stalls and half sends

def test_stalled_client_does_not_block_others(client, connect, canary):
    q = qname()
    stalled = connect()
    stalled.send("set %s 3 0 10\r\n01234" % q)
    # others keep working, on the same queue too
    for i in range(20):
        client.store(q, b"o%d" % i)
    others = [connect() for _ in range(5)]
    for i, o in enumerate(others):
        o.store(qname(), b"x")
    assert client.getdata(q) == b"o0"
    # the stalled one finishes later
    stalled.send(b"56789\r\n")
    assert stalled.line() == "STORED"
    got = client.drain(q)
    assert [i.data for i in got] == [b"o%d" % i for i in range(1, 20)] + \
        [b"0123456789"]
    assert got[-1].flags == 3


def test_stalled_header_line(client, connect, canary):
    q = qname()
    stalled = connect()
    stalled.send("set %s 0 0" % q)
    client.store(q, b"first")
    assert client.getdata(q) == b"first"
    stalled.send(" 2\r\nab\r\n")
    assert stalled.line() == "STORED"
    assert client.getdata(q) == b"ab"


def test_client_gone_mid_data(server, client, canary):
    """A client that closes (FIN) in the middle of a data block: nothing is
    stored and its connection is released."""
    q = qname()
    base = int(client.stats()["curr_connections"])
    for _ in range(5):
        c = Client(server.addr)
        c.send("set %s 0 0 100\r\n%s" % (q, "x" * 50))
        c.close()
    assert client.cmd("version").startswith("VERSION")
    assert client.get(q) is None
    wait_for(lambda: int(client.stats()["curr_connections"]) <= base,
             timeout=2, what="connections closed mid-data released "
             "(curr_connections back to %d)" % base)


@pytest.mark.parametrize("partial", ["set {q} 0 0 100\r\n",
                                     "set {q} 0 0 100\r\nabc",
                                     "set {q} 0 0 3\r\nabc",
                                     "set {q} 0 0 3\r\nabc\r",
                                     "get {q}",
                                     "set {q} 0 0"])
def test_half_close_mid_command_frees_the_connection(memqd_factory, partial):
    """A client that sends half a command and then EOF (shutdown SHUT_WR)
    can never finish it: the server must close that connection, or a few
    such clients would hold every --max-connections slot and lock everyone
    else out."""
    s = memqd_factory(args=["--max-connections", "4"])
    q = qname()
    keep = s.connect()
    keep.store(q, b"kept")
    wait_for(lambda: int(keep.stats()["curr_connections"]) == 1, timeout=5,
             what="probe connection gone")
    half = []
    for _ in range(3):
        c = s.connect()
        c.send(partial.format(q=q))
        c.sock.shutdown(socket.SHUT_WR)
        half.append(c)
    for c in half:
        assert c.wait_closed(2), \
            "connection that sent %r and EOF still open after 2s" % partial
        c.close()
    wait_for(lambda: int(keep.stats()["curr_connections"]) == 1, timeout=5,
             what="half-closed connections released")
    others = [s.connect() for _ in range(3)]
    for o in others:
        assert o.cmd("version").startswith("VERSION memqd ")
        o.close()
    assert keep.getdata(q) == b"kept"
    assert keep.get(q) is None, "a half-sent set was stored"
    keep.close()


def test_reset_with_pending_reply(server, client, canary):
    q = qname()
    client.store(q, b"z" * 100000)
    for _ in range(5):
        client.store(q, b"z" * 100000)
    c = Client(server.addr)
    c.send(("get %s/peek\r\n" % q) * 200)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    assert client.cmd("version").startswith("VERSION")
    assert len(client.drain(q)) == 6


def test_random_garbage_lines(server, canary):
    rnd = random.Random(1234)
    for _ in range(20):
        c = Client(server.addr)
        lines = []
        for _ in range(30):
            n = rnd.randrange(0, 60)
            lines.append(bytes(rnd.randrange(256) for _ in range(n))
                         .replace(b"\r\n", b"  "))
        try:
            c.send(b"\r\n".join(lines) + b"\r\n")
        except OSError:
            pass
        c.close()
    assert_alive(server)


# ---------------------------------------------------------- many clients

def test_500_concurrent_connections(server, canary):
    q = qname()
    n = 500
    conns = [Client(server.addr, timeout=20) for _ in range(n)]
    try:
        for i, c in enumerate(conns):
            c.send("set %s 0 0 6\r\n%06d\r\n" % (q, i))
        for c in conns:
            assert c.line() == "STORED"
        for c in conns:
            c.send("get %s\r\n" % q)
        got = []
        for c in conns:
            items = c.read_values()
            assert len(items) == 1
            got.append(items[0].data)
        assert sorted(got) == [b"%06d" % i for i in range(n)]
        assert conns[0].get(q) is None
    finally:
        for c in conns:
            c.close()


def test_max_connections(memqd_factory):
    n = 8
    s = memqd_factory(args=["--max-connections", str(n)])
    first = s.connect()
    q = qname()
    first.store(q, b"kept")
    wait_for(lambda: int(first.stats()["curr_connections"]) == 1, timeout=5,
             what="probe connection gone")
    conns = [first] + [s.connect() for _ in range(n - 1)]
    for c in conns:
        assert c.cmd("version").startswith("VERSION memqd ")
    extra = s.connect()
    assert extra.line() == "SERVER_ERROR too many connections"
    assert extra.wait_closed(5), "connection over the limit left open"
    extra.close()
    # the ones inside the limit are unaffected
    for c in conns:
        assert c.cmd("version").startswith("VERSION memqd ")
    conns[-1].close()
    wait_for(lambda: int(first.stats()["curr_connections"]) == n - 1,
             timeout=5, what="curr_connections back to n-1")
    again = s.connect()
    assert again.cmd("version").startswith("VERSION memqd ")
    assert again.getdata(q) == b"kept"
    for c in conns[:-1] + [again]:
        c.close()


def test_many_connections_over_limit_do_not_hurt(memqd_factory):
    s = memqd_factory(args=["--max-connections", "4"])
    keep = s.connect()
    q = qname()
    keep.store(q, b"v")
    refused = []
    for _ in range(50):
        try:
            c = Client(s.addr)
        except OSError:
            continue
        refused.append(c)
    wait_for(lambda: all(c.wait_closed(0.2) for c in refused[3:]),
             timeout=10, what="connections over the limit closed")
    for c in refused:
        c.close()
    assert keep.getdata(q) == b"v"
    assert keep.cmd("version").startswith("VERSION")


def test_client_that_does_not_read_replies(server, client, canary, connect):
    """A client that asks for far more than it reads fills its own socket;
    the server must neither block on it nor buffer its replies without
    bound, and everyone else keeps being served."""
    q = qname()
    client.store(q, b"v" * (1 << 20))
    hog = connect()
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = ("get %s/peek\r\n" % q).encode() * 500       # 500 MiB of replies
    try:
        hog.sock.settimeout(2)
        hog.sock.sendall(req)
    except OSError:
        pass                    # the server stopped reading: fine
    other = connect()
    for i in range(20):
        other.store(q + "x", b"%d" % i)
        assert other.getdata(q + "x") == b"%d" % i
    if not server.external:
        with open("/proc/%d/status" % server.proc.pid) as f:
            rss = [int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")]
        assert rss[0] < 256 * 1024, "VmRSS %d KiB: replies buffered " \
            "without bound for a client that does not read" % rss[0]
    hog.close()
    assert other.get(q + "/peek").data == b"v" * (1 << 20)


def _fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_connection_churn_leaks_nothing(memqd_factory):
    """A thousand short connections, many cut off mid-command: afterwards
    the server has as many connections and file descriptors as before."""
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"kept")
    # The queue file is written lazily (at most 100 ms after the journal)
    # and its descriptor then stays in the node's descriptor cache: the
    # baseline is taken once that has happened and a read has used it.
    wait_for(lambda: any(f.stat().st_size > 48 for f in s.segments(q)),
             timeout=5, what="queue file written")
    assert c.getdata(q + "/peek") == b"kept"
    wait_for(lambda: int(c.stats()["curr_connections"]) == 1, timeout=5,
             what="probe connection gone")
    fds = _fd_count(s.proc.pid)
    rnd = random.Random(99)
    cuts = [b"", b"ver", b"version\r\n", b"set %s 0 0 10\r\n01234" % q.encode(),
            b"get %s/open\r\n" % q.encode(),
            # /open: a plain get would take the item for good (at-most-once)
            b"get %s/open/t=5000\r\n" % q.encode(),
            b"stats\r\n", b"x" * 3000]
    for i in range(1000):
        k = Client(s.addr)
        k.send(rnd.choice(cuts))
        if i % 3 == 0:
            k.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                              b"\x01\x00\x00\x00\x00\x00\x00\x00")
        k.close()
    wait_for(lambda: int(c.stats()["curr_connections"]) == 1, timeout=5,
             what="every churned connection released")
    wait_for(lambda: _fd_count(s.proc.pid) <= fds, timeout=5,
             what="file descriptors back to %d" % fds)
    assert c.qstats(q)["waiters"] == 0
    assert c.qstats(q)["open_items"] == 0
    assert c.getdata(q) == b"kept"
    c.close()


def test_get_with_many_keys(client, canary):
    """More keys than a get may carry is answered (END for missing queues
    or CLIENT_ERROR), never a crash or a desynchronised connection."""
    q = qname()
    client.store(q, b"one")
    keys = [q] + ["m%d" % i for i in range(150)]
    client.send("get %s\r\n" % " ".join(keys))
    line = client.line()
    if line.startswith("CLIENT_ERROR"):
        assert client.getdata(q) == b"one"
    else:
        assert line == "VALUE %s 0 3" % q, line
        assert client.read_exact(5) == b"one\r\n"
        assert client.line() == "END"
    _after_error_ok(client)
