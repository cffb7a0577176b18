"""memq-bench --http-drain, the C client of bench/gateway.sh's client
acknowledgement cells, against a real gateway: in write mode every message
is counted once; in client mode every id is acknowledged with op=ack lists
and the queue is left empty with no lease outstanding; a wrong count and a
response that is not a drain fail it; and against a misbehaving gateway,
byte streams cut everywhere and malformed answers."""

import os
import socket
import subprocess
import threading
import time

import pytest

from gwutil import ROOT, SLOW, fill, node_items, qname, qstat

BENCH = os.environ.get("BENCH") or str(ROOT / "build" / "memq-bench")
N = 3000


@pytest.fixture(autouse=True)
def need_bench():
    if not os.access(BENCH, os.X_OK):
        pytest.skip("%s missing (make bench)" % BENCH)


def drain(g, q, *args):
    """Runs the drain; returns (exit status, RESULT fields, stderr)."""
    p = subprocess.run([BENCH, "--http-drain", "-p", str(g.port),
                        "--path", "/mq", "-q", q, "-Q",
                        "--timeout", str(30 * SLOW)] + list(args),
                       capture_output=True, text=True,
                       timeout=120 * SLOW)
    fields = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
    return p.returncode, fields, p.stderr


def test_write_mode_counts_every_message_once(gw, nodes3):
    q = qname()
    fill(nodes3, q, N)
    rc, r, err = drain(gw, q, "-c", "10", "-n", str(N))
    assert rc == 0, err
    assert r["mode"] == "write" and r["conns"] == "10"
    assert int(r["msgs"]) == N
    assert float(r["client_cpu_us_per_msg"]) >= 0
    for n in nodes3:
        assert node_items(n, q) == (0, 0), "left on %s" % n.port


@pytest.mark.parametrize("batch,inflight", [("1000", "4"), ("7", "2")])
def test_client_mode_acknowledges_every_id(gw, nodes3, batch, inflight):
    """Lists of 7 ids, 2 in flight: many POSTs, and the stream waits for
    the acknowledgements to catch up (16 lists at most waiting)."""
    q = qname()
    fill(nodes3, q, N)
    rc, r, err = drain(gw, q, "-c", "3", "-n", str(N), "--ack-client",
                       "--ack-batch", batch, "--ack-inflight", inflight)
    assert rc == 0, err
    assert r["mode"] == "client"
    assert int(r["msgs"]) == N
    assert int(r["acked"]) == N and int(r["not_found"]) == 0
    assert int(r["ack_posts"]) >= N // int(batch)
    assert qstat(nodes3, q, "items") == 0
    assert qstat(nodes3, q, "leased_items") == 0


def test_wrong_count_fails(gw, nodes3):
    q = qname()
    fill(nodes3, q, 300)
    rc, r, err = drain(gw, q, "-c", "2", "-n", "301", "--ack-client")
    assert rc == 1
    assert int(r["msgs"]) == 300 and int(r["acked"]) == 300
    assert "300 msgs (-n 301)" in err


def test_not_a_drain_fails_clearly(gw):
    rc, r, err = drain(gw, qname(), "--path", "/__ready")
    assert rc == 2
    assert r == {}
    assert "GET answered HTTP/1.1 204" in err


def test_bad_arguments(gw):
    rc, _, err = drain(gw, "bad topic")
    assert rc == 2 and "-q and --path" in err
    rc, _, err = drain(gw, qname(), "--ack-batch", "0")
    assert rc == 2 and "--ack-batch" in err


class FakeGateway:
    """A misbehaving gateway for the client's parser: answers the GET with
    the bytes given, sent a few at a time, and every op=ack POST with the
    count of its ids (or the answer given)."""

    def __init__(self, body, ack_answer=None, piece=3):
        self.body = body
        self.ack_answer = ack_answer
        self.piece = piece
        self.posts = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                if head.startswith(b"GET "):
                    # pauses make most pieces a read of their own
                    for i in range(0, len(self.body), self.piece):
                        c.sendall(self.body[i:i + self.piece])
                        if i % (2 * self.piece) == 0:
                            time.sleep(0.0003)
                    return
                n = int(head.lower().split(b"content-length:")[1]
                        .split(b"\r\n")[0])
                while len(buf) < n:
                    buf += c.recv(65536)
                ids, buf = buf[:n].split(b"\n"), buf[n:]
                self.posts.append(ids)
                ans = self.ack_answer or (
                    b'{"acked":%d,"not_found":0}' % len(ids))
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(ans), ans))
        except OSError:
            pass        # the client gave up: what it says is checked
        finally:
            c.close()

    def close(self):
        self.sock.close()


def chunked(data, size):
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x;x=y\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def fake_drain(body, *args, **kw):
    f = FakeGateway(body, **kw)
    try:
        return drain(f, "q", "--path", "/x", *args) + (f.posts,)
    finally:
        f.close()


@pytest.mark.parametrize("chunk", [1, 5, 37, 4096])
def test_split_everywhere(chunk):
    """Chunk framing, lines and ids cut at every place by the chunk sizes
    and by reads of a few bytes: every line counted, every id sent."""
    ids = [b"127.0.0.1:%d/%d" % (9000 + i % 3, i) for i in range(100)]
    lines = b"".join(b'{"id":"%s","data":"m %d"}\n' % (d, i)
                     for i, d in enumerate(ids))
    rc, r, err, posts = fake_drain(HEAD + chunked(lines, chunk), "-n", "100",
                                   "--ack-client", "--ack-batch", "30")
    assert rc == 0, err
    assert int(r["msgs"]) == 100 and int(r["acked"]) == 100
    assert sorted(len(p) for p in posts) == [10, 30, 30, 30]
    assert sorted(i for p in posts for i in p) == sorted(ids)
    rc, r, err, _ = fake_drain(HEAD + chunked(lines, chunk), "-n", "100")
    assert rc == 0 and int(r["msgs"]) == 100, err


