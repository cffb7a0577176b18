"""
Helpers for the memqd integration suite: a raw memcache-protocol client,
a memqd process wrapper, deadline-based waiting, and a reader for segment
files.  The fixtures that use them live in conftest.py; tests import the
helpers from here (a module name of its own, so that another conftest.py
in a subdirectory can never shadow it).

Environment
  MEMQD           binary to run (default: build/memqd of this repository).
  MEMQ_SANITIZED  set for the ASan/UBSan build: stderr is checked for reports
                  and deadlines are stretched.
  MEMQD_ADDR      host:port of an already running memqd; tests that need
                  their own server (restarts, arguments, config, files) skip.

Nothing here sleeps blindly: every wait polls a condition until a deadline.
"""

import os
import random
import signal
import socket
import string
import struct
import subprocess
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MEMQD = os.environ.get("MEMQD") or str(ROOT / "build" / "memqd")
if not os.path.isabs(MEMQD):
    MEMQD = str(ROOT / MEMQD)
SANITIZED = bool(os.environ.get("MEMQ_SANITIZED"))
EXTERNAL = os.environ.get("MEMQD_ADDR")

# deadlines and upper bounds are multiplied by this: the sanitizer build
# is several times slower, and the machines are shared and noisy;
# MEMQ_SLOW overrides
SLOW = float(os.environ.get("MEMQ_SLOW", "4.0" if SANITIZED else "2.0"))

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:",
                     "LeakSanitizer")

Item = namedtuple("Item", "key flags data cas")


class ProtocolError(AssertionError):
    """The server answered something the test did not expect."""


class Closed(ConnectionError):
    """The server closed the connection."""


def deadline_after(seconds):
    return time.monotonic() + seconds * SLOW


def wait_for(cond, timeout=5.0, interval=0.01, what="condition"):
    """Polls cond() until it returns a true value (returned) or the
    deadline (timeout seconds, stretched under sanitizers) passes."""
    end = deadline_after(timeout)
    while True:
        r = cond()
        if r:
            return r
        if time.monotonic() > end:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout * SLOW, what))
        time.sleep(interval)


def stop_process(pid):
    """SIGSTOP pid and wait until each of its threads is stopped.  The
    signal is only queued when kill() returns: a process asleep in
    epoll_wait() may still wake, take the events ready by then, and stop
    only on its way back to user space, so bytes sent right after kill()
    could be read in two passes of its event loop instead of one."""
    os.kill(pid, signal.SIGSTOP)

    def stopped():
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if state not in ("T", "t"):
                return False
        return True

    wait_for(stopped, what="process %d stopped" % pid)


_qseq = [0]


def qname(prefix="q"):
    """A queue name unique within this run (and very likely across runs,
    which matters when MEMQD_ADDR points at a shared server)."""
    _qseq[0] += 1
    rnd = "".join(random.choice(string.ascii_lowercase) for _ in range(6))
    return "%s%d_%s" % (prefix, _qseq[0], rnd)


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_given = set()


