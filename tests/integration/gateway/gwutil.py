"""
Helpers for the gateway (ngx_http_memq_module) integration tests.

Gateway runs Debian's /usr/sbin/nginx in the foreground with the module
from build/, two workers, on a free loopback port, in its own temporary
prefix; it waits for readiness with a deadline and, when stopped, checks
the error log for [alert], [emerg] and crashed workers.

The memqd helpers (Client, qname, wait_for, ...) come from the parent
suite's memqlib (never `from conftest import`: the two conftest.py files
would shadow each other).
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

try:
    import memqlib as base
except ImportError:
    # helpers still inside the parent conftest.py: load it by path, under
    # a name of its own
    _spec = importlib.util.spec_from_file_location(
        "memq_integration_conftest", str(HERE.parent / "conftest.py"))
    base = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(base)

Client = base.Client
SLOW = base.SLOW
qname = base.qname
wait_for = base.wait_for
free_port = base.free_port
deadline_after = base.deadline_after
stop_process = base.stop_process

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
# e.g. "libasan.so.8:libubsan.so.1" with MEMQ_MODULE pointing at a module
# built with -fsanitize=address,undefined
PRELOAD = os.environ.get("MEMQ_NGINX_PRELOAD")


def _sanitizer_preload():
    import ctypes.util
    libs = [ctypes.util.find_library(n) for n in ("asan", "ubsan")]
    return ":".join(libs) if all(libs) else None


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:",
                     "LeakSanitizer")
MODULE = os.environ.get("MEMQ_MODULE") or str(
    ROOT / "build" / "ngx_http_memq_module.so")

# under MEMQ_SANITIZED the module's own sanitizer build runs inside the
# stock nginx, when ngx_memq/build.sh made it; otherwise the normal build
# does (SLOW is above 1 in every run: it is not the sign of a sanitizer)
_ASAN_MODULE = ROOT / "build" / "asan" / "ngx_http_memq_module.so"
if base.SANITIZED and not os.environ.get("MEMQ_MODULE") and \
        _ASAN_MODULE.exists() and PRELOAD is None:
    PRELOAD = _sanitizer_preload()
    if PRELOAD:
        MODULE = str(_ASAN_MODULE)

BAD_LOG = ("[alert]", "[emerg]", "exited on signal", "[crit]")

ACCESS_FORMAT = ('$status $memq_messages $memq_nodes_ok $memq_nodes_failed '
                 '"$request"')

DEFAULT_LOC = """
            memq_pass main;
            memq_key $arg_topic;
            memq_wait_max 10s;
            memq_inflate on;
            memq_compress_flag 1;
"""


def nginx_env():
    env = dict(os.environ)
    if PRELOAD:
        # a sanitizer build of the module inside the stock nginx
        env["LD_PRELOAD"] = PRELOAD
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
    return env


def node_addr(n):
    """host:port of a Memqd, a (host, port) tuple or a string."""
    if isinstance(n, str):
        return n
    if isinstance(n, tuple):
        return "%s:%d" % n
    return "%s:%d" % (n.host, n.port)


class Gateway:
    """One nginx with the memq module."""

    def __init__(self, tmp, nodes, cluster_extra="", loc_extra="",
                 loc=None, server_extra="", http_extra="", workers=2,
                 weights=None, listen_extra="", worker_connections=1024,
                 timeouts="connect_timeout 1s; read_timeout 2s;",
                 main_extra="", host="127.0.0.1", argv_prefix=()):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for d in ("logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.tmp / d).mkdir(exist_ok=True)
        self.nodes = list(nodes)
        self.weights = weights or {}
        self.cluster_extra = cluster_extra
        self.loc = DEFAULT_LOC if loc is None else loc
        self.loc_extra = loc_extra
        self.server_extra = server_extra
        self.http_extra = http_extra
        self.main_extra = main_extra
        self.listen_extra = listen_extra
        self.timeouts = timeouts
        self.workers = workers
        # the address it listens on, and what runs nginx (e.g. `ip netns
        # exec NS`: nginx inside a network namespace)
        self.host = host
        self.argv_prefix = list(argv_prefix)
        self.worker_connections = worker_connections
        self.port = None
        self.proc = None
        self.errors_expected = False
        self.conf_path = self.tmp / "nginx.conf"
        self.error_log = self.tmp / "logs" / "error.log"
        self.access_log = self.tmp / "logs" / "access.log"
        self.stderr_path = self.tmp / "logs" / "stderr.log"

    # -- configuration

    def render(self):
        lines = []
        for n in self.nodes:
            a = node_addr(n)
            w = self.weights.get(a)
            lines.append("node %s%s;" % (a, " weight=%d" % w if w else ""))
        t = self.tmp
        return """
