"""Config centre, node side, against an etcd that misbehaves: a stand-in
HTTP server here answers what a broken or hostile etcd would (a put
refused after every grant, error text with control bytes).  memqd must go
on serving, back off, and keep its log short and honest.  The behaviour
against a real etcd is in test_etcd.py."""

import json
import socket
import threading
import time

from memqlib import wait_for
from test_etcd import set_get, start_node


class FakeEtcd:
    """Accepts connections and hands each request (path, parsed JSON body)
    to answer(sock, path, body), which writes whatever it likes."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []              # (monotonic time, path)
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,),
                             daemon=True).start()

    def _one(self, c):
        c.settimeout(30)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                got = c.recv(4096)
                if not got:
                    return
                data += got
            head, body = data.split(b"\r\n\r\n", 1)
            n = 0
            for ln in head.split(b"\r\n")[1:]:
                name, _, v = ln.partition(b":")
                if name.strip().lower() == b"content-length":
                    n = int(v)
            while len(body) < n:
                got = c.recv(4096)
                if not got:
                    return
                body += got
            path = head.split(b" ")[1].decode()
            with self.lock:
                self.requests.append((time.monotonic(), path))
            self.answer(c, path, json.loads(body))
        except OSError:
            pass
        finally:
            c.close()

    def paths(self):
        with self.lock:
            return [p for _, p in self.requests]

    def close(self):
        self.sock.close()


def reply(c, status, body):
    """An HTTP/1.1 answer with body (bytes, sent as they are)."""
    c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (status, len(body)) + body)


def grant_then_refuse(status, body):
    """An answer function: every grant gets a new lease, every other
    request `status` with `body`."""
    ids = [100]

    def answer(c, path, _):
        if path == "/v3/lease/grant":
            ids[0] += 1
            reply(c, 200, b'{"header":{},"ID":"%d","TTL":"5"}' % ids[0])
        else:
            reply(c, status, body)
    return answer


def etcd_lines(s):
    return [ln for ln in s.log_text().splitlines()
            if "[warn] etcd:" in ln or "[info] etcd:" in ln]


def test_put_refused_after_every_grant_backs_off(memqd_factory):
    """etcd grants a lease and then refuses the put (the lease is gone
    again, 404): a new grant is progress only on the way to registering,
    so the backoff must keep growing and the refusals be logged as any
    other failure, once and then every 10 s, not one line per attempt."""
    fake = FakeEtcd(grant_then_refuse(
        404, b'{"error":"etcdserver: requested lease not found","code":5}'))
    try:
        s, _ = start_node(memqd_factory, fake.url)
        t0 = time.monotonic()
        wait_for(lambda: fake.paths().count("/v3/kv/put") >= 3, timeout=10,
                 what="three puts")
        set_get(s)
        # grants and puts for at least 8 s: with a backoff that grows to
        # 2 s that is at most about 7 rounds; a slow machine makes fewer
        while time.monotonic() - t0 < 8:
            set_get(s, 1)
            time.sleep(0.2)
        took = time.monotonic() - t0
        puts = fake.paths().count("/v3/kv/put")
        assert puts <= took / 2 + 5, \
            "%d puts in %.1fs: the backoff was reset by the grants" % (
                puts, took)
        refused = [ln for ln in etcd_lines(s) if "refused" in ln]
        assert refused and "requested lease not found" in refused[0], \
            etcd_lines(s)
        # the first at once, then one every 10 s
        assert len(refused) <= 1 + int(took / 10) + 1, refused
        assert "registered" not in s.log_text()
    finally:
        fake.close()


def test_control_bytes_from_etcd_do_not_reach_the_log(memqd_factory):
    """etcd's error text is quoted in the log: a line feed or a terminal
    escape in it must not start a line of its own nor reach the terminal."""
    forged = b"2026-01-01T00:00:00.000Z [error] main: forged"

    def answer(c, path, body):
        reply(c, 400, b'{"error":"bad\n' + forged + b'\r\x1b[2J","code":3}')

    fake = FakeEtcd(answer)
    try:
        s, _ = start_node(memqd_factory, fake.url)
        wait_for(lambda: [ln for ln in etcd_lines(s) if "refused" in ln],
                 timeout=10, what="the refusal in the log")
        set_get(s)
        log = s.log_text()
        lines = log.splitlines()
        assert not any(ln.startswith("2026-01-01") for ln in lines), log
        assert "\x1b" not in log and "\r" not in log, repr(log)
        refused = [ln for ln in lines if "refused" in ln][0]
        assert "bad?" + forged.decode() in refused, refused
    finally:
        fake.close()


def test_grant_answered_200_without_a_lease_says_so(memqd_factory):
    """A 200 whose body is not a lease (garbage, or JSON without an ID) is
    logged as such, not as a bare "HTTP 200" that reads like success."""
    fake = FakeEtcd(lambda c, path, body: reply(c, 200, b"{{ not json"))
    try:
        s, _ = start_node(memqd_factory, fake.url)
        line = wait_for(lambda: [ln for ln in etcd_lines(s)
                                 if "refused" in ln],
                        timeout=10, what="the refusal in the log")[0]
        assert "lease grant refused: HTTP 200 without a lease ID" in line, \
            line
        set_get(s)
    finally:
        fake.close()


def test_put_denied_for_good_says_only_that(memqd_factory):
    """etcd grants leases but denies the put (403, as with RBAC): the
    lease memqd holds runs out unused again and again.  That is not etcd
    being away and must not be logged as such every lease; and at stop,
    the key that was never put must not be said to expire."""
    fake = FakeEtcd(grant_then_refuse(
        403, b'{"error":"etcdserver: permission denied","code":7}'))
    try:
        s, key = start_node(memqd_factory, fake.url)
        # a lease outlived unused twice: two grants after the first
        wait_for(lambda: fake.paths().count("/v3/lease/grant") >= 3,
                 timeout=30, what="three grants")
        set_get(s)
        s.stop_checked()
        lines = etcd_lines(s)
        assert not [ln for ln in lines if "while etcd was away" in ln], \
            lines
        assert any("permission denied" in ln for ln in lines), lines
        assert not [ln for ln in lines if "expires within" in ln and
                    key in ln], lines
    finally:
        fake.close()