def _bindable(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return 0
    finally:
        s.close()


def free_port():
    """A loopback port nobody listens on, taken below the kernel's
    ephemeral range: a port the kernel hands out (bind to 0) can become
    the source port of any outgoing connection (an etcd client, a node
    dialling etcd) before the program it was chosen for binds it.  Ports
    given out before in this process are not given again."""
    lo = min(_EPHEMERAL_LOW, 65536)
    first = max(1024, lo - 12000)
    if lo - first >= 1000:
        for _ in range(200):
            port = random.randrange(first, lo)
            if port in _given:
                continue
            if _bindable(port):
                _given.add(port)
                if len(_given) > (lo - first) // 2:
                    _given.clear()
                return port
    return _bindable(0)


# ---------------------------------------------------------------- client

class Client:
    """A raw memcache text-protocol client over one TCP connection, with a
    deadline on every read."""

    def __init__(self, addr, timeout=5.0):
        self.addr = addr
        self.timeout = timeout * SLOW
        self.sock = socket.create_connection(addr, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False

    # -- raw I/O

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, end):
        left = end - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed; have %r"
                                 % bytes(self.buf[:200]))
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed("connection closed by server; have %r"
                         % bytes(self.buf[:200]))
        self.buf += chunk

    def _end(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None
                                   else timeout * SLOW)

    def readline(self, timeout=None):
        """Next reply line, without its CRLF, as bytes."""
        end = self._end(timeout)
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill(end)

    def read_exact(self, n, timeout=None):
        end = self._end(timeout)
        while len(self.buf) < n:
            self._fill(end)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def line(self, timeout=None):
        """Next reply line as str (latin-1 so any byte survives)."""
        return self.readline(timeout).decode("latin-1")

    def wait_closed(self, timeout=5.0):
        """True once the server has closed the connection (EOF or reset)
        before the deadline; bytes that arrive meanwhile are kept in
        self.buf.  False when still open at the deadline."""
        end = self._end(timeout)
        while True:
            try:
                self._fill(end)
            except Closed:
                return True
            except socket.timeout:
                return False
            except OSError:
                return True

    # -- commands

    def cmd(self, line, timeout=None):
        """Sends one command line (CRLF added) and returns the reply
        line."""
        if isinstance(line, str):
            line = line.encode("latin-1")
        self.send(line + b"\r\n")
        return self.line(timeout)

    def set(self, q, data, flags=0, exptime=0, noreply=False, timeout=None):
        if isinstance(data, str):
            data = data.encode()
        hdr = "set %s %d %d %d%s\r\n" % (q, flags, exptime, len(data),
                                          " noreply" if noreply else "")
        self.send(hdr.encode("latin-1") + data + b"\r\n")
        if noreply:
            return None
        return self.line(timeout)

    def store(self, q, data, **kw):
        """set that must answer STORED."""
        r = self.set(q, data, **kw)
        if r != "STORED":
            raise ProtocolError("set %s: expected STORED, got %r" % (q, r))

    def read_values(self, timeout=None):
        """Reads VALUE blocks up to END; returns a list of Item."""
        items = []
        while True:
            line = self.readline(timeout)
            if line == b"END":
                return items
            parts = line.split(b" ")
            if parts[0] != b"VALUE" or len(parts) not in (4, 5):
                raise ProtocolError("expected VALUE or END, got %r (after "
                                    "%d values)" % (line, len(items)))
            n = int(parts[3])
            data = self.read_exact(n + 2, timeout)
            if data[-2:] != b"\r\n":
                raise ProtocolError("value of %d bytes not followed by CRLF:"
                                    " %r" % (n, data[-10:]))
            cas = int(parts[4]) if len(parts) == 5 else None
            items.append(Item(parts[1].decode("latin-1"), int(parts[2]),
                              data[:-2], cas))

    def get_items(self, key, cmd="get", timeout=None):
        if isinstance(key, str):
            key = key.encode("latin-1")
        self.send(cmd.encode() + b" " + key + b"\r\n")
        return self.read_values(timeout)

    def get(self, key, cmd="get", timeout=None):
        """One item or None; more than one is an error."""
        items = self.get_items(key, cmd, timeout)
        if len(items) > 1:
            raise ProtocolError("expected at most one value, got %d"
                                % len(items))
        return items[0] if items else None

    def getdata(self, key, timeout=None):
        it = self.get(key, timeout=timeout)
        return None if it is None else it.data

    def drain(self, q, opts="", timeout=None):
        """Takes every item of q with /n=1000 batches; returns them."""
        out = []
        while True:
            got = self.get_items("%s/n=1000%s" % (q, opts), timeout=timeout)
            if not got:
                return out
            out.extend(got)

    def stats(self, timeout=None):
        self.send(b"stats\r\n")
        st = {}
        while True:
            line = self.line(timeout)
            if line == "END":
                return st
            parts = line.split(" ", 2)
            if parts[0] != "STAT" or len(parts) != 3:
                raise ProtocolError("expected STAT or END, got %r" % line)
            st[parts[1]] = parts[2]

    def qstats(self, q):
        """Per-queue stats of q as {name: int}, {} if q is not listed."""
        pre = "queue_%s_" % q
        return {k[len(pre):]: int(v) for k, v in self.stats().items()
                if k.startswith(pre) and k[len(pre):] in QUEUE_STATS}

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


QUEUE_STATS = ("items", "bytes", "total_items", "expired_items",
               "open_items", "waiters", "age_ms", "leased_items",
               "redelivered_items", "dead_lettered_items")