load_module {module};
user root;
worker_processes {workers};
error_log {t}/logs/error.log info;
pid {t}/nginx.pid;
{main_extra}
events {{ worker_connections {wc}; }}
http {{
    log_format memq '{fmt}';
    access_log {t}/logs/access.log memq;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    {http_extra}
    memq_cluster main {{
        {nodes}
        {timeouts}
        {cluster_extra}
    }}
    server {{
        listen {host}:{port} {listen_extra};
        {server_extra}
        location /mq {{
            {loc}
            {loc_extra}
        }}
        location = /mq/status {{ memq_status; }}
        location = /__ready {{ return 204; }}
    }}
}}
""".format(module=MODULE, workers=self.workers, t=t, fmt=ACCESS_FORMAT,
           wc=self.worker_connections, main_extra=self.main_extra,
           http_extra=self.http_extra, nodes="\n        ".join(lines),
           cluster_extra=self.cluster_extra, port=self.port,
           host=self.host,
           server_extra=self.server_extra, loc=self.loc,
           listen_extra=self.listen_extra, timeouts=self.timeouts,
           loc_extra=self.loc_extra)

    def write_conf(self):
        self.conf_path.write_text(self.render())

    def test_conf(self):
        """nginx -t on the current configuration: (ok, output)."""
        if self.port is None:
            self.port = free_port()
        self.write_conf()
        p = subprocess.run([NGINX, "-t", "-p", str(self.tmp), "-c",
                            str(self.conf_path)], capture_output=True,
                           text=True, timeout=30, env=nginx_env())
        return p.returncode == 0, p.stdout + p.stderr

    # -- process

    def start(self, timeout=10.0):
        if not os.path.exists(MODULE):
            pytest.fail("%s missing: run `make module`" % MODULE)
        for _ in range(3):
            self.port = free_port()
            self.write_conf()
            self.log_offset = (self.error_log.stat().st_size
                               if self.error_log.exists() else 0)
            env = nginx_env()
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(
                    self.argv_prefix +
                    [NGINX, "-p", str(self.tmp), "-c", str(self.conf_path),
                     "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                    stdout=err, stderr=err, env=env)
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError:
                if self.proc.poll() is not None and \
                        "in use" in self.error_text():
                    continue
                raise
        raise AssertionError("nginx: no free port after 3 attempts")

    def wait_ready(self, timeout=10.0):
        end = deadline_after(timeout)
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited with %s; error log:\n%s"
                                     % (self.proc.returncode,
                                        self.error_text()[-3000:]
                                        + self.stderr_text()[-3000:]))
            try:
                r = requests.get(self.url("/__ready"), timeout=1)
                if r.status_code == 204:
                    return
                last = r.status_code
            except requests.RequestException as e:
                last = e
            time.sleep(0.02)
        raise AssertionError("nginx not ready in %.1fs (%r); error log:\n%s"
                             % (timeout * SLOW, last,
                                self.error_text()[-3000:]))

    def reload(self, timeout=10.0):
        """Rewrites the configuration and sends HUP; returns once the new
        configuration is in use (a new worker generation answers)."""
        self.write_conf()
        before = self.error_text().count("start worker process")
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.error_text().count("start worker process")
                 >= before + self.workers, timeout=timeout,
                 what="nginx workers restarted after HUP")
        self.wait_ready(timeout)

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        p = self.proc
        self.proc = None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError("nginx did not stop on SIGTERM")

    def expect_errors(self):
        """This test provokes [error] lines (failing nodes, denials)."""
        self.errors_expected = True

    def check_log(self):
        text = self.error_text()
        marks = BAD_LOG if self.errors_expected else BAD_LOG + ("[error]",)
        bad = [l for l in text.splitlines() if any(m in l for m in marks)]
        assert not bad, "nginx error log has:\n%s" % "\n".join(bad[:20])
        # nginx points its stderr at the error log once it has read the
        # configuration: a worker's sanitizer report lands there
        err = self.stderr_text() + text
        for m in SANITIZER_MARKERS:
            assert m not in err, "sanitizer report from nginx:\n%s" % \
                err[max(0, err.find(m) - 200):][:6000]

    # -- logs

    def error_text(self):
        if not self.error_log.exists():
            return ""
        return self.error_log.read_bytes().decode("utf-8", "replace")

    def stderr_text(self):
        if not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def access_lines(self):
        if not self.access_log.exists():
            return []
        return self.access_log.read_text().splitlines()

    def wait_access(self, pred, timeout=5.0, what="access log line"):
        """The first access log line for which pred(line) holds."""
        def find():
            for l in self.access_lines():
                if pred(l):
                    return l
            return None
        return wait_for(find, timeout=timeout, what=what)

    # -- HTTP

    def url(self, path):
        return "http://%s:%d%s" % (self.host, self.port, path)

    def publish(self, topic, body, ndjson=False, headers=None, timeout=10):
        h = dict(headers or {})
        if ndjson:
            h["Content-Type"] = "application/x-ndjson"
        if isinstance(body, str):
            body = body.encode()
        return requests.post(self.url("/mq"), params={"topic": topic},
                             data=body, headers=h, timeout=timeout * SLOW)

    def consume(self, topic, timeout=30, headers=None, **params):
        """GET /mq?topic=..; the whole response."""
        p = {"topic": topic}
        p.update({k: str(v) for k, v in params.items()})
        return requests.get(self.url("/mq"), params=p, headers=headers,
                            timeout=timeout * SLOW)

    def lines(self, topic, **params):
        r = self.consume(topic, **params)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.content.split(b"\n")[:-1]

    def stream(self, topic, timeout=30, headers=b"", **params):
        """GET /mq?topic=.. on a raw socket, read to the end: (status,
        body, ended).  ended: the stream ended as a drained queue does: its
        last chunk came and it named no missing node (no Memq-Nodes-Failed
        trailer, no `event: memq`); False when the connection was closed
        without the last chunk (a cut stream, which requests would raise
        for) or when the end reported nodes that were missing."""
        from urllib.parse import urlencode
        p = {"topic": topic}
        p.update({k: str(v) for k, v in params.items()})
        s = self.raw_request("/mq?" + urlencode(p), headers=headers)
        s.settimeout(timeout * SLOW)
        try:
            status, hdrs, rest = read_headers(s)
            if hdrs.get("transfer-encoding") != "chunked":
                n = int(hdrs.get("content-length", "0"))
                while len(rest) < n:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                return status, rest, len(rest) == n
            d = Dechunker()
            d.feed(rest)
            while not d.done:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break
                d.feed(chunk)
            return status, d.data, (d.done and
                                    "memq-nodes-failed" not in d.trailers
                                    and b"event: memq\n" not in d.data)
        finally:
            s.close()

    def status(self, **params):
        r = requests.get(self.url("/mq/status"), params=params,
                         timeout=10 * SLOW)
        assert r.status_code == 200, (r.status_code, r.text)
        return r

    def node_status(self, addr):
        st = self.status().json()
        for n in st["clusters"][0]["nodes"]:
            if n["addr"] == addr:
                return n
        return None

    def raw_request(self, path, headers=b"", rcvbuf=None):
        """A raw socket with the request sent; the caller reads."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10 * SLOW)
        s.connect((self.host, self.port))
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  + headers + b"\r\n")
        return s


