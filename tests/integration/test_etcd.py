"""Config centre, node side (issue 4): memqd --etcd URL[,URL...] --advertise
HOST:PORT --cluster NAME [--weight N] keeps /memq/<cluster>/nodes/<addr>
alive under a lease in a real etcd started here (DESIGN §2 Config centre).

Tests that need etcd skip when the `etcd` binary is missing (scripts/deps.sh
installs etcd-server and etcd-client); the option checks run anyway."""

import base64
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from memqlib import MEMQD, SANITIZED, SLOW, free_port, qname, wait_for

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
TTL = 5                     # ETCD_TTL in memqd/etcd.h


def _b64(s):
    return base64.b64encode(s.encode()).decode()


def _unb64(s):
    return base64.b64decode(s).decode()


class Etcd:
    """A single-member etcd on free loopback ports with its own data dir;
    stop() and start() again keep the data and the ports."""

    def __init__(self, d):
        self.dir = d
        self.dir.mkdir(parents=True)
        self.log_path = d / "etcd.log"
        self.proc = None
        self.pick_ports()

    def pick_ports(self):
        self.port = free_port()
        self.peer = free_port()
        while self.peer == self.port:
            self.peer = free_port()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def argv(self):
        peer = "http://127.0.0.1:%d" % self.peer
        return [ETCD, "--name", "default", "--data-dir", str(self.dir / "d"),
                "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "default=" + peer]

    def start(self, timeout=30.0):
        fresh = not (self.dir / "d").exists()
        for attempt in range(3):
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.argv(),
                                             stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log)
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError:
                text = self.log_path.read_text(errors="replace")
                self.stop()
                # a port taken meanwhile: only a fresh member may move
                if fresh and "address already in use" in text and \
                        attempt < 2:
                    shutil.rmtree(self.dir / "d", ignore_errors=True)
                    self.pick_ports()
                    continue
                raise

    def wait_ready(self, timeout):
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited with %s; log tail:\n%s" % (
                    self.proc.returncode,
                    self.log_path.read_text(errors="replace")[-3000:]))
            try:
                if self.call("/v3/maintenance/status", {}, timeout=1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > end:
                raise AssertionError("etcd not ready within %.0fs" % timeout)
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def call(self, path, body, timeout=5.0):
        """POSTs JSON to etcd's gateway; returns the decoded answer."""
        import urllib.request
        req = urllib.request.Request(self.url + path,
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type":
                                              "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def nodes(self, prefix="/memq/"):
        """{key: (value, lease)} of every key under prefix."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        r = self.call("/v3/kv/range", {"key": _b64(prefix),
                                       "range_end": _b64(end)})
        return {_unb64(kv["key"]): (_unb64(kv.get("value", "")),
                                    int(kv.get("lease", 0)))
                for kv in r.get("kvs", [])}

    def lease_ttl(self, lease):
        """(remaining, granted) seconds of a lease, remaining -1 if gone."""
        r = self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(r.get("TTL", -1)), int(r.get("grantedTTL", 0))


@pytest.fixture
def etcd_factory(tmp_path):
    if ETCD is None:
        pytest.skip("etcd binary not found: scripts/deps.sh installs "
                    "etcd-server")
    made = []

    def make(start=True):
        e = Etcd(tmp_path / ("etcd%d" % len(made)))
        made.append(e)
        if start:
            e.start()
        return e

    yield make
    for e in made:
        e.stop()


@pytest.fixture
def etcd(etcd_factory):
    return etcd_factory()


def start_node(memqd_factory, urls, cluster=None, weight=None, extra=()):
    """A memqd that advertises its own listen address; returns
    (server, key)."""
    cluster = cluster or qname("c")
    port = free_port()
    addr = "127.0.0.1:%d" % port
    args = ["--etcd", urls, "--advertise", addr, "--cluster", cluster]
    if weight is not None:
        args += ["--weight", str(weight)]
    s = memqd_factory(args=args + list(extra), wait=False)
    s.start(port=port)
    return s, "/memq/%s/nodes/%s" % (cluster, addr)


def registered(etcd, key):
    try:
        return etcd.nodes().get(key)
    except OSError:
        return None


def gone(etcd, key):
    return key not in etcd.nodes()


def set_get(s, n=5):
    """n round trips of set + get on a fresh queue, each within a second
    (memqd never waits for etcd)."""
    c = s.connect()
    q = qname()
    try:
        for i in range(n):
            t = time.monotonic()
            c.store(q, b"v%d" % i)
            assert c.getdata(q) == b"v%d" % i
            took = time.monotonic() - t
            assert took < 1.0 * SLOW, "set+get took %.2fs" % took
    finally:
        c.close()


def warn_lines(s, what="retrying"):
    return [ln for ln in s.log_text().splitlines()
            if "[warn] etcd:" in ln and what in ln]


# ------------------------------------------------------------ tests


def test_node_registers_with_its_address_and_weight(etcd, memqd_factory):
    s, key = start_node(memqd_factory, etcd.url, weight=3)
    value, lease = wait_for(lambda: registered(etcd, key), timeout=10,
                            what="%s in etcd" % key)
    assert json.loads(value) == {"addr": key.rsplit("/", 1)[1],
                                 "weight": 3}
    assert lease != 0, "the key must live under a lease"
    remaining, granted = etcd.lease_ttl(lease)
    assert granted == TTL and 0 < remaining <= TTL

    # logged once etcd has answered the put, so perhaps a moment later
    pat = re.compile(r"\[info\] etcd: registered %s lease %x ttl %ds "
                     % (re.escape(key), lease, TTL))
    wait_for(lambda: pat.search(s.log_text()), timeout=5,
             what="the 'registered' log line")

    if ETCDCTL:
        out = subprocess.run([ETCDCTL, "--endpoints", etcd.url, "get",
                              "--prefix", "/memq/"],
                             env=dict(os.environ, ETCDCTL_API="3"),
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [key, value]

    set_get(s)


def test_lease_is_kept_alive(etcd, memqd_factory):
    s, key = start_node(memqd_factory, etcd.url)
    _, lease = wait_for(lambda: registered(etcd, key), timeout=10,
                        what="%s in etcd" % key)
    # polled throughout: over two TTLs the key never goes missing and
    # stays on the same lease, which only keep-alives make possible
    end = time.monotonic() + 2 * TTL
    while time.monotonic() < end:
        got = etcd.nodes().get(key)
        assert got is not None, "key vanished while memqd runs"
        assert got[1] == lease, "lease changed while etcd was up"
        assert etcd.lease_ttl(lease)[0] > 0
        time.sleep(0.2)
    assert not warn_lines(s, ""), warn_lines(s, "")


def test_several_urls_are_tried_in_turn(etcd, memqd_factory):
    dead = "http://127.0.0.1:%d" % free_port()
    s, key = start_node(memqd_factory, dead + "," + etcd.url + "/")
    wait_for(lambda: registered(etcd, key), timeout=10,
             what="%s in etcd through the second URL" % key)
    wait_for(lambda: "registered %s" % key in s.log_text(), timeout=5,
             what="the 'registered' log line")
    assert any(dead in ln and "connection refused" in ln
               for ln in warn_lines(s)), s.log_text()


class _NotEtcd(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(404)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"not here\n")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("kind", ["silent", "not_etcd"])
def test_a_url_that_is_not_etcd_is_passed_over(etcd, memqd_factory, kind):
    """First URL: a socket that never answers (the request times out) or an
    HTTP server that is not etcd; the node registers through the second."""
    if kind == "silent":
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        port = srv.getsockname()[1]
        close = srv.close
    else:
        httpd = http.server.HTTPServer(("127.0.0.1", 0), _NotEtcd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        port = httpd.server_address[1]

        def close():
            httpd.shutdown()
            httpd.server_close()
    try:
        first = "http://127.0.0.1:%d" % port
        s, key = start_node(memqd_factory, first + "," + etcd.url)
        wait_for(lambda: registered(etcd, key), timeout=15,
                 what="%s in etcd through the second URL" % key)
        why = "timed out" if kind == "silent" else "HTTP 404"
        assert any(first in ln and why in ln for ln in warn_lines(s)), \
            s.log_text()
        set_get(s)
    finally:
        close()


def test_sigterm_revokes_the_lease(etcd, memqd_factory):
    s, key = start_node(memqd_factory, etcd.url)
    _, lease = wait_for(lambda: registered(etcd, key), timeout=10,
                        what="%s in etcd" % key)
    t = time.monotonic()
    s.stop_checked()
    took = time.monotonic() - t
    # revoked before memqd exited: no waiting for the TTL
    assert gone(etcd, key), "key still there after a clean stop"
    assert etcd.lease_ttl(lease)[0] == -1, "lease not revoked"
    assert took < 3.0 * SLOW, "SIGTERM took %.2fs" % took
    assert "[info] etcd: lease %x revoked" % lease in s.log_text()


def test_sigterm_is_fast_when_etcd_is_away(etcd_factory, memqd_factory):
    e = etcd_factory(start=False)
    s, key = start_node(memqd_factory, e.url)
    wait_for(lambda: warn_lines(s), timeout=10, what="a retry warning")
    t = time.monotonic()
    s.stop_checked()
    took = time.monotonic() - t
    assert took < 3.0 * SLOW, "SIGTERM took %.2fs" % took


def test_sigkill_key_expires_with_the_lease(etcd, memqd_factory):
    s, key = start_node(memqd_factory, etcd.url)
    wait_for(lambda: registered(etcd, key), timeout=10,
             what="%s in etcd" % key)
    s.kill()
    t = time.monotonic()
    assert not gone(etcd, key), "nobody revoked it: it stays a while"
    # etcd checks for expired leases every 500 ms and revokes them through
    # raft: 5.1-6.3 s were seen on an idle machine
    wait_for(lambda: gone(etcd, key), timeout=TTL + 6, interval=0.1,
             what="%s to expire after SIGKILL" % key)
    took = time.monotonic() - t
    assert took <= TTL + 4, "expired after %.1fs" % took


def test_etcd_restart_node_keeps_serving_and_registers_again(
        etcd, memqd_factory):
    s, key = start_node(memqd_factory, etcd.url)
    wait_for(lambda: registered(etcd, key), timeout=10,
             what="%s in etcd" % key)

    etcd.stop()
    t = time.monotonic()
    set_get(s)
    wait_for(lambda: warn_lines(s), timeout=10,
             what="a warning that etcd is unreachable")
    # away for longer than the lease: memqd must take a new one
    while time.monotonic() - t < TTL + 1:
        set_get(s, 2)
        time.sleep(0.2)

    etcd.start()
    wait_for(lambda: registered(etcd, key), timeout=15,
             what="%s back in etcd" % key)
    wait_for(lambda: "[info] etcd: " in s.log_text() and
             "reachable again" in s.log_text(), timeout=10,
             what="'reachable again' in the log")
    set_get(s)

    # etcd keeps leases over a restart; memqd's new one must hold the key
    # once the old one has run out
    end = time.monotonic() + TTL + 2
    while time.monotonic() < end:
        assert registered(etcd, key), "key lost after etcd came back"
        time.sleep(0.2)

    # rate-limited: one line when it began, not one per retry
    assert len(warn_lines(s)) <= 3, warn_lines(s)


def test_etcd_unreachable_at_start(etcd_factory, memqd_factory):
    e = etcd_factory(start=False)
    s, key = start_node(memqd_factory, e.url, weight=2)
    set_get(s)
    wait_for(lambda: any("connection refused, retrying" in ln
                         for ln in warn_lines(s)), timeout=10,
             what="a 'connection refused, retrying' warning")

    e.start()
    value, _ = wait_for(lambda: registered(e, key), timeout=15,
                        what="%s in etcd once it is up" % key)
    assert json.loads(value)["weight"] == 2
    wait_for(lambda: "reachable again" in s.log_text(), timeout=5,
             what="'reachable again' in the log")
    set_get(s)


BAD = [
    (["--etcd", "https://127.0.0.1:2379"], "--etcd"),
    (["--etcd", "127.0.0.1:2379"], "--etcd"),
    (["--etcd", "http://"], "--etcd"),
    (["--etcd", "http://127.0.0.1:99999"], "--etcd"),
    (["--etcd", "http://127.0.0.1:2379/v3"], "--etcd"),
    (["--etcd", "http://127.0.0.1:2379,"], "--etcd"),
    (["--etcd", "http://127.0.0.1:2379", "--cluster", "c"], "--advertise"),
    (["--etcd", "http://127.0.0.1:2379", "--advertise", "127.0.0.1:1"],
     "--cluster"),
    (["--advertise", "127.0.0.1:1", "--cluster", "c"], "--etcd"),
    (["--advertise", "127.0.0.1"], "--advertise"),
    (["--advertise", "127.0.0.1:0"], "--advertise"),
    (["--advertise", "a/b:1"], "--advertise"),
    (["--cluster", "a/b"], "--cluster"),
    (["--cluster", ""], "--cluster"),
    (["--weight", "0"], "--weight"),
    (["--weight", "x"], "--weight"),
]


@pytest.mark.parametrize("args,word", BAD,
                         ids=[" ".join(a) or "empty" for a, _ in BAD])
def test_bad_options_exit_2(tmp_path, args, word):
    if not os.access(MEMQD, os.X_OK):
        pytest.fail("memqd binary %s missing" % MEMQD)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1")
    r = subprocess.run([MEMQD, "--listen", "127.0.0.1:%d" % free_port(),
                        "--data-dir", str(tmp_path / "d")] + args,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=10 * SLOW, env=env)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert word in r.stderr, r.stderr
    assert not (tmp_path / "d").exists(), "refused before touching data"
    if SANITIZED:
        assert "Sanitizer" not in r.stderr, r.stderr