def _stacks(pid):
    """Every thread's stack of a process that does not exit (gdb, when
    installed), for the failure message."""
    try:
        out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx",
                              "-ex", "thread apply all bt"],
                             capture_output=True, timeout=60, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "(no stacks: %s)" % e
    return "\n".join(l for l in out.stdout.splitlines()
                     if l.startswith(("Thread", "#")))


def pipeline(client, data, reply_len, timeout=30.0):
    """Sends data from a helper thread while reading exactly reply_len reply
    bytes, so neither side blocks on a full socket buffer.  Returns the
    reply bytes."""
    err = []

    def sender():
        try:
            client.sock.sendall(data)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        reply = client.read_exact(reply_len, timeout=timeout)
    finally:
        t.join(timeout * SLOW)
    if err:
        raise err[0]
    return reply


# ---------------------------------------------------------------- server

class Memqd:
    """One memqd process (or, when external, an address only)."""

    def __init__(self, tmp, data_dir=None, args=(), config=None,
                 external=None, env=None):
        self.tmp = Path(tmp)
        self.external = external is not None
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.proc = None
        self.log_offset = 0
        self.starts = 0
        if self.external:
            h, p = external.rsplit(":", 1)
            self.host, self.port = h, int(p)
            self.data_dir = None
            self.log_path = None
            self.config_path = None
            return
        self.host = "127.0.0.1"
        self.port = None
        self.data_dir = Path(data_dir) if data_dir else self.tmp / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmp / "memqd.stderr"
        self.out_path = self.tmp / "memqd.stdout"
        self.config_path = None
        if config is not None:
            self.config_path = self.tmp / "memqd.conf"
            self.write_config(config)

    @property
    def addr(self):
        return (self.host, self.port)

    def write_config(self, text):
        tmpf = self.config_path.with_suffix(".tmp")
        tmpf.write_text(text)
        os.replace(tmpf, self.config_path)

    def argv(self):
        a = [MEMQD, "--listen", "%s:%d" % (self.host, self.port),
             "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            a += ["--config", str(self.config_path)]
        return a + self.args

    def env(self):
        e = dict(os.environ)
        e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
        e["UBSAN_OPTIONS"] = "print_stacktrace=1"
        e.update(self.extra_env)
        return e

    def spawn(self, port=None):
        """Starts the process without waiting for readiness."""
        if not os.access(MEMQD, os.X_OK):
            pytest.fail("memqd binary %s missing: run `make memqd`" % MEMQD)
        self.port = port or free_port()
        self.log_offset = (self.log_path.stat().st_size
                           if self.log_path.exists() else 0)
        with open(self.log_path, "ab") as err, \
                open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err,
                                         env=self.env())
        self.starts += 1
        return self.proc

    def start(self, timeout=10.0, port=None):
        """Starts memqd and waits until `version` answers.  Retries on a
        new port when the chosen one turned out to be taken."""
        for attempt in range(3):
            self.spawn(port)
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError:
                if self.proc.poll() is not None and port is None and \
                        "in use" in self.log_since_start().lower():
                    continue
                raise
        raise AssertionError("memqd: no free port after 3 attempts")

    def wait_ready(self, timeout=10.0):
        end = deadline_after(timeout)
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "memqd exited with %s before ready; stderr:\n%s"
                    % (self.proc.returncode, self.log_since_start()[-3000:]))
            try:
                c = Client(self.addr, timeout=1.0)
                try:
                    r = c.cmd("version")
                    if r.startswith("VERSION memqd "):
                        return
                    last = r
                finally:
                    c.close()
            except (OSError, Closed) as e:
                last = e
            time.sleep(0.01)
        raise AssertionError("memqd not ready within %.1fs (last: %r); "
                             "stderr:\n%s" % (timeout * SLOW, last,
                                              self.log_since_start()[-3000:]))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.hung_stacks = _stacks(p.pid)
            p.kill()
            p.wait()
            rc = None
        self.proc = None
        return rc

    def stop_checked(self, timeout=10.0):
        rc = self.stop(timeout)
        assert rc == 0, ("memqd did not exit 0 on SIGTERM (status %r); "
                         "stderr tail:\n%s\nthreads when it was killed:\n%s"
                         % (rc, self.log_text()[-3000:],
                            getattr(self, "hung_stacks", "")))
        self.check_sanitizer()

    def kill(self):
        """SIGKILL and reap."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self, timeout=10.0):
        self.stop_checked()
        return self.start(timeout)

    def log_text(self):
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def log_since_start(self):
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", "replace")

    def check_sanitizer(self):
        if not SANITIZED:
            return
        text = self.log_text()
        for m in SANITIZER_MARKERS:
            assert m not in text, "sanitizer report in memqd stderr:\n%s" % \
                text[max(0, text.find(m) - 200):][:6000]

    def check_stdout_empty(self):
        if self.external:
            return
        out = self.out_path.read_bytes() if self.out_path.exists() else b""
        assert out == b"", "memqd wrote to stdout: %r" % out[:500]

    # -- files

    def qdir(self, q):
        if self.external:
            pytest.skip("needs the data directory (MEMQD_ADDR set)")
        return self.data_dir / q

    def segments(self, q):
        """Segment files of queue q, oldest first."""
        d = self.qdir(q)
        return sorted(d.glob("*.seg")) if d.is_dir() else []

    def connect(self, timeout=5.0):
        return Client(self.addr, timeout)


def assert_alive(server, q=None, data=None):
    """The server still answers on a fresh connection and, when given, the
    item `data` stored earlier is still the head of q (checked with
    /peek, so it stays)."""
    c = Client(server.addr)
    try:
        assert c.cmd("version").startswith("VERSION memqd ")
        if q is not None:
            it = c.get(q + "/peek")
            assert it is not None, "item stored before is gone from %s" % q
            assert it.data == data, "head of %s changed: %r" % (q, it.data)
    finally:
        c.close()


# ---------------------------------------------------------------- on disk

def _crc32c_table():
    tab = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        tab.append(c)
    return tab


_CRC_TAB = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    tab = _CRC_TAB
    for b in data:
        crc = tab[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


SEG_HDR = 16
REC_HDR = 48
REC_MAGIC = b"MQR2"
SEG_MAGIC = b"MQSEG\x00\x00\x02"

Record = namedtuple("Record", "offset crc len flags kind seq ctime exptime "
                              "payload ok")


def file_mark(raw):
    """The mark of a segment or journal file's header (common/mq_frame.h):
    every record's header CRC is XORed with it."""
    mark, crc = struct.unpack_from("<II", raw, 8)
    assert crc32c(raw[:12]) == crc, "file header CRC does not hold"
    return mark