def read_to_close(s):
    """Every byte until the peer closes (a reset ends it too); the socket
    is closed."""
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return data


def read_headers(sock):
    """Reads up to the end of the response headers; returns (status,
    headers dict, bytes already read past them)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed in headers: %r" % buf)
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for l in lines[1:]:
        k, v = l.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest


class Dechunker:
    """Incremental HTTP/1.1 chunked decoder."""

    def __init__(self):
        self.raw = b""
        self.data = b""
        self.done = False
        self.trailers = {}

    def feed(self, b):
        self.raw += b
        while not self.done:
            i = self.raw.find(b"\r\n")
            if i < 0:
                return
            size = int(self.raw[:i].split(b";")[0], 16)
            if size == 0:
                # the last chunk, then trailer fields up to an empty line
                end = self.raw.find(b"\r\n\r\n", i)
                if end < 0:
                    return
                for ln in self.raw[i + 2:end].split(b"\r\n"):
                    k, sep, v = ln.partition(b":")
                    if sep:
                        self.trailers[k.strip().lower().decode()] = \
                            v.strip().decode()
                self.done = True
                return
            if len(self.raw) < i + 2 + size + 2:
                return
            self.data += self.raw[i + 2:i + 2 + size]
            self.raw = self.raw[i + 2 + size + 2:]


def read_stream_after_close(s, rest):
    """A Dechunker fed with rest and then whatever s gives until the peer
    closes or resets it; s is closed."""
    d = Dechunker()
    d.feed(rest)
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        d.feed(chunk)
    s.close()
    return d


def node_items(node, q):
    """items + open_items of q on one memqd (0 when q is unknown)."""
    c = Client(node.addr)
    try:
        st = c.qstats(q)
    finally:
        c.close()
    return st.get("items", 0), st.get("open_items", 0)


def qstat(nodes, q, name):
    """The per-queue stat name of q summed over the nodes."""
    total = 0
    for n in nodes:
        c = Client(n.addr)
        try:
            total += c.qstats(q).get(name, 0)
        finally:
            c.close()
    return total


def total_items(nodes, q):
    """Waiting items of q over all nodes (open ones excluded)."""
    return sum(node_items(n, q)[0] for n in nodes)


def workers_memory(g, field):
    """A /proc/PID/status size (VmRSS, VmHWM, ...) of g's workers, summed,
    in bytes."""
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = open("/proc/%s/status" % p).read()
        except OSError:
            continue
        if "\nPPid:\t%d\n" % g.proc.pid in st:
            for line in st.splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
    return total


def store_all(node, q, values, flags=0):
    """Stores each of values (bytes) in q straight on one node."""
    c = Client(node.addr)
    try:
        for v in values:
            c.store(q, v, flags=flags)
    finally:
        c.close()


def fill(nodes, q, count, fmt="m%d", flags=0):
    """Stores count messages round-robin straight on the nodes; returns
    them as a set of bytes."""
    clients = [Client(n.addr) for n in nodes]
    out = set()
    try:
        for i in range(count):
            data = (fmt % i).encode()
            c = clients[i % len(clients)]
            c.store(q, data, flags=flags)
            out.add(data)
    finally:
        for c in clients:
            c.close()
    return out


class SilentNode:
    """A TCP listener that accepts connections and never answers (a hung
    node); it records what it received."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.host, self.port = self.sock.getsockname()
        self.conns = []
        self.accepted = 0
        self.received = b""
        self.closed = False
        import threading
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return (self.host, self.port)

    def _run(self):
        import select
        while not self.closed:
            rl = [self.sock] + self.conns
            try:
                r, _, _ = select.select(rl, [], [], 0.05)
            except (OSError, ValueError):
                return
            for s in r:
                if s is self.sock:
                    try:
                        c, _ = self.sock.accept()
                        self.conns.append(c)
                        self.accepted += 1
                    except OSError:
                        pass
                    continue
                try:
                    d = s.recv(65536)
                except OSError:
                    d = b""
                if d:
                    self.received += d
                else:
                    self.conns.remove(s)
                    s.close()

    def close(self):
        self.closed = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def fake_first(gateway_factory, node, real, **kw):
    """One worker in front of the fake node (weight 100: picked first) and
    a real memqd behind it, for what the fake makes fail; returns the
    gateway, errors expected."""
    g = gateway_factory([node.addr, real], workers=1,
                        weights={node_addr(node.addr): 100}, **kw)
    g.expect_errors()
    return g