@pytest.mark.parametrize("body,why", [
    (HEAD + b"zz\r\n", "malformed chunk size line"),
    (HEAD + b"3\r\nab\n\r\n0\r\n\r\n", "does not start with"),
    (HEAD + b'2\r\n{"XX', "chunk data not followed by CRLF"),
    (HEAD + b"10\r\n{\"id\":\"a\",\"d\":1}", "closed before the end"),
    (HEAD + chunked(b'{"id":"' + b"x" * 300 + b'"}\n', 7), "no complete id"),
    (HEAD + chunked(b'{"id":"","data":"m"}\n', 64), "empty id"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000, "head longer"),
    (b"HTTP/1.1 503 Busy\r\n\r\n", "GET answered HTTP/1.1 503 Busy"),
], ids=["size", "no-id", "crlf", "short", "long-id", "empty-id", "head",
        "status"])
def test_malformed_response_fails_clearly(body, why):
    rc, r, err, _ = fake_drain(body, "--ack-client")
    assert rc == 2 and r == {}
    assert why in err


def test_wrong_ack_answer_fails_clearly():
    lines = b'{"id":"h:1/1","data":"m"}\n{"id":"h:1/2","data":"m"}\n'
    rc, _, err, _ = fake_drain(HEAD + chunked(lines, 64), "--ack-client",
                               ack_answer=b'{"acked":1,"not_found":0}')
    assert rc == 2 and "op=ack of 2 ids answered acked 1" in err
    rc, _, err, _ = fake_drain(HEAD + chunked(lines, 64), "--ack-client",
                               ack_answer=b'{"acked":"2"}')
    assert rc == 2 and "op=ack answered HTTP/1.1 200 OK" in err


@pytest.mark.parametrize("mode", ["write", "client"])
def test_raw_format_against_the_gateway(gw, nodes3, mode):
    """--format raw asks format=raw of the real gateway and parses its
    frames, ids included in client mode: every message counted once, every
    id acknowledged, the nodes left empty.  Messages hold CR LF, which
    only the length framing carries as they are."""
    q = qname()
    fill(nodes3, q, N, fmt="m\r\n%d")
    args = ["-c", "3", "-n", str(N), "--format", "raw"]
    if mode == "client":
        args += ["--ack-client", "--ack-batch", "100"]
    rc, r, err = drain(gw, q, *args)
    assert rc == 0, err
    assert r["mode"] == mode and int(r["msgs"]) == N
    if mode == "client":
        assert int(r["acked"]) == N and int(r["not_found"]) == 0
    assert qstat(nodes3, q, "items") == 0
    assert qstat(nodes3, q, "leased_items") == 0


def raw_frames(msgs, ids=None):
    out = b""
    for i, m in enumerate(msgs):
        out += (ids[i] + b" " if ids else b"") + b"%d\r\n%s\r\n" % (len(m), m)
    return out


@pytest.mark.parametrize("chunk", [1, 4, 29, 4096])
def test_raw_split_everywhere(chunk):
    """Raw frames, their heads, ids and CR LF cut at every place: every
    frame counted, empty ones too, every id sent once."""
    ids = [b"127.0.0.1:%d/%d" % (9000 + i % 3, i) for i in range(60)]
    msgs = [b"m\r\n%d" % i if i % 7 else b"" for i in range(60)]
    rc, r, err, posts = fake_drain(
        HEAD + chunked(raw_frames(msgs, ids), chunk), "-n", "60",
        "--format", "raw", "--ack-client", "--ack-batch", "25")
    assert rc == 0, err
    assert int(r["msgs"]) == 60 and int(r["acked"]) == 60
    assert sorted(i for p in posts for i in p) == sorted(ids)
    rc, r, err, _ = fake_drain(HEAD + chunked(raw_frames(msgs), chunk),
                               "-n", "60", "--format", "raw")
    assert rc == 0 and int(r["msgs"]) == 60, err


@pytest.mark.parametrize("body,client,why", [
    (b"3\r\nabc\r\n", True, "has no id"),
    (b" 3\r\nabc\r\n", True, "has no id"),
    (b"h:1/1 \r\nabc\r\n", True, "has no length"),
    (b"3x\r\nabc\r\n", False, "bad length"),
    (b"99999999999999999999\r\n", False, "bad length"),
    (b"3\nabc\r\n", False, "head without CRLF"),
    (b"3\r\nabcd\r\n", False, "not followed by CRLF"),
    (b"3\r\nab", False, "ends inside a frame"),
    (b"1" * 300, False, "head longer"),
], ids=["no-id", "empty-id", "no-length", "not-digits", "huge", "lf-only",
        "long-data", "cut", "long-head"])
def test_raw_malformed_fails_clearly(body, client, why):
    args = ["--format", "raw"] + (["--ack-client"] if client else [])
    rc, r, err, _ = fake_drain(HEAD + chunked(body, 64), *args)
    assert rc == 2 and r == {}, (rc, r, err)
    assert why in err


def test_raw_format_checked():
    rc, _, err, _ = fake_drain(HEAD + chunked(b"", 8), "--format", "json")
    assert rc == 2 and "--format: ndjson or raw" in err