def header_crc(hdr, mark):
    """The stored header CRC of a version 2 record header (48 bytes, the
    CRC field's value ignored) in a file with this mark."""
    return crc32c(hdr[8:REC_HDR]) ^ mark


def encode_record(mark, payload, seq, kind=1, flags=0, ctime=0, exptime=0):
    """A version 2 record, as memqd writes it into a file with this
    mark."""
    body = struct.pack("<IIIIQQq", len(payload), flags, kind,
                       crc32c(payload), seq, ctime, exptime)
    return REC_MAGIC + struct.pack("<I", crc32c(body) ^ mark) + body + payload


def parse_segment(path, check_crc=True):
    """Reads a segment file (common/mq_frame.h).  Returns (first_seq,
    records, tail) where first_seq comes from the file's name, records are
    the well-formed records from the start and tail is the offset where
    they stop (end of file when all is well)."""
    raw = Path(path).read_bytes()
    assert raw[:8] == SEG_MAGIC, "%s: bad magic %r" % (path, raw[:8])
    first_seq = int(Path(path).name[:20])
    mark = file_mark(raw) if check_crc else 0
    recs = []
    off = SEG_HDR
    while off + REC_HDR <= len(raw):
        magic, hcrc, ln, flags, kind, pcrc, seq, ctime, exp = \
            struct.unpack_from("<4sIIIIIQQq", raw, off)
        if magic != REC_MAGIC:
            break                       # zero fill past the last record
        if check_crc and header_crc(raw[off:off + REC_HDR], mark) != hcrc:
            break
        if off + REC_HDR + ln > len(raw):
            break
        payload = raw[off + REC_HDR:off + REC_HDR + ln]
        ok = True
        if check_crc:
            ok = crc32c(payload) == pcrc
        if not ok or kind != 1:
            break
        recs.append(Record(off, pcrc, ln, flags, kind, seq, ctime, exp,
                           payload, ok))
        off += REC_HDR + ln
    return first_seq, recs, off