def closed_port():
    """A loopback port nobody listens on."""
    return free_port()


class ScriptedNode:
    """A memcache-speaking stand-in for one node whose answers a test
    scripts, for timings a real node cannot be made to show.  answer(line,
    n) gets each request line (bytes, without CRLF) and its number on the
    connection (from 1) and returns (delay_seconds, reply_bytes), or None
    to never answer; (delay, reply, True) closes the connection after the
    reply.  Every line received is kept in self.lines.  recv_size and
    recv_pause make a slow reader: at most recv_size bytes taken, then a
    pause, each time (a node that takes its input slowly).  send_size: a
    reply goes out in pieces of at most that many bytes, each sent on its
    own (TCP_NODELAY) after a short pause, so the gateway reads it in
    pieces."""

    def __init__(self, answer, recv_size=65536, recv_pause=0.0,
                 rcvbuf=None, send_size=None):
        import threading
        self.answer = answer
        self.recv_size = recv_size
        self.recv_pause = recv_pause
        self.send_size = send_size
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            # accepted connections inherit it: a small window, so the
            # gateway's sends block instead of filling the kernel
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()
        self.lines = []
        self.closed = False
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    @property
    def addr(self):
        return (self.host, self.port)

    def _accept(self):
        import threading
        self.sock.settimeout(0.1)
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, c):
        buf = b""
        n = 0
        c.settimeout(0.1)
        try:
            while not self.closed:
                try:
                    d = c.recv(self.recv_size)
                except socket.timeout:
                    continue
                if not d:
                    return
                if self.recv_pause:
                    time.sleep(self.recv_pause)
                buf += d
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    n += 1
                    self.lines.append(line)
                    a = self.answer(line, n)
                    if a is None:
                        continue
                    delay, reply = a[0], a[1]
                    end = time.monotonic() + delay
                    while time.monotonic() < end and not self.closed:
                        time.sleep(0.01)
                    self._send(c, reply)
                    if len(a) > 2 and a[2]:
                        return
        except OSError:
            pass
        finally:
            c.close()

    def _send(self, c, reply):
        if not self.send_size:
            c.sendall(reply)
            return
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(reply), self.send_size):
            # a pause between pieces, so each is read on its own
            time.sleep(0.0005)
            c.sendall(reply[i:i + self.send_size])

    def close(self):
        self.closed = True
        for t in self.threads:
            t.join(2)
        self.sock.close()
